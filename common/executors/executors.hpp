#pragma once
// One function per task kind. Each fills `result` (ok, error and its kind's value
// fields) and may throw; run_task() turns exceptions into failed results.

#include "../task.hpp"

namespace taskfarm::executors {

// Sleeps task.params.seconds; returns early (not ok, "cancelled") when context.stop fires.
void run_sleep(const TaskSpec& task, const ExecContext& context, TaskResult& result);

}  // namespace taskfarm::executors
