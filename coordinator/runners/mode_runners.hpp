#pragma once

#include <vector>

#include "runner.hpp"

namespace taskfarm {

// Every task in plan order on the calling thread, pinned to `cpu` for the run when cpu >= 0.
class SequentialRunner final : public Runner {
public:
    // `env.stop` stops the run; `registry`'s thread_done() runs when it is over.
    SequentialRunner(int cpu, RunEnv env, const Registry& registry)
        : cpu_(cpu), env_(std::move(env)), registry_(registry) {}
    RunReport run(const Plan& plan, ResultSink& sink) override;

private:
    int cpu_;
    RunEnv env_;
    const Registry& registry_;
};

// A pool of threads in this process, each taking the next task as it frees up. With
// `gil`, every task runs under one shared Gil (gil-threads mode). Thread i is pinned to
// cpus[i % size]; empty: not pinned.
class ThreadsRunner final : public Runner {
public:
    // `env` for every thread (each gets its own name, "t1", "t2", ..., and the Gil);
    // `registry`'s thread_done() runs on each thread before it ends.
    ThreadsRunner(int threads, bool gil, std::vector<int> cpus, RunEnv env, const Registry& registry)
        : threads_(threads), gil_(gil), cpus_(std::move(cpus)), env_(std::move(env)), registry_(registry) {}
    RunReport run(const Plan& plan, ResultSink& sink) override;

private:
    int threads_;
    bool gil_;
    std::vector<int> cpus_;
    RunEnv env_;
    const Registry& registry_;
};

// Worker processes over ZeroMQ: see dispatcher.hpp and process_pool.hpp.
class ProcessesRunner final : public Runner {
public:
    ProcessesRunner(const RunConfig& config, const Json& settings, std::stop_token stop,
                    ForkServer* fork_server = nullptr)
        : config_(config), settings_(settings), stop_(std::move(stop)), fork_server_(fork_server) {}
    RunReport run(const Plan& plan, ResultSink& sink) override;

private:
    const RunConfig& config_;
    const Json& settings_;
    std::stop_token stop_;
    ForkServer* fork_server_;
};

}  // namespace taskfarm
