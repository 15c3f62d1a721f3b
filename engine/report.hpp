#pragma once
// What one mode's run of a plan came to, and how modes compare.

#include <cstddef>
#include <cstdint>
#include <string>

#include <sys/time.h>
#include <vector>

#include <nlohmann/json.hpp>

#include "task.hpp"

namespace taskfarm {

// How many failures a report lists: a run of millions of failing tasks keeps no list of
// them all in memory.
inline constexpr std::size_t kMaxFailuresListed = 100;

struct Failure {
    TaskId id = kNoId;
    std::string error;
};

// Where one worker process or thread of a mode ran.
struct Placement {
    std::string worker;    // "seq", "t2", "w1"
    int cpu = -1;          // the one CPU it may run on, as the kernel reports it; -1: several
    std::int64_t pid = 0;  // its process: the worker's, or the coordinator's for threads
};

// What the tasks of a mode cost where they ran, summed over their results (decision 92).
struct CostTotals {
    std::size_t measured = 0;  // results that carry a cost
    double user_s = 0;
    double sys_s = 0;
    std::int64_t max_rss_kb = -1;     // the largest peak of any task; -1: none measured
    std::vector<std::string> scopes;  // "thread", "process", "tree": each once, in order of first use
    void add(const TaskCost& cost);
};

struct RunReport {
    std::string mode;   // "sequential", "threads", "gil-threads", "processes"
    int workers = 1;    // threads or processes that ran tasks
    int cpus_used = 1;  // distinct pinned CPUs, or min(workers, available CPUs) when not pinned
    std::size_t tasks = 0;
    std::size_t ok = 0;
    std::size_t failed = 0;
    double wall_s = 0;  // from before the first task (or spawn) to after the last result
    double cpu_s = 0;   // user + system CPU of the mode, worker processes included
    // What cpu_s is measured against: the time it was counted over (from the mode's start to
    // its last process reaped, so spawning and shutting down are in) and the CPUs this
    // coordinator may run on (its workers and threads can use no others). 0: unknown.
    double cpu_span_s = 0;
    int cpus_available = 0;
    bool interrupted = false;  // stopped by a signal before every task ran
    std::size_t retried = 0;   // failed attempts that ran again (--retries)
    // Worker processes that exited and were replaced at a limit (--max-tasks-per-worker,
    // --max-worker-memory): not deaths, charged to no task.
    std::size_t recycled = 0;
    // The first kMaxFailuresListed failures, in completion order: `failed` counts them all,
    // the journal (--results) has every one.
    std::vector<Failure> failures;
    // Why the plan stopped giving tasks before its end (a bad line of standard input read as
    // the run went); empty if it did not. The tasks after it did not run.
    std::string plan_error;
    std::vector<Placement> placement;  // by worker name (w2 before w10); a respawned worker again
    CostTotals cost;                   // of this run's results (a resumed mode: not the journal's earlier ones)
    // --alloc: what the allocator submitted and why it did or did not (Allocator::report());
    // null otherwise.
    nlohmann::json allocations = nullptr;
};

// cpu_s / (cpu_span_s * cpus_available): the share of the CPUs this coordinator may run on
// that the mode kept busy while its CPU time was counted, so never above 1 (but for clock
// granularity). A report without them (made by hand) falls back to wall_s * cpus_used.
// 0 without time.
double utilisation(const RunReport& report);

// wall time of the sequential report divided by `report`'s; 0 when there is none.
double speedup_vs_sequential(const std::vector<RunReport>& reports, const RunReport& report);

// The comparison table printed after the run: one row per mode.
std::string format_table(const std::vector<RunReport>& reports);

// The second table: per mode, what its tasks cost where they ran (user and system CPU, the
// largest peak memory, the scopes measured). Empty when no result carries a cost.
std::string format_cost_table(const std::vector<RunReport>& reports);

// "3.2M" for 3276 KiB: sizes in K, M, G (x1024).
std::string format_kib(std::int64_t kib);

// One line per mode whose workers were pinned, "processes: w1 -> cpu 0 (pid 4242), ...";
// empty when nothing was pinned.
std::string format_placement(const std::vector<RunReport>& reports);

// {"mode","workers","tasks","ok","failed","wall_s","speedup_vs_sequential","cpu_s",
//  "cpus_used","utilisation","placement":[{"worker","cpu","pid"}],
//  "task_cost":{"measured","user_s","sys_s","max_rss_kb","scopes"},...}
nlohmann::json report_json(const std::vector<RunReport>& reports, const RunReport& report);

// User + system CPU seconds of this process, and of its reaped children.
// A rusage time in seconds.
inline double seconds_of(const timeval& tv) {
    return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
}

struct CpuTimes {
    double self_s = 0;
    double children_s = 0;
    static CpuTimes now();
    double total() const { return self_s + children_s; }
};

}  // namespace taskfarm
