#include <unistd.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "affinity.hpp"
#include "errors.hpp"
#include "gil.hpp"
#include "mode_runners.hpp"

namespace taskfarm {
namespace {

// An unpinned thread still runs its tasks; the placement in the report shows it.
void pin_or_warn(int cpu, const std::string& name) {
    try {
        pin_this_thread(cpu);
    } catch (const std::exception& e) {
        spdlog::warn("{}; thread {} runs unpinned", e.what(), name);
    }
}

}  // namespace

RunReport ThreadsRunner::run(const Plan& plan, ResultSink& sink) {
    ModeRecorder recorder(gil_ ? Mode::GilThreads : Mode::Threads, threads_, plan, sink);
    std::optional<Gil> gil;
    if (gil_) gil.emplace();
    // Each thread takes the next task from the one cursor, which makes it as it goes.
    const auto cursor = plan.open();
    std::mutex cursor_mutex;
    bool ended = false;
    const auto take = [&](TaskSpec& task) {
        std::lock_guard lock(cursor_mutex);
        if (ended) return false;
        try {
            // A signal ends a wait for a slow producer's next line, as it ends the run.
            if (next_task(*cursor, task, env_.stop, drain_)) return true;
        } catch (const ConfigError& e) {  // a bad line of standard input: the tasks after it do not run
            recorder.plan_error(e.what());
        }
        ended = true;
        return false;
    };
    {
        std::vector<std::jthread> pool;
        pool.reserve(static_cast<std::size_t>(threads_));
        for (int i = 0; i < threads_; ++i) {
            const int cpu = cpus_.empty() ? -1 : cpus_[static_cast<std::size_t>(i) % cpus_.size()];
            pool.emplace_back([&, cpu, name = fmt::format("t{}", i + 1)] {
                if (cpu >= 0) pin_or_warn(cpu, name);  // before its first task
                recorder.place({name, pinned_cpu(), ::getpid()});
                RunEnv env = env_;
                env.worker = name;
                env.gil = gil ? &*gil : nullptr;
                struct ThreadDone {
                    const Registry& registry;
                    ~ThreadDone() { registry.thread_done(); }
                } thread_done{registry_};
                const std::stop_token& stop = env.stop;
                TaskSpec task;
                // A drain lets each thread finish the task it runs, and take no other.
                while (!stop.stop_requested() && !drain_.stop_requested() && take(task)) {
                    std::optional<TaskResult> result =
                        run_with_retries(task, env, retries_, drain_, recorder, cancels_);
                    if (!result) return;  // cancelled mid-task: not a result
                    recorder.record(task, std::move(*result));
                }
            });
        }
    }  // joins every thread
    return recorder.finish(env_.stop.stop_requested() || drain_.stop_requested());
}

}  // namespace taskfarm
