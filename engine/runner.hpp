#pragma once
// One Runner per execution mode. Runners differ only in where run_task() is called; they
// never print, they hand every result to a sink the moment it completes.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <span>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <thread>

#include "mode.hpp"
#include "plan.hpp"
#include "report.hpp"
#include "sink.hpp"

namespace taskfarm {

struct Runner {
    virtual ~Runner() = default;
    // Runs every task of `plan` once (or until `stop`); each result goes to `sink` as it completes.
    virtual RunReport run(const Plan& plan, ResultSink& sink) = 0;
};

// --retries: how many more times the engine runs a failed task of `type`: `retries`, or 0
// for a type that retries inside its own tasks (one that reads the "retries" setting), so
// that no failure is retried twice over.
std::uint32_t engine_retries(const TaskType* type, std::uint32_t retries);

// Shared by the runners: times the mode, stamps start_s/end_s on each result, tallies
// ok/failed and forwards to the sink. Thread-safe. A thread of its own flushes the sink
// within kFlushDelay of a result, so sinks may buffer and a runner never has to flush.
class ModeRecorder {
public:
    static constexpr auto kFlushDelay = std::chrono::milliseconds(10);

    ModeRecorder(Mode mode, int workers, const Plan& plan, ResultSink& sink);
    ~ModeRecorder();
    ModeRecorder(const ModeRecorder&) = delete;
    ModeRecorder& operator=(const ModeRecorder&) = delete;
    void record(const TaskSpec& task, TaskResult&& result);  // taken, not copied
    // The same, stamped at `now` (a clock read already: processes mode's frame of results).
    void record(const TaskSpec& task, TaskResult&& result, std::chrono::steady_clock::time_point now);
    // Sets result's end_s (now) and start_s, as record() does.
    void stamp(TaskResult& result, std::chrono::steady_clock::time_point now = std::chrono::steady_clock::now()) const;
    // Results stamped already, tallied under one lock and handed to the sink in one call.
    // It does not wake the flusher: a runner calls holding() after it (the collector need not).
    void record_all(std::span<const Finished> batch);
    // Called by the flusher thread before each flush while results came since the last one:
    // hands over results a runner still holds, and says whether it still holds some (then
    // the flusher comes again). Set it before the first result, clear it before what it
    // uses goes; it must not wait for a lock that a thread holds while it records.
    void set_collector(std::function<bool()> collect);
    // A runner holds results: the flusher calls the collector within kFlushDelay.
    void holding();
    // A failed attempt of `task` that runs again (--retries): to the sinks, marked retrying,
    // not counted as failed; its task's final result comes later through record().
    void record_retry(const TaskSpec& task, TaskResult result);
    void count_recycled();  // a worker was recycled (RunReport::recycled)
    // The plan stopped giving tasks before its end, for this reason (RunReport::plan_error).
    void plan_error(const std::string& error);
    // Notes where a worker or thread runs, for the report's placement and cpus_used.
    void place(Placement placement);
    // Stamps `event` with the time since the start of the mode and forwards it to the sink.
    void note(RunEvent event);
    // A task began on `worker` at `when`: a RunEvent::Kind::TaskStarted for a sink that
    // wants one (the live view), nothing otherwise.
    void started(const TaskSpec& task, std::uint32_t attempt, const std::string& worker,
                 std::chrono::steady_clock::time_point when = std::chrono::steady_clock::now());
    // Where `worker`'s starts go with no call (ResultSink::start_slot), for a thread that starts
    // only that worker's tasks: it asks once. Null when no sink wants starts or none gives a slot.
    StartSlot* start_slot(const std::string& worker) { return starts_wanted_ ? sink_.start_slot(worker) : nullptr; }
    // `when` in seconds since the start of the mode, on the clock results are stamped with.
    double seconds_at(std::chrono::steady_clock::time_point when) const;
    std::size_t recorded() const;
    // Whether a sink reads results' values (ResultSink::wants_values()): else a processes-mode
    // coordinator need not decode them (decision 250).
    bool values_wanted() const { return values_wanted_; }
    // Starts the mode's clock again, now: for a run that waited for remote workers before its
    // first task, so the wait (a person or a scheduler starting them) is not counted. Call it
    // before the first result, from the thread that records.
    void restart_clock();
    // The report's worker count becomes at least `workers` (remote workers that joined).
    void at_least_workers(int workers);
    // Ends the wall-clock time of the mode (the last result is in); finish() calls it if
    // nobody did. Process shutdown comes after it, and does not count.
    void stop_clock();
    RunReport finish(bool interrupted);  // call once, after the mode's processes are reaped

private:
    void flush_later(std::stop_token stop);
    // Counts a result into the report (ok, failed, the first failures, cost); under mutex_.
    void tally(const TaskResult& result);

    std::chrono::steady_clock::time_point started_ = std::chrono::steady_clock::now();
    std::optional<std::chrono::steady_clock::time_point> stopped_;
    // When CPU time started to count (restart_clock() keeps it), taken before the CPU time
    // itself so that no CPU is counted from before it.
    const std::chrono::steady_clock::time_point cpu_since_ = std::chrono::steady_clock::now();
    const CpuTimes cpu_at_start_ = CpuTimes::now();
    ResultSink& sink_;
    const Plan& plan_;  // its known_count() is the report's tasks once the mode is over
    const bool starts_wanted_ = sink_.wants_task_starts();
    // Unique in the process, so that a thread's cached start slot (started()) names this mode.
    const std::uint64_t serial_ = next_serial();
    static std::uint64_t next_serial();
    const bool values_wanted_ = sink_.wants_values();
    mutable std::mutex mutex_;
    RunReport report_;
    std::atomic<bool> unflushed_{false};  // a result went to the sink since the last flush
    std::mutex flush_mutex_;
    std::condition_variable_any flush_wanted_;
    std::function<bool()> collect_;  // under flush_mutex_
    std::jthread flusher_;           // last: starts after everything it uses
};

}  // namespace taskfarm
