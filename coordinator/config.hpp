#pragma once
// RunConfig: everything the command line decides, checked, with defaults.

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "alloc.hpp"
#include "console_modes.hpp"
#include "curve.hpp"
#include "mode.hpp"
#include "resources.hpp"
#include "step.hpp"
#include "task.hpp"

namespace taskfarm {

struct ParallelOutput;  // parallel_output.hpp
class PlanSource;       // engine/plan.hpp
struct RunConfig;

// Why `request` can never be met by the local workers of `config`, or empty: more than they
// have, or no local worker at all (--workers 0: resources are the local workers').
std::string unmet_resources(const RunConfig& config, const ResourceRequest& request);

struct RunConfig {
    int workers = 4;
    std::string task;  // --task: a registered type's name (parse_cli: the program's default when not given)
    int tasks = 10;
    std::filesystem::path plan_path;  // --plan: tasks from this JSON Lines file instead
    // A plan made by the command line itself (`coordinator parallel`'s jobs, made as their
    // input comes): its count what counted() says before the run.
    std::shared_ptr<const PlanSource> plan_source;
    // --inputs FILE, or a type's flag that is it (Flag::Picks::InputsFile: --task NAME --inputs
    // FILE): a task per line.
    std::filesystem::path inputs_path;
    std::string inputs_flag = "--inputs";  // which flag gave inputs_path, for messages
    // The types' own flags (TaskType::flags(), given or their defaults; a flag that picks the
    // tasks only when given) and --set KEY=VALUE; the coordinator's flags join them in
    // settings_json().
    Json settings = Json::object();
    // The flags given on the command line that become settings, with the setting each becomes
    // ({"--retries", "retries"}; "--out-dir" is "out_dir"): one that no type of the plan reads
    // is warned about before the run, which still runs.
    std::vector<std::pair<std::string, std::string>> given_settings;
    // Files go to out_dir/<mode>/: --out-dir, else (decided with the plan) default_out_dir() of
    // the plan's types, the directory its first type that writes files names.
    std::filesystem::path out_dir{};
    // --retries when given, the setting "retries": a type that retries inside its tasks reads
    // it instead of the engine's reruns (task_retries), with a default of its own when not given.
    std::optional<std::uint32_t> retries;
    std::uint64_t seed = 1;
    std::vector<Mode> modes{Mode::Sequential, Mode::Threads, Mode::Processes};
    bool modes_given = false;                   // --mode was given: a plan with side effects keeps these modes
    OutputBlocks output = OutputBlocks::Group;  // --output: the tasks' output blocks on the console
    int prefetch = 0;                           // tasks a worker may hold at once; 0: auto (see DispatchOptions)
    // --pin: worker (or thread) i runs only on pin_cpus[i % size]; empty: not pinned.
    std::vector<int> pin_cpus;
    std::filesystem::path worker_bin;        // the program to start as a local worker
    std::vector<std::string> worker_prefix;  // arguments before its own (an App: "worker")
    std::string worker_command = "worker";   // how a person starts one by hand, for messages
    bool fork_server = true;  // local workers are forked by the program's fork server; false: exec'd (--worker-bin)
    std::filesystem::path json_path;
    std::filesystem::path results_path;
    std::filesystem::path resume_path;  // a journal to resume: skip what it has as ok, append the rest
    double heartbeat_interval_s = 0.2;
    double heartbeat_timeout_s = 2.0;
    double start_timeout_s = 10.0;
    double task_timeout_s = 0;  // a task running longer fails; 0: no limit
    int max_attempts = 3;
    int max_respawns = 100;
    // --retries given: a failed task runs up to this many more times (engine_retries); without
    // the flag 0.
    std::uint32_t task_retries = 0;
    std::uint64_t max_tasks_per_worker = 0;  // recycle a worker process after this many tasks; 0: never
    std::uint64_t max_worker_memory = 0;     // ... or past this many resident bytes; 0: never
    double drain_timeout_s = 25;             // SIGTERM: how long running tasks may take to finish
    ProgressMode progress = ProgressMode::Auto;
    std::string log_level;                  // spdlog level name; empty: SPDLOG_LEVEL or info
    std::filesystem::path trace_path;       // Chrome trace-event JSON
    std::filesystem::path timeline_path;    // SVG timeline
    std::vector<std::string> command_line;  // argv, for reports
    // --ui [ADDR:]PORT: serve a live page of the run; empty: none. ADDR is checked as --listen's.
    std::string ui;
    double ui_linger_s = -1;  // --ui-linger: seconds to keep serving after the run; < 0: until a signal

    // Remote workers (processes mode only). workers may be 0 when expect_workers >= 1.
    std::string listen;                            // --listen tcp://ADDR:PORT; empty: local workers only
    std::filesystem::path keys_dir;                // --keys: CURVE; empty: plaintext (loopback or --insecure)
    std::filesystem::path authorized_dir;          // --authorized: more worker keys, one NAME.public each
    bool insecure = false;                         // plaintext on a non-loopback address
    int expect_workers = 0;                        // remote workers to wait for before the first task
    double wait_workers_s = 60.0;                  // ... and how long; also how long a run with no worker left waits
    std::optional<curve::ServerKeys> server_keys;  // read from keys_dir by the coordinator before the run
    // A server's (serve --listen): with no worker left, tasks wait for the next one to attach
    // as long as it takes, instead of wait_workers_s.
    bool workers_any_time = false;
    // The local workers (up to `workers`) start one at a time as tasks wait for one, none
    // idle and none starting, instead of all at the start (coordinator parallel -j 0 while
    // its input still comes: a slot per job that is waiting, as GNU parallel's).
    bool spawn_on_demand = false;

    // --launch slurm|mpirun: the remote workers are one launcher job (an srun step, an mpirun)
    // of step->tasks workers that the coordinator starts (workers is then 0 and expect_workers
    // step->tasks), with keys made for the run; empty listen is filled in with an address the
    // nodes can reach. step->args: --slurm-args or --mpirun-args split into words; step->pin:
    // --pin.
    std::optional<StepConfig> step;
    // --alloc slurm: the remote workers come in Slurm allocations that the coordinator submits
    // while tasks wait (launch/alloc.hpp); listen as for step; workers 0 unless given.
    std::optional<AllocConfig> alloc;
    // Told the endpoint remote workers connect to once `listen` is bound (a Farm's endpoint()).
    std::function<void(const std::string&)> on_listening;

    // Resources (docs/resources.md): what the local workers have, together (--worker-resources,
    // --gpus), and what each task asks for unless its plan line says (--task-resources).
    std::shared_ptr<const LocalResources> resources = std::make_shared<const LocalResources>();
    ResourceRequest task_resources;
    bool resources_given = false;  // any of those flags: the run hands out resources, in processes mode only
    // Set by the plan's reader once a task asks for resources (a plan line's "resources").
    std::shared_ptr<std::atomic<bool>> resources_asked = std::make_shared<std::atomic<bool>>(false);
    // ... and once a task has an "after" (dependencies, processes mode only too).
    std::shared_ptr<std::atomic<bool>> after_asked = std::make_shared<std::atomic<bool>>(false);

    // `coordinator parallel` (parallel_cli.hpp): GNU parallel's output and exit status
    // instead of the result lines and the table; null for every other run.
    std::shared_ptr<ParallelOutput> parallel;
};

// A retries count given (--retries N, serve --retries N, FarmOptions::retries, parallel's):
// both ways a failed task runs again hear it, the engine's reruns (task_retries) and the setting
// "retries" that a type retrying inside its task reads instead (its own tries): every place
// that takes a count sets it through this one (decision 229).
inline void set_retries(RunConfig& config, std::uint32_t retries) {
    config.retries = retries;
    config.task_retries = retries;
}

// `coordinator keygen DIR`: writes key pairs for CURVE instead of running anything.
struct KeygenConfig {
    std::filesystem::path dir;
    bool worker_only = false;  // only worker.secret and worker.public
    bool client_only = false;  // only client.secret and client.public (a service client's)
};

}  // namespace taskfarm
