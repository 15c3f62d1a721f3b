// The coordinator binary as a user runs it: exit codes, stdout, --json, --results,
// signals, and no worker process left behind.

#include <signal.h>

#include <fstream>
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

TEST(Coordinator, RunsEveryModeAndWritesReportAndJournal) {
    testing::TempDir dir;
    const Output output = run_binary("coordinator", {"--workers", "3", "--tasks", "6", "--duration", "0.05", "--json",
                                                     (dir / "report.json").string(), "--results",
                                                     (dir / "results.jsonl").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;

    const auto report = testing::read_json(dir / "report.json");
    EXPECT_EQ(report["version"], 1);
    EXPECT_EQ(report["task"], "sleep");
    ASSERT_EQ(report["runs"].size(), 3u);
    const char* modes[] = {"sequential", "threads", "processes"};
    for (std::size_t i = 0; i < 3; ++i) {
        const auto& run = report["runs"][i];
        EXPECT_EQ(run["mode"], modes[i]);
        EXPECT_EQ(run["workers"], i == 0 ? 1 : 3);
        EXPECT_EQ(run["tasks"], 6);
        EXPECT_EQ(run["ok"], 6);
        EXPECT_EQ(run["failed"], 0);
        EXPECT_GT(run["wall_s"].get<double>(), 0.0);
        EXPECT_GE(run["cpu_s"].get<double>(), 0.0);
        EXPECT_TRUE(run["speedup_vs_sequential"].is_number());
    }

    const auto lines = testing::read_json_lines(dir / "results.jsonl");
    ASSERT_EQ(lines.size(), 18u);
    std::map<std::string, std::set<int>> ids_per_mode;
    for (const auto& line : lines) {
        ids_per_mode[line["mode"]].insert(line["id"].get<int>());
        EXPECT_EQ(line["kind"], "sleep");
        EXPECT_EQ(line["ok"], true);
        EXPECT_EQ(line["attempt"], 1);
        EXPECT_EQ(line["params"]["seconds"], 0.05);
        EXPECT_GE(line["value"]["slept_s"].get<double>(), 0.05);
        EXPECT_TRUE(line["error"].is_null());
        EXPECT_LE(line["start_s"].get<double>(), line["end_s"].get<double>());
    }
    for (const char* mode : modes) EXPECT_EQ(ids_per_mode[mode], (std::set<int>{0, 1, 2, 3, 4, 5})) << mode;

    // stdout: a line per task per mode, then the table; logs stay on stderr.
    EXPECT_NE(output.out.find("processes  task"), std::string::npos);
    EXPECT_NE(output.out.find("mode         workers  tasks"), std::string::npos);
    EXPECT_EQ(output.out.find(" info "), std::string::npos);
}

TEST(Coordinator, SequentialOnlyReportHasNoSpeedup) {
    testing::TempDir dir;
    const Output output = run_binary("coordinator", {"--mode", "threads", "--tasks", "2", "--duration", "0", "--json",
                                                     (dir / "report.json").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_TRUE(testing::read_json(dir / "report.json")["runs"][0]["speedup_vs_sequential"].is_null());
}

TEST(Coordinator, RandomDurationsArriveShortestFirst) {
    testing::TempDir dir;
    const Output output = run_binary("coordinator", {"--mode", "threads", "--workers", "5", "--tasks", "5",
                                                     "--duration", "0.1:1.5", "--seed", "3", "--results",
                                                     (dir / "r.jsonl").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const auto lines = testing::read_json_lines(dir / "r.jsonl");
    ASSERT_EQ(lines.size(), 5u);
    std::vector<double> durations;
    for (const auto& line : lines) durations.push_back(line["params"]["seconds"].get<double>());
    EXPECT_TRUE(std::is_sorted(durations.begin(), durations.end())) << testing::read_file(dir / "r.jsonl");
}

TEST(Coordinator, BadFlagsExitTwoWithOneLineNamingTheFlag) {
    const Output output = run_binary("coordinator", {"--workers", "0"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--workers"), std::string::npos) << output.err;
    EXPECT_TRUE(output.out.empty()) << output.out;
}

TEST(Coordinator, AMissingWorkerBinaryExitsTwoNamingTheFlag) {
    const Output output = run_binary("coordinator", {"--worker-bin", "/nonexistent/worker", "--tasks", "1"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--worker-bin"), std::string::npos) << output.err;
    EXPECT_NE(output.err.find("/nonexistent/worker"), std::string::npos) << output.err;
}

TEST(Coordinator, AnUnwritableResultsFileExitsTwoBeforeRunning) {
    const Output output = run_binary("coordinator", {"--results", "/nonexistent/dir/r.jsonl", "--tasks", "1"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("/nonexistent/dir/r.jsonl"), std::string::npos) << output.err;
    EXPECT_TRUE(output.out.empty()) << output.out;
}

// Starts a processes run of long tasks and waits until its workers are up.
std::vector<pid_t> start_long_run(testing::Running& coordinator) {
    std::vector<pid_t> workers;
    testing::eventually([&] { return (workers = testing::children_of(coordinator.pid())).size() == 3; },
                        std::chrono::seconds(10));
    return workers;
}

struct SignalCase {
    int signo;
    int exit_code;
};

class CoordinatorSignal : public ::testing::TestWithParam<SignalCase> {};

TEST_P(CoordinatorSignal, StopsReapsItsWorkersAndExitsWithTheSignalCode) {
    testing::Running coordinator("coordinator",
                                 {"--mode", "processes", "--workers", "3", "--tasks", "6", "--duration", "60"});
    const std::vector<pid_t> workers = start_long_run(coordinator);
    ASSERT_EQ(workers.size(), 3u) << coordinator.err();
    coordinator.signal(GetParam().signo);
    const Output output = coordinator.wait(std::chrono::seconds(20));
    EXPECT_EQ(output.exit_code, GetParam().exit_code) << output.err;
    EXPECT_NE(output.out.find("(interrupted)"), std::string::npos) << output.out;
    for (pid_t worker : workers) EXPECT_FALSE(testing::process_exists(worker)) << "worker " << worker << " survived";
}

INSTANTIATE_TEST_SUITE_P(Signals, CoordinatorSignal,
                         ::testing::Values(SignalCase{SIGTERM, 143}, SignalCase{SIGINT, 130}),
                         [](const auto& param_info) { return param_info.param.signo == SIGTERM ? "SIGTERM" : "SIGINT"; });

TEST(Coordinator, WorkersDieWithAKilledCoordinator) {
    testing::Running coordinator("coordinator",
                                 {"--mode", "processes", "--workers", "3", "--tasks", "6", "--duration", "60"});
    const std::vector<pid_t> workers = start_long_run(coordinator);
    ASSERT_EQ(workers.size(), 3u) << coordinator.err();
    coordinator.signal(SIGKILL);
    coordinator.wait();
    for (pid_t worker : workers)
        EXPECT_TRUE(testing::eventually([&] { return !testing::process_exists(worker); }, std::chrono::seconds(3)))
            << "worker " << worker << " outlived its coordinator";
}

TEST(Coordinator, ThreadsModeStopsOnSigtermToo) {
    testing::Running coordinator("coordinator", {"--mode", "sequential,threads", "--tasks", "4", "--duration", "60"});
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    coordinator.signal(SIGTERM);
    const Output output = coordinator.wait(std::chrono::seconds(20));
    EXPECT_EQ(output.exit_code, 143) << output.err;
}

}  // namespace
}  // namespace taskfarm

namespace taskfarm {
namespace {

TEST(Resume, AfterTheCoordinatorIsKilledRunsExactlyTheRest) {
    testing::TempDir dir;
    const std::string journal = (dir / "journal.jsonl").string();
    const std::vector<std::string> plan{"--mode", "processes", "--workers", "2", "--tasks", "12", "--duration", "0.2"};
    std::vector<std::string> first = plan;
    first.insert(first.end(), {"--results", journal});
    {
        testing::Running coordinator("coordinator", first);
        ASSERT_TRUE(testing::eventually([&] { return testing::read_json_lines(journal).size() >= 4; },
                                        std::chrono::seconds(20)));
        coordinator.signal(SIGKILL);
        coordinator.wait();
    }
    // The kill may also have torn a line in half: resume must cut it off, not choke on it.
    { std::ofstream(journal, std::ios::app) << R"({"mode":"processes","id":)"; }
    std::set<int> before;
    std::string text = testing::read_file(journal);
    text.resize(text.rfind('\n') + 1);
    std::istringstream complete(text);
    for (std::string line; std::getline(complete, line);) before.insert(nlohmann::json::parse(line)["id"].get<int>());
    ASSERT_LT(before.size(), 12u);

    std::vector<std::string> again = plan;
    again.insert(again.end(), {"--resume", journal});
    const Output output = run_binary("coordinator", again);
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const auto lines = testing::read_json_lines(journal);
    ASSERT_EQ(lines.size(), 12u);
    std::multiset<int> ids;
    for (const auto& line : lines) {
        ids.insert(line["id"].get<int>());
        EXPECT_TRUE(line["ok"].get<bool>());
    }
    for (int id = 0; id < 12; ++id) EXPECT_EQ(ids.count(id), 1u) << "task " << id;
    EXPECT_NE(output.out.find(fmt::format("{} tasks", 12 - before.size())), std::string::npos) << output.out;
}

TEST(Resume, AJournalOfAnotherPlanExitsTwoSayingSo) {
    testing::TempDir dir;
    const std::string journal = (dir / "journal.jsonl").string();
    ASSERT_EQ(run_binary("coordinator", {"--mode", "threads", "--tasks", "3", "--duration", "0.01", "--results", journal})
                  .exit_code,
              0);
    const Output output =
        run_binary("coordinator", {"--mode", "threads", "--tasks", "3", "--duration", "0.02", "--resume", journal});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("different plan"), std::string::npos) << output.err;
    EXPECT_EQ(testing::read_json_lines(journal).size(), 3u);  // nothing appended
}

TEST(Resume, AMissingJournalExitsTwoNamingTheFlag) {
    const Output output = run_binary("coordinator", {"--tasks", "1", "--resume", "/nonexistent/journal.jsonl"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--resume"), std::string::npos) << output.err;
}

TEST(Resume, ACompleteJournalRunsNothingAndSucceeds) {
    testing::TempDir dir;
    const std::string journal = (dir / "journal.jsonl").string();
    const std::vector<std::string> args{"--mode", "sequential", "--tasks", "2", "--duration", "0.01"};
    auto first = args;
    first.insert(first.end(), {"--results", journal});
    ASSERT_EQ(run_binary("coordinator", first).exit_code, 0);
    auto again = args;
    again.insert(again.end(), {"--resume", journal});
    const Output output = run_binary("coordinator", again);
    EXPECT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(testing::read_json_lines(journal).size(), 2u);
}

}  // namespace
}  // namespace taskfarm
