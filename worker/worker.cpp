#include "worker.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "affinity.hpp"
#include "errors.hpp"
#include "log.hpp"
#include "protocol.hpp"
#include "wire.hpp"

namespace taskfarm {
namespace {

using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;

constexpr const char* kResultsEndpoint = "inproc://results";

struct WorkerConfig {
    std::string connect;
    std::string name;
    long parent_pid = 0;
    double heartbeat_interval_s = 0.2;
    double heartbeat_timeout_s = 2.0;
    std::string log_level;  // empty: SPDLOG_LEVEL or info
};

// Dies with the parent: PR_SET_PDEATHSIG is also set by the coordinator before exec; this
// covers a worker started by hand with --parent-pid, and a parent that died before we ran.
void exit_with_parent(long parent) {
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) spdlog::warn("cannot set parent-death signal");
    if (::getppid() != parent) {
        spdlog::error("parent {} is gone; exiting", parent);
        std::_Exit(1);
    }
}

std::string host_name() {
    char buffer[256] = {};
    if (::gethostname(buffer, sizeof buffer - 1) != 0) return "unknown";
    return buffer;
}

// Runs tasks one at a time on its own thread, so the socket thread keeps heartbeating.
// Results go back over an inproc PAIR socket, which the executor thread owns.
class Executor {
public:
    Executor(zmq::context_t& context, std::string name)
        : thread_([this, &context, name = std::move(name)](std::stop_token stop) { loop(stop, context, name); }) {}

    void push(TaskSpec task, std::uint32_t attempt) {
        {
            std::lock_guard lock(mutex_);
            queue_.push_back({std::move(task), attempt});
        }
        ready_.notify_one();
    }

    // Cancels the running task and drops the queued ones; the destructor joins.
    void stop() { thread_.request_stop(); }

private:
    struct Queued {
        TaskSpec task;
        std::uint32_t attempt;
    };

    void loop(std::stop_token stop, zmq::context_t& context, const std::string& name) {
        zmq::socket_t results(context, zmq::socket_type::pair);
        wire::configure(results, zmq::socket_type::pair);
        results.connect(kResultsEndpoint);
        const ExecContext exec{.worker = name, .stop = stop, .isolated = true};
        while (true) {
            Queued next;
            {
                std::unique_lock lock(mutex_);
                if (!ready_.wait(lock, stop, [this] { return !queue_.empty(); })) return;
                next = std::move(queue_.front());
                queue_.pop_front();
            }
            TaskResult result = run_task(next.task, exec);
            if (stop.stop_requested()) return;
            result.attempt = next.attempt;
            // A blocking send: inproc to our own socket thread, which never stops reading.
            const std::string frame = proto::encode(proto::to_message(result));
            results.send(zmq::buffer(frame), zmq::send_flags::none);
        }
    }

    std::mutex mutex_;
    std::condition_variable_any ready_;
    std::deque<Queued> queue_;
    std::jthread thread_;  // last: starts after the members it uses exist
};

int run(const WorkerConfig& config) {
    zmq::context_t context(1);
    zmq::socket_t results(context, zmq::socket_type::pair);  // bound before the executor connects
    wire::configure(results, zmq::socket_type::pair);
    results.bind(kResultsEndpoint);
    zmq::socket_t dealer(context, zmq::socket_type::dealer);
    wire::configure(dealer, zmq::socket_type::dealer);
    dealer.connect(config.connect);

    proto::Hello hello;
    hello.name = config.name;
    hello.pid = ::getpid();
    hello.host = host_name();
    hello.cpu = pinned_cpu();
    wire::send(dealer, proto::encode(hello));
    spdlog::debug("connected to {} (pid {}, cpu {})", config.connect, hello.pid, hello.cpu);

    Executor executor(context, config.name);
    const auto interval = std::chrono::duration_cast<Clock::duration>(Seconds(config.heartbeat_interval_s));
    const auto timeout = std::chrono::duration_cast<Clock::duration>(Seconds(config.heartbeat_timeout_s));
    auto last_heard = Clock::now();
    auto next_heartbeat = Clock::now() + interval;
    const std::string heartbeat = proto::encode(proto::Heartbeat{});

    while (true) {
        zmq::pollitem_t items[] = {{dealer.handle(), 0, ZMQ_POLLIN, 0}, {results.handle(), 0, ZMQ_POLLIN, 0}};
        zmq::poll(items, 2, wire::poll_timeout(std::min(next_heartbeat, last_heard + timeout)));
        if (items[1].revents & ZMQ_POLLIN) {
            zmq::message_t frame;
            while (results.recv(frame, zmq::recv_flags::dontwait)) {
                wire::send(dealer, frame.to_string_view());
                next_heartbeat = Clock::now() + interval;  // any frame is a sign of life
            }
        }
        if (items[0].revents & ZMQ_POLLIN) {
            zmq::message_t frame;
            while (dealer.recv(frame, zmq::recv_flags::dontwait)) {
                last_heard = Clock::now();
                auto message = proto::decode(frame.to_string_view());
                if (auto* task = std::get_if<proto::Task>(&message)) {
                    executor.push(proto::to_spec(*task), task->attempt);
                } else if (std::holds_alternative<proto::Shutdown>(message)) {
                    spdlog::debug("shutdown requested");
                    executor.stop();
                    return static_cast<int>(ExitCode::Ok);
                } else if (auto* error = std::get_if<proto::DecodeError>(&message)) {
                    spdlog::warn("rejected a frame from the coordinator: {}", error->reason);
                }
            }
        }
        const auto now = Clock::now();
        if (now - last_heard > timeout) {
            spdlog::error("coordinator silent for {:.1f} s; exiting", Seconds(now - last_heard).count());
            executor.stop();
            return static_cast<int>(ExitCode::TasksFailed);
        }
        if (now >= next_heartbeat) {
            wire::send(dealer, heartbeat);
            next_heartbeat = now + interval;
        }
    }
}

}  // namespace

int worker_main(int argc, const char* const* argv) {
    WorkerConfig config;
    CLI::App app{"taskfarm worker: runs tasks handed out by a coordinator"};
    app.add_option("--connect", config.connect, "coordinator endpoint, e.g. ipc:///tmp/x/socket or tcp://host:5555")
        ->required();
    app.add_option("--name", config.name, "name in logs and results (default: host-pid)");
    app.add_option("--parent-pid", config.parent_pid, "exit when this process (the coordinator) dies")
        ->check(CLI::PositiveNumber);
    app.add_option("--heartbeat-interval", config.heartbeat_interval_s, "seconds between heartbeats")
        ->check(CLI::Range(0.001, 3600.0))
        ->capture_default_str();
    app.add_option("--heartbeat-timeout", config.heartbeat_timeout_s,
                   "exit when the coordinator is silent this many seconds")
        ->check(CLI::Range(0.01, 86400.0))
        ->capture_default_str();
    app.add_option("--log-level", config.log_level, "log level on stderr (default: SPDLOG_LEVEL, else info)")
        ->check(CLI::IsMember(std::vector<std::string>(std::begin(kLogLevels), std::end(kLogLevels))));
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? static_cast<int>(ExitCode::Ok) : static_cast<int>(ExitCode::Usage);
    }
    if (config.name.empty()) config.name = fmt::format("{}-{}", host_name(), ::getpid());
    init_logging(config.name);
    if (!config.log_level.empty()) set_log_level(config.log_level);
    // The coordinator may have blocked these for its own signal thread; the mask survives exec.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    ::pthread_sigmask(SIG_UNBLOCK, &signals, nullptr);
    if (config.parent_pid > 0) exit_with_parent(config.parent_pid);
    try {
        return run(config);
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return static_cast<int>(ExitCode::TasksFailed);
    }
}

}  // namespace taskfarm
