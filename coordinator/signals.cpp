#include "signals.hpp"

#include <signal.h>

#include <cstdlib>

#include <spdlog/spdlog.h>

#include "temp_dirs.hpp"

namespace taskfarm {
namespace {

sigset_t stop_signals() {
    sigset_t set;
    sigemptyset(&set);
    for (int signal : {SIGHUP, SIGINT, SIGQUIT, SIGTERM}) sigaddset(&set, signal);
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

SignalWatcher::SignalWatcher(std::chrono::milliseconds drain_timeout) : drain_timeout_(drain_timeout) {
    const sigset_t set = stop_signals();
    ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
    thread_ = std::jthread([this, set](std::stop_token done) {
        const timespec poll{0, 100'000'000};
        while (!done.stop_requested()) {
            const int received = ::sigtimedwait(&set, nullptr, &poll);
            if (received > 0) on_signal(received);
            if (drain_.stop_requested() && !stop_.stop_requested() &&
                std::chrono::steady_clock::now() >= drain_deadline_) {
                spdlog::warn("--drain-timeout {:g} s passed: cancelling the tasks still running",
                             std::chrono::duration<double>(drain_timeout_).count());
                stop_.request_stop();
            }
        }
    });
}

void SignalWatcher::on_signal(int received) {
    if (drains(received) && signal_.load() == 0) {
        int none = 0;
        if (signal_.compare_exchange_strong(none, received)) {
            drain_deadline_ = std::chrono::steady_clock::now() + drain_timeout_;
            drain_.request_stop();
            spdlog::warn("{} received: draining: no new task starts, the running ones finish (up to --drain-timeout "
                         "{:g} s); {} again or Ctrl-C cancels them",
                         signal_name(received), std::chrono::duration<double>(drain_timeout_).count(),
                         signal_name(received));
            return;
        }
    }
    if (stop(received)) {
        spdlog::warn("{} received: stopping; press Ctrl-C again to quit at once", signal_name(received));
    } else if (!stop_.stop_requested()) {
        // Draining: a second signal cancels what is still running.
        stop_.request_stop();
        spdlog::warn("{} received while draining: cancelling the running tasks; press Ctrl-C again to quit at once",
                     signal_name(received));
    } else if (received == SIGINT) {
        remove_temp_dirs();  // _Exit runs no destructor and no exit handler
        std::_Exit(128 + SIGINT);
    }
}

bool SignalWatcher::stop(int signal) {
    int none = 0;
    if (!signal_.compare_exchange_strong(none, signal)) return false;
    drain_.request_stop();
    stop_.request_stop();
    return true;
}

SignalWatcher::~SignalWatcher() {
    thread_.request_stop();
    thread_.join();
    const sigset_t set = stop_signals();
    ::pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

}  // namespace taskfarm
