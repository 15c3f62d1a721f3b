#include <unistd.h>

#include "affinity.hpp"
#include "runners.hpp"

namespace taskfarm {

RunReport SequentialRunner::run(const Plan& plan, ResultSink& sink) {
    ModeRecorder recorder(Mode::Sequential, 1, plan, sink);
    const ScopedPin pin(cpu_);
    recorder.place({"seq", pinned_cpu(), ::getpid()});
    const ExecContext context{"seq", stop_};
    for (const TaskSpec& task : plan.tasks) {
        if (stop_.stop_requested()) break;
        TaskResult result = run_task(task, context);
        if (stop_.stop_requested()) break;  // cancelled mid-task: not a result
        recorder.record(task, std::move(result));
    }
    return recorder.finish(stop_.stop_requested());
}

}  // namespace taskfarm
