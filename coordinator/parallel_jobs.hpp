#pragma once
// `coordinator parallel`'s plan: its jobs made as its inputs come (standard input, `::::`
// files, --pipe's chunks), so that the first job starts before the input has ended and
// memory stays flat however long it is (parallel's `tail -f queue | parallel` works).

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "parallel_output.hpp"
#include "plan.hpp"
#include "unique_fd.hpp"

namespace taskfarm {

// Makes the jobs of a run one at a time, reading its inputs as it goes.
class JobMaker {
public:
    virtual ~JobMaker() = default;
    // The next job; false after the last, or once stop() was called. Waits for input.
    // Throws ConfigError when the input cannot be read.
    virtual bool next(ParallelJob& job) = 0;
    // Whether next() has what it needs without waiting (its input came, or it reads none).
    virtual bool ready() = 0;
    // From another thread: a next() that waits for input returns false, and so does every later one.
    virtual void stop() = 0;
};

// The plan: the jobs made before the run (`first`), then those `maker` makes on a thread of
// its own, a few ahead of the runner (a bounded queue); each is a task of `type` (the
// command type) with the same id, from 0, and is put in `output` as its task is made.
// --delay: a task is handed out `delay_s` after the runner came back having handed out the
// one before, which is when that one starts (the run holds one task at a time then). One
// cursor only: the input is read once.
class ParallelJobs final : public PlanSource {
public:
    // `cwd`: every job's directory (--wd; empty: ours).
    ParallelJobs(std::deque<ParallelJob> first, std::unique_ptr<JobMaker> maker, const TaskType& type, std::string cwd,
                 double timeout_s, double delay_s, std::shared_ptr<const ParallelOutput> output);
    ~ParallelJobs() override;  // stops the maker and its thread, even while it waits for input
    ParallelJobs(const ParallelJobs&) = delete;
    ParallelJobs& operator=(const ParallelJobs&) = delete;

    std::unique_ptr<TaskCursor> open() const override;
    std::optional<std::uint64_t> counted() const override;

private:
    class Cursor;
    void start();  // the thread, at the first take
    void make();   // the thread's work
    TaskSpec task_of(ParallelJob job);

    std::unique_ptr<JobMaker> maker_;  // null: every job is in `first`
    const TaskType& type_;
    const std::string cwd_;
    const double timeout_s_;
    const double delay_s_;
    std::shared_ptr<const ParallelOutput> output_;
    mutable bool opened_ = false;
    UniqueFd wake_fd_;  // eventfd: readable when a task came for a cursor that got Later

    mutable std::mutex mutex_;
    std::condition_variable changed_;
    std::deque<TaskSpec> queue_;
    std::uint64_t made_ = 0;            // tasks made (the next one's id)
    bool ended_ = false;                // no task comes after the queued ones
    std::optional<std::string> error_;  // ...because the input could not be read: why
    bool waiting_ = false;              // a cursor got Later: wake_fd_ is to be signalled
    bool quit_ = false;
    std::optional<std::uint64_t> counted_;  // the tasks in all, once the input ended
    std::thread thread_;
};

}  // namespace taskfarm
