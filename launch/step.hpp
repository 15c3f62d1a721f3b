#pragma once
// --launch slurm|mpirun: the workers as one job of a cluster's launcher, remote workers that the
// coordinator started: one `srun` job step (inside an allocation it uses its CPUs; outside one,
// srun allocates them itself, --slurm-args says how), or one `mpirun` (Open MPI or MPICH, on
// the hosts the site's scheduler gave it). The workers connect back over tcp with CurveZMQ
// keys made for this run; the rest (requeue of a lost worker's tasks, no respawns) is the
// remote-worker machinery's.

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

// `name` as execv wants it: a path, found in PATH when it has no slash (execvp may allocate
// between fork and exec, so the search happens before the fork); nullopt when it is not there.
std::optional<std::string> find_in_path(const std::string& name);

// Splits --slurm-args or --mpirun-args as the shell would (quotes, backslashes), without
// running anything: command substitution and undefined variables are refused. Throws
// std::invalid_argument.
std::vector<std::string> split_launcher_args(const std::string& text);

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

enum class StepLauncher { Slurm, Mpirun };
// "srun", "mpirun": the program, also the name in messages.
const char* program_of(StepLauncher launcher);
// "Slurm job step", "mpirun job": what the workers are part of, in messages.
const char* step_noun(StepLauncher launcher);
// "slurm", "mpirun": the --launch value.
const char* launch_name(StepLauncher launcher);

struct StepConfig {
    StepLauncher launcher = StepLauncher::Slurm;
    int tasks = 1;                      // srun --ntasks, mpirun -n: one worker each
    bool pin = false;                   // srun --cpu-bind=cores, mpirun -bind-to core; else none / Slurm's default
    std::vector<std::string> args{};    // --slurm-args, --mpirun-args: before the worker's command
    std::vector<std::string> worker{};  // the worker's command line, binary first
};

// The launcher's command line for `config`, program first (found in PATH), and the variables
// it adds to the environment (NAME=VALUE). Throws RunError when the program is not found.
struct StepCommand {
    std::vector<std::string> argv;
    std::vector<std::string> env;
};
StepCommand step_command(const StepConfig& config);

// One running launcher (srun, mpirun) and the workers it started. Its stderr is copied to ours
// line by line (the workers' logs come that way too), and its last lines are kept for the
// reason when the step ends early. It dies with this process (PR_SET_PDEATHSIG), and the
// launcher then ends its workers.
class WorkerStep {
public:
    // Starts the launcher. Throws RunError when it cannot.
    explicit WorkerStep(const StepConfig& config);
    // Stops the launcher if it still runs (see stop()).
    ~WorkerStep();
    WorkerStep(const WorkerStep&) = delete;
    WorkerStep& operator=(const WorkerStep&) = delete;

    // Reaps the launcher if it has exited, without blocking; then returns how it ended
    // (describe()). nullopt while it runs.
    std::optional<std::string> ended();

    // How the launcher ended, "srun exited with status 1", and with `last_lines` its last lines
    // on stderr: "...; its last lines on stderr: srun: error: ... | ...".
    std::string describe(bool last_lines = true) const;

    // Waits up to `grace` for the launcher to exit (its workers got SHUTDOWN), then sends it
    // SIGTERM (srun and mpirun pass it to the workers and end them) and waits up to `grace`
    // again, then SIGKILLs it. Returns how it ended.
    std::string stop(std::chrono::milliseconds grace);

private:
    bool wait_until(std::chrono::steady_clock::time_point deadline);
    void copy_stderr(int fd);

    std::string program_;  // "srun", "mpirun": for messages
    pid_t pid_ = -1;       // -1 once reaped
    int status_ = 0;
    mutable std::mutex mutex_;
    std::vector<std::string> last_lines_;  // of the launcher's stderr, the newest last
    std::jthread reader_;
};

}  // namespace taskfarm
