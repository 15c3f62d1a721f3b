#include "gil.hpp"

namespace taskfarm {

Gil::Hold::Hold(Gil* gil) : gil_(gil) {
    if (!gil_) return;
    gil_->acquire();
    since_ = Clock::now();
}

Gil::Hold::~Hold() {
    if (gil_) gil_->release();
}

void Gil::Hold::switch_point() {
    if (!gil_ || Clock::now() - since_ < gil_->switch_interval_) return;
    if (gil_->contenders() > 1) {
        gil_->release();
        gil_->acquire();
    }
    since_ = Clock::now();
}

void Gil::Hold::release() {
    if (gil_) gil_->release();
}

void Gil::Hold::reacquire() {
    if (!gil_) return;
    gil_->acquire();
    since_ = Clock::now();
}

std::uint64_t Gil::contenders() const {
    std::lock_guard lock(mutex_);
    return next_ticket_ - serving_;
}

void Gil::acquire() {
    std::unique_lock lock(mutex_);
    const std::uint64_t ticket = next_ticket_++;
    turn_.wait(lock, [&] { return serving_ == ticket; });
}

void Gil::release() {
    {
        std::lock_guard lock(mutex_);
        ++serving_;
    }
    turn_.notify_all();  // only the next ticket proceeds; the others wait again
}

}  // namespace taskfarm
