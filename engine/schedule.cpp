#include "schedule.hpp"

#include <algorithm>
#include <limits>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "text.hpp"
#include "command_groups.hpp"
#include "control.hpp"
#include "errors.hpp"
#include "runner.hpp"

namespace taskfarm {
namespace {

// How long past a task's timeout, and past the grace the worker gives the task to stop
// (DispatchOptions::stop_grace), the coordinator waits for the worker's own "timed out"
// result before it kills the worker: the executor stops itself at the deadline, so only a
// stuck or stopped worker needs this.
constexpr auto kOverrunGrace = std::chrono::seconds(1);
// Weight of the newest task time in the moving average that sizes --prefetch auto.
constexpr double kEstimateWeight = 0.2;

double seconds(std::chrono::steady_clock::duration d) { return std::chrono::duration<double>(d).count(); }

std::string mib(std::uint64_t bytes) {
    if (bytes < (1 << 20)) return fmt::format("{:.1f} KiB", static_cast<double>(bytes) / 1024);
    return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20));
}
// A remote worker's start, with its host: the live view shows where each worker runs.
std::string remote_detail(const std::string& host) { return fmt::format("remote on {}, attached", host); }

}  // namespace

std::size_t encoded_task_bytes(const TaskSpec& task, std::uint32_t attempt) {
    thread_local proto::Task message;
    thread_local std::string frame;
    proto::to_message(task, attempt, message);
    proto::encode_to(frame, message);
    return frame.size();
}

Schedule::Schedule(const Plan& plan, DispatchOptions options, ScheduleActions& actions, Clock::time_point now,
                   std::stop_token stop, TaskBytes task_bytes, std::size_t max_batch_bytes)
    : plan_(plan),
      options_(std::move(options)),
      actions_(actions),
      stop_(std::move(stop)),
      task_bytes_(std::move(task_bytes)),
      max_batch_bytes_(max_batch_bytes),
      cursor_(plan.open_packed()),  // params packed where they can be: they go out as msgpack (decision 316)
      to_spawn_(options_.workers),
      all_hello_(options_.workers <= 0),
      // Without remote workers to wait for, work starts at the first hello.
      dispatching_(options_.expect_remote == 0),
      began_(now),
      next_heartbeat_(now + options_.heartbeat_interval),
      next_watch_(now + kWatchInterval) {}

Schedule::Clock::time_point Schedule::next_deadline() const {
    // Spawning is most of the start-up: one worker per tick, and between two spawns whoever
    // is up says hello, gets work and hears heartbeats, however many are still to come.
    // With spawn_on_demand, only while a task waits for a worker.
    if (spawns_now()) return began_;  // passed: tick at once
    return std::min(next_heartbeat_, next_watch_);
}

bool Schedule::done() const {
    if (draining_) return held_ == 0;  // asked at every pass of the loop: a count, not a walk of the workers
    // A short plan may be done before the last worker is up; the run still waits for its
    // hello (its placement goes in the report, and one that cannot start is an error).
    return all_finished() && all_hello_;
}

void Schedule::shutdown_workers() {
    for (const auto& [peer, worker] : workers_) actions_.send_shutdown(peer);
}

void Schedule::end_commands() {
    for (auto& [peer, worker] : workers_) {
        kill_groups(worker);
        worker.groups.clear();
    }
}

void Schedule::kill_groups(const Worker& worker) {
    for (const pid_t group : worker.groups) {
        spdlog::debug("ending process group {} of a command of worker {}", group, worker.name);
        actions_.kill_group(group);
    }
}

std::optional<std::string> Schedule::name_of(const PeerId& peer) const {
    const auto worker = workers_.find(peer);
    if (worker == workers_.end()) return std::nullopt;
    return worker->second.name;
}

void Schedule::spawn_next(Clock::time_point now) {
    const int i = options_.workers - to_spawn_--;
    spawn(fmt::format("w{}", i + 1),
          options_.cpus.empty() ? -1 : options_.cpus[static_cast<std::size_t>(i) % options_.cpus.size()], now);
    if (options_.spawn_on_demand)
        all_hello_ = false;  // until this one says hello
    else if (to_spawn_ == 0 && !all_hello_)
        all_hello_ = every_spawned_said_hello();
}

bool Schedule::spawns_now() const {
    // None while draining or stopping: nothing more is handed out, so a worker would only start
    // and be shut down (a SIGTERM during the start-up spawned the rest of the workers anyway).
    if (to_spawn_ <= 0 || draining_ || stop_.stop_requested()) return false;
    if (!options_.spawn_on_demand) return true;
    // O(1): asked twice per pass of the dispatcher's loop (next_deadline() and tick()), with up
    // to 1,024 workers (`parallel -j 0`). One at a time: while one is starting, it takes the next
    // task. unplaced_ is what the last dispatch() found; a result or a hello since then may have
    // made room, which only makes the loop tick at once, where dispatch() looks again.
    return dispatching_ && starting_ == 0 && unplaced_;
}

void Schedule::forget_spawned(std::map<pid_t, Spawned>::iterator spawned) {
    if (!spawned->second.said_hello) --starting_;
    spawned_.erase(spawned);
}

void Schedule::tick(Clock::time_point now) {
    if (!options_.spawn_on_demand && spawns_now()) spawn_next(now);
    // Checked on a timer, not at every event: at 100,000s of results a second, walking
    // every worker each time would cost more than the results.
    if (now >= next_watch_) {
        watch_start(now);
        watch_liveness(now);
        watch_remote(now);
        watch_overruns(now);
        watch_retired(now);
        next_watch_ = now + kWatchInterval;
    }
    if (now >= next_heartbeat_) send_heartbeats(now);
    dispatch(now);
    if (options_.spawn_on_demand && spawns_now()) spawn_next(now);
}

void Schedule::spawn(const std::string& name, int cpu, Clock::time_point now) {
    const pid_t pid = actions_.spawn(name, cpu);
    if (const auto reused = spawned_.find(pid); reused != spawned_.end()) forget_spawned(reused);
    spawned_.emplace(pid, Spawned{name, cpu, now});
    ++starting_;
    actions_.note({.kind = RunEvent::Kind::WorkerStarted, .worker = name, .detail = fmt::format("pid {}", pid)});
}

void Schedule::frame(const PeerId& peer, Clock::time_point now) {
    if (const auto worker = workers_.find(peer); worker != workers_.end()) worker->second.last_seen = now;
}

void Schedule::hello(const PeerId& peer, const proto::Hello& hello, const std::optional<RemotePeer>& remote,
                     Clock::time_point now) {
    if (workers_.contains(peer)) {
        spdlog::debug("ignored a second hello from worker {}", workers_.at(peer).name);
        return;
    }
    const pid_t pid = static_cast<pid_t>(hello.pid);
    // Recycled at this size, a worker would never run a task: the limit cannot work.
    if (options_.max_worker_memory > 0 && hello.rss > options_.max_worker_memory)
        throw ConfigError(
            fmt::format("--max-worker-memory {}: worker {} (pid {}) uses {} as it starts, before any "
                        "task; give a larger size",
                        mib(options_.max_worker_memory), hello.name, hello.pid, mib(hello.rss)));
    // A remote pid means nothing here: it may even equal the pid of a local worker of ours.
    if (remote) {
        for (const auto& [other, worker] : workers_)
            if (worker.name == hello.name)
                spdlog::warn("two workers are called {}: their results cannot be told apart (give each --name)",
                             hello.name);
        spdlog::info(
            "remote worker {} (pid {} on {}) attached from {} with {}{}", hello.name, hello.pid, hello.host,
            remote->address.empty() ? "an unknown address" : remote->address, remote->user,
            dispatching_ ? "" : fmt::format(" ({} of {} expected)", remote_workers() + 1, options_.expect_remote));
    } else if (auto spawned = spawned_.find(pid); spawned != spawned_.end()) {
        if (!std::exchange(spawned->second.said_hello, true)) --starting_;
        if (spawned->second.cpu >= 0 && spawned->second.cpu != hello.cpu)
            spdlog::warn("worker {} (pid {}) was to run on cpu {} only, but reports {}", hello.name, hello.pid,
                         spawned->second.cpu, hello.cpu >= 0 ? fmt::format("cpu {}", hello.cpu) : "several CPUs");
    } else {
        spdlog::info("worker {} (pid {} on {}) attached", hello.name, hello.pid, hello.host);
    }
    Worker& worker = workers_[peer];
    worker.name = hello.name;
    worker.pid = pid;
    worker.cpu = hello.cpu;
    worker.last_seen = now;
    worker.remote = remote.has_value();
    worker.host = printable(hello.host, 255);
    worker.rss = hello.rss;
    actions_.place({hello.name, hello.cpu, hello.pid}, static_cast<int>(workers_.size()));
    if (remote && dispatching_)
        actions_.note(
            {.kind = RunEvent::Kind::WorkerStarted, .worker = hello.name, .detail = remote_detail(worker.host)});
    spdlog::debug("worker {} (pid {}, cpu {}) said hello", hello.name, hello.pid, hello.cpu);
    some_hello_ = true;
    if (!all_hello_ && (to_spawn_ == 0 || options_.spawn_on_demand)) all_hello_ = every_spawned_said_hello();
    if (!dispatching_ && remote_workers() >= static_cast<std::size_t>(options_.expect_remote)) start_dispatching(now);
}

void Schedule::start_dispatching(Clock::time_point now) {
    dispatching_ = true;
    if (options_.expect_remote > 0) {
        spdlog::info("{} remote worker(s) attached after {:.1f} s; handing out tasks", remote_workers(),
                     seconds(now - began_));
        // Waiting for a person or a scheduler to start remote workers is no cost of the process model.
        actions_.restart_clock();
    }
    for (const auto& [peer, worker] : workers_)
        if (worker.remote)
            actions_.note(
                {.kind = RunEvent::Kind::WorkerStarted, .worker = worker.name, .detail = remote_detail(worker.host)});
}

void Schedule::result(const PeerId& peer, const proto::Result& message, Clock::time_point now) {
    result(peer, proto::Result(message), now);
}

void Schedule::result(const PeerId& peer, proto::Result&& message, Clock::time_point now) {
    const auto found = workers_.find(peer);
    if (found == workers_.end()) {
        spdlog::debug("ignored result of task {} from a worker no longer in the run", message.id);
        return;
    }
    Worker& worker = found->second;
    // Results come back in the order the tasks were sent, so this is almost always the first.
    const auto attempt = std::find_if(worker.in_flight.begin(), worker.in_flight.end(), [&](const Attempt& a) {
        return a.index == message.id && a.number == message.attempt;
    });
    if (attempt == worker.in_flight.end()) {
        spdlog::debug("ignored duplicate or stale result of task {} attempt {}", message.id, message.attempt);
        return;
    }
    const Attempt done = *attempt;
    const bool was_running = attempt == worker.in_flight.begin();
    if (was_running)
        worker.in_flight.pop_front();  // a tenth of deque::erase's instructions
    else
        worker.in_flight.erase(attempt);
    --held_;
    release(done.index);
    worker.running_since = now;  // the next one, if any, starts now
    if (was_running && !worker.in_flight.empty()) front_started(worker, now);
    worker.delivered = true;
    ++worker.ran;
    if (message.rss > 0) worker.rss = message.rss;
    run_s_estimate_ =
        run_s_estimate_ < 0 ? message.run_s : (1 - kEstimateWeight) * run_s_estimate_ + kEstimateWeight * message.run_s;
    const TaskSpec& task = live_.at(done.index);
    // Made once and moved on once (a lambda taking and giving it by value moved it twice more).
    TaskResult made = proto::to_result(std::move(message), worker.name, task.type);
    if (made.cost.scope != TaskCost::Scope::None) made.cost.host = worker.host;
    if (cancelled_.contains(done.index) && !made.ok) {
        failed_.insert(done.index);
        ++finished_;
        actions_.record(task, cancelled(std::move(made)));
        retire(done.index);
    } else if (!made.ok && !draining_ && done.number <= engine_retries(task.type, options_.retries)) {
        // --retries: a failure runs again, on whichever worker is free first; not while
        // draining, which starts nothing.
        retries_.push_front({done.index, done.number + 1});
        actions_.record_retry(task, std::move(made));
    } else {
        if (!made.ok) failed_.insert(done.index);
        ++finished_;
        actions_.record(task, std::move(made));
        retire(done.index);
    }
    check_recycle(found, now);
}

void Schedule::heartbeat(const PeerId& peer, const proto::Heartbeat& message, Clock::time_point now) {
    const auto found = workers_.find(peer);
    if (found == workers_.end()) return;
    if (message.rss > 0) found->second.rss = message.rss;
    // Only a worker of ours reports groups of this machine that are ours to end. Never 0 or
    // 1: kill(0) and kill(-1) mean other things.
    if (!found->second.remote && spawned_.contains(found->second.pid)) {
        std::vector<pid_t>& groups = found->second.groups;
        groups.clear();
        for (const std::int64_t group : message.groups)
            if (group > 1 && group <= std::numeric_limits<pid_t>::max() && groups.size() < command_groups::kMaxReported)
                groups.push_back(static_cast<pid_t>(group));
    }
    check_recycle(found, now);
}

void Schedule::check_recycle(std::map<PeerId, Worker>::iterator found, Clock::time_point now) {
    Worker& worker = found->second;
    // Only a worker of ours is ours to replace; and one that has run nothing is never
    // recycled, so a worker that starts near the limit still gets through a task each time.
    if (worker.remote || worker.ran == 0 || !spawned_.contains(worker.pid)) return;
    if (worker.retiring.empty()) {
        if (options_.max_tasks_per_worker > 0 && worker.ran >= options_.max_tasks_per_worker)
            worker.retiring =
                fmt::format("it ran {} tasks (--max-tasks-per-worker {})", worker.ran, options_.max_tasks_per_worker);
        else if (options_.max_worker_memory > 0 && worker.rss > options_.max_worker_memory)
            worker.retiring = fmt::format("it uses {} of memory, over --max-worker-memory {}", mib(worker.rss),
                                          mib(options_.max_worker_memory));
        else
            return;
    }
    // It finishes what it holds first; and at the end of the run there is nothing to replace it for.
    if (!worker.in_flight.empty() || all_finished() || draining_) return;
    const auto spawned = spawned_.find(worker.pid);
    spdlog::info("recycling worker {} (pid {}): {}", worker.name, worker.pid, worker.retiring);
    retired_[worker.pid] = Retired{worker.name, spawned->second.cpu, now};
    forget_spawned(spawned);
    actions_.send_shutdown(found->first);
    actions_.recycled(worker.name, worker.retiring);
    workers_.erase(found);
}

void Schedule::watch_retired(Clock::time_point now) {
    // SHUTDOWN ends a worker within milliseconds; one that is still there after a heartbeat
    // timeout is stuck, and killed.
    std::vector<pid_t> stuck;
    for (const auto& [pid, retired] : retired_)
        if (now - retired.since > options_.heartbeat_timeout) stuck.push_back(pid);
    for (pid_t pid : stuck) {
        const Retired retired = retired_.at(pid);
        retired_.erase(pid);
        spdlog::warn("worker {} (pid {}) did not exit within {:.1f} s of its shutdown for recycling; killing it",
                     retired.name, pid, seconds(options_.heartbeat_timeout));
        actions_.kill(pid);
        replace(retired.name, retired.cpu, now, /*counted=*/false);
    }
}

Schedule::Cancelled Schedule::cancel(TaskId id, Clock::time_point now) {
    const std::size_t index = id;
    if (plan_.count && id >= *plan_.count) {
        spdlog::warn("cannot cancel task {}: this run's plan has {} tasks", id, *plan_.count);
        return {false, fmt::format("not in this run's plan ({} tasks): nothing cancelled", *plan_.count)};
    }
    if (cancelled_.contains(index)) return {true, "cancelled already"};
    for (auto& [peer, worker] : workers_) {
        const auto held = std::find_if(worker.in_flight.begin(), worker.in_flight.end(),
                                       [index](const Attempt& a) { return a.index == index; });
        if (held == worker.in_flight.end()) continue;
        cancelled_.insert(index);
        actions_.send_cancel(peer, std::span<const Attempt>(&*held, 1));
        return {true, fmt::format("held by worker {}: it stops it, and it is recorded as cancelled (unless it "
                                  "finished ok first)",
                                  worker.name)};
    }
    const auto queued =
        std::find_if(retries_.begin(), retries_.end(), [index](const Attempt& a) { return a.index == index; });
    if (queued != retries_.end()) {
        const Attempt attempt = *queued;
        retries_.erase(queued);
        cancelled_.insert(index);
        record_cancelled(attempt, {}, Clock::duration::zero());
        return {true, "queued: recorded as cancelled"};
    }
    // Not handed out yet, or done already: the plan is made as it goes (decision 96), so a task
    // not yet made is recorded as cancelled when its turn comes; one that is done never comes.
    (void)now;
    cancelled_.insert(index);
    spdlog::info("task {} is cancelled when its turn comes, unless it has its result already", id);
    return {true, "not handed out: recorded as cancelled when its turn comes, unless it has its result already"};
}

void Schedule::record_cancelled(const Attempt& attempt, const std::string& worker, Clock::duration ran) {
    fail(attempt, worker, kCancelledError, ran, /*cancelled=*/true);
}

void Schedule::drain(Clock::time_point) {
    if (draining_) return;
    draining_ = true;
    // A plan read as the run goes (standard input, a Farm's submits) has no count: its number
    // of tasks not handed out is not known, and kUnknownFresh is no count to print.
    const std::size_t waiting = pending();
    if (!counted(waiting))
        spdlog::info("draining: {} task(s) held by workers finish; those not handed out stay for --resume", held_);
    else
        spdlog::info("draining: {} task(s) held by workers finish; {} not handed out stay for --resume", held_,
                     waiting);
}

void Schedule::returned(const PeerId& peer, const proto::Returned& message, Clock::time_point) {
    const auto worker = workers_.find(peer);
    if (worker == workers_.end()) return;
    // Queued behind a task that is taking long: they go to the front of the queue as they
    // were (same attempt: they never ran), and the estimate learns that tasks can be this
    // slow, so no worker is given a queue of them again.
    auto& in_flight = worker->second.in_flight;
    std::vector<Attempt> back;
    for (const proto::TaskRef& ref : message.tasks) {
        const auto attempt = std::find_if(in_flight.begin(), in_flight.end(), [&](const Attempt& a) {
            return a.index == ref.id && a.number == ref.attempt;
        });
        if (attempt == in_flight.end()) continue;  // stale: not one it holds
        const Attempt given = *attempt;
        in_flight.erase(attempt);
        --held_;
        release(given.index);
        if (cancelled_.contains(given.index)) {  // never ran: its cancel is the result
            record_cancelled(given, worker->second.name, Clock::duration::zero());
            continue;
        }
        back.push_back({given.index, given.number});
    }
    for (auto attempt = back.rbegin(); attempt != back.rend(); ++attempt) retries_.push_front(*attempt);
    run_s_estimate_ = std::max(run_s_estimate_, message.busy_s);
    spdlog::debug("worker {} gave back {} task(s) queued behind one running for {:.3f} s", worker->second.name,
                  back.size(), message.busy_s);
}

void Schedule::exited(pid_t pid, const std::string& reason, Clock::time_point now) {
    if (const auto retired = retired_.find(pid); retired != retired_.end()) {
        const Retired done = retired->second;
        retired_.erase(retired);
        spdlog::debug("recycled worker {} (pid {}) exited", done.name, pid);
        return replace(done.name, done.cpu, now, /*counted=*/false);
    }
    for (const auto& [peer, worker] : workers_)
        if (worker.pid == pid && !worker.remote) return lose_worker(peer, reason, now);
    lose_unconnected(pid, reason, now);
}

void Schedule::watch_start(Clock::time_point now) {
    std::vector<std::pair<pid_t, std::string>> late;
    for (const auto& [pid, spawned] : spawned_)
        if (!spawned.said_hello && now - spawned.started > options_.start_timeout) late.emplace_back(pid, spawned.name);
    for (const auto& [pid, name] : late) {
        actions_.kill(pid);
        lose_unconnected(pid,
                         fmt::format("worker {} (pid {}) did not say hello within {:.1f} s", name, pid,
                                     seconds(options_.start_timeout)),
                         now);
    }
}

void Schedule::watch_liveness(Clock::time_point now) {
    std::vector<std::pair<PeerId, std::string>> silent;
    for (const auto& [peer, worker] : workers_)
        if (now - worker.last_seen > options_.heartbeat_timeout)
            silent.emplace_back(
                peer, fmt::format("worker {} silent for {:.1f} s", worker.name, seconds(now - worker.last_seen)));
    for (const auto& [peer, reason] : silent) lose_worker(peer, reason, now);
}

void Schedule::watch_overruns(Clock::time_point now) {
    std::vector<PeerId> overran;
    for (const auto& [peer, worker] : workers_) {
        if (worker.in_flight.empty()) continue;
        const double timeout_s = task(worker.in_flight.front().index).timeout_s;
        if (timeout_s <= 0) continue;
        const auto limit = std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(timeout_s));
        if (now - worker.running_since > limit + options_.stop_grace + kOverrunGrace) overran.push_back(peer);
    }
    for (const PeerId& peer : overran) {
        // The task fails as a timeout (not retried: it would most likely overrun again);
        // the worker is killed and replaced, and its other tasks go back to the queue as they
        // were: they never started.
        Worker& worker = workers_.at(peer);
        const Attempt attempt = worker.in_flight.front();
        worker.in_flight.pop_front();
        --held_;
        release(attempt.index);
        const double timeout_s = task(attempt.index).timeout_s;
        fail(attempt, worker.name,
             fmt::format("timed out after {:g} s: worker {} did not stop it, so it was {}", timeout_s, worker.name,
                         worker.remote ? "told to shut down" : "killed"),
             now - worker.running_since);
        lose_worker(peer, fmt::format("worker {} overran the timeout of task {}", worker.name, attempt.index), now,
                    /*running_done=*/true);
    }
}

void Schedule::watch_remote(Clock::time_point now) {
    if (!options_.listening || draining_) return;  // a drain runs nothing more: nothing fails as "not run"
    const double wait_s = seconds(options_.wait_remote);
    if (!dispatching_) {
        if (now - began_ > options_.wait_remote && remote_workers() < static_cast<std::size_t>(options_.expect_remote))
            throw RunError(
                fmt::format("only {} of the {} remote worker(s) of --expect-workers attached within {:.1f} s "
                            "(--wait-workers); the log above names any that were refused",
                            remote_workers(), options_.expect_remote, wait_s));
        return;
    }
    if (pending() == 0 || !workers_.empty() || !spawned_.empty() || !retired_.empty() || to_spawn_ > 0) {
        alone_since_ = {};
        return;
    }
    if (no_more_workers_) return fail_pending(fmt::format("not run: {}", *no_more_workers_));
    if (options_.workers_on_demand) return;
    if (alone_since_ == Clock::time_point{}) {
        alone_since_ = now;
        spdlog::warn("no worker is left; waiting up to {:.1f} s (--wait-workers) for a remote worker to attach",
                     wait_s);
    } else if (now - alone_since_ > options_.wait_remote) {
        fail_pending(
            fmt::format("not run: no worker was left and none attached within {:.1f} s (--wait-workers)", wait_s));
    }
}

void Schedule::no_more_workers(const std::string& reason) {
    if (!dispatching_) throw RunError(reason);
    no_more_workers_ = reason;
}

Schedule::RemoteLoad Schedule::remote_load() const {
    RemoteLoad load;
    if (!draining_ && dispatching_ && !stop_.stop_requested()) load.waiting = pending();
    load.counted = counted(load.waiting);
    for (const auto& [peer, worker] : workers_)
        if (worker.remote) load.workers.emplace_back(worker.name, worker.in_flight.size());
    return load;
}

std::size_t Schedule::remote_workers() const {
    return static_cast<std::size_t>(
        std::count_if(workers_.begin(), workers_.end(), [](const auto& w) { return w.second.remote; }));
}

void Schedule::send_heartbeats(Clock::time_point now) {
    std::vector<PeerId> gone;
    for (const auto& [peer, worker] : workers_)
        if (!actions_.send_heartbeat(peer)) gone.push_back(peer);
    for (const PeerId& peer : gone)
        lose_worker(peer, fmt::format("worker {} disconnected", workers_.at(peer).name), now);
    next_heartbeat_ = now + options_.heartbeat_interval;
}

std::size_t Schedule::window() const {
    const std::size_t most = options_.prefetch > 0 ? static_cast<std::size_t>(options_.prefetch) : kMaxWindow;
    if (run_s_estimate_ < 0) return 1;  // nothing known yet: as if every task were long
    const double budget_s = std::chrono::duration<double>(options_.queue_budget).count();
    if (run_s_estimate_ * static_cast<double>(most) <= budget_s) return most;
    return std::clamp(static_cast<std::size_t>(budget_s / run_s_estimate_), std::size_t{1}, most);
}

std::size_t Schedule::limit(const Worker& worker) const {
    // A worker earns its window with its first result: a peer that says hello and then
    // holds its tasks without running them holds one, not a window's worth, until the
    // heartbeat timeout finds it out.
    if (!worker.retiring.empty()) return 0;
    const std::size_t most = worker.delivered ? window() : 1;
    if (options_.max_tasks_per_worker == 0) return most;
    // No more than it may run before it is recycled.
    const std::uint64_t left = options_.max_tasks_per_worker - std::min(options_.max_tasks_per_worker, worker.ran);
    return std::min<std::uint64_t>(most, left);
}

bool Schedule::has_fresh() const {
    if (peeked_) return true;
    if (cursor_ended_) return false;
    try {
        // Never waits for a slow producer (standard input, a FIFO): its next line is taken
        // when it comes (plan_ready_fd()), and meanwhile the loop heartbeats and receives.
        // Into the node of a task retired before when there is one (retire()): no allocation
        // per task for the table.
        TaskCursor::Take took;
        if (spare_.empty()) {
            TaskSpec task;
            took = cursor_->take(task);
            if (took == TaskCursor::Take::Task) {
                peeked_ = task.id;
                live_.emplace(task.id, std::move(task));
            }
        } else {
            LiveTable::node_type& node = spare_.back();
            took = cursor_->take(node.mapped());
            if (took == TaskCursor::Take::Task) {
                peeked_ = node.key() = node.mapped().id;
                live_.insert(std::move(node));
                spare_.pop_back();
            } else {
                node.mapped() = TaskSpec();  // as a spare is kept: empty
            }
        }
        cursor_waiting_ = took == TaskCursor::Take::Later;
        if (took == TaskCursor::Take::Later) return false;
        if (took == TaskCursor::Take::Task) return true;
    } catch (const std::exception& e) {
        // A bad line of standard input: the tasks before it run, none after it.
        plan_error_ = e.what();
    }
    cursor_ended_ = true;
    cursor_waiting_ = false;
    cursor_.reset();
    return false;
}

void Schedule::retire(std::size_t index) {
    auto node = live_.extract(index);
    if (node.empty() || spare_.size() >= kSpareNodes) return;
    node.mapped() = TaskSpec();  // its params and strings freed now, as an erase would
    spare_.push_back(std::move(node));
}

int Schedule::plan_ready_fd() const {
    // Only while a line is awaited and would be handed out: else the loop need not wake for it.
    if (!cursor_waiting_ || !cursor_ || !dispatching_ || draining_) return -1;
    return cursor_->ready_fd();
}

std::size_t Schedule::pending() const {
    if (!has_fresh()) return retries_.size();
    const auto count = plan_.count;
    return retries_.size() + (count && *count > taken_ ? static_cast<std::size_t>(*count - taken_) : kUnknownFresh);
}

bool Schedule::all_finished() const { return !has_fresh() && !cursor_waiting_ && live_.empty(); }

Attempt& Schedule::peek_pending() {
    if (!retries_.empty()) return retries_.front();
    has_fresh();
    next_fresh_ = {*peeked_, 1};
    return next_fresh_;
}

void Schedule::pop_pending() {
    if (!retries_.empty()) {
        retries_.pop_front();
    } else {
        peeked_.reset();
        ++taken_;
    }
}

void Schedule::dispatch(Clock::time_point now) {
    // Work starts at the first hello: a worker holds one task until results show that tasks
    // are short, so an early worker cannot take work that later ones should have had.
    unplaced_ = false;
    if (!dispatching_ || draining_) return;
    has_fresh();  // a line awaited from a slow producer may have come (plan_ready_fd())
    if (workers_.empty()) {
        if (pending() > 0 && spawned_.empty() && retired_.empty() && to_spawn_ == 0 && !options_.listening)
            fail_pending(fmt::format("not run: every worker died and --max-respawns {} replacements are used up",
                                     options_.max_respawns));
        unplaced_ = pending() > 0;
        return;
    }
    // Shallowest queue first, and a fair share each, so a short plan spreads over every
    // worker before any worker queues more.
    while (pending() > 0) {
        if (asking_head_) {
            if (!send_asking(now)) break;
            continue;
        }
        auto target = workers_.end();
        std::size_t open = 0;
        for (auto it = workers_.begin(); it != workers_.end(); ++it) {
            if (it->second.in_flight.size() >= limit(it->second)) continue;
            ++open;
            if (target == workers_.end() || it->second.in_flight.size() < target->second.in_flight.size()) target = it;
        }
        if (target == workers_.end()) {
            // Every worker holds its limit: a new one could take the next task, unless it waits for
            // an earlier task or for resources that others hold (a worker brings neither).
            const Head head = judge_head();
            if (head == Head::Failed) continue;
            unplaced_ = head == Head::Goes;
            break;
        }
        const std::size_t share = std::max<std::size_t>(1, (pending() + open - 1) / open);
        send_tasks(target, std::min({limit(target->second) - target->second.in_flight.size(), share, pending()}), now);
    }
}

void Schedule::send_tasks(std::map<PeerId, Worker>::iterator target, std::size_t count, Clock::time_point now) {
    Worker& worker = target->second;
    bool idle = worker.in_flight.empty();
    if (idle) worker.running_since = now;
    while (count > 0 && pending() > 0) {
        // A frame holds at most kMaxBatch tasks and max_batch_bytes_ of them, encoded; a task
        // too large for a frame of its own fails here, naming itself, instead of reaching a
        // worker that would drop the connection over it.
        batch_.clear();
        std::size_t bytes = 0;
        while (batch_.size() < std::min(count, proto::kMaxBatch) && pending() > 0) {
            Attempt attempt = peek_pending();
            if (skipped(attempt)) {  // cancelled before it was made: its cancel is its result
                pop_pending();
                record_cancelled(attempt, {}, Clock::duration::zero());
                continue;
            }
            const TaskSpec& task = this->task(attempt.index);
            if (!task.after.empty()) {
                bool waits = false;
                if (const auto dependency = unmet_dependency(task, waits); dependency && !waits) {
                    fail_head(attempt, fmt::format("dependency {} failed", *dependency));
                    continue;
                } else if (dependency) {  // it starts once its dependencies have ended ok
                    asking_head_ = true;
                    break;
                }
            }
            if (!task.resources.empty()) {
                // It starts as soon as it arrives, and holds what it asks for from now: alone,
                // to a local worker that holds nothing (the pool is the local workers').
                if (!batch_.empty() || !worker.in_flight.empty() || worker.remote) {
                    asking_head_ = true;
                    break;
                }
                std::string why;
                const Take took = take_resources(attempt.index, why);
                if (took == Take::Busy) {
                    asking_head_ = true;
                    break;
                }
                if (took == Take::Never) {
                    fail_head(attempt, "not run: " + why);
                    continue;
                }
            }
            const std::size_t size = task_bytes_(task, attempt.number);
            if (size > max_batch_bytes_) {
                release(attempt.index);
                fail_head(attempt, fmt::format("not sent: task {} takes {} bytes encoded, more than the {} bytes a "
                                               "message to a worker may hold",
                                               task.id, size, max_batch_bytes_));
                continue;
            }
            if (!batch_.empty() && bytes + size > max_batch_bytes_) break;
            pop_pending();
            attempt.sent = now;
            batch_.push_back(attempt);
            bytes += size;
        }
        if (batch_.empty()) return;
        count -= batch_.size();
        worker.in_flight.insert(worker.in_flight.end(), batch_.begin(), batch_.end());
        held_ += batch_.size();
        if (std::exchange(idle, false)) front_started(worker, now);
        if (!actions_.send_tasks(target->first, batch_))
            return lose_worker(target->first, fmt::format("worker {} disconnected", worker.name), now);
    }
}

Schedule::Head Schedule::judge_head() {
    const Attempt next = peek_pending();   // a copy: fail_head() pops it
    if (skipped(next)) return Head::Goes;  // its cancel is recorded when it comes up
    const TaskSpec& task = this->task(next.index);
    if (!task.after.empty()) {
        bool waits = false;
        const auto dependency = unmet_dependency(task, waits);
        if (dependency && waits) return Head::Waits;
        if (dependency) {
            fail_head(next, fmt::format("dependency {} failed", *dependency));
            return Head::Failed;
        }
    }
    if (task.resources.empty()) return Head::Goes;
    std::string why;
    switch (resources_free(next.index, why)) {
        case Take::Never: fail_head(next, "not run: " + why); return Head::Failed;
        case Take::Busy: return Head::Waits;
        case Take::Taken: break;
    }
    return Head::Goes;
}

bool Schedule::send_asking(Clock::time_point now) {
    asking_head_ = false;
    switch (judge_head()) {
        case Head::Failed: return true;
        case Head::Waits: asking_head_ = true; return false;
        case Head::Goes: break;
    }
    const Attempt& next = peek_pending();
    if (skipped(next) || task(next.index).resources.empty()) return true;  // for the usual way
    for (auto it = workers_.begin(); it != workers_.end(); ++it)
        if (!it->second.remote && it->second.in_flight.empty() && limit(it->second) > 0) {
            send_tasks(it, 1, now);
            return !asking_head_;
        }
    asking_head_ = true;
    unplaced_ = true;  // what it asks for is free and no local worker is idle: a new one could take it
    return false;
}

std::optional<TaskId> Schedule::unmet_dependency(const TaskSpec& task, bool& waits) const {
    std::optional<TaskId> first;
    for (const TaskId dependency : task.after) {
        if (failed_.contains(dependency)) {
            waits = false;
            return dependency;
        }
        if (!first && live_.contains(static_cast<std::size_t>(dependency))) first = dependency;
    }
    waits = first.has_value();
    return first;
}

Schedule::Pool& Schedule::pool() {
    if (!pool_) {
        Pool pool;
        if (options_.resources) {
            pool.total = options_.resources->counts();
            pool.gpus = options_.resources->gpus();
        }
        pool.free = pool.total;
        pool.gpu_free.assign(pool.gpus.size(), true);
        pool_ = std::move(pool);
    }
    return *pool_;
}

Schedule::Take Schedule::resources_free(std::size_t index, std::string& why) {
    const TaskSpec& task = live_.at(index);
    Pool& pool = this->pool();
    const auto gpus_free = static_cast<std::uint64_t>(std::count(pool.gpu_free.begin(), pool.gpu_free.end(), true));
    bool busy = false;
    for (const auto& [name, amount] : task.resources) {
        const bool gpu = name == kGpuResource;
        const ResourceAmount* free = gpu ? nullptr : pool.free_of(name);
        const std::uint64_t total =
            gpu ? pool.gpus.size() : (free ? pool.total[static_cast<std::size_t>(free - pool.free.data())].amount : 0);
        if (amount > total) {
            why = options_.resources ? options_.resources->unmet(task.resources)
                                     : fmt::format("asks for {}={}, but the workers have no resources", name, amount);
            return Take::Never;
        }
        if (amount > (gpu ? gpus_free : free->amount)) busy = true;
    }
    return busy ? Take::Busy : Take::Taken;
}

Schedule::Take Schedule::take_resources(std::size_t index, std::string& why) {
    if (const Take fits = resources_free(index, why); fits != Take::Taken) return fits;
    TaskSpec& task = live_.at(index);
    Pool& pool = *pool_;
    for (const auto& [name, amount] : task.resources) {
        if (name != kGpuResource) {
            pool.free_of(name)->amount -= amount;
            continue;
        }
        std::uint64_t left = amount;
        for (std::size_t i = 0; i < pool.gpus.size() && left > 0; ++i)
            if (pool.gpu_free[i]) {
                pool.gpu_free[i] = false;
                task.gpus += (task.gpus.empty() ? "" : ",") + pool.gpus[i];
                --left;
            }
    }
    holding_.insert(index);
    return Take::Taken;
}

void Schedule::release(std::size_t index) {
    if (holding_.empty() || holding_.erase(index) == 0) return;
    TaskSpec& task = live_.at(index);
    Pool& pool = *pool_;
    for (const auto& [name, amount] : task.resources)
        if (name != kGpuResource) pool.free_of(name)->amount += amount;
    // Its GPUs by id: "3,5" of the pool's list.
    std::string_view held = task.gpus;
    while (!held.empty()) {
        const auto comma = held.find(',');
        const std::string_view id = held.substr(0, comma);
        for (std::size_t i = 0; i < pool.gpus.size(); ++i)
            if (pool.gpus[i] == id) pool.gpu_free[i] = true;
        held = comma == std::string_view::npos ? std::string_view() : held.substr(comma + 1);
    }
    task.gpus.clear();
}

void Schedule::front_started(const Worker& worker, Clock::time_point now) {
    const Attempt& front = worker.in_flight.front();
    actions_.started(worker.name, task(front.index), front.number, now);
}

void Schedule::lose_worker(const PeerId& peer, const std::string& reason, Clock::time_point now, bool running_done) {
    const auto found = workers_.find(peer);
    if (found == workers_.end()) return;
    // A remote worker that still hears us (a stopped or overloaded one) stops instead of
    // finishing work that now goes to another worker.
    if (found->second.remote) actions_.send_shutdown(peer);
    const Worker lost = std::move(found->second);
    workers_.erase(found);
    held_ -= lost.in_flight.size();
    // Its tasks' process groups, which its death may have orphaned (a guardian killed with it):
    // before the worker is reaped, so that a group a task of it still holds has not ended
    // (decision 116).
    kill_groups(lost);
    // Only a process we spawned is ours to kill and replace; a remote worker, or a peer on the
    // local socket that we did not start, only loses its tasks. Killed first: its board is
    // final once it is reaped.
    const auto spawned = lost.remote ? spawned_.end() : spawned_.find(lost.pid);
    const bool ours = spawned != spawned_.end();
    const int cpu = ours ? spawned->second.cpu : -1;
    if (ours) {
        forget_spawned(spawned);
        actions_.kill(lost.pid);
    }
    // Which of its tasks it had started (decision 110): what its board says, the one attempt
    // it was running, or none when it was between tasks. Without a board (a remote worker),
    // the oldest without a result: a worker runs its tasks one at a time in the order sent,
    // so no other can have started. Every other task never ran and goes back as it was.
    std::optional<std::size_t> running;
    if (!running_done && !lost.in_flight.empty()) {
        const LastRunning board = ours ? actions_.last_running(lost.pid) : LastRunning{};
        if (board.known == LastRunning::Known::No) {
            running = 0;
        } else if (board.known == LastRunning::Known::Running) {
            const auto held = std::find_if(lost.in_flight.begin(), lost.in_flight.end(), [&](const Attempt& a) {
                return a.index == board.id && a.number == board.attempt;
            });
            if (held != lost.in_flight.end()) running = static_cast<std::size_t>(held - lost.in_flight.begin());
        }
    }
    if (lost.in_flight.empty())
        spdlog::warn("{}", reason);
    else if (running)
        spdlog::warn("{}; task {} (attempt {}) was running; requeueing its {} task(s)", reason,
                     task(lost.in_flight[*running].index).id, lost.in_flight[*running].number, lost.in_flight.size());
    else
        spdlog::warn("{}; requeueing its {} task(s), none of them started", reason, lost.in_flight.size());
    actions_.note({.kind = RunEvent::Kind::WorkerExited, .worker = lost.name, .detail = reason, .lost = true});
    for (std::size_t i = lost.in_flight.size(); i-- > 0;) {
        release(lost.in_flight[i].index);
        if (running == i)
            retry_or_fail(lost.in_flight[i], lost.name, reason, now);
        else
            requeue(lost.in_flight[i], lost.name);
    }
    if (ours) replace(lost.name, cpu, now);
}

void Schedule::requeue(const Attempt& attempt, const std::string& worker) {
    if (cancelled_.contains(attempt.index)) return record_cancelled(attempt, worker, Clock::duration::zero());
    retries_.push_front({attempt.index, attempt.number});
}

void Schedule::lose_unconnected(pid_t pid, const std::string& reason, Clock::time_point now) {
    const auto spawned = spawned_.find(pid);
    if (spawned == spawned_.end()) return;
    const Spawned lost = spawned->second;
    forget_spawned(spawned);
    actions_.note({.kind = RunEvent::Kind::WorkerExited, .worker = lost.name, .detail = reason, .lost = true});
    // On demand (spawn_on_demand), once a worker of the run said hello, a later one lost before
    // its hello is the machine saying no (out of processes, too loaded to start one in time):
    // the run goes on with the workers it has and starts no more.
    if (options_.spawn_on_demand && some_hello_) {
        spdlog::warn("{}; no more workers are started on demand", reason);
        to_spawn_ = 0;
        all_hello_ = every_spawned_said_hello();
        return;
    }
    // At start-up this is a broken installation, not bad luck.
    if (!all_hello_) throw RunError(fmt::format("{} before saying hello", reason));
    spdlog::warn("{}", reason);
    replace(lost.name, lost.cpu, now);
}

void Schedule::replace(const std::string& name, int cpu, Clock::time_point now, bool counted) {
    if (all_finished() || stop_.stop_requested() || draining_) return;
    if (!counted) return spawn(name, cpu, now);  // recycled: a replacement by design, not for a death
    if (respawns_ >= options_.max_respawns) {
        spdlog::error("not replacing worker {}: all {} replacements allowed by --max-respawns are used up", name,
                      options_.max_respawns);
        return;
    }
    ++respawns_;
    spawn(name, cpu, now);
}

void Schedule::retry_or_fail(const Attempt& attempt, const std::string& worker, const std::string& reason,
                             Clock::time_point now) {
    const TaskSpec& task = this->task(attempt.index);
    if (cancelled_.contains(attempt.index)) return record_cancelled(attempt, worker, now - attempt.sent);
    if (attempt.number < options_.max_attempts) {
        retries_.push_front({attempt.index, attempt.number + 1});
        actions_.note({.kind = RunEvent::Kind::Requeued,
                       .worker = worker,
                       .detail = reason,
                       .task = task.id,
                       .task_type = task.type,
                       .attempt = attempt.number,
                       .started_s = actions_.seconds_at(attempt.sent)});
        return;
    }
    // As far as we know it ran from its hand-out to the loss.
    fail(attempt, worker, fmt::format("gave up after {} attempts: {}", attempt.number, reason), now - attempt.sent);
}

void Schedule::fail(const Attempt& attempt, const std::string& worker, std::string error, Clock::duration ran,
                    bool cancelled) {
    const TaskSpec& task = this->task(attempt.index);
    TaskResult result;
    result.cancelled = cancelled;
    result.id = task.id;
    result.type = task.type;
    result.attempt = attempt.number;
    result.worker = worker;
    result.error = std::move(error);
    result.run_time = ran;
    failed_.insert(attempt.index);
    ++finished_;
    actions_.record(task, std::move(result));
    retire(attempt.index);
}

void Schedule::fail_head(Attempt attempt, std::string error) {
    pop_pending();
    fail(attempt, {}, std::move(error), Clock::duration::zero());
}

void Schedule::fail_pending(const std::string& reason) {
    while (pending() > 0) {
        const Attempt attempt = peek_pending();
        pop_pending();
        if (skipped(attempt)) {  // cancelled before it was made: its cancel is its result
            record_cancelled(attempt, {}, Clock::duration::zero());
            continue;
        }
        fail(attempt, {}, reason, Clock::duration::zero());
    }
}

}  // namespace taskfarm
