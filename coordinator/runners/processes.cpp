#include <stdlib.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <optional>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "dispatcher.hpp"
#include "errors.hpp"
#include "listener.hpp"
#include "process_pool.hpp"
#include "mode_runners.hpp"
#include "wire.hpp"

namespace taskfarm {
namespace {

constexpr auto kShutdownGrace = std::chrono::milliseconds(1000);
constexpr std::size_t kMaxIpcPath = 107;  // sizeof(sockaddr_un::sun_path) - 1

std::chrono::milliseconds millis(double seconds) {
    return std::chrono::milliseconds(static_cast<std::int64_t>(seconds * 1000.0));
}

// A private (0700) directory for the ipc:// socket, removed with everything in it.
class PrivateDir {
public:
    PrivateDir() {
        std::string base = std::filesystem::temp_directory_path().string();
        if (base.size() > kMaxIpcPath - 32) base = "/tmp";  // long $TMPDIR: ipc paths are short
        std::string pattern = base + "/taskfarm-XXXXXX";
        if (!::mkdtemp(pattern.data()))
            throw RunError(fmt::format("cannot create a private directory in '{}': {}", base, std::strerror(errno)));
        path_ = pattern;
    }
    ~PrivateDir() {
        std::error_code ec;
        std::filesystem::remove_all(path_, ec);
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
        char host[256] = {};
        if (::gethostname(host, sizeof host - 1) != 0) break;
        return fmt::format("tcp://{}:{}", host, bound.substr(any.size()));
    }
    return bound;
}

}  // namespace

RunReport ProcessesRunner::run(const Plan& plan, ResultSink& sink) {
    ModeRecorder recorder(Mode::Processes, config_.workers + config_.expect_workers, plan, sink);
    {
        const PrivateDir dir;
        zmq::context_t context(1);  // before its sockets: closing it waits for them
        zmq::socket_t router(context, zmq::socket_type::router);
        wire::configure(router, zmq::socket_type::router);
        const std::string endpoint = "ipc://" + (dir.path() / "coordinator").string();
        router.bind(endpoint);  // before the Listener's options: local workers stay on plaintext ipc
        std::optional<Listener> listener;  // after the router: it unbinds from it when it goes
        if (!config_.listen.empty()) {
            listener.emplace(context, router, ListenConfig{config_.listen, config_.server_keys});
            spdlog::info("listening for remote workers on {}", listener->describe());
            if (config_.expect_workers > 0)
                spdlog::info("waiting up to {:.0f} s for {} remote worker(s): {} --connect {}{}", config_.wait_workers_s,
                             config_.expect_workers, config_.worker_command, endpoint_for_workers(listener->endpoint()),
                             config_.server_keys ? " --keys DIR" : "");
        }
        ProcessPool pool({.binary = config_.worker_bin,
                          .prefix = config_.worker_prefix,
                          .out_dir = mode_out_dir(config_, Mode::Processes),
                          .scratch_dir = dir.path(),  // removed after the mode, whatever became of the workers
                          .endpoint = endpoint,
                          .heartbeat_interval_s = config_.heartbeat_interval_s,
                          .heartbeat_timeout_s = config_.heartbeat_timeout_s,
                          .log_level = config_.log_level});
        Dispatcher dispatcher(router, pool, plan, recorder,
                              DispatchOptions{config_.workers, config_.prefetch, millis(config_.heartbeat_interval_s),
                                              millis(config_.heartbeat_timeout_s), millis(config_.start_timeout_s),
                                              static_cast<std::uint32_t>(config_.max_attempts), config_.max_respawns,
                                              config_.pin_cpus, !config_.listen.empty(), config_.expect_workers,
                                              millis(config_.wait_workers_s)},
                              stop_, settings_);
        dispatcher.run();
        recorder.stop_clock();
        dispatcher.shutdown_workers();
        for (const WorkerExit& exit : pool.stop_all(kShutdownGrace))
            recorder.note({.kind = RunEvent::Kind::WorkerExited, .worker = exit.name, .detail = exit.reason});
    }  // every worker is reaped here, so cpu_s includes them
    return recorder.finish(stop_.stop_requested());
}

std::filesystem::path mode_out_dir(const RunConfig& config, Mode mode) {
    return (std::filesystem::absolute(config.out_dir) / to_string(mode)).lexically_normal();
}

std::unique_ptr<Runner> make_runner(Mode mode, const RunConfig& config, const RunShared& shared, std::stop_token stop) {
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
            return std::make_unique<SequentialRunner>(config.pin_cpus.empty() ? -1 : config.pin_cpus.front(), env("seq"),
                                                      shared.registry);
        case Mode::Threads:
            return std::make_unique<ThreadsRunner>(config.workers, false, config.pin_cpus, env(""), shared.registry);
        case Mode::GilThreads:
            return std::make_unique<ThreadsRunner>(config.workers, true, config.pin_cpus, env(""), shared.registry);
        case Mode::Processes: return std::make_unique<ProcessesRunner>(config, shared.settings, std::move(stop));
    }
    return nullptr;
}

}  // namespace taskfarm
