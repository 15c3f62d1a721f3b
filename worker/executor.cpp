#include "executor.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace taskfarm {
namespace {

// The cost scope of a result whose task's share of the process's CPU take_results() fills in.
constexpr std::string_view kShared = "process";

double seconds(const timeval& tv) { return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6; }

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

}  // namespace

Executor::Executor(const Registry& registry, RunEnv env, RunningBoard* board)
    : registry_(registry), env_(std::move(env)), board_(board) {
    process_cpu(shared_user_s_, shared_sys_s_);  // what starting the worker took is no task's
}

void Executor::set_settings(Json settings) {
    if (settings_received_) {
        spdlog::warn("ignored a second setup from the coordinator");
        return;
    }
    settings_ = std::move(settings);
    settings_received_ = true;
}

void Executor::push(proto::Task&& task) { queue(std::move(task)); }

void Executor::push(proto::TaskBatch&& batch) {
    for (proto::Task& task : batch.tasks) queue(std::move(task));
}

void Executor::process_cpu(double& user_s, double& sys_s) {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    user_s = seconds(usage.ru_utime);
    sys_s = seconds(usage.ru_stime);
}

void Executor::take_results(std::vector<proto::Result>& out) {
    out.clear();
    out.swap(outbox_);
    // Tasks that ran and carry no cost of their own yet are marked "process" with nothing
    // counted by the loop; a command's tree ("tree") and a task never run ("") are left alone.
    double ran = 0;
    std::size_t sharing = 0;
    for (const proto::Result& result : out) {
        if (result.cost.scope != kShared) continue;
        ran += result.run_s;
        ++sharing;
    }
    if (sharing == 0) return;  // what the process used meanwhile goes to the next ones
    double user = 0;
    double sys = 0;
    process_cpu(user, sys);
    const double user_used = std::max(0.0, user - shared_user_s_);
    const double sys_used = std::max(0.0, sys - shared_sys_s_);
    shared_user_s_ = user;
    shared_sys_s_ = sys;
    for (proto::Result& result : out) {
        if (result.cost.scope != kShared) continue;
        const double share = ran > 0 ? result.run_s / ran : 1.0 / static_cast<double>(sharing);
        result.cost.user_s = user_used * share;
        result.cost.sys_s = sys_used * share;
    }
}

std::vector<proto::TaskRef> Executor::give_back_if_busy_for(Clock::duration limit, Clock::time_point now,
                                                            Clock::duration& busy) {
    std::vector<proto::TaskRef> returned;
    if (queue_.empty() || !running_since_) return returned;
    busy = now - *running_since_;
    if (busy < limit) return returned;
    for (const Queued& queued : queue_) returned.push_back({queued.task.id, queued.attempt});
    queue_.clear();
    return returned;
}

std::optional<Executor::Clock::time_point> Executor::give_back_due(Clock::duration limit) const {
    if (queue_.empty() || !running_since_) return std::nullopt;
    return *running_since_ + limit;
}

std::vector<proto::Result> Executor::cancel(const std::vector<proto::TaskRef>& tasks) {
    std::vector<proto::Result> dropped;
    for (const proto::TaskRef& ref : tasks) {
        if (running_since_ && running_.id == ref.id && running_.attempt == ref.attempt) {
            own_.request_stop();
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

void Executor::queue(proto::Task&& task) {
    std::string kind = task.kind;
    const std::uint32_t attempt = task.attempt;
    std::string packed;
    TaskSpec spec = proto::to_spec(std::move(task), registry_, &packed);
    queue_.push_back({std::move(spec), attempt, std::move(kind), std::move(packed)});
}

void Executor::start(std::stop_token stop) {
    thread_stop_ = std::move(stop);
    env_.settings = &settings_;
    env_.cost_per_slice = true;  // shared out per frame by take_results()
    env_.registry = &registry_;
    own_.request_stop();  // so that begin() links a fresh one
}

void Executor::begin(Clock::time_point now) {
    if (own_.stop_requested()) {  // the last task's cancel used it
        link_.reset();            // waits for a callback that runs now
        own_ = std::stop_source();
        link_.emplace(thread_stop_, std::function<void()>([source = own_]() mutable { source.request_stop(); }));
    }
    // Out of the queue and running in one step, under the socket: a cancel in between would
    // find it neither queued nor running, and be lost.
    next_ = std::move(queue_.front());
    queue_.pop_front();
    running_since_ = now;
    running_ = {next_.task.id, next_.attempt};
    env_.stop = own_.get_token();
}

Executor::Clock::time_point Executor::run(Clock::time_point started) {
    if (board_) board_->started(next_.task.id, next_.attempt);
    result_ = proto::Result{};  // its packed value, if the type gives one, set by run_task
    TaskResult result = [&] {
        const TaskGpus gpus(next_.task.gpus);
        return next_.task.type
                   ? run_task(next_.task, next_.attempt, env_, next_.packed_params, result_.packed_value, started)
                   : unknown_kind(next_);
    }();
    if (board_) board_->ended();
    // One clock read a task: run_task's end, which is also the next task's start when it
    // follows at once (decision 302).
    const Clock::time_point ended = started + std::chrono::duration_cast<Clock::duration>(result.run_time);
    proto::to_message(std::move(result), result_);
    result_.kind = std::move(next_.kind);
    if (result_.cost.scope.empty() && next_.task.type) result_.cost.scope = kShared;  // measured per frame
    return ended;
}

void Executor::end() {
    // Before the result goes out: the coordinator answers it with the next task, which must
    // not look queued behind this finished one and be given back.
    running_since_.reset();
    outbox_.push_back(std::move(result_));
}

bool Executor::send_due(bool& because_low) const {
    // The outbox goes once per batch (decision 237): while kHoldWhileQueued or more tasks are
    // queued here, the results wait for the next ones, and they leave as one frame, answered
    // by one frame of tasks; they go when the queue runs low (the coordinator's refill then
    // arrives while the last tasks run), or the outbox is full. What waits goes at the latest
    // when the task thread runs out of tasks or the watcher takes the socket over (decision 301).
    // Only with a board: a coordinator that loses this worker reads there which task ran;
    // without one (a remote worker) it takes the oldest task without a result as the one
    // that ran, which a held result would make wrong.
    because_low = false;
    if (outbox_.empty()) return false;
    if (!board_ || outbox_.size() >= kMostHeld) return true;
    because_low = queue_.size() < kHoldWhileQueued;
    return because_low;
}

TaskResult Executor::unknown_kind(const Queued& queued) const {
    TaskResult result;
    result.id = queued.task.id;
    result.attempt = queued.attempt;
    result.worker = env_.worker;
    result.error = fmt::format("this worker has no task type '{}' (it knows {})", queued.kind, registry_.names_text());
    return result;
}

}  // namespace taskfarm
