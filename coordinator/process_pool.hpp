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

namespace taskfarm {

struct WorkerLaunch {
    std::filesystem::path binary{};
    std::vector<std::string> prefix{};    // arguments before the worker's own (an App's "worker")
    std::filesystem::path out_dir{};      // passed as --out-dir: where its tasks save files
    std::filesystem::path scratch_dir{};  // passed as --scratch-dir when set
    std::string endpoint{};
    double heartbeat_interval_s = 0.2;
    double heartbeat_timeout_s = 2.0;
    std::string log_level = {};  // passed as --log-level; empty: the worker's default (SPDLOG_LEVEL)
};

struct WorkerExit {
    pid_t pid = 0;
    std::string name;
    std::string reason;  // "exit code 1", "signal 9"
};

class ProcessPool {
public:
    explicit ProcessPool(WorkerLaunch launch);
    ~ProcessPool();  // noexcept: logs, never throws
    ProcessPool(const ProcessPool&) = delete;
    ProcessPool& operator=(const ProcessPool&) = delete;

    // Starts `worker --connect ENDPOINT --name NAME`; it dies with this process
    // (PR_SET_PDEATHSIG, set between fork and exec). With cpu >= 0 it runs only on that
    // CPU from its first instruction (also set before exec); if the kernel refuses, it runs
    // unpinned and says so in its HELLO. Throws when it cannot start.
    pid_t spawn(const std::string& name, int cpu = -1);

    // Reaps the workers that exited since the last call, without blocking.
    std::vector<WorkerExit> reap_exited();

    // SIGKILLs a live worker of ours and reaps it; no-op for an unknown pid.
    void kill(pid_t pid);

    // Waits until every worker has exited or `grace` passed, then kills the rest.
    // Returns how each one ended.
    std::vector<WorkerExit> stop_all(std::chrono::milliseconds grace);

    std::size_t alive() const;

private:
    struct Child;
    WorkerLaunch launch_;
    std::vector<std::unique_ptr<Child>> children_;  // live ones only
};

// Where the worker binary is when --worker-bin is not given: next to this executable.
std::filesystem::path default_worker_binary();

}  // namespace taskfarm
