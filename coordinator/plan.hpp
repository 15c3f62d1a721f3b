#pragma once

#include <vector>

#include "config.hpp"
#include "task.hpp"

namespace taskfarm {

// The tasks of one run. Ids are 0..N-1 in plan order; every mode runs the same plan.
struct Plan {
    std::vector<TaskSpec> tasks;
};

// Deterministic: the same config (seed included) gives the same plan on every machine.
Plan make_plan(const RunConfig& config);

}  // namespace taskfarm
