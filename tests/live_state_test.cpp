// The live view's state without a server or a browser: what the page is sent for results
// and events (counts, lanes, running tasks, bars, failures, the table), that tiny tasks
// share bars, and that deltas hold only what changed. tests/live_view_test.py runs the page
// in Chromium.

#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "live_view.hpp"
#include "plan.hpp"
#include "runner.hpp"
#include "support.hpp"

namespace taskfarm {
namespace {

TaskResult result_of(TaskId id, const std::string& worker, double start_s, double end_s, bool ok = true,
                     std::string error = {}) {
    TaskResult result;
    result.id = id;
    result.worker = worker;
    result.ok = ok;
    result.error = std::move(error);
    result.start_s = start_s;
    result.end_s = end_s;
    return result;
}

RunEvent started(TaskId id, const std::string& worker, double at_s) {
    return {.kind = RunEvent::Kind::TaskStarted,
            .at_s = at_s,
            .worker = worker,
            .detail = {},
            .task = id,
            .task_type = nullptr,
            .attempt = 1,
            .started_s = at_s};
}

const nlohmann::json& lane_named(const nlohmann::json& mode, const std::string& name) {
    for (const auto& lane : mode["lanes"])
        if (lane["name"] == name) return lane;
    throw std::runtime_error("no lane " + name);
}

TEST(LiveState, CountsLanesRunningTasksAndBarsFollowTheRun) {
    LiveState state("coordinator --ui 0", false);
    state.begin_mode("threads", 3);
    state.event(started(0, "t1", 0.0));
    state.event(started(1, "t2", 0.0));
    nlohmann::json mode = state.snapshot()["modes"][0];
    EXPECT_EQ(mode["running"], 2);
    EXPECT_EQ(lane_named(mode, "t1")["running"], nlohmann::json::array({0, 0.0}));
    EXPECT_EQ(mode["ended"], false);
    state.result(result_of(0, "t1", 0.0, 0.5));
    state.event(started(2, "t1", 0.5));
    state.result(result_of(1, "t2", 0.0, 0.6, false, "<b>no</b>"));
    state.result(result_of(2, "t1", 0.5, 1.0));
    const nlohmann::json snapshot = state.snapshot();
    mode = snapshot["modes"][0];
    EXPECT_EQ(mode["ok"], 2);
    EXPECT_EQ(mode["failed"], 1);
    EXPECT_EQ(mode["running"], 0);
    EXPECT_EQ(mode["ended"], true);  // every task has its result
    EXPECT_EQ(lane_named(mode, "t1")["done"], 2);
    EXPECT_TRUE(lane_named(mode, "t1")["running"].is_null());
    ASSERT_EQ(mode["bars"].size(), 3u);  // 0.5 s tasks are far from tiny: a bar each
    EXPECT_EQ(mode["bars"][1][4], 1);    // failed
    ASSERT_EQ(snapshot["failures"].size(), 1u);
    EXPECT_EQ(snapshot["failures"][0]["error"], "<b>no</b>");  // as data: the page shows it as text
    EXPECT_EQ(snapshot["title"], "coordinator --ui 0");
}

// A Farm tells the count as it submits, and its results may catch up with its submits: a
// mode that seemed over goes on when more come, and counts them all (the Farm's live view
// said 11 of 12 when the 12th submit came after the 11th result).
TEST(LiveState, TasksGivenAfterAllSeemedDoneCountAndTheModeGoesOn) {
    LiveState state("farm", false);
    state.begin_mode("threads", 0);
    state.set_tasks(1);
    state.result(result_of(0, "t1", 0.0, 0.1));
    EXPECT_EQ(state.snapshot()["modes"][0]["ended"], true);
    state.set_tasks(2);
    nlohmann::json mode = state.snapshot()["modes"][0];
    EXPECT_EQ(mode["tasks"], 2);
    EXPECT_EQ(mode["ended"], false);
    state.result(result_of(1, "t1", 0.1, 0.2));
    mode = state.snapshot()["modes"][0];
    EXPECT_EQ(mode["tasks"], 2);
    EXPECT_EQ(mode["ok"], 2);
    EXPECT_EQ(mode["ended"], true);
}

TEST(LiveState, TinyTasksShareABarThatCountsThem) {
    LiveState state("", false);
    state.begin_mode("processes", 10'000);
    for (TaskId id = 0; id < 10'000; ++id)
        state.result(result_of(id, id % 2 ? "w2" : "w1", 1.0 + static_cast<double>(id) * 1e-5,
                               1.0 + static_cast<double>(id + 1) * 1e-5));
    const nlohmann::json mode = state.snapshot()["modes"][0];
    ASSERT_EQ(mode["bars"].size(), 2u);  // one per lane
    std::size_t tasks = 0;
    for (const auto& bar : mode["bars"]) tasks += bar[5].get<std::size_t>();
    EXPECT_EQ(tasks, 10'000u);
}

TEST(LiveState, KeepsAtMostKMaxFailuresWithTheirReasonsButCountsAll) {
    LiveState state("", false);
    state.begin_mode("sequential", 500);
    for (TaskId id = 0; id < 500; ++id) state.result(result_of(id, "seq", 0, 0, false, "failed on purpose"));
    const nlohmann::json snapshot = state.snapshot();
    EXPECT_EQ(snapshot["failures"].size(), LiveState::kMaxFailures);
    EXPECT_EQ(snapshot["failures_total"], 500);
}

TEST(LiveState, ADeltaHoldsWhatChangedSinceTheLastAndNothingOnceAllIsSent) {
    LiveState state("", false);
    state.begin_mode("threads", 2);
    state.result(result_of(0, "t1", 0, 1));
    ASSERT_TRUE(state.delta());  // everything so far
    state.result(result_of(1, "t2", 0, 1.5));
    const auto delta = state.delta();
    ASSERT_TRUE(delta);
    const nlohmann::json& mode = (*delta)["modes"][0];
    ASSERT_EQ(mode["lanes"].size(), 1u);
    EXPECT_EQ(mode["lanes"][0]["name"], "t2");
    ASSERT_EQ(mode["bars"].size(), 1u);
    EXPECT_EQ(mode["bars"][0][0], 1);  // the bar's index
    EXPECT_FALSE(delta->contains("title"));
    EXPECT_FALSE(state.delta());  // the mode is over and nothing changed
    RunReport report;
    report.mode = "threads";
    report.failures.push_back({1, "x"});
    state.finish({report});
    const auto last = state.delta();
    ASSERT_TRUE(last);
    EXPECT_TRUE((*last)["finished"]);
    EXPECT_EQ((*last)["reports"][0]["mode"], "threads");
    EXPECT_FALSE((*last)["reports"][0].contains("failures"));  // the page lists them on its own
}

TEST(LiveState, WorkersSayWhereTheyRunAndWhenTheyAreGone) {
    LiveState state("", true);
    state.begin_mode("processes", 4);
    state.event({.kind = RunEvent::Kind::WorkerStarted, .at_s = 0, .worker = "w1", .detail = "pid 42"});
    state.event(
        {.kind = RunEvent::Kind::WorkerStarted, .at_s = 0, .worker = "n1-0", .detail = "remote on n1, attached"});
    state.event(started(0, "w1", 0.1));
    state.event({.kind = RunEvent::Kind::Requeued,
                 .at_s = 0.3,
                 .worker = "w1",
                 .detail = "worker w1 died",
                 .task = 0,
                 .task_type = nullptr,
                 .attempt = 1,
                 .started_s = 0.1});
    state.event({.kind = RunEvent::Kind::WorkerExited, .at_s = 0.3, .worker = "w1", .detail = "signal 9"});
    const nlohmann::json mode = state.snapshot()["modes"][0];
    EXPECT_EQ(lane_named(mode, "w1")["where"], "this machine, pid 42");
    EXPECT_EQ(lane_named(mode, "w1")["alive"], false);
    EXPECT_TRUE(lane_named(mode, "w1")["running"].is_null());
    EXPECT_EQ(lane_named(mode, "n1-0")["where"], "Slurm node n1");
    ASSERT_EQ(mode["bars"].size(), 1u);
    EXPECT_EQ(mode["bars"][0][4], 2);  // lost
    EXPECT_EQ(mode["bars"][0][5], 0);  // no finished task in it
}

// Decision 263: a runner writes each start into its lane's slot (no call, no lock of the
// state's); the lane runs the slot's task until that task's result, a requeue or the
// worker's exit ends it, and a later start of the same task (a retry) runs again.
TEST(LiveState, AStartWrittenToItsLanesSlotRunsUntilItsResult) {
    LiveState state("", false);
    state.begin_mode("threads", 3);
    StartSlot* t1 = state.start_slot("t1");
    ASSERT_NE(t1, nullptr);
    EXPECT_EQ(state.start_slot("t1"), t1);  // one per lane
    ASSERT_TRUE(state.delta());
    t1->set(0, 0.25);
    auto delta = state.delta();  // the start alone is news
    ASSERT_TRUE(delta);
    ASSERT_EQ((*delta)["modes"][0]["lanes"].size(), 1u);
    EXPECT_EQ((*delta)["modes"][0]["lanes"][0]["running"], nlohmann::json::array({0, 0.25}));
    EXPECT_EQ((*delta)["modes"][0]["running"], 1);
    TaskResult failed = result_of(0, "t1", 0.25, 0.5, false, "retried");
    state.result(failed);
    EXPECT_TRUE(lane_named(state.snapshot()["modes"][0], "t1")["running"].is_null());
    t1->set(0, 0.5);  // its second attempt
    EXPECT_EQ(lane_named(state.snapshot()["modes"][0], "t1")["running"], nlohmann::json::array({0, 0.5}));
    // Results handed over in a batch: the lane's latest start ends only with its own result.
    t1->set(1, 0.75);
    std::vector<Finished> batch(2);
    batch[0].result = result_of(0, "t1", 0.5, 0.75);
    batch[1].result = result_of(2, "t2", 0.0, 0.8);
    state.results(batch);
    nlohmann::json mode = state.snapshot()["modes"][0];
    EXPECT_EQ(lane_named(mode, "t1")["running"], nlohmann::json::array({1, 0.75}));
    EXPECT_EQ(mode["running"], 1);
    batch.resize(1);
    batch[0].result = result_of(1, "t1", 0.75, 0.9);
    state.results(batch);
    mode = state.snapshot()["modes"][0];
    EXPECT_EQ(mode["running"], 0);
    EXPECT_EQ(mode["ok"], 3);
    EXPECT_EQ(mode["failed"], 1);
    EXPECT_EQ(lane_named(mode, "t1")["done"], 3);
}

// Many threads writing starts into their slots while another hands results over in batches
// and a third takes deltas: no start is half-written, and the counts add up.
TEST(LiveState, StartsFromManyThreadsAtOnceAreWhole) {
    LiveState state("", false);
    constexpr int kThreads = 4;
    constexpr TaskId kEach = 20'000;
    state.begin_mode("threads", kThreads * kEach);
    std::vector<std::jthread> threads;
    for (int t = 0; t < kThreads; ++t)
        threads.emplace_back([&state, t] {
            const std::string name = fmt::format("t{}", t + 1);
            StartSlot* slot = state.start_slot(name);
            std::vector<Finished> batch;
            for (TaskId i = 0; i < kEach; ++i) {
                const TaskId id = static_cast<TaskId>(t) * kEach + i;
                slot->set(id, static_cast<double>(id));  // a start's time says whose it is
                batch.push_back({{}, result_of(id, name, static_cast<double>(id), static_cast<double>(id))});
                if (batch.size() == 64 || i + 1 == kEach) {
                    state.results(batch);
                    batch.clear();
                }
            }
        });
    std::jthread reader([&state](std::stop_token stop) {
        while (!stop.stop_requested()) {
            const auto delta = state.delta();
            if (!delta) continue;
            for (const auto& lane : (*delta)["modes"][0]["lanes"]) {
                if (lane["running"].is_null()) continue;
                ASSERT_EQ(lane["running"][0].get<double>(), lane["running"][1].get<double>());
            }
        }
    });
    threads.clear();  // joined
    reader.request_stop();
    reader.join();
    const nlohmann::json mode = state.snapshot()["modes"][0];
    EXPECT_EQ(mode["ok"], kThreads * kEach);
    EXPECT_EQ(mode["running"], 0);
    for (int t = 0; t < kThreads; ++t) EXPECT_EQ(lane_named(mode, fmt::format("t{}", t + 1))["done"], kEach);
}

// Decision 306: a batch in runs of several lanes counts each result on its own lane, merges
// short ok ones into the lane's last bar and ends a lane's start only with its own result; a
// delta no page reads is not made, and the next one holds what changed after it.
TEST(LiveState, BatchesOfSeveralLanesAndDeltasNoPageReads) {
    LiveState state("", false);
    state.begin_mode("threads", 7);
    StartSlot* t1 = state.start_slot("t1");
    StartSlot* t2 = state.start_slot("t2");
    t1->set(2, 0.0020);
    t2->set(5, 0.0025);
    std::vector<Finished> batch(5);
    batch[0].result = result_of(0, "t1", 0.0000, 0.0001);
    batch[1].result = result_of(1, "t1", 0.0001, 0.0002);
    batch[2].result = result_of(3, "t2", 0.0000, 0.0001);
    batch[3].result = result_of(4, "t2", 0.0001, 0.0002, false, "no");  // a failure is a bar of its own
    batch[4].result = result_of(2, "t1", 0.0002, 0.0003);               // ends t1's start
    state.results(batch);
    EXPECT_FALSE(state.delta(false));  // nobody reads it: none made
    nlohmann::json mode = state.snapshot()["modes"][0];
    EXPECT_EQ(mode["ok"], 4);
    EXPECT_EQ(mode["failed"], 1);
    EXPECT_EQ(lane_named(mode, "t1")["done"], 3);
    EXPECT_EQ(lane_named(mode, "t2")["done"], 2);
    EXPECT_TRUE(lane_named(mode, "t1")["running"].is_null());
    EXPECT_EQ(lane_named(mode, "t2")["running"], nlohmann::json::array({5, 0.0025}));
    ASSERT_EQ(mode["bars"].size(), 3u);  // t1's three tasks in one bar, t2's ok one, t2's failure
    EXPECT_EQ(mode["bars"][0][5], 3);
    EXPECT_EQ(mode["bars"][2][4], 1);  // failed
    EXPECT_EQ(state.snapshot()["failures"].size(), 1u);
    // After the unmade delta, the next holds only what changed since: t2's last result.
    batch.resize(1);
    batch[0].result = result_of(5, "t2", 0.0025, 0.0030, false, "again");
    state.results(batch);
    const auto delta = state.delta();
    ASSERT_TRUE(delta);
    ASSERT_EQ((*delta)["modes"][0]["lanes"].size(), 1u);
    EXPECT_EQ((*delta)["modes"][0]["lanes"][0]["name"], "t2");
    EXPECT_EQ((*delta)["modes"][0]["bars"].size(), 1u);
    ASSERT_EQ((*delta)["failures"].size(), 1u);  // the new failure, not the one before the unmade delta
    EXPECT_EQ((*delta)["failures"][0]["error"], "again");
    EXPECT_EQ((*delta)["modes"][0]["ended"], false);  // 6 of 7
}

// The threads runner writes its starts through the slot (ModeRecorder::started): a thread on a
// long task shows it running while the other's results come, and a run's end leaves none.
TEST(LiveState, AThreadsRunShowsWhatRunsThroughTheSlots) {
    RunConfig config;
    config.workers = 2;
    config.task = "sleep";
    config.tasks = 41;
    config.settings["duration_s"] = {0.0, 0.0};  // no-ops, but for the one made long below
    config.worker_bin = testing::bin("worker");
    std::vector<TaskSpec> tasks;
    const Plan made = testing::plan_for(config);
    const auto cursor = made.open();
    for (TaskSpec task; cursor->take(task) == TaskCursor::Take::Task;) tasks.push_back(task);
    ASSERT_EQ(tasks.size(), 41u);
    tasks[0].params.at("seconds") = 60.0;
    const Plan plan = Plan::of(std::move(tasks));
    LiveState state("", false);
    FanOutSink sinks;
    sinks.add(std::make_unique<LiveSink>(state));
    std::stop_source stop;
    std::jthread run([&] { testing::runner_for(Mode::Threads, config, stop.get_token())->run(plan, sinks); });
    nlohmann::json mode;
    EXPECT_TRUE(testing::eventually(
        [&] {
            mode = state.snapshot()["modes"][0];
            return mode["ok"] == 40 && mode["running"] == 1;
        },
        std::chrono::seconds(30)))
        << mode.dump();
    bool long_one_runs = false;
    for (const auto& lane : mode["lanes"]) long_one_runs = long_one_runs || lane["running"][0] == 0;
    EXPECT_TRUE(long_one_runs) << mode.dump();
    stop.request_stop();
    run.join();
}

}  // namespace
}  // namespace taskfarm
