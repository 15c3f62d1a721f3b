#include "executor.hpp"

#include <sys/resource.h>

#include <algorithm>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "wire.hpp"

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

void Executor::set_settings(Json settings) {
    std::lock_guard lock(mutex_);
    if (settings_received_) {
        spdlog::warn("ignored a second setup from the coordinator");
        return;
    }
    settings_ = std::move(settings);
    settings_received_ = true;
}

void Executor::push(proto::Task&& task) {
    {
        std::lock_guard lock(mutex_);
        queue(std::move(task));
    }
    ready_.notify_one();
}

void Executor::push(proto::TaskBatch&& batch) {
    {
        std::lock_guard lock(mutex_);
        for (proto::Task& task : batch.tasks) queue(std::move(task));
    }
    ready_.notify_one();
}

void Executor::process_cpu(double& user_s, double& sys_s) {
    rusage usage{};
    ::getrusage(RUSAGE_SELF, &usage);
    user_s = seconds(usage.ru_utime);
    sys_s = seconds(usage.ru_stime);
}

void Executor::take_results(std::vector<proto::Result>& out) {
    out.clear();
    {
        std::lock_guard lock(outbox_mutex_);
        out.swap(outbox_);
        woken_ = false;
    }
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

std::vector<proto::TaskRef> Executor::give_back_if_busy_for(Clock::duration limit, Clock::duration& busy) {
    std::vector<proto::TaskRef> returned;
    std::lock_guard lock(mutex_);
    if (queue_.empty() || !running_since_) return returned;
    busy = Clock::now() - *running_since_;
    if (busy < limit) return returned;
    for (const Queued& queued : queue_) returned.push_back({queued.task.id, queued.attempt});
    queue_.clear();
    return returned;
}

bool Executor::has_queued() {
    std::lock_guard lock(mutex_);
    return !queue_.empty();
}

bool Executor::has_queued_or_results() {
    if (has_queued()) return true;
    std::lock_guard lock(outbox_mutex_);
    return !outbox_.empty();
}

std::vector<proto::Result> Executor::cancel(const std::vector<proto::TaskRef>& tasks) {
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

void Executor::queue(proto::Task&& task) {
    std::string kind = task.kind;
    const std::uint32_t attempt = task.attempt;
    std::string packed;
    TaskSpec spec = proto::to_spec(std::move(task), registry_, &packed);
    queue_.push_back({std::move(spec), attempt, std::move(kind), std::move(packed)});
}

void Executor::loop(std::stop_token stop, zmq::context_t& context) {
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
    env.cost_per_slice = true;  // shared out per frame by take_results()
    env.registry = &registry_;
    // A stop of the running task's own, for a cancel of it alone; the executor's stop stops it
    // too. Made once and made again only after a cancel used it: no allocation per task.
    std::stop_source own;
    std::optional<std::stop_callback<std::function<void()>>> link;
    const auto relink = [&] {
        link.reset();  // waits for a callback that runs now
        own = std::stop_source();
        link.emplace(stop, std::function<void()>([source = own]() mutable { source.request_stop(); }));
    };
    relink();
    while (true) {
        Queued next;
        if (own.stop_requested()) {
            if (stop.stop_requested()) return;
            relink();  // the last task's cancel used it
        }
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
        env.stop = own.get_token();
        if (board_) board_->started(next.task.id, next.attempt);
        proto::Result message;  // its packed value, if the type gives one, set by run_task
        TaskResult result = [&] {
            const TaskGpus gpus(next.task.gpus);
            return next.task.type ? run_task(next.task, next.attempt, env, next.packed_params, message.packed_value)
                                  : unknown_kind(next);
        }();
        if (board_) board_->ended();
        std::size_t queued = 0;
        {
            // Before the result goes out: the coordinator answers it with the next task,
            // which must not look queued behind this finished one and be given back.
            std::lock_guard lock(mutex_);
            running_since_.reset();
            running_stop_ = nullptr;
            queued = queue_.size();
        }
        if (stop.stop_requested()) return;
        proto::to_message(std::move(result), message);
        message.kind = std::move(next.kind);
        if (message.cost.scope.empty() && next.task.type) message.cost.scope = kShared;  // measured per frame
        // The socket thread is woken once per batch (decision 237): while kHoldWhileQueued or
        // more tasks are queued here, the result waits for the next ones, and they leave as
        // one frame, answered by one frame of tasks; the wake comes when the queue runs low
        // (the coordinator's refill then arrives while the last tasks run), or the outbox is
        // full. The socket thread also takes what waits at each of its own wake-ups, at
        // least every kGiveBackAfter / 2 while tasks are queued, so no result waits longer.
        // Only with a board: a coordinator that loses this worker reads there which task ran;
        // without one (a remote worker) it takes the oldest task without a result as the one
        // that ran, which a held result would make wrong.
        bool wake_now = false;
        {
            std::lock_guard lock(outbox_mutex_);
            outbox_.push_back(std::move(message));
            if (!woken_ && (!board_ || queued < kHoldWhileQueued || outbox_.size() >= kMostHeld))
                wake_now = woken_ = true;
        }
        // A blocking send: inproc to our own socket thread, which never stops reading.
        if (wake_now) wake.send(zmq::str_buffer("!"), zmq::send_flags::none);
    }
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
