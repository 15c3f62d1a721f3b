#include "signals.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "child_signals.hpp"
#include "stop_wake.hpp"
#include "temp_dirs.hpp"
#include "unique_fd.hpp"

namespace taskfarm {
namespace {

sigset_t stop_signals() {
    sigset_t set;
    sigemptyset(&set);
    for (const int signal : kStopSignals) sigaddset(&set, signal);
    return set;
}

const char* signal_name(int signal) {
    switch (signal) {
        case SIGHUP: return "SIGHUP";
        case SIGINT: return "SIGINT";
        case SIGQUIT: return "SIGQUIT";
        case SIGTERM: return "SIGTERM";
        case SIGPIPE: return "a closed stdout (EPIPE)";
        default: return "a signal";
    }
}

bool drains(int signal) { return signal == SIGTERM || signal == SIGHUP; }

}  // namespace

SignalWatcher::SignalWatcher(std::chrono::milliseconds drain_timeout, std::string drain_option)
    : drain_timeout_(drain_timeout), drain_option_(std::move(drain_option)) {
    const sigset_t set = stop_signals();
    ::pthread_sigmask(SIG_BLOCK, &set, &previous_);
    thread_ = std::jthread([this, set](std::stop_token done) {
        // The signals through a signalfd, and the end of the watch through an eventfd, so that
        // the run's end does not wait out a timeout (it waited 0-100 ms, at every exit); the
        // 100 ms wake stays for --drain-timeout's deadline. Without them, sigtimedwait.
        const UniqueFd signals(::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK));
        const StopWake wake(done);
        const timespec poll{0, 100'000'000};
        while (!done.stop_requested()) {
            int received = 0;
            int code = 0;
            pid_t sender = 0;
            if (signals.get() >= 0 && wake.fd() >= 0) {
                pollfd polled[] = {{signals.get(), POLLIN, 0}, {wake.fd(), POLLIN, 0}};
                ::poll(polled, 2, 100);
                signalfd_siginfo info{};
                if (::read(signals.get(), &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
                    received = static_cast<int>(info.ssi_signo);
                    code = info.ssi_code;
                    sender = static_cast<pid_t>(info.ssi_pid);
                }
            } else {
                siginfo_t info{};
                received = ::sigtimedwait(&set, &info, &poll);
                code = info.si_code;
                sender = info.si_pid;
            }
            // Sent by a process (kill, timeout(1), a shell), or by the kernel (a terminal's Ctrl-C): 0.
            if (received > 0) on_signal(received, code == SI_USER || code == SI_QUEUE ? sender : 0);
            // --drain-timeout bounds a drain a signal began; --halt soon's waits for its tasks,
            // as GNU parallel's does (its deadline was never set, so it cancelled at once).
            if (drain_.stop_requested() && !stop_.stop_requested() && signal_.load() != 0 &&
                std::chrono::steady_clock::now() >= drain_deadline_) {
                spdlog::warn("{} {:g} s passed: cancelling the tasks still running", drain_option_,
                             std::chrono::duration<double>(drain_timeout_).count());
                stop_.request_stop();
            }
        }
    });
}

bool SignalWatcher::repeats(int received, int sender, std::chrono::steady_clock::time_point since) const {
    if (std::chrono::steady_clock::now() - since >= kSameRequest) return false;
    const std::string from = sender > 0 ? fmt::format(" (sent by pid {})", sender) : std::string();
    const double window = std::chrono::duration<double>(kSameRequest).count();
    if (stop_.stop_requested())
        spdlog::warn(
            "{} again{} within {:g} s: the same request, still stopping; press Ctrl-C again later to quit at once",
            signal_name(received), from, window);
    else
        spdlog::warn("{} again{} within {:g} s: the same request, still draining (the running tasks finish)",
                     signal_name(received), from, window);
    return true;
}

void SignalWatcher::on_signal(int received, int sender) {
    if (over_.load()) {  // nothing runs: no drain, no "cancelling", and the run's exit status stands
        if (!stop(received) && received == SIGINT) std::_Exit(128 + SIGINT);  // a second Ctrl-C, as ever
        return;
    }
    const auto now = std::chrono::steady_clock::now();
    const std::string from = sender > 0 ? fmt::format(" (sent by pid {})", sender) : std::string();
    const double window = std::chrono::duration<double>(kSameRequest).count();
    if (drains(received) && signal_.load() == 0) {
        int none = 0;
        if (signal_.compare_exchange_strong(none, received)) {
            drain_began_ = now;
            drain_deadline_ = now + drain_timeout_;
            drain_.request_stop();
            spdlog::warn(
                "{} received: draining: no new task starts, the running ones finish (up to {} "
                "{:g} s); a SIGTERM or SIGHUP more than {:g} s from now, or Ctrl-C, cancels them{}",
                signal_name(received), drain_option_, std::chrono::duration<double>(drain_timeout_).count(), window,
                from);
            return;
        }
    }
    if (!stop_.stop_requested() && drains(received) && drain_.stop_requested() &&
        repeats(received, sender, drain_began_))
        return;  // timeout(1), a closing terminal: one drain delivered twice
    if (stop_.stop_requested() && received == stop_signal_ && repeats(received, sender, stop_began_)) return;
    if (stop(received)) {
        stop_began_ = now;
        stop_signal_ = received;
        spdlog::warn(
            "{} received: stopping: no new task starts and the running ones are cancelled, then the table "
            "is printed; press Ctrl-C again to quit at once{}",
            signal_name(received), from);
    } else if (!stop_.stop_requested()) {
        // Draining: a second request cancels what is still running.
        stop_began_ = now;
        stop_signal_ = received;
        stop_.request_stop();
        spdlog::warn(
            "{} received while draining: cancelling the running tasks, then the table is printed; press "
            "Ctrl-C again to quit at once{}",
            signal_name(received), from);
    } else if (received == SIGINT) {
        remove_temp_dirs();  // _Exit runs no destructor and no exit handler
        std::_Exit(128 + SIGINT);
    }
}

bool SignalWatcher::stop(int signal) {
    int none = 0;
    if (!signal_.compare_exchange_strong(none, signal)) return false;
    // Stop before drain: whoever sees the drain sees the stop too, and never takes a stop
    // for a drain (whose running tasks would finish).
    stop_.request_stop();
    drain_.request_stop();
    return true;
}

SignalWatcher::~SignalWatcher() {
    thread_.request_stop();
    thread_.join();
    // A thread's mask is its own: only the thread that blocked the signals can unblock them, and
    // it unblocks those it had not blocked itself before. Another thread's is left as it is.
    if (!::pthread_equal(::pthread_self(), blocker_)) {
        spdlog::warn(
            "the stop signals stay blocked in the thread that began watching them: the watch ended on "
            "another thread (a Farm with signals is closed on the thread of its first submit)");
        return;
    }
    sigset_t unblock;
    sigemptyset(&unblock);
    for (const int signal : kStopSignals)
        if (sigismember(&previous_, signal) == 0) sigaddset(&unblock, signal);
    ::pthread_sigmask(SIG_UNBLOCK, &unblock, nullptr);
}

}  // namespace taskfarm
