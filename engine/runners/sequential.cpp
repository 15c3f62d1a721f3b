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
    CancelBoard::Lane lane(cancels_, env_.stop);
    try {
        // A drain lets the running task finish, and starts no other; a signal that comes
        // while the plan's producer is slow ends the wait for its next line.
        while (!stop.stop_requested() && !drain_.stop_requested() && next_task(*cursor, task, stop, drain_)) {
            std::optional<TaskResult> result = run_with_retries(task, env_, retries_, drain_, recorder, lane);
            if (!result) break;  // cancelled mid-task: not a result
            recorder.record(task, std::move(*result));
        }
    } catch (const ConfigError& e) {  // a bad line of standard input: the tasks after it do not run
        recorder.plan_error(e.what());
    }
    registry_.thread_done();  // this thread goes on (the coordinator's): let go of what tasks kept
    return recorder.finish(stop.stop_requested() || drain_.stop_requested());
}

}  // namespace taskfarm
