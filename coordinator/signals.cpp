#include "signals.hpp"

#include <signal.h>

#include <cstdlib>

#include <spdlog/spdlog.h>

namespace taskfarm {
namespace {

sigset_t stop_signals() {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    return set;
}

}  // namespace

SignalWatcher::SignalWatcher() {
    const sigset_t set = stop_signals();
    ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
    thread_ = std::jthread([this, set](std::stop_token done) {
        const timespec poll{0, 100'000'000};
        while (!done.stop_requested()) {
            const int received = ::sigtimedwait(&set, nullptr, &poll);
            if (received <= 0) continue;
            if (signal_.load() == 0) {
                signal_ = received;
                spdlog::warn("{} received: stopping; press Ctrl-C again to quit at once",
                             received == SIGINT ? "SIGINT" : "SIGTERM");
                stop_.request_stop();
            } else if (received == SIGINT) {
                std::_Exit(128 + SIGINT);
            }
        }
    });
}

SignalWatcher::~SignalWatcher() {
    thread_.request_stop();
    thread_.join();
    const sigset_t set = stop_signals();
    ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

}  // namespace taskfarm
