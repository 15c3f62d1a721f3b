#include "process_pool.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <thread>

#include <boost/process/args.hpp>
#include <boost/process/child.hpp>
#include <boost/process/exe.hpp>
#include <boost/process/extend.hpp>
#include <boost/process/io.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "fork_protocol.hpp"

namespace bp = boost::process;

namespace taskfarm {

struct ProcessPool::Child {
    std::string name;
    pid_t pid = -1;  // ours until reaped (detached from Boost.Process, or forked by the server)
};

struct ForkServer::Process {
    bp::child child;
};

namespace {

// Runs in the child between fork and exec: only async-signal-safe calls here.
struct DieWithParent {
    template <typename Executor>
    void operator()(Executor&) const {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        // A group of its own, whose id is the worker's pid: whatever the worker starts (a
        // --worker-bin wrapper's other children, say) is in it, and ends with it (kill_group).
        // A Ctrl-C on the terminal reaches only the coordinator, which stops the workers itself.
        ::setpgid(0, 0);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the coordinator blocks its stop signals
        ::signal(SIGPIPE, SIG_DFL);                  // and ignores SIGPIPE; exec keeps an ignored signal ignored
    }
};

// SIGKILL to the worker's process group (see DieWithParent). Call it before the worker is
// reaped: until then its pid, which is the group's id, cannot be reused.
void kill_group(pid_t pid) {
    if (pid > 0) ::kill(-pid, SIGKILL);
}

// Whether the child has exited, without reaping it, so that its group can still be killed.
bool has_exited(pid_t pid) {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
}

// Runs in the child between fork and exec, so the pin holds before the worker's first
// instruction. The set is built in the parent: the child only makes the system call.
struct PinToCpu {
    bool pin = false;
    cpu_set_t set{};
    explicit PinToCpu(int cpu) : pin(cpu >= 0) {
        CPU_ZERO(&set);
        if (pin) CPU_SET(cpu, &set);
    }
    template <typename Executor>
    void operator()(Executor&) const {
        if (pin) ::sched_setaffinity(0, sizeof set, &set);  // a failure shows as cpu -1 in HELLO
    }
};

// Runs in the fork server between fork and exec: its end of the socket becomes descriptor 3
// (dup2 clears close-on-exec; a descriptor already 3 keeps it, so clear it by hand).
struct HandOverChannel {
    int fd = -1;
    template <typename Executor>
    void operator()(Executor&) const {
        if (fd == 3)
            ::fcntl(fd, F_SETFD, 0);
        else
            ::dup2(fd, 3);
    }
};

constexpr auto kForkReplyTimeout = std::chrono::seconds(10);
constexpr auto kForkServerGrace = std::chrono::milliseconds(1000);

std::string describe_status(int status) {
    if (WIFSIGNALED(status)) return fmt::format("signal {}", WTERMSIG(status));
    if (WIFEXITED(status)) return fmt::format("exit code {}", WEXITSTATUS(status));
    return fmt::format("status {}", status);
}

}  // namespace

std::filesystem::path default_worker_binary() {
    std::error_code ec;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::filesystem::path("worker") : self.parent_path() / "worker";
}

ForkServer::ForkServer(const std::filesystem::path& binary, const std::vector<std::string>& prefix,
                       const std::string& log_level) {
    int ends[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ends) != 0)
        throw std::system_error(errno, std::generic_category(), "cannot make the fork server's socket");
    std::vector<std::string> args = prefix;
    args.insert(args.end(), {"--fork-server", "--parent-pid", std::to_string(::getpid())});
    if (!log_level.empty()) args.insert(args.end(), {"--log-level", log_level});
    try {
        process_ = std::make_unique<Process>(Process{bp::child(
            bp::exe = binary.string(), bp::args = args, bp::std_out > bp::null, bp::std_in < bp::null,
            bp::extend::on_exec_setup = DieWithParent{}, bp::extend::on_exec_setup = HandOverChannel{ends[1]})});
    } catch (...) {
        ::close(ends[0]);
        ::close(ends[1]);
        throw;
    }
    ::close(ends[1]);
    channel_ = ends[0];
    spdlog::debug("started the fork server (pid {})", process_->child.id());
}

ForkServer::~ForkServer() {
    if (channel_ >= 0) ::close(channel_);  // its end of file: it exits
    std::error_code ec;
    if (!process_->child.wait_for(kForkServerGrace, ec)) {
        process_->child.terminate(ec);
        if (ec) spdlog::warn("cannot kill the fork server (pid {}): {}", process_->child.id(), ec.message());
    }
}

pid_t ForkServer::pid() const { return process_->child.id(); }

pid_t ForkServer::fork_worker(const std::vector<std::string>& args, int cpu) {
    if (channel_ < 0) return -1;
    std::string request = std::to_string(cpu);
    for (const std::string& arg : args) {
        request += '\0';
        request += arg;
    }
    ForkReply reply;
    pollfd readable{channel_, POLLIN, 0};
    const bool sent = ::send(channel_, request.data(), request.size(), MSG_NOSIGNAL) == static_cast<ssize_t>(request.size());
    const bool answered = sent && ::poll(&readable, 1, static_cast<int>(std::chrono::milliseconds(kForkReplyTimeout).count())) == 1 &&
                          ::recv(channel_, &reply, sizeof reply, 0) == static_cast<ssize_t>(sizeof reply);
    if (!answered) {
        spdlog::warn("the fork server (pid {}) is gone; workers are exec'd from now on", pid());
        ::close(channel_);
        channel_ = -1;
        return -1;
    }
    if (reply.pid < 0)
        throw std::system_error(reply.error, std::generic_category(), "the fork server cannot fork a worker");
    return reply.pid;
}

ProcessPool::ProcessPool(WorkerLaunch launch) : launch_(std::move(launch)) {}

ProcessPool::~ProcessPool() {
    try {
        stop_all(std::chrono::milliseconds(0));
    } catch (const std::exception& e) {
        spdlog::error("cannot stop worker processes: {}", e.what());
    }
}

pid_t ProcessPool::spawn(const std::string& name, int cpu) {
    std::vector<std::string> args = launch_.prefix;
    args.insert(args.end(), {
        "--connect",           launch_.endpoint,
        "--name",              name,
        "--parent-pid",        std::to_string(::getpid()),
        "--heartbeat-interval", fmt::format("{}", launch_.heartbeat_interval_s),
        "--heartbeat-timeout", fmt::format("{}", launch_.heartbeat_timeout_s),
        "--out-dir",           launch_.out_dir.string(),
    });
    if (!launch_.log_level.empty()) args.insert(args.end(), {"--log-level", launch_.log_level});
    if (!launch_.scratch_dir.empty()) args.insert(args.end(), {"--scratch-dir", launch_.scratch_dir.string()});
    if (!launch_.state_dir.empty()) args.insert(args.end(), {"--state-dir", launch_.state_dir.string()});
    // The fork server is already the program run with the prefix: it gets the rest.
    pid_t pid = launch_.fork_server ? launch_.fork_server->fork_worker(
                                          {args.begin() + static_cast<std::ptrdiff_t>(launch_.prefix.size()), args.end()}, cpu)
                                    : -1;
    if (pid <= 0) {
        bp::child process(bp::exe = launch_.binary.string(), bp::args = args, bp::std_out > bp::null, bp::std_in < bp::null,
                          bp::extend::on_exec_setup = DieWithParent{}, bp::extend::on_exec_setup = PinToCpu(cpu));
        pid = process.id();
        process.detach();  // reaped here, by pid (waitpid), like a forked one
    }
    spdlog::debug("started worker {} (pid {}, cpu {})", name, pid, cpu);
    children_.push_back(std::make_unique<Child>(Child{name, pid}));
    return pid;
}

std::vector<WorkerExit> ProcessPool::reap_exited() {
    std::vector<WorkerExit> exits;
    std::erase_if(children_, [&](const std::unique_ptr<Child>& child) {
        if (!has_exited(child->pid)) return false;
        kill_group(child->pid);  // what it left running dies with it
        int status = 0;
        if (::waitpid(child->pid, &status, WNOHANG) != child->pid) return false;
        exits.push_back({child->pid, child->name, describe_status(status)});
        return true;
    });
    return exits;
}

LastRunning ProcessPool::last_running(pid_t pid) const {
    if (launch_.state_dir.empty()) return {};
    return read_running_board(launch_.state_dir, pid);
}

void ProcessPool::kill(pid_t pid) {
    std::erase_if(children_, [&](const std::unique_ptr<Child>& child) {
        if (child->pid != pid) return false;
        kill_and_reap(*child);
        return true;
    });
}

void ProcessPool::kill_and_reap(const Child& child) {
    kill_group(child.pid);
    ::kill(child.pid, SIGKILL);
    while (::waitpid(child.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
}

std::vector<WorkerExit> ProcessPool::stop_all(std::chrono::milliseconds grace) {
    std::vector<WorkerExit> exits;
    const auto deadline = std::chrono::steady_clock::now() + grace;
    while (true) {
        for (WorkerExit& exit : reap_exited()) {
            spdlog::debug("worker {} (pid {}) exited: {}", exit.name, exit.pid, exit.reason);
            exits.push_back(std::move(exit));
        }
        if (children_.empty() || std::chrono::steady_clock::now() >= deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    for (const auto& child : children_) {
        spdlog::debug("killing worker {} (pid {})", child->name, child->pid);
        kill_and_reap(*child);
        exits.push_back({child->pid, child->name, "killed after the shutdown grace period"});
    }
    children_.clear();
    return exits;
}

std::size_t ProcessPool::alive() const { return children_.size(); }

}  // namespace taskfarm
