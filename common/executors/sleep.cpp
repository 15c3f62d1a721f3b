#include <condition_variable>
#include <mutex>

#include "executors.hpp"

namespace taskfarm::executors {

void run_sleep(const TaskSpec& task, const ExecContext& context, TaskResult& result) {
    if (task.params.seconds <= 0) {  // a no-op: no clock, no wait (the benchmarks' task)
        result.ok = !context.stop.stop_requested();
        if (!result.ok) result.error = "cancelled";
        return;
    }
    const auto started = std::chrono::steady_clock::now();
    const auto duration = std::chrono::duration<double>(task.params.seconds);
    // A condition variable that nobody notifies: wait_for() wakes early only for a stop request.
    std::mutex mutex;
    std::condition_variable_any never;
    std::unique_lock lock(mutex);
    const auto wake = context.deadline - started > duration
                          ? started + std::chrono::duration_cast<std::chrono::steady_clock::duration>(duration)
                          : context.deadline;
    static_cast<void>(never.wait_until(lock, context.stop, wake, [] { return false; }));
    result.slept_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    if (context.stop.stop_requested()) {
        result.error = "cancelled";
    } else if (wake == context.deadline) {
        result.error = timed_out(task);
    } else {
        result.ok = true;
    }
}

}  // namespace taskfarm::executors
