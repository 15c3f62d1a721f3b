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
        if (stop.stop_requested()) break;
        recorder.started(task, 1, env_.worker);
        TaskResult result = run_task(task, 1, env_);
        if (stop.stop_requested()) break;  // cancelled mid-task: not a result
        recorder.record(task, std::move(result));
    }
    registry_.thread_done();  // this thread goes on (the coordinator's): let go of what tasks kept
    return recorder.finish(stop.stop_requested());
}

}  // namespace taskfarm
