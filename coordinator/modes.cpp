#include "modes.hpp"

#include "mode_runners.hpp"
#include "processes.hpp"

namespace taskfarm {
namespace {

ProcessesOptions processes_options(const RunConfig& config) {
    return {.workers = config.workers,
            .prefetch = config.prefetch,
            .pin_cpus = config.pin_cpus,
            .out_dir = config.out_dir,
            .worker_bin = config.worker_bin,
            .worker_prefix = config.worker_prefix,
            .worker_command = config.worker_command,
            .log_level = config.log_level,
            .heartbeat_interval_s = config.heartbeat_interval_s,
            .heartbeat_timeout_s = config.heartbeat_timeout_s,
            .start_timeout_s = config.start_timeout_s,
            .max_attempts = config.max_attempts,
            .max_respawns = config.max_respawns,
            .task_retries = config.task_retries,
            .max_tasks_per_worker = config.max_tasks_per_worker,
            .max_worker_memory = config.max_worker_memory,
            .listen = config.listen,
            .server_keys = config.server_keys,
            .expect_workers = config.expect_workers,
            .wait_workers_s = config.wait_workers_s,
            .step = config.step,
            .resources = config.resources,
            .alloc = config.alloc,
            .on_listening = config.on_listening};
}

}  // namespace

std::unique_ptr<Runner> make_runner(Mode mode, const RunConfig& config, const RunShared& shared, std::stop_token stop,
                                    std::stop_token drain) {
    // What every task of the mode sees in the coordinator's own threads.
    const auto env = [&](const char* worker) {
        return RunEnv{.worker = worker,
                      .mode = std::string(to_string(mode)),
                      .stop = stop,
                      .settings = &shared.settings,
                      .out_dir = mode_out_dir(config, mode)};
    };
    switch (mode) {
        case Mode::Sequential:
            return std::make_unique<SequentialRunner>(config.pin_cpus.empty() ? -1 : config.pin_cpus.front(),
                                                      env("seq"), shared.registry, drain, config.task_retries,
                                                      shared.cancels);
        case Mode::Threads:
            return std::make_unique<ThreadsRunner>(config.workers, false, config.pin_cpus, env(""), shared.registry,
                                                   drain, config.task_retries, shared.cancels);
        case Mode::GilThreads:
            return std::make_unique<ThreadsRunner>(config.workers, true, config.pin_cpus, env(""), shared.registry,
                                                   drain, config.task_retries, shared.cancels);
        case Mode::Processes:
            return std::make_unique<ProcessesRunner>(processes_options(config), shared.settings, std::move(stop),
                                                     std::move(drain), shared.cancels, shared.fork_server);
    }
    return nullptr;
}

}  // namespace taskfarm
