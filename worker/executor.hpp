#pragma once
// The worker's tasks: the queue of those the coordinator handed out, the one running, and the
// results not sent yet. It has no thread of its own: the session's task thread runs the tasks
// here one at a time, and whichever thread holds the session's socket calls the rest.

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "protocol.hpp"
#include "running_board.hpp"
#include "task.hpp"

namespace taskfarm {

// Not thread-safe: every member but run() is called by the thread that holds the session's
// socket (its lock is the executor's), run() by the task thread without it. The task thread
// holds the socket between tasks, so the queue, the running attempt and the outbox only change
// hands with the socket (decision 301).
class Executor {
public:
    using Clock = std::chrono::steady_clock;

    // `board`, if any, says which task runs (it outlives a crash); it must outlive the executor.
    Executor(const Registry& registry, RunEnv env, RunningBoard* board);

    // The run's settings, from the coordinator's SETUP; only the first counts, and it comes
    // before any task.
    void set_settings(Json settings);

    void push(proto::Task&& task);
    void push(proto::TaskBatch&& batch);

    bool has_queued() const { return !queue_.empty(); }
    bool has_results() const { return !outbox_.empty(); }

    // Moves the finished results into `out` (cleared first). The tasks among them that ran
    // share the process's CPU time since the last take, in proportion to their run times:
    // one getrusage per frame, not per task (decision 201). A command's tree keeps its own.
    void take_results(std::vector<proto::Result>& out);

    // The tasks not started yet, if the running one has run longer than `limit` at `now`; they
    // will not run here. `busy` is set to how long the running one has run.
    std::vector<proto::TaskRef> give_back_if_busy_for(Clock::duration limit, Clock::time_point now,
                                                      Clock::duration& busy);
    // When the running task will have run `limit`, if tasks are queued behind it; nullopt otherwise.
    std::optional<Clock::time_point> give_back_due(Clock::duration limit) const;

    // The coordinator's cancel: the running attempt among `tasks` is stopped (its result
    // comes as usual); queued ones are dropped and returned as failed results, to be sent.
    std::vector<proto::Result> cancel(const std::vector<proto::TaskRef>& tasks);

    // The task thread's side. start() once on that thread with its stop (which stops the
    // running task too); then per task: begin() takes the next queued one (there must be one)
    // and marks it running since `now`; run() runs it, without the socket; end() queues its
    // result.
    void start(std::stop_token stop);
    void begin(Clock::time_point now);
    // Runs the task begin() took, started at `started`; returns when it ended (started + its run time).
    Clock::time_point run(Clock::time_point started);
    void end();
    // Whether the outbox should go now (decision 237): it waits while kHoldWhileQueued or more
    // tasks are queued behind its results and fewer than kMostHeld wait. `because_low` is set
    // when it is due only because the queue ran low (the coordinator's answer to the last frame
    // may have come meanwhile: a look at the socket may make it wait again).
    bool send_due(bool& because_low) const;

    // Results wait in the outbox while this many tasks or more are queued behind...
    static constexpr std::size_t kHoldWhileQueued = 2;
    // ...and fewer than this many wait.
    static constexpr std::size_t kMostHeld = 64;

private:
    struct Queued {
        TaskSpec task;
        std::uint32_t attempt;
        std::string kind;           // the task's type name, kept for the error when this program lacks it
        std::string packed_params;  // for a PackedRun type: its params as msgpack (decision 242)
    };

    static void process_cpu(double& user_s, double& sys_s);  // this process's CPU so far
    void queue(proto::Task&& task);
    TaskResult unknown_kind(const Queued& queued) const;

    const Registry& registry_;
    RunEnv env_;                 // the task thread's, from start() on
    RunningBoard* const board_;  // or null
    Json settings_ = Json::object();
    bool settings_received_ = false;
    std::deque<Queued> queue_;
    std::optional<Clock::time_point> running_since_;  // set while a task runs
    proto::TaskRef running_;                          // the attempt that runs while running_since_ is set
    // The running task's own stop, for a cancel of it alone; the task thread's stop stops it
    // too. Made once and made again only after a cancel used it: no allocation per task.
    std::stop_token thread_stop_;
    std::stop_source own_;
    std::optional<std::stop_callback<std::function<void()>>> link_;
    Queued next_;                        // the task begin() took, for run() and end()
    proto::Result result_;               // its result, from run() to end()
    std::vector<proto::Result> outbox_;  // finished, not yet sent
    // The process's user and system CPU seconds when take_results() last shared them.
    double shared_user_s_ = 0;
    double shared_sys_s_ = 0;
};

}  // namespace taskfarm
