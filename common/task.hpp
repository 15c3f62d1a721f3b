#pragma once
// What a task is (TaskSpec), what running it produced (TaskResult), the registry of task
// types, and the one function every execution mode calls to run a task (run_task).

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include <taskfarm/task_type.hpp>

#include "resources.hpp"

namespace taskfarm {

class Gil;

// What the engine knows where a task runs, for its Context; filled by run_task() (or a test).
struct detail::ContextSetup {
    std::string_view worker{};  // "seq", "t3", "w2", or a remote worker's --name
    std::string_view mode{};    // "sequential", "threads", "gil-threads" or "processes"
    TaskId id = kNoId;
    std::uint32_t attempt = 1;  // 1 for the first try
    std::stop_token stop{};
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
    double timeout_s = 0;                                 // what the deadline came from; 0: none
    const Json* settings = nullptr;                       // null: none
    const std::filesystem::path* out_dir = nullptr;       // null: the working directory
    const std::filesystem::path* scratch_base = nullptr;  // where scratch_dir() makes its directory; null: TMPDIR
    bool isolated = false;
    void* gil_hold = nullptr;  // a Gil::Hold held by the engine around run(); null outside gil-threads mode
};

// Something a task type keeps running in the coordinator for a whole run, e.g. the built-in
// download's image server. Made by RunHooks::prepare(), destroyed after the last mode.
class RunService {
public:
    virtual ~RunService() = default;
    // Called once the coordinator has set up its signal handling: start threads here, not
    // in prepare(), so that they inherit it.
    virtual void start() {}
};

// The engine's hooks into a type that keeps something across its tasks (the built-in
// download: its image server, a connection pool per thread, libcurl): a built-in type
// derives from TaskType and from this; the engine asks run_hooks() for them.
class RunHooks {
public:
    virtual ~RunHooks() = default;
    // Called in the coordinator before a plan of this type is generated (--task NAME,
    // without --plan or --inputs); may add to the settings that generate() sees.
    virtual std::unique_ptr<RunService> prepare(Json& /*settings*/) const { return nullptr; }
    // Called on each thread that ran tasks (of any type) before it ends, and on the
    // coordinator's own thread after the sequential mode: release per-thread resources.
    virtual void thread_done() const {}
    // Called once in the fork server of a program's local workers, before it forks any of
    // them: load what the first task would, so that every worker starts with it loaded.
    // Single-threaded: start no thread here. A throw is logged at debug level and ignored.
    virtual void preload() const {}
};

// The type's RunHooks, or null for a type without any (every user's type).
inline const RunHooks* run_hooks(const TaskType& type) { return dynamic_cast<const RunHooks*>(&type); }

// A built-in type that can run a task from its params as msgpack bytes, as a worker received
// them, and give its value the same way, so that a task such as the no-op sleep costs no JSON
// at all in a worker (decision 242). The engine's, not the API's: a user's type never has it.
class PackedRun {
public:
    virtual ~PackedRun() = default;
    // Runs the task whose params are the msgpack map `params` and sets `value` (a msgpack
    // value), or returns false without running it: run() then runs it with the params as JSON.
    // Throws as run() does.
    virtual bool run_packed(std::string_view params, Context& context, std::string& value) const = 0;
};

// A built-in type that can make the params of a task it generates as msgpack bytes, for a
// cursor opened packed (PlanSource::open_packed: the schedule of processes mode), so that a
// generated no-op costs no JSON in the coordinator either (decision 316). The engine's, not
// the API's: a type of the user's own making never has it (the library's wrapper of a user's
// function does, decision 321). Its parse() must give back, from the packed params read as
// JSON, the params generate() gives: proto::params_of() reads them through it.
class PackedGenerate {
public:
    virtual ~PackedGenerate() = default;
    // The params generate() would give for `args`, as a msgpack map into `params`, drawing
    // the same numbers from args.random, byte for byte what packing generate()'s JSON writes.
    // Throws as generate() does.
    virtual void generate_packed(Generate& args, std::string& params) const = 0;
    // Whether, with these settings, every task gets the same params and generate_packed()
    // draws nothing: the cursor then makes them once and copies them for each task.
    virtual bool same_for_every_task(const Json& /*settings*/) const { return false; }
};

// The task types a program knows, by name. Filled before the run (the built-ins, then the
// user's), read-only after, so any thread may look up.
class Registry {
public:
    // Throws std::invalid_argument for a name that is taken or not [A-Za-z0-9_-]+. `builtin`:
    // one of the types the library brings (add_builtin_types), not a program's own.
    void add(std::shared_ptr<const TaskType> type, bool builtin = false);
    // Whether `type` was added as a built-in.
    bool builtin(const TaskType* type) const;
    // Null when there is none of that name.
    const TaskType* find(std::string_view name) const;
    // The type's PackedRun, or null (a user's type, a type of another registry): found when
    // the type was added, not by a dynamic_cast per task (decision 281).
    const PackedRun* packed_run(const TaskType* type) const;
    // Throws std::invalid_argument naming the known types.
    const TaskType& at(std::string_view name) const;
    // "sleep, cpu, download, fail or crash", in registration order.
    std::string names_text() const;
    const std::vector<std::shared_ptr<const TaskType>>& types() const { return types_; }
    // RunHooks::thread_done() of every type, for a thread that ran tasks and is ending.
    void thread_done() const noexcept;

private:
    std::vector<std::shared_ptr<const TaskType>> types_;  // in registration order
    std::vector<const TaskType*> builtins_;
    // Looked up once per task in a worker and per submit in a Farm: hashed, not a tree of
    // string compares (decision 267).
    struct NameHash {
        using is_transparent = void;
        std::size_t operator()(std::string_view name) const noexcept { return std::hash<std::string_view>{}(name); }
    };
    std::unordered_map<std::string, const TaskType*, NameHash, std::equal_to<>> by_name_;
    std::vector<std::pair<const TaskType*, const PackedRun*>> packed_;  // the few types that have one
};

// The registry with the built-in types (tasks/builtin.cpp).
void add_builtin_types(Registry& registry);

// --out-dir when not given, for a run of `types` (in order): the TaskTraits::out_dir of the
// first that writes files and names one, else "." (the working directory). One rule for the
// coordinator (the plan's types), serve, a Farm and a worker (every type they register).
std::filesystem::path default_out_dir(const std::vector<const TaskType*>& types);
std::filesystem::path default_out_dir(const Registry& registry);

struct TaskSpec {
    TaskId id = kNoId;
    const TaskType* type = nullptr;  // never null in a plan; owned by the Registry
    Params params{};                 // what the plan says: the journal's "params"
    double timeout_s = 0;            // fail the task when it runs longer; 0: no limit
    ResourceRequest resources{};     // what it must hold to run (processes mode); empty: nothing
    // The GPUs this attempt holds, "3,5": set by the schedule as it hands the task out, and
    // the task's CUDA_VISIBLE_DEVICES where it runs; empty: none.
    std::string gpus{};
    // Earlier tasks of the plan that must end ok before it starts (a plan line's "after",
    // processes mode); one that fails fails it, "dependency N failed", and it never runs.
    std::vector<TaskId> after{};
    // `params` as a msgpack map, `params` then null: from a cursor opened packed, whose type
    // makes them so (PackedGenerate); none for every other task. Read the two through
    // proto::params_of() where JSON is wanted (decision 316). An optional, not an empty string:
    // a TaskSpec without one copies and moves as cheaply as before (a worker copies its tasks).
    std::optional<std::string> packed_params{};
};

// What one task cost where it ran (decision 92). Measured by run_task() in every mode; a
// result the coordinator makes itself (a task given up, not sent, not run) has none.
struct TaskCost {
    enum class Scope {
        None,     // not measured
        Thread,   // the thread that ran it (RUSAGE_THREAD): sequential, threads, gil-threads
        Process,  // the worker process that ran it: processes mode; a frame of results shares
                  // the process's CPU since the last frame by run time (decision 201)
        Tree,     // the processes it started and waited for (wait4): a command's tree
    };
    Scope scope = Scope::None;
    double user_s = 0;  // CPU seconds in user mode
    double sys_s = 0;   // CPU seconds in the kernel
    // Peak resident memory in KiB, -1 when not measured: for Process the worker's high-water
    // mark, reset after each measured task and read after a task of at least
    // kPeakMinRun; for Tree the largest process of the tree; never for Thread (memory is
    // the whole process's, not a thread's).
    std::int64_t max_rss_kb = -1;
    std::string host;  // where it ran: the worker's host name (its hello), else this one's
};

// Peak memory is read after a task in a worker process only when it ran at least this long:
// reading it (/proc/self/status) costs some 10 to 40 us, more than a no-op task takes.
inline constexpr std::chrono::milliseconds kPeakMinRun{1};

// "thread", "process", "tree", "" for None.
std::string_view to_string(TaskCost::Scope scope);
// The inverse; None for anything else.
TaskCost::Scope cost_scope(std::string_view name);
// This machine's host name (gethostname), read once: the name to reach it by.
const std::string& this_host();
// The node this process runs on, read once: Slurm's node name ($SLURMD_NODENAME) inside a
// Slurm job, where one host may run several nodes and the scheduler places work by node
// name; else this_host(). Worker names, results' `host` and the journal use it.
const std::string& this_node();

struct TaskResult {
    TaskId id = kNoId;
    std::uint32_t attempt = 1;  // 1 for the first try
    const TaskType* type = nullptr;
    bool ok = false;
    std::string error;                          // one line, empty when ok
    std::string worker;                         // who ran it: "seq", "t3", "w2"
    std::chrono::duration<double> run_time{0};  // measured where the task ran
    double start_s = 0;                         // seconds since the start of the mode, set by the runner
    double end_s = 0;
    Value value;      // what TaskType::run() returned; for a failed task, TaskFailed's value or null
    TaskCost cost{};  // what it cost where it ran
    // A failed attempt that runs again (--retries): not the task's final result.
    bool retrying = false;
    bool cancelled = false;  // by `coordinator cancel`: not ok, never retried
};

// The type's name, or "?" for a result without one.
std::string kind_name(const TaskResult& result);
// The value in words for the console (TaskType::describe), "" when failed.
std::string describe_value(const TaskResult& result);

// Everything a runner's thread or a worker gives every task it runs. One per thread.
struct RunEnv {
    std::string worker{};    // goes into TaskResult::worker
    std::string mode{};      // "sequential", "threads", ...
    std::stop_token stop{};  // a requested stop cancels the running task
    // gil-threads mode: the lock all threads share; a task holds it except while it says
    // it waits (Context::waiting). Null: no lock.
    Gil* gil = nullptr;
    bool isolated = false;  // a worker process of its own (see Context::isolated)
    // The runner measures this thread's CPU per slice of tasks and shares it out (threads
    // mode, decision 150), or the worker its process's per frame of results (decision 201):
    // run_task() leaves a result's cost None unless a tree's.
    bool cost_per_slice = false;
    const Json* settings = nullptr;        // the run's settings; null: none
    std::filesystem::path out_dir{};       // Context::out_dir(); empty: the working directory
    std::filesystem::path scratch_base{};  // where Context::scratch_dir() makes its own; empty: TMPDIR
    // A worker's types: run_task() asks it for a type's PackedRun (decision 281); null: a
    // dynamic_cast finds it.
    const Registry* registry = nullptr;
};

// Runs one task to completion, failure or cancellation. Never throws: every error becomes
// TaskResult{ok = false, error}. The same function runs in every mode.
TaskResult run_task(const TaskSpec& task, std::uint32_t attempt, const RunEnv& env);
// The same in a worker for a task whose params came as msgpack (decision 242): `packed_params`
// (a map; `task.params` is then empty) go to the type's PackedRun::run_packed() if it has one,
// which sets `packed_value` (the result's value then null), and to run() as JSON otherwise.
// `started`, when given, is the caller's clock read for the task's start (the worker's, which
// also marks it running): run_task then reads the clock once, at the end (decision 302).
TaskResult run_task(const TaskSpec& task, std::uint32_t attempt, const RunEnv& env, std::string_view packed_params,
                    std::string& packed_value, std::chrono::steady_clock::time_point started = {});

}  // namespace taskfarm
