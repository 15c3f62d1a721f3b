#include "worker.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <iterator>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "affinity.hpp"
#include "checks.hpp"
#include "command_groups.hpp"
#include "curve.hpp"
#include "errors.hpp"
#include "fork_server.hpp"
#include "log.hpp"
#include "process_title.hpp"
#include "protocol.hpp"
#include "running_board.hpp"
#include "text.hpp"
#include "wire.hpp"

namespace taskfarm {
namespace {

using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;

constexpr const char* kResultsEndpoint = "inproc://results";
constexpr const char* kMonitorEndpoint = "inproc://monitor";
// Handshakes that fail with no reason given before a worker gives up: the coordinator closed
// the connection, which is what a CURVE server does with a client that has the wrong server key.
constexpr int kMaxHandshakeFailures = 3;

// CUDA_VISIBLE_DEVICES for one task that holds GPUs (docs/resources.md), and as it was after
// it. Set in the worker's environment on the thread that runs tasks, just before the task:
// a command the task starts inherits it, and so does CUDA first used by the task itself.
// Only a task that holds GPUs changes the environment; no other thread of the worker reads it.
class TaskGpus {
public:
    explicit TaskGpus(const std::string& gpus) : set_(!gpus.empty()) {
        if (!set_) return;
        if (const char* before = std::getenv(kVariable)) before_ = before;
        ::setenv(kVariable, gpus.c_str(), 1);
    }
    ~TaskGpus() {
        if (!set_) return;
        if (before_)
            ::setenv(kVariable, before_->c_str(), 1);
        else
            ::unsetenv(kVariable);
    }
    TaskGpus(const TaskGpus&) = delete;
    TaskGpus& operator=(const TaskGpus&) = delete;

private:
    static constexpr const char* kVariable = "CUDA_VISIBLE_DEVICES";
    bool set_;
    std::optional<std::string> before_;
};

struct WorkerConfig {
    std::string connect;
    std::string name;
    long parent_pid = 0;
    double heartbeat_interval_s = 0.2;
    double heartbeat_timeout_s = 2.0;
    double connect_timeout_s = 60.0;  // until the coordinator's first frame
    std::string log_level;            // empty: SPDLOG_LEVEL or info
    std::filesystem::path keys_dir;   // CURVE keys; empty: plaintext
    std::optional<curve::ClientKeys> keys;
    const Registry* registry = nullptr;
    bool insecure = false;
    int pin = -1;  // the one CPU to run on; -1: any
    // Where tasks save files (Context::out_dir()): the worker's own, never the coordinator's
    // say, so a coordinator cannot make it write elsewhere.
    std::filesystem::path out_dir = "downloads";
    std::filesystem::path scratch_dir;  // where tasks' scratch directories go; empty: TMPDIR
    std::filesystem::path state_dir;    // where its RunningBoard goes (a coordinator's own workers); empty: none
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

// Past this, the running task is slow enough that the tasks queued behind it are better
// off on another worker: they go back to the coordinator (`returned`).
constexpr auto kGiveBackAfter = std::chrono::milliseconds(20);
// Most results in one `results` frame; more go in several.
constexpr std::size_t kMaxResultsPerFrame = 256;

// Runs tasks one at a time on its own thread, so the socket thread keeps heartbeating.
// Results collect in an outbox; the executor wakes the socket thread (a byte over an
// inproc PAIR socket that it owns) only when the outbox was empty, so a burst of short
// tasks costs one wake-up and leaves as one `results` frame.
class Executor {
public:
    // `board`, if any, says which task runs (it outlives a crash); it must outlive the executor.
    Executor(zmq::context_t& context, const Registry& registry, RunEnv env, RunningBoard* board)
        : registry_(registry),
          env_(std::move(env)),
          board_(board),
          thread_([this, &context](std::stop_token stop) { loop(stop, context); }) {}

    // The run's settings, from the coordinator's SETUP; only the first counts, and it comes
    // before any task (the tasks read them on the executor's thread).
    void set_settings(Json settings) {
        std::lock_guard lock(mutex_);
        if (settings_received_) {
            spdlog::warn("ignored a second setup from the coordinator");
            return;
        }
        settings_ = std::move(settings);
        settings_received_ = true;
    }

    void push(proto::Task&& task) {
        {
            std::lock_guard lock(mutex_);
            queue(std::move(task));
        }
        ready_.notify_one();
    }

    void push(proto::TaskBatch&& batch) {
        {
            std::lock_guard lock(mutex_);
            for (proto::Task& task : batch.tasks) queue(std::move(task));
        }
        ready_.notify_one();
    }

    // Moves the finished results into `out` (cleared first).
    void take_results(std::vector<proto::Result>& out) {
        out.clear();
        std::lock_guard lock(outbox_mutex_);
        out.swap(outbox_);
    }

    // The tasks not started yet, if the running one has run longer than `limit`; they will
    // not run here. `busy` is set to how long the running one has run.
    std::vector<proto::TaskRef> give_back_if_busy_for(Clock::duration limit, Clock::duration& busy) {
        std::vector<proto::TaskRef> returned;
        std::lock_guard lock(mutex_);
        if (queue_.empty() || !running_since_) return returned;
        busy = Clock::now() - *running_since_;
        if (busy < limit) return returned;
        for (const Queued& queued : queue_) returned.push_back({queued.task.id, queued.attempt});
        queue_.clear();
        return returned;
    }

    bool has_queued() {
        std::lock_guard lock(mutex_);
        return !queue_.empty();
    }

    // The coordinator's cancel: the running attempt among `tasks` is stopped (its result
    // comes as usual); queued ones are dropped and returned as failed results, to be sent.
    std::vector<proto::Result> cancel(const std::vector<proto::TaskRef>& tasks) {
        std::vector<proto::Result> dropped;
        std::lock_guard lock(mutex_);
        for (const proto::TaskRef& ref : tasks) {
            if (running_stop_ && running_.id == ref.id && running_.attempt == ref.attempt) {
                running_stop_->request_stop();
                continue;
            }
            const auto queued = std::find_if(queue_.begin(), queue_.end(), [&](const Queued& q) {
                return q.task.id == ref.id && q.attempt == ref.attempt;
            });
            if (queued == queue_.end()) continue;  // done already, or never here
            proto::Result result;
            result.id = ref.id;
            result.attempt = ref.attempt;
            result.kind = queued->kind;
            result.error = "cancelled before it started";
            dropped.push_back(std::move(result));
            queue_.erase(queued);
        }
        return dropped;
    }

    // Cancels the running task and drops the queued ones; the destructor joins.
    void stop() { thread_.request_stop(); }

private:
    struct Queued {
        TaskSpec task;
        std::uint32_t attempt;
        std::string kind;  // the task's type name, kept for the error when this program lacks it
    };

    void queue(proto::Task&& task) {
        std::string kind = task.kind;
        const std::uint32_t attempt = task.attempt;
        queue_.push_back({proto::to_spec(std::move(task), registry_), attempt, std::move(kind)});
    }

    void loop(std::stop_token stop, zmq::context_t& context) {
        zmq::socket_t wake(context, zmq::socket_type::pair);
        wire::configure(wake, zmq::socket_type::pair);
        wake.connect(kResultsEndpoint);
        struct ThreadDone {
            const Registry& registry;
            ~ThreadDone() { registry.thread_done(); }
        } thread_done{registry_};
        RunEnv env = env_;
        env.stop = stop;
        env.settings = &settings_;
        while (true) {
            Queued next;
            // A stop of the task's own, for a cancel of it alone; the executor's stop stops it too.
            std::stop_source own;
            {
                // Out of the queue and running in one step: a cancel in between would find it
                // neither queued nor running, and be lost.
                std::unique_lock lock(mutex_);
                if (!ready_.wait(lock, stop, [this] { return !queue_.empty(); })) return;
                next = std::move(queue_.front());
                queue_.pop_front();
                running_since_ = Clock::now();
                running_ = {next.task.id, next.attempt};
                running_stop_ = &own;
            }
            const std::stop_callback link(stop, [&own] { own.request_stop(); });
            env.stop = own.get_token();
            if (board_) board_->started(next.task.id, next.attempt);
            TaskResult result = [&] {
                const TaskGpus gpus(next.task.gpus);
                return next.task.type ? run_task(next.task, next.attempt, env) : unknown_kind(next);
            }();
            if (board_) board_->ended();
            {
                // Before the result goes out: the coordinator answers it with the next task,
                // which must not look queued behind this finished one and be given back.
                std::lock_guard lock(mutex_);
                running_since_.reset();
                running_stop_ = nullptr;
            }
            if (stop.stop_requested()) return;
            proto::Result message;
            proto::to_message(std::move(result), message);
            message.kind = std::move(next.kind);
            bool was_empty = false;
            {
                std::lock_guard lock(outbox_mutex_);
                was_empty = outbox_.empty();
                outbox_.push_back(std::move(message));
            }
            // A blocking send: inproc to our own socket thread, which never stops reading.
            if (was_empty) wake.send(zmq::str_buffer("!"), zmq::send_flags::none);
        }
    }

    TaskResult unknown_kind(const Queued& queued) const {
        TaskResult result;
        result.id = queued.task.id;
        result.attempt = queued.attempt;
        result.worker = env_.worker;
        result.error =
            fmt::format("this worker has no task type '{}' (it knows {})", queued.kind, registry_.names_text());
        return result;
    }

    const Registry& registry_;
    const RunEnv env_;           // all but the stop token and the settings, which the loop adds
    RunningBoard* const board_;  // or null
    std::mutex mutex_;  // guards queue_, running_since_, running_, running_stop_, settings_ and settings_received_
    Json settings_ = Json::object();
    bool settings_received_ = false;
    std::condition_variable_any ready_;
    std::deque<Queued> queue_;
    std::optional<Clock::time_point> running_since_;  // set while a task runs
    proto::TaskRef running_;                          // the attempt that runs while running_stop_ is set
    std::stop_source* running_stop_ = nullptr;        // its own stop, for a cancel
    std::mutex outbox_mutex_;
    std::vector<proto::Result> outbox_;  // finished, not yet sent
    std::jthread thread_;                // last: starts after the members it uses exist
};

// Why the coordinator at `config.connect` will not have this worker, from a failed handshake
// before its first frame; empty while there is no reason to give up yet.
class HandshakeVerdict {
public:
    explicit HandshakeVerdict(const WorkerConfig& config) : config_(config) {}

    std::string on_event(const wire::MonitorEvent& event) {
        const bool curve = config_.keys.has_value();
        switch (event.event) {
            case ZMQ_EVENT_HANDSHAKE_SUCCEEDED: failures_ = 0; return "";
            case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
                return fmt::format(
                    "the coordinator at {} refused this worker (ZAP status {}): its public key {} "
                    "(of '{}') is not authorised there; add it to the coordinator's --keys DIR as "
                    "worker.public or to its --authorized DIR as NAME.public",
                    config_.connect, event.value, config_.keys ? config_.keys->worker.public_key : "-",
                    (config_.keys_dir / "worker.secret").string());
            case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
                if (event.value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
                    return curve
                               ? fmt::format(
                                     "the coordinator at {} does not use CURVE (it listens without --keys); "
                                     "drop --keys to connect in plaintext",
                                     config_.connect)
                               : fmt::format("the coordinator at {} requires CURVE: start this worker with --keys DIR",
                                             config_.connect);
                return fmt::format(
                    "the handshake with {} failed (ZMTP protocol error {:#x}): is a taskfarm coordinator "
                    "listening there?",
                    config_.connect, event.value);
            case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                if (++failures_ < kMaxHandshakeFailures) return "";
                return curve ? fmt::format(
                                   "the coordinator at {} closed the connection during the CURVE handshake {} "
                                   "times: is '{}' the public key of the coordinator listening there?",
                                   config_.connect, failures_, (config_.keys_dir / "coordinator.public").string())
                             // A CURVE server may close before this side reads its greeting, so a
                             // mechanism mismatch can look like this too.
                             : fmt::format(
                                   "the handshake with {} failed {} times: is a taskfarm coordinator listening "
                                   "there? If it requires CURVE, start this worker with --keys DIR",
                                   config_.connect, failures_);
            default: return "";
        }
    }

private:
    const WorkerConfig& config_;
    int failures_ = 0;  // NO_DETAIL failures in a row
};

// Encodes results[first, first + count) into `frame`: a `result` message for one, else `results`.
void encode_results(const std::vector<proto::Result>& results, std::size_t first, std::size_t count,
                    proto::ResultBatch& batch, std::string& frame) {
    if (count == 1) return proto::encode_to(frame, results[first]);
    const auto begin = results.begin() + static_cast<std::ptrdiff_t>(first);
    batch.results.assign(begin, begin + static_cast<std::ptrdiff_t>(count));
    proto::encode_to(frame, batch);
}

// Sends `results` in order, as few frames as fit: at most kMaxResultsPerFrame results and
// proto::kMaxBatchBytes each, since the coordinator drops a frame over its limit together
// with the connection. A frame that comes out too large is split in halves until it fits;
// a result too large on its own goes as a failure of its task, saying so, because its
// value could never reach the coordinator.
void send_results(zmq::socket_t& dealer, std::vector<proto::Result>& results, proto::ResultBatch& batch,
                  std::string& frame) {
    // Read once a frame, not once a result: the coordinator recycles a worker by it.
    const std::uint64_t rss = resident_bytes();
    for (proto::Result& result : results) result.rss = rss;
    for (std::size_t first = 0; first < results.size();) {
        std::size_t count = std::min(results.size() - first, kMaxResultsPerFrame);
        encode_results(results, first, count, batch, frame);
        while (frame.size() > proto::kMaxBatchBytes && count > 1) {
            count /= 2;
            encode_results(results, first, count, batch, frame);
        }
        if (frame.size() > proto::kMaxBatchBytes) {
            const proto::Result& large = results[first];
            proto::Result failed;
            failed.id = large.id;
            failed.attempt = large.attempt;
            failed.kind = large.kind;
            failed.run_s = large.run_s;
            failed.rss = large.rss;
            failed.error = fmt::format(
                "its result takes {} bytes encoded, more than the {} bytes a message to the "
                "coordinator may hold",
                frame.size(), proto::kMaxBatchBytes);
            spdlog::warn("task {}: {}", large.id, failed.error);
            proto::encode_to(frame, failed);
        }
        wire::send(dealer, frame);
        first += count;
    }
}

int run(const WorkerConfig& config) {
    zmq::context_t context(1);
    zmq::socket_t results(context, zmq::socket_type::pair);  // bound before the executor connects
    wire::configure(results, zmq::socket_type::pair);
    results.bind(kResultsEndpoint);
    zmq::socket_t dealer(context, zmq::socket_type::dealer);
    wire::configure(dealer, zmq::socket_type::dealer);
    if (config.keys) wire::configure_curve_client(dealer, *config.keys);
    if (::zmq_socket_monitor(dealer.handle(), kMonitorEndpoint,
                             ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                 ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0)
        throw zmq::error_t();
    zmq::socket_t monitor(context, zmq::socket_type::pair);
    wire::configure(monitor, zmq::socket_type::pair);
    monitor.connect(kMonitorEndpoint);
    dealer.connect(config.connect);

    proto::Hello hello;
    hello.name = config.name;
    hello.pid = ::getpid();
    hello.host = this_node();
    hello.cpu = pinned_cpu();
    hello.rss = resident_bytes();
    // Before the hello, so that no task can start here before the board exists.
    const std::unique_ptr<RunningBoard> board =
        config.state_dir.empty() ? nullptr : RunningBoard::create(config.state_dir);
    wire::send(dealer, proto::encode(hello));
    spdlog::debug("connected to {} (pid {}, cpu {})", config.connect, hello.pid, hello.cpu);

    Executor executor(context, *config.registry,
                      RunEnv{.worker = config.name,
                             .mode = "processes",
                             .isolated = true,
                             .out_dir = config.out_dir,
                             .scratch_base = config.scratch_dir},
                      board.get());
    const auto interval = std::chrono::duration_cast<Clock::duration>(Seconds(config.heartbeat_interval_s));
    const auto timeout = std::chrono::duration_cast<Clock::duration>(Seconds(config.heartbeat_timeout_s));
    // Until the coordinator's first frame, it may not be up yet (a worker started by hand or by
    // a scheduler before it): wait --connect-timeout for it, then the heartbeat timeout.
    const auto connect_timeout = std::chrono::duration_cast<Clock::duration>(Seconds(config.connect_timeout_s));
    bool heard = false;
    auto last_heard = Clock::now();
    auto next_heartbeat = Clock::now() + interval;
    proto::Heartbeat heartbeat;  // with the resident memory of the moment (recycling) and the commands' groups
    const int groups_changed = command_groups::change_fd();
    HandshakeVerdict verdict(config);
    std::vector<proto::Result> finished;
    proto::ResultBatch batch;
    std::string frame;

    while (true) {
        const auto silence_limit = heard ? timeout : connect_timeout;
        auto wake_at = std::min(next_heartbeat, last_heard + silence_limit);
        if (executor.has_queued()) wake_at = std::min(wake_at, Clock::now() + kGiveBackAfter / 2);
        zmq::pollitem_t items[] = {{dealer.handle(), 0, ZMQ_POLLIN, 0},
                                   {results.handle(), 0, ZMQ_POLLIN, 0},
                                   {monitor.handle(), 0, ZMQ_POLLIN, 0},
                                   {nullptr, groups_changed, ZMQ_POLLIN, 0}};
        zmq::poll(items, 4, wire::poll_timeout(wake_at));
        if (items[2].revents & ZMQ_POLLIN) {
            while (const auto event = wire::receive_monitor_event(monitor)) {
                const std::string refusal = heard ? "" : verdict.on_event(*event);
                if (refusal.empty()) continue;
                spdlog::error("{}; exiting", refusal);
                executor.stop();
                return static_cast<int>(ExitCode::TasksFailed);
            }
        }
        if (items[1].revents & ZMQ_POLLIN) {
            zmq::message_t wake;
            while (results.recv(wake, zmq::recv_flags::dontwait)) {
            }
            executor.take_results(finished);
        }
        // The commands' groups as they are now, at once, so that the coordinator can end
        // them if this worker dies; read after the results, and sent before them: a
        // command's group is gone before its result is queued, so the coordinator never
        // holds the group of a task whose result it has (decision 116).
        if (command_groups::take_change()) {
            heartbeat.rss = resident_bytes();
            heartbeat.groups = command_groups::live();
            wire::send(dealer, proto::encode(heartbeat));
            next_heartbeat = Clock::now() + interval;
        }
        if (!finished.empty()) {
            send_results(dealer, finished, batch, frame);
            finished.clear();
            next_heartbeat = Clock::now() + interval;  // any frame is a sign of life
        }
        if (items[0].revents & ZMQ_POLLIN) {
            zmq::message_t incoming;
            while (dealer.recv(incoming, zmq::recv_flags::dontwait)) {
                last_heard = Clock::now();
                heard = true;
                auto message = proto::decode(incoming.to_string_view());
                if (auto* task = std::get_if<proto::Task>(&message)) {
                    executor.push(std::move(*task));
                } else if (auto* tasks = std::get_if<proto::TaskBatch>(&message)) {
                    executor.push(std::move(*tasks));
                } else if (auto* cancel = std::get_if<proto::Cancel>(&message)) {
                    std::vector<proto::Result> dropped = executor.cancel(cancel->tasks);
                    if (!dropped.empty()) send_results(dealer, dropped, batch, frame);
                } else if (auto* setup = std::get_if<proto::Setup>(&message)) {
                    executor.set_settings(std::move(setup->settings));
                } else if (std::holds_alternative<proto::Shutdown>(message)) {
                    spdlog::debug("shutdown requested");
                    executor.stop();
                    return static_cast<int>(ExitCode::Ok);
                } else if (auto* error = std::get_if<proto::DecodeError>(&message)) {
                    spdlog::warn("rejected a frame from the coordinator: {}", error->reason);
                }
            }
        }
        Clock::duration busy{};
        if (auto returned = executor.give_back_if_busy_for(kGiveBackAfter, busy); !returned.empty()) {
            spdlog::debug("giving back {} task(s) queued behind one running for {:.3f} s", returned.size(),
                          Seconds(busy).count());
            proto::Returned message;
            message.busy_s = Seconds(busy).count();
            for (std::size_t first = 0; first < returned.size(); first += proto::kMaxBatch) {
                const auto begin = returned.begin() + static_cast<std::ptrdiff_t>(first);
                message.tasks.assign(
                    begin, begin + static_cast<std::ptrdiff_t>(std::min(proto::kMaxBatch, returned.size() - first)));
                wire::send(dealer, proto::encode(message));
            }
            next_heartbeat = Clock::now() + interval;
        }
        const auto now = Clock::now();
        if (!heard && now - last_heard > connect_timeout) {
            spdlog::error(
                "no coordinator answered at {} within {:.1f} s (--connect-timeout): is it running and listening "
                "there, and does every firewall on the way let the port through?; exiting",
                config.connect, config.connect_timeout_s);
            executor.stop();
            return static_cast<int>(ExitCode::TasksFailed);
        }
        if (heard && now - last_heard > timeout) {
            spdlog::error("coordinator silent for {:.1f} s; exiting", Seconds(now - last_heard).count());
            executor.stop();
            return static_cast<int>(ExitCode::TasksFailed);
        }
        if (now >= next_heartbeat) {
            heartbeat.rss = resident_bytes();
            heartbeat.groups = command_groups::live();
            wire::send(dealer, proto::encode(heartbeat));
            next_heartbeat = now + interval;
        }
    }
}

const CLI::Validator kEndpoint(
    [](std::string& text) -> std::string {
        if ((text.starts_with("ipc://") && text.size() > 6) || curve::parse_tcp_endpoint(text, false)) return "";
        return fmt::format("'{}' is not ipc://PATH or tcp://HOST:PORT", text);
    },
    "");  // the option's type_name says what it wants

const CLI::Validator kAllowedCpu(
    [](std::string& text) -> std::string {
        const std::vector<int> allowed = allowed_cpus();
        for (int cpu : allowed)
            if (std::to_string(cpu) == text) return "";
        return fmt::format("'{}' is not a CPU this process may use (it may use {})", text, format_cpu_list(allowed));
    },
    "");  // the option's type_name says what it wants

CLI::Validator seconds_between(double lo, double hi) {
    return CLI::Validator([lo, hi](std::string& text) { return check_seconds(text, lo, hi); },
                          fmt::format("SECONDS in [{:g} - {:g}]", lo, hi));
}

}  // namespace

int worker_main(const std::string& name, const Registry& registry, int argc, const char* const* argv) {
    WorkerConfig config;
    config.registry = &registry;
    bool fork_server = false;
    std::vector<std::string> preload;
    CLI::App app{fmt::format(
        "{}: runs the tasks a coordinator hands out (task types: {}). The coordinator starts its own local\n"
        "workers; start one by hand (on this or another machine) to join a coordinator that runs with --listen.\n",
        name, registry.names_text())};
    app.name(name);  // "wordcount worker" in the usage line, not argv[0]
    app.set_version_flag("--version", fmt::format("{} (taskfarm {})", name, version()));
    app.get_formatter()->column_width(30);
    app.add_option("--connect", config.connect,
                   "the coordinator: tcp://HOST:PORT of its --listen, or the ipc://PATH it gives its own workers")
        ->check(kEndpoint)
        ->type_name("ENDPOINT");
    auto* keys_option =
        app.add_option("--keys", config.keys_dir,
                       "talk CurveZMQ (encrypted, authenticated) with this worker's worker.secret and the\n"
                       "coordinator's coordinator.public from DIR; needed when the coordinator has --keys")
            ->type_name("DIR");
    auto* insecure_option =
        app.add_flag("--insecure", config.insecure,
                     "connect to a tcp:// endpoint in plaintext, without --keys (for a coordinator run with\n"
                     "--insecure): tasks and results travel unencrypted, and whoever holds the port runs\n"
                     "commands here as this worker's user; refused as root without --insecure-as-root")
            ->excludes(keys_option);
    bool insecure_as_root = false;
    app.add_flag("--insecure-as-root", insecure_as_root,
                 "with --insecure, run as root all the same: anyone who can reach the port (or take it\n"
                 "over) then runs any command as root on this machine")
        ->needs(insecure_option);
    app.add_option("--name", config.name,
                   "name in logs and results (default: HOST-PID, or NODE-PID with Slurm's node name in a Slurm job); "
                   "at most 64 bytes, no control characters")
        ->check(CLI::Validator(
            [](std::string& given) -> std::string {
                // The coordinator rejects a hello whose name it could not print as it is.
                return is_printable(given, kMaxWorkerName)
                           ? ""
                           : fmt::format("'{}' is not printable or longer than {} bytes",
                                         printable(given, kMaxWorkerName), kMaxWorkerName);
            },
            "NAME"));
    app.add_option("--out-dir", config.out_dir,
                   "where tasks save files (downloads, a task type's outputs); the coordinator's own\n"
                   "workers get its --out-dir/processes")
        ->type_name("DIR")
        ->capture_default_str();
    app.add_option("--scratch-dir", config.scratch_dir,
                   "where tasks make their scratch directories (default: TMPDIR); the coordinator gives its own\n"
                   "workers its private run directory, removed after the run, so a killed worker's go with it")
        ->type_name("DIR");
    app.add_option("--state-dir", config.state_dir,
                   "keep DIR/PID.running, which says which task runs, so that a coordinator on this machine\n"
                   "charges a crash of this worker to that task alone (the coordinator gives its own workers\n"
                   "its private run directory)")
        ->type_name("DIR");
    app.add_option("--pin", config.pin, "run only on this CPU (one worker per core: --pin 0, --pin 1, ...)")
        ->check(kAllowedCpu)
        ->type_name("CPU");
    app.add_option("--connect-timeout", config.connect_timeout_s,
                   "exit 1 when no coordinator has answered this many seconds after starting (it may\n"
                   "start after its workers); a refused worker exits at once, saying why")
        ->check(seconds_between(0.1, 86'400))
        ->capture_default_str();
    app.add_option("--parent-pid", config.parent_pid, "exit when this process (the coordinator) dies")
        ->check(CLI::PositiveNumber);
    app.add_option("--heartbeat-interval", config.heartbeat_interval_s,
                   "seconds between heartbeats; use the coordinator's --heartbeat-interval")
        ->check(seconds_between(0.001, 3600))
        ->capture_default_str();
    app.add_option("--heartbeat-timeout", config.heartbeat_timeout_s,
                   "exit when the coordinator is silent this many seconds; use the coordinator's\n"
                   "--heartbeat-timeout")
        ->check(seconds_between(kMinHeartbeatTimeout, 86'400))
        ->capture_default_str();
    app.add_option("--log-level", config.log_level, "log level on stderr (default: SPDLOG_LEVEL, else info)")
        ->check(CLI::IsMember(std::vector<std::string>(std::begin(kLogLevels), std::end(kLogLevels))));
    app.add_flag("--fork-server", fork_server,
                 "instead of connecting, fork workers on the coordinator's requests on descriptor 3, with\n"
                 "--parent-pid (the coordinator starts one itself for its local workers; see decision 101)");
    auto* preload_option =
        app.add_option("--preload", preload,
                       "with --fork-server: load only what these task types need before forking (the plan's\n"
                       "types; every type's without it), so that each fork copies no more than the run uses")
            ->delimiter(',')
            ->type_name("TYPE,...");
    app.footer(fmt::format(
        "Exit status: 0 after the coordinator's SHUTDOWN; 1 when the coordinator refused this worker, never\n"
        "answered, or went silent; 2 bad usage. See docs/multihost.md.\n"
        "Example: {} --connect tcp://coordinator-host:5555 --keys ~/.taskfarm/keys --pin 0",
        name));
    try {
        app.parse(argc, argv);
        if (fork_server && config.parent_pid <= 0)
            throw CLI::ValidationError("--fork-server", "needs --parent-pid, the coordinator it forks workers for");
        if (!fork_server && config.connect.empty()) throw CLI::RequiredError("--connect");
        if (const std::string why = check_heartbeats(config.heartbeat_interval_s, config.heartbeat_timeout_s);
            !why.empty())
            throw CLI::ValidationError("--heartbeat-interval", why);
        const auto tcp = curve::parse_tcp_endpoint(config.connect, false);
        if (!config.keys_dir.empty() && !tcp)
            throw CLI::ValidationError("--keys", fmt::format("only for tcp:// endpoints, not '{}'", config.connect));
        if (config.insecure && ::geteuid() == 0 && !insecure_as_root)
            throw CLI::ValidationError(
                "--insecure",
                "refused as root: without --keys, whoever holds the port runs commands here as root; run "
                "the worker as another user, give --keys DIR, or add --insecure-as-root to accept it");
        if (tcp && config.keys_dir.empty() && !config.insecure)
            throw CLI::ValidationError(
                "--connect", fmt::format("'{}' without --keys: tasks and results would travel unencrypted; give --keys "
                                         "DIR, or --insecure to talk to a coordinator run with --insecure",
                                         config.connect));
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? static_cast<int>(ExitCode::Ok) : static_cast<int>(ExitCode::Usage);
    }
    if (fork_server) {
        init_logging("fork-server");
        if (!config.log_level.empty()) set_log_level(config.log_level);
        exit_with_parent(config.parent_pid);
        auto args = serve_forks(registry, kForkServerChannel, static_cast<pid_t>(config.parent_pid),
                                preload_option->count() > 0 ? &preload : nullptr);
        if (!args) return static_cast<int>(ExitCode::Ok);
        // A new worker: the arguments the coordinator would have exec'd it with.
        const std::string program = argv[0];  // the title below overwrites what argv points to
        std::vector<const char*> child_argv{program.c_str()};
        for (const std::string& arg : *args) child_argv.push_back(arg.c_str());
        // ps shows "worker w3", not the server's "worker --fork-server --parent-pid N".
        const auto name_flag = std::find(args->begin(), args->end(), "--name");
        if (name_flag != args->end() && name_flag + 1 != args->end())
            ProcessTitle(fmt::format("{} {}", name, *(name_flag + 1)), "").apply();
        return worker_main(name, registry, static_cast<int>(child_argv.size()), child_argv.data());
    }
    if (config.name.empty()) config.name = fmt::format("{}-{}", this_node(), ::getpid());
    init_logging(config.name);
    if (!config.log_level.empty()) set_log_level(config.log_level);
    // The coordinator may have blocked these for its own signal thread; the mask survives exec.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    ::pthread_sigmask(SIG_UNBLOCK, &signals, nullptr);
    if (config.parent_pid > 0) exit_with_parent(config.parent_pid);
    if (!config.keys_dir.empty()) {
        if (!curve::available()) {
            spdlog::error("--keys: this libzmq was built without CURVE support (libsodium), so it cannot encrypt");
            return static_cast<int>(ExitCode::Usage);
        }
        try {
            config.keys = curve::read_client_keys(config.keys_dir);
        } catch (const std::runtime_error& e) {
            spdlog::error("--keys: {}", e.what());
            return static_cast<int>(ExitCode::Usage);
        }
    }
    try {
        // Before the ZeroMQ context and the executor start their threads, which inherit it.
        if (config.pin >= 0) pin_this_thread(config.pin);
    } catch (const std::exception& e) {
        spdlog::error("--pin: cannot run on CPU {}: {}", config.pin, e.what());
        return static_cast<int>(ExitCode::Usage);
    }
    try {
        return run(config);
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return static_cast<int>(ExitCode::TasksFailed);
    }
}

}  // namespace taskfarm
