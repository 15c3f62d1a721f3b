#pragma once
// A descriptor that becomes readable once a stop token (or either of two) is stopped: an
// eventfd that a std::stop_callback writes to. A poll() that waits on other descriptors adds it,
// and so ends at a stop at once rather than at its next timeout. The one way the program's waits
// on descriptors honour a stop (the control socket's thread, the signal watcher, the wait for
// the fork server).

#include <sys/eventfd.h>
#include <unistd.h>

#include <cstdint>
#include <stop_token>

#include "unique_fd.hpp"

namespace taskfarm {

class StopWake {
public:
    // A token without a stop state (a default one) registers nothing; one stopped already
    // makes the descriptor readable at once.
    explicit StopWake(const std::stop_token& stop, const std::stop_token& also = {})
        : fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)),
          first_(stop, Poke{fd_.get()}),
          second_(also, Poke{fd_.get()}) {}
    StopWake(const StopWake&) = delete;
    StopWake& operator=(const StopWake&) = delete;

    // Readable once stopped; -1 when no eventfd could be made (then a poll's timeout is the
    // only way its wait ends).
    int fd() const { return fd_.get(); }

private:
    struct Poke {
        int fd;
        void operator()() const noexcept {
            if (fd < 0) return;
            const std::uint64_t one = 1;
            [[maybe_unused]] const auto wrote = ::write(fd, &one, sizeof one);
        }
    };
    UniqueFd fd_;  // before the callbacks: they go first, and never write to a closed descriptor
    std::stop_callback<Poke> first_;
    std::stop_callback<Poke> second_;
};

}  // namespace taskfarm
