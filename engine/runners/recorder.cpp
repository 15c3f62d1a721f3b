#include <signal.h>

#include <algorithm>
#include <set>
#include <utility>

#include "affinity.hpp"
#include "mode_runners.hpp"
#include "runner.hpp"

namespace taskfarm {

ModeRecorder::ModeRecorder(Mode mode, int workers, const Plan& plan, ResultSink& sink) : sink_(sink), plan_(plan) {
    report_.mode = std::string(to_string(mode));
    report_.workers = workers;
    // Standard input read as the run goes: 0 (unknown) until the mode is over.
    report_.tasks = plan.known_count().value_or(0);
    sink_.begin_mode(report_.mode, report_.tasks);
    // Every signal blocked: SIGINT and SIGTERM are for the coordinator's SignalWatcher.
    sigset_t all;
    sigset_t previous;
    sigfillset(&all);
    ::pthread_sigmask(SIG_BLOCK, &all, &previous);
    flusher_ = std::jthread([this](std::stop_token stop) { flush_later(std::move(stop)); });
    ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
}

ModeRecorder::~ModeRecorder() {
    flusher_.request_stop();
    if (flusher_.joinable()) flusher_.join();
    sink_.flush();
}

void ModeRecorder::flush_later(std::stop_token stop) {
    std::unique_lock lock(flush_mutex_);
    while (flush_wanted_.wait(lock, stop, [this] { return unflushed_.load(); })) {
        // Waiting first gathers the results of a burst into one write.
        flush_wanted_.wait_for(lock, stop, kFlushDelay, [] { return false; });
        unflushed_ = false;
        if (collect_ && collect_()) unflushed_ = true;  // some still held: again after the next wait
        lock.unlock();
        sink_.flush();
        lock.lock();
    }
}

void ModeRecorder::record(const TaskSpec& task, TaskResult&& result) {
    record(task, std::move(result), std::chrono::steady_clock::now());
}

void ModeRecorder::record(const TaskSpec& task, TaskResult&& result, std::chrono::steady_clock::time_point now) {
    stamp(result, now);  // times are taken here, on one clock, so results from other processes line up
    {
        std::lock_guard lock(mutex_);
        tally(result);
    }
    sink_.on_result(task, result);
    if (!unflushed_.exchange(true)) {
        std::lock_guard lock(flush_mutex_);  // so the flusher cannot miss the notification
        flush_wanted_.notify_one();
    }
}

void ModeRecorder::stamp(TaskResult& result, std::chrono::steady_clock::time_point now) const {
    result.end_s = std::chrono::duration<double>(now - started_).count();
    result.start_s = std::max(0.0, result.end_s - result.run_time.count());
}

void ModeRecorder::record_all(std::span<const Finished> batch) {
    if (batch.empty()) return;
    {
        std::lock_guard lock(mutex_);
        for (const Finished& done : batch) tally(done.result);
    }
    sink_.on_results(batch);
}

void ModeRecorder::tally(const TaskResult& result) {
    report_.cost.add(result.cost);
    if (result.ok) {
        ++report_.ok;
    } else {
        if (report_.failures.size() < kMaxFailuresListed) report_.failures.push_back({result.id, result.error});
        ++report_.failed;
    }
}

void ModeRecorder::holding() {
    if (!unflushed_.exchange(true)) {
        std::lock_guard lock(flush_mutex_);  // so the flusher cannot miss the notification
        flush_wanted_.notify_one();
    }
}

void ModeRecorder::set_collector(std::function<bool()> collect) {
    std::lock_guard lock(flush_mutex_);
    collect_ = std::move(collect);
}

void ModeRecorder::record_retry(const TaskSpec& task, TaskResult result) {
    result.end_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
    result.start_s = std::max(0.0, result.end_s - result.run_time.count());
    result.retrying = true;
    {
        std::lock_guard lock(mutex_);
        ++report_.retried;
    }
    sink_.on_result(task, result);
    if (!unflushed_.exchange(true)) {
        std::lock_guard lock(flush_mutex_);
        flush_wanted_.notify_one();
    }
}

void ModeRecorder::count_recycled() {
    std::lock_guard lock(mutex_);
    ++report_.recycled;
}

namespace {

// One attempt, under the lane's stop: a task cancelled before it starts is not run.
TaskResult run_attempt(const TaskSpec& task, std::uint32_t attempt, RunEnv& env, CancelBoard::Lane& lane) {
    if (!lane.begin(task.id)) {
        TaskResult result;
        result.id = task.id;
        result.type = task.type;
        result.attempt = attempt;
        result.worker = env.worker;
        return cancelled(std::move(result));
    }
    const std::stop_token run_stop = std::exchange(env.stop, lane.token());
    TaskResult result = run_task(task, attempt, env);
    env.stop = run_stop;
    // Stopped by a cancel, not by the run's stop: a result that is not ok is the cancel's.
    if (lane.end() && !result.ok) result = cancelled(std::move(result));
    return result;
}

}  // namespace

std::optional<TaskResult> run_with_retries(const TaskSpec& task, RunEnv& env, std::uint32_t retries,
                                           const std::stop_token& drain, ModeRecorder& recorder,
                                           CancelBoard::Lane& cancels, StartSlot* starts) {
    const auto started = [&](std::uint32_t attempt) {
        if (starts)
            starts->set(task.id, recorder.seconds_at(std::chrono::steady_clock::now()));
        else
            recorder.started(task, attempt, env.worker);
    };
    started(1);
    TaskResult result = run_attempt(task, 1, env, cancels);
    // Asked once, on the first failure: settings_read() builds a list.
    const std::uint32_t more = result.ok ? 0 : engine_retries(task.type, retries);
    while (!env.stop.stop_requested() && !result.ok && !result.cancelled && result.attempt <= more &&
           !drain.stop_requested()) {
        const std::uint32_t next = result.attempt + 1;
        recorder.record_retry(task, std::move(result));
        started(next);
        result = run_attempt(task, next, env, cancels);
    }
    if (env.stop.stop_requested()) return std::nullopt;
    return result;
}

std::uint32_t engine_retries(const TaskType* type, std::uint32_t retries) {
    if (retries == 0 || !type) return 0;
    const std::vector<std::string> reads = type->traits().settings_read;
    return std::find(reads.begin(), reads.end(), "retries") != reads.end() ? 0 : retries;
}

void ModeRecorder::plan_error(const std::string& error) {
    std::lock_guard lock(mutex_);
    if (report_.plan_error.empty()) report_.plan_error = error;
}

void ModeRecorder::place(Placement placement) {
    std::lock_guard lock(mutex_);
    report_.placement.push_back(std::move(placement));
}

void ModeRecorder::note(RunEvent event) {
    event.at_s = seconds_at(std::chrono::steady_clock::now());
    sink_.on_event(event);
}

void ModeRecorder::started(const TaskSpec& task, std::uint32_t attempt, const std::string& worker,
                           std::chrono::steady_clock::time_point when) {
    if (!starts_wanted_) return;
    const double at_s = seconds_at(when);
    // The slot this thread last wrote a start into, and for whom: a thread of threads mode
    // starts one worker's tasks, the dispatcher a frame's worth of one worker's at a time.
    struct Cached {
        std::uint64_t recorder = 0;
        std::string worker;
        StartSlot* slot = nullptr;
    };
    thread_local Cached cached;
    if (cached.recorder != serial_ || cached.worker != worker) cached = {serial_, worker, sink_.start_slot(worker)};
    if (cached.slot) return cached.slot->set(task.id, at_s);
    sink_.on_task_started({.kind = RunEvent::Kind::TaskStarted,
                           .at_s = at_s,
                           .worker = worker,
                           .detail = {},
                           .task = task.id,
                           .task_type = task.type,
                           .attempt = attempt,
                           .started_s = at_s});
}

std::uint64_t ModeRecorder::next_serial() {
    static std::atomic<std::uint64_t> serials{0};
    return ++serials;
}

double ModeRecorder::seconds_at(std::chrono::steady_clock::time_point when) const {
    return std::chrono::duration<double>(when - started_).count();
}

std::size_t ModeRecorder::recorded() const {
    std::lock_guard lock(mutex_);
    return report_.ok + report_.failed;
}

void ModeRecorder::restart_clock() {
    std::lock_guard lock(mutex_);
    started_ = std::chrono::steady_clock::now();
}

void ModeRecorder::at_least_workers(int workers) {
    std::lock_guard lock(mutex_);
    report_.workers = std::max(report_.workers, workers);
}

void ModeRecorder::stop_clock() {
    std::lock_guard lock(mutex_);
    if (!stopped_) stopped_ = std::chrono::steady_clock::now();
}

RunReport ModeRecorder::finish(bool interrupted) {
    stop_clock();
    sink_.flush();
    std::lock_guard lock(mutex_);
    report_.wall_s = std::chrono::duration<double>(*stopped_ - started_).count();
    report_.cpu_s = CpuTimes::now().total() - cpu_at_start_.total();
    report_.cpu_span_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - cpu_since_).count();
    report_.cpus_available = available_cpus();
    report_.interrupted = interrupted;
    // A plan whose end came only now (standard input): what was read of it.
    report_.tasks = plan_.known_count().value_or(report_.ok + report_.failed);
    if (!report_.plan_error.empty()) report_.tasks = std::max(report_.tasks, report_.ok + report_.failed);
    // "w2" before "w10"; a respawned worker after the one it replaced.
    std::stable_sort(report_.placement.begin(), report_.placement.end(), [](const Placement& a, const Placement& b) {
        return std::pair(a.worker.size(), a.worker) < std::pair(b.worker.size(), b.worker);
    });
    std::set<int> pinned;
    for (const Placement& place : report_.placement)
        if (place.cpu >= 0) pinned.insert(place.cpu);
    report_.cpus_used = pinned.empty() ? std::min(report_.workers, available_cpus()) : static_cast<int>(pinned.size());
    return report_;
}

}  // namespace taskfarm
