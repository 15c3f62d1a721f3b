#include <cstdlib>

#include "executors.hpp"

namespace taskfarm::executors {

void run_fail(const TaskSpec&, const ExecContext&, TaskResult& result) { result.error = "failed on purpose"; }

void run_crash(const TaskSpec&, const ExecContext& context, TaskResult& result) {
    if (context.isolated) std::abort();
    result.error = "crash task: fails in-process (it aborts only a worker process of its own)";
}

}  // namespace taskfarm::executors
