#include "session.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <iterator>
#include <mutex>
#include <optional>
#include <string>
#include <system_error>
#include <thread>
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
// Past this inside one task, the watcher thread takes the socket over from the task thread
// (decision 301): well above a short task, so a run of them never hands the socket over, and
// short enough that the watcher has it within 2 x kWatchAfter (it looks every kWatchAfter),
// before kGiveBackAfter and far inside any heartbeat interval.
constexpr auto kWatchAfter = std::chrono::milliseconds(5);
// While it runs tasks back to back, the task thread looks at the socket (a poll that does not
// wait) at least this often, for cancels, heartbeats and the coordinator's silence.
constexpr auto kServeEvery = std::chrono::milliseconds(1);
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

// The worker's two threads and its socket (decision 301). The task thread runs the tasks,
// always on itself (a type keeps per-thread state: the download type's connections), and
// between tasks it has the socket: it takes frames, sends results, heartbeats and answers
// the monitor itself, with no hand-off to another thread. The watcher sleeps meanwhile; when
// the task thread has been inside one task for kWatchAfter, the watcher takes the socket over
// (a mutex: ZeroMQ lets a socket change threads across a full barrier) and does all that
// while the task runs, with give-backs and cancels of it; the task thread, its task done,
// wakes it to let go and has the socket again.
class Session {
public:
    Session(const WorkerConfig& config, zmq::socket_t& dealer, zmq::socket_t& monitor, RunningBoard* board);
    ~Session();  // joins the task thread
    Session(const Session&) = delete;
    Session& operator=(const Session&) = delete;

    // The watcher, on the calling thread, until the session ends; returns the exit code.
    int watch();

private:
    enum class TaskThread { Idle, Busy, Done };  // waiting on the socket, running tasks, ended

    void run_tasks(std::stop_token stop);  // the task thread: serve_tasks, and what it throws
    void serve_tasks(std::stop_token stop);
    // With the socket held: polls it for `wait` at most, then does what came and what is due.
    // false when the session is over (exit_code_ set).
    bool serve(std::chrono::milliseconds wait, bool watcher);
    // With the socket held: the frames that came, without waiting. false when the session is over.
    bool receive();
    // With the socket held: the outbox, after the commands' groups if they changed (decision 116).
    void send_finished(bool groups_woke);
    // With the socket held: a heartbeat with the resident memory and the commands' groups of `now`.
    void send_heartbeat(Clock::time_point now);
    // The watcher, with the socket held, while the task thread stays inside the task of `mark`.
    bool hold(std::uint64_t mark);
    Clock::time_point deadline(bool watcher) const;
    bool over(ExitCode code);
    void set_state(TaskThread state);  // the task thread's
    void wake_watcher() const;
    void drain_wake() const;

    const WorkerConfig& config_;
    zmq::socket_t& dealer_;
    zmq::socket_t& monitor_;
    const Clock::duration interval_;
    const Clock::duration timeout_;
    // Until the coordinator's first frame, it may not be up yet (a worker started by hand or by
    // a scheduler before it): wait --connect-timeout for it, then the heartbeat timeout.
    const Clock::duration connect_timeout_;
    const int groups_fd_;  // readable when the commands' groups changed
    const int wake_fd_;    // an eventfd: the task thread wakes the watcher through it

    // Held by whichever thread has the socket: the task thread between tasks, the watcher while
    // a task runs long. Guards the dealer and monitor sockets, executor_ and the members up to
    // the next blank line.
    std::mutex socket_;
    Executor executor_;
    bool heard_ = false;
    Clock::time_point last_heard_ = Clock::now();
    Clock::time_point next_heartbeat_ = Clock::now() + interval_;
    proto::Heartbeat heartbeat_;  // with the resident memory of the moment (recycling) and the commands' groups
    HandshakeVerdict verdict_;
    std::vector<proto::Result> finished_;
    proto::ResultFrame frame_;
    std::optional<int> exit_code_;
    bool refill_owed_ = false;  // results went since the last tasks came: the coordinator's answer is owed

    // Tasks started plus tasks ended by the task thread, odd while one runs: the watcher looks
    // whether it moved, so the task thread tells no one per task (a relaxed store).
    std::atomic<std::uint64_t> marks_{0};
    std::mutex state_mutex_;
    std::condition_variable state_changed_;
    TaskThread state_ = TaskThread::Idle;  // guarded by state_mutex_
    TaskThread told_ = TaskThread::Idle;   // the task thread's: what it last set
    std::jthread thread_;                  // last: starts after the members it uses exist
};

Session::Session(const WorkerConfig& config, zmq::socket_t& dealer, zmq::socket_t& monitor, RunningBoard* board)
    : config_(config),
      dealer_(dealer),
      monitor_(monitor),
      interval_(std::chrono::duration_cast<Clock::duration>(Seconds(config.heartbeat_interval_s))),
      timeout_(std::chrono::duration_cast<Clock::duration>(Seconds(config.heartbeat_timeout_s))),
      connect_timeout_(std::chrono::duration_cast<Clock::duration>(Seconds(config.connect_timeout_s))),
      groups_fd_(command_groups::change_fd()),
      wake_fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)),
      executor_(*config.registry,
                RunEnv{.worker = config.name,
                       .mode = "processes",
                       .isolated = true,
                       .out_dir = config.out_dir,
                       .scratch_base = config.scratch_dir},
                board),
      verdict_(config) {
    if (wake_fd_ < 0) throw std::system_error(errno, std::generic_category(), "cannot make an eventfd");
    thread_ = std::jthread([this](std::stop_token stop) { run_tasks(std::move(stop)); });
}

Session::~Session() {
    thread_.request_stop();
    if (thread_.joinable()) thread_.join();
    ::close(wake_fd_);
}

void Session::wake_watcher() const {
    const std::uint64_t one = 1;
    while (::write(wake_fd_, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

void Session::drain_wake() const {
    std::uint64_t count = 0;
    (void)::read(wake_fd_, &count, sizeof count);
}

void Session::set_state(TaskThread state) {
    if (state == told_) return;
    told_ = state;
    {
        std::lock_guard lock(state_mutex_);
        state_ = state;
    }
    state_changed_.notify_one();  // no system call when the watcher does not wait there
    if (state == TaskThread::Done) wake_watcher();
}

bool Session::over(ExitCode code) {
    exit_code_ = static_cast<int>(code);
    return false;
}

Clock::time_point Session::deadline(bool watcher) const {
    Clock::time_point at = std::min(next_heartbeat_, last_heard_ + (heard_ ? timeout_ : connect_timeout_));
    if (watcher) {
        if (const auto due = executor_.give_back_due(kGiveBackAfter)) at = std::min(at, *due);
    }
    return at;
}

void Session::run_tasks(std::stop_token stop) {
    try {
        serve_tasks(stop);
    } catch (const std::exception& e) {
        // What the socket loop on the main thread did before (decision 301): said, and the worker
        // exits failed, rather than std::terminate for an exception out of a thread.
        spdlog::error("{}; exiting", e.what());
        // Thrown inside a task, while the watcher may hold the socket until the task's mark moves:
        // moved, and the watcher woken, before the socket is asked for.
        if (const std::uint64_t mark = marks_.load(std::memory_order_acquire); mark & 1) {
            marks_.store(mark + 1, std::memory_order_release);
            wake_watcher();
        }
        const std::lock_guard socket(socket_);
        exit_code_ = static_cast<int>(ExitCode::TasksFailed);
    }
    set_state(TaskThread::Done);
}

void Session::serve_tasks(std::stop_token stop) {
    struct ThreadDone {
        const Registry& registry;
        ~ThreadDone() { registry.thread_done(); }
    } thread_done{*config_.registry};
    std::uint64_t mark = 0;
    std::unique_lock socket(socket_);
    executor_.start(stop);
    Clock::time_point now = Clock::now();
    Clock::time_point next_serve = now;
    while (!stop.stop_requested()) {
        if (!executor_.has_queued()) {
            if (executor_.has_results()) send_finished(false);  // a cancel or a give-back emptied the queue
            set_state(TaskThread::Idle);                        // the watcher sleeps until told otherwise
            if (!serve(wire::poll_timeout(deadline(false)), false)) break;
            now = Clock::now();
            next_serve = now + kServeEvery;
            continue;
        }
        set_state(TaskThread::Busy);  // once a burst: the watcher looks every kWatchAfter from now on
        if (now >= next_serve) {
            // Tasks back to back: a look at the socket that does not wait, at most every kServeEvery.
            if (!serve(std::chrono::milliseconds(0), false)) break;
            now = Clock::now();
            next_serve = now + kServeEvery;
            continue;  // a cancel may have emptied the queue
        }
        executor_.begin(now);
        marks_.store(++mark, std::memory_order_release);
        socket.unlock();
        now = executor_.run(now);
        marks_.store(++mark, std::memory_order_release);
        if (!socket.try_lock()) {
            // The watcher took the socket over while the task ran: it lets go when woken.
            wake_watcher();
            socket.lock();
            now = Clock::now();
        }
        if (stop.stop_requested()) break;  // the watcher ended the session: the result goes nowhere
        executor_.end();
        bool low = false;
        if (executor_.send_due(low)) {
            // The queue ran low: the coordinator's answer to an earlier frame may be here. A look
            // that does not wait (the dealer alone, one system call when nothing came), and the
            // results wait again if it brought tasks. While that answer is still owed, the last
            // queued task runs first and the results go when the queue is empty: one frame a
            // batch, not three.
            if (low && !receive()) break;
            if (!low || (executor_.send_due(low) && !(refill_owed_ && executor_.has_queued()))) send_finished(false);
            now = Clock::now();  // the next task starts after the look and the send, not at the last one's end
        }
    }
    // The socket is held here. A shutdown asked for while results were held (decision 237's
    // rule) does not drop them: they go, as the socket loop sent its outbox at every wake-up.
    if (exit_code_ == static_cast<int>(ExitCode::Ok) && executor_.has_results()) send_finished(false);
}

int Session::watch() {
    std::uint64_t seen = marks_.load(std::memory_order_acquire);
    bool groups_seen = false;  // the groups' descriptor woke us between tasks: the task thread reads it
    while (true) {
        {
            std::unique_lock lock(state_mutex_);
            state_changed_.wait(lock, [this] { return state_ != TaskThread::Idle; });
            if (state_ == TaskThread::Done) break;
        }
        // Tasks run: a look every kWatchAfter at whether the task thread is still inside the
        // same one, and at once when a command started (its group must reach the coordinator).
        pollfd fds[] = {{wake_fd_, POLLIN, 0}, {groups_seen ? -1 : groups_fd_, POLLIN, 0}};
        const int woke = ::poll(fds, 2, static_cast<int>(kWatchAfter.count()));
        if (woke > 0 && (fds[0].revents & POLLIN)) drain_wake();  // the task thread ended, or a stale wake
        const bool groups_woke = woke > 0 && (fds[1].revents & POLLIN);
        const std::uint64_t mark = marks_.load(std::memory_order_acquire);
        const bool in_task = (mark & 1) != 0;
        groups_seen = groups_woke && !in_task;
        const bool take = in_task && (mark == seen || groups_woke);
        seen = mark;
        if (!take) continue;
        std::unique_lock socket(socket_);
        drain_wake();  // a wake from a task that ended before this take-over is no reason to let go
        if (marks_.load(std::memory_order_acquire) != mark) continue;  // it ended: the task thread waits for the socket
        if (!hold(mark)) {
            thread_.request_stop();  // stops the running task; its result goes nowhere
            return *exit_code_;
        }
    }
    std::lock_guard socket(socket_);
    return exit_code_.value_or(static_cast<int>(ExitCode::Ok));
}

bool Session::hold(std::uint64_t mark) {
    spdlog::trace("the watcher takes the socket: a task runs long");
    // What the task thread held in its outbox goes at once.
    auto wait = std::chrono::milliseconds(0);
    while (marks_.load(std::memory_order_acquire) == mark) {
        if (!serve(wait, true)) return false;
        wait = wire::poll_timeout(deadline(true));
    }
    return true;
}

void Session::send_heartbeat(Clock::time_point now) {
    heartbeat_.rss = resident_bytes();
    heartbeat_.groups = command_groups::live();
    wire::send(dealer_, proto::encode(heartbeat_));
    next_heartbeat_ = now + interval_;
}

void Session::send_finished(bool groups_woke) {
    executor_.take_results(finished_);
    // The commands' groups as they are now, at once, so that the coordinator can end them if
    // this worker dies; read after the results, and sent before them: a command's group is gone
    // before its result is queued, so the coordinator never holds the group of a task whose
    // result it has (decision 116).
    if ((groups_woke || command_groups::pending()) && command_groups::take_change()) {
        send_heartbeat(Clock::now());
    }
    if (!finished_.empty()) {
        refill_owed_ = true;
        send_results(dealer_, finished_, frame_);
        finished_.clear();
        next_heartbeat_ = Clock::now() + interval_;  // any frame is a sign of life
    }
}

bool Session::receive() {
    zmq::message_t incoming;
    while (dealer_.recv(incoming, zmq::recv_flags::dontwait)) {
        last_heard_ = Clock::now();
        heard_ = true;
        auto message = proto::decode(incoming.to_string_view(), proto::ParamsAs::Packed);  // decision 242
        if (auto* task = std::get_if<proto::Task>(&message)) {
            executor_.push(std::move(*task));
            refill_owed_ = false;
        } else if (auto* tasks = std::get_if<proto::TaskBatch>(&message)) {
            executor_.push(std::move(*tasks));
            refill_owed_ = false;
        } else if (auto* cancel = std::get_if<proto::Cancel>(&message)) {
            std::vector<proto::Result> dropped = executor_.cancel(cancel->tasks);
            if (!dropped.empty()) send_results(dealer_, dropped, frame_);
        } else if (auto* setup = std::get_if<proto::Setup>(&message)) {
            executor_.set_settings(std::move(setup->settings));
        } else if (std::holds_alternative<proto::Shutdown>(message)) {
            spdlog::debug("shutdown requested");
            return over(ExitCode::Ok);
        } else if (auto* error = std::get_if<proto::DecodeError>(&message)) {
            spdlog::warn("rejected a frame from the coordinator: {}", error->reason);
        }
    }
    return true;
}

bool Session::serve(std::chrono::milliseconds wait, bool watcher) {
    zmq::pollitem_t items[] = {{dealer_.handle(), 0, ZMQ_POLLIN, 0},
                               {monitor_.handle(), 0, ZMQ_POLLIN, 0},
                               {nullptr, groups_fd_, ZMQ_POLLIN, 0},
                               {nullptr, wake_fd_, ZMQ_POLLIN, 0}};
    // The wake is the watcher's alone: the task thread's task ended, let go.
    zmq::poll(items, watcher ? 4 : 3, wait);
    if (items[1].revents & ZMQ_POLLIN) {
        while (const auto event = wire::receive_monitor_event(monitor_)) {
            const std::string refusal = heard_ ? "" : verdict_.on_event(*event);
            if (refusal.empty()) continue;
            spdlog::error("{}; exiting", refusal);
            return over(ExitCode::TasksFailed);
        }
    }
    if (watcher && (items[3].revents & ZMQ_POLLIN)) drain_wake();
    // The watcher sends what waits in the outbox (the task thread held it by end()'s rule before
    // its task ran long); the task thread's own held results wait for that rule.
    const bool groups_woke = (items[2].revents & ZMQ_POLLIN) != 0;
    if (groups_woke || command_groups::pending() || (watcher && executor_.has_results())) send_finished(groups_woke);
    if ((items[0].revents & ZMQ_POLLIN) && !receive()) return false;
    const auto now = Clock::now();
    Clock::duration busy{};
    if (auto returned = executor_.give_back_if_busy_for(kGiveBackAfter, now, busy); !returned.empty()) {
        spdlog::debug("giving back {} task(s) queued behind one running for {:.3f} s", returned.size(),
                      Seconds(busy).count());
        proto::Returned message;
        message.busy_s = Seconds(busy).count();
        for (std::size_t first = 0; first < returned.size(); first += proto::kMaxBatch) {
            const auto begin = returned.begin() + static_cast<std::ptrdiff_t>(first);
            message.tasks.assign(
                begin, begin + static_cast<std::ptrdiff_t>(std::min(proto::kMaxBatch, returned.size() - first)));
            wire::send(dealer_, proto::encode(message));
        }
        next_heartbeat_ = now + interval_;
    }
    if (!heard_ && now - last_heard_ > connect_timeout_) {
        spdlog::error(
            "no coordinator answered at {} within {:.1f} s (--connect-timeout): is it running and listening "
            "there, and does every firewall on the way let the port through?; exiting",
            config_.connect, config_.connect_timeout_s);
        return over(ExitCode::TasksFailed);
    }
    if (heard_ && now - last_heard_ > timeout_) {
        spdlog::error("coordinator silent for {:.1f} s; exiting", Seconds(now - last_heard_).count());
        return over(ExitCode::TasksFailed);
    }
    if (now >= next_heartbeat_) {
        send_heartbeat(now);
    }
    return true;
}

}  // namespace

int run_session(const WorkerConfig& config) {
    zmq::context_t context(1);
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

    Session session(config, dealer, monitor, board.get());  // before the sockets go: it joins its thread
    return session.watch();
}

}  // namespace taskfarm
