#pragma once

#include <atomic>
#include <stop_token>
#include <thread>

namespace taskfarm {

// Turns SIGINT and SIGTERM into a stop request. Construct it before any other thread
// starts: it blocks both signals in the calling thread, whose mask new threads inherit,
// and waits for them on a thread of its own. A second SIGINT exits at once (130); the
// workers die with us through PR_SET_PDEATHSIG.
class SignalWatcher {
public:
    SignalWatcher();
    ~SignalWatcher();
    SignalWatcher(const SignalWatcher&) = delete;
    SignalWatcher& operator=(const SignalWatcher&) = delete;

    std::stop_token token() const { return stop_.get_token(); }
    int signal() const { return signal_.load(); }  // the first one received, 0 if none

private:
    std::stop_source stop_;
    std::atomic<int> signal_{0};
    std::jthread thread_;
};

}  // namespace taskfarm
