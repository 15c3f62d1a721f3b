#include <condition_variable>
#include <mutex>

#include "executors.hpp"

namespace taskfarm::executors {

void run_sleep(const TaskSpec& task, const ExecContext& context, TaskResult& result) {
    const auto started = std::chrono::steady_clock::now();
    const auto duration = std::chrono::duration<double>(task.params.seconds);
    // A condition variable that nobody notifies: wait_for() wakes early only for a stop request.
    std::mutex mutex;
    std::condition_variable_any never;
    std::unique_lock lock(mutex);
    static_cast<void>(never.wait_for(lock, context.stop, duration, [] { return false; }));
    result.slept_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    result.ok = !context.stop.stop_requested();
    if (!result.ok) result.error = "cancelled";
}

}  // namespace taskfarm::executors
