// The dispatch loop end to end: a Dispatcher on a real ipc:// ROUTER feeding real worker
// processes no-op tasks (sleep 0), results into a sink that only counts. Each iteration
// spawns the workers, runs the plan and shuts them down; items/s is tasks per second.

#include <benchmark/benchmark.h>

#include <stdlib.h>

#include <filesystem>
#include <stop_token>

#include "builtin.hpp"
#include "dispatcher.hpp"
#include "process_pool.hpp"
#include "wire.hpp"

namespace taskfarm {
namespace {

class CountingSink final : public ResultSink {
public:
    std::size_t results = 0;

protected:
    void begin_mode_(const std::string&, std::size_t) override {}
    void sink_it_(const TaskSpec&, const TaskResult&) override { ++results; }
};

Plan no_ops(std::size_t tasks) {
    std::vector<TaskSpec> list;
    const TaskType* sleep = builtin_types().find("sleep");
    for (std::size_t i = 0; i < tasks; ++i) list.push_back({static_cast<TaskId>(i), sleep, {{"seconds", 0}}});
    return Plan::of(std::move(list));
}

std::filesystem::path worker_binary() {
    return std::filesystem::read_symlink("/proc/self/exe").parent_path() / "worker";
}

// Args: tasks, workers, prefetch.
void BM_DispatchNoOps(benchmark::State& state) {
    const Plan plan = no_ops(static_cast<std::size_t>(state.range(0)));
    std::string dir_pattern = "/tmp/taskfarm-bench-XXXXXX";
    if (!::mkdtemp(dir_pattern.data())) return state.SkipWithError("mkdtemp failed");
    const std::filesystem::path dir = dir_pattern;
    for (auto _ : state) {
        CountingSink sink;
        zmq::context_t context(1);
        zmq::socket_t router(context, zmq::socket_type::router);
        wire::configure(router, zmq::socket_type::router);
        const std::string endpoint = "ipc://" + (dir / "socket").string();
        router.bind(endpoint);
        ProcessPool pool({.binary = worker_binary(), .endpoint = endpoint});
        ModeRecorder recorder(Mode::Processes, static_cast<int>(state.range(1)), plan, sink);
        std::stop_source never;
        Dispatcher dispatcher(
            router, pool, plan, recorder,
            DispatchOptions{.workers = static_cast<int>(state.range(1)), .prefetch = static_cast<int>(state.range(2))},
            never.get_token());
        dispatcher.run();
        dispatcher.shutdown_workers();
        pool.stop_all(std::chrono::seconds(1));
        if (sink.results != *plan.count) state.SkipWithError("lost results");
    }
    std::filesystem::remove_all(dir);
    state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_DispatchNoOps)
    ->ArgNames({"tasks", "workers", "prefetch"})
    ->Args({20000, 2, 1})
    ->Args({20000, 2, 8})
    ->Args({20000, 2, 64})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace taskfarm

BENCHMARK_MAIN();
