#pragma once
// For a child process between fork and exec (async-signal-safe calls only).
//
// A child forked from the coordinator is in the coordinator's process group until its
// setpgid(0, 0), with the coordinator's stop signals blocked. A signal sent to that group
// in between (a terminal's Ctrl-C, timeout(1)'s second SIGTERM, `kill -TERM -PGID`) is
// meant for the coordinator, which decides what it means (drain or stop); in the child it
// would wait, pending, and kill the new worker or command the moment it unblocks its
// signals. Call this after setpgid(0, 0) and before unblocking: it drops the pending stop
// signals, except those sent by `keep_a` or `keep_b` (the caller, or the guardian, asking
// this very child to stop), which are sent again to be delivered when unblocked.

#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

namespace taskfarm {

// The signals that stop or drain a run (the coordinator's SignalWatcher blocks and takes them):
// the one list of them.
inline constexpr int kStopSignals[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM};

inline void drop_stop_signals_meant_for_the_parent(pid_t keep_a = 0, pid_t keep_b = 0) {
    sigset_t stops;
    ::sigemptyset(&stops);
    for (const int signal : kStopSignals) ::sigaddset(&stops, signal);
    sigset_t again;
    ::sigemptyset(&again);
    const timespec now{0, 0};
    siginfo_t info;
    // The system call itself: it is async-signal-safe, whatever the C library's wrapper does.
    while (::syscall(SYS_rt_sigtimedwait, &stops, &info, &now, _NSIG / 8) > 0) {
        const bool asked =
            info.si_code == SI_USER && info.si_pid > 0 && (info.si_pid == keep_a || info.si_pid == keep_b);
        if (asked) ::sigaddset(&again, info.si_signo);
    }
    for (const int signal : kStopSignals)
        if (::sigismember(&again, signal) == 1) ::kill(::getpid(), signal);
}

}  // namespace taskfarm
