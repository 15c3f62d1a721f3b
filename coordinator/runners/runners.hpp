#pragma once

#include <vector>

#include "runner.hpp"

namespace taskfarm {

// Every task in plan order on the calling thread, pinned to `cpu` for the run when cpu >= 0.
class SequentialRunner final : public Runner {
public:
    SequentialRunner(int cpu, std::stop_token stop) : cpu_(cpu), stop_(std::move(stop)) {}
    RunReport run(const Plan& plan, ResultSink& sink) override;

private:
    int cpu_;
    std::stop_token stop_;
};

// A pool of threads in this process, each taking the next task as it frees up. With
// `gil`, every task runs under one shared Gil (gil-threads mode). Thread i is pinned to
// cpus[i % size]; empty: not pinned.
class ThreadsRunner final : public Runner {
public:
    ThreadsRunner(int threads, bool gil, std::vector<int> cpus, std::stop_token stop)
        : threads_(threads), gil_(gil), cpus_(std::move(cpus)), stop_(std::move(stop)) {}
    RunReport run(const Plan& plan, ResultSink& sink) override;

private:
    int threads_;
    bool gil_;
    std::vector<int> cpus_;
    std::stop_token stop_;
};

// Worker processes over ZeroMQ: see dispatcher.hpp and process_pool.hpp.
class ProcessesRunner final : public Runner {
public:
    ProcessesRunner(const RunConfig& config, std::stop_token stop) : config_(config), stop_(std::move(stop)) {}
    RunReport run(const Plan& plan, ResultSink& sink) override;

private:
    const RunConfig& config_;
    std::stop_token stop_;
};

}  // namespace taskfarm
