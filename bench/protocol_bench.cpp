// The per-message costs of the protocol: what the coordinator and every worker pay for
// each task on the wire, without the socket.

#include <benchmark/benchmark.h>

#include "protocol.hpp"

namespace taskfarm {
namespace {

proto::Task a_task() {
    return proto::to_message(TaskSpec{.id = 123456, .kind = TaskKind::Sleep, .params = {.seconds = 0.25}}, 1);
}

proto::Result a_result() {
    TaskResult result;
    result.id = 123456;
    result.ok = true;
    result.run_time = std::chrono::duration<double>(0.25);
    result.slept_s = 0.25;
    return proto::to_message(result);
}

void BM_EncodeTask(benchmark::State& state) {
    const proto::Task task = a_task();
    for (auto _ : state) benchmark::DoNotOptimize(proto::encode(task));
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EncodeTask);

void BM_DecodeTask(benchmark::State& state) {
    const std::string frame = proto::encode(a_task());
    for (auto _ : state) benchmark::DoNotOptimize(proto::decode(frame));
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(frame.size()));
}
BENCHMARK(BM_DecodeTask);

void BM_EncodeResult(benchmark::State& state) {
    const proto::Result result = a_result();
    for (auto _ : state) benchmark::DoNotOptimize(proto::encode(result));
    state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_EncodeResult);

void BM_DecodeResult(benchmark::State& state) {
    const std::string frame = proto::encode(a_result());
    for (auto _ : state) benchmark::DoNotOptimize(proto::decode(frame));
    state.SetItemsProcessed(state.iterations());
    state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(frame.size()));
}
BENCHMARK(BM_DecodeResult);

}  // namespace
}  // namespace taskfarm

BENCHMARK_MAIN();
