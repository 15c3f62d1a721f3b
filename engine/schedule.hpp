#pragma once
// The dispatcher's policies without its I/O: which worker gets which tasks and when, how
// many it may hold (credit windows, --prefetch auto), how they are batched (by count and by
// encoded bytes), attempts and requeueing, retries of failed tasks, deadlines (task
// timeouts, start timeouts), liveness (heartbeats both ways), respawns, recycling (workers
// replaced at a task count or a memory size), draining, and remote workers that attach or
// vanish.
//
// Events come in as calls (a worker was spawned, said hello, sent a frame, results or
// returned tasks, exited; time passed); what the world must do goes out through
// ScheduleActions (send, kill, spawn, record). It owns no socket, no process and no clock:
// every event carries `now`. The Dispatcher's ZeroMQ loop feeds it for real; the tests
// feed it by hand and fake the actions, so every rule has a test that starts no process
// (as ninja tests its Builder and Plan with a fake CommandRunner).

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <unordered_map>
#include <vector>

#include "plan.hpp"
#include "protocol.hpp"
#include "report.hpp"
#include "errors.hpp"
#include "events.hpp"
#include "id_set.hpp"
#include "resources.hpp"
#include "running_board.hpp"

namespace taskfarm {

// --prefetch auto: a worker holds at most this many tasks...
inline constexpr std::size_t kMaxWindow = 128;
// ...and, whatever --prefetch says, no more than it should get through in this long, so
// that at the end of a run no worker sits on work another could have done.
inline constexpr std::chrono::microseconds kQueueBudget{2000};
// The budget of a type whose tasks start processes (TaskTraits::starts_processes, decision
// 237): a process start costs ~1-2 ms, so at 2 ms a worker would hold one or two such tasks and
// send a frame per result; at 20 ms it holds ~10 and its results travel in batches (the
// worker's executor sends them once its queue runs low), a fraction of the thread wake-ups per
// task, for at most 20 ms of queued work at the end of a run (a task that runs past 20 ms has
// the ones queued behind it given back).
inline constexpr std::chrono::microseconds kCommandQueueBudget{20000};

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
    std::uint32_t retries = 0;  // --retries: a failed task runs up to this many more times (see engine_retries)
    // Recycling: a local worker that has run this many tasks (0: no limit), or whose resident
    // memory, as it reports it, passes this many bytes (0: no limit), finishes what it holds,
    // is shut down and replaced; not a death, and charged to no task's attempts.
    std::uint64_t max_tasks_per_worker = 0;
    std::uint64_t max_worker_memory = 0;
    // How long past its deadline a task may take to stop in its worker before the worker is
    // called stuck and killed: the grace a task's process group gets from SIGTERM to SIGKILL
    // (command_groups::grace), to which the schedule adds a second for the result to come.
    std::chrono::milliseconds stop_grace{2000};
    // What the local workers have, together (docs/resources.md): a task that asks for
    // resources (TaskSpec::resources) goes only to a local worker that holds no task, once
    // all it asks for is free, and holds it until its result. Null: none at all.
    std::shared_ptr<const LocalResources> resources{};
    // An allocator starts remote workers as tasks wait (--alloc), or a server's remote workers
    // may attach at any time (serve --listen): a run with no worker waits for one, as long as it
    // takes, instead of wait_remote; an allocator's no_more_workers() ends the wait.
    bool workers_on_demand = false;
    // How much work a worker may hold queued (see kQueueBudget).
    std::chrono::microseconds queue_budget = kQueueBudget;
    // The `workers` local workers are spawned one at a time, each when a task waits and no
    // worker can take it (every one holds its limit, none is still starting), instead of all
    // at the start: as many as the work has needed at once, at most `workers`.
    bool spawn_on_demand = false;
};

// A connected worker: its ZeroMQ routing id.
using PeerId = std::string;

// One hand-out of one task.
struct Attempt {
    std::size_t index;     // the task's id, its place in the plan: Schedule::task(index) gives it
    std::uint32_t number;  // 1 for the first
    std::chrono::steady_clock::time_point sent{};  // when it was handed to a worker; unset while pending
};

// How a remote worker reached us (from the frame's metadata); local workers have none.
struct RemotePeer {
    std::string user;     // the Listener's User-Id: "CURVE key 'w1'", "plaintext"
    std::string address;  // Peer-Address, or empty
};

// What the schedule asks of the world. The Dispatcher does it with a ROUTER socket, a
// ProcessPool and a ModeRecorder; tests fake it. Calls never come back into the schedule.
class ScheduleActions {
public:
    virtual ~ScheduleActions() = default;
    // Starts a local worker process called `name` (pinned to `cpu` if >= 0); returns its pid.
    // Throws when it cannot.
    virtual pid_t spawn(const std::string& name, int cpu) = 0;
    // SIGKILLs and reaps a local worker process of ours.
    virtual void kill(pid_t pid) = 0;
    // What a local worker process of ours that has ended (exited, or kill()ed) was running,
    // as it recorded it itself (its RunningBoard); Known::No where nothing says.
    virtual LastRunning last_running(pid_t /*pid*/) { return {}; }
    // SIGKILLs process group `group`: one a task of a local worker of ours reported running (in
    // its heartbeats) when the worker was lost or the run ended (decision 116).
    virtual void kill_group(pid_t /*group*/) {}
    // Sends `attempts` to `peer` in one frame, to run in this order. False: the peer is gone.
    virtual bool send_tasks(const PeerId& peer, std::span<const Attempt> attempts) = 0;
    virtual bool send_heartbeat(const PeerId& peer) = 0;  // false: the peer is gone
    virtual void send_shutdown(const PeerId& peer) = 0;
    // A task's final result.
    virtual void record(const TaskSpec& task, TaskResult result) = 0;
    // A failed attempt of `task` that runs again (--retries); not its final result.
    virtual void record_retry(const TaskSpec&, TaskResult) {}
    // Asks `peer` to cancel these attempts it holds (`coordinator cancel`); each comes back
    // as a result.
    virtual void send_cancel(const PeerId& /*peer*/, std::span<const Attempt> /*attempts*/) {}
    // A worker was shut down to be replaced at a limit (recycling), for the report.
    virtual void recycled(const std::string& /*worker*/, const std::string& /*reason*/) {}
    // A worker started, exited or lost a task, for --trace and --timeline.
    virtual void note(RunEvent event) = 0;
    // `worker` began `task` at `at`, as far as the schedule can tell (see Worker::running_since):
    // for the live view. Most fakes ignore it.
    virtual void started(const std::string& /*worker*/, const TaskSpec& /*task*/, std::uint32_t /*attempt*/,
                         std::chrono::steady_clock::time_point /*at*/) {}
    // Where a worker runs, and how many took part (for the report).
    virtual void place(const Placement& placement, int connected) = 0;
    // The first tasks go out after a wait for remote workers: the mode's clock starts now.
    virtual void restart_clock() = 0;
    // `when` on the clock of the mode, for events that refer back to it.
    virtual double seconds_at(std::chrono::steady_clock::time_point when) const = 0;
};

// Encoded size of one task as it would travel in a `tasks` frame.
using TaskBytes = std::function<std::size_t(const TaskSpec&, std::uint32_t attempt)>;
// The real one: encodes the task.
std::size_t encoded_task_bytes(const TaskSpec& task, std::uint32_t attempt);

class Schedule {
public:
    using Clock = std::chrono::steady_clock;

    // `plan` and `actions` must outlive the schedule. `stop` (SIGINT) stops replacing workers.
    Schedule(const Plan& plan, DispatchOptions options, ScheduleActions& actions, Clock::time_point now,
             std::stop_token stop = {}, TaskBytes task_bytes = encoded_task_bytes,
             std::size_t max_batch_bytes = proto::kMaxBatchBytes);

    // Events. Each may call actions before it returns; none blocks. Throw RunError when the
    // run cannot go on (a worker never came up, remote workers did not attach).
    void hello(const PeerId& peer, const proto::Hello& hello, const std::optional<RemotePeer>& remote,
               Clock::time_point now);
    void frame(const PeerId& peer, Clock::time_point now);  // any frame: a sign of life
    void result(const PeerId& peer, const proto::Result& result, Clock::time_point now);
    // The same, taking the result's strings and value rather than copying them.
    void result(const PeerId& peer, proto::Result&& result, Clock::time_point now);
    void returned(const PeerId& peer, const proto::Returned& returned, Clock::time_point now);
    void heartbeat(const PeerId& peer, const proto::Heartbeat& heartbeat, Clock::time_point now);
    // SIGTERM: no task is handed out any more; the run is done once no worker holds one.
    // What was not handed out, or was handed back, has no result (--resume runs it).
    void drain(Clock::time_point now);
    // `coordinator cancel`: task `id` is recorded as cancelled, at once if it was not handed
    // out, else when its worker answers the cancel it is sent; never retried. A task done or
    // not in the plan is logged and left alone. Says what it did, for the one who asked.
    struct Cancelled {
        bool cancelled = false;  // it is, or will be, recorded as cancelled (unless it finishes ok first)
        std::string what;
    };
    Cancelled cancel(TaskId id, Clock::time_point now);
    void exited(pid_t pid, const std::string& reason, Clock::time_point now);  // a process of ours
    // No remote worker will attach any more (the Slurm job step that started them ended):
    // once no worker is left, the tasks not done fail at once, "not run: REASON", instead of
    // after --wait-workers. Before the first task it throws RunError with the reason.
    void no_more_workers(const std::string& reason);
    // Time passed: spawns the next initial worker, checks deadlines and liveness (every
    // kWatchInterval), heartbeats (every heartbeat_interval), and hands out tasks.
    void tick(Clock::time_point now);

    // Readable when the plan's next line, awaited from a slow producer (standard input, a
    // FIFO), may have come: tick() then hands it out. -1 while none is awaited.
    int plan_ready_fd() const;
    // When tick() next has something to do; `now` while initial workers remain to spawn.
    Clock::time_point next_deadline() const;
    // Every task has its final result and every worker we spawned at the start said hello;
    // or, draining, no worker holds a task.
    bool done() const;
    // Sends SHUTDOWN to every connected worker.
    void shutdown_workers();
    // The run is over and its local workers are gone: the process groups of their tasks that
    // they reported last get SIGKILL (kill_group), in case a worker died with the guardian of
    // a task's group and left the group running.
    void end_commands();
    // What an allocator of remote workers (--alloc) goes by: the tasks that wait for a worker
    // (none while draining), and each connected remote worker's name and the tasks it holds.
    struct RemoteLoad {
        std::size_t waiting = 0;
        // False for a plan without a count (a Farm's submits, standard input) while tasks are
        // still to come: `waiting` is then only "some", a stand-in, never a number to print.
        bool counted = true;
        std::vector<std::pair<std::string, std::size_t>> workers;
    };
    RemoteLoad remote_load() const;
    // The worker's name, or nullopt for a peer that has not said hello.
    std::optional<std::string> name_of(const PeerId& peer) const;
    std::size_t finished() const { return finished_; }
    // A task handed out and not finished (in flight or to be retried), or the next to go out.
    const TaskSpec& task(std::size_t index) const { return live_.at(index); }
    // Why the plan stopped giving tasks before its end (a bad line of standard input), if
    // it did: the tasks after it are not run, the run is done once those before it are.
    const std::optional<std::string>& plan_error() const { return plan_error_; }

    // How often deadlines and liveness are checked: how soon a silent worker or a late
    // task is noticed past its limit.
    static constexpr auto kWatchInterval = std::chrono::milliseconds(20);

private:
    struct Worker {
        std::string name;               // from HELLO, "w3"
        pid_t pid = 0;                  // from HELLO; ours if we spawned it
        int cpu = -1;                   // pinned CPU, -1 if none
        std::deque<Attempt> in_flight;  // sent, no result yet, in the order sent; requeued if it is lost
        Clock::time_point last_seen;    // any frame counts as a heartbeat
        // When in_flight.front() started, as far as we can tell: a worker runs its tasks one
        // at a time in the order sent, so the next starts when it is sent or when the one
        // before it ends, whichever is later.
        Clock::time_point running_since;
        bool remote = false;        // attached by hand over tcp: ours to requeue from, not to kill or replace
        bool delivered = false;     // has sent a result: until then it may hold one task only
        std::string host;           // from HELLO, printable: where its results ran (TaskCost::host)
        std::uint64_t ran = 0;      // results it sent (recycling counts them)
        std::uint64_t rss = 0;      // resident bytes, as it last reported; 0: not known
        std::string retiring;       // why it is to be recycled once it holds no task; empty: not
        std::vector<pid_t> groups;  // its tasks' process groups, as it last reported; only ours are kept
    };
    // A worker of ours that was told to shut down to be recycled: replaced when it exits.
    struct Retired {
        std::string name;
        int cpu = -1;
        Clock::time_point since;
    };
    struct Spawned {
        std::string name;
        int cpu = -1;  // asked to pin it to; -1: not pinned
        Clock::time_point started;
        bool said_hello = false;
    };

    void spawn(const std::string& name, int cpu, Clock::time_point now);
    // The next of the initial workers to spawn: all at the start, or with spawn_on_demand
    // when a task waits for one (spawns_now()).
    void spawn_next(Clock::time_point now);
    // Whether the next initial worker is to be spawned now: one per tick at the start; with
    // spawn_on_demand, when the last dispatch left a task no worker could take and none is
    // starting. Never while draining or stopping.
    bool spawns_now() const;
    // Every process of ours said hello (none is starting).
    bool every_spawned_said_hello() const { return starting_ == 0; }
    // Erases a process of ours, keeping starting_.
    void forget_spawned(std::map<pid_t, Spawned>::iterator spawned);
    void start_dispatching(Clock::time_point now);
    void watch_start(Clock::time_point now);
    void watch_liveness(Clock::time_point now);
    void watch_overruns(Clock::time_point now);
    void watch_remote(Clock::time_point now);
    void send_heartbeats(Clock::time_point now);
    void dispatch(Clock::time_point now);
    std::size_t window() const;                     // tasks each worker may hold now
    std::size_t limit(const Worker& worker) const;  // tasks this worker may hold now
    // Tasks not yet sent: the retries, then the fresh ones (an estimate while their number
    // is not known: kUnknownFresh).
    std::size_t pending() const;
    bool has_fresh() const;     // the cursor has a task not yet taken (made now, into live_)
    bool all_finished() const;  // every task of the plan has its final result
    Attempt& peek_pending();    // pending() > 0
    void pop_pending();
    void retire(std::size_t index);  // the task has its final result
    void send_tasks(std::map<PeerId, Worker>::iterator target, std::size_t count, Clock::time_point now);
    void front_started(const Worker& worker, Clock::time_point now);  // in_flight.front() runs from now
    // The one place a worker is lost (death, exit, silence, disconnection, an overrun):
    // the attempt it had started is charged (retry_or_fail), every other task it held goes
    // back to the queue as it was (requeue). `running_done`: the running attempt has its
    // result already (an overrun), so none of those left is charged.
    void lose_worker(const PeerId& peer, const std::string& reason, Clock::time_point now, bool running_done = false);
    void requeue(const Attempt& attempt, const std::string& worker);  // never started: same attempt
    void kill_groups(const Worker& worker);                           // see end_commands()
    void lose_unconnected(pid_t pid, const std::string& reason, Clock::time_point now);
    void replace(const std::string& name, int cpu, Clock::time_point now, bool counted = true);
    void check_recycle(std::map<PeerId, Worker>::iterator worker, Clock::time_point now);
    void watch_retired(Clock::time_point now);
    void retry_or_fail(const Attempt& attempt, const std::string& worker, const std::string& reason,
                       Clock::time_point now);
    void fail(const Attempt& attempt, const std::string& worker, std::string error, Clock::duration ran,
              bool cancelled = false);
    void record_cancelled(const Attempt& attempt, const std::string& worker, Clock::duration ran);
    // A pending attempt of a task cancelled (and recorded) while it was pending.
    bool skipped(const Attempt& attempt) const { return !cancelled_.empty() && cancelled_.contains(attempt.index); }
    void fail_pending(const std::string& reason);
    void fail_head(Attempt attempt, std::string error);  // the next pending attempt fails unsent
    std::size_t remote_workers() const;

    // Resources (DispatchOptions::resources). The task that asks for some waits at the head
    // of the queue until they are free (first come, first served: nothing overtakes it).
    enum class Take { Taken, Busy, Never };
    // Takes what task `index` asks for if it is all free: Taken (held until release()),
    // Busy, or Never (more than the workers have; `why` says so).
    Take take_resources(std::size_t index, std::string& why);
    // The same answer, taking nothing: Taken says all of it is free now.
    Take resources_free(std::size_t index, std::string& why);
    void release(std::size_t index);          // what task `index` holds, if anything
    bool send_asking(Clock::time_point now);  // the head asks for resources: to an idle local worker
    // Whether the next pending task could go to a worker now, a new one included (-j 0 starts
    // one only then): Waits for an earlier task (TaskSpec::after) or for resources others hold,
    // which no worker brings; Failed (recorded, popped) when a dependency failed or it asks for
    // more than the workers have; Goes otherwise. Takes nothing.
    enum class Head { Goes, Waits, Failed };
    Head judge_head();
    struct Pool {
        ResourceRequest total;          // named counts, by name
        ResourceRequest free;           // the same names, what is not held
        std::vector<std::string> gpus;  // ids
        std::vector<bool> gpu_free;
        // What is free of a named count; null for a name the workers do not have.
        ResourceAmount* free_of(const std::string& name) {
            for (ResourceAmount& amount : free)
                if (amount.name == name) return &amount;
            return nullptr;
        }
    };
    Pool& pool();                    // made at the first task that asks
    std::optional<Pool> pool_;       // see pool()
    std::set<std::size_t> holding_;  // tasks that hold resources, by id
    bool asking_head_ = false;       // the next task asks for resources the last try could not place,
                                     // or waits for earlier tasks (TaskSpec::after) still running
    // Dependencies (TaskSpec::after, earlier tasks only): one is done when it is no longer
    // live (taken from the plan, no final result yet) and has not failed. Only failures are
    // recorded, so a run without them keeps no more than it did.
    IdSet failed_;  // tasks whose final result is not ok
    // The first task of `task.after` that failed, or that has no final result yet (`waits`).
    std::optional<TaskId> unmet_dependency(const TaskSpec& task, bool& waits) const;

    const Plan& plan_;
    const DispatchOptions options_;
    ScheduleActions& actions_;
    const std::stop_token stop_;
    const TaskBytes task_bytes_;
    const std::size_t max_batch_bytes_;

    // Not yet sent: the retries and returned tasks first, then the cursor's, made as they go
    // out: only the tasks handed out and not finished are held (live_), never the plan.
    static constexpr std::size_t kUnknownFresh = std::size_t{1} << 30;
    // Whether a number of pending() tasks is one (not the stand-in for an unknown count).
    static bool counted(std::size_t pending) { return pending < kUnknownFresh; }
    std::deque<Attempt> retries_;
    mutable std::unique_ptr<TaskCursor> cursor_;
    mutable std::optional<std::size_t> peeked_;  // the cursor's next task, made and in live_, not yet taken
    mutable bool cursor_ended_ = false;
    mutable bool cursor_waiting_ = false;  // the cursor's next line has not come yet (a slow producer)
    mutable std::optional<std::string> plan_error_;
    using LiveTable = std::unordered_map<std::size_t, TaskSpec>;
    mutable LiveTable live_;  // by id: peeked, in flight or to be retried
    // Nodes of retired tasks, emptied, for has_fresh() to fill again (at most kSpareNodes).
    static constexpr std::size_t kSpareNodes = 1024;
    mutable std::vector<LiveTable::node_type> spare_;
    std::uint64_t taken_ = 0;           // fresh tasks taken from the cursor
    Attempt next_fresh_{0, 1};          // scratch for peek_pending() of a fresh task
    std::map<PeerId, Worker> workers_;  // connected: said hello, not lost
    std::map<pid_t, Spawned> spawned_;  // live processes of ours, by pid
    int starting_ = 0;                  // of spawned_, those that have not said hello
    // The last dispatch() left a task that no worker could take (all at their limit, or none);
    // true before the first, so that the first on-demand worker is spawned at once.
    bool unplaced_ = true;
    int to_spawn_ = 0;          // initial workers not spawned yet; one per tick
    std::size_t finished_ = 0;  // tasks with a final result
    std::size_t held_ = 0;      // attempts in the workers' in_flight, all together
    int respawns_ = 0;
    bool all_hello_ = false;                      // every initial worker was spawned and said HELLO
    bool some_hello_ = false;                     // a worker of ours said HELLO
    bool dispatching_ = false;                    // tasks go out: the remote workers of --expect-workers are here
    const Clock::time_point began_;               // the remote workers' deadline counts from it
    Clock::time_point alone_since_{};             // listening: since when no worker is left; unset while one is
    std::optional<std::string> no_more_workers_;  // why none will come; see no_more_workers()
    Clock::time_point next_heartbeat_;
    Clock::time_point next_watch_;
    double run_s_estimate_ = -1;  // moving average of task run times; < 0: none yet
    std::vector<Attempt> batch_;  // reused for every batch sent
    bool draining_ = false;       // drain(): nothing more is handed out
    // Cancelled (by id): recorded at once when it was queued, or when it comes up if it was not made yet,
    // else recorded as cancelled when its result or its worker's loss comes.
    std::set<std::size_t> cancelled_;
    std::map<pid_t, Retired> retired_;  // recycled, not exited yet, by pid
};

}  // namespace taskfarm
