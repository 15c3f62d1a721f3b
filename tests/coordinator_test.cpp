// The coordinator binary as a user runs it: exit codes, stdout, --json, --results,
// signals, and no worker process left behind.

#include <signal.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "affinity.hpp"
#include "support.hpp"

namespace taskfarm {
namespace {

using testing::Output;
using testing::run_binary;

TEST(Coordinator, RunsEveryModeAndWritesReportAndJournal) {
    testing::TempDir dir;
    const Output output =
        run_binary("coordinator", {"--workers", "3", "--tasks", "6", "--duration", "0.05", "--json",
                                   (dir / "report.json").string(), "--results", (dir / "results.jsonl").string()});
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
    const Output output =
        run_binary("coordinator", {"--mode", "threads", "--workers", "5", "--tasks", "5", "--duration", "0.1:1.5",
                                   "--seed", "3", "--results", (dir / "r.jsonl").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const auto lines = testing::read_json_lines(dir / "r.jsonl");
    ASSERT_EQ(lines.size(), 5u);
    std::vector<double> durations;
    for (const auto& line : lines) durations.push_back(line["params"]["seconds"].get<double>());
    // In completion order, so by duration: a result may come before a shorter one only when
    // the two are within a margin that a loaded machine's scheduling can swap (seed 3 draws
    // 0.882 s and 0.884 s, 2 ms apart).
    constexpr double kMargin = 0.1;
    for (std::size_t i = 0; i < durations.size(); ++i)
        for (std::size_t j = i + 1; j < durations.size(); ++j)
            EXPECT_LE(durations[i], durations[j] + kMargin) << testing::read_file(dir / "r.jsonl");
}

TEST(Coordinator, BadFlagsExitTwoWithOneLineNamingTheFlag) {
    const Output output = run_binary("coordinator", {"--workers", "0"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--workers"), std::string::npos) << output.err;
    EXPECT_TRUE(output.out.empty()) << output.out;
}

// The built-in types' flags become settings; one that no task of the plan reads is named.
TEST(Coordinator, AFlagNoTaskOfThePlanUsesIsNamedInAWarning) {
    const std::pair<std::vector<std::string>, std::string> cases[] = {
        {{"--out-dir", "d"},
         "--out-dir: no task of this plan uses it (its task types: sleep); it is for types that save files"},
        {{"--task", "cpu", "--max-bytes", "1M"}, "--max-bytes: no task of this plan uses it (its task types: cpu)"},
        {{"--task", "sleep", "--file-size", "1K"}, "--file-size: no task of this plan uses it (its task types: sleep)"},
        {{"--task", "sleep"}, "--cpu-n: no task of this plan uses it (its task types: sleep)"},
    };
    for (auto [args, message] : cases) {
        args.insert(args.end(), {"--mode", "threads", "--tasks", "1", "--duration", "0", "--cpu-n", "10"});
        const Output output = run_binary("coordinator", args);
        EXPECT_EQ(output.exit_code, 0) << output.err;
        EXPECT_NE(output.err.find(" warning " + message), std::string::npos) << output.err;
    }
}

// The run's configuration is decided, modes included, before anything speaks of it: commands
// run in the processes mode alone, so recycling is not said to do nothing in other modes.
TEST(Coordinator, WarningsSpeakOfTheModesDecidedForThePlan) {
    const testing::TempDir dir;
    const Output output = run_binary("coordinator", {"--command", "true", "--inputs", testing::numbers(dir, 1).string(),
                                                     "--workers", "1", "--max-tasks-per-worker", "1"});
    EXPECT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(output.err.find("they do nothing"), std::string::npos) << output.err;
    EXPECT_NE(output.err.find("processes"), std::string::npos) << output.err;  // the one mode that ran
}

TEST(Coordinator, TooManyCpuTasksForCpuNExitTwoNamingTheFlags) {
    const Output output = run_binary("coordinator", {"--task", "cpu", "--tasks", "2000", "--cpu-n", "1000000000"});
    EXPECT_EQ(output.exit_code, 2);
    // The last task is made before the run (the plan is made as it goes): it names the error.
    EXPECT_NE(output.err.find("--task cpu: cannot make task 1999 of 2000: cpu task 1999 would end at 2000 x --cpu-n "
                              "1000000000, above the limit 1000000000000; lower --cpu-n or --tasks"),
              std::string::npos)
        << output.err;
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
    EXPECT_NE(output.err.find("--results: cannot open '/nonexistent/dir/r.jsonl'"), std::string::npos) << output.err;
    EXPECT_TRUE(output.out.empty()) << output.out;
}

// Starts a processes run of long tasks and waits until its workers are up.
std::vector<pid_t> start_long_run(testing::Running& coordinator) {
    std::vector<pid_t> workers;
    testing::eventually([&] { return (workers = testing::workers_of(coordinator.pid())).size() == 3; },
                        std::chrono::seconds(10));
    return workers;
}

struct SignalCase {
    int signo;
    int exit_code;
};

class CoordinatorSignal : public ::testing::TestWithParam<SignalCase> {};

TEST_P(CoordinatorSignal, StopsReapsItsWorkersAndExitsWithTheSignalCode) {
    // --drain-timeout 0: a SIGTERM's drain gives up on 60 s tasks at once (DrainTest waits for them).
    testing::Running coordinator("coordinator", {"--mode", "processes", "--workers", "3", "--tasks", "6", "--duration",
                                                 "60", "--drain-timeout", "0"});
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
                         [](const auto& param_info) {
                             return param_info.param.signo == SIGTERM ? "SIGTERM" : "SIGINT";
                         });

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
    testing::Running coordinator(
        "coordinator", {"--mode", "sequential,threads", "--tasks", "4", "--duration", "60", "--drain-timeout", "0"});
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    coordinator.signal(SIGTERM);
    const Output output = coordinator.wait(std::chrono::seconds(20));
    EXPECT_EQ(output.exit_code, 143) << output.err;
}

// The CPUs a process (or thread: /proc/PID/task/TID) may run on, from its status file.
std::string cpus_allowed_list(const std::filesystem::path& proc_dir) {
    std::istringstream status(testing::read_file(proc_dir / "status"));
    for (std::string line; std::getline(status, line);)
        if (line.rfind("Cpus_allowed_list:", 0) == 0) return line.substr(line.find_first_not_of(" \t", 18));
    return "";
}

bool is_one_cpu(const std::string& list) { return !list.empty() && list.find_first_of(",-") == std::string::npos; }

TEST(Pinning, EachWorkerProcessMayRunOnOneCpuOnlyAndTheyDiffer) {
    if (allowed_cpus().size() < 2) GTEST_SKIP() << "needs two CPUs";
    testing::Running coordinator("coordinator", {"--mode", "processes", "--pin", "--workers", "2", "--tasks", "2",
                                                 "--duration", "60", "--drain-timeout", "0"});
    // A child pins itself between fork and exec: look once both run the worker binary, or a
    // child caught before its pin reads as unpinned.
    const auto runs_worker = [](pid_t pid) { return testing::runs_program(pid, "worker"); };
    std::vector<pid_t> workers;
    testing::eventually(
        [&] {
            workers = testing::workers_of(coordinator.pid());
            return workers.size() == 2 && std::all_of(workers.begin(), workers.end(), runs_worker);
        },
        std::chrono::seconds(10));
    ASSERT_EQ(workers.size(), 2u) << coordinator.err();
    std::set<std::string> cpus;
    for (pid_t worker : workers) {
        const std::string list = cpus_allowed_list(std::filesystem::path("/proc") / std::to_string(worker));
        EXPECT_TRUE(is_one_cpu(list)) << "worker " << worker << " may run on " << list;
        cpus.insert(list);
    }
    EXPECT_EQ(cpus.size(), 2u);
    coordinator.signal(SIGTERM);
    EXPECT_EQ(coordinator.wait(std::chrono::seconds(20)).exit_code, 143);
}

TEST(Pinning, EachPoolThreadMayRunOnOneCpuOnlyAndTheyDiffer) {
    if (allowed_cpus().size() < 2) GTEST_SKIP() << "needs two CPUs";
    testing::Running coordinator("coordinator", {"--mode", "threads", "--pin", "--workers", "2", "--tasks", "2",
                                                 "--duration", "60", "--drain-timeout", "0"});
    // The pool's two threads are pinned; the main and signal threads are not.
    const auto tasks = std::filesystem::path("/proc") / std::to_string(coordinator.pid()) / "task";
    std::multiset<std::string> pinned;
    testing::eventually(
        [&] {
            pinned.clear();
            std::error_code ec;
            for (const auto& thread : std::filesystem::directory_iterator(tasks, ec))
                if (const std::string list = cpus_allowed_list(thread.path()); is_one_cpu(list)) pinned.insert(list);
            return pinned.size() == 2;
        },
        std::chrono::seconds(10));
    EXPECT_EQ(pinned.size(), 2u) << coordinator.err();
    EXPECT_EQ(std::set<std::string>(pinned.begin(), pinned.end()).size(), 2u);
    coordinator.signal(SIGTERM);
    EXPECT_EQ(coordinator.wait(std::chrono::seconds(20)).exit_code, 143);
}

TEST(Pinning, ThePlacementIsInTheReportAndTheJson) {
    testing::TempDir dir;
    const std::vector<int> cpus = allowed_cpus();
    const Output output =
        run_binary("coordinator", {"--mode", "all", "--pin", "--workers", "2", "--task", "cpu", "--tasks", "4",
                                   "--cpu-n", "100000", "--json", (dir / "report.json").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_NE(output.out.find("placement (worker -> cpu, pid):"), std::string::npos) << output.out;
    EXPECT_NE(output.out.find(fmt::format("processes: w1 -> cpu {} (pid ", cpus[0])), std::string::npos) << output.out;
    EXPECT_NE(output.out.find(fmt::format("threads: t1 -> cpu {} (pid ", cpus[0])), std::string::npos) << output.out;

    const auto report = testing::read_json(dir / "report.json");
    EXPECT_EQ(report["config"]["pin_cpus"], cpus);
    ASSERT_EQ(report["runs"].size(), 4u);
    for (const auto& run : report["runs"]) {
        const bool sequential = run["mode"] == "sequential";
        const std::string prefix = run["mode"] == "processes" ? "w" : "t";
        ASSERT_EQ(run["placement"].size(), sequential ? 1u : 2u) << run["mode"];
        for (std::size_t i = 0; i < run["placement"].size(); ++i) {
            const auto& place = run["placement"][i];
            EXPECT_EQ(place["worker"], sequential ? "seq" : prefix + std::to_string(i + 1));
            EXPECT_EQ(place["cpu"], cpus[i % cpus.size()]);
            EXPECT_GT(place["pid"].get<int>(), 0);
        }
        EXPECT_EQ(run["cpus_used"], sequential ? 1 : std::min<int>(2, static_cast<int>(cpus.size())));
        EXPECT_GE(run["utilisation"].get<double>(), 0.0);
    }
    // Worker processes have pids of their own, threads share the coordinator's.
    EXPECT_NE(report["runs"][3]["placement"][0]["pid"], report["runs"][3]["placement"][1]["pid"]);
    EXPECT_EQ(report["runs"][1]["placement"][0]["pid"], report["runs"][1]["placement"][1]["pid"]);
}

TEST(Pinning, MoreWorkersThanCpusIsAWarningAndRoundRobin) {
    testing::TempDir dir;
    const std::vector<int> cpus = allowed_cpus();
    const int workers = static_cast<int>(cpus.size()) + 1;
    const Output output =
        run_binary("coordinator", {"--mode", "threads", "--pin", "--workers", std::to_string(workers), "--tasks", "1",
                                   "--duration", "0", "--json", (dir / "report.json").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_NE(output.err.find("pinning round-robin"), std::string::npos) << output.err;
    const auto placement = testing::read_json(dir / "report.json")["runs"][0]["placement"];
    ASSERT_EQ(placement.size(), static_cast<std::size_t>(workers));
    EXPECT_EQ(placement[workers - 1]["cpu"], cpus[0]);
}

TEST(Pinning, ACpuThisProcessMayNotUseExitsTwoNamingCpus) {
    const std::vector<int> allowed = allowed_cpus();
    int outside = 0;
    while (std::find(allowed.begin(), allowed.end(), outside) != allowed.end()) ++outside;
    const std::string list = fmt::format("{}-{}", allowed.front(), outside);
    const Output output = run_binary("coordinator", {"--cpus", list, "--tasks", "1", "--duration", "0"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--cpus"), std::string::npos) << output.err;
    EXPECT_NE(output.err.find(list), std::string::npos) << output.err;
    EXPECT_TRUE(output.out.empty()) << output.out;
}

TEST(CpuTasks, EveryModeGivesTheSameValuesAndTheJournalHasThem) {
    testing::TempDir dir;
    const Output output = run_binary("coordinator", {"--mode", "all", "--workers", "2", "--task", "cpu", "--tasks", "5",
                                                     "--cpu-n", "200000", "--results", (dir / "r.jsonl").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    std::map<std::string, std::map<int, std::uint64_t>> primes;
    for (const auto& line : testing::read_json_lines(dir / "r.jsonl")) {
        EXPECT_EQ(line["kind"], "cpu");
        const int id = line["id"].get<int>();
        EXPECT_EQ(line["params"]["lo"], id * 200'000);
        EXPECT_EQ(line["params"]["hi"], (id + 1) * 200'000);
        primes[line["mode"]][id] = line["value"]["primes"].get<std::uint64_t>();
    }
    // pi(200000) = 17984, then the primes in each next 200000 numbers.
    const std::map<int, std::uint64_t> expected{{0, 17'984}, {1, 15'876}, {2, 15'238}, {3, 14'853}, {4, 14'547}};
    for (const char* mode : {"sequential", "threads", "gil-threads", "processes"})
        EXPECT_EQ(primes[mode], expected) << mode;
    EXPECT_NE(output.out.find("gil-threads task"), std::string::npos);
    EXPECT_NE(output.out.find(": 17984 primes"), std::string::npos) << output.out;
}

void write_file(const std::filesystem::path& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
}

TEST(PlanFile, RunsAMixedPlanInEveryMode) {
    testing::TempDir dir;
    write_file(dir / "plan.jsonl",
               "# two sleeps and two prime counts\n"
               "{\"kind\":\"sleep\",\"seconds\":0.05}\n"
               "{\"kind\":\"cpu\",\"n\":1000000}\n"
               "\n"
               "{\"kind\":\"cpu\",\"lo\":100,\"hi\":200}\n"
               "{\"kind\":\"sleep\",\"seconds\":0.02}\n");
    const Output output =
        run_binary("coordinator", {"--mode", "all", "--workers", "2", "--plan", (dir / "plan.jsonl").string(),
                                   "--results", (dir / "r.jsonl").string(), "--json", (dir / "report.json").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const auto lines = testing::read_json_lines(dir / "r.jsonl");
    ASSERT_EQ(lines.size(), 16u);
    for (const auto& line : lines) {
        const int id = line["id"].get<int>();
        EXPECT_EQ(line["kind"], id == 0 || id == 3 ? "sleep" : "cpu") << line.dump();
        if (id == 0) {
            EXPECT_GE(line["value"]["slept_s"].get<double>(), 0.05);
        } else if (id == 1) {
            EXPECT_EQ(line["value"]["primes"], 78'498);
        } else if (id == 2) {
            EXPECT_EQ(line["value"]["primes"], 21);
        }
    }
    const auto report = testing::read_json(dir / "report.json");
    EXPECT_EQ(report["task"], "mixed");
    EXPECT_EQ(report["config"]["tasks"], 4);
    EXPECT_EQ(report["config"]["plan"], (dir / "plan.jsonl").string());
}

TEST(PlanFile, ABadLineExitsTwoNamingFileAndLineBeforeAnythingRuns) {
    testing::TempDir dir;
    const std::string plan = (dir / "plan.jsonl").string();
    write_file(plan, "{\"kind\":\"sleep\",\"seconds\":0.01}\n# fine so far\n{\"kind\":\"teleport\"}\n");
    const Output output = run_binary("coordinator", {"--plan", plan, "--results", (dir / "r.jsonl").string()});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find(plan + ":3: unknown kind \"teleport\""), std::string::npos) << output.err;
    EXPECT_TRUE(output.out.empty()) << output.out;
    EXPECT_FALSE(std::filesystem::exists(dir / "r.jsonl"));
}

TEST(PlanFile, WithTaskIsAnError) {
    testing::TempDir dir;
    write_file(dir / "plan.jsonl", "{\"kind\":\"sleep\",\"seconds\":0}\n");
    const Output output = run_binary("coordinator", {"--plan", (dir / "plan.jsonl").string(), "--task", "cpu"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--plan"), std::string::npos) << output.err;
    EXPECT_NE(output.err.find("--task"), std::string::npos) << output.err;
}

TEST(PlanFile, AMissingFileExitsTwoNamingIt) {
    const Output output = run_binary("coordinator", {"--plan", "/nonexistent/plan.jsonl"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--plan: cannot open '/nonexistent/plan.jsonl'"), std::string::npos) << output.err;
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

TEST(Resume, ATornTailIsReportedWithItsWholeSizeAndCutOff) {
    testing::TempDir dir;
    const std::string journal = (dir / "journal.jsonl").string();
    const std::vector<std::string> plan{"--mode", "threads", "--tasks", "3", "--duration", "0"};
    std::vector<std::string> first = plan;
    first.insert(first.end(), {"--results", journal});
    ASSERT_EQ(run_binary("coordinator", first).exit_code, 0);
    const std::string complete = testing::read_file(journal);
    // A kill while writing a line holding a large value: a megabyte without a line end.
    const std::string torn = R"({"mode":"threads","id":0,"value":")" + std::string(1'000'000, 'x');
    { std::ofstream(journal, std::ios::app) << torn; }
    std::vector<std::string> again = plan;
    again.insert(again.end(), {"--resume", journal});
    const Output output = run_binary("coordinator", again);
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_NE(output.err.find(fmt::format("ends in a torn line of {} bytes without a line end", torn.size())),
              std::string::npos)
        << output.err.substr(0, 2000);
    EXPECT_EQ(output.err.find("more bytes"), std::string::npos) << output.err.substr(0, 2000);
    EXPECT_EQ(testing::read_file(journal), complete);  // cut off; nothing was left to run
}

TEST(Resume, AJournalOfAnotherPlanExitsTwoSayingSo) {
    testing::TempDir dir;
    const std::string journal = (dir / "journal.jsonl").string();
    ASSERT_EQ(
        run_binary("coordinator", {"--mode", "threads", "--tasks", "3", "--duration", "0.01", "--results", journal})
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
