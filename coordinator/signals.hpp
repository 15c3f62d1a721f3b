#pragma once

#include <atomic>
#include <stop_token>
#include <thread>

namespace taskfarm {

// Turns SIGHUP, SIGINT, SIGQUIT and SIGTERM into a stop request, so that each ends the run
// the same way: workers shut down and reaped, the partial table printed, the socket
// directory removed, exit 128 + the signal. Construct it before any other thread starts: it
// blocks these signals in the calling thread, whose mask new threads inherit, and waits for
// them on a thread of its own. A second SIGINT exits at once (130); the workers die with us
// through PR_SET_PDEATHSIG.
class SignalWatcher {
public:
    SignalWatcher();
    ~SignalWatcher();
    SignalWatcher(const SignalWatcher&) = delete;
    SignalWatcher& operator=(const SignalWatcher&) = delete;

    std::stop_token token() const { return stop_.get_token(); }
    int signal() const { return signal_.load(); }  // the first one received, 0 if none
    // Stops the run as if `signal` had come (SIGPIPE for a closed stdout), unless a stop is
    // already under way; says whether this call started it. Thread-safe.
    bool stop(int signal);

private:
    std::stop_source stop_;
    std::atomic<int> signal_{0};
    std::jthread thread_;
};

}  // namespace taskfarm
