#pragma once
// An emulation of CPython's global interpreter lock, for the gil-threads mode: one lock
// that a thread must hold while it computes, so threads interleave but never compute in
// parallel. Like CPython (sys.getswitchinterval(), 5 ms), a holder that computes for a
// whole switch interval while another thread waits hands the lock over. Waiters are
// served first come, first served, so a holder that asks again queues behind them.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace taskfarm {

class Gil {
public:
    using Clock = std::chrono::steady_clock;
    static constexpr Clock::duration kSwitchInterval = std::chrono::milliseconds(5);

    explicit Gil(Clock::duration switch_interval = kSwitchInterval) : switch_interval_(switch_interval) {}
    Gil(const Gil&) = delete;
    Gil& operator=(const Gil&) = delete;

    // Holds the lock for its lifetime, like a thread running bytecode; with a null Gil it
    // holds nothing and switch_point() does nothing. Waiting for the lock cannot be
    // cancelled, but is short: every holder passes a switch point at least every interval.
    class Hold {
    public:
        explicit Hold(Gil* gil);
        ~Hold();
        Hold(const Hold&) = delete;
        Hold& operator=(const Hold&) = delete;

        // Call often while computing. Once the lock has been held for the switch interval
        // and another thread waits, gives it to the longest waiting thread and queues again.
        void switch_point();
        // Frees the lock while the thread blocks (CPython's Py_BEGIN_ALLOW_THREADS), and takes
        // it again (Py_END_ALLOW_THREADS). Calls pair up; nothing with a null Gil.
        void release();
        void reacquire();

    private:
        Gil* gil_;
        Clock::time_point since_;  // when this thread last got the lock
    };

    // Threads holding or waiting for the lock now.
    std::uint64_t contenders() const;

private:
    void acquire();
    void release();

    const Clock::duration switch_interval_;
    mutable std::mutex mutex_;
    std::condition_variable turn_;
    std::uint64_t next_ticket_ = 0;  // for the next thread that asks
    std::uint64_t serving_ = 0;      // the ticket that holds the lock (or may take it now)
};

}  // namespace taskfarm
