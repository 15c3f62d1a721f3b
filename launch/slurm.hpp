#pragma once
// --launch slurm: the workers as one `srun` job step, remote workers that the coordinator
// started. Inside an allocation (sbatch, salloc) the step uses its CPUs; outside one, srun
// allocates them itself (--slurm-args says how). The workers connect back over tcp with
// CurveZMQ keys made for this run; the rest (requeue of a lost worker's tasks, no respawns)
// is the remote-worker machinery's.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "curve.hpp"

namespace taskfarm {

// The first address of an interface that is up and is not loopback (IPv4), which the other
// nodes of an allocation can most likely reach; 127.0.0.1 when there is none.
std::string first_non_loopback_address();

// Splits --slurm-args as the shell would (quotes, backslashes), without running anything:
// command substitution and undefined variables are refused. Throws std::invalid_argument.
std::vector<std::string> split_slurm_args(const std::string& text);

// Keys made for one run, in a new 0700 directory under `parent` (the working directory,
// which the nodes of a cluster share: the workers read their keys from there). Removed with
// everything in it.
class RunKeys {
public:
    explicit RunKeys(const std::filesystem::path& parent);
    ~RunKeys();
    RunKeys(const RunKeys&) = delete;
    RunKeys& operator=(const RunKeys&) = delete;

    const std::filesystem::path& dir() const { return dir_; }
    const curve::ServerKeys& server() const { return server_; }

private:
    std::filesystem::path dir_;
    curve::ServerKeys server_;
};

struct SlurmStepConfig {
    int tasks = 1;                       // srun --ntasks: one worker each
    bool pin = false;                    // --cpu-bind=cores, else Slurm's default binding
    std::vector<std::string> srun_args;  // from --slurm-args, before the worker's command
    std::vector<std::string> worker;     // the worker's command line, binary first
};

// One running `srun` and the workers it started. Its stderr is copied to ours line by line
// (the workers' logs come that way too), and its last lines are kept for the reason when the
// step ends early. It dies with this process (PR_SET_PDEATHSIG), and srun then ends the step.
class SlurmStep {
public:
    // Starts srun. Throws RunError when it cannot.
    explicit SlurmStep(SlurmStepConfig config);
    // Stops srun if it still runs (see stop()).
    ~SlurmStep();
    SlurmStep(const SlurmStep&) = delete;
    SlurmStep& operator=(const SlurmStep&) = delete;

    // Reaps srun if it has exited, without blocking; then returns how it ended (describe()).
    // nullopt while it runs.
    std::optional<std::string> ended();

    // How srun ended, "srun exited with status 1", and with `last_lines` its last lines on
    // stderr: "...; its last lines on stderr: srun: error: ... | ...".
    std::string describe(bool last_lines = true) const;

    // Waits up to `grace` for srun to exit (its workers got SHUTDOWN), then sends it SIGTERM
    // (srun passes it to the workers and ends the step) and waits up to `grace` again, then
    // SIGKILLs it. Returns how it ended.
    std::string stop(std::chrono::milliseconds grace);

private:
    bool wait_until(std::chrono::steady_clock::time_point deadline);
    void copy_stderr(int fd);

    pid_t pid_ = -1;  // -1 once reaped
    int status_ = 0;
    mutable std::mutex mutex_;
    std::vector<std::string> last_lines_;  // of srun's stderr, the newest last
    std::jthread reader_;
};

}  // namespace taskfarm
