// The dispatcher against real worker processes on a real ipc:// socket, with a rogue
// peer on the same socket.

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <set>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "command_groups.hpp"
#include "dispatcher.hpp"
#include "process_pool.hpp"
#include "support.hpp"
#include "wire.hpp"

namespace taskfarm {
namespace {

using testing::CollectingSink;

Plan sleeps(int tasks, double seconds) {
    std::vector<TaskSpec> list;
    for (int i = 0; i < tasks; ++i)
        list.push_back(testing::task_of("sleep", {{"seconds", seconds}}, static_cast<TaskId>(i)));
    Plan plan = Plan::of(std::move(list));
    return plan;
}

struct Rig {
    testing::TempDir dir;
    zmq::context_t context{1};
    zmq::socket_t router{context, zmq::socket_type::router};
    std::string endpoint = "ipc://" + (dir / "socket").string();
    Rig() {
        wire::configure(router, zmq::socket_type::router);
        router.bind(endpoint);
    }
};

TEST(Dispatcher, GarbageFromARoguePeerIsDroppedAndTheRunGoesOn) {
    Rig rig;
    const Plan plan = sleeps(6, 0.05);
    CollectingSink sink;
    {
        ProcessPool pool({.binary = testing::bin("worker"), .endpoint = rig.endpoint});
        ModeRecorder recorder(Mode::Processes, 2, plan, sink);
        std::stop_source never;
        Dispatcher dispatcher(rig.router, pool, plan, recorder, DispatchOptions{.workers = 2}, never.get_token());
        std::jthread rogue([&](std::stop_token stop) {
            zmq::socket_t dealer(rig.context, zmq::socket_type::dealer);
            dealer.set(zmq::sockopt::linger, 0);
            dealer.connect(rig.endpoint);
            proto::Result forged;  // claims to finish a task nobody gave it
            forged.id = 3;
            forged.kind = "sleep";
            forged.ok = true;
            proto::Hello old;
            old.name = "old";
            old.v = proto::kVersion + 1;
            const std::vector<std::string> frames{"",
                                                  "\xc1garbage",
                                                  proto::encode(forged),
                                                  proto::encode(old),
                                                  std::string(100, '\x91'),
                                                  std::string("\xdd\xff\xff\xff\xff", 5)};
            while (!stop.stop_requested()) {
                for (const std::string& frame : frames) wire::send(dealer, frame);
                dealer.send(zmq::str_buffer("two"), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
                dealer.send(zmq::str_buffer("frames"), zmq::send_flags::dontwait);
                std::this_thread::sleep_for(std::chrono::milliseconds(2));
            }
        });
        dispatcher.run();
        dispatcher.shutdown_workers();
        pool.stop_all(std::chrono::seconds(1));
    }
    ASSERT_EQ(sink.results.size(), 6u);
    std::set<TaskId> ids;
    for (const TaskResult& result : sink.results) {
        EXPECT_TRUE(result.ok) << result.error;
        EXPECT_TRUE(result.worker == "w1" || result.worker == "w2") << result.worker;
        ids.insert(result.id);
    }
    EXPECT_EQ(ids.size(), 6u);
}

TEST(Dispatcher, AWorkerThatNeverSaysHelloIsNamedInTheError) {
    Rig rig;
    const Plan plan = sleeps(2, 0.01);
    CollectingSink sink;
    ProcessPool pool({.binary = "/bin/sleep", .endpoint = rig.endpoint});  // runs, but never connects
    ModeRecorder recorder(Mode::Processes, 1, plan, sink);
    std::stop_source never;
    // /bin/sleep rejects our flags and exits at once; either way w1 never says hello.
    Dispatcher dispatcher(rig.router, pool, plan, recorder,
                          DispatchOptions{.workers = 1, .start_timeout = std::chrono::milliseconds(500)},
                          never.get_token());
    try {
        dispatcher.run();
        FAIL() << "expected RunError";
    } catch (const RunError& e) {
        EXPECT_NE(std::string(e.what()).find("worker w1"), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("hello"), std::string::npos) << e.what();
    }
}

TEST(Dispatcher, TasksOfAKilledWorkerAreRequeuedAndFinishElsewhere) {
    Rig rig;
    const Plan plan = sleeps(4, 0.6);
    CollectingSink sink;
    {
        ProcessPool pool({.binary = testing::bin("worker"), .endpoint = rig.endpoint});
        ModeRecorder recorder(Mode::Processes, 2, plan, sink);
        std::stop_source never;
        Dispatcher dispatcher(rig.router, pool, plan, recorder, DispatchOptions{.workers = 2}, never.get_token());
        std::jthread killer([&] {
            // Kill one worker once it runs a task: its process has a child thread busy sleeping.
            std::vector<pid_t> workers;
            testing::eventually([&] { return (workers = testing::children_of(::getpid())).size() == 2; },
                                std::chrono::seconds(10));
            std::this_thread::sleep_for(std::chrono::milliseconds(300));
            if (!workers.empty()) ::kill(workers.front(), SIGKILL);
        });
        dispatcher.run();
        dispatcher.shutdown_workers();
        pool.stop_all(std::chrono::seconds(1));
    }
    ASSERT_EQ(sink.results.size(), 4u);
    std::set<TaskId> ids;
    std::size_t retried = 0;
    for (const TaskResult& result : sink.results) {
        EXPECT_TRUE(result.ok) << result.error;
        ids.insert(result.id);
        retried += result.attempt == 2;
    }
    EXPECT_EQ(ids.size(), 4u);
    EXPECT_GE(retried, 1u);
}

TEST(Dispatcher, PeersThatSayHelloAndHoldTheirTasksLoseThemAtTheHeartbeatTimeout) {
    Rig rig;
    const Plan plan = sleeps(200, 0);
    CollectingSink sink;
    // 100 peers say hello before the run starts and then say nothing; one more never says
    // hello but keeps sending heartbeats.
    std::vector<zmq::socket_t> holders;
    for (int i = 0; i < 100; ++i) {
        zmq::socket_t& dealer = holders.emplace_back(rig.context, zmq::socket_type::dealer);
        dealer.set(zmq::sockopt::linger, 0);
        dealer.connect(rig.endpoint);
        proto::Hello hello;
        hello.name = fmt::format("holder{}", i);
        wire::send(dealer, proto::encode(hello));
    }
    zmq::socket_t stranger(rig.context, zmq::socket_type::dealer);
    stranger.set(zmq::sockopt::linger, 0);
    stranger.connect(rig.endpoint);
    {
        ProcessPool pool({.binary = testing::bin("worker"), .endpoint = rig.endpoint});
        ModeRecorder recorder(Mode::Processes, 2, plan, sink);
        std::stop_source never;
        Dispatcher dispatcher(rig.router, pool, plan, recorder,
                              DispatchOptions{.workers = 2, .heartbeat_timeout = std::chrono::milliseconds(1000)},
                              never.get_token());
        std::jthread chatter([&](std::stop_token stop) {
            while (!stop.stop_requested()) {
                wire::send(stranger, proto::encode(proto::Heartbeat{}));
                std::this_thread::sleep_for(std::chrono::milliseconds(50));
            }
        });
        dispatcher.run();
        dispatcher.shutdown_workers();
        pool.stop_all(std::chrono::seconds(1));
        EXPECT_EQ(pool.alive(), 0u);
    }
    ASSERT_EQ(sink.results.size(), 200u);
    std::set<TaskId> ids;
    std::size_t second = 0;
    for (const TaskResult& result : sink.results) {
        EXPECT_TRUE(result.ok) << result.error;
        EXPECT_TRUE(result.worker == "w1" || result.worker == "w2") << result.worker;
        ids.insert(result.id);
        // A task lost with one holder may go to another holder whose hello came later (under
        // load hellos are taken over time): two holders at most, then a real worker.
        EXPECT_LE(result.attempt, 3u) << "a task was held three times";
        second += result.attempt == 2;
    }
    EXPECT_EQ(ids.size(), 200u);
    // A holder whose hello came late, under load, may find no task left to hold.
    EXPECT_LE(second, 100u) << "a holder held more than one task";
    // The stranger was sent heartbeats at most, never a task.
    zmq::message_t frame;
    while (stranger.recv(frame, zmq::recv_flags::dontwait))
        EXPECT_TRUE(std::holds_alternative<proto::Heartbeat>(proto::decode(frame.to_string_view())));
}

// No-op tasks that each carry a 40,000-byte parameter: a window of 128 of them is over the
// 4 MiB a frame may hold, so batches must be cut by bytes as well as by count.
class LargeTasks : public ::testing::TestWithParam<int> {};

TEST_P(LargeTasks, TravelInFramesThatFitAndEachIsRecordedOnce) {
    Rig rig;
    std::vector<TaskSpec> padded = all_tasks(sleeps(300, 0));
    for (TaskSpec& task : padded) task.params["padding"] = std::string(40000, 'a');  // sleep reads "seconds" only
    const Plan plan = Plan::of(std::move(padded));
    CollectingSink sink;
    {
        ProcessPool pool({.binary = testing::bin("worker"), .endpoint = rig.endpoint});
        ModeRecorder recorder(Mode::Processes, 2, plan, sink);
        std::stop_source never;
        Dispatcher dispatcher(rig.router, pool, plan, recorder, DispatchOptions{.workers = 2, .prefetch = GetParam()},
                              never.get_token());
        dispatcher.run();
        dispatcher.shutdown_workers();
        pool.stop_all(std::chrono::seconds(1));
    }
    ASSERT_EQ(sink.results.size(), 300u);
    std::set<TaskId> ids;
    for (const TaskResult& result : sink.results) {
        EXPECT_TRUE(result.ok) << result.error;
        EXPECT_EQ(result.attempt, 1u) << "a worker was lost";
        ids.insert(result.id);
    }
    EXPECT_EQ(ids.size(), 300u);
}

INSTANTIATE_TEST_SUITE_P(Prefetch, LargeTasks, ::testing::Values(1, 8, 0),
                         [](const auto& p) { return p.param == 0 ? std::string("auto") : std::to_string(p.param); });

// -j 0 (spawn_on_demand) with tasks that each ask for one slot of `slots` (decision 311): a worker
// starts for a task whose slot is free while every worker is busy, never for one that waits for
// a slot (the worker holding it is idle when it comes back), so the run ends with exactly
// `slots` workers of the 8 it may start, however fast they start.
class SlotsOnDemand : public ::testing::TestWithParam<int> {};

TEST_P(SlotsOnDemand, StartAWorkerPerSlotAndNoneForATaskThatWaitsForOne) {
    Rig rig;
    std::vector<TaskSpec> list = all_tasks(sleeps(6, 0.2));
    for (TaskSpec& task : list) task.resources = {{"slot", 1}};
    const Plan plan = Plan::of(std::move(list));
    const int slots = GetParam();
    CollectingSink sink;
    {
        ProcessPool pool({.binary = testing::bin("worker"), .endpoint = rig.endpoint});
        ModeRecorder recorder(Mode::Processes, 8, plan, sink);
        std::stop_source never;
        Dispatcher dispatcher(rig.router, pool, plan, recorder,
                              DispatchOptions{.workers = 8,
                                              .resources = std::make_shared<const LocalResources>(
                                                  ResourceRequest{{"slot", static_cast<std::uint64_t>(slots)}}),
                                              .spawn_on_demand = true},
                              never.get_token());
        dispatcher.run();
        EXPECT_EQ(pool.alive(), static_cast<std::size_t>(slots)) << "workers started";
        dispatcher.shutdown_workers();
        pool.stop_all(std::chrono::seconds(1));
    }
    ASSERT_EQ(sink.results.size(), 6u);
    std::set<std::string> workers;
    for (const TaskResult& result : sink.results) {
        EXPECT_TRUE(result.ok) << result.error;
        workers.insert(result.worker);
    }
    EXPECT_LE(workers.size(), static_cast<std::size_t>(slots));
}

INSTANTIATE_TEST_SUITE_P(Slots, SlotsOnDemand, ::testing::Values(1, 2));

// A worker's table file of command groups is read when the worker is reaped and every group
// in it is SIGKILLed (decision 206): one that names the coordinator's own group (a stale or
// forged file), or 0 or 1, is refused like every other kill of a recorded group. The
// "coordinator" here is a child in a group of its own; before the rule it died by SIGKILL.
TEST(ProcessPool, ATableThatNamesItsOwnGroupIsNotKilled) {
    testing::TempDir dir;
    const pid_t coordinator = ::fork();
    if (coordinator == 0) {
        ::setpgid(0, 0);
        int code = 0;
        try {
            ProcessPool pool({.binary = "/bin/sh", .prefix = {"-c", "exec sleep 30", "sh"}, .state_dir = dir.path()});
            const pid_t worker = pool.spawn("w1");  // exec'd: its id is its pid and its group
            const std::filesystem::path path = command_groups::table_path(dir.path(), worker, worker);
            std::filesystem::create_directory(path.parent_path());
            const std::string file = path.string();
            const int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
            if (fd < 0 || ::ftruncate(fd, sizeof(command_groups::Table)) != 0) std::_Exit(3);
            void* memory = ::mmap(nullptr, sizeof(command_groups::Table), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            ::close(fd);
            if (memory == MAP_FAILED) std::_Exit(4);
            auto& table = *static_cast<command_groups::Table*>(memory);
            table.slots[0] = ::getpgrp();
            table.slots[1] = 1;
            table.slots[2] = 0;
            table.used = 3;
            ::munmap(memory, sizeof(command_groups::Table));
            pool.kill(worker);  // reaps it, reading the table
            code = pool.alive() == 0 ? 0 : 5;
        } catch (...) {
            code = 6;
        }
        std::_Exit(code);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(coordinator, &status, 0), coordinator);
    EXPECT_TRUE(WIFEXITED(status)) << "killed by signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    if (WIFEXITED(status)) {
        EXPECT_EQ(WEXITSTATUS(status), 0);
    }
    EXPECT_FALSE(command_groups::kill_group(::getpgrp(), 0));
    EXPECT_FALSE(command_groups::kill_group(0, 0));
    EXPECT_FALSE(command_groups::kill_group(1, 0));
    EXPECT_FALSE(command_groups::kill_group(-5, 0));
}

}  // namespace
}  // namespace taskfarm
