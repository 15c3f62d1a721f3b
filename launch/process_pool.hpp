#pragma once
// Spawns, watches and reaps worker processes. Whoever starts a process reaps it: the
// destructor waits a short grace period for exits, then kills and reaps what is left.
// Only pids this pool spawned and has not reaped are ever signalled.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "launcher.hpp"

namespace taskfarm {

// The program's own fork server (decision 101): `binary PREFIX... --fork-server`, started
// through Boost.Process while this process has no thread and no ZeroMQ context, with the
// worker code and libraries loaded; it forks each local worker on request, as a child of
// this process (so the pool reaps it and sees its exit as it would an exec'd one). Its
// protocol is one SOCK_SEQPACKET socket: "CPU\0ARG\0..." -> {pid, errno}.
class ForkServer {
public:
    // Throws when it cannot start.
    ForkServer(const std::filesystem::path& binary, const std::vector<std::string>& prefix, const std::string& log_level);
    ~ForkServer();  // closes its socket (it exits), waits a moment, kills and reaps it
    ForkServer(const ForkServer&) = delete;
    ForkServer& operator=(const ForkServer&) = delete;

    // A worker running the program with `args` (after PREFIX), pinned to `cpu` when >= 0;
    // its pid (a child of this process), or -1 when the server is gone (it is not asked again).
    pid_t fork_worker(const std::vector<std::string>& args, int cpu);
    pid_t pid() const;
    bool alive() const { return channel_ >= 0; }

private:
    struct Process;
    std::unique_ptr<Process> process_;
    int channel_ = -1;  // our end of the socket; -1 once the server is gone
};

struct WorkerLaunch {
    std::filesystem::path binary{};
    std::vector<std::string> prefix{};    // arguments before the worker's own (an App's "worker")
    std::filesystem::path out_dir{};      // passed as --out-dir: where its tasks save files
    std::filesystem::path scratch_dir{};  // passed as --scratch-dir when set
    std::filesystem::path state_dir{};    // passed as --state-dir when set: where each keeps its RunningBoard
    std::string endpoint{};
    double heartbeat_interval_s = 0.2;
    double heartbeat_timeout_s = 2.0;
    std::string log_level = {};  // passed as --log-level; empty: the worker's default (SPDLOG_LEVEL)
    // Forks the workers when set and alive; else (--worker-bin, or a dead server) they are exec'd.
    ForkServer* fork_server = nullptr;
};

class ProcessPool final : public WorkerLauncher {
public:
    explicit ProcessPool(WorkerLaunch launch);
    ~ProcessPool();  // noexcept: logs, never throws
    ProcessPool(const ProcessPool&) = delete;
    ProcessPool& operator=(const ProcessPool&) = delete;

    // Starts `worker --connect ENDPOINT --name NAME`, forked by the fork server or exec'd;
    // it dies with this process (PR_SET_PDEATHSIG, set before it runs worker code) and is in
    // a process group of its own. With cpu >= 0 it runs only on that CPU from its first
    // instruction of worker code; if the kernel refuses, it runs unpinned and says so in its
    // HELLO. Throws when it cannot start.
    pid_t spawn(const std::string& name, int cpu = -1) override;

    // Reaps the workers that exited since the last call, without blocking.
    std::vector<WorkerExit> reap_exited() override;

    // SIGKILLs a live worker of ours and reaps it; no-op for an unknown pid.
    void kill(pid_t pid) override;

    // Waits until every worker has exited or `grace` passed, then kills the rest.
    // Returns how each one ended.
    std::vector<WorkerExit> stop_all(std::chrono::milliseconds grace);

    std::size_t alive() const;

    // What the board of worker `pid`, which has ended (reaped by reap_exited() or kill()),
    // says it was running; Known::No without a state_dir.
    LastRunning last_running(pid_t pid) const override;

private:
    struct Child;
    static void kill_and_reap(const Child& child);
    WorkerLaunch launch_;
    std::vector<std::unique_ptr<Child>> children_;  // live ones only
};

// Where the worker binary is when --worker-bin is not given: next to this executable.
std::filesystem::path default_worker_binary();

}  // namespace taskfarm
