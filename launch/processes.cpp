#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "alloc.hpp"
#include "command_groups.hpp"
#include "dispatcher.hpp"
#include "errors.hpp"
#include "listener.hpp"
#include "process_pool.hpp"
#include "processes.hpp"
#include "step.hpp"
#include "task.hpp"
#include "temp_dirs.hpp"
#include "wire.hpp"

namespace taskfarm {
namespace {

constexpr auto kShutdownGrace = std::chrono::milliseconds(1000);
// srun exits once every worker of its step has: a few hundred ms after SHUTDOWN.
constexpr auto kStepGrace = std::chrono::milliseconds(5000);
// When srun ends under a running coordinator, a `scancel` of the whole job may be the cause,
// and its SIGTERM on its way to the coordinator too: that ends the run as a signal does.
constexpr auto kSignalGrace = std::chrono::milliseconds(1000);
// --alloc: how often the allocator is told what waits (it asks Slurm less often).
constexpr auto kDemandInterval = std::chrono::milliseconds(100);
constexpr std::size_t kMaxIpcPath = 107;  // sizeof(sockaddr_un::sun_path) - 1

std::chrono::milliseconds millis(double seconds) {
    return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000.0));
}

// A private (0700) directory for the ipc:// socket, removed with everything in it.
class PrivateDir {
public:
    PrivateDir() {
        std::string base = std::filesystem::temp_directory_path().string();
        if (base.size() > kMaxIpcPath - 44) base = "/tmp";  // long $TMPDIR: ipc paths are short
        try {  // taskfarm-ipc-PID-XXXXXX: removed at exit(), or by the next run if we are killed
            path_ = make_temp_dir(base, "ipc");
        } catch (const std::system_error& e) {
            throw RunError(fmt::format("cannot create a private directory in '{}': {}", base, e.code().message()));
        }
    }
    ~PrivateDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
        forget_temp_dir(path_);
        if (ec) spdlog::warn("cannot remove '{}': {}", path_.string(), ec.message());
    }
    PrivateDir(const PrivateDir&) = delete;
    PrivateDir& operator=(const PrivateDir&) = delete;
    const std::filesystem::path& path() const { return path_; }

private:
    std::filesystem::path path_;
};

// What a worker on another machine connects to: the bound endpoint, with this host's name
// in place of an address that means "every interface".
std::string endpoint_for_workers(const std::string& bound) {
    for (const std::string any : {"tcp://0.0.0.0:", "tcp://[::]:"}) {
        if (!bound.starts_with(any)) continue;
        return fmt::format("tcp://{}:{}", this_host(), bound.substr(any.size()));
    }
    return bound;
}

std::string seconds_text(double seconds) { return fmt::format("{}", seconds); }

// What srun or mpirun runs on each task: a worker that connects back with the run's keys.
std::vector<std::string> step_worker_command(const ProcessesOptions& config, const std::string& endpoint,
                                             const std::filesystem::path& keys) {
    std::vector<std::string> command{config.worker_bin.string()};
    command.insert(command.end(), config.worker_prefix.begin(), config.worker_prefix.end());
    command.insert(command.end(), {"--connect", endpoint, "--keys", keys.string(), "--out-dir",
                                   mode_out_dir(config.out_dir, Mode::Processes).string(), "--heartbeat-interval",
                                   seconds_text(config.heartbeat_interval_s), "--heartbeat-timeout",
                                   seconds_text(config.heartbeat_timeout_s), "--connect-timeout",
                                   seconds_text(config.wait_workers_s)});
    if (!config.log_level.empty()) command.insert(command.end(), {"--log-level", config.log_level});
    return command;
}

}  // namespace

RunReport ProcessesRunner::run(const Plan& plan, ResultSink& sink) {
    // The fork server serves every mode of the run and loads the plan's types once: its start
    // is not this mode's, whose clock starts once it can fork (decision 262). Its workers'
    // start is, as ever (decision 5). A server not ready in time is waited for as before. A
    // SIGINT or SIGTERM ends the wait at once, and the schedule then starts no worker.
    if (fork_server_) {
        spdlog::debug("waiting for the fork server to say it is ready");
        const bool ready = fork_server_->wait_ready(ProcessPool::kForkReplyTimeout, stop_, drain_);
        if (stop_.stop_requested() || drain_.stop_requested())
            spdlog::debug("stopped while waiting for the fork server: no worker is started");
        else
            spdlog::debug("the fork server is {}; the processes mode's clock starts",
                          ready ? "ready" : "not ready yet");
    }
    nlohmann::json allocations = nullptr;  // --alloc: the allocator's account, for the report
    ModeRecorder recorder(
        Mode::Processes,
        config_.workers + (config_.alloc ? config_.alloc->max_allocs * config_.alloc->workers : config_.expect_workers),
        plan, sink);
    {
        const PrivateDir dir;
        zmq::context_t context(1);  // before its sockets: closing it waits for them
        zmq::socket_t router(context, zmq::socket_type::router);
        wire::configure(router, zmq::socket_type::router);
        const std::string endpoint = "ipc://" + (dir.path() / "coordinator").string();
        router.bind(endpoint);            // before the Listener's options: local workers stay on plaintext ipc
        std::optional<RunKeys> run_keys;  // --launch slurm|mpirun: made for this run, in the working directory
        if (config_.step || config_.alloc) run_keys.emplace(std::filesystem::current_path());
        std::optional<Listener> listener;  // after the router: it unbinds from it when it goes
        if (!config_.listen.empty()) {
            listener.emplace(
                context, router,
                ListenConfig{config_.listen, run_keys ? std::optional(run_keys->server()) : config_.server_keys});
            spdlog::info("listening for remote workers on {}", listener->describe());
            if (config_.on_listening) config_.on_listening(endpoint_for_workers(listener->endpoint()));
            if (config_.expect_workers > 0 && !config_.step)
                spdlog::info("waiting up to {:.0f} s for {} remote worker(s): {} --connect {}{}",
                             config_.wait_workers_s, config_.expect_workers, config_.worker_command,
                             endpoint_for_workers(listener->endpoint()),
                             // A plaintext listener's workers must say so too, or they refuse to connect.
                             config_.server_keys ? " --keys DIR" : " --insecure");
        }
        ProcessPool pool({.binary = config_.worker_bin,
                          .prefix = config_.worker_prefix,
                          .out_dir = mode_out_dir(config_.out_dir, Mode::Processes),
                          .scratch_dir = dir.path(),  // removed after the mode, whatever became of the workers
                          .state_dir = dir.path(),    // each worker's RunningBoard: which task a lost one ran
                          .endpoint = endpoint,
                          .heartbeat_interval_s = config_.heartbeat_interval_s,
                          .heartbeat_timeout_s = config_.heartbeat_timeout_s,
                          .log_level = config_.log_level,
                          .fork_server = fork_server_});
        Dispatcher dispatcher(
            router, pool, plan, recorder,
            DispatchOptions{config_.workers, config_.prefetch, millis(config_.heartbeat_interval_s),
                            millis(config_.heartbeat_timeout_s), millis(config_.start_timeout_s),
                            static_cast<std::uint32_t>(config_.max_attempts), config_.max_respawns, config_.pin_cpus,
                            !config_.listen.empty(), config_.expect_workers, millis(config_.wait_workers_s),
                            config_.task_retries, config_.max_tasks_per_worker, config_.max_worker_memory,
                            std::chrono::ceil<std::chrono::milliseconds>(command_groups::grace(settings_)),
                            config_.resources,
                            /*workers_on_demand=*/config_.alloc.has_value() || config_.workers_any_time,
                            config_.commands ? kCommandQueueBudget : kQueueBudget, config_.spawn_on_demand},
            stop_, settings_, drain_);
        if (cancels_) dispatcher.watch_cancels(cancels_);
        std::optional<WorkerStep> step;  // after the listener: its workers connect to it
        const char* noun = config_.step ? step_noun(config_.step->launcher) : "";
        if (config_.step) {
            const std::string worker_endpoint = endpoint_for_workers(listener->endpoint());
            spdlog::info("waiting up to {:.0f} s for the {} worker(s) of the {} to connect to {}",
                         config_.wait_workers_s, config_.step->tasks, noun, worker_endpoint);
            StepConfig step_config = *config_.step;
            step_config.worker = step_worker_command(config_, worker_endpoint, run_keys->dir());
            step.emplace(step_config);
            // Asked on the dispatcher's loop, so it never waits there: the grace is counted
            // across calls.
            dispatcher.watch([&step, noun, ended_at = std::optional<std::chrono::steady_clock::time_point>(),
                              this]() mutable -> std::optional<std::string> {
                if (!step->ended()) return std::nullopt;
                const auto now = std::chrono::steady_clock::now();
                if (!ended_at) ended_at = now;
                // Meanwhile a signal stops the dispatcher as any signal does.
                if (stop_.stop_requested() || now - *ended_at < kSignalGrace) return std::nullopt;
                spdlog::error("the {} of the workers ended before the run did: {}", noun, step->describe(true));
                return fmt::format("the {} of the workers ended ({})", noun, step->describe(false));
            });
        }
        std::optional<Allocator> allocator;  // after the listener: its workers connect to it
        if (config_.alloc) {
            const std::string worker_endpoint = endpoint_for_workers(listener->endpoint());
            allocator.emplace(*config_.alloc, step_worker_command(config_, worker_endpoint, run_keys->dir()),
                              run_keys->dir());
            dispatcher.watch([&allocator, &dispatcher,
                              next = std::chrono::steady_clock::time_point{}]() mutable -> std::optional<std::string> {
                const auto now = std::chrono::steady_clock::now();
                if (now >= next) {
                    auto load = dispatcher.remote_load();
                    allocator->update({load.waiting, load.counted, std::move(load.workers)});
                    next = now + kDemandInterval;
                }
                return allocator->gave_up();
            });
        }
        dispatcher.run();
        recorder.stop_clock();
        dispatcher.shutdown_workers();
        if (allocator) {
            spdlog::info("{}", allocator->stop(kStepGrace));
            allocations = allocator->report();
        }
        if (step) {
            // Its status is not the run's: a worker killed on the way makes it non-zero, and
            // that worker's tasks ran elsewhere.
            spdlog::info("the {} of the workers ended: {}", noun, step->stop(kStepGrace));
        }
        for (const WorkerExit& exit : pool.stop_all(kShutdownGrace))
            recorder.note({.kind = RunEvent::Kind::WorkerExited, .worker = exit.name, .detail = exit.reason});
        dispatcher.end_commands();  // what a worker killed with a task's guardian left
    }                               // every worker is reaped here, so cpu_s includes them
    RunReport report = recorder.finish(stop_.stop_requested() || drain_.stop_requested());
    report.allocations = std::move(allocations);
    return report;
}

}  // namespace taskfarm
