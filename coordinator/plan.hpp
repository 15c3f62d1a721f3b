#pragma once

#include <istream>
#include <string>
#include <vector>

#include "config.hpp"
#include "task.hpp"

namespace taskfarm {

// The tasks of one run. Ids are 0..N-1 in plan order; every mode runs the same plan.
struct Plan {
    std::vector<TaskSpec> tasks;
};

// Deterministic: the same config (seed included) gives the same plan on every machine.
// With config.plan_path the tasks come from that file (read_plan); else --tasks tasks of
// kind --task: sleeps of --duration, or cpu task i counting the primes in
// [i*cpu_n, (i+1)*cpu_n). Throws ConfigError for a plan file it cannot read or accept.
Plan make_plan(const RunConfig& config);

// Reads a JSON Lines plan, one task per line:
//   {"kind":"sleep","seconds":0.5}
//   {"kind":"cpu","n":2000000}          primes below n, i.e. "lo":0,"hi":n
//   {"kind":"cpu","lo":100,"hi":200}
// Blank lines and lines whose first non-blank character is '#' are skipped. The first bad
// line throws ConfigError("NAME:LINE: problem"); so does a plan without tasks.
Plan read_plan(std::istream& in, const std::string& name);

}  // namespace taskfarm
