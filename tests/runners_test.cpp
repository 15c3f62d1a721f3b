// Every mode runs the same plan through the same executor: same ids, each exactly once.

#include <algorithm>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "affinity.hpp"
#include "control.hpp"
#include "plan.hpp"
#include "protocol.hpp"
#include "runner.hpp"
#include "support.hpp"

namespace taskfarm {
namespace {

using testing::CollectingSink;

RunConfig config_for(int workers, int tasks, double lo, double hi) {
    RunConfig config;
    config.workers = workers;
    config.task = "sleep";
    config.tasks = tasks;
    config.settings["duration_s"] = {lo, hi};  // what sleep's --duration LO:HI sets
    config.worker_bin = testing::bin("worker");
    return config;
}

// A test name for `mode`: gtest allows letters, digits and '_' only.
std::string mode_name(const ::testing::TestParamInfo<Mode>& info) {
    std::string name(to_string(info.param));
    std::replace(name.begin(), name.end(), '-', '_');
    return name;
}

class EveryMode : public ::testing::TestWithParam<Mode> {};

TEST_P(EveryMode, RunsEachTaskExactlyOnceAndReportsIt) {
    const RunConfig config = config_for(3, 7, 0.01, 0.05);
    const Plan plan = testing::plan_for(config);
    CollectingSink sink;
    std::stop_source never;
    const RunReport report = testing::runner_for(GetParam(), config, never.get_token())->run(plan, sink);

    EXPECT_EQ(report.mode, to_string(GetParam()));
    EXPECT_EQ(report.tasks, 7u);
    EXPECT_EQ(report.ok, 7u);
    EXPECT_EQ(report.failed, 0u);
    EXPECT_FALSE(report.interrupted);
    EXPECT_GT(report.wall_s, 0);
    ASSERT_EQ(sink.recorded.size(), 7u);
    std::set<TaskId> ids;
    for (const auto& [task, result] : sink.recorded) {
        ids.insert(result.id);
        EXPECT_EQ(task.id, result.id);
        EXPECT_TRUE(result.ok) << result.error;
        EXPECT_EQ(result.attempt, 1u);
        EXPECT_GE(result.value.at("slept_s"), proto::params_of(task).at("seconds"));  // packed in processes mode
        EXPECT_LE(result.start_s, result.end_s);
        EXPECT_LE(result.end_s, report.wall_s);
    }
    EXPECT_EQ(ids, (std::set<TaskId>{0, 1, 2, 3, 4, 5, 6}));
}

TEST_P(EveryMode, NamesTheWorkerThatRanEachTask) {
    const RunConfig config = config_for(2, 4, 0.01, 0.01);
    CollectingSink sink;
    std::stop_source never;
    testing::runner_for(GetParam(), config, never.get_token())->run(testing::plan_for(config), sink);
    const std::set<std::string> allowed = GetParam() == Mode::Sequential  ? std::set<std::string>{"seq"}
                                          : GetParam() == Mode::Processes ? std::set<std::string>{"w1", "w2"}
                                                                          : std::set<std::string>{"t1", "t2"};
    for (const auto& recorded : sink.recorded)
        EXPECT_TRUE(allowed.contains(recorded.result.worker)) << recorded.result.worker;
}

INSTANTIATE_TEST_SUITE_P(AllModes, EveryMode, ::testing::ValuesIn(kAllModes), mode_name);

class ConcurrentMode : public ::testing::TestWithParam<Mode> {};

TEST_P(ConcurrentMode, RunsTasksAtOnceAndDeliversThemInCompletionOrder) {
    // Four tasks on four workers, the long ones first in the plan: if they ran at once,
    // every interval overlaps every other and the short ones arrive first.
    RunConfig config = config_for(4, 4, 0, 0);
    std::vector<TaskSpec> tasks = all_tasks(testing::plan_for(config));
    const double seconds[] = {1.2, 0.9, 0.6, 0.3};
    for (std::size_t i = 0; i < 4; ++i) tasks[i].params.at("seconds") = seconds[i];
    const Plan plan = Plan::of(std::move(tasks));
    CollectingSink sink;
    std::stop_source never;
    testing::runner_for(GetParam(), config, never.get_token())->run(plan, sink);
    ASSERT_EQ(sink.recorded.size(), 4u);
    std::vector<TaskId> order;
    double latest_start = 0;
    double earliest_end = 1e9;
    for (const auto& recorded : sink.recorded) {
        order.push_back(recorded.result.id);
        latest_start = std::max(latest_start, recorded.result.start_s);
        earliest_end = std::min(earliest_end, recorded.result.end_s);
    }
    EXPECT_EQ(order, (std::vector<TaskId>{3, 2, 1, 0}));
    EXPECT_LT(latest_start, earliest_end) << "some task started after another had finished";
}

INSTANTIATE_TEST_SUITE_P(PoolModes, ConcurrentMode, ::testing::Values(Mode::Threads, Mode::GilThreads, Mode::Processes),
                         mode_name);

// A thread keeps the results of quick tasks for a slice (decision 149); one that then runs a
// long task must not keep them until it ends: the flusher takes them. The sink stops the run
// when the quick task's result comes: with the result kept, it would come only after the long
// task had finished (and been recorded).
TEST(ThreadsMode, AResultKeptByAThreadThatRunsALongTaskStillComes) {
    RunConfig config = config_for(1, 2, 0, 0);
    std::vector<TaskSpec> tasks = all_tasks(testing::plan_for(config));
    tasks[1].params.at("seconds") = 20.0;
    const Plan plan = Plan::of(std::move(tasks));
    std::stop_source stop;
    class StopAtFirst final : public ResultSink {
    public:
        explicit StopAtFirst(std::stop_source& stop) : stop_(stop) {}
        std::vector<TaskId> ids;

    protected:
        void begin_mode_(const std::string&, std::size_t) override {}
        void sink_it_(const TaskSpec&, const TaskResult& result) override {
            ids.push_back(result.id);
            stop_.request_stop();
        }

    private:
        std::stop_source& stop_;
    } sink(stop);
    const RunReport report = testing::runner_for(Mode::Threads, config, stop.get_token())->run(plan, sink);
    EXPECT_EQ(sink.ids, std::vector<TaskId>{0}) << "the long task was not stopped by the first result";
    EXPECT_TRUE(report.interrupted);
}

// Threads mode measures a thread's CPU once per slice of results and shares it out: every
// result still carries a cost of the thread's scope, and the report counts them all.
TEST(ThreadsMode, EveryResultCarriesItsShareOfTheThreadsCpu) {
    const RunConfig config = config_for(2, 2000, 0, 0);
    CollectingSink sink;
    std::stop_source never;
    const RunReport report =
        testing::runner_for(Mode::Threads, config, never.get_token())->run(testing::plan_for(config), sink);
    ASSERT_EQ(sink.results.size(), 2000u);
    for (const TaskResult& result : sink.results) {
        EXPECT_EQ(result.cost.scope, TaskCost::Scope::Thread) << "task " << result.id;
        EXPECT_GE(result.cost.user_s, 0);
        EXPECT_GE(result.cost.sys_s, 0);
    }
    EXPECT_EQ(report.cost.measured, 2000u);
}

// A thread's cancel lane (decision 148) keeps one stop source for its tasks: a cancel stops the
// task that runs, the next task runs under a fresh source, and a task cancelled before it
// started is not run, without leaving the source stopped for the one after it.
TEST(CancelLane, StopsOnlyTheTaskCancelledAndTheNextRunsUnstopped) {
    CancelBoard board;
    board.clear();
    std::stop_source run;
    CancelBoard::Lane lane(&board, run.get_token());
    ASSERT_TRUE(lane.begin(5));
    EXPECT_FALSE(lane.token().stop_requested());
    const auto outcomes = board.request({5}, std::chrono::milliseconds(0));
    ASSERT_EQ(outcomes.size(), 1u);
    EXPECT_TRUE(outcomes[0].cancelled) << outcomes[0].what;
    EXPECT_TRUE(lane.token().stop_requested());
    EXPECT_TRUE(lane.end()) << "stopped by the cancel";
    ASSERT_TRUE(lane.begin(6));
    EXPECT_FALSE(lane.token().stop_requested()) << "the next task runs under a fresh source";
    EXPECT_FALSE(lane.end());
    board.request({7}, std::chrono::milliseconds(0));
    EXPECT_FALSE(lane.begin(7)) << "cancelled before it started";
    ASSERT_TRUE(lane.begin(8));
    EXPECT_FALSE(lane.token().stop_requested());
    run.request_stop();
    EXPECT_TRUE(lane.token().stop_requested()) << "the run's stop reaches the task";
    EXPECT_FALSE(lane.end()) << "a run's stop is not a cancel";
}

TEST(SequentialMode, RunsTasksOneAfterAnotherInPlanOrder) {
    const RunConfig config = config_for(4, 4, 0.05, 0.05);
    CollectingSink sink;
    std::stop_source never;
    testing::runner_for(Mode::Sequential, config, never.get_token())->run(testing::plan_for(config), sink);
    ASSERT_EQ(sink.recorded.size(), 4u);
    for (std::size_t i = 0; i < 4; ++i) {
        EXPECT_EQ(sink.recorded[i].result.id, i);
        if (i > 0) {
            EXPECT_GE(sink.recorded[i].result.start_s, sink.recorded[i - 1].result.end_s - 1e-3);
        }
    }
}

TEST(CpuTasks, GiveTheSameAnswerForEachTaskIdInEveryMode) {
    RunConfig config = config_for(2, 6, 0, 0);
    config.task = "cpu";
    config.settings["cpu_n"] = std::uint64_t{300'000};
    const Plan plan = testing::plan_for(config);
    std::map<Mode, std::map<TaskId, std::uint64_t>> primes;
    for (Mode mode : kAllModes) {
        CollectingSink sink;
        std::stop_source never;
        const RunReport report = testing::runner_for(mode, config, never.get_token())->run(plan, sink);
        EXPECT_EQ(report.ok, 6u) << to_string(mode);
        for (const auto& [task, result] : sink.recorded) {
            EXPECT_TRUE(result.ok) << to_string(mode) << ": " << result.error;
            EXPECT_EQ(result.type->name(), "cpu");
            primes[mode][result.id] = result.value.at("primes").get<std::uint64_t>();
        }
    }
    // pi(300000) = 25997 and the primes in each next 300000 numbers, from an independent sieve.
    const std::map<TaskId, std::uint64_t> expected{{0, 25'997}, {1, 23'101}, {2, 22'176},
                                                   {3, 21'664}, {4, 21'217}, {5, 20'917}};
    for (Mode mode : kAllModes) EXPECT_EQ(primes[mode], expected) << to_string(mode);
}

class PinnedMode : public ::testing::TestWithParam<Mode> {};

TEST_P(PinnedMode, PlacesWorkerIOnCpuIRoundRobinAndReportsIt) {
    const std::vector<int> cpus = allowed_cpus();
    RunConfig config = config_for(3, 3, 0.01, 0.01);
    config.pin_cpus = cpus;
    CollectingSink sink;
    std::stop_source never;
    const RunReport report =
        testing::runner_for(GetParam(), config, never.get_token())->run(testing::plan_for(config), sink);
    EXPECT_EQ(report.ok, 3u);
    const std::string prefix = GetParam() == Mode::Processes ? "w" : "t";
    ASSERT_EQ(report.placement.size(), 3u);
    for (std::size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(report.placement[i].worker, prefix + std::to_string(i + 1));
        EXPECT_EQ(report.placement[i].cpu, cpus[i % cpus.size()]) << report.placement[i].worker;
        EXPECT_GT(report.placement[i].pid, 0);
    }
    EXPECT_EQ(report.cpus_used, static_cast<int>(std::min<std::size_t>(3, cpus.size())));
}

INSTANTIATE_TEST_SUITE_P(PoolModes, PinnedMode, ::testing::Values(Mode::Threads, Mode::GilThreads, Mode::Processes),
                         mode_name);

TEST(SequentialMode, PinnedRunsOnTheFirstCpuAndGivesTheThreadBackAfter) {
    const std::vector<int> before = allowed_cpus();
    RunConfig config = config_for(1, 1, 0, 0);
    config.pin_cpus = {before.back()};
    CollectingSink sink;
    std::stop_source never;
    const RunReport report =
        testing::runner_for(Mode::Sequential, config, never.get_token())->run(testing::plan_for(config), sink);
    ASSERT_EQ(report.placement.size(), 1u);
    EXPECT_EQ(report.placement[0].worker, "seq");
    EXPECT_EQ(report.placement[0].cpu, before.back());
    EXPECT_EQ(report.cpus_used, 1);
    EXPECT_EQ(allowed_cpus(), before);
}

TEST(Utilisation, IsCpuTimeOverWallTimeTimesCpusUsed) {
    RunReport report;
    report.wall_s = 2;
    report.cpu_s = 3;
    report.cpus_used = 2;
    EXPECT_DOUBLE_EQ(utilisation(report), 0.75);
    report.wall_s = 0;
    EXPECT_EQ(utilisation(report), 0);
}

TEST(Utilisation, IsCpuTimeOverTheTimeItWasCountedTimesTheCpusAvailable) {
    RunReport report;
    report.wall_s = 1;  // the last result came early: shutting down took the rest
    report.cpu_s = 3;
    report.cpus_used = 1;
    report.cpu_span_s = 4;
    report.cpus_available = 2;
    EXPECT_DOUBLE_EQ(utilisation(report), 0.375);
}

TEST(Utilisation, OfManyWorkersOnAShortPlanCoversTheirStartAndStaysAtMostOne) {
    // Spawning 64 workers costs far more CPU than 4 no-op tasks: counted against the time
    // from the mode's start to the last worker reaped, it is still no more than the machine.
    const RunConfig config = config_for(64, 4, 0, 0);
    const Plan plan = testing::plan_for(config);
    CollectingSink sink;
    std::stop_source never;
    const RunReport report = testing::runner_for(Mode::Processes, config, never.get_token())->run(plan, sink);
    EXPECT_EQ(report.ok, 4u);
    EXPECT_EQ(report.cpus_available, available_cpus());
    EXPECT_GE(report.cpu_span_s, report.wall_s);
    EXPECT_GT(report.cpu_s, 0);
    EXPECT_LE(utilisation(report), 1.0);
    EXPECT_EQ(report.placement.size(), 64u) << "the run waits for every worker";
}

TEST(Utilisation, UnpinnedPoolsUseAtMostTheAvailableCpus) {
    for (Mode mode : kAllModes) {
        RunConfig config = config_for(64, 1, 0, 0);
        if (mode == Mode::Processes) config.workers = 2;  // spawning 64 workers is slow for nothing
        CollectingSink sink;
        std::stop_source never;
        const RunReport report =
            testing::runner_for(mode, config, never.get_token())->run(testing::plan_for(config), sink);
        const int expected = mode == Mode::Sequential ? 1 : std::min(config.workers, available_cpus());
        EXPECT_EQ(report.cpus_used, expected) << to_string(mode);
    }
}

class StoppableMode : public ::testing::TestWithParam<Mode> {};

TEST_P(StoppableMode, AStopRequestEndsTheRunEarlyAndMarksItInterrupted) {
    const RunConfig config = config_for(2, 6, 30, 30);  // would take minutes
    CollectingSink sink;
    std::stop_source stop;
    std::jthread stopper([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        stop.request_stop();
    });
    const RunReport report =
        testing::runner_for(GetParam(), config, stop.get_token())->run(testing::plan_for(config), sink);
    EXPECT_TRUE(report.interrupted);
    EXPECT_EQ(report.ok, 0u);
    EXPECT_TRUE(sink.results.empty());
}

TEST_P(StoppableMode, AStopRequestCancelsComputingTasksToo) {
    RunConfig config = config_for(2, 6, 0, 0);
    config.task = "cpu";
    config.settings["cpu_n"] = std::uint64_t{100'000'000'000};  // minutes of work per task
    CollectingSink sink;
    std::stop_source stop;
    std::jthread stopper([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        stop.request_stop();
    });
    const RunReport report =
        testing::runner_for(GetParam(), config, stop.get_token())->run(testing::plan_for(config), sink);
    EXPECT_TRUE(report.interrupted);
    EXPECT_EQ(report.ok, 0u);
    EXPECT_TRUE(sink.results.empty());
}

INSTANTIATE_TEST_SUITE_P(AllModes, StoppableMode, ::testing::ValuesIn(kAllModes), mode_name);

}  // namespace
}  // namespace taskfarm
