// The per-message costs of the protocol: what the coordinator and every worker pay for
// each task on the wire, without the socket.

#include <benchmark/benchmark.h>

#include "builtin.hpp"
#include "protocol.hpp"

namespace taskfarm {
namespace {

proto::Task a_task() {
    return proto::to_message(
        TaskSpec{.id = 123456, .type = builtin_types().find("sleep"), .params = {{"seconds", 0.25}}}, 1);
}

proto::Result a_result() {
    TaskResult result;
    result.id = 123456;
    result.ok = true;
    result.run_time = std::chrono::duration<double>(0.25);
    result.type = builtin_types().find("sleep");
    result.value = {{"slept_s", 0.25}};
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

// Args: tasks per message. items/s counts tasks, not messages.
void BM_EncodeTaskBatch(benchmark::State& state) {
    proto::TaskBatch batch;
    batch.tasks.assign(static_cast<std::size_t>(state.range(0)), a_task());
    std::string frame;
    for (auto _ : state) {
        proto::encode_to(frame, batch);
        benchmark::DoNotOptimize(frame.data());
    }
    state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_EncodeTaskBatch)->Arg(1)->Arg(16)->Arg(128);

void BM_DecodeTaskBatch(benchmark::State& state) {
    proto::TaskBatch batch;
    batch.tasks.assign(static_cast<std::size_t>(state.range(0)), a_task());
    const std::string frame = proto::encode(batch);
    for (auto _ : state) benchmark::DoNotOptimize(proto::decode(frame));
    state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_DecodeTaskBatch)->Arg(1)->Arg(16)->Arg(128);

void BM_DecodeResultBatch(benchmark::State& state) {
    proto::ResultBatch batch;
    batch.results.assign(static_cast<std::size_t>(state.range(0)), a_result());
    const std::string frame = proto::encode(batch);
    for (auto _ : state) benchmark::DoNotOptimize(proto::decode(frame));
    state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(BM_DecodeResultBatch)->Arg(1)->Arg(16)->Arg(128);

}  // namespace
}  // namespace taskfarm

BENCHMARK_MAIN();
