#pragma once
// The worker's executor: runs the tasks the coordinator hands out, one at a time, on a thread
// of its own.

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <zmq.hpp>

#include "protocol.hpp"
#include "running_board.hpp"
#include "task.hpp"

namespace taskfarm {

// The inproc PAIR over which the executor wakes the socket thread when results wait.
inline constexpr const char* kResultsEndpoint = "inproc://results";

// Runs tasks one at a time on its own thread, so the socket thread keeps heartbeating.
// Results collect in an outbox; the executor wakes the socket thread (a byte over an
// inproc PAIR socket that it owns) once per batch: not while two or more tasks are queued
// behind the one that ended (they will end soon: the queue holds about kQueueBudget of
// work), so a run of short tasks costs one wake-up and one `results` frame per batch. The
// socket thread takes the outbox at every wake-up of its own (take_results()).
class Executor {
public:
    using Clock = std::chrono::steady_clock;

    // `board`, if any, says which task runs (it outlives a crash); it must outlive the executor.
    Executor(zmq::context_t& context, const Registry& registry, RunEnv env, RunningBoard* board)
        : registry_(registry),
          env_(std::move(env)),
          board_(board),
          thread_([this, &context](std::stop_token stop) { loop(stop, context); }) {
        process_cpu(shared_user_s_, shared_sys_s_);  // what starting the worker took is no task's
    }

    // The run's settings, from the coordinator's SETUP; only the first counts, and it comes
    // before any task (the tasks read them on the executor's thread).
    void set_settings(Json settings);

    void push(proto::Task&& task);
    void push(proto::TaskBatch&& batch);

    // Moves the finished results into `out` (cleared first). The tasks among them that ran
    // share the process's CPU time since the last take, in proportion to their run times:
    // one getrusage per frame, not per task (decision 201). A command's tree keeps its own.
    void take_results(std::vector<proto::Result>& out);

    // The tasks not started yet, if the running one has run longer than `limit`; they will
    // not run here. `busy` is set to how long the running one has run.
    std::vector<proto::TaskRef> give_back_if_busy_for(Clock::duration limit, Clock::duration& busy);

    bool has_queued();
    // Tasks queued, or results not taken yet.
    bool has_queued_or_results();

    // The coordinator's cancel: the running attempt among `tasks` is stopped (its result
    // comes as usual); queued ones are dropped and returned as failed results, to be sent.
    std::vector<proto::Result> cancel(const std::vector<proto::TaskRef>& tasks);

    // Cancels the running task and drops the queued ones; the destructor joins.
    void stop() { thread_.request_stop(); }

private:
    struct Queued {
        TaskSpec task;
        std::uint32_t attempt;
        std::string kind;           // the task's type name, kept for the error when this program lacks it
        std::string packed_params;  // for a PackedRun type: its params as msgpack (decision 242)
    };

    static void process_cpu(double& user_s, double& sys_s);  // this process's CPU so far
    void queue(proto::Task&& task);
    void loop(std::stop_token stop, zmq::context_t& context);
    TaskResult unknown_kind(const Queued& queued) const;

    const Registry& registry_;
    const RunEnv env_;           // all but the stop token and the settings, which the loop adds
    RunningBoard* const board_;  // or null
    std::mutex mutex_;  // guards queue_, running_since_, running_, running_stop_, settings_ and settings_received_
    Json settings_ = Json::object();
    bool settings_received_ = false;
    std::condition_variable_any ready_;
    std::deque<Queued> queue_;
    std::optional<Clock::time_point> running_since_;  // set while a task runs
    proto::TaskRef running_;                          // the attempt that runs while running_stop_ is set
    std::stop_source* running_stop_ = nullptr;        // its own stop, for a cancel
    std::mutex outbox_mutex_;
    std::vector<proto::Result> outbox_;  // finished, not yet sent
    bool woken_ = false;                 // the socket thread was woken for outbox_ and has not taken it
    // Results wait in the outbox while this many tasks or more are queued behind...
    static constexpr std::size_t kHoldWhileQueued = 2;
    // ...and fewer than this many wait.
    static constexpr std::size_t kMostHeld = 64;
    // The socket thread's: the process's user and system CPU seconds when take_results() last shared them.
    double shared_user_s_ = 0;
    double shared_sys_s_ = 0;
    std::jthread thread_;  // last: starts after the members it uses exist
};

}  // namespace taskfarm
