#include <unistd.h>

#include "affinity.hpp"
#include "mode_runners.hpp"

namespace taskfarm {

RunReport SequentialRunner::run(const Plan& plan, ResultSink& sink) {
    ModeRecorder recorder(Mode::Sequential, 1, plan, sink);
    const ScopedPin pin(cpu_);
    recorder.place({"seq", pinned_cpu(), ::getpid()});
    const std::stop_token& stop = env_.stop;
    for (const TaskSpec& task : plan.tasks) {
        if (stop.stop_requested() || drain_.stop_requested()) break;  // a drain lets the running task finish
        std::optional<TaskResult> result = run_with_retries(task, env_, retries_, drain_, recorder, cancels_);
        if (!result) break;  // cancelled mid-task: not a result
        recorder.record(task, std::move(*result));
    }
    registry_.thread_done();  // this thread goes on (the coordinator's): let go of what tasks kept
    return recorder.finish(stop.stop_requested() || drain_.stop_requested());
}

}  // namespace taskfarm
