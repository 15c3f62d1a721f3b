#include "fork_server.hpp"

#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>

#include <spdlog/spdlog.h>
#include <zmq.h>

#include "this_pid.hpp"

namespace taskfarm {
namespace {

// fork(), except that the child's parent is our parent, the coordinator: glibc's fork has no
// such flag. The process is single-threaded and holds no lock, so glibc's fork handlers have
// nothing to do; its main thread's cached thread id stays the server's (decision 101). Our
// own atfork handler (this_pid.hpp's) does not run either: become_worker() does its work.
pid_t fork_as_sibling() { return static_cast<pid_t>(::syscall(SYS_clone, CLONE_PARENT | SIGCHLD, 0, 0, 0, 0)); }

// In the new child, before it runs any worker code: what the coordinator's exec'd workers
// get between fork and exec (process_pool.cpp), plus the pin.
void become_worker(int channel, pid_t coordinator, int cpu, const char* comm) {
    forget_this_pid();
    ::close(channel);
    ::prctl(PR_SET_NAME, comm);  // the program's name again, not the server's, in ps and /proc
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != coordinator) std::_Exit(1);  // the coordinator died before the prctl
    ::setpgid(0, 0);
    if (cpu >= 0) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        ::sched_setaffinity(0, sizeof set, &set);  // a failure shows as cpu -1 in HELLO
    }
}

}  // namespace

std::optional<std::vector<std::string>> serve_forks(const Registry& registry, int channel, pid_t coordinator,
                                                    const std::vector<std::string>* preload) {
    for (const auto& type : registry.types()) {
        if (preload && std::find(preload->begin(), preload->end(), type->name()) == preload->end()) continue;
        try {
            if (const RunHooks* hooks = run_hooks(*type)) hooks->preload();
        } catch (const std::exception& e) {  // its first task will say so again, in its result
            spdlog::debug("cannot preload task type '{}': {}", type->name(), e.what());
        }
    }
    // What starting a ZeroMQ context loads once per process and keeps, loaded here once rather
    // than in every worker: glibc's name-service set-up, which libzmq's PGM start-up
    // (getprotobyname) reads, nsswitch.conf and a search for libnss_db in ~40 directories
    // (decision 284). The context itself ends here; each worker makes its own.
    if (void* context = ::zmq_ctx_new()) ::zmq_ctx_term(context);
    // /proc/PID/comm and ps: the server is "fork-server"; a worker has the program's name.
    // (Its command line is the server's until worker_main overwrites it: "worker w3".)
    char comm[17] = {};
    ::prctl(PR_GET_NAME, comm);
    ::prctl(PR_SET_NAME, kForkServerName);
    // Ready: the coordinator starts its processes mode's clock on this (decision 262).
    if (::send(channel, &kForkServerReady, sizeof kForkServerReady, MSG_NOSIGNAL) != sizeof kForkServerReady)
        return std::nullopt;  // the coordinator is gone
    std::vector<char> request(kMaxForkRequest + 1);
    while (true) {
        const ssize_t got = ::recv(channel, request.data(), request.size(), 0);
        if (got == 0) return std::nullopt;  // the coordinator closed its end: done
        if (got < 0) {
            if (errno == EINTR) continue;
            spdlog::error("fork server: cannot read a request: {}", std::strerror(errno));
            return std::nullopt;
        }
        ForkReply reply;
        std::vector<std::string> args;
        for (const char *at = request.data(), *end = at + got; at < end;) {
            const char* nul = static_cast<const char*>(std::memchr(at, '\0', static_cast<std::size_t>(end - at)));
            if (!nul) nul = end;
            args.emplace_back(at, nul);
            at = nul + 1;
        }
        int cpu = -1;
        if (static_cast<std::size_t>(got) > kMaxForkRequest || args.size() < 2) {
            reply.error = EINVAL;
        } else {
            cpu = std::atoi(args.front().c_str());
            args.erase(args.begin());
            reply.pid = fork_as_sibling();
            if (reply.pid == 0) {
                become_worker(channel, coordinator, cpu, comm);
                return args;
            }
            if (reply.pid < 0) reply.error = errno;
        }
        if (::send(channel, &reply, sizeof reply, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof reply)) {
            // The coordinator stopped waiting (or is gone): it will never know this worker.
            if (reply.pid > 0) ::kill(reply.pid, SIGKILL);
            return std::nullopt;
        }
    }
}

}  // namespace taskfarm
