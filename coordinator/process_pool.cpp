#include "process_pool.hpp"

#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <thread>

#include <boost/process/args.hpp>
#include <boost/process/child.hpp>
#include <boost/process/exe.hpp>
#include <boost/process/extend.hpp>
#include <boost/process/io.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace bp = boost::process;

namespace taskfarm {

struct ProcessPool::Child {
    std::string name;
    bp::child process;
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
    auto child = std::make_unique<Child>(Child{
        name, bp::child(bp::exe = launch_.binary.string(), bp::args = args, bp::std_out > bp::null,
                        bp::std_in < bp::null, bp::extend::on_exec_setup = DieWithParent{},
                        bp::extend::on_exec_setup = PinToCpu(cpu))});
    const pid_t pid = child->process.id();
    spdlog::debug("started worker {} (pid {}, cpu {})", name, pid, cpu);
    children_.push_back(std::move(child));
    return pid;
}

std::vector<WorkerExit> ProcessPool::reap_exited() {
    std::vector<WorkerExit> exits;
    std::erase_if(children_, [&](const std::unique_ptr<Child>& child) {
        if (!has_exited(child->process.id())) return false;
        kill_group(child->process.id());  // what it left running dies with it
        std::error_code ec;
        if (child->process.running(ec) || ec) return false;  // running() reaps an exited child
        exits.push_back({child->process.id(), child->name, describe_status(child->process.native_exit_code())});
        return true;
    });
    return exits;
}

void ProcessPool::kill(pid_t pid) {
    std::erase_if(children_, [&](const std::unique_ptr<Child>& child) {
        if (child->process.id() != pid) return false;
        kill_group(pid);
        std::error_code ec;
        child->process.terminate(ec);  // SIGKILL, then waitpid
        if (ec) spdlog::warn("cannot kill worker {} (pid {}): {}", child->name, pid, ec.message());
        return true;
    });
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
        spdlog::debug("killing worker {} (pid {})", child->name, child->process.id());
        kill_group(child->process.id());
        std::error_code ec;
        child->process.terminate(ec);
        exits.push_back({child->process.id(), child->name, "killed after the shutdown grace period"});
    }
    children_.clear();
    return exits;
}

std::size_t ProcessPool::alive() const { return children_.size(); }

}  // namespace taskfarm
