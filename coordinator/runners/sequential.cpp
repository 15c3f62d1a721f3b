#include <unistd.h>

#include "affinity.hpp"
#include "errors.hpp"
#include "mode_runners.hpp"

namespace taskfarm {

RunReport SequentialRunner::run(const Plan& plan, ResultSink& sink) {
    ModeRecorder recorder(Mode::Sequential, 1, plan, sink);
    const ScopedPin pin(cpu_);
    recorder.place({"seq", pinned_cpu(), ::getpid()});
    const std::stop_token& stop = env_.stop;
    const auto cursor = plan.open();
    TaskSpec task;
    try {
        while (!stop.stop_requested() && cursor->next(task)) {
            TaskResult result = run_task(task, 1, env_);
            if (stop.stop_requested()) break;  // cancelled mid-task: not a result
            recorder.record(task, std::move(result));
        }
    } catch (const ConfigError& e) {  // a bad line of standard input: the tasks after it do not run
        recorder.plan_error(e.what());
    }
    registry_.thread_done();  // this thread goes on (the coordinator's): let go of what tasks kept
    return recorder.finish(stop.stop_requested());
}

}  // namespace taskfarm
