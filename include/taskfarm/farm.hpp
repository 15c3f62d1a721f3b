#pragma once
// A farm that a program drives from its own main(): register task types, submit tasks while
// others run, and take each result back, typed, as it completes. It runs on the engine the
// coordinator runs on (processes mode's dispatcher and workers, or the threads and sequential
// runners), with its guarantees: a worker killed mid-task has its tasks requeued, failed tasks
// run again (retries), timeouts, recycling, a journal (a --results file). The program is its
// own worker (`PROGRAM worker ...`). See docs/api.md.
//
//   int main(int argc, char** argv) {
//       taskfarm::Farm farm{{.workers = 4}};
//       farm.task("square", [](const taskfarm::Params& p, taskfarm::Context&) {
//           return taskfarm::Value(p.at("x").get<long>() * p.at("x").get<long>());
//       });
//       if (farm.is_worker(argc, argv)) return farm.run_worker(argc, argv);
//       for (long x = 0; x < 1000; ++x) farm.submit("square", {{"x", x}});
//       long sum = 0;
//       for (const auto& result : farm.as_completed<long>()) sum += result.value();
//       std::printf("%ld\n", sum);
//   }

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "app.hpp"
#include "task_type.hpp"

namespace taskfarm {

// Where a farm's tasks run.
enum class FarmMode {
    Processes,   // worker processes of this program (`PROGRAM worker ...`), each task in a process
    Threads,     // a pool of threads in this process
    Sequential,  // one thread of this process, one task at a time
};

// A Slurm job step of workers (the coordinator's `--launch slurm`): the farm runs one `srun`
// whose tasks are this program's workers (`PROGRAM worker --connect ...`), connecting back
// over tcp with CurveZMQ keys made for the run (in a directory under the working directory,
// which the nodes share; removed at the end). Inside an allocation srun uses its CPUs;
// outside one it allocates them itself (`args` says how, e.g. "--partition debug").
struct SlurmStep {
    int tasks = 0;       // workers (srun --ntasks); 0: $SLURM_NTASKS
    std::string args{};  // srun's options before the worker's command, split as a shell would
    bool pin = false;    // srun --cpu-bind=cores
};

// An mpirun job of workers (the coordinator's --launch mpirun, Open MPI or MPICH): the farm
// runs one `mpirun -n TASKS` whose ranks are this program's workers, connecting back over tcp
// with CurveZMQ keys made for the run (in a directory under the working directory, which the
// hosts share; removed at the end).
struct MpirunStep {
    int tasks = 0;       // workers (mpirun -n): at least 1, the slots of the job (e.g. $NSLOTS, $PBS_NP)
    std::string args{};  // mpirun's options before the worker's command ("--hostfile hosts"), split as a shell would
    bool pin = false;    // mpirun -bind-to core
};

// Slurm allocations on demand (the coordinator's --alloc slurm, docs/cluster.md): while tasks
// wait for a worker, the farm submits allocations with `sbatch`, each one `srun` step of
// `workers` workers of this program that connect back with keys made for the run; an idle
// one is cancelled, and the farm's end cancels those left.
struct SlurmAllocations {
    std::string time{};  // each allocation's time limit (sbatch --time, needed): "30", "2:00:00", "1-0"
    int workers = 1;     // workers per allocation (sbatch --ntasks, one CPU each)
    int max_allocs = 1;  // allocations of the farm at once, queued ones included
    std::string args{};  // more sbatch options, after taskfarm's own (yours win), split as a shell would
};

// Progress on stderr (the coordinator's --progress): Auto draws a bar redrawn in place where
// stderr is a terminal whose TERM is not "dumb", and logs a line every progress_interval_s
// elsewhere (a pipe, a file); Always draws the bar wherever stderr goes; Never shows none.
enum class FarmProgress { Never, Auto, Always };

struct FarmOptions {
    FarmMode mode = FarmMode::Processes;
    int workers = 4;  // worker processes or threads
    // A JSON Lines journal of every result (the coordinator's --results FILE): appended to,
    // locked while the farm runs. Empty: none.
    std::filesystem::path journal{};
    // Resume from the journal (when it exists): a task submitted whose type and parameters are
    // ok in it is not run again; its result, from the journal, is delivered as if it had run
    // (same id, value and attempts). Each ok line stands for one submit. The farm's settings
    // must be those the journal's last run recorded, or the first submit throws
    // std::invalid_argument naming the setting. New tasks' ids follow the journal's.
    bool resume = false;
    // A failed task runs up to this many more times (--retries); a type that retries inside its
    // task (download) reads it as its own count. Unset: no reruns, and download's default (2).
    std::optional<std::uint32_t> retries{};
    double timeout_s = 0;                    // a task running longer fails; 0: no limit (submit may say otherwise)
    std::uint64_t max_tasks_per_worker = 0;  // recycle a worker process after this many tasks; 0: never
    std::uint64_t max_worker_memory = 0;     // ... or past this many resident bytes; 0: never
    int max_attempts = 3;                    // tries of a task whose worker died under it
    // Heartbeats both ways between the farm and each worker process: one silent for the timeout
    // (a hung or unplugged machine, a stopped process) is lost, its tasks requeued (as the
    // coordinator's --heartbeat-interval and --heartbeat-timeout; at least two fit in a timeout).
    double heartbeat_interval_s = 0.2;
    double heartbeat_timeout_s = 2.0;
    Json settings = Json::object();  // Context::settings() of every task
    // submit() waits when this many submitted tasks have not been handed to a worker yet
    // (until half of them have been), so that a program submitting a million tasks holds a
    // bounded queue.
    std::size_t max_queued = 10'000;
    std::string log_level{};  // the workers' and the engine's spdlog level; empty: SPDLOG_LEVEL or info
    // Where tasks save files: Context::out_dir() is OUT_DIR/<mode> ("processes", ...), as the
    // coordinator's --out-dir. Empty: the TaskTraits::out_dir of the first registered type that
    // writes files and names one (the built-ins come first: download's "downloads").
    std::filesystem::path out_dir{};

    // Remote workers (FarmMode::Processes only; see docs/multihost.md): workers on other
    // machines, this same program started there as `PROGRAM worker --connect ENDPOINT --keys
    // DIR`, join the farm's local ones. `listen`: the tcp endpoint to bind ("tcp://*:5555";
    // port * picks a free one, and endpoint() says which). `keys`: a `coordinator keygen`
    // directory (CurveZMQ: the farm admits only workers holding an authorised key);
    // `authorized`: a directory of more worker keys (NAME.public); `insecure`: plaintext,
    // without keys. `expect_workers`: remote workers to wait for (up to `wait_workers_s`)
    // before the first task; with `workers = 0` (remote workers only) at least 1.
    std::string listen{};
    std::filesystem::path keys{};
    std::filesystem::path authorized{};
    bool insecure = false;
    int expect_workers = 0;
    double wait_workers_s = 60;  // also how long a farm with no worker left waits for one
    // Progress on stderr: tasks done of those handed to the workers so far, failures, tasks/s,
    // elapsed time, ETA ("processes [####------]  400/1000  ..."). Log lines go above the bar.
    FarmProgress progress = FarmProgress::Never;
    double progress_interval_s = 5;  // between two progress lines where there is no bar
    // The stop signals as the coordinator takes them: SIGTERM or SIGHUP drains (no task starts
    // any more, the running ones finish; after drain_timeout_s they are cancelled), SIGINT or
    // SIGQUIT stops (the running tasks are cancelled); a second one stops at once. Then next()
    // and submit() throw std::runtime_error ("the farm stopped: SIGTERM ..."), signal() says
    // which came (main() returns 128 + it, as the coordinator exits), and the journal holds
    // what finished, for a resume. The farm takes them from its first submit until it is
    // closed or destroyed, on any thread, through handlers of its own (an ignored one stays
    // ignored); no thread of the program's has its signal mask changed.
    bool signals = false;
    double drain_timeout_s = 25;
    // The live view (the coordinator's --ui): a page of the running tasks, one lane per worker,
    // in the browser, served on "[ADDR:]PORT" (ADDR 127.0.0.1 when absent; PORT 0 picks a free
    // one) from the first submit until the farm is destroyed; ui_url() says where, with the
    // secret path without which the page is refused. Empty: none.
    std::string ui{};

    // A Slurm job step of `slurm->tasks` workers instead of local ones (`workers` is not used):
    // see SlurmStep. `listen` may name the address the nodes reach (default: this machine's
    // first non-loopback address, port *); `keys`, `insecure` and `expect_workers` may not be given.
    std::optional<SlurmStep> slurm{};
    // An mpirun job of `mpirun->tasks` workers instead of local ones, as `slurm` (its rules too).
    std::optional<MpirunStep> mpirun{};
    // Workers in Slurm allocations submitted while tasks wait, instead of local ones (`workers`
    // is not used); `listen` as for `slurm`, whose other rules hold too; `wait_workers_s` is also
    // how long sbatch may keep failing with no allocation and no worker before the farm stops.
    std::optional<SlurmAllocations> alloc{};
};

// A task that did not succeed, as the program sees it: Result::value() throws it.
class TaskError : public std::runtime_error {
public:
    TaskError(TaskId id, std::string type, const std::string& reason, std::uint32_t attempts, bool cancelled,
              Value value);
    TaskId id() const { return id_; }
    const std::string& type() const { return type_; }
    // Why it failed: the exception's what(), "timed out after 2 s", "worker w1 died: signal 9",
    // "cancelled" ... (what() says the same, with the task's id and type).
    const std::string& reason() const { return reason_; }
    std::uint32_t attempts() const { return attempts_; }  // how many times it ran
    bool cancelled() const { return cancelled_; }
    // The exit status of a command that failed ("exit_code" in its value); nullopt otherwise.
    std::optional<int> exit() const;
    // What the failed task left (TaskFailed's value), or null.
    const Value& value() const { return value_; }

private:
    TaskId id_;
    std::string type_;
    std::string reason_;
    std::uint32_t attempts_;
    bool cancelled_;
    Value value_;
};

namespace detail {
struct Outcome {
    TaskId id = kNoId;
    std::string type;
    bool ok = false;
    std::uint32_t attempts = 1;
    bool cancelled = false;
    std::string error;
    Value value;
    [[noreturn]] void raise() const;
};
}  // namespace detail

// One task's result, its value read as T (T from JSON: nlohmann's get<T>(), so a struct with
// from_json works; Value keeps it as JSON).
template <class T = Value>
class Result {
public:
    explicit Result(std::shared_ptr<const detail::Outcome> outcome) : outcome_(std::move(outcome)) {}
    TaskId id() const { return outcome_->id; }
    const std::string& type() const { return outcome_->type; }
    bool ok() const { return outcome_->ok; }
    std::uint32_t attempts() const { return outcome_->attempts; }
    // The value as T; throws TaskError for a task that failed (and nlohmann::json's
    // type_error for a value that is not a T).
    T value() const {
        if (!outcome_->ok) outcome_->raise();
        if constexpr (std::is_same_v<T, Value>)
            return outcome_->value;
        else
            return outcome_->value.template get<T>();
    }
    // The value as JSON, whether ok or not (a failed task's is TaskFailed's, or null).
    const Value& json() const { return outcome_->value; }
    // The error of a failed task (as value() would throw it); throws std::logic_error when ok.
    TaskError error() const {
        if (outcome_->ok) throw std::logic_error("the task succeeded: it has no error");
        return {outcome_->id,       outcome_->type,      outcome_->error,
                outcome_->attempts, outcome_->cancelled, outcome_->value};
    }
    template <class U>
    Result<U> as() const {
        return Result<U>(outcome_);
    }

private:
    std::shared_ptr<const detail::Outcome> outcome_;
};

// What submit() gives back: the task's id, the same as Result::id() and the journal's "id".
struct TaskHandle {
    TaskId id = kNoId;
};

class Farm {
public:
    explicit Farm(FarmOptions options = {});
    // Closes the farm: waits for the tasks submitted to finish (their results not taken are
    // dropped), stops the workers.
    ~Farm();
    Farm(const Farm&) = delete;
    Farm& operator=(const Farm&) = delete;

    // Registers a function or a type as App does (before the first submit; the same in the
    // program's worker side). Throws std::invalid_argument as App::task() does.
    Farm& task(const std::string& name, TaskFunction fn, TaskOptions options = {});
    Farm& add(std::shared_ptr<const TaskType> type);
    // `fn(const P&, Context&)` with typed parameters, as App::task<P>(): a bad parameter
    // fails submit() naming the field.
    template <class P, class Fn>
    Farm& task(const std::string& name, Fn fn, TaskOptions options = {}) {
        return add(std::make_shared<TypedFunctionType<P, Fn>>(name, std::move(fn), std::move(options)));
    }

    // Whether this process was started as one of the farm's workers (`PROGRAM worker ...`);
    // then run_worker() is all main() does, with the same types registered.
    static bool is_worker(int argc, const char* const* argv);
    int run_worker(int argc, const char* const* argv);

    // Queues a task of type `type` with `params` (checked by the type's parse(): a bad one
    // throws std::invalid_argument naming the field, before anything runs). The first call
    // starts the workers. Waits while max_queued tasks wait for a worker. Thread-safe: a
    // program may submit from anywhere, while results come back.
    TaskHandle submit(const std::string& type, Params params, double timeout_s = -1);
    // Submits one task per element of `range` (params_of(element) its parameters) and hands
    // each result to `on_result` as it completes (on the calling thread), until every one is
    // in; `on_result` may submit more (they are waited for too). Memory stays flat in the
    // range's size: at most max_queued tasks wait, and results are handed over, not kept.
    template <class Range, class ParamsOf, class OnResult>
    void map(const std::string& type, const Range& range, ParamsOf params_of, OnResult on_result);

    // The next result to complete, of any task submitted and not yet taken; waits for it.
    // nullopt when every task submitted has been taken.
    std::optional<Result<>> next();
    // next() without waiting: nullopt when none is complete now.
    std::optional<Result<>> try_next();
    // The results of every task submitted and not yet taken, in completion order, including
    // tasks submitted while iterating; ends when none is left.
    template <class T = Value>
    class Completed;
    template <class T = Value>
    Completed<T> as_completed() {
        return Completed<T>(*this);
    }
    // Waits until every task submitted has completed (their results wait for next()).
    void wait();
    // Cancels a task: one not started never runs, a running one is stopped (through its
    // stop token); its result is a failure with cancelled(). False if it already completed.
    bool cancel(TaskHandle task);
    // The tcp endpoint remote workers connect to (`listen` with its real port; a wildcard
    // address as this machine's name), once the workers have started (at the first submit):
    // waits until it is bound. Empty for a farm without `listen` or `slurm`, or not started.
    // Throws std::runtime_error when the farm stopped before binding (e.g. the address is taken).
    std::string endpoint() const;
    // The live view's address (FarmOptions::ui), with its secret path: "http://HOST:PORT/TOKEN/".
    // Empty for a farm without `ui`, or before the first submit started it.
    std::string ui_url() const;
    // The first stop signal the farm took (FarmOptions::signals), 0 if none.
    int signal() const;
    // Tasks submitted whose results have not been taken.
    std::uint64_t outstanding() const;
    // Lets the running tasks finish and stops the workers; submit() throws afterwards.
    void close();

    class Impl;

private:
    std::unique_ptr<Impl> impl_;
};

template <class T>
class Farm::Completed {
public:
    explicit Completed(Farm& farm) : farm_(farm) {}
    class iterator {
    public:
        using value_type = Result<T>;
        using difference_type = std::ptrdiff_t;
        iterator() = default;
        explicit iterator(Farm* farm) : farm_(farm) { ++*this; }
        const Result<T>& operator*() const { return *current_; }
        const Result<T>* operator->() const { return &*current_; }
        iterator& operator++() {
            auto next = farm_->next();
            if (next)
                current_.emplace(next->template as<T>());
            else
                current_.reset();
            return *this;
        }
        void operator++(int) { ++*this; }
        bool operator==(const iterator& other) const { return !current_ && !other.current_; }

    private:
        Farm* farm_ = nullptr;
        std::optional<Result<T>> current_;
    };
    iterator begin() { return iterator(&farm_); }
    iterator end() { return {}; }

private:
    Farm& farm_;
};

template <class Range, class ParamsOf, class OnResult>
void Farm::map(const std::string& type, const Range& range, ParamsOf params_of, OnResult on_result) {
    for (const auto& element : range) {
        submit(type, params_of(element));
        // Hand over what is done as it goes, so results do not pile up while submitting.
        while (auto result = try_next()) on_result(*result);
    }
    while (auto result = next()) on_result(*result);
}

}  // namespace taskfarm
