#pragma once

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <stop_token>
#include <string>
#include <thread>

namespace taskfarm {

// Turns the stop signals into two requests that every mode obeys:
// - drain (SIGTERM, SIGHUP: what `kill`, schedulers and a closed terminal send): no task is
//   started any more, the running ones finish; after `drain_timeout` the drain becomes a stop;
// - stop (SIGINT, SIGQUIT, a second SIGTERM or SIGHUP, the drain timeout): the running tasks
//   are cancelled as well.
// One request is often delivered twice: timeout(1) signals its child and then its process
// group, a closing terminal sends SIGHUP and so does the shell when it exits. So a signal
// that asks for what is already under way (a drain signal while draining, SIGINT while
// stopping) within kSameRequest of the one that started it is that same request, said so in
// the log and otherwise ignored; later, it is a second request.
// A stop is also a drain. Either way the run ends the same: workers shut down and reaped,
// the partial table printed, the socket directory removed, exit 128 + the first signal.
// It takes them in one of two ways (Take):
// - Mask (the coordinator, a program of its own): construct it before any other thread starts:
//   it blocks these signals in the calling thread, whose mask new threads inherit, and waits
//   for them on a thread of its own. Destroy it on that thread, which gets its mask back.
// - Handlers (a Farm, a library in someone else's program, decision 313): it changes no
//   thread's mask; it installs a handler for each of them that is not ignored (the first
//   watcher of the process does; the last puts back what was there), which hands the signal
//   to its thread. Whoever makes threads that must not be interrupted (the Farm's own) makes
//   them inside a StopSignalsBlocked. It may be destroyed on any thread.
// A SIGINT during a stop exits at once (130); the workers die with us through PR_SET_PDEATHSIG.
class SignalWatcher {
public:
    static constexpr std::chrono::milliseconds kSameRequest{1000};
    enum class Take { Mask, Handlers };

    // `drain_option` names the drain timeout's setting in the log: the coordinator's flag, or
    // a Farm's FarmOptions::drain_timeout_s.
    explicit SignalWatcher(std::chrono::milliseconds drain_timeout = std::chrono::milliseconds(25'000),
                           std::string drain_option = "--drain-timeout", Take take = Take::Mask);
    ~SignalWatcher();
    SignalWatcher(const SignalWatcher&) = delete;
    SignalWatcher& operator=(const SignalWatcher&) = delete;

    std::stop_token token() const { return stop_.get_token(); }         // stop: cancel running tasks
    std::stop_token drain_token() const { return drain_.get_token(); }  // drain: start no task
    int signal() const { return signal_.load(); }                       // the first one received, 0 if none
    // Stops the run as if `signal` had come (SIGPIPE for a closed stdout), unless a stop is
    // already under way; says whether this call started it. Thread-safe.
    bool stop(int signal);
    // The run is over (only --ui's linger is left): a signal now stops at once and quietly,
    // with nothing to drain or cancel. Thread-safe.
    void run_over() { over_.store(true); }
    // Ends the run from within, with no signal (GNU parallel's --halt): no task starts any
    // more, and with `now` the running ones are cancelled. Thread-safe.
    void halt(bool now) {
        if (now) stop_.request_stop();
        drain_.request_stop();
    }

private:
    void on_signal(int received, int sender);
    // Whether `received` repeats the request that began at `since` (then it is logged as such).
    bool repeats(int received, int sender, std::chrono::steady_clock::time_point since) const;

    const Take take_;
    const pthread_t blocker_ = ::pthread_self();  // Mask: the thread whose mask the constructor changed
    sigset_t previous_{};                         // its mask before
    const std::chrono::milliseconds drain_timeout_;
    const std::string drain_option_;
    std::stop_source stop_;
    std::stop_source drain_;
    std::atomic<int> signal_{0};
    std::atomic<bool> over_{false};
    // The watcher thread's only:
    std::chrono::steady_clock::time_point drain_deadline_{};
    std::chrono::steady_clock::time_point drain_began_{};  // the drain's first signal
    std::chrono::steady_clock::time_point stop_began_{};   // the stop's first signal
    int stop_signal_ = 0;                                  // that signal; 0: the stop came otherwise
    std::jthread thread_;
};

// Blocks the stop signals in the calling thread for its lifetime, then gives the thread back
// the mask it had: the threads made meanwhile keep them blocked (they inherit the mask), so a
// stop signal never interrupts them; it goes to a thread of the program's.
class StopSignalsBlocked {
public:
    StopSignalsBlocked();
    ~StopSignalsBlocked();
    StopSignalsBlocked(const StopSignalsBlocked&) = delete;
    StopSignalsBlocked& operator=(const StopSignalsBlocked&) = delete;

private:
    sigset_t previous_{};
};

}  // namespace taskfarm
