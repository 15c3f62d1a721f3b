#pragma once
// This process's pid without a system call each time (glibc keeps no copy since 2.25): read
// once, and again in the child of each fork() (a pthread_atfork handler), so that a process
// forked from one that asked has its own. A child made by a raw clone (the fork server's
// workers, worker/fork_server.cpp) runs no atfork handler: it calls forget_this_pid() first.

#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <mutex>

#include <pthread.h>

namespace taskfarm {

inline std::atomic<pid_t> cached_this_pid{0};

// Async-signal-safe: a store.
inline void forget_this_pid() { cached_this_pid.store(0, std::memory_order_relaxed); }

inline pid_t this_pid() {
    static std::once_flag registered;
    std::call_once(registered, [] { ::pthread_atfork(nullptr, nullptr, [] { forget_this_pid(); }); });
    pid_t pid = cached_this_pid.load(std::memory_order_relaxed);
    if (pid == 0) {
        pid = ::getpid();
        cached_this_pid.store(pid, std::memory_order_relaxed);
    }
    return pid;
}

}  // namespace taskfarm
