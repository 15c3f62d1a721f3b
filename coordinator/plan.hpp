#pragma once

#include <istream>
#include <memory>
#include <string>
#include <vector>

#include "config.hpp"
#include "task.hpp"

namespace taskfarm {

// The tasks of one run. Ids are 0..N-1 in plan order; every mode runs the same plan.
struct Plan {
    std::vector<TaskSpec> tasks;
    // What the plan's types keep running for the run (TaskType::prepare), e.g. the built-in
    // image server; started by the coordinator once its signal handling is set up.
    std::vector<std::unique_ptr<RunService>> services;
};

// The settings every task sees (Context::settings()): the built-in types' flags (duration_s
// as [lo, hi], cpu_n, max_bytes, retries, file_size, latency_s, bandwidth, max_output, and
// command when --command is given) and the run's seed, tasks and workers, then --set
// KEY=VALUE on top.
Json settings_json(const RunConfig& config);
// The settings keys settings_json() fills from flags (and the types' prepare(): served_urls),
// with the flag each comes from: --set may not replace them.
inline constexpr std::pair<std::string_view, std::string_view> kFlagSettings[] = {
    {"duration_s", "--duration"}, {"cpu_n", "--cpu-n"},         {"max_bytes", "--max-bytes"}, {"retries", "--retries"},
    {"file_size", "--file-size"}, {"latency_s", "--latency"},   {"bandwidth", "--bandwidth"}, {"seed", "--seed"},
    {"tasks", "--tasks"},         {"workers", "--workers"},     {"served_urls", "--task download"},
    {"min_speed", "--min-speed"}, {"stall_s", "--stall-time"}};

// Deterministic: the same config (seed included) gives the same plan on every machine.
// With config.plan_path the tasks come from that file (read_plan); with config.inputs_path,
// a task of --task per line of it (read_inputs); else --tasks tasks of --task, each from
// TaskType::generate() (after TaskType::prepare(), which may add to `settings`). Every task
// gets --task-timeout unless its plan line has its own. A path of `-` is standard input. Throws ConfigError for a plan or
// input file it cannot read or accept, and for a type that cannot generate the tasks.
Plan make_plan(const RunConfig& config, const Registry& registry, Json& settings);

// Reads a list of inputs, one per line, into tasks of `type` (TaskType::from_numbered_input
// with the run's `settings`, then TaskType::parse, as for a plan line). The whole list is read
// before the run starts, standard input included. Blank
// lines and lines whose first non-blank character is '#' are skipped, as is blank space
// around an input. A line the type refuses throws ConfigError("NAME:LINE: problem"); so does
// a list without inputs.
Plan read_inputs(std::istream& in, const std::string& name, const TaskType& type, const Json& settings);

// Reads a JSON Lines plan, one task per line: {"kind":TYPE, "timeout_s":S (optional), the
// type's parameters...}, e.g.
//   {"kind":"sleep","seconds":0.5}
//   {"kind":"cpu","n":2000000}          primes below n, i.e. "lo":0,"hi":n
//   {"kind":"download","url":"https://example.com/a.jpg"}
// Blank lines and lines whose first non-blank character is '#' are skipped. The first bad
// line throws ConfigError("NAME:LINE: problem"); so does a plan without tasks. A line's
// "timeout_s" is its task's (0: no limit); without one the task gets kTimeoutNotGiven,
// which make_plan() replaces with --task-timeout.
Plan read_plan(std::istream& in, const std::string& name, const Registry& registry);
inline constexpr double kTimeoutNotGiven = -1;

}  // namespace taskfarm
