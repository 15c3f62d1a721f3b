#pragma once

#include <optional>
#include <vector>

#include "control.hpp"
#include "runner.hpp"

namespace taskfarm {

// Runs `task` on this thread and, while it fails, again as attempt 2, 3, ... up to `retries`
// more times (see engine_retries), unless `drain` asks that no task start; each failed
// attempt that is run again goes to `recorder` as a retry. Nullopt when `env.stop` stopped
// the run: a task stopped so has no result. A task that a cancel asks for on the board of
// `cancels` (the calling thread's lane) is not run, or stopped, and its result is
// cancelled(); `env.stop` is then the lane's for its run. `starts`: the thread's start slot
// (ModeRecorder::start_slot), where each attempt's start goes with no call; null: through
// ModeRecorder::started().
std::optional<TaskResult> run_with_retries(const TaskSpec& task, RunEnv& env, std::uint32_t retries,
                                           const std::stop_token& drain, ModeRecorder& recorder,
                                           CancelBoard::Lane& cancels, StartSlot* starts = nullptr);

// Every task in plan order on the calling thread, pinned to `cpu` for the run when cpu >= 0.
class SequentialRunner final : public Runner {
public:
    // `env.stop` stops the run, `drain` starts no more tasks; a failed task runs up to
    // `retries` more times; `registry`'s thread_done() runs when it is over.
    SequentialRunner(int cpu, RunEnv env, const Registry& registry, std::stop_token drain = {},
                     std::uint32_t retries = 0, CancelBoard* cancels = nullptr)
        : cpu_(cpu),
          env_(std::move(env)),
          registry_(registry),
          drain_(std::move(drain)),
          retries_(retries),
          cancels_(cancels) {}
    RunReport run(const Plan& plan, ResultSink& sink) override;

private:
    int cpu_;
    RunEnv env_;
    const Registry& registry_;
    std::stop_token drain_;
    std::uint32_t retries_;
    CancelBoard* cancels_;
};

// A pool of threads in this process, each taking the next task as it frees up. With
// `gil`, every task runs under one shared Gil (gil-threads mode). Thread i is pinned to
// cpus[i % size]; empty: not pinned.
class ThreadsRunner final : public Runner {
public:
    // `env` for every thread (each gets its own name, "t1", "t2", ..., and the Gil);
    // `registry`'s thread_done() runs on each thread before it ends.
    // `drain` and `retries` as for SequentialRunner.
    ThreadsRunner(int threads, bool gil, std::vector<int> cpus, RunEnv env, const Registry& registry,
                  std::stop_token drain = {}, std::uint32_t retries = 0, CancelBoard* cancels = nullptr)
        : threads_(threads),
          gil_(gil),
          cpus_(std::move(cpus)),
          env_(std::move(env)),
          registry_(registry),
          drain_(std::move(drain)),
          retries_(retries),
          cancels_(cancels) {}
    RunReport run(const Plan& plan, ResultSink& sink) override;

private:
    int threads_;
    bool gil_;
    std::vector<int> cpus_;
    RunEnv env_;
    const Registry& registry_;
    std::stop_token drain_;
    std::uint32_t retries_;
    CancelBoard* cancels_;
};

}  // namespace taskfarm
