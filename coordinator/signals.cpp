#include "signals.hpp"

#include <signal.h>

#include <cstdlib>

#include <spdlog/spdlog.h>

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

}  // namespace

SignalWatcher::SignalWatcher() {
    const sigset_t set = stop_signals();
    ::pthread_sigmask(SIG_BLOCK, &set, nullptr);
    thread_ = std::jthread([this, set](std::stop_token done) {
        const timespec poll{0, 100'000'000};
        while (!done.stop_requested()) {
            const int received = ::sigtimedwait(&set, nullptr, &poll);
            if (received <= 0) continue;
            if (stop(received)) {
                spdlog::warn("{} received: stopping; press Ctrl-C again to quit at once", signal_name(received));
            } else if (received == SIGINT) {
                std::_Exit(128 + SIGINT);
            }
        }
    });
}

bool SignalWatcher::stop(int signal) {
    int none = 0;
    if (!signal_.compare_exchange_strong(none, signal)) return false;
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
