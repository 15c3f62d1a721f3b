#include "dispatcher.hpp"

#include <algorithm>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "wire.hpp"

namespace taskfarm {
namespace {

constexpr auto kChildCheckInterval = std::chrono::milliseconds(20);  // how soon an exit is noticed
constexpr auto kRejectLogInterval = std::chrono::seconds(1);
// How long past a task's timeout the coordinator waits for the worker's own "timed out"
// result before it kills the worker: the executor stops itself at the deadline, so only a
// stuck or stopped worker needs this.
constexpr auto kOverrunGrace = std::chrono::seconds(1);
// Weight of the newest task time in the moving average that sizes --prefetch auto.
constexpr double kEstimateWeight = 0.2;

}  // namespace

Dispatcher::Dispatcher(zmq::socket_t& router, ProcessPool& pool, const Plan& plan, ModeRecorder& recorder,
                       DispatchOptions options, std::stop_token stop)
    : router_(router), pool_(pool), plan_(plan), recorder_(recorder), options_(std::move(options)),
      stop_(std::move(stop)), setup_frame_(proto::encode(proto::Setup{.settings = options_.settings})) {}

void Dispatcher::run() {
    began_ = Clock::now();
    next_heartbeat_ = Clock::now() + options_.heartbeat_interval;
    next_watch_ = Clock::now() + kChildCheckInterval;
    // Without remote workers to wait for, work starts at the first hello.
    dispatching_ = options_.expect_remote == 0;
    // Between spawns, whoever is up already says hello and gets work: spawning is most of
    // the start-up, so the first results need not wait for the last worker.
    for (std::size_t i = 0; i < static_cast<std::size_t>(options_.workers); ++i) {
        spawn(fmt::format("w{}", i + 1), options_.cpus.empty() ? -1 : options_.cpus[i % options_.cpus.size()]);
        drain_incoming();
        dispatch();
        if (finished_ >= plan_.tasks.size()) recorder_.stop_clock();
    }
    all_hello_ = spawned_.empty();
    // A short plan may be done before the last worker is up; the run still waits for its
    // hello (its placement goes in the report, and one that cannot start is an error), but
    // the mode's clock stops at the last result.
    while ((finished_ < plan_.tasks.size() || !all_hello_) && !stop_.stop_requested()) {
        if (finished_ >= plan_.tasks.size()) recorder_.stop_clock();
        zmq::pollitem_t items[] = {{router_.handle(), 0, ZMQ_POLLIN, 0}};
        zmq::poll(items, 1, wire::poll_timeout(std::min(next_heartbeat_, next_watch_)));
        if (items[0].revents & ZMQ_POLLIN) drain_incoming();
        // Checked on a timer, not after every frame: at 100,000s of results a second their
        // system calls would cost more than the results.
        if (const auto now = Clock::now(); now >= next_watch_) {
            watch_processes();
            watch_deadlines();
            watch_remote();
            watch_overruns();
            next_watch_ = now + kChildCheckInterval;
        }
        if (Clock::now() >= next_heartbeat_) send_heartbeats();
        dispatch();
    }
}

void Dispatcher::shutdown_workers() {
    const std::string frame = proto::encode(proto::Shutdown{});
    for (const auto& [identity, worker] : workers_) send(identity, frame);
}

void Dispatcher::spawn(const std::string& name, int cpu) {
    const pid_t pid = pool_.spawn(name, cpu);
    spawned_[pid] = Spawned{name, cpu, Clock::now()};
    recorder_.note({.kind = RunEvent::Kind::WorkerStarted, .worker = name, .detail = fmt::format("pid {}", pid)});
}

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
    if (auto worker = workers_.find(identity); worker != workers_.end()) worker->second.last_seen = Clock::now();
    auto message = proto::decode(body.to_string_view());
    if (auto* hello = std::get_if<proto::Hello>(&message)) return on_hello(identity, *hello, body);
    if (auto* result = std::get_if<proto::Result>(&message)) return on_result(identity, *result);
    if (auto* results = std::get_if<proto::ResultBatch>(&message)) return on_results(identity, *results);
    if (auto* returned = std::get_if<proto::Returned>(&message)) return on_returned(identity, *returned);
    if (std::holds_alternative<proto::Heartbeat>(message)) return;
    if (auto* error = std::get_if<proto::DecodeError>(&message)) return reject(identity, error->reason);
    reject(identity, "unexpected message type from a worker");
}

void Dispatcher::on_hello(const std::string& identity, const proto::Hello& hello, const zmq::message_t& body) {
    if (workers_.contains(identity)) return reject(identity, "second HELLO");
    const pid_t pid = static_cast<pid_t>(hello.pid);
    // Only the Listener's ZAP handler sets a User-Id, so a frame with one came over tcp. A
    // remote pid means nothing here: it may even equal the pid of a local worker of ours.
    const auto user = wire::property(body, "User-Id");
    if (user) {
        for (const auto& [other, worker] : workers_)
            if (worker.name == hello.name)
                spdlog::warn("two workers are called {}: their results cannot be told apart (give each --name)",
                             hello.name);
        spdlog::info("remote worker {} (pid {} on {}) attached from {} with {}{}", hello.name, hello.pid, hello.host,
                     wire::property(body, "Peer-Address").value_or("an unknown address"), *user,
                     dispatching_ ? "" : fmt::format(" ({} of {} expected)", remote_workers() + 1, options_.expect_remote));
    } else if (auto spawned = spawned_.find(pid); spawned != spawned_.end()) {
        spawned->second.said_hello = true;
        if (spawned->second.cpu >= 0 && spawned->second.cpu != hello.cpu)
            spdlog::warn("worker {} (pid {}) was to run on cpu {} only, but reports {}", hello.name, hello.pid,
                         spawned->second.cpu, hello.cpu >= 0 ? fmt::format("cpu {}", hello.cpu) : "several CPUs");
    } else {
        spdlog::info("worker {} (pid {} on {}) attached", hello.name, hello.pid, hello.host);
    }
    // The run's settings before any task: a worker's tasks read them (Context::settings()).
    if (!send(identity, setup_frame_)) return;
    workers_[identity] = WorkerState{hello.name, pid, hello.cpu, {}, Clock::now(), {}, user.has_value()};
    recorder_.place({hello.name, hello.cpu, hello.pid});
    recorder_.at_least_workers(static_cast<int>(workers_.size()));
    if (user && dispatching_)
        recorder_.note({.kind = RunEvent::Kind::WorkerStarted, .worker = hello.name, .detail = "remote, attached"});
    spdlog::debug("worker {} (pid {}, cpu {}) said hello", hello.name, hello.pid, hello.cpu);
    if (!all_hello_)
        all_hello_ = std::all_of(spawned_.begin(), spawned_.end(), [](const auto& s) { return s.second.said_hello; });
    if (!dispatching_ && remote_workers() >= static_cast<std::size_t>(options_.expect_remote)) start_dispatching();
}

void Dispatcher::start_dispatching() {
    dispatching_ = true;
    if (options_.expect_remote > 0) {
        spdlog::info("{} remote worker(s) attached after {:.1f} s; handing out tasks", remote_workers(),
                     std::chrono::duration<double>(Clock::now() - began_).count());
        // Waiting for a person or a scheduler to start remote workers is no cost of the process model.
        recorder_.restart_clock();
    }
    for (const auto& [identity, worker] : workers_)
        if (worker.remote)
            recorder_.note({.kind = RunEvent::Kind::WorkerStarted, .worker = worker.name, .detail = "remote, attached"});
}

void Dispatcher::watch_remote() {
    if (!options_.listening) return;
    const auto now = Clock::now();
    const double wait_s = std::chrono::duration<double>(options_.wait_remote).count();
    if (!dispatching_) {
        if (now - began_ > options_.wait_remote && remote_workers() < static_cast<std::size_t>(options_.expect_remote))
            throw RunError(fmt::format("only {} of the {} remote worker(s) of --expect-workers attached within {:.1f} s "
                                       "(--wait-workers); the log above names any that were refused",
                                       remote_workers(), options_.expect_remote, wait_s));
        return;
    }
    if (pending() == 0 || !workers_.empty() || !spawned_.empty()) {
        alone_since_ = {};
        return;
    }
    if (alone_since_ == Clock::time_point{}) {
        alone_since_ = now;
        spdlog::warn("no worker is left; waiting up to {:.1f} s (--wait-workers) for a remote worker to attach", wait_s);
    } else if (now - alone_since_ > options_.wait_remote) {
        fail_pending(fmt::format("not run: no worker was left and none attached within {:.1f} s (--wait-workers)", wait_s));
    }
}

std::size_t Dispatcher::remote_workers() const {
    return static_cast<std::size_t>(
        std::count_if(workers_.begin(), workers_.end(), [](const auto& w) { return w.second.remote; }));
}

void Dispatcher::on_result(const std::string& identity, const proto::Result& message) {
    const auto worker = workers_.find(identity);
    if (worker == workers_.end()) {
        spdlog::debug("ignored result of task {} from a worker no longer in the run", message.id);
        return;
    }
    take_result(worker->second, message);
}

void Dispatcher::on_results(const std::string& identity, const proto::ResultBatch& batch) {
    const auto worker = workers_.find(identity);
    if (worker == workers_.end()) {
        spdlog::debug("ignored {} results from a worker no longer in the run", batch.results.size());
        return;
    }
    for (const proto::Result& result : batch.results) take_result(worker->second, result);
}

bool Dispatcher::take_result(WorkerState& worker, const proto::Result& message) {
    // Results come back in the order the tasks were sent, so this is almost always the first.
    auto& in_flight = worker.in_flight;
    const auto attempt = std::find_if(in_flight.begin(), in_flight.end(), [&](const Attempt& a) {
        return plan_.tasks[a.index].id == message.id && a.number == message.attempt;
    });
    if (attempt == in_flight.end()) {
        spdlog::debug("ignored duplicate or stale result of task {} attempt {}", message.id, message.attempt);
        return false;
    }
    const std::size_t index = attempt->index;
    in_flight.erase(attempt);
    worker.running_since = Clock::now();  // the next one, if any, starts now
    run_s_estimate_ = run_s_estimate_ < 0 ? message.run_s
                                          : (1 - kEstimateWeight) * run_s_estimate_ + kEstimateWeight * message.run_s;
    ++finished_;
    recorder_.record(plan_.tasks[index], proto::to_result(message, worker.name, plan_.tasks[index].type));
    return true;
}

void Dispatcher::on_returned(const std::string& identity, const proto::Returned& message) {
    const auto worker = workers_.find(identity);
    if (worker == workers_.end()) return;
    // Queued behind a task that is taking long: they go to the front of the queue as they
    // were (same attempt: they never ran), and the estimate learns that tasks can be this
    // slow, so no worker is given a queue of them again.
    auto& in_flight = worker->second.in_flight;
    std::vector<Attempt> back;
    for (const proto::TaskRef& ref : message.tasks) {
        const auto attempt = std::find_if(in_flight.begin(), in_flight.end(), [&](const Attempt& a) {
            return plan_.tasks[a.index].id == ref.id && a.number == ref.attempt;
        });
        if (attempt == in_flight.end()) continue;  // stale: not one it holds
        back.push_back({attempt->index, attempt->number});
        in_flight.erase(attempt);
    }
    for (auto attempt = back.rbegin(); attempt != back.rend(); ++attempt) retries_.push_front(*attempt);
    run_s_estimate_ = std::max(run_s_estimate_, message.busy_s);
    spdlog::debug("worker {} gave back {} task(s) queued behind one running for {:.3f} s", worker->second.name,
                  back.size(), message.busy_s);
}

void Dispatcher::reject(const std::string& identity, const std::string& reason) {
    RejectLog& log = rejects_[identity];
    const auto now = Clock::now();
    if (now - log.last < kRejectLogInterval) {
        ++log.suppressed;
        return;
    }
    const auto worker = workers_.find(identity);
    const std::string peer = worker != workers_.end() ? worker->second.name : "an unknown peer";
    if (log.suppressed > 0)
        spdlog::warn("rejected a frame from {}: {} ({} more rejected since the last report)", peer, reason, log.suppressed);
    else
        spdlog::warn("rejected a frame from {}: {}", peer, reason);
    log = RejectLog{now, 0};
}

void Dispatcher::watch_processes() {
    for (const WorkerExit& exit : pool_.reap_exited()) {
        const std::string identity = identity_of(exit.pid);
        const std::string reason = fmt::format("worker {} died ({})", exit.name, exit.reason);
        if (identity.empty())
            lose_unconnected(exit.pid, reason);
        else
            lose_worker(identity, reason);
    }
}

void Dispatcher::watch_deadlines() {
    const auto now = Clock::now();
    std::vector<std::pair<pid_t, std::string>> late;
    for (const auto& [pid, spawned] : spawned_)
        if (!spawned.said_hello && now - spawned.started > options_.start_timeout) late.emplace_back(pid, spawned.name);
    for (const auto& [pid, name] : late) {
        pool_.kill(pid);
        lose_unconnected(pid, fmt::format("worker {} (pid {}) did not say hello within {:.1f} s", name, pid,
                                          std::chrono::duration<double>(options_.start_timeout).count()));
    }
    std::vector<std::pair<std::string, std::string>> silent;
    for (const auto& [identity, worker] : workers_)
        if (now - worker.last_seen > options_.heartbeat_timeout)
            silent.emplace_back(identity, fmt::format("worker {} silent for {:.1f} s", worker.name,
                                                      std::chrono::duration<double>(now - worker.last_seen).count()));
    for (const auto& [identity, reason] : silent) lose_worker(identity, reason);
}

void Dispatcher::watch_overruns() {
    const auto now = Clock::now();
    std::vector<std::string> overran;
    for (const auto& [identity, worker] : workers_) {
        if (worker.in_flight.empty()) continue;
        const double timeout_s = plan_.tasks[worker.in_flight.front().index].timeout_s;
        if (timeout_s <= 0) continue;
        const auto limit = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
        if (now - worker.running_since > limit + kOverrunGrace) overran.push_back(identity);
    }
    for (const std::string& identity : overran) {
        // The task fails as a timeout (not retried: it would most likely overrun again);
        // the worker is killed and replaced, and its other tasks go back to the queue.
        WorkerState& worker = workers_.at(identity);
        const Attempt attempt = worker.in_flight.front();
        worker.in_flight.erase(worker.in_flight.begin());
        const TaskSpec& task = plan_.tasks[attempt.index];
        TaskResult result;
        result.id = task.id;
        result.type = task.type;
        result.attempt = attempt.number;
        result.worker = worker.name;
        result.error = fmt::format("timed out after {:g} s: worker {} did not stop it, so it was {}", task.timeout_s, worker.name,
                                   worker.remote ? "told to shut down" : "killed");
        result.run_time = now - worker.running_since;
        ++finished_;
        recorder_.record(task, std::move(result));
        lose_worker(identity, fmt::format("worker {} overran the timeout of task {}", worker.name, task.id));
    }
}

void Dispatcher::send_heartbeats() {
    const std::string frame = proto::encode(proto::Heartbeat{});
    std::vector<std::string> gone;
    for (const auto& [identity, worker] : workers_)
        if (!send(identity, frame)) gone.push_back(identity);
    for (const std::string& identity : gone) lose_worker(identity, fmt::format("worker {} disconnected", workers_.at(identity).name));
    next_heartbeat_ = Clock::now() + options_.heartbeat_interval;
}

std::size_t Dispatcher::window() const {
    const std::size_t most = options_.prefetch > 0 ? static_cast<std::size_t>(options_.prefetch) : kMaxWindow;
    if (run_s_estimate_ < 0) return 1;  // nothing known yet: as if every task were long
    const double budget_s = std::chrono::duration<double>(kQueueBudget).count();
    if (run_s_estimate_ * static_cast<double>(most) <= budget_s) return most;
    return std::clamp(static_cast<std::size_t>(budget_s / run_s_estimate_), std::size_t{1}, most);
}

Dispatcher::Attempt Dispatcher::next_pending() {
    if (!retries_.empty()) {
        const Attempt attempt = retries_.front();
        retries_.pop_front();
        return attempt;
    }
    return {next_index_++, 1};
}

void Dispatcher::dispatch() {
    // Work starts at the first hello: a worker holds one task until results show that tasks
    // are short, so an early worker cannot take work that later ones should have had.
    if (!dispatching_) return;
    if (workers_.empty()) {
        if (pending() > 0 && spawned_.empty() && !options_.listening)
            fail_pending(fmt::format("not run: every worker died and --max-respawns {} replacements are used up",
                                     options_.max_respawns));
        return;
    }
    const std::size_t limit = window();
    // Shallowest queue first, and a fair share each, so a short plan spreads over every
    // worker before any worker queues more.
    while (pending() > 0) {
        auto target = workers_.end();
        std::size_t open = 0;
        for (auto it = workers_.begin(); it != workers_.end(); ++it) {
            if (it->second.in_flight.size() >= limit) continue;
            ++open;
            if (target == workers_.end() || it->second.in_flight.size() < target->second.in_flight.size()) target = it;
        }
        if (target == workers_.end()) break;
        const std::size_t share = std::max<std::size_t>(1, (pending() + open - 1) / open);
        send_tasks(target, std::min({limit - target->second.in_flight.size(), share, pending()}));
    }
}

void Dispatcher::send_tasks(std::map<std::string, WorkerState>::iterator target, std::size_t count) {
    WorkerState& worker = target->second;
    const auto now = Clock::now();
    if (worker.in_flight.empty()) worker.running_since = now;
    while (count > 0) {
        const std::size_t size = std::min(count, proto::kMaxBatch);
        batch_.tasks.resize(size);
        for (proto::Task& task : batch_.tasks) {
            Attempt attempt = next_pending();
            attempt.sent = now;
            worker.in_flight.push_back(attempt);
            proto::to_message(plan_.tasks[attempt.index], attempt.number, task);
        }
        if (size == 1)
            proto::encode_to(frame_, batch_.tasks.front());
        else
            proto::encode_to(frame_, batch_);
        count -= size;
        if (!send(target->first, frame_))
            return lose_worker(target->first, fmt::format("worker {} disconnected", worker.name));
    }
}

void Dispatcher::lose_worker(const std::string& identity, const std::string& reason) {
    const auto worker = workers_.find(identity);
    if (worker == workers_.end()) return;
    // Before the erase, which may free `identity`. A remote worker that still hears us (a stopped
    // or overloaded one) stops instead of finishing work that now goes to another worker.
    if (worker->second.remote) send(identity, proto::encode(proto::Shutdown{}));
    WorkerState lost = std::move(worker->second);
    workers_.erase(worker);
    spdlog::warn("{}; requeueing its {} task(s)", reason, lost.in_flight.size());
    recorder_.note({.kind = RunEvent::Kind::WorkerExited, .worker = lost.name, .detail = reason});
    for (auto attempt = lost.in_flight.rbegin(); attempt != lost.in_flight.rend(); ++attempt)
        retry_or_fail(*attempt, lost.name, reason);
    if (lost.remote) return;  // not ours: nothing to kill, nothing to replace
    int cpu = -1;
    if (const auto spawned = spawned_.find(lost.pid); spawned != spawned_.end()) {
        cpu = spawned->second.cpu;
        spawned_.erase(spawned);
        pool_.kill(lost.pid);
    }
    replace(lost.name, cpu);
}

void Dispatcher::lose_unconnected(pid_t pid, const std::string& reason) {
    const auto spawned = spawned_.find(pid);
    if (spawned == spawned_.end()) return;
    const Spawned lost = spawned->second;
    spawned_.erase(spawned);
    recorder_.note({.kind = RunEvent::Kind::WorkerExited, .worker = lost.name, .detail = reason});
    if (!all_hello_) throw RunError(fmt::format("{} before saying hello", reason));
    spdlog::warn("{}", reason);
    replace(lost.name, lost.cpu);
}

void Dispatcher::replace(const std::string& name, int cpu) {
    if (finished_ >= plan_.tasks.size() || stop_.stop_requested()) return;
    if (respawns_ >= options_.max_respawns) {
        spdlog::error("not replacing worker {}: all {} replacements allowed by --max-respawns are used up", name,
                      options_.max_respawns);
        return;
    }
    ++respawns_;
    spawn(name, cpu);
}

void Dispatcher::retry_or_fail(Attempt attempt, const std::string& worker, const std::string& reason) {
    const TaskSpec& task = plan_.tasks[attempt.index];
    if (attempt.number < options_.max_attempts) {
        retries_.push_front({attempt.index, attempt.number + 1});
        recorder_.note({.kind = RunEvent::Kind::Requeued,
                        .worker = worker,
                        .detail = reason,
                        .task = task.id,
                        .task_type = task.type,
                        .attempt = attempt.number,
                        .started_s = recorder_.seconds_at(attempt.sent)});
        return;
    }
    TaskResult result;
    result.id = plan_.tasks[attempt.index].id;
    result.type = plan_.tasks[attempt.index].type;
    result.attempt = attempt.number;
    result.worker = worker;
    result.error = fmt::format("gave up after {} attempts: {}", attempt.number, reason);
    result.run_time = Clock::now() - attempt.sent;  // as far as we know: from handing it out to the loss
    ++finished_;
    recorder_.record(plan_.tasks[attempt.index], std::move(result));
}

void Dispatcher::fail_pending(const std::string& reason) {
    while (pending() > 0) {
        const Attempt attempt = next_pending();
        TaskResult result;
        result.id = plan_.tasks[attempt.index].id;
        result.type = plan_.tasks[attempt.index].type;
        result.attempt = attempt.number;
        result.error = reason;
        ++finished_;
        recorder_.record(plan_.tasks[attempt.index], std::move(result));
    }
}

bool Dispatcher::send(const std::string& identity, std::string_view frame) {
    return wire::send_to(router_, identity, frame);
}

std::string Dispatcher::identity_of(pid_t pid) const {
    for (const auto& [identity, worker] : workers_)
        if (worker.pid == pid && !worker.remote) return identity;
    return {};
}

}  // namespace taskfarm
