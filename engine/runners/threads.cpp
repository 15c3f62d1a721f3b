#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "affinity.hpp"
#include "errors.hpp"
#include "gil.hpp"
#include "mode_runners.hpp"
#include "report.hpp"

namespace taskfarm {
namespace {

// An unpinned thread still runs its tasks; the placement in the report shows it.
void pin_or_warn(int cpu, const std::string& name) {
    try {
        pin_this_thread(cpu);
    } catch (const std::exception& e) {
        spdlog::warn("{}; thread {} runs unpinned", e.what(), name);
    }
}

rusage thread_usage() {
    rusage usage{};
    ::getrusage(RUSAGE_THREAD, &usage);
    return usage;
}

// A thread's results on their way to the sink (decisions 149, 150). The thread keeps them for
// a slice: until kSliceResults of them, or until kSlice has passed since the slice began,
// whichever comes first after a task. Then it measures its CPU once (getrusage), shares it
// among the slice's results in proportion to their run times, and hands the slice over in
// one call: one lock of the recorder and of the sink per slice, not per result. A thread
// that keeps results while it runs a long task has them taken by the recorder's flusher
// within about kFlushDelay; those carry no cost (not measured), and the CPU they took is
// counted in the thread's next slice.
class Outbox {
public:
    static constexpr std::size_t kSliceResults = 64;
    static constexpr auto kSlice = std::chrono::milliseconds(1);

    explicit Outbox(ModeRecorder& recorder) : recorder_(recorder) { held_.reserve(kSliceResults); }

    // The owner thread.
    void begin() {
        slice_began_ = std::chrono::steady_clock::now();
        usage_ = thread_usage();
    }
    void add(TaskSpec& task, TaskResult&& result) {
        const auto now = std::chrono::steady_clock::now();
        recorder_.stamp(result, now);
        std::unique_lock lock(mutex_);
        if (held_.empty()) oldest_ = now;
        held_.emplace_back(std::move(task), std::move(result));  // in place: one move of each, not two
        if (held_.size() < kSliceResults && now - slice_began_ < kSlice) {
            if (held_.size() == 1) {
                lock.unlock();
                recorder_.holding();  // the flusher takes them if this thread keeps them long
            }
            return;
        }
        lock.unlock();
        close_slice(now);
    }
    // Measures the slice and hands over what the thread holds.
    void close_slice(std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now()) {
        const rusage usage = thread_usage();
        const double user = std::max(0.0, seconds_of(usage.ru_utime) - seconds_of(usage_.ru_utime));
        const double sys = std::max(0.0, seconds_of(usage.ru_stime) - seconds_of(usage_.ru_stime));
        usage_ = usage;
        slice_began_ = now;
        std::lock_guard lock(mutex_);
        double ran = 0;
        std::size_t shared = 0;
        for (const Finished& done : held_) {
            if (done.result.cost.scope != TaskCost::Scope::None) continue;  // a tree's, measured
            ran += done.result.run_time.count();
            ++shared;
        }
        for (Finished& done : held_) {
            TaskCost& cost = done.result.cost;
            if (cost.scope != TaskCost::Scope::None) continue;
            const double share = ran > 0 ? done.result.run_time.count() / ran : 1.0 / static_cast<double>(shared);
            cost.scope = TaskCost::Scope::Thread;
            cost.user_s = user * share;
            cost.sys_s = sys * share;
        }
        hand_over();
        recorder_.holding();  // a flush within kFlushDelay
    }
    // The flusher: hands over results held longer than `age`; true when some are still held.
    bool collect(std::chrono::steady_clock::duration age) {
        std::unique_lock lock(mutex_, std::try_to_lock);
        if (!lock) return true;  // the owner is handing them over itself
        if (held_.empty()) return false;
        if (std::chrono::steady_clock::now() - oldest_ < age) return true;
        hand_over();
        return false;
    }

private:
    void hand_over() {  // under mutex_
        recorder_.record_all(held_);
        held_.clear();
    }

    ModeRecorder& recorder_;
    std::mutex mutex_;  // the owner's, but for the flusher now and then: never contended per task
    std::vector<Finished> held_;
    std::chrono::steady_clock::time_point oldest_{};
    // The owner's alone:
    std::chrono::steady_clock::time_point slice_began_{};
    rusage usage_{};
};

}  // namespace

RunReport ThreadsRunner::run(const Plan& plan, ResultSink& sink) {
    ModeRecorder recorder(gil_ ? Mode::GilThreads : Mode::Threads, threads_, plan, sink);
    std::optional<Gil> gil;
    if (gil_) gil.emplace();
    // Each thread takes the next task from the one cursor, which makes it as it goes.
    const auto cursor = plan.open();
    std::mutex cursor_mutex;
    bool ended = false;
    const auto take = [&](TaskSpec& task, Outbox& outbox) {
        // A plan read as the run goes may keep this thread waiting for its next line: what
        // it holds goes first, measured.
        if (cursor->ready_fd() >= 0) outbox.close_slice();
        std::lock_guard lock(cursor_mutex);
        if (ended) return false;
        try {
            // A signal ends a wait for a slow producer's next line, as it ends the run.
            if (next_task(*cursor, task, env_.stop, drain_)) return true;
        } catch (const ConfigError& e) {  // a bad line of standard input: the tasks after it do not run
            recorder.plan_error(e.what());
        }
        ended = true;
        return false;
    };
    // One outbox per thread, made before any thread starts: the flusher walks them all.
    std::vector<std::unique_ptr<Outbox>> outboxes;
    for (int i = 0; i < threads_; ++i) outboxes.push_back(std::make_unique<Outbox>(recorder));
    recorder.set_collector([&outboxes] {
        bool held = false;
        for (const auto& outbox : outboxes) held = outbox->collect(ModeRecorder::kFlushDelay) || held;
        return held;
    });
    {
        std::vector<std::jthread> pool;
        pool.reserve(static_cast<std::size_t>(threads_));
        for (int i = 0; i < threads_; ++i) {
            const int cpu = cpus_.empty() ? -1 : cpus_[static_cast<std::size_t>(i) % cpus_.size()];
            pool.emplace_back([&, cpu, i, name = fmt::format("t{}", i + 1)] {
                if (cpu >= 0) pin_or_warn(cpu, name);  // before its first task
                recorder.place({name, pinned_cpu(), ::getpid()});
                RunEnv env = env_;
                env.worker = name;
                env.gil = gil ? &*gil : nullptr;
                env.cost_per_slice = true;
                Outbox& outbox = *outboxes[static_cast<std::size_t>(i)];
                CancelBoard::Lane lane(cancels_, env.stop);
                StartSlot* const starts = recorder.start_slot(name);  // this thread's lane's, asked once
                struct ThreadDone {
                    const Registry& registry;
                    ~ThreadDone() { registry.thread_done(); }
                } thread_done{registry_};
                struct SliceDone {  // also when the run stops mid-task
                    Outbox& outbox;
                    ~SliceDone() { outbox.close_slice(); }
                } slice_done{outbox};
                outbox.begin();
                const std::stop_token stop = env.stop;
                TaskSpec task;
                // A drain lets each thread finish the task it runs, and take no other.
                while (!stop.stop_requested() && !drain_.stop_requested() && take(task, outbox)) {
                    std::optional<TaskResult> result =
                        run_with_retries(task, env, retries_, drain_, recorder, lane, starts);
                    if (!result) return;  // cancelled mid-task: not a result
                    outbox.add(task, std::move(*result));
                }
            });
        }
    }  // joins every thread
    recorder.set_collector({});
    return recorder.finish(env_.stop.stop_requested() || drain_.stop_requested());
}

}  // namespace taskfarm
