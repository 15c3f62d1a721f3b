#include "dispatcher.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "command_groups.hpp"
#include "wire.hpp"

namespace taskfarm {
namespace {

constexpr auto kChildCheckInterval = std::chrono::milliseconds(20);  // how soon an exit is noticed
constexpr auto kRejectLogInterval = std::chrono::seconds(1);

}  // namespace

Dispatcher::Dispatcher(zmq::socket_t& router, WorkerLauncher& pool, const Plan& plan, ModeRecorder& recorder,
                       DispatchOptions options, std::stop_token stop, const Json& settings, std::stop_token drain)
    : router_(router),
      pool_(pool),
      plan_(plan),
      recorder_(recorder),
      stop_(stop),
      drain_(std::move(drain)),
      schedule_(plan, std::move(options), *this, Clock::now(), stop,
                [this](const TaskSpec& task, std::uint32_t attempt) { return encode_task(task, attempt); }),
      setup_(proto::encode(proto::Setup{.settings = settings})) {}

void Dispatcher::run() {
    // From here to the end of the loop a cancel is answered by the schedule (CancelBoard::attach).
    const CancelBoard::Attached attached(cancels_);
    next_reap_ = Clock::now() + kChildCheckInterval;
    while (!schedule_.done() && !stop_.stop_requested()) {
        // Nothing here waits on another process: a slow producer of the plan and a slow fork
        // server each get a descriptor polled with the workers' socket, and only what
        // depends on them waits for them.
        const int plan_ready = schedule_.plan_ready_fd();
        const int forked = pool_.fork_reply_fd();
        zmq::pollitem_t items[] = {{router_.handle(), 0, ZMQ_POLLIN, 0},
                                   {nullptr, plan_ready, ZMQ_POLLIN, 0},
                                   {nullptr, forked, ZMQ_POLLIN, 0}};
        const int watched = 1 + (plan_ready >= 0 ? 1 : 0) + (forked >= 0 ? 1 : 0);
        if (plan_ready < 0) std::swap(items[1], items[2]);  // the watched ones first
        zmq::poll(items, watched, wire::poll_timeout(std::min(schedule_.next_deadline(), next_reap_)));
        if (forked >= 0) pool_.take_fork_replies();  // before the HELLOs of the workers it forked
        if (items[0].revents & ZMQ_POLLIN) drain_incoming();
        if (!deferred_hellos_.empty()) resume_hellos();
        // On a timer, not after every frame: at 100,000s of results a second the system
        // calls would cost more than the results.
        if (const auto now = Clock::now(); now >= next_reap_) {
            for (const WorkerExit& exit : pool_.reap_exited())
                schedule_.exited(exit.pid, fmt::format("worker {} died ({})", exit.name, exit.reason), now);
            next_reap_ = now + kChildCheckInterval;
            if (watch_)
                if (const auto reason = watch_()) {
                    watch_ = nullptr;
                    schedule_.no_more_workers(*reason);
                }
        }
        // A stop is a drain too, whose running tasks are cancelled, not left to finish: only a
        // drain alone says "draining" (the loop ends at the stop).
        if (drain_.stop_requested() && !stop_.stop_requested()) schedule_.drain(Clock::now());
        if (cancels_ && cancels_->has_new())
            for (const TaskId id : cancels_->take_new()) {
                // The answer to `coordinator cancel` is what the schedule did, not that it was asked.
                auto [cancelled, what] = schedule_.cancel(id, Clock::now());
                cancels_->applied(id, cancelled, std::move(what));
            }
        schedule_.tick(Clock::now());
    }
    if (const auto& error = schedule_.plan_error()) recorder_.plan_error(*error);
}

void Dispatcher::resume_hellos() {
    pool_.take_fork_replies();
    const bool waiting = pool_.fork_reply_fd() >= 0;
    std::erase_if(deferred_hellos_, [&](DeferredHello& deferred) {
        const auto pid = static_cast<pid_t>(deferred.hello.pid);
        const pid_t id = pool_.id_of(pid);
        if (id == pid && waiting) return false;  // its answer has not come yet
        deferred.hello.pid = id;                 // or, no answer left to wait for, as it said
        if (wire::send_to(router_, deferred.identity, setup_))
            schedule_.hello(deferred.identity, deferred.hello, std::nullopt, Clock::now());
        return true;
    });
}

void Dispatcher::shutdown_workers() { schedule_.shutdown_workers(); }

void Dispatcher::drain_incoming() {
    zmq::message_t identity;
    while (router_.recv(identity, zmq::recv_flags::dontwait)) {
        // A ROUTER delivers [identity, frames...]; a message of ours is exactly one frame.
        zmq::message_t body;
        zmq::message_t extra;
        std::size_t frames = 0;
        for (bool more = identity.more(); more; ++frames) {
            zmq::message_t& part = frames == 0 ? body : extra;
            if (!router_.recv(part, zmq::recv_flags::none)) break;
            more = part.more();
        }
        if (frames == 1)
            on_frame(identity.to_string(), body);
        else
            reject(identity.to_string(), fmt::format("message of {} frames, want 1", frames));
    }
}

void Dispatcher::on_frame(const std::string& identity, const zmq::message_t& body) {
    const auto now = Clock::now();
    frame_at_ = now;
    struct Done {  // on every way out
        std::optional<Clock::time_point>& at;
        ~Done() { at.reset(); }
    } done{frame_at_};
    schedule_.frame(identity, now);
    auto message = proto::decode(body.to_string_view(), proto::ParamsAs::Json, values_);
    if (auto* hello = std::get_if<proto::Hello>(&message)) {
        if (schedule_.name_of(identity)) return reject(identity, "second HELLO");
        // Only the Listener's ZAP handler sets a User-Id, so a frame with one came over tcp.
        std::optional<RemotePeer> remote;
        if (auto user = wire::property(body, "User-Id"))
            remote = RemotePeer{std::move(*user), wire::property(body, "Peer-Address").value_or("")};
        // A worker forked by the fork server is known by the id spawn() gave it. It may say
        // hello before the server's answer names its pid (the server sends it after the
        // fork): then its hello waits for that answer (resume_hellos()).
        if (!remote) {
            const auto pid = static_cast<pid_t>(hello->pid);
            const pid_t id = pool_.id_of(pid);
            if (id == pid && pool_.fork_reply_fd() >= 0) {
                deferred_hellos_.push_back({identity, *hello});
                return;
            }
            hello->pid = id;
        }
        // The run's settings before any task: a worker's tasks read them (Context::settings()).
        if (!wire::send_to(router_, identity, setup_)) return;
        return schedule_.hello(identity, *hello, remote, now);
    }
    if (auto* result = std::get_if<proto::Result>(&message)) return schedule_.result(identity, std::move(*result), now);
    if (auto* results = std::get_if<proto::ResultBatch>(&message)) {
        for (proto::Result& result : results->results) schedule_.result(identity, std::move(result), now);
        return;
    }
    if (auto* returned = std::get_if<proto::Returned>(&message)) return schedule_.returned(identity, *returned, now);
    if (auto* heartbeat = std::get_if<proto::Heartbeat>(&message))
        return schedule_.heartbeat(identity, *heartbeat, now);
    if (auto* error = std::get_if<proto::DecodeError>(&message)) return reject(identity, error->reason);
    reject(identity, "unexpected message type from a worker");
}

void Dispatcher::reject(const std::string& identity, const std::string& reason) {
    RejectLog& log = rejects_[identity];
    const auto now = Clock::now();
    if (now - log.last < kRejectLogInterval) {
        ++log.suppressed;
        return;
    }
    const std::string peer = schedule_.name_of(identity).value_or("an unknown peer");
    if (log.suppressed > 0)
        spdlog::warn("rejected a frame from {}: {} ({} more rejected since the last report)", peer, reason,
                     log.suppressed);
    else
        spdlog::warn("rejected a frame from {}: {}", peer, reason);
    log = RejectLog{now, 0};
}

pid_t Dispatcher::spawn(const std::string& name, int cpu) { return pool_.spawn(name, cpu); }

void Dispatcher::kill(pid_t pid) { pool_.kill(pid); }

LastRunning Dispatcher::last_running(pid_t pid) { return pool_.last_running(pid); }

void Dispatcher::kill_group(pid_t group) {
    command_groups::kill_group(group, SIGKILL);  // false when it ended already
}

std::size_t Dispatcher::encode_task(const TaskSpec& task, std::uint32_t attempt) {
    const std::size_t at = encoded_.size();
    proto::append_encoded(encoded_, task, attempt);
    const std::size_t size = encoded_.size() - at;
    if (size > proto::kMaxBatchBytes) {
        encoded_.resize(at);  // never sent: the schedule fails it
        return size;
    }
    encoded_at_.push_back({task.id, attempt, at, size});
    return size;
}

bool Dispatcher::send_tasks(const PeerId& peer, std::span<const Attempt> attempts) {
    // The bytes encode_task() made for the schedule, in the order it took them; a task not
    // found there (not counted since the last frame) is encoded as before.
    pieces_.clear();
    std::size_t from = 0;
    for (const Attempt& attempt : attempts) {
        const TaskId id = schedule_.task(attempt.index).id;
        while (from < encoded_at_.size() && (encoded_at_[from].id != id || encoded_at_[from].attempt != attempt.number))
            ++from;
        if (from == encoded_at_.size()) break;
        pieces_.emplace_back(encoded_.data() + encoded_at_[from].at, encoded_at_[from].size);
        ++from;
    }
    const bool all = pieces_.size() == attempts.size();
    if (all) {
        if (attempts.size() == 1)
            frame_.assign(pieces_.front());
        else
            proto::encode_batch_of(frame_, pieces_);
    }
    encoded_.clear();
    encoded_at_.clear();
    if (all) return wire::send_to(router_, peer, frame_);
    batch_.tasks.resize(attempts.size());
    for (std::size_t i = 0; i < attempts.size(); ++i)
        proto::to_message(schedule_.task(attempts[i].index), attempts[i].number, batch_.tasks[i]);
    if (attempts.size() == 1)
        proto::encode_to(frame_, batch_.tasks.front());
    else
        proto::encode_to(frame_, batch_);
    return wire::send_to(router_, peer, frame_);
}

bool Dispatcher::send_heartbeat(const PeerId& peer) { return wire::send_to(router_, peer, heartbeat_); }

void Dispatcher::send_shutdown(const PeerId& peer) { wire::send_to(router_, peer, proto::encode(proto::Shutdown{})); }

void Dispatcher::record(const TaskSpec& task, TaskResult result) {
    recorder_.record(task, std::move(result), frame_at_ ? *frame_at_ : Clock::now());
}

void Dispatcher::record_retry(const TaskSpec& task, TaskResult result) {
    recorder_.record_retry(task, std::move(result));
}

void Dispatcher::recycled(const std::string& worker, const std::string& reason) {
    recorder_.count_recycled();
    recorder_.note({.kind = RunEvent::Kind::WorkerExited, .worker = worker, .detail = "recycled: " + reason});
}

void Dispatcher::send_cancel(const PeerId& peer, std::span<const Attempt> attempts) {
    proto::Cancel message;
    for (const Attempt& attempt : attempts)
        message.tasks.push_back({attempt.index, attempt.number});  // the index is the id
    wire::send_to(router_, peer, proto::encode(message));
}

void Dispatcher::note(RunEvent event) { recorder_.note(std::move(event)); }

void Dispatcher::started(const std::string& worker, const TaskSpec& task, std::uint32_t attempt, Clock::time_point at) {
    recorder_.started(task, attempt, worker, at);
}

void Dispatcher::place(const Placement& placement, int connected) {
    Placement where = placement;
    where.pid = pool_.pid_of(static_cast<pid_t>(placement.pid));  // a forked worker's own pid, not its id
    recorder_.place(where);
    recorder_.at_least_workers(connected);
}

void Dispatcher::restart_clock() { recorder_.restart_clock(); }

double Dispatcher::seconds_at(Clock::time_point when) const { return recorder_.seconds_at(when); }

}  // namespace taskfarm
