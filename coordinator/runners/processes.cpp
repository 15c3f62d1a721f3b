#include <stdlib.h>

#include <cstring>
#include <filesystem>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "dispatcher.hpp"
#include "errors.hpp"
#include "process_pool.hpp"
#include "runners.hpp"
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

}  // namespace

RunReport ProcessesRunner::run(const Plan& plan, ResultSink& sink) {
    ModeRecorder recorder(Mode::Processes, config_.workers, plan, sink);
    {
        const PrivateDir dir;
        zmq::context_t context(1);  // before its sockets: closing it waits for them
        zmq::socket_t router(context, zmq::socket_type::router);
        wire::configure(router, zmq::socket_type::router);
        const std::string endpoint = "ipc://" + (dir.path() / "coordinator").string();
        router.bind(endpoint);
        ProcessPool pool({config_.worker_bin.empty() ? default_worker_binary() : config_.worker_bin, endpoint,
                          config_.heartbeat_interval_s, config_.heartbeat_timeout_s, config_.log_level});
        Dispatcher dispatcher(router, pool, plan, recorder,
                              DispatchOptions{config_.workers, config_.prefetch, millis(config_.heartbeat_interval_s),
                                              millis(config_.heartbeat_timeout_s), millis(config_.start_timeout_s),
                                              static_cast<std::uint32_t>(config_.max_attempts), config_.max_respawns,
                                              config_.pin_cpus},
                              stop_);
        dispatcher.run();
        recorder.stop_clock();
        dispatcher.shutdown_workers();
        for (const WorkerExit& exit : pool.stop_all(kShutdownGrace))
            recorder.note({.kind = RunEvent::Kind::WorkerExited, .worker = exit.name, .detail = exit.reason});
    }  // every worker is reaped here, so cpu_s includes them
    return recorder.finish(stop_.stop_requested());
}

std::unique_ptr<Runner> make_runner(Mode mode, const RunConfig& config, std::stop_token stop) {
    switch (mode) {
        case Mode::Sequential:
            return std::make_unique<SequentialRunner>(config.pin_cpus.empty() ? -1 : config.pin_cpus.front(),
                                                      std::move(stop));
        case Mode::Threads:
            return std::make_unique<ThreadsRunner>(config.workers, false, config.pin_cpus, std::move(stop));
        case Mode::GilThreads:
            return std::make_unique<ThreadsRunner>(config.workers, true, config.pin_cpus, std::move(stop));
        case Mode::Processes: return std::make_unique<ProcessesRunner>(config, std::move(stop));
    }
    return nullptr;
}

}  // namespace taskfarm
