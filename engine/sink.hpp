#pragma once
// Where results go as they complete. Runners call on_result() from any thread; the base
// class serialises calls (like spdlog's base_sink), so a sink never locks for itself.
// on_event() reports what else happened (worker lifecycle, requeues); most sinks ignore it.

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "events.hpp"
#include "task.hpp"

namespace taskfarm {

// The latest task a worker (or thread) started, for a sink that shows what runs now (the live
// view): the runner writes each start here instead of calling the sink per task, and the sink
// reads it when it looks (decision 263). One writer at a time (the thread that starts the
// worker's tasks, or the sink under its own lock), any number of readers: a sequence count
// (odd while a start is written) that a reader reads before and after, and reads again when
// they differ, so a writer never waits and a reader never sees half of a start (decision 306).
class StartSlot {
public:
    struct Seen {
        std::uint64_t serial = 0;  // starts written so far; 0: none yet
        TaskId task = kNoId;
        double at_s = 0;  // seconds since the mode began, as RunEvent::at_s
    };
    void set(TaskId task, double at_s) {
        const std::uint64_t sequence = sequence_.load(std::memory_order_relaxed);
        sequence_.store(sequence + 1, std::memory_order_relaxed);
        std::atomic_thread_fence(std::memory_order_release);  // odd before the fields change
        task_.store(task, std::memory_order_relaxed);
        at_s_.store(at_s, std::memory_order_relaxed);
        sequence_.store(sequence + 2, std::memory_order_release);
    }
    Seen get() const;

private:
    std::atomic<std::uint64_t> sequence_{0};  // twice the starts written, +1 while one is
    std::atomic<TaskId> task_{kNoId};
    std::atomic<double> at_s_{0};
};

// A result with its task, as a runner hands several over at once (ResultSink::on_results).
struct Finished {
    TaskSpec task;
    TaskResult result;
};

class ResultSink {
public:
    virtual ~ResultSink() = default;
    void begin_mode(const std::string& mode, std::size_t tasks);
    void on_result(const TaskSpec& task, const TaskResult& result);
    // Several results in one call, under one lock (threads mode hands over a slice of a
    // thread's results so: decision 149); the same as on_result() for each, in order.
    void on_results(std::span<const Finished> batch);
    void on_event(const RunEvent& event);
    // Writes out what the sink buffered. Runners' recorders call it at least every few
    // milliseconds while results arrive, so a buffered line is never long in coming.
    void flush();
    // Whether the sink wants a RunEvent::Kind::TaskStarted per task; runners skip making
    // them otherwise. Fixed before the first mode begins.
    virtual bool wants_task_starts() const { return false; }
    // A task began: for a sink that wants_task_starts(). Called from any thread WITHOUT the
    // sink's lock, once per task, so that starts never queue behind results on it: such a
    // sink synchronises itself (the live view's state has a lock of its own).
    virtual void on_task_started(const RunEvent&) {}
    // For a sink that wants_task_starts(): where the starts of `worker`'s tasks in the mode
    // begun last go, written by the runner without a call per task (then on_task_started()
    // is not called for them); null, the default, to be called instead. The slot lives as
    // long as the sink. Called from any thread, without the sink's lock, once per worker and
    // mode of the thread that starts its tasks.
    virtual StartSlot* start_slot(const std::string& /*worker*/) { return nullptr; }
    // Whether the sink reads TaskResult::value. When no sink of a run does, the coordinator of
    // processes mode drops the values its workers send rather than decode them (decision 250):
    // their results reach the sinks with a null value. Fixed before the first mode begins;
    // a sink that reads them, or may, keeps the default.
    virtual bool wants_values() const { return true; }

protected:
    virtual void begin_mode_(const std::string& mode, std::size_t tasks) = 0;
    virtual void sink_it_(const TaskSpec& task, const TaskResult& result) = 0;
    // Called under the lock; by default sink_it_() for each result.
    virtual void sink_all_(std::span<const Finished> batch);
    virtual void event_it_(const RunEvent&) {}
    virtual void flush_() {}
    std::string mode_;  // of the results arriving now

private:
    std::mutex mutex_;
};

// Fans every call out to several sinks, in order.
class FanOutSink final : public ResultSink {
public:
    void add(std::unique_ptr<ResultSink> sink) { sinks_.push_back(std::move(sink)); }
    bool wants_task_starts() const override;
    void on_task_started(const RunEvent& event) override;  // sinks_ is fixed by then: no lock
    // The slot of the one sink that wants starts; null when several do (each is called).
    StartSlot* start_slot(const std::string& worker) override;
    bool wants_values() const override;

protected:
    void begin_mode_(const std::string& mode, std::size_t tasks) override;
    void sink_it_(const TaskSpec& task, const TaskResult& result) override;
    void sink_all_(std::span<const Finished> batch) override;
    void event_it_(const RunEvent& event) override;
    void flush_() override;

private:
    std::vector<std::unique_ptr<ResultSink>> sinks_;
};

}  // namespace taskfarm
