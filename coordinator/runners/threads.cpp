#include <unistd.h>

#include <atomic>
#include <optional>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "affinity.hpp"
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
    std::atomic<std::size_t> next{0};
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
                for (std::size_t index = next++; index < plan.tasks.size() && !stop.stop_requested(); index = next++) {
                    recorder.started(plan.tasks[index], 1, name);
                    TaskResult result = run_task(plan.tasks[index], 1, env);
                    if (stop.stop_requested()) return;
                    recorder.record(plan.tasks[index], std::move(result));
                }
            });
        }
    }  // joins every thread
    return recorder.finish(env_.stop.stop_requested());
}

}  // namespace taskfarm
