#pragma once
// The coordinator's side of the protocol: a ROUTER socket, one WorkerState per connected
// worker, credits (at most --prefetch tasks per worker), heartbeats both ways, and
// requeueing the tasks of a worker that died or went silent. Workers started by hand on other
// machines (remote: their frames come through the tcp Listener, which names them in the
// "User-Id" metadata) take part like local ones, but are never killed or replaced: losing
// one only requeues its tasks. Single-threaded: the
// socket never leaves the thread that runs the dispatcher. Worker starts, exits and
// requeues go to the recorder as RunEvents, for --trace and --timeline.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "plan.hpp"
#include "process_pool.hpp"
#include "protocol.hpp"
#include "runner.hpp"

namespace taskfarm {

// The run cannot go on: e.g. a worker never came up.
struct RunError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct DispatchOptions {
    int workers = 1;
    // The most tasks a worker may hold at once; 0 (auto): kMaxWindow. It holds fewer while
    // tasks are long: one until the first result, then as many as it runs in about
    // kQueueBudget, by a moving average of the task times so far.
    int prefetch = 0;
    std::chrono::milliseconds heartbeat_interval{200};
    std::chrono::milliseconds heartbeat_timeout{2000};
    std::chrono::milliseconds start_timeout{10000};
    std::uint32_t max_attempts = 3;
    int max_respawns = 100;
    std::vector<int> cpus{};  // worker i (and its replacements) pinned to cpus[i % size]; empty: not pinned
    // Remote workers (--listen). With listening, a run whose workers are all gone waits
    // wait_remote for one to attach before failing what is left.
    bool listening = false;
    int expect_remote = 0;                         // remote workers to wait for before the first task
    std::chrono::milliseconds wait_remote{60000};  // how long they may take (RunError after)
    Json settings = Json::object();                // sent to each worker in SETUP, after its HELLO
};

// --prefetch auto: a worker holds at most this many tasks...
inline constexpr std::size_t kMaxWindow = 128;
// ...and, whatever --prefetch says, no more than it should get through in this long, so
// that at the end of a run no worker sits on work another could have done.
inline constexpr std::chrono::microseconds kQueueBudget{2000};

class Dispatcher {
public:
    Dispatcher(zmq::socket_t& router, ProcessPool& pool, const Plan& plan, ModeRecorder& recorder,
               DispatchOptions options, std::stop_token stop);

    // Spawns the workers and runs until every task has its final result or `stop` fires.
    // Throws RunError when the initial workers do not all say HELLO in time, or fewer than
    // expect_remote remote workers attach within wait_remote.
    void run();

    // Sends SHUTDOWN to every connected worker.
    void shutdown_workers();

private:
    using Clock = std::chrono::steady_clock;

    struct Attempt {
        std::size_t index;  // into plan.tasks
        std::uint32_t number;
        Clock::time_point sent{};  // when it was handed to a worker; unset while pending
    };
    struct WorkerState {
        std::string name;                  // from HELLO, "w3"
        pid_t pid = 0;                     // from HELLO; ours if the pool spawned it
        int cpu = -1;                      // pinned CPU, -1 if none
        std::deque<Attempt> in_flight;     // sent, no RESULT yet, in the order sent; requeued if it dies
        Clock::time_point last_seen;       // any frame counts as a heartbeat
        // When in_flight.front() started, as far as we can tell: a worker runs its tasks one
        // at a time in the order sent, so the next starts when it is sent or when the one
        // before it ends, whichever is later.
        Clock::time_point running_since;
        bool remote = false;  // attached by hand over tcp: ours to requeue from, not to kill or replace
    };
    struct Spawned {
        std::string name;
        int cpu = -1;  // asked to pin it to; -1: not pinned
        Clock::time_point started;
        bool said_hello = false;
    };
    struct RejectLog {
        Clock::time_point last;
        std::size_t suppressed = 0;
    };

    void spawn(const std::string& name, int cpu);
    void drain_incoming();
    void on_frame(const std::string& identity, const zmq::message_t& body);
    void on_hello(const std::string& identity, const proto::Hello& hello, const zmq::message_t& body);
    void start_dispatching();
    void watch_remote();
    std::size_t remote_workers() const;
    void on_result(const std::string& identity, const proto::Result& message);
    void on_results(const std::string& identity, const proto::ResultBatch& batch);
    void on_returned(const std::string& identity, const proto::Returned& message);
    bool take_result(WorkerState& worker, const proto::Result& message);  // false: not one it holds
    void reject(const std::string& identity, const std::string& reason);
    void watch_processes();
    void watch_deadlines();
    void watch_overruns();
    void send_heartbeats();
    void dispatch();
    std::size_t window() const;  // tasks each worker may hold now
    std::size_t pending() const { return retries_.size() + (plan_.tasks.size() - next_index_); }
    Attempt next_pending();      // pending() > 0
    void send_tasks(std::map<std::string, WorkerState>::iterator target, std::size_t count);
    void lose_worker(const std::string& identity, const std::string& reason);
    void lose_unconnected(pid_t pid, const std::string& reason);
    void replace(const std::string& name, int cpu);
    void retry_or_fail(Attempt attempt, const std::string& worker, const std::string& reason);
    void fail_pending(const std::string& reason);
    bool send(const std::string& identity, std::string_view frame);
    std::string identity_of(pid_t pid) const;

    zmq::socket_t& router_;
    ProcessPool& pool_;
    const Plan& plan_;
    ModeRecorder& recorder_;
    const DispatchOptions options_;
    const std::stop_token stop_;

    // Not yet sent: the retries and returned tasks first, then plan.tasks[next_index_...].
    std::deque<Attempt> retries_;
    std::size_t next_index_ = 0;
    std::map<std::string, WorkerState> workers_;  // by ZeroMQ routing id
    std::map<pid_t, Spawned> spawned_;            // live processes of ours, by pid
    std::map<std::string, RejectLog> rejects_;    // rate-limits rejection logs per peer
    std::size_t finished_ = 0;                    // tasks with a final result
    int respawns_ = 0;
    bool all_hello_ = false;                      // set once every initial worker said HELLO
    bool dispatching_ = false;                    // tasks go out: the remote workers of --expect-workers are here
    Clock::time_point next_heartbeat_;
    Clock::time_point began_;                     // when run() began: the remote workers' deadline counts from it
    Clock::time_point alone_since_{};             // listening: since when no worker is left; unset while one is
    Clock::time_point next_watch_;                // processes and deadlines are checked this often
    double run_s_estimate_ = -1;                  // moving average of task run times; < 0: none yet
    proto::TaskBatch batch_;                      // reused for every batch sent
    std::string frame_;
    const std::string setup_frame_;  // SETUP with options_.settings, the same for every worker
};

}  // namespace taskfarm
