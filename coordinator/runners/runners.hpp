#pragma once

#include "runner.hpp"

namespace taskfarm {

// Every task in plan order on the calling thread.
class SequentialRunner final : public Runner {
public:
    explicit SequentialRunner(std::stop_token stop) : stop_(std::move(stop)) {}
    RunReport run(const Plan& plan, ResultSink& sink) override;

private:
    std::stop_token stop_;
};

// A pool of threads in this process, each taking the next task as it frees up.
class ThreadsRunner final : public Runner {
public:
    ThreadsRunner(int threads, std::stop_token stop) : threads_(threads), stop_(std::move(stop)) {}
    RunReport run(const Plan& plan, ResultSink& sink) override;

private:
    int threads_;
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
