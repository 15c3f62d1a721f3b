#include "modes.hpp"

#include <algorithm>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "errors.hpp"
#include "plan_sources.hpp"
#include "mode_runners.hpp"
#include "process_pool.hpp"
#include "processes.hpp"

namespace taskfarm {
namespace {

ProcessesOptions processes_options(const RunConfig& config, const Registry& registry) {
    const TaskType* type = registry.find(config.task);
    return {.workers = config.workers,
            .prefetch = config.prefetch,
            .commands = type && type->traits().starts_processes,
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
            .workers_any_time = config.workers_any_time,
            .spawn_on_demand = config.spawn_on_demand,
            .step = config.step,
            .resources = config.resources,
            .alloc = config.alloc,
            .on_listening = config.on_listening};
}

}  // namespace

bool runs_processes(const RunConfig& config) {
    return std::find(config.modes.begin(), config.modes.end(), Mode::Processes) != config.modes.end();
}

std::optional<curve::ServerKeys> read_keys(const RunConfig& config, std::string_view keys_flag,
                                           std::string_view authorized_flag) {
    if (!runs_processes(config) || config.keys_dir.empty()) return std::nullopt;
    if (!curve::available())
        throw ConfigError(
            fmt::format("{}: this libzmq was built without CURVE support (libsodium), so it cannot encrypt; "
                        "install a libzmq with CURVE (Debian's libzmq5 has it)",
                        keys_flag));
    std::optional<curve::ServerKeys> keys;
    try {
        keys = curve::read_server_keys(config.keys_dir);
    } catch (const std::runtime_error& e) {
        throw ConfigError(fmt::format("{}: {}", keys_flag, e.what()));
    }
    if (!config.authorized_dir.empty()) {
        try {
            for (auto& key : curve::read_authorised_keys(config.authorized_dir))
                keys->workers.push_back(std::move(key));
        } catch (const std::runtime_error& e) {
            throw ConfigError(fmt::format("{}: {}", authorized_flag, e.what()));
        }
    }
    if (keys->workers.empty())
        throw ConfigError(
            fmt::format("{}: no worker key is authorised: '{}' has no worker.public and no {} DIR was given", keys_flag,
                        config.keys_dir.string(), authorized_flag));
    return keys;
}

std::unique_ptr<ForkServer> start_fork_server(const RunConfig& config, const std::vector<const TaskType*>& types) {
    if (!kForkServerUsable || !config.fork_server || config.workers == 0 || config.step || !runs_processes(config))
        return nullptr;
    try {
        std::vector<std::string> preload;  // the plan's types only: libcurl in every fork made each one dearer
        for (const TaskType* type : types) preload.push_back(type->name());
        return std::make_unique<ForkServer>(config.worker_bin, config.worker_prefix, config.log_level, preload);
    } catch (const std::exception& e) {  // the workers are exec'd then, as with --worker-bin
        spdlog::warn("cannot start the fork server, so workers will be exec'd: {}", e.what());
        return nullptr;
    }
}

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
            return std::make_unique<ProcessesRunner>(processes_options(config, shared.registry), shared.settings,
                                                     std::move(stop), std::move(drain), shared.cancels,
                                                     shared.fork_server);
    }
    return nullptr;
}

// What of the run's settings changes what its tasks produce (decision 128): every --set KEY
// (the run cannot tell what a type does with it) and each flag of a plan's type declared
// changes_results, but for a generated_only one or one that picks the tasks (what it changes
// is in the tasks' params, which --resume checks already). The journal records them when there are any (a journal
// without them was written with none); --resume refuses a journal written under others.
Json result_settings(const RunConfig& config, const Registry& registry, const std::vector<const TaskType*>& types) {
    std::set<std::string> declared;  // keys of every registered type's flags: the rest came from --set
    for (const auto& type : registry.types())
        for (const Flag& flag : type->flags()) declared.insert(flag.key);
    // The run's own settings (a spill directory `coordinator parallel` puts there) are not a task's either.
    for (const auto& [key, flag] : kFlagSettings) declared.emplace(key);
    Json identity = Json::object();
    for (const auto& [key, value] : config.settings.items())
        if (!declared.contains(key)) identity[key] = value;
    for (const TaskType* type : types)
        for (const Flag& flag : type->flags())
            if (flag.changes_results && !flag.generated_only && flag.picks == Flag::Picks::Nothing &&
                config.settings.contains(flag.key))
                identity[flag.key] = config.settings[flag.key];
    return identity;
}

}  // namespace taskfarm
