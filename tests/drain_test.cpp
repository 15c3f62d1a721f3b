// Long runs (issue 19): SIGTERM drains (the running tasks finish, nothing new starts, the
// journal resumes exactly the rest), worker processes are recycled at a task count, and
// --retries runs a failed task again; with real coordinators, workers and commands.

#include <signal.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support.hpp"

namespace taskfarm {
namespace {

using testing::Output;
using testing::run_binary;

using testing::lines_of;
using testing::numbers;

// ok lines of the journal per task id.
std::map<std::uint64_t, int> ok_counts(const std::filesystem::path& journal) {
    std::map<std::uint64_t, int> ok;
    for (const auto& line : testing::read_json_lines(journal))
        if (line.at("ok").get<bool>()) ++ok[line.at("id").get<std::uint64_t>()];
    return ok;
}

class DrainInMode : public ::testing::TestWithParam<std::string> {};

// Each command notes its input when it starts: after the drain, every task that started is
// ok in the journal (it was not cancelled), once; the resumed run does exactly the rest.
TEST_P(DrainInMode, SigtermLetsTheRunningCommandsFinishAndResumeRunsExactlyTheRest) {
    testing::TempDir dir;
    const auto started = dir / "started";
    const auto journal = dir / "journal.jsonl";
    const std::vector<std::string> args{"--command", fmt::format("echo {{}} >> {}; sleep 0.3", started.string()),
                                        "--inputs",  numbers(dir, 20).string(),
                                        "--mode",    GetParam(),
                                        "--workers", "2",
                                        "--output",  "none"};
    std::vector<std::string> first = args;
    first.insert(first.end(), {"--results", journal.string()});
    testing::Running coordinator("coordinator", first);
    ASSERT_TRUE(testing::eventually([&] { return lines_of(started).size() >= 3; }, std::chrono::seconds(30)))
        << coordinator.err();
    coordinator.signal(SIGTERM);
    const Output drained = coordinator.wait(std::chrono::seconds(60));
    EXPECT_EQ(drained.exit_code, 143) << drained.err;
    EXPECT_NE(drained.err.find("SIGTERM received: draining"), std::string::npos) << drained.err;
    EXPECT_NE(drained.out.find("(interrupted)"), std::string::npos) << drained.out;

    const std::map<std::uint64_t, int> ok = ok_counts(journal);
    const std::vector<std::string> began = lines_of(started);
    EXPECT_LT(began.size(), 20u) << "the drain started every task";
    for (const std::string& id : began)
        EXPECT_EQ(ok.count(std::stoull(id)) ? ok.at(std::stoull(id)) : 0, 1)
            << "task " << id << " started but is not ok once";
    EXPECT_EQ(ok.size(), began.size()) << "a task is ok that never started";
    EXPECT_EQ(testing::read_json_lines(journal).size(), began.size()) << "a drained task was recorded as failed";

    std::vector<std::string> second = args;
    second.insert(second.end(), {"--resume", journal.string()});
    const Output resumed = run_binary("coordinator", second);
    EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
    const std::map<std::uint64_t, int> all = ok_counts(journal);
    EXPECT_EQ(all.size(), 20u);
    for (const auto& [id, count] : all) EXPECT_EQ(count, 1) << "task " << id;
    EXPECT_EQ(lines_of(started).size(), 20u) << "a task ran twice";
}

std::string mode_name(const ::testing::TestParamInfo<std::string>& param) {
    std::string name = param.param;
    std::erase(name, '-');
    return name;
}

INSTANTIATE_TEST_SUITE_P(Modes, DrainInMode, ::testing::Values("sequential", "threads", "gil-threads", "processes"),
                         mode_name);

// A drain that waits on tasks too long for it: a second signal, or the timeout, cancels them.
TEST(Drain, ASecondSignalOrTheDrainTimeoutCancelsTheRunningTasks) {
    for (const int second : {SIGINT, SIGTERM, 0}) {
        SCOPED_TRACE(second);
        testing::TempDir dir;
        const auto journal = dir / "journal.jsonl";
        const auto inputs = dir / "inputs";
        const auto started = dir / "started";
        std::ofstream(inputs) << "a\nb\nc\nd\n";
        // Commands that say they started: the drain must find both workers running one (a
        // worker that has said hello may not have its task yet, slowly so under ASan).
        testing::Running coordinator(
            "coordinator", {"--mode", "processes", "--workers", "2", "--command",
                            "echo {} >> '" + started.string() + "'; exec sleep 60", "--inputs", inputs.string(),
                            "--results", journal.string(), "--drain-timeout", second == 0 ? "0.5" : "600"});
        ASSERT_TRUE(testing::eventually(
            [&] {
                const std::string text = testing::read_file(started);
                return std::count(text.begin(), text.end(), '\n') == 2;
            },
            std::chrono::seconds(20)))
            << coordinator.err();
        const std::vector<pid_t> workers = testing::workers_of(coordinator.pid());
        coordinator.signal(SIGTERM);
        ASSERT_TRUE(testing::eventually([&] { return coordinator.err().find("draining") != std::string::npos; },
                                        std::chrono::seconds(10)));
        if (second != 0) {
            // Within a second of the first, the same signal would be the same request (timeout(1)
            // sends it twice): a second request comes later.
            std::this_thread::sleep_for(std::chrono::milliseconds(1200));
            EXPECT_TRUE(testing::process_exists(coordinator.pid())) << "a drain did not wait for the running tasks";
            coordinator.signal(second);
        }
        const Output output = coordinator.wait(std::chrono::seconds(30));
        EXPECT_EQ(output.exit_code, 143) << output.err;  // the first signal's
        if (second == 0) {
            EXPECT_NE(output.err.find("--drain-timeout 0.5 s passed"), std::string::npos) << output.err;
        }
        EXPECT_TRUE(testing::read_json_lines(journal).empty()) << "a cancelled task was recorded";
        for (pid_t worker : workers) EXPECT_FALSE(testing::process_exists(worker)) << "worker " << worker;
    }
}

TEST(Recycling, OneWorkerWithMaxTasksOneRunsFiftyTasksOnFiftyWorkers) {
    testing::TempDir dir;
    const auto json = dir / "report.json";
    const Output output =
        run_binary("coordinator", {"--mode", "processes", "--workers", "1", "--tasks", "50", "--duration", "0",
                                   "--max-tasks-per-worker", "1", "--max-respawns", "0", "--json", json.string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const auto run = testing::read_json(json).at("runs").at(0);
    EXPECT_EQ(run.at("ok"), 50);
    EXPECT_EQ(run.at("recycled"), 49);
    std::set<std::int64_t> pids;
    for (const auto& place : run.at("placement")) pids.insert(place.at("pid").get<std::int64_t>());
    EXPECT_EQ(pids.size(), 50u) << "each task on a worker of its own";
    EXPECT_NE(output.out.find("processes: 49 worker(s) recycled"), std::string::npos) << output.out;
    EXPECT_EQ(output.err.find("died"), std::string::npos) << output.err;
}

TEST(Recycling, TheLimitsAreRefusedOrSaidToDoNothingWhereTheyCannotWork) {
    const Output tiny = run_binary("coordinator", {"--mode", "processes", "--workers", "1", "--tasks", "2",
                                                   "--duration", "0", "--max-worker-memory", "1K"});
    EXPECT_EQ(tiny.exit_code, 2) << tiny.err;
    EXPECT_NE(tiny.err.find("--max-worker-memory 1.0 KiB: worker w1"), std::string::npos) << tiny.err;
    EXPECT_NE(tiny.err.find("as it starts, before any task; give a larger size"), std::string::npos) << tiny.err;

    const Output bad = run_binary("coordinator", {"--max-worker-memory", "lots"});
    EXPECT_EQ(bad.exit_code, 2);
    EXPECT_NE(bad.err.find("--max-worker-memory"), std::string::npos) << bad.err;

    const Output threads = run_binary(
        "coordinator", {"--mode", "threads", "--tasks", "2", "--duration", "0", "--max-tasks-per-worker", "1"});
    EXPECT_EQ(threads.exit_code, 0) << threads.err;
    EXPECT_NE(threads.err.find("in the sequential and threads modes, whose tasks run in the coordinator's own threads, "
                               "they do nothing"),
              std::string::npos)
        << threads.err;
}

class RetriesInMode : public ::testing::TestWithParam<std::string> {};

// Input N succeeds from attempt N on: with --retries 1, 1 and 2 end ok (2 on its second
// attempt), 3 fails on its second and last.
TEST_P(RetriesInMode, AFailedCommandRunsAgainAndEachAttemptIsInTheJournal) {
    testing::TempDir dir;
    {
        std::ofstream out(dir / "inputs.txt");
        out << "1\n2\n3\n";
    }
    const auto journal = dir / "journal.jsonl";
    const Output output = run_binary(
        "coordinator", {"--command", "test \"$TASKFARM_ATTEMPT\" -ge", "--inputs", (dir / "inputs.txt").string(),
                        "--mode", GetParam(), "--workers", "2", "--retries", "1", "--results", journal.string(),
                        "--output", "group"});  // the result lines on stdout
    EXPECT_EQ(output.exit_code, 1) << output.err;
    std::map<std::uint64_t, std::vector<std::pair<int, bool>>> attempts;  // id -> (attempt, ok), in journal order
    for (const auto& line : testing::read_json_lines(journal)) {
        attempts[line.at("id").get<std::uint64_t>()].emplace_back(line.at("attempt").get<int>(),
                                                                  line.at("ok").get<bool>());
        EXPECT_EQ(line.contains("retrying"), !line.at("ok").get<bool>() && line.at("attempt") == 1) << line.dump();
    }
    EXPECT_EQ(attempts[0], (std::vector<std::pair<int, bool>>{{1, true}}));
    EXPECT_EQ(attempts[1], (std::vector<std::pair<int, bool>>{{1, false}, {2, true}}));
    EXPECT_EQ(attempts[2], (std::vector<std::pair<int, bool>>{{1, false}, {2, false}}));
    EXPECT_NE(output.out.find("1 task(s) failed in " + GetParam()), std::string::npos) << output.out;
    EXPECT_NE(output.out.find(GetParam() + ": 2 failed attempt(s) ran again (--retries)"), std::string::npos)
        << output.out;
    EXPECT_NE(output.out.find("FAILED, runs again (--retries): exited with status 1"), std::string::npos) << output.out;

    // Resume reruns only the failed task, from attempt 1, and leaves what is ok alone.
    const Output resumed = run_binary(
        "coordinator", {"--command", "test \"$TASKFARM_ATTEMPT\" -ge", "--inputs", (dir / "inputs.txt").string(),
                        "--mode", GetParam(), "--workers", "2", "--retries", "2", "--resume", journal.string()});
    EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
    const std::map<std::uint64_t, int> ok = ok_counts(journal);
    EXPECT_EQ(ok, (std::map<std::uint64_t, int>{{0, 1}, {1, 1}, {2, 1}}));
}

INSTANTIATE_TEST_SUITE_P(Modes, RetriesInMode, ::testing::Values("sequential", "threads", "gil-threads", "processes"),
                         mode_name);

class CancelInMode : public ::testing::TestWithParam<std::string> {};

// Four commands that would sleep for 300 s: each is cancelled by id, running or queued, and
// the run goes on with the others until none is left.
TEST_P(CancelInMode, CoordinatorCancelStopsOneRunningOrQueuedTaskAndTheRunGoesOn) {
    testing::TempDir dir;
    const auto started = dir / "started";
    const auto journal = dir / "journal.jsonl";
    testing::Running coordinator(
        "coordinator", {"--command", fmt::format("echo {{}} $$ >> {}; exec sleep 300", started.string()), "--inputs",
                        numbers(dir, 4).string(), "--mode", GetParam(), "--workers", "2", "--results", journal.string(),
                        "--command-grace", "0.3"});
    const std::size_t running = GetParam() == "sequential" ? 1 : 2;
    ASSERT_TRUE(testing::eventually([&] { return lines_of(started).size() == running; }, std::chrono::seconds(30)))
        << coordinator.err();
    const std::string pid = std::to_string(coordinator.pid());
    const Output first = run_binary("coordinator", {"cancel", "--run", pid, "0", "3"});  // 0 runs, 3 waits
    EXPECT_EQ(first.exit_code, 0) << first.err;
    // Each id with what the run did: 0 held by a worker (processes) or running, 3 not started.
    EXPECT_NE(first.out.find(fmt::format("run of pid {}: task 0: cancelled: ", pid)), std::string::npos) << first.out;
    EXPECT_NE(first.out.find(fmt::format("run of pid {}: task 3: cancelled: ", pid)), std::string::npos) << first.out;
    // Task 0 is cancelled once stopped; 3 at once in processes mode, in the others when its turn comes.
    ASSERT_TRUE(testing::eventually(
        [&] {
            const auto lines = testing::read_json_lines(journal);
            return std::any_of(lines.begin(), lines.end(), [](const auto& line) { return line.at("id") == 0; });
        },
        std::chrono::seconds(30)))
        << coordinator.err();
    EXPECT_TRUE(testing::process_exists(coordinator.pid())) << "the run stopped";
    // The run went on: task 0's place was taken by the next.
    ASSERT_TRUE(testing::eventually([&] { return lines_of(started).size() == running + 1; }, std::chrono::seconds(30)))
        << coordinator.err();
    EXPECT_EQ(run_binary("coordinator", {"cancel", "--run", pid, "1", "2"}).exit_code, 0);
    const Output output = coordinator.wait(std::chrono::seconds(60));
    EXPECT_EQ(output.exit_code, 1) << output.err;
    std::set<std::uint64_t> ids;
    for (const auto& line : testing::read_json_lines(journal)) {
        ids.insert(line.at("id").get<std::uint64_t>());
        EXPECT_FALSE(line.at("ok").get<bool>()) << line.dump();
        EXPECT_EQ(line.at("error"), "cancelled (coordinator cancel)") << line.dump();
        EXPECT_EQ(line.value("cancelled", false), true) << line.dump();
        EXPECT_EQ(line.at("attempt"), 1) << "a cancelled task was tried again: " << line.dump();
    }
    EXPECT_EQ(ids, (std::set<std::uint64_t>{0, 1, 2, 3}));
    for (const std::string& line : lines_of(started)) {
        const pid_t sleeper = std::stoi(line.substr(line.find(' ') + 1));
        EXPECT_FALSE(testing::process_exists(sleeper)) << "the command of a cancelled task is still there: " << line;
    }
}

INSTANTIATE_TEST_SUITE_P(Modes, CancelInMode, ::testing::Values("sequential", "threads", "processes"), mode_name);

TEST(Cancel, ARunThatIsNotThereIsExitTwoNamingTheFlag) {
    const Output missing = run_binary("coordinator", {"cancel", "--run", "999999999", "1"});
    EXPECT_EQ(missing.exit_code, 2);
    EXPECT_NE(missing.err.find("--run 999999999: no run of a coordinator with pid 999999999 is here"),
              std::string::npos)
        << missing.err;
    const Output no_id = run_binary("coordinator", {"cancel", "--run", "1"});
    EXPECT_EQ(no_id.exit_code, 2);
    EXPECT_NE(no_id.err.find("ID"), std::string::npos) << no_id.err;
    testing::TempDir dir;
    const Output not_a_run = run_binary("coordinator", {"cancel", "--run", dir.path().string(), "1"});
    EXPECT_EQ(not_a_run.exit_code, 2);
    EXPECT_NE(not_a_run.err.find("no control socket in it"), std::string::npos) << not_a_run.err;
}

}  // namespace
}  // namespace taskfarm
