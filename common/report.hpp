#pragma once
// What one mode's run of a plan came to, and how modes compare.

#include <cstddef>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "task.hpp"

namespace taskfarm {

struct Failure {
    TaskId id = kNoId;
    std::string error;
};

struct RunReport {
    std::string mode;    // "sequential", "threads", "processes"
    int workers = 1;     // threads or processes that ran tasks
    std::size_t tasks = 0;
    std::size_t ok = 0;
    std::size_t failed = 0;
    double wall_s = 0;   // from before the first task (or spawn) to after the last result
    double cpu_s = 0;    // user + system CPU of the mode, worker processes included
    bool interrupted = false;  // stopped by a signal before every task ran
    std::vector<Failure> failures;  // in completion order
};

// wall time of the sequential report divided by `report`'s; 0 when there is none.
double speedup_vs_sequential(const std::vector<RunReport>& reports, const RunReport& report);

// The comparison table printed after the run: one row per mode.
std::string format_table(const std::vector<RunReport>& reports);

// {"mode","workers","tasks","ok","failed","wall_s","speedup_vs_sequential","cpu_s",...}
nlohmann::json report_json(const std::vector<RunReport>& reports, const RunReport& report);

// User + system CPU seconds of this process, and of its reaped children.
struct CpuTimes {
    double self_s = 0;
    double children_s = 0;
    static CpuTimes now();
    double total() const { return self_s + children_s; }
};

}  // namespace taskfarm
