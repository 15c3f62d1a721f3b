#include <atomic>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "runners.hpp"

namespace taskfarm {

RunReport ThreadsRunner::run(const Plan& plan, ResultSink& sink) {
    ModeRecorder recorder(Mode::Threads, threads_, plan, sink);
    std::atomic<std::size_t> next{0};
    {
        std::vector<std::jthread> pool;
        pool.reserve(static_cast<std::size_t>(threads_));
        for (int i = 0; i < threads_; ++i) {
            pool.emplace_back([&, name = fmt::format("t{}", i + 1)] {
                const ExecContext context{name, stop_};
                for (std::size_t index = next++; index < plan.tasks.size() && !stop_.stop_requested();
                     index = next++) {
                    TaskResult result = run_task(plan.tasks[index], context);
                    if (stop_.stop_requested()) return;
                    recorder.record(plan.tasks[index], std::move(result));
                }
            });
        }
    }  // joins every thread
    return recorder.finish(stop_.stop_requested());
}

}  // namespace taskfarm
