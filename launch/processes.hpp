#pragma once
// Processes mode, assembled: worker processes over ZeroMQ from the launchers of this folder
// (the process pool with its fork server, the tcp listener, a Slurm job step) around the
// engine's Dispatcher. See engine/dispatcher.hpp and process_pool.hpp.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "alloc.hpp"
#include "control.hpp"
#include "curve.hpp"
#include "resources.hpp"
#include "runner.hpp"
#include "step.hpp"

namespace taskfarm {

class ForkServer;

// What processes mode needs of the run's configuration, and nothing else.
struct ProcessesOptions {
    int workers = 4;                   // local worker processes
    int prefetch = 0;                  // tasks a worker may hold at once; 0: auto (see DispatchOptions)
    bool commands = false;             // its tasks start processes (TaskTraits): kCommandQueueBudget (decision 237)
    std::vector<int> pin_cpus;         // worker i runs only on pin_cpus[i % size]; empty: not pinned
    std::filesystem::path out_dir{};   // the tasks' files go to out_dir/processes
    std::filesystem::path worker_bin;  // the program to start as a local worker
    std::vector<std::string> worker_prefix;  // arguments before its own (an App: "worker")
    std::string worker_command = "worker";   // how a person starts one by hand, for messages
    std::string log_level;                   // passed to the workers; empty: their default
    double heartbeat_interval_s = 0.2;
    double heartbeat_timeout_s = 2.0;
    double start_timeout_s = 10.0;
    int max_attempts = 3;
    int max_respawns = 100;
    std::uint32_t task_retries = 0;          // --retries (see engine_retries)
    std::uint64_t max_tasks_per_worker = 0;  // recycling; 0: never
    std::uint64_t max_worker_memory = 0;
    // Remote workers: an address to listen on (empty: local only), its keys, how many to wait for.
    std::string listen;
    std::optional<curve::ServerKeys> server_keys;
    int expect_workers = 0;
    double wait_workers_s = 60.0;
    bool workers_any_time = false;  // with none left, tasks wait for a worker as long as it takes (serve)
    bool spawn_on_demand = false;   // the local workers start as tasks wait for one (DispatchOptions)
    // --launch slurm|mpirun: the remote workers are one launcher job (an srun step, an mpirun)
    // of step->tasks workers, with keys made for the run; the runner fills in step->worker.
    std::optional<StepConfig> step;
    std::shared_ptr<const LocalResources> resources{};  // what the local workers have (DispatchOptions::resources)
    // --alloc slurm: the remote workers come in allocations submitted while tasks wait (see
    // alloc.hpp), with keys made for the run.
    std::optional<AllocConfig> alloc;
    // Called once `listen` is bound, with the endpoint remote workers connect to (the real
    // port; a wildcard address as this host's name): how a Farm tells its program.
    std::function<void(const std::string&)> on_listening{};
};

class ProcessesRunner final : public Runner {
public:
    ProcessesRunner(ProcessesOptions options, const Json& settings, std::stop_token stop, std::stop_token drain = {},
                    CancelBoard* cancels = nullptr, ForkServer* fork_server = nullptr)
        : config_(std::move(options)),
          settings_(settings),
          stop_(std::move(stop)),
          drain_(std::move(drain)),
          cancels_(cancels),
          fork_server_(fork_server) {}
    RunReport run(const Plan& plan, ResultSink& sink) override;

private:
    const ProcessesOptions config_;
    const Json& settings_;
    std::stop_token stop_;
    std::stop_token drain_;
    CancelBoard* cancels_;
    ForkServer* fork_server_;
};

}  // namespace taskfarm
