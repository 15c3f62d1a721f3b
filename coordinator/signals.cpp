#include "signals.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <mutex>
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

// Take::Handlers: a handler writes what came into one pipe of the process, which the watchers
// read. The pipe is made once and never closed (a handler may be running on another thread
// while a watcher ends); records are smaller than PIPE_BUF, so each write and read is whole.
struct Caught {
    int signal;
    int code;
    pid_t sender;
};
std::atomic<int> caught_write_fd{-1};
std::atomic<pid_t> caught_pid{0};  // the process that installed the handlers

void on_stop_signal(int signal, siginfo_t* info, void*) {
    const int saved = errno;
    if (::getpid() != caught_pid.load(std::memory_order_relaxed)) {
        // A child the program forked without an exec inherited the handler and the pipe: the
        // signal is its own, not the farm's, so it does what it would have done there (the
        // default: end it; it is blocked here until the handler returns).
        struct sigaction fallback {};
        fallback.sa_handler = SIG_DFL;
        ::sigaction(signal, &fallback, nullptr);
        ::raise(signal);
        errno = saved;
        return;
    }
    const Caught caught{signal, info ? info->si_code : 0, info ? info->si_pid : 0};
    if (const int fd = caught_write_fd.load(std::memory_order_relaxed); fd >= 0) {
        [[maybe_unused]] const ssize_t written = ::write(fd, &caught, sizeof caught);  // full: dropped
    }
    errno = saved;
}

// The handlers, installed by the first watcher of the process that takes signals this way and
// put back by the last (two Farms at once share them, as they would share a mask).
class Handlers {
public:
    static Handlers& get() {
        static Handlers* const handlers = new Handlers;  // never destroyed: a watcher may end during exit
        return *handlers;
    }

    // The pipe's end to read; -1 when there is none (said). Every acquire() is paired with a
    // release(), whatever it returned.
    int acquire() {
        std::lock_guard lock(mutex_);
        ++users_;
        if (read_fd_ < 0) {
            int fds[2];
            if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) {
                spdlog::error("cannot take the stop signals: pipe2: {}", std::strerror(errno));
                return -1;  // no handler either: one that could tell no one would swallow the signal
            }
            read_fd_ = fds[0];
            caught_write_fd.store(fds[1]);
        }
        if (installed_now_) return read_fd_;
        Caught stale{};
        while (::read(read_fd_, &stale, sizeof stale) > 0) {
        }  // from a handler that ran as the last watcher ended
        caught_pid.store(::getpid(), std::memory_order_relaxed);
        struct sigaction action {};
        action.sa_sigaction = on_stop_signal;
        action.sa_flags = SA_SIGINFO | SA_RESTART;
        action.sa_mask = stop_signals();  // one at a time
        for (std::size_t i = 0; i < std::size(kStopSignals); ++i) {
            // An ignored one stays ignored, as it does for a watcher that blocks them (the
            // kernel drops it): nohup's SIGHUP.
            installed_[i] = ::sigaction(kStopSignals[i], nullptr, &previous_[i]) == 0 &&
                            !(previous_[i].sa_handler == SIG_IGN && !(previous_[i].sa_flags & SA_SIGINFO)) &&
                            ::sigaction(kStopSignals[i], &action, nullptr) == 0;
        }
        installed_now_ = true;
        return read_fd_;
    }

    void release() {
        std::lock_guard lock(mutex_);
        if (--users_ > 0 || !installed_now_) return;
        for (std::size_t i = 0; i < std::size(kStopSignals); ++i) {
            if (!std::exchange(installed_[i], false)) continue;
            // Put back only where ours is still there: a handler the program set meanwhile is its own.
            struct sigaction now {};
            if (::sigaction(kStopSignals[i], nullptr, &now) == 0 && (now.sa_flags & SA_SIGINFO) &&
                now.sa_sigaction == on_stop_signal)
                ::sigaction(kStopSignals[i], &previous_[i], nullptr);
        }
        installed_now_ = false;
    }

private:
    std::mutex mutex_;
    int users_ = 0;
    int read_fd_ = -1;
    bool installed_now_ = false;  // the handlers are in place
    struct sigaction previous_[std::size(kStopSignals)]{};
    bool installed_[std::size(kStopSignals)] = {};
};

}  // namespace

StopSignalsBlocked::StopSignalsBlocked() {
    const sigset_t set = stop_signals();
    ::pthread_sigmask(SIG_BLOCK, &set, &previous_);
}

StopSignalsBlocked::~StopSignalsBlocked() { ::pthread_sigmask(SIG_SETMASK, &previous_, nullptr); }

SignalWatcher::SignalWatcher(std::chrono::milliseconds drain_timeout, std::string drain_option, Take take)
    : take_(take), drain_timeout_(drain_timeout), drain_option_(std::move(drain_option)) {
    const sigset_t set = stop_signals();
    const int caught = take_ == Take::Handlers ? Handlers::get().acquire() : -1;
    if (take_ == Take::Mask) ::pthread_sigmask(SIG_BLOCK, &set, &previous_);
    thread_ = std::jthread([this, set, caught](std::stop_token done) {
        // Mask: the signals through a signalfd; Handlers: the pipe its handlers write to. The end
        // of the watch through an eventfd, so that the run's end does not wait out a timeout (it
        // waited 0-100 ms, at every exit); the 100 ms wake stays for --drain-timeout's deadline.
        // Without them, sigtimedwait.
        if (take_ == Take::Handlers) ::pthread_sigmask(SIG_BLOCK, &set, nullptr);  // never this thread
        const UniqueFd signals(take_ == Take::Mask ? ::signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK) : -1);
        const int source = take_ == Take::Mask ? signals.get() : caught;
        const StopWake wake(done);
        const timespec poll{0, 100'000'000};
        while (!done.stop_requested()) {
            int received = 0;
            int code = 0;
            pid_t sender = 0;
            if (source >= 0 && wake.fd() >= 0) {
                pollfd polled[] = {{source, POLLIN, 0}, {wake.fd(), POLLIN, 0}};
                ::poll(polled, 2, 100);
                if (take_ == Take::Mask) {
                    signalfd_siginfo info{};
                    if (::read(source, &info, sizeof info) == static_cast<ssize_t>(sizeof info)) {
                        received = static_cast<int>(info.ssi_signo);
                        code = info.ssi_code;
                        sender = static_cast<pid_t>(info.ssi_pid);
                    }
                } else if (Caught got{}; ::read(source, &got, sizeof got) == static_cast<ssize_t>(sizeof got)) {
                    received = got.signal;
                    code = got.code;
                    sender = got.sender;
                }
            } else if (take_ == Take::Mask) {
                siginfo_t info{};
                received = ::sigtimedwait(&set, &info, &poll);
                code = info.si_code;
                sender = info.si_pid;
            } else {
                ::nanosleep(&poll, nullptr);  // no pipe or eventfd: only the drain's deadline is kept
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
    if (take_ == Take::Handlers) {
        Handlers::get().release();  // process-wide: from any thread
        thread_.request_stop();
        thread_.join();
        return;
    }
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
