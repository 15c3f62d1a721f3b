#include "session.hpp"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iterator>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "affinity.hpp"
#include "command_groups.hpp"
#include "errors.hpp"
#include "executor.hpp"
#include "protocol.hpp"
#include "running_board.hpp"
#include "wire.hpp"

namespace taskfarm {
namespace {

using Clock = std::chrono::steady_clock;
using Seconds = std::chrono::duration<double>;

constexpr const char* kMonitorEndpoint = "inproc://monitor";
// Handshakes that fail with no reason given before a worker gives up: the coordinator closed
// the connection, which is what a CURVE server does with a client that has the wrong server key.
constexpr int kMaxHandshakeFailures = 3;

// Past this, the running task is slow enough that the tasks queued behind it are better
// off on another worker: they go back to the coordinator (`returned`).
constexpr auto kGiveBackAfter = std::chrono::milliseconds(20);
// Most results in one `results` frame; more go in several.
constexpr std::size_t kMaxResultsPerFrame = 256;

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

// Sends `results` in order, as few frames as fit: at most kMaxResultsPerFrame results and
// proto::kMaxBatchBytes each, since the coordinator drops a frame over its limit together
// with the connection. Each result is packed once, into the frame (decision 200); one that
// would take the frame over the byte limit goes into the next. A result too large on its own
// goes as a failure of its task, saying so, because its value could never reach the coordinator.
void send_results(zmq::socket_t& dealer, std::vector<proto::Result>& results, proto::ResultFrame& frame) {
    // Read once a frame, not once a result: the coordinator recycles a worker by it.
    const std::uint64_t rss = resident_bytes();
    frame.clear();
    for (std::size_t i = 0; i < results.size();) {
        proto::Result& result = results[i];
        result.rss = rss;
        frame.add(result);
        if (frame.bytes() > proto::kMaxBatchBytes) {
            const std::size_t bytes = frame.bytes();
            frame.drop_last();
            if (frame.count() > 0) {  // it goes first in the next frame
                wire::send(dealer, frame.take());
                frame.clear();
                continue;
            }
            proto::Result failed;
            failed.id = result.id;
            failed.attempt = result.attempt;
            failed.kind = result.kind;
            failed.run_s = result.run_s;
            failed.rss = result.rss;
            failed.error = fmt::format(
                "its result takes {} bytes encoded, more than the {} bytes a message to the "
                "coordinator may hold",
                bytes, proto::kMaxBatchBytes);
            spdlog::warn("task {}: {}", result.id, failed.error);
            frame.add(failed);
        }
        ++i;
        if (frame.count() == kMaxResultsPerFrame || i == results.size()) {
            wire::send(dealer, frame.take());
            frame.clear();
        }
    }
}

}  // namespace

int run_session(const WorkerConfig& config) {
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
    proto::ResultFrame frame;

    while (true) {
        const auto silence_limit = heard ? timeout : connect_timeout;
        auto wake_at = std::min(next_heartbeat, last_heard + silence_limit);
        // Also while results wait in the executor's outbox (after a give-back or a cancel
        // emptied the queue behind them): taken at the next wake-up, at most this late.
        if (executor.has_queued_or_results()) wake_at = std::min(wake_at, Clock::now() + kGiveBackAfter / 2);
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
        }
        // At every wake-up, not only the executor's: results wait in its outbox while tasks
        // are queued behind them (Executor), and leave with the next frame we send.
        executor.take_results(finished);
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
            send_results(dealer, finished, frame);
            finished.clear();
            next_heartbeat = Clock::now() + interval;  // any frame is a sign of life
        }
        if (items[0].revents & ZMQ_POLLIN) {
            zmq::message_t incoming;
            while (dealer.recv(incoming, zmq::recv_flags::dontwait)) {
                last_heard = Clock::now();
                heard = true;
                auto message = proto::decode(incoming.to_string_view(), proto::ParamsAs::Packed);  // decision 242
                if (auto* task = std::get_if<proto::Task>(&message)) {
                    executor.push(std::move(*task));
                } else if (auto* tasks = std::get_if<proto::TaskBatch>(&message)) {
                    executor.push(std::move(*tasks));
                } else if (auto* cancel = std::get_if<proto::Cancel>(&message)) {
                    std::vector<proto::Result> dropped = executor.cancel(cancel->tasks);
                    if (!dropped.empty()) send_results(dealer, dropped, frame);
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

}  // namespace taskfarm
