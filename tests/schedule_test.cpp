// The schedule alone: every dispatch policy, driven event by event with a clock of the
// test's own and a fake world that records what the schedule asks for. No process, no
// socket, no sleep: each test runs in microseconds.

#include <algorithm>
#include <map>
#include <set>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "errors.hpp"
#include "schedule.hpp"
#include "support.hpp"

namespace taskfarm {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

struct Sent {
    PeerId peer;
    std::vector<Attempt> attempts;
};

// Does nothing but remember; pids count up from 100, and sends to a peer in `gone` fail.
class FakeWorld final : public ScheduleActions {
public:
    std::vector<std::string> spawned;  // names, in order
    std::vector<pid_t> pids;           // the pid each spawn returned
    std::vector<pid_t> killed;
    std::vector<Sent> sent;
    std::map<PeerId, int> heartbeats;
    std::vector<PeerId> shutdowns;
    std::vector<TaskResult> recorded;
    std::vector<TaskResult> retried;            // record_retry
    std::vector<std::string> recycled_reasons;  // recycled
    std::vector<Sent> cancels;                  // send_cancel
    std::vector<RunEvent> events;
    std::vector<Placement> placed;
    int clock_restarts = 0;
    std::set<PeerId> gone;
    std::vector<std::pair<std::string, TaskId>> starts;  // worker, task: for the live view
    std::map<pid_t, LastRunning> boards;                 // what last_running() answers; else Known::No
    std::vector<pid_t> boards_read_live;                 // read while the pid was neither exited nor killed
    std::set<pid_t> exited;                              // the test says so before Schedule::exited

    pid_t spawn(const std::string& name, int) override {
        spawned.push_back(name);
        pids.push_back(static_cast<pid_t>(100 + pids.size()));
        return pids.back();
    }
    void kill(pid_t pid) override { killed.push_back(pid); }
    LastRunning last_running(pid_t pid) override {
        if (!exited.contains(pid) && std::find(killed.begin(), killed.end(), pid) == killed.end())
            boards_read_live.push_back(pid);
        const auto board = boards.find(pid);
        return board == boards.end() ? LastRunning{} : board->second;
    }
    void kill_group(pid_t group) override { killed_groups.push_back(group); }
    std::vector<pid_t> killed_groups;
    bool send_tasks(const PeerId& peer, std::span<const Attempt> attempts) override {
        if (gone.contains(peer)) return false;
        sent.push_back({peer, {attempts.begin(), attempts.end()}});
        return true;
    }
    bool send_heartbeat(const PeerId& peer) override {
        ++heartbeats[peer];
        return !gone.contains(peer);
    }
    void send_shutdown(const PeerId& peer) override { shutdowns.push_back(peer); }
    void record(const TaskSpec&, TaskResult result) override { recorded.push_back(std::move(result)); }
    void record_retry(const TaskSpec&, TaskResult result) override { retried.push_back(std::move(result)); }
    void send_cancel(const PeerId& peer, std::span<const Attempt> attempts) override {
        cancels.push_back({peer, {attempts.begin(), attempts.end()}});
    }
    void recycled(const std::string& worker, const std::string& reason) override {
        recycled_reasons.push_back(worker + ": " + reason);
    }
    void note(RunEvent event) override { events.push_back(std::move(event)); }
    void place(const Placement& placement, int) override { placed.push_back(placement); }
    void restart_clock() override { ++clock_restarts; }
    void started(const std::string& worker, const TaskSpec& task, std::uint32_t, Clock::time_point) override {
        starts.emplace_back(worker, task.id);
    }
    double seconds_at(Clock::time_point) const override { return 0; }

    // The attempts sent to `peer` so far, in order.
    std::vector<Attempt> sent_to(const PeerId& peer) const {
        std::vector<Attempt> all;
        for (const Sent& s : sent)
            if (s.peer == peer) all.insert(all.end(), s.attempts.begin(), s.attempts.end());
        return all;
    }
    std::size_t count(RunEvent::Kind kind) const {
        return static_cast<std::size_t>(
            std::count_if(events.begin(), events.end(), [&](const RunEvent& e) { return e.kind == kind; }));
    }
};

Plan sleeps(std::size_t tasks, double timeout_s = 0) {
    std::vector<TaskSpec> list;
    for (std::size_t i = 0; i < tasks; ++i)
        list.push_back(testing::task_of("sleep", {{"seconds", 0.001}}, static_cast<TaskId>(i), timeout_s));
    return Plan::of(std::move(list));
}

// A schedule over `plan` with a fake world and a clock that moves only when told.
struct Rig {
    Plan plan;
    FakeWorld world;
    Clock::time_point now = Clock::time_point{} + std::chrono::hours(1);
    Schedule schedule;
    std::set<std::pair<TaskId, std::uint32_t>> answered;

    Rig(Plan p, DispatchOptions options, TaskBytes bytes = encoded_task_bytes,
        std::size_t max_bytes = proto::kMaxBatchBytes)
        : plan(std::move(p)), schedule(plan, std::move(options), world, now, {}, std::move(bytes), max_bytes) {}

    void advance(milliseconds by) {
        now += by;
        schedule.tick(now);
    }
    // Spawns the initial workers, one per tick.
    void spawn_all() {
        for (std::size_t before = 0; before == 0 || world.spawned.size() > before;) {
            before = world.spawned.size();
            schedule.tick(now);
        }
    }
    // The worker spawned as `name` (its latest pid) says hello from peer `name`.
    void hello(const std::string& name) {
        pid_t pid = 0;
        for (std::size_t i = 0; i < world.spawned.size(); ++i)
            if (world.spawned[i] == name) pid = world.pids[i];
        proto::Hello hello;
        hello.name = name;
        hello.pid = pid;
        schedule.frame(name, now);
        schedule.hello(name, hello, std::nullopt, now);
        schedule.tick(now);
    }
    void remote_hello(const std::string& name) {
        proto::Hello hello;
        hello.name = name;
        hello.pid = 100;  // the same as a local pid of ours: must not matter
        schedule.hello(name, hello, RemotePeer{"plaintext", "tcp://127.0.0.1:5"}, now);
        schedule.tick(now);
    }
    proto::Result result_of(const Attempt& attempt, double run_s = 0) const {
        proto::Result result;
        result.id = attempt.index;
        result.attempt = attempt.number;
        result.kind = "sleep";
        result.ok = true;
        result.run_s = run_s;
        return result;
    }
    // `peer` answers every task it was sent and has not answered yet; returns how many.
    std::size_t answer_all(const PeerId& peer, double run_s = 0) {
        std::size_t count = 0;
        for (const Attempt& attempt : world.sent_to(peer)) {
            if (!answered.emplace(attempt.index, attempt.number).second) continue;
            schedule.frame(peer, now);
            schedule.result(peer, result_of(attempt, run_s), now);
            ++count;
        }
        schedule.tick(now);
        return count;
    }
};

std::set<TaskId> ids_of(const std::vector<TaskResult>& results) {
    std::set<TaskId> ids;
    for (const TaskResult& result : results)
        EXPECT_TRUE(ids.insert(result.id).second) << "task " << result.id << " twice";
    return ids;
}

TEST(Schedule, SpawnsOneWorkerPerTickAndHeartbeatsTheFirstWhileTheRestStart) {
    Rig rig(sleeps(4), {.workers = 50, .heartbeat_interval = milliseconds(200)});
    rig.schedule.tick(rig.now);
    ASSERT_EQ(rig.world.spawned, std::vector<std::string>{"w1"});
    rig.hello("w1");
    // Spawning is slow: each of the other 49 takes 10 ms here, 490 ms in all.
    while (rig.world.spawned.size() < 50) rig.advance(milliseconds(10));
    EXPECT_GE(rig.world.heartbeats["w1"], 2) << "w1 heard nothing while the others were spawned";
    EXPECT_TRUE(rig.world.killed.empty());
    EXPECT_FALSE(rig.schedule.done());
}

TEST(Schedule, AResultsCostRanOnTheHostItsWorkerNamedInItsHello) {
    Rig rig(sleeps(2), {.workers = 1, .prefetch = 1});
    rig.spawn_all();
    proto::Hello hello;
    hello.name = "w1";
    hello.pid = rig.world.pids.at(0);
    hello.host = "node7\x1b[2J";  // from the wire: made printable
    rig.schedule.frame("w1", rig.now);
    rig.schedule.hello("w1", hello, std::nullopt, rig.now);
    rig.schedule.tick(rig.now);
    ASSERT_EQ(rig.world.sent.size(), 1u);
    proto::Result measured = rig.result_of(rig.world.sent_to("w1").at(0));
    measured.cost = {.scope = "process", .user_s = 0.5, .sys_s = 0.25, .max_rss_kb = 900};
    rig.schedule.result("w1", measured, rig.now);
    rig.schedule.tick(rig.now);
    proto::Result unmeasured = rig.result_of(rig.world.sent_to("w1").at(1));  // an older worker: no cost
    rig.schedule.result("w1", unmeasured, rig.now);
    ASSERT_EQ(rig.world.recorded.size(), 2u);
    EXPECT_EQ(rig.world.recorded[0].cost.scope, TaskCost::Scope::Process);
    EXPECT_EQ(rig.world.recorded[0].cost.host, "node7\\x1b[2J");
    EXPECT_EQ(rig.world.recorded[0].cost.user_s, 0.5);
    EXPECT_EQ(rig.world.recorded[1].cost.scope, TaskCost::Scope::None);
    EXPECT_EQ(rig.world.recorded[1].cost.host, "");
}

TEST(Schedule, AWorkerThatDiesIsNotedAsLostForTheJournal) {
    Rig rig(sleeps(2), {.workers = 1, .prefetch = 1});
    rig.spawn_all();
    rig.hello("w1");
    rig.schedule.exited(rig.world.pids.at(0), "worker w1 died (signal 9)", rig.now);
    const auto exited = std::find_if(rig.world.events.begin(), rig.world.events.end(),
                                     [](const RunEvent& e) { return e.kind == RunEvent::Kind::WorkerExited; });
    ASSERT_NE(exited, rig.world.events.end());
    EXPECT_TRUE(exited->lost);
    EXPECT_EQ(exited->detail, "worker w1 died (signal 9)");
}

TEST(Schedule, AConnectionThatNeverSaysHelloGetsNoTask) {
    Rig rig(sleeps(4), {.workers = 1});
    rig.spawn_all();
    rig.schedule.frame("stranger", rig.now);
    rig.schedule.result("stranger", rig.result_of({0, 1}), rig.now);  // forged: not recorded
    rig.advance(milliseconds(1));
    EXPECT_TRUE(rig.world.sent.empty());
    EXPECT_TRUE(rig.world.recorded.empty());
    rig.hello("w1");
    ASSERT_EQ(rig.world.sent.size(), 1u);
    EXPECT_EQ(rig.world.sent[0].peer, "w1");
}

TEST(Schedule, AutoPrefetchSendsOneTaskUntilTimesAreKnownThenAFullWindowInOneBatch) {
    Rig rig(sleeps(300), {.workers = 1});
    rig.spawn_all();
    rig.hello("w1");
    ASSERT_EQ(rig.world.sent.size(), 1u);
    EXPECT_EQ(rig.world.sent[0].attempts.size(), 1u);
    rig.answer_all("w1", 0.000001);  // no-op tasks
    ASSERT_EQ(rig.world.sent.size(), 2u);
    EXPECT_EQ(rig.world.sent[1].attempts.size(), kMaxWindow);
}

TEST(Schedule, AutoPrefetchHoldsAboutTheQueueBudgetOfLongerTasks) {
    Rig rig(sleeps(300), {.workers = 1});
    rig.spawn_all();
    rig.hello("w1");
    rig.answer_all("w1", 0.0009);  // 0.9 ms each: 2 fit in the 2 ms budget
    EXPECT_EQ(rig.world.sent.back().attempts.size(), 2u);
}

TEST(Schedule, ATaskStartsWhenSentToAnIdleWorkerOrWhenTheOneBeforeItOnTheWorkerEnds) {
    Rig rig(sleeps(4), {.workers = 1, .prefetch = 4});
    rig.spawn_all();
    rig.hello("w1");
    using Starts = std::vector<std::pair<std::string, TaskId>>;
    EXPECT_EQ(rig.world.starts, (Starts{{"w1", 0}}));  // one task until the first result
    rig.answer_all("w1");                              // then the other three in one batch: the first of them runs
    ASSERT_EQ(rig.world.sent_to("w1").size(), 4u);
    EXPECT_EQ(rig.world.starts, (Starts{{"w1", 0}, {"w1", 1}}));
    rig.schedule.result("w1", rig.result_of(rig.world.sent_to("w1")[1]), rig.now);
    EXPECT_EQ(rig.world.starts, (Starts{{"w1", 0}, {"w1", 1}, {"w1", 2}}));
    rig.schedule.result("w1", rig.result_of(rig.world.sent_to("w1")[2]), rig.now);
    rig.schedule.result("w1", rig.result_of(rig.world.sent_to("w1")[3]), rig.now);
    EXPECT_EQ(rig.world.starts, (Starts{{"w1", 0}, {"w1", 1}, {"w1", 2}, {"w1", 3}}));  // each once
}

TEST(Schedule, PrefetchIsTheMostAWorkerHolds) {
    Rig rig(sleeps(300), {.workers = 1, .prefetch = 8});
    rig.spawn_all();
    rig.hello("w1");
    rig.answer_all("w1");
    EXPECT_EQ(rig.world.sent.back().attempts.size(), 8u);
    rig.schedule.frame("w1", rig.now);
    rig.advance(milliseconds(1));  // nothing answered: no credit, nothing sent
    EXPECT_EQ(rig.world.sent_to("w1").size(), 9u);
}

TEST(Schedule, AShortPlanSpreadsOverEveryWorkerBeforeAnyQueuesMore) {
    Rig rig(sleeps(9), {.workers = 3, .prefetch = 8});
    rig.spawn_all();
    for (const char* name : {"w1", "w2", "w3"}) rig.hello(name);
    // The three results arrive together: each may now hold 8, but gets its share of the 6 left.
    for (const char* name : {"w1", "w2", "w3"})
        rig.schedule.result(name, rig.result_of(rig.world.sent_to(name)[0]), rig.now);
    rig.schedule.tick(rig.now);
    for (const char* name : {"w1", "w2", "w3"}) EXPECT_EQ(rig.world.sent_to(name).size(), 3u) << name;
}

TEST(Schedule, EveryTaskIsRecordedOnceAndTheRunIsDone) {
    Rig rig(sleeps(1000), {.workers = 2});
    rig.spawn_all();
    rig.hello("w1");
    rig.hello("w2");
    while (rig.answer_all("w1") + rig.answer_all("w2") > 0) {
    }
    EXPECT_EQ(ids_of(rig.world.recorded).size(), 1000u);
    EXPECT_TRUE(rig.schedule.done());
}

TEST(Schedule, WithSpawnOnDemandAWorkerStartsOnlyWhenATaskWaitsForOne) {
    // -j 0 of a streamed input (decision 275): up to 64 workers, started as tasks wait.
    Rig rig(sleeps(3), {.workers = 64, .prefetch = 1, .spawn_on_demand = true});
    rig.spawn_all();
    ASSERT_EQ(rig.world.spawned, std::vector<std::string>{"w1"}) << "one at a time: the next once w1 is up";
    rig.hello("w1");  // takes task 0; two wait, so w2 starts
    EXPECT_EQ(rig.world.spawned, (std::vector<std::string>{"w1", "w2"}));
    rig.answer_all("w1");  // w1 is free again before w2 is up: it takes the next, no third worker
    rig.spawn_all();
    EXPECT_EQ(rig.world.spawned, (std::vector<std::string>{"w1", "w2"}));
    EXPECT_FALSE(rig.schedule.done()) << "w2 has not said hello";
    rig.hello("w2");  // takes the last task: nothing waits, no w3
    rig.spawn_all();
    EXPECT_EQ(rig.world.spawned.size(), 2u);
    while (rig.answer_all("w1") + rig.answer_all("w2") > 0) {
    }
    EXPECT_EQ(ids_of(rig.world.recorded).size(), 3u);
    EXPECT_TRUE(rig.schedule.done()) << "done with 2 of the 64 workers it may start";
}

TEST(Schedule, WithSpawnOnDemandAWorkerLostBeforeItsHelloLaterInTheRunStopsTheSpawningNotTheRun) {
    // -j 0 on a machine out of processes: w2's fork failed. The run goes on with w1.
    Rig rig(sleeps(3), {.workers = 64, .prefetch = 1, .spawn_on_demand = true});
    rig.spawn_all();
    rig.hello("w1");  // two wait: w2 starts
    ASSERT_EQ(rig.world.spawned, (std::vector<std::string>{"w1", "w2"}));
    EXPECT_NO_THROW(rig.schedule.exited(rig.world.pids.at(1), "worker w2 could not start", rig.now));
    while (rig.answer_all("w1") > 0) rig.spawn_all();
    EXPECT_EQ(rig.world.spawned.size(), 2u) << "no more started on demand";
    EXPECT_EQ(ids_of(rig.world.recorded).size(), 3u) << "every task ran on w1";
    EXPECT_TRUE(rig.schedule.done());
}

TEST(Schedule, WithSpawnOnDemandTheFirstWorkerLostBeforeItsHelloIsStillABrokenInstallation) {
    Rig rig(sleeps(3), {.workers = 64, .prefetch = 1, .spawn_on_demand = true});
    rig.spawn_all();
    EXPECT_THROW(rig.schedule.exited(rig.world.pids.at(0), "worker w1 exited 127", rig.now), RunError);
}

TEST(Schedule, TheRunIsNotDoneUntilTheLastWorkerSaidHello) {
    Rig rig(sleeps(1), {.workers = 2});
    rig.spawn_all();
    rig.hello("w1");
    rig.answer_all("w1");
    EXPECT_EQ(rig.world.recorded.size(), 1u);
    EXPECT_FALSE(rig.schedule.done());
    rig.hello("w2");
    EXPECT_TRUE(rig.schedule.done());
}

TEST(Schedule, AWorkersDeathRequeuesItsTasksWithTheNextAttemptAndReplacesIt) {
    Rig rig(sleeps(2), {.workers = 2});
    rig.spawn_all();
    rig.hello("w1");
    rig.hello("w2");
    ASSERT_EQ(rig.world.sent_to("w1").size(), 1u);
    const TaskId lost = rig.world.sent_to("w1")[0].index;
    rig.schedule.exited(rig.world.pids[0], "worker w1 died (signal 9)", rig.now);
    EXPECT_EQ(rig.world.spawned.back(), "w1") << "a replacement of the same name";
    EXPECT_EQ(rig.world.count(RunEvent::Kind::Requeued), 1u);
    rig.answer_all("w2");
    const auto to_w2 = rig.world.sent_to("w2");
    ASSERT_EQ(to_w2.size(), 2u);
    EXPECT_EQ(to_w2[1].index, lost);
    EXPECT_EQ(to_w2[1].number, 2u);
    rig.answer_all("w2");
    ASSERT_EQ(rig.world.recorded.size(), 2u);
    EXPECT_EQ(rig.world.recorded[1].attempt, 2u);
}

TEST(Schedule, ATaskWhoseWorkersKeepDyingFailsAfterMaxAttempts) {
    Rig rig(sleeps(1), {.workers = 1, .max_attempts = 2});
    rig.spawn_all();
    for (int death = 1; death <= 2; ++death) {
        rig.hello("w1");  // the latest w1
        ASSERT_EQ(rig.world.sent_to("w1").size(), static_cast<std::size_t>(death));
        rig.schedule.exited(rig.world.pids.back(), "worker w1 died (signal 6)", rig.now);
    }
    ASSERT_EQ(rig.world.recorded.size(), 1u);
    EXPECT_FALSE(rig.world.recorded[0].ok);
    EXPECT_EQ(rig.world.recorded[0].attempt, 2u);
    EXPECT_EQ(rig.world.recorded[0].error, "gave up after 2 attempts: worker w1 died (signal 6)");
    EXPECT_EQ(rig.world.spawned.size(), 2u) << "no replacement once every task is done";
}

TEST(Schedule, WhenRespawnsAreUsedUpTheRestFailsSayingSo) {
    Rig rig(sleeps(3), {.workers = 1, .max_respawns = 1});
    rig.spawn_all();
    rig.hello("w1");
    rig.schedule.exited(rig.world.pids.back(), "worker w1 died (signal 9)", rig.now);
    ASSERT_EQ(rig.world.spawned.size(), 2u);
    rig.hello("w1");
    rig.schedule.exited(rig.world.pids.back(), "worker w1 died (signal 9)", rig.now);
    rig.advance(milliseconds(1));
    EXPECT_EQ(rig.world.spawned.size(), 2u);
    ASSERT_EQ(rig.world.recorded.size(), 3u);
    for (const TaskResult& result : rig.world.recorded) {
        EXPECT_FALSE(result.ok);
        EXPECT_NE(result.error.find("--max-respawns 1"), std::string::npos) << result.error;
    }
    EXPECT_TRUE(rig.schedule.done());
}

TEST(Schedule, ASilentWorkerIsKilledItsTaskRequeuedAndItIsReplaced) {
    Rig rig(sleeps(2), {.workers = 2, .heartbeat_timeout = milliseconds(1000)});
    rig.spawn_all();
    rig.hello("w1");
    rig.hello("w2");
    // w2 keeps talking, w1 says nothing.
    for (int i = 0; i < 50; ++i) {
        rig.schedule.frame("w2", rig.now);
        rig.advance(milliseconds(100));
    }
    EXPECT_EQ(rig.world.killed, std::vector<pid_t>{rig.world.pids[0]});
    EXPECT_EQ(rig.world.spawned.size(), 3u);
    ASSERT_EQ(rig.world.count(RunEvent::Kind::Requeued), 1u);
    const auto requeue = std::find_if(rig.world.events.begin(), rig.world.events.end(),
                                      [](const RunEvent& e) { return e.kind == RunEvent::Kind::Requeued; });
    EXPECT_NE(requeue->detail.find("worker w1 silent for 1."), std::string::npos) << requeue->detail;
    EXPECT_EQ(rig.world.killed.size(), 1u) << "w2 talked, so it stays";
}

TEST(Schedule, APeerThatSaysHelloAndHoldsItsTaskHoldsOneAndOnlyUntilTheHeartbeatTimeout) {
    Rig rig(sleeps(400), {.workers = 1, .heartbeat_timeout = milliseconds(1000)});
    rig.spawn_all();
    rig.hello("w1");
    rig.answer_all("w1");  // times are known: a newcomer could get a full window
    for (int i = 0; i < 100; ++i) rig.remote_hello(fmt::format("rogue{}", i));
    for (int i = 0; i < 100; ++i) EXPECT_EQ(rig.world.sent_to(fmt::format("rogue{}", i)).size(), 1u);
    // w1 runs everything else; the rogues answer nothing and send nothing.
    while (rig.answer_all("w1") > 0) {
    }
    EXPECT_EQ(rig.world.recorded.size(), 300u);
    EXPECT_FALSE(rig.schedule.done());
    for (int i = 0; i < 12; ++i) {
        rig.schedule.frame("w1", rig.now);
        rig.advance(milliseconds(100));
    }
    EXPECT_EQ(rig.world.shutdowns.size(), 100u) << "each rogue is dropped at the heartbeat timeout";
    EXPECT_TRUE(rig.world.killed.empty()) << "remote peers are not ours to kill";
    while (rig.answer_all("w1") > 0) {
    }
    EXPECT_EQ(ids_of(rig.world.recorded).size(), 400u);
    EXPECT_TRUE(rig.schedule.done());
}

TEST(Schedule, AWorkerThatNeverSaysHelloAtStartUpIsARunError) {
    Rig rig(sleeps(2), {.workers = 2, .start_timeout = milliseconds(500)});
    rig.spawn_all();
    rig.hello("w1");
    try {
        for (int i = 0; i < 10; ++i) rig.advance(milliseconds(100));
        FAIL() << "expected RunError";
    } catch (const RunError& e) {
        EXPECT_EQ(std::string(e.what()), "worker w2 (pid 101) did not say hello within 0.5 s before saying hello");
    }
    EXPECT_EQ(rig.world.killed, std::vector<pid_t>{101});
}

TEST(Schedule, AReplacementThatNeverSaysHelloIsKilledAndReplacedAgain) {
    Rig rig(sleeps(2), {.workers = 1, .start_timeout = milliseconds(500)});
    rig.spawn_all();
    rig.hello("w1");
    rig.schedule.exited(rig.world.pids[0], "worker w1 died (signal 9)", rig.now);
    ASSERT_EQ(rig.world.spawned.size(), 2u);
    for (int i = 0; i < 7; ++i) rig.advance(milliseconds(100));
    EXPECT_EQ(rig.world.killed.back(), rig.world.pids[1]);
    EXPECT_EQ(rig.world.spawned.size(), 3u);
}

TEST(Schedule, ATaskPastItsTimeoutAndTheGraceFailsAndItsWorkerIsKilled) {
    // The worker's own grace to stop it (a command's SIGTERM to SIGKILL), then a second.
    Rig rig(sleeps(3, 0.5),
            {.workers = 1, .prefetch = 4, .heartbeat_timeout = milliseconds(600000), .stop_grace = milliseconds(500)});
    rig.spawn_all();
    rig.hello("w1");
    rig.answer_all("w1");  // task 0 done; 1 and 2 go out, 1 starts now and never ends
    ASSERT_EQ(rig.world.sent_to("w1").size(), 3u);
    for (int i = 0; i < 19; ++i) {  // 1.9 s: within deadline + grace + 1 s
        rig.schedule.frame("w1", rig.now);
        rig.advance(milliseconds(100));
    }
    ASSERT_EQ(rig.world.recorded.size(), 1u) << "killed before the worker's own grace was over";
    EXPECT_TRUE(rig.world.killed.empty());
    for (int i = 0; i < 2; ++i) {
        rig.schedule.frame("w1", rig.now);
        rig.advance(milliseconds(100));
    }
    ASSERT_EQ(rig.world.recorded.size(), 2u);
    EXPECT_EQ(rig.world.recorded[1].id, 1u);
    EXPECT_EQ(rig.world.recorded[1].attempt, 1u);
    EXPECT_EQ(rig.world.recorded[1].error, "timed out after 0.5 s: worker w1 did not stop it, so it was killed");
    EXPECT_EQ(rig.world.killed, std::vector<pid_t>{100});
    EXPECT_EQ(rig.world.count(RunEvent::Kind::Requeued), 0u) << "task 2, queued behind it, never started";
    rig.hello("w1");
    EXPECT_EQ(rig.world.sent_to("w1").back().index, 2u);
    EXPECT_EQ(rig.world.sent_to("w1").back().number, 1u) << "not charged for the overrun of the task before it";
}

// A worker of ours reports its commands' process groups in heartbeats; when it is lost, or
// the run ends, they get SIGKILL (decision 116). A remote worker's are not this machine's.
TEST(Schedule, TheGroupsALostWorkerReportedAreKilled) {
    Rig rig(sleeps(2), {.workers = 2, .max_attempts = 1, .max_respawns = 0});
    rig.spawn_all();
    rig.hello("w1");
    rig.hello("w2");
    rig.remote_hello("r1");
    proto::Heartbeat beat;
    beat.groups = {4242, 0, 1, -7};  // 0, 1 and negatives are never groups to kill
    rig.schedule.heartbeat("w1", beat, rig.now);
    beat.groups = {5151};
    rig.schedule.heartbeat("r1", beat, rig.now);
    beat.groups = {6000, 6001};
    rig.schedule.heartbeat("w2", beat, rig.now);
    beat.groups = {6001};  // the latest report is the truth: 6000 ended
    rig.schedule.heartbeat("w2", beat, rig.now);
    rig.schedule.exited(rig.world.pids[0], "worker w1 died (signal 9)", rig.now);
    EXPECT_EQ(rig.world.killed_groups, std::vector<pid_t>{4242});
    rig.schedule.exited(100, "a pid of a remote worker means nothing here", rig.now);  // already gone: no-op
    rig.schedule.end_commands();
    EXPECT_EQ(rig.world.killed_groups, (std::vector<pid_t>{4242, 6001}));
    rig.schedule.end_commands();  // once each
    EXPECT_EQ(rig.world.killed_groups.size(), 2u);
}

TEST(Schedule, DuplicateStaleAndForgedResultsAreIgnored) {
    Rig rig(sleeps(2), {.workers = 2});
    rig.spawn_all();
    rig.hello("w1");
    rig.hello("w2");
    const Attempt of_w1 = rig.world.sent_to("w1")[0];
    const Attempt of_w2 = rig.world.sent_to("w2")[0];
    rig.schedule.result("w1", rig.result_of(of_w2), rig.now);             // forged: w1 does not hold it
    rig.schedule.result("w1", rig.result_of({of_w1.index, 2}), rig.now);  // an attempt never sent
    EXPECT_TRUE(rig.world.recorded.empty());
    rig.schedule.result("w1", rig.result_of(of_w1), rig.now);
    rig.schedule.result("w1", rig.result_of(of_w1), rig.now);  // duplicate
    EXPECT_EQ(rig.world.recorded.size(), 1u);
    // w2 is declared dead; its late result is no longer its own.
    rig.schedule.exited(rig.world.pids[1], "worker w2 died (signal 9)", rig.now);
    rig.schedule.result("w2", rig.result_of(of_w2), rig.now);
    EXPECT_EQ(rig.world.recorded.size(), 1u);
    while (rig.answer_all("w1") > 0) {
    }
    ASSERT_EQ(rig.world.recorded.size(), 2u);
    EXPECT_EQ(rig.world.recorded[1].attempt, 2u);
}

TEST(Schedule, ReturnedTasksGoBackToTheFrontWithTheSameAttempt) {
    Rig rig(sleeps(20), {.workers = 2});
    rig.spawn_all();
    rig.hello("w1");
    rig.answer_all("w1");  // no-op times: w1 gets a window
    const auto held = rig.world.sent_to("w1");
    ASSERT_GE(held.size(), 5u);
    proto::Returned back;
    back.busy_s = 1.0;  // the running task is slow: the window shrinks to one
    for (std::size_t i = 2; i < held.size(); ++i) back.tasks.push_back({held[i].index, held[i].number});
    back.tasks.push_back({999, 1});  // stale: not one it holds
    rig.schedule.returned("w1", back, rig.now);
    rig.hello("w2");
    const auto to_w2 = rig.world.sent_to("w2");
    ASSERT_EQ(to_w2.size(), 1u);
    EXPECT_EQ(to_w2[0].index, held[2].index);
    EXPECT_EQ(to_w2[0].number, 1u);
    // A result for a returned task from the worker that gave it back is stale.
    rig.schedule.result("w1", rig.result_of(held[3]), rig.now);
    EXPECT_EQ(rig.world.recorded.size(), 1u);
}

TEST(Schedule, ALostRemoteWorkerIsToldToStopAndNeitherKilledNorReplaced) {
    Rig rig(sleeps(2), {.workers = 1, .heartbeat_timeout = milliseconds(1000), .listening = true});
    rig.spawn_all();
    rig.remote_hello("far");
    rig.hello("w1");
    ASSERT_EQ(rig.world.sent_to("far").size(), 1u);
    for (int i = 0; i < 12; ++i) {
        rig.schedule.frame("w1", rig.now);
        rig.advance(milliseconds(100));
    }
    EXPECT_EQ(rig.world.shutdowns, std::vector<PeerId>{"far"});
    EXPECT_TRUE(rig.world.killed.empty());
    EXPECT_EQ(rig.world.spawned.size(), 1u);
    EXPECT_EQ(rig.world.count(RunEvent::Kind::Requeued), 1u);
    // The remote worker's pid equals w1's: its loss must not be taken for w1's exit.
    rig.schedule.exited(100, "worker w1 died (signal 9)", rig.now);
    EXPECT_EQ(rig.world.spawned.size(), 2u);
}

TEST(Schedule, ALostLocalPeerWeDidNotSpawnIsNeitherKilledNorReplaced) {
    Rig rig(sleeps(2), {.workers = 1, .heartbeat_timeout = milliseconds(1000)});
    rig.spawn_all();
    rig.hello("w1");
    proto::Hello stranger;
    stranger.name = "by-hand";
    stranger.pid = 999;
    rig.schedule.hello("by-hand", stranger, std::nullopt, rig.now);
    rig.schedule.tick(rig.now);
    ASSERT_EQ(rig.world.sent_to("by-hand").size(), 1u);
    for (int i = 0; i < 12; ++i) {
        rig.schedule.frame("w1", rig.now);
        rig.advance(milliseconds(100));
    }
    EXPECT_EQ(rig.world.count(RunEvent::Kind::Requeued), 1u);
    EXPECT_TRUE(rig.world.killed.empty());
    EXPECT_EQ(rig.world.spawned.size(), 1u);
}

TEST(Schedule, ExpectedRemoteWorkersHoldBackTheFirstTaskAndRestartTheClock) {
    Rig rig(sleeps(2), {.workers = 1, .listening = true, .expect_remote = 1});
    rig.spawn_all();
    rig.hello("w1");
    EXPECT_TRUE(rig.world.sent.empty());
    rig.remote_hello("far");
    EXPECT_EQ(rig.world.clock_restarts, 1);
    EXPECT_EQ(rig.world.sent.size(), 2u);
}

TEST(Schedule, ExpectedRemoteWorkersThatNeverComeAreARunError) {
    Rig rig(sleeps(2), {.workers = 1, .listening = true, .expect_remote = 2, .wait_remote = milliseconds(500)});
    rig.spawn_all();
    rig.hello("w1");
    rig.remote_hello("far");
    EXPECT_THROW(
        for (int i = 0; i < 10; ++i) {
            rig.schedule.frame("w1", rig.now);
            rig.schedule.frame("far", rig.now);
            rig.advance(milliseconds(100));
        },
        RunError);
}

TEST(Schedule, ListeningWithNoWorkerLeftWaitsForOneThenFailsTheRest) {
    Rig rig(sleeps(2), {.workers = 1, .max_respawns = 0, .listening = true, .wait_remote = milliseconds(500)});
    rig.spawn_all();
    rig.hello("w1");
    rig.schedule.exited(rig.world.pids[0], "worker w1 died (signal 9)", rig.now);
    rig.advance(milliseconds(100));
    EXPECT_TRUE(rig.world.recorded.empty()) << "a remote worker may still attach";
    for (int i = 0; i < 7; ++i) rig.advance(milliseconds(100));
    ASSERT_EQ(rig.world.recorded.size(), 2u);
    EXPECT_EQ(rig.world.recorded[0].error,
              "not run: no worker was left and none attached within 0.5 s (--wait-workers)");
}

TEST(Schedule, WhenNoMoreWorkersWillComeTheRestFailOnceTheLastIsGone) {
    Rig rig(sleeps(2), {.workers = 0, .heartbeat_timeout = milliseconds(1000), .listening = true, .expect_remote = 1});
    rig.remote_hello("far");
    rig.schedule.no_more_workers("the step ended");
    rig.advance(milliseconds(100));
    EXPECT_TRUE(rig.world.recorded.empty()) << "its worker is still there";
    for (int i = 0; i < 15; ++i) rig.advance(milliseconds(100));  // silent past the heartbeat timeout
    ASSERT_EQ(rig.world.recorded.size(), 2u);                     // the one it held and the one waiting, at once
    for (const auto& result : rig.world.recorded) EXPECT_EQ(result.error, "not run: the step ended");
}

TEST(Schedule, WhenNoMoreWorkersWillComeBeforeTheFirstTaskItIsARunError) {
    Rig rig(sleeps(2), {.workers = 0, .listening = true, .expect_remote = 2});
    rig.remote_hello("far");
    EXPECT_THROW(rig.schedule.no_more_workers("the step ended"), RunError);
}

TEST(Schedule, WithWorkersOnDemandNoWorkerWaitsForTheAllocatorNotWaitWorkers) {
    // --alloc: an allocation may wait in Slurm's queue longer than --wait-workers.
    Rig rig(sleeps(2), {.workers = 0, .listening = true, .wait_remote = milliseconds(500), .workers_on_demand = true});
    for (int i = 0; i < 20; ++i) rig.advance(milliseconds(100));
    EXPECT_TRUE(rig.world.recorded.empty()) << "an allocation may still start";
    EXPECT_EQ(rig.schedule.remote_load().waiting, 2u);
    EXPECT_TRUE(rig.schedule.remote_load().workers.empty());
    rig.remote_hello("tf1-7.0");
    const auto load = rig.schedule.remote_load();
    EXPECT_EQ(load.waiting, 1u) << "the first task went out";
    ASSERT_EQ(load.workers.size(), 1u);
    EXPECT_EQ(load.workers[0], std::make_pair(std::string("tf1-7.0"), std::size_t{1}));
}

// A plan without a count (a Farm's submits, standard input): what waits is "some", not a number,
// and the allocator's log must not print the stand-in (it said "many task(s) wait").
TEST(Schedule, WithoutAPlanCountTheRemoteLoadSaysItsWaitingIsNoCount) {
    Plan plan = sleeps(2);
    plan.count.reset();
    Rig rig(std::move(plan), {.workers = 0, .listening = true, .workers_on_demand = true});
    rig.advance(milliseconds(100));
    const auto load = rig.schedule.remote_load();
    EXPECT_GT(load.waiting, 0u);
    EXPECT_FALSE(load.counted);
    Rig counted(sleeps(2), {.workers = 0, .listening = true, .workers_on_demand = true});
    counted.advance(milliseconds(100));
    EXPECT_TRUE(counted.schedule.remote_load().counted);
    EXPECT_EQ(counted.schedule.remote_load().waiting, 2u);
}

TEST(Schedule, WithWorkersOnDemandTheAllocatorGivingUpFailsWhatWaits) {
    Rig rig(sleeps(2), {.workers = 0, .listening = true, .wait_remote = milliseconds(500), .workers_on_demand = true});
    rig.advance(milliseconds(100));
    rig.schedule.no_more_workers("cannot get an allocation: sbatch failed");
    rig.advance(milliseconds(100));
    ASSERT_EQ(rig.world.recorded.size(), 2u);
    for (const auto& result : rig.world.recorded)
        EXPECT_EQ(result.error, "not run: cannot get an allocation: sbatch failed");
}

TEST(Schedule, BatchesAreCappedByEncodedBytes) {
    // Tasks of 40,000 bytes, 128 to a window: about 5.1 MB, more than one frame may hold.
    Rig rig(sleeps(300), {.workers = 1}, [](const TaskSpec&, std::uint32_t) { return std::size_t{40000}; });
    rig.spawn_all();
    rig.hello("w1");
    while (rig.answer_all("w1") > 0) {
    }
    EXPECT_EQ(ids_of(rig.world.recorded).size(), 300u);
    std::size_t largest = 0;
    for (const Sent& sent : rig.world.sent) {
        EXPECT_LE(sent.attempts.size() * 40000, proto::kMaxBatchBytes);
        largest = std::max(largest, sent.attempts.size());
    }
    EXPECT_EQ(largest, proto::kMaxBatchBytes / 40000) << "full frames, not one task each";
}

TEST(Schedule, BatchesAreCappedByCount) {
    Rig rig(sleeps(3000), {.workers = 1, .prefetch = 3000},
            [](const TaskSpec&, std::uint32_t) { return std::size_t{1}; });
    rig.spawn_all();
    rig.hello("w1");
    rig.answer_all("w1");
    ASSERT_EQ(rig.world.sent.size(), 4u);
    EXPECT_EQ(rig.world.sent[1].attempts.size(), proto::kMaxBatch);
    EXPECT_EQ(rig.world.sent[2].attempts.size(), proto::kMaxBatch);
    EXPECT_EQ(rig.world.sent[3].attempts.size(), 3000 - 1 - 2 * proto::kMaxBatch);
}

TEST(Schedule, ATaskTooLargeForAFrameFailsNamingItselfAndTheOthersRun) {
    Rig rig(
        sleeps(5), {.workers = 1},
        [](const TaskSpec& task, std::uint32_t) { return task.id == 2 ? std::size_t{2000} : std::size_t{10}; }, 1000);
    rig.spawn_all();
    rig.hello("w1");
    while (rig.answer_all("w1") > 0) {
    }
    ASSERT_EQ(ids_of(rig.world.recorded).size(), 5u);
    for (const TaskResult& result : rig.world.recorded) {
        if (result.id != 2) {
            EXPECT_TRUE(result.ok) << result.id;
            continue;
        }
        EXPECT_FALSE(result.ok);
        EXPECT_EQ(result.error,
                  "not sent: task 2 takes 2000 bytes encoded, more than the 1000 bytes a message to a "
                  "worker may hold");
    }
    EXPECT_TRUE(rig.world.killed.empty());
    EXPECT_TRUE(rig.schedule.done());
}

// A lost worker's tasks, issue 26: only the attempt it had started is charged.

// w1 holds tasks 1..8 (task 0 answered, so its window is open) and is lost with `board`;
// then a new w1 runs everything. Returns the attempt each task's result has.
std::map<TaskId, std::uint32_t> lose_a_full_window(Rig& rig, const LastRunning& board, bool silent = false) {
    rig.spawn_all();
    rig.hello("w1");
    rig.answer_all("w1");
    EXPECT_EQ(rig.world.sent_to("w1").size(), 9u);
    const pid_t pid = rig.world.pids.back();
    rig.world.boards[pid] = board;
    if (silent) {
        while (rig.world.killed.empty()) rig.advance(milliseconds(100));
    } else {
        rig.world.exited.insert(pid);
        rig.schedule.exited(pid, "worker w1 died (signal 6)", rig.now);
    }
    EXPECT_TRUE(rig.world.boards_read_live.empty()) << "a board is read only once its process has ended";
    EXPECT_EQ(rig.world.spawned.size(), 2u) << "replaced";
    rig.world.sent.clear();  // the replacement has the same peer name
    rig.answered.clear();
    rig.hello("w1");
    while (rig.answer_all("w1") > 0) {
    }
    std::map<TaskId, std::uint32_t> attempts;
    for (const TaskResult& result : rig.world.recorded) {
        EXPECT_TRUE(result.ok) << result.id << ": " << result.error;
        EXPECT_TRUE(attempts.emplace(result.id, result.attempt).second) << "task " << result.id << " twice";
    }
    EXPECT_EQ(attempts.size(), 12u);
    EXPECT_TRUE(rig.schedule.done());
    return attempts;
}

std::map<TaskId, std::uint32_t> all_first_but(std::map<TaskId, std::uint32_t> except) {
    std::map<TaskId, std::uint32_t> attempts;
    for (TaskId id = 0; id < 12; ++id) attempts[id] = except.contains(id) ? except[id] : 1;
    return attempts;
}

TEST(Schedule, ALostWorkerChargesOnlyTheTaskItsBoardSaysItWasRunningAndTheRestGoBackUnchanged) {
    // Tasks 1 and 2 ran, their results died in the worker's outbox; task 3 was running; 4..8
    // were queued behind it.
    Rig rig(sleeps(12), {.workers = 1, .prefetch = 8});
    const auto attempts = lose_a_full_window(rig, {.known = LastRunning::Known::Running, .id = 3, .attempt = 1});
    EXPECT_EQ(attempts, all_first_but({{3, 2}}));
    ASSERT_EQ(rig.world.count(RunEvent::Kind::Requeued), 1u);
    const auto requeue = std::find_if(rig.world.events.begin(), rig.world.events.end(),
                                      [](const RunEvent& e) { return e.kind == RunEvent::Kind::Requeued; });
    EXPECT_EQ(requeue->task, 3u);
    EXPECT_EQ(requeue->attempt, 1u);
}

TEST(Schedule, ASilentWorkerIsKilledBeforeItsBoardIsReadAndChargesOnlyItsRunningTask) {
    Rig rig(sleeps(12), {.workers = 1, .prefetch = 8, .heartbeat_timeout = milliseconds(1000)});
    const auto attempts =
        lose_a_full_window(rig, {.known = LastRunning::Known::Running, .id = 5, .attempt = 1}, /*silent=*/true);
    EXPECT_EQ(attempts, all_first_but({{5, 2}}));
}

TEST(Schedule, AWorkerLostBetweenTasksChargesNoTask) {
    Rig rig(sleeps(12), {.workers = 1, .prefetch = 8});
    EXPECT_EQ(lose_a_full_window(rig, {.known = LastRunning::Known::Idle}), all_first_but({}));
    EXPECT_EQ(rig.world.count(RunEvent::Kind::Requeued), 0u);
}

TEST(Schedule, WithoutABoardTheOldestTaskWithoutAResultIsTheOneCharged) {
    // A worker runs its tasks one at a time in the order sent: no other can have started.
    Rig rig(sleeps(12), {.workers = 1, .prefetch = 8});
    EXPECT_EQ(lose_a_full_window(rig, {}), all_first_but({{1, 2}}));
    EXPECT_EQ(rig.world.count(RunEvent::Kind::Requeued), 1u);
}

TEST(Schedule, ACrashTaskAmongManyFailsAloneAfterMaxAttempts) {
    // Task 3 crashes its worker each time it runs, with the results of the tasks before it
    // still in the outbox: it alone is charged, and fails; everything else runs once.
    Rig rig(sleeps(12), {.workers = 1, .prefetch = 8, .max_attempts = 3});
    rig.spawn_all();
    std::set<std::pair<TaskId, std::uint32_t>> sent_before;
    for (int guard = 0; guard < 100 && !rig.schedule.done(); ++guard) {
        if (rig.world.spawned.size() > rig.world.pids.size()) break;
        rig.hello("w1");
        for (int round = 0; round < 100; ++round) {
            const auto held = rig.world.sent_to("w1");
            const auto crash = std::find_if(held.begin(), held.end(), [&](const Attempt& a) {
                return a.index == 3 && !rig.answered.contains({a.index, a.number});
            });
            if (crash != held.end()) {
                const pid_t pid = rig.world.pids.back();
                rig.world.boards[pid] = {.known = LastRunning::Known::Running, .id = 3, .attempt = crash->number};
                rig.answered.emplace(crash->index, crash->number);
                rig.world.exited.insert(pid);
                rig.schedule.exited(pid, "worker w1 died (signal 6)", rig.now);
                break;
            }
            if (rig.answer_all("w1") == 0) break;
        }
        rig.world.sent.clear();  // the next w1 has the same peer name
        rig.answered.clear();
    }
    ASSERT_TRUE(rig.schedule.done());
    std::map<TaskId, TaskResult> results;
    for (const TaskResult& result : rig.world.recorded) results[result.id] = result;
    ASSERT_EQ(results.size(), 12u);
    for (const auto& [id, result] : results) {
        if (id == 3) {
            EXPECT_FALSE(result.ok);
            EXPECT_EQ(result.attempt, 3u);
            EXPECT_EQ(result.error, "gave up after 3 attempts: worker w1 died (signal 6)");
        } else {
            EXPECT_TRUE(result.ok) << id << ": " << result.error;
            EXPECT_EQ(result.attempt, 1u) << id;
        }
    }
    EXPECT_EQ(rig.world.count(RunEvent::Kind::Requeued), 2u);
}

TEST(Schedule, ALostRemoteWorkersOldestTaskIsChargedAndTheRestGoBackUnchanged) {
    Rig rig(sleeps(6), {.workers = 0, .prefetch = 4, .heartbeat_timeout = milliseconds(1000), .listening = true});
    rig.remote_hello("far");
    rig.answer_all("far");
    ASSERT_EQ(rig.world.sent_to("far").size(), 5u);
    rig.advance(milliseconds(1100));
    rig.advance(milliseconds(100));
    EXPECT_EQ(rig.world.shutdowns, std::vector<PeerId>{"far"});
    rig.world.sent.clear();
    rig.answered.clear();
    rig.remote_hello("far");
    while (rig.answer_all("far") > 0) {
    }
    std::map<TaskId, std::uint32_t> attempts;
    for (const TaskResult& result : rig.world.recorded) attempts[result.id] = result.attempt;
    EXPECT_EQ(attempts, (std::map<TaskId, std::uint32_t>{{0, 1}, {1, 2}, {2, 1}, {3, 1}, {4, 1}, {5, 1}}));
}

TEST(Schedule, ASendToAVanishedWorkerRequeuesWhatItWasGiven) {
    Rig rig(sleeps(2), {.workers = 2});
    rig.spawn_all();
    rig.world.gone.insert("w1");
    rig.hello("w1");
    EXPECT_EQ(rig.world.killed, std::vector<pid_t>{100});
    EXPECT_EQ(rig.world.count(RunEvent::Kind::Requeued), 1u);
    rig.hello("w2");
    while (rig.answer_all("w2") > 0) {
    }
    EXPECT_EQ(ids_of(rig.world.recorded).size(), 2u);
}

}  // namespace
}  // namespace taskfarm

namespace taskfarm {
namespace {

// `peer` answers what it holds and has not answered, failing each; returns how many.
std::size_t fail_all(Rig& rig, const PeerId& peer) {
    std::size_t count = 0;
    for (const Attempt& attempt : rig.world.sent_to(peer)) {
        if (!rig.answered.emplace(attempt.index, attempt.number).second) continue;
        proto::Result result = rig.result_of(attempt);
        result.ok = false;
        result.error = fmt::format("failed on attempt {}", attempt.number);
        rig.schedule.result(peer, result, rig.now);
        ++count;
    }
    rig.schedule.tick(rig.now);
    return count;
}

TEST(Schedule, RunsAFailedTaskAgainUpToRetriesAndRecordsOnlyTheLastAttempt) {
    Rig rig(sleeps(1), {.workers = 2, .retries = 2});
    rig.spawn_all();
    rig.hello("w1");
    rig.hello("w2");
    std::size_t failures = 0;
    for (int round = 0; round < 5 && rig.world.recorded.empty(); ++round)
        failures += fail_all(rig, "w1") + fail_all(rig, "w2");
    EXPECT_EQ(failures, 3u);
    ASSERT_EQ(rig.world.retried.size(), 2u);
    EXPECT_EQ(rig.world.retried[0].attempt, 1u);
    EXPECT_EQ(rig.world.retried[1].attempt, 2u);
    ASSERT_EQ(rig.world.recorded.size(), 1u);
    EXPECT_FALSE(rig.world.recorded[0].ok);
    EXPECT_EQ(rig.world.recorded[0].attempt, 3u);
    EXPECT_EQ(rig.world.recorded[0].error, "failed on attempt 3");
    EXPECT_TRUE(rig.schedule.done());
}

TEST(Schedule, AnOkRetryIsTheResultAndAFailureWithoutRetriesIsFinal) {
    Rig rig(sleeps(2), {.workers = 1, .prefetch = 1, .retries = 1});
    rig.spawn_all();
    rig.hello("w1");
    ASSERT_EQ(fail_all(rig, "w1"), 1u);  // task 0, attempt 1: runs again
    ASSERT_EQ(rig.world.retried.size(), 1u);
    EXPECT_EQ(rig.answer_all("w1"), 1u);  // its attempt 2 goes first, and is ok
    ASSERT_EQ(rig.world.recorded.size(), 1u);
    EXPECT_TRUE(rig.world.recorded[0].ok);
    EXPECT_EQ(rig.world.recorded[0].id, 0u);
    EXPECT_EQ(rig.world.recorded[0].attempt, 2u);

    Rig none(sleeps(1), {.workers = 1});  // --retries 0, the default
    none.spawn_all();
    none.hello("w1");
    ASSERT_EQ(fail_all(none, "w1"), 1u);
    EXPECT_TRUE(none.world.retried.empty());
    ASSERT_EQ(none.world.recorded.size(), 1u);
    EXPECT_EQ(none.world.recorded[0].attempt, 1u);
}

TEST(Schedule, DrainingHandsOutNothingMoreAndIsDoneOnceNoWorkerHoldsATask) {
    Rig rig(sleeps(10), {.workers = 2, .prefetch = 1, .retries = 3});
    rig.spawn_all();
    rig.hello("w1");
    rig.hello("w2");
    ASSERT_EQ(rig.world.sent.size(), 2u);
    rig.schedule.drain(rig.now);
    EXPECT_FALSE(rig.schedule.done()) << "two tasks are still running";
    EXPECT_EQ(rig.answer_all("w1"), 1u);
    EXPECT_EQ(fail_all(rig, "w2"), 1u);  // not run again while draining: its failure is final
    rig.advance(milliseconds(500));
    EXPECT_EQ(rig.world.sent.size(), 2u) << "a task went out after the drain";
    EXPECT_TRUE(rig.schedule.done());
    ASSERT_EQ(rig.world.recorded.size(), 2u);
    EXPECT_TRUE(rig.world.retried.empty());
    EXPECT_EQ(rig.schedule.finished(), 2u) << "the 8 not handed out have no result: --resume runs them";
}

// A SIGTERM during the start-up (or while the fork server starts): the workers not spawned yet
// are not, since nothing more is handed out; before, the ticks spawned every one and shut them
// down again. The run is done at once, and the loop does not tick at once for a spawn.
TEST(Schedule, NoWorkerIsSpawnedOnceTheRunDrains) {
    for (const bool on_demand : {false, true}) {
        Rig rig(sleeps(10), {.workers = 4, .prefetch = 1, .spawn_on_demand = on_demand});
        rig.schedule.drain(rig.now);
        for (int tick = 0; tick < 8; ++tick) rig.advance(milliseconds(100));
        EXPECT_TRUE(rig.world.spawned.empty()) << on_demand;
        EXPECT_TRUE(rig.schedule.done()) << on_demand;
        EXPECT_GT(rig.schedule.next_deadline(), rig.now) << on_demand;
    }
    Rig rig(sleeps(10), {.workers = 4, .prefetch = 1});
    rig.schedule.tick(rig.now);  // w1
    rig.hello("w1");             // w2, and w1 holds a task
    rig.schedule.drain(rig.now);
    rig.spawn_all();
    EXPECT_EQ(rig.world.spawned, (std::vector<std::string>{"w1", "w2"}));
    EXPECT_FALSE(rig.schedule.done()) << "w1 holds a task";
    EXPECT_EQ(rig.answer_all("w1"), 1u);
    EXPECT_TRUE(rig.schedule.done());
}

// The counts that keep a pass of the loop O(1) (starting_, held_) follow every way a worker
// comes and goes: a worker lost with tasks, one lost before its hello, a recycled one.
TEST(Schedule, WithSpawnOnDemandWorkersLostOrReplacedKeepTheSpawningAndTheDrainRight) {
    Rig rig(sleeps(6), {.workers = 8, .prefetch = 1, .spawn_on_demand = true});
    rig.spawn_all();
    rig.hello("w1");  // holds task 0; w2 starts
    rig.hello("w2");  // holds task 1; w3 starts
    ASSERT_EQ(rig.world.spawned.size(), 3u);
    // w2 dies holding its task: it is replaced (a respawn, not an on-demand start) and its task requeued.
    rig.world.exited.insert(rig.world.pids.at(1));
    rig.schedule.exited(rig.world.pids.at(1), "worker w2 died", rig.now);
    rig.schedule.tick(rig.now);
    ASSERT_EQ(rig.world.spawned.size(), 4u);
    EXPECT_EQ(rig.world.spawned.back(), "w2");
    rig.hello("w3");
    rig.hello("w2");  // the replacement
    rig.spawn_all();
    rig.schedule.drain(rig.now);
    EXPECT_FALSE(rig.schedule.done()) << "w1, w2 and w3 hold tasks";
    rig.answer_all("w1");
    rig.answer_all("w3");
    EXPECT_FALSE(rig.schedule.done()) << "w2 holds one";
    rig.answer_all("w2");
    EXPECT_TRUE(rig.schedule.done());
}

TEST(Schedule, RecyclesAWorkerAtMaxTasksAndReplacesItWithoutARespawnOrAnAttempt) {
    // No respawn is allowed at all: a recycled worker's replacement must not need one.
    Rig rig(sleeps(5), {.workers = 1, .prefetch = 8, .max_respawns = 0, .max_tasks_per_worker = 2});
    rig.spawn_all();
    for (int round = 0; round < 20 && !rig.schedule.done(); ++round) {
        rig.hello("w1");
        // It is never sent more than it may run before it is recycled.
        const std::size_t held = rig.world.sent_to("w1").size() - rig.answered.size();
        EXPECT_LE(held, 2u);
        rig.answer_all("w1");
        if (!rig.world.shutdowns.empty() && rig.world.shutdowns.size() == rig.world.spawned.size())
            rig.schedule.exited(rig.world.pids.back(), "exited (status 0)", rig.now);
        rig.schedule.tick(rig.now);
    }
    EXPECT_TRUE(rig.schedule.done());
    ASSERT_EQ(rig.world.recorded.size(), 5u);
    for (const TaskResult& result : rig.world.recorded) EXPECT_EQ(result.attempt, 1u) << "task " << result.id;
    EXPECT_EQ(rig.world.spawned.size(), 3u) << "2 + 2 + 1 tasks";
    EXPECT_EQ(rig.world.recycled_reasons.size(), 2u);
    EXPECT_EQ(rig.world.recycled_reasons.at(0), "w1: it ran 2 tasks (--max-tasks-per-worker 2)");
    EXPECT_EQ(rig.world.count(RunEvent::Kind::Requeued), 0u);
    EXPECT_TRUE(rig.world.killed.empty());
}

TEST(Schedule, RecyclesAWorkerOverTheMemoryLimitOnlyAfterItHasRunATask) {
    Rig rig(sleeps(3), {.workers = 1, .prefetch = 1, .max_worker_memory = 10 << 20});
    rig.spawn_all();
    rig.hello("w1");
    proto::Heartbeat heavy;
    heavy.rss = 50 << 20;
    rig.schedule.heartbeat("w1", heavy, rig.now);  // over, but has run nothing yet: never recycled then
    EXPECT_TRUE(rig.world.shutdowns.empty());
    proto::Result result = rig.result_of(rig.world.sent_to("w1").at(0));
    result.rss = 50 << 20;
    rig.answered.emplace(0, 1);
    rig.schedule.result("w1", result, rig.now);
    ASSERT_EQ(rig.world.shutdowns.size(), 1u);
    ASSERT_EQ(rig.world.recycled_reasons.size(), 1u);
    EXPECT_EQ(rig.world.recycled_reasons[0], "w1: it uses 50.0 MiB of memory, over --max-worker-memory 10.0 MiB");
    rig.schedule.tick(rig.now);
    EXPECT_EQ(rig.world.sent_to("w1").size(), 1u) << "a recycled worker got another task";
    rig.schedule.exited(rig.world.pids.back(), "exited (status 0)", rig.now);
    EXPECT_EQ(rig.world.spawned.size(), 2u);
    rig.hello("w1");
    EXPECT_EQ(rig.answer_all("w1"), 1u);
    EXPECT_EQ(rig.answer_all("w1"), 1u);  // rss unknown (0): no reason to recycle
    EXPECT_TRUE(rig.schedule.done());
    EXPECT_EQ(rig.world.recorded.size(), 3u);
}

TEST(Schedule, AWorkerThatStartsOverTheMemoryLimitIsAConfigError) {
    Rig rig(sleeps(3), {.workers = 1, .max_worker_memory = 1 << 20});
    rig.spawn_all();
    proto::Hello hello;
    hello.name = "w1";
    hello.pid = rig.world.pids.at(0);
    hello.rss = 3 << 20;
    try {
        rig.schedule.hello("w1", hello, std::nullopt, rig.now);
        FAIL() << "no error";
    } catch (const ConfigError& e) {
        EXPECT_STREQ(e.what(),
                     "--max-worker-memory 1.0 MiB: worker w1 (pid 100) uses 3.0 MiB as it starts, before any "
                     "task; give a larger size");
    }
}

TEST(Schedule, ARecycledWorkerThatDoesNotExitIsKilledAndReplaced) {
    Rig rig(sleeps(3),
            {.workers = 1, .prefetch = 1, .heartbeat_timeout = milliseconds(2000), .max_tasks_per_worker = 1});
    rig.spawn_all();
    rig.hello("w1");
    EXPECT_EQ(rig.answer_all("w1"), 1u);
    ASSERT_EQ(rig.world.shutdowns.size(), 1u);
    rig.advance(milliseconds(1000));
    EXPECT_TRUE(rig.world.killed.empty());
    rig.advance(milliseconds(1500));
    EXPECT_EQ(rig.world.killed, std::vector<pid_t>{100});
    EXPECT_EQ(rig.world.spawned.size(), 2u);
}

TEST(Schedule, ACancelledTaskIsRecordedAtOnceWhenQueuedAndWhenItsWorkerAnswersWhenRunning) {
    Rig rig(sleeps(4), {.workers = 1, .prefetch = 1, .retries = 3});
    rig.spawn_all();
    rig.hello("w1");
    ASSERT_EQ(rig.world.sent_to("w1").size(), 1u);
    rig.schedule.cancel(3, rig.now);  // not made yet (the plan is made as it goes): recorded when its turn comes
    EXPECT_TRUE(rig.world.recorded.empty());
    rig.schedule.cancel(0, rig.now);  // running on w1: it is asked to stop it
    ASSERT_EQ(rig.world.cancels.size(), 1u);
    EXPECT_EQ(rig.world.cancels[0].peer, "w1");
    EXPECT_EQ(rig.world.cancels[0].attempts.at(0).index, 0u);
    EXPECT_EQ(fail_all(rig, "w1"), 1u);  // stopped: a failure, recorded as the cancel, not retried
    ASSERT_EQ(rig.world.recorded.size(), 1u);
    EXPECT_TRUE(rig.world.recorded[0].cancelled);
    EXPECT_EQ(rig.world.recorded[0].error, "cancelled (coordinator cancel)");
    EXPECT_TRUE(rig.world.retried.empty());
    rig.schedule.cancel(0, rig.now);  // twice: nothing more
    EXPECT_EQ(rig.world.cancels.size(), 1u);
    while (rig.answer_all("w1") > 0) {
    }
    EXPECT_TRUE(rig.schedule.done());
    EXPECT_EQ(ids_of(rig.world.recorded), (std::set<TaskId>{0, 1, 2, 3}));
    for (const TaskResult& result : rig.world.recorded)
        EXPECT_EQ(result.cancelled, result.id == 0 || result.id == 3) << "task " << result.id;
    for (const Attempt& sent : rig.world.sent_to("w1")) EXPECT_NE(sent.index, 3u) << "a cancelled task was sent";
}

// Resources (docs/resources.md): `asking` tasks ask for `request`, then `free` ones ask for nothing.
Plan asking(std::size_t tasks, const ResourceRequest& request) {
    std::vector<TaskSpec> list;
    for (std::size_t i = 0; i < tasks; ++i) {
        list.push_back(testing::task_of("sleep", {{"seconds", 0.001}}, static_cast<TaskId>(i)));
        list.back().resources = request;
    }
    return Plan::of(std::move(list));
}

// The tasks the schedule handed out and has no result for, by the rig's record.
std::vector<Attempt> unanswered(const Rig& rig) {
    std::vector<Attempt> open;
    for (const Sent& sent : rig.world.sent)
        for (const Attempt& attempt : sent.attempts)
            if (!rig.answered.contains({attempt.index, attempt.number})) open.push_back(attempt);
    return open;
}

TEST(ScheduleResources, ANamedCountLimitsHowManyRunAtOnceWhateverTheWorkers) {
    Rig rig(asking(6, {{"slot", 1}}),
            {.workers = 4, .resources = std::make_shared<const LocalResources>(ResourceRequest{{"slot", 2}})});
    rig.spawn_all();
    for (const char* name : {"w1", "w2", "w3", "w4"}) rig.hello(name);
    std::set<PeerId> used;
    std::size_t most = 0;
    for (int round = 0; rig.world.recorded.size() < 6; ++round) {
        ASSERT_LT(round, 20) << "the tasks never finished";
        const auto open = unanswered(rig);
        ASSERT_FALSE(open.empty()) << "nothing runs, " << rig.world.recorded.size() << " done";
        most = std::max(most, open.size());
        for (const Sent& sent : rig.world.sent) {
            EXPECT_EQ(sent.attempts.size(), 1u) << "a task that holds resources goes alone";
            used.insert(sent.peer);
        }
        // One result at a time, from the worker that got its task first.
        const Attempt first = open.front();
        for (const Sent& sent : rig.world.sent)
            if (std::any_of(sent.attempts.begin(), sent.attempts.end(),
                            [&](const Attempt& a) { return a.index == first.index; })) {
                rig.answered.emplace(first.index, first.number);
                rig.schedule.result(sent.peer, rig.result_of(first), rig.now);
                rig.schedule.tick(rig.now);
                break;
            }
    }
    EXPECT_EQ(most, 2u) << "slot=2: two at once, never more, on four workers";
    EXPECT_GE(used.size(), 2u);
    EXPECT_EQ(ids_of(rig.world.recorded).size(), 6u);
}

TEST(ScheduleResources, EachGpuGoesToOneTaskAtATimeAndComesBackWithItsResult) {
    Rig rig(asking(4, {{"gpu", 1}}), {.workers = 3,
                                      .resources = std::make_shared<const LocalResources>(
                                          ResourceRequest{}, std::vector<std::string>{"3", "5"})});
    rig.spawn_all();
    for (const char* name : {"w1", "w2", "w3"}) rig.hello(name);
    ASSERT_EQ(rig.world.sent.size(), 2u);
    std::set<std::string> held;
    for (const Sent& sent : rig.world.sent) held.insert(rig.schedule.task(sent.attempts.at(0).index).gpus);
    EXPECT_EQ(held, (std::set<std::string>{"3", "5"}));
    // The task on GPU 5 ends: the next task gets 5, and no other.
    const Sent on5 =
        rig.schedule.task(rig.world.sent[0].attempts[0].index).gpus == "5" ? rig.world.sent[0] : rig.world.sent[1];
    rig.answered.emplace(on5.attempts[0].index, 1);
    rig.schedule.result(on5.peer, rig.result_of(on5.attempts[0]), rig.now);
    rig.schedule.tick(rig.now);
    ASSERT_EQ(rig.world.sent.size(), 3u);
    EXPECT_EQ(rig.schedule.task(rig.world.sent[2].attempts.at(0).index).gpus, "5");
}

TEST(ScheduleResources, AWorkerLostUnderATaskGivesItsGpuBackAndTheTaskRunsAgainWithOne) {
    Rig rig(asking(1, {{"gpu", 1}}),
            {.workers = 2,
             .resources = std::make_shared<const LocalResources>(ResourceRequest{}, std::vector<std::string>{"0"})});
    rig.spawn_all();
    rig.hello("w1");
    ASSERT_EQ(rig.world.sent.size(), 1u);
    const PeerId first = rig.world.sent[0].peer;
    rig.hello("w2");
    rig.schedule.exited(rig.world.pids.at(first == "w1" ? 0 : 1), "worker died (signal 9)", rig.now);
    rig.schedule.tick(rig.now);
    ASSERT_EQ(rig.world.sent.size(), 2u) << "the GPU of the lost worker was not given back";
    EXPECT_NE(rig.world.sent[1].peer, first);
    EXPECT_EQ(rig.world.sent[1].attempts.at(0).number, 2u);
    EXPECT_EQ(rig.schedule.task(0).gpus, "0");
}

TEST(ScheduleResources, ATaskAsksOnlyLocalWorkersAndWaitsForOneThatHoldsNothing) {
    Rig rig(asking(2, {{"slot", 1}}),
            {.workers = 1,
             .prefetch = 8,
             .listening = true,
             .resources = std::make_shared<const LocalResources>(ResourceRequest{{"slot", 4}})});
    rig.spawn_all();
    rig.remote_hello("r1");
    EXPECT_TRUE(rig.world.sent.empty()) << "a remote worker has none of the local workers' resources";
    rig.hello("w1");
    ASSERT_EQ(rig.world.sent.size(), 1u);
    EXPECT_EQ(rig.world.sent[0].peer, "w1");
    EXPECT_EQ(rig.world.sent[0].attempts.size(), 1u) << "queued behind another, it would hold its slot idle";
    rig.answer_all("w1");
    ASSERT_EQ(rig.world.sent.size(), 2u);
    EXPECT_EQ(rig.world.sent[1].peer, "w1");
}

TEST(ScheduleResources, ARequestTheWorkersCanNeverMeetFailsItsTaskInsteadOfWaitingForever) {
    Rig rig(asking(1, {{"gpu", 2}}),
            {.workers = 1,
             .resources = std::make_shared<const LocalResources>(ResourceRequest{}, std::vector<std::string>{"0"})});
    rig.spawn_all();
    rig.hello("w1");
    ASSERT_EQ(rig.world.recorded.size(), 1u);
    EXPECT_FALSE(rig.world.recorded[0].ok);
    EXPECT_NE(rig.world.recorded[0].error.find("not run: asks for gpu=2"), std::string::npos)
        << rig.world.recorded[0].error;
    EXPECT_TRUE(rig.world.sent.empty());
}

// -j 0 (spawn_on_demand) and resources (decision 311): the pool is every local worker's, so a
// new worker helps a task at the head only when what it asks for is free.
DispatchOptions on_demand_with(ResourceRequest counts, std::vector<std::string> gpus = {}) {
    return {.workers = 8,
            .prefetch = 1,
            .resources = std::make_shared<const LocalResources>(std::move(counts), std::move(gpus)),
            .spawn_on_demand = true};
}

// `tasks` sleeps, of which task 1 alone asks for `request`.
Plan second_asks(std::size_t tasks, const ResourceRequest& request) {
    std::vector<TaskSpec> list = all_tasks(sleeps(tasks));
    list[1].resources = request;
    return Plan::of(std::move(list));
}

TEST(ScheduleResources, WithSpawnOnDemandATaskWhoseResourcesAreBusyStartsNoWorker) {
    Rig rig(asking(4, {{"slot", 1}}), on_demand_with({{"slot", 1}}));
    rig.spawn_all();
    rig.hello("w1");  // takes task 0 and the one slot: task 1 waits for it, not for a worker
    rig.spawn_all();
    EXPECT_EQ(rig.world.spawned, std::vector<std::string>{"w1"}) << "a new worker would wait beside w1";
    while (rig.answer_all("w1") > 0) rig.spawn_all();
    EXPECT_EQ(ids_of(rig.world.recorded).size(), 4u);
    EXPECT_EQ(rig.world.spawned.size(), 1u) << "w1 was idle whenever the slot was free";
    EXPECT_TRUE(rig.schedule.done());
}

TEST(ScheduleResources, WithSpawnOnDemandATaskWhoseResourcesAreFreeStartsAWorkerWhenNoneIsIdle) {
    // slot=2: w1 holds one, the next task's slot is free and w1 is busy, so w2 starts for it; the
    // third task waits for a slot, so no w3, whatever the 8 workers -j 0 may start.
    Rig rig(asking(5, {{"slot", 1}}), on_demand_with({{"slot", 2}}));
    rig.spawn_all();
    rig.hello("w1");
    rig.spawn_all();
    ASSERT_EQ(rig.world.spawned, (std::vector<std::string>{"w1", "w2"}));
    rig.hello("w2");
    rig.spawn_all();
    EXPECT_EQ(rig.world.spawned.size(), 2u) << "both slots are held";
    EXPECT_EQ(unanswered(rig).size(), 2u);
    while (rig.answer_all("w1") + rig.answer_all("w2") > 0) rig.spawn_all();
    EXPECT_EQ(ids_of(rig.world.recorded).size(), 5u);
    EXPECT_EQ(rig.world.spawned.size(), 2u);
}

TEST(ScheduleResources, WithSpawnOnDemandATaskThatAsksNothingKeepsAResourceTaskFromAFreeSlot) {
    // Task 0 asks for nothing and runs on w1; task 1's GPU is free and w1 is busy: w2 starts.
    Rig rig(second_asks(2, {{"gpu", 1}}), on_demand_with({}, {"0"}));
    rig.spawn_all();
    rig.hello("w1");
    rig.spawn_all();
    ASSERT_EQ(rig.world.spawned, (std::vector<std::string>{"w1", "w2"}));
    rig.hello("w2");
    ASSERT_EQ(rig.world.sent_to("w2").size(), 1u);
    EXPECT_EQ(rig.schedule.task(rig.world.sent_to("w2")[0].index).gpus, "0");
}

TEST(ScheduleResources, WithSpawnOnDemandARequestNoWorkerCanMeetFailsAtOnceAndStartsNone) {
    // Task 0 asks for nothing and keeps w1 busy; task 1 asks for two GPUs of one: no worker, new
    // or idle, could ever run it, so it fails now instead of starting w2 to fail there.
    Rig rig(second_asks(3, {{"gpu", 2}}), on_demand_with({}, {"0"}));
    rig.spawn_all();
    rig.hello("w1");
    ASSERT_EQ(rig.world.recorded.size(), 1u);
    EXPECT_EQ(rig.world.recorded[0].id, 1);
    EXPECT_NE(rig.world.recorded[0].error.find("not run: asks for gpu=2"), std::string::npos)
        << rig.world.recorded[0].error;
    rig.spawn_all();  // task 2 asks for nothing and waits behind task 0: that one may start w2
    EXPECT_EQ(rig.world.spawned, (std::vector<std::string>{"w1", "w2"}));
}

TEST(ScheduleDependencies, WithSpawnOnDemandATaskThatWaitsForAnEarlierOneStartsNoWorker) {
    // The same rule as resources (decision 311): task 1 waits for task 0, not for a worker.
    std::vector<TaskSpec> list;
    for (TaskId i = 0; i < 3; ++i) list.push_back(testing::task_of("sleep", {{"seconds", 0.001}}, i));
    list[1].after = {0};
    list[2].after = {1};
    Rig rig(Plan::of(std::move(list)), {.workers = 8, .prefetch = 1, .spawn_on_demand = true});
    rig.spawn_all();
    rig.hello("w1");
    rig.spawn_all();
    EXPECT_EQ(rig.world.spawned, std::vector<std::string>{"w1"});
    while (rig.answer_all("w1") > 0) rig.spawn_all();
    EXPECT_EQ(ids_of(rig.world.recorded).size(), 3u);
    EXPECT_EQ(rig.world.spawned.size(), 1u);
    EXPECT_TRUE(rig.schedule.done());
}

TEST(ScheduleDependencies, ATaskStartsAfterItsDependenciesAndFailsWithoutRunningWhenOneFailed) {
    std::vector<TaskSpec> list;
    for (TaskId i = 0; i < 5; ++i) list.push_back(testing::task_of("sleep", {{"seconds", 0.001}}, i));
    list[2].after = {0};
    list[3].after = {0, 1};
    list[4].after = {3};
    Rig rig(Plan::of(std::move(list)), {.workers = 1, .prefetch = 8});
    rig.spawn_all();
    rig.hello("w1");
    rig.answer_all("w1", 0.000001);  // task 0: its first result earns the worker a window
    std::vector<TaskId> sent;
    for (const Attempt& attempt : rig.world.sent_to("w1")) sent.push_back(attempt.index);
    EXPECT_EQ(sent, (std::vector<TaskId>{0, 1, 2})) << "3 waits for 1, which has no result yet";
    proto::Result failed = rig.result_of(rig.world.sent_to("w1").at(1));
    failed.ok = false;
    failed.error = "exited with status 3";
    rig.answered.emplace(1, 1);
    rig.schedule.result("w1", failed, rig.now);
    rig.schedule.tick(rig.now);
    rig.answer_all("w1");
    std::map<TaskId, std::string> errors;
    for (const TaskResult& result : rig.world.recorded) errors[result.id] = result.ok ? "ok" : result.error;
    EXPECT_EQ(errors, (std::map<TaskId, std::string>{{0, "ok"},
                                                     {1, "exited with status 3"},
                                                     {2, "ok"},
                                                     {3, "dependency 1 failed"},
                                                     {4, "dependency 3 failed"}}));
    for (const Attempt& attempt : rig.world.sent_to("w1")) EXPECT_LT(attempt.index, 3u) << "a dependent ran";
    EXPECT_TRUE(rig.schedule.done());
}

// Decision 317: a retired task's node in the schedule's table is filled again by a later task;
// nothing of the earlier one (its params, GPUs, resources, dependencies) stays with it.
// The cursor writes only what a task has, as the generator does (its resources only when some).
TEST(Schedule, ATaskInARetiredTasksPlaceCarriesNothingOfIt) {
    class Source final : public PlanSource {
    public:
        std::unique_ptr<TaskCursor> open() const override {
            class Cursor final : public TaskCursor {
            public:
                bool next(TaskSpec& task) override {
                    if (next_ == 6) return false;
                    task.id = next_;
                    task.type = testing::task_of("sleep", {}, 0).type;
                    task.params = Json{{"seconds", 0.001 * static_cast<double>(next_ + 1)}};
                    if (next_ == 0) task.resources = ResourceRequest{{"gpu", 1}};
                    if (next_ == 1) task.after = {0};
                    ++next_;
                    return true;
                }

            private:
                TaskId next_ = 0;
            };
            return std::make_unique<Cursor>();
        }
    };
    Plan plan;
    plan.source = std::make_shared<Source>();
    plan.count = 6;
    Rig rig(std::move(plan),
            {.workers = 1,
             .resources = std::make_shared<const LocalResources>(ResourceRequest{}, std::vector<std::string>{"7"})});
    rig.spawn_all();
    rig.hello("w1");
    std::set<std::size_t> checked;
    for (int round = 0; rig.world.recorded.size() < 6; ++round) {
        ASSERT_LT(round, 10) << "the tasks never finished";
        for (const Attempt& attempt : unanswered(rig)) {
            const TaskSpec& task = rig.schedule.task(attempt.index);
            EXPECT_EQ(task.id, attempt.index);
            EXPECT_EQ(task.params, (Json{{"seconds", 0.001 * static_cast<double>(attempt.index + 1)}})) << task.id;
            EXPECT_EQ(task.gpus, attempt.index == 0 ? "7" : "") << task.id;
            EXPECT_EQ(task.resources.empty(), attempt.index != 0) << task.id;
            EXPECT_EQ(task.after, attempt.index == 1 ? std::vector<TaskId>{0} : std::vector<TaskId>{}) << task.id;
            checked.insert(attempt.index);
        }
        rig.answer_all("w1");
    }
    EXPECT_EQ(checked.size(), 6u);
}

}  // namespace
}  // namespace taskfarm
