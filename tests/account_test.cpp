// What each task cost where it ran (the journal's "cost" and "host"), and `coordinator
// report JOURNAL` on the journals of real runs: with failures, a killed worker, crashes
// and retries, resumed, torn, old and hand-written.

#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "support.hpp"

namespace taskfarm {
namespace {

using nlohmann::json;
using testing::Output;
using testing::run_binary;

void write_file(const std::filesystem::path& path, const std::string& text) { std::ofstream(path) << text; }

std::string host_name() {
    char name[256] = {};
    ::gethostname(name, sizeof name - 1);
    return name;
}

TEST(Accounting, ACpuTaskRecordsTheCpuItUsedAndWhereInEveryMode) {
    testing::TempDir dir;
    const Output output = run_binary("coordinator", {"--task", "cpu", "--tasks", "2", "--cpu-n", "30000000",
                                                     "--workers", "1", "--results", (dir / "r.jsonl").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const std::map<std::string, std::string> scope_of{
        {"sequential", "thread"}, {"threads", "thread"}, {"processes", "process"}};
    std::map<std::string, int> lines_of;
    for (const json& line : testing::read_result_lines(dir / "r.jsonl")) {
        const std::string mode = line.at("mode");
        ++lines_of[mode];
        const json& cost = line.at("cost");
        EXPECT_EQ(cost.at("scope"), scope_of.at(mode)) << line.dump();
        EXPECT_GT(cost.at("user_s").get<double>(), 0) << line.dump();
        EXPECT_GE(cost.at("sys_s").get<double>(), 0) << line.dump();
        EXPECT_EQ(line.at("host"), host_name());
        if (mode == "processes" &&
            ::access("/proc/self/clear_refs", W_OK) == 0)  // the worker's peak while the task ran, in KiB
            EXPECT_GT(cost.at("max_rss_kb").get<std::int64_t>(), 0) << line.dump();
        else if (mode == "processes")  // a kernel or sandbox that cannot reset the peak: not measured
            EXPECT_TRUE(cost.at("max_rss_kb").is_null()) << line.dump();
        else  // a thread has no memory of its own
            EXPECT_TRUE(cost.at("max_rss_kb").is_null()) << line.dump();
    }
    EXPECT_EQ(lines_of, (std::map<std::string, int>{{"processes", 2}, {"sequential", 2}, {"threads", 2}}));
    // The second table: per mode, what its tasks cost.
    EXPECT_NE(output.out.find("task cost    measured"), std::string::npos) << output.out;
    EXPECT_NE(output.out.find("  process\n"), std::string::npos) << output.out;
}

TEST(Accounting, ACommandRecordsItsProcessTreesCpuNotTheWorkers) {
    testing::TempDir dir;
    // The loop runs in a subshell that the shell waits for: a grandchild of the worker.
    const std::string spin = "(i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done); echo spun";
    write_file(dir / "plan.jsonl", json{{"kind", "command"}, {"shell", spin}}.dump() + "\n");
    for (const char* mode : {"processes", "threads"}) {
        const Output output = run_binary("coordinator", {"--plan", (dir / "plan.jsonl").string(), "--mode", mode,
                                                         "--workers", "1", "--results", (dir / mode).string()});
        ASSERT_EQ(output.exit_code, 0) << output.err;
        const auto lines = testing::read_result_lines(dir / mode);
        ASSERT_EQ(lines.size(), 1u);
        const json& cost = lines[0].at("cost");
        EXPECT_EQ(cost.at("scope"), "tree") << lines[0].dump();
        // 100,000 rounds of a shell loop take tens of milliseconds of CPU on any machine.
        EXPECT_GT(cost.at("user_s").get<double>() + cost.at("sys_s").get<double>(), 0.01) << lines[0].dump();
        EXPECT_GT(cost.at("max_rss_kb").get<std::int64_t>(), 0) << lines[0].dump();
    }
}

TEST(Accounting, GilThreadsSayScopeThread) {
    testing::TempDir dir;
    const Output output =
        run_binary("coordinator", {"--task", "sleep", "--tasks", "2", "--duration", "0", "--mode", "gil-threads",
                                   "--workers", "2", "--results", (dir / "r.jsonl").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const auto lines = testing::read_result_lines(dir / "r.jsonl");
    ASSERT_EQ(lines.size(), 2u);
    for (const json& line : lines) EXPECT_EQ(line.at("cost").at("scope"), "thread") << line.dump();
}

TEST(Accounting, TheJsonReportHasPerModeTotals) {
    testing::TempDir dir;
    const Output output =
        run_binary("coordinator", {"--task", "cpu", "--tasks", "3", "--cpu-n", "10000000", "--workers", "2", "--mode",
                                   "threads,processes", "--json", (dir / "r.json").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const json report = testing::read_json(dir / "r.json");
    for (const json& run : report.at("runs")) {
        const json& cost = run.at("task_cost");
        EXPECT_EQ(cost.at("measured"), 3) << run.dump();
        EXPECT_GT(cost.at("user_s").get<double>(), 0) << run.dump();
        EXPECT_EQ(cost.at("scopes"), json::array({run.at("mode") == "threads" ? "thread" : "process"})) << run.dump();
    }
}

// A plan whose run has it all: task 0 holds its worker until the test kills it (a file says
// when it has started), task 1 fails, task 2 crashes its worker each time, task 3 is fine.
struct EventfulRun {
    testing::TempDir dir;
    std::filesystem::path plan = dir / "plan.jsonl";
    std::filesystem::path journal = dir / "r.jsonl";
    Output output;

    EventfulRun() {
        const std::string started = (dir / "started").string();
        write_file(plan, json{{"kind", "command"}, {"shell", "touch '" + started + "'; sleep 0.5"}}.dump() + "\n" +
                             "{\"kind\":\"fail\"}\n{\"kind\":\"crash\"}\n{\"kind\":\"sleep\",\"seconds\":0}\n");
        testing::Running coordinator("coordinator", {"--plan", plan.string(), "--mode", "processes", "--workers", "1",
                                                     "--prefetch", "1", "--results", journal.string()});
        // The first worker runs task 0 once the file is there: kill it then, by its pid.
        const bool began =
            testing::eventually([&] { return std::filesystem::exists(dir / "started"); }, std::chrono::seconds(30));
        if (began) {
            const std::vector<pid_t> workers = testing::workers_of(coordinator.pid());
            for (pid_t pid : workers)
                if (testing::runs_program(pid, "worker")) ::kill(pid, SIGKILL);
        }
        output = coordinator.wait(std::chrono::seconds(90));
    }

    json report(const std::vector<std::string>& more = {}) const {
        std::vector<std::string> args{"report", journal.string(), "--json"};
        args.insert(args.end(), more.begin(), more.end());
        const Output out = run_binary("coordinator", args);
        EXPECT_EQ(out.exit_code, 0) << out.err;
        return json::parse(out.out);
    }
};

TEST(Report, TellsWhatHappenedInARunWithFailuresAKilledWorkerAndCrashes) {
    EventfulRun run;
    ASSERT_EQ(run.output.exit_code, 1) << run.output.err;
    const json report = run.report();
    ASSERT_EQ(report.at("modes").size(), 1u) << report.dump(2);
    const json& mode = report.at("modes").at(0);
    EXPECT_EQ(mode.at("mode"), "processes");
    EXPECT_EQ(mode.at("tasks"), 4);
    EXPECT_EQ(mode.at("ok"), 2);
    EXPECT_EQ(mode.at("failed"), 2);
    // Task 0 lost once with the killed worker, task 2 twice with the workers it crashed.
    EXPECT_EQ(mode.at("attempts_lost"), 3) << mode.dump(2);
    EXPECT_EQ(mode.at("workers_lost"), 4) << mode.dump(2);
    // Failures by reason: one each, the crash's with its worker's name blanked.
    std::map<std::string, json> failures;
    for (const json& failure : mode.at("failures")) failures[failure.at("reason")] = failure;
    ASSERT_EQ(failures.size(), 2u) << mode.dump(2);
    EXPECT_EQ(failures.at("failed on purpose").at("ids"), json::array({1}));
    const auto gave_up = std::find_if(failures.begin(), failures.end(), [](const auto& f) {
        return f.first.starts_with("gave up after 3 attempts: worker wN ");
    });
    ASSERT_NE(gave_up, failures.end()) << mode.dump(2);
    EXPECT_EQ(gave_up->second.at("ids"), json::array({2}));
    // Retried: task 0 (ok on attempt 2) and task 2 (failed on attempt 3), each with the attempts lost and why.
    std::map<int, json> retried;
    for (const json& retry : mode.at("retried")) retried[retry.at("id")] = retry;
    ASSERT_EQ(retried.size(), 2u) << mode.dump(2);
    EXPECT_EQ(retried.at(0).at("attempt"), 2);
    EXPECT_EQ(retried.at(0).at("ok"), true);
    ASSERT_EQ(retried.at(0).at("lost").size(), 1u);
    EXPECT_EQ(retried.at(0).at("lost").at(0).at("worker"), "w1");
    // "died (signal 9)", or "disconnected" when a send to it failed first.
    EXPECT_TRUE(retried.at(0).at("lost").at(0).at("reason").get<std::string>().starts_with("worker w1 "))
        << mode.dump(2);
    EXPECT_EQ(retried.at(2).at("attempt"), 3);
    EXPECT_EQ(retried.at(2).at("lost").size(), 2u);
    // Per worker: a replacement takes the name of the worker it replaces, so w1's row covers
    // all five processes: four results, three attempts lost, four deaths.
    ASSERT_EQ(mode.at("workers").size(), 1u) << mode.dump(2);
    const json& w1 = mode.at("workers").at(0);
    EXPECT_EQ(w1.at("worker"), "w1");
    EXPECT_EQ(w1.at("results"), 4);
    EXPECT_EQ(w1.at("ok"), 2);
    EXPECT_EQ(w1.at("attempts_lost"), 3);
    EXPECT_EQ(w1.at("lost").size(), 4u);
    EXPECT_EQ(w1.at("host"), host_name());
    // The slowest: task 0, the only one that sleeps (half a second, twice).
    ASSERT_FALSE(mode.at("slowest").empty());
    EXPECT_EQ(mode.at("slowest").at(0).at("id"), 0) << mode.dump(2);
    EXPECT_EQ(mode.at("slowest").size(), 4u);
    // Cost: the command's tree for task 0, the worker process for the others that came back.
    EXPECT_EQ(mode.at("cost").at("measured"), 3) << mode.dump(2);  // the given-up crash has none
    EXPECT_EQ(mode.at("cost").at("scopes"), json::parse(R"(["tree","process"])")) << mode.dump(2);
    // --resume would run what failed: tasks 1 and 2.
    EXPECT_EQ(mode.at("resume_would_run").at("count"), 2);
    EXPECT_EQ(mode.at("resume_would_run").at("ranges"), json::parse("[[1,2]]"));
    EXPECT_EQ(mode.at("resume_would_run").at("after_id"), 3);
    EXPECT_TRUE(report.at("resume_refused").is_null());

    // For people: the same, in words.
    const Output text = run_binary("coordinator", {"report", run.journal.string()});
    ASSERT_EQ(text.exit_code, 0) << text.err;
    for (const char* expected :
         {"== processes: 4 task(s) in the journal, 2 ok, 2 failed; 3 attempt(s) lost, 4 worker(s) lost",
          "1 x failed on purpose  (tasks 1)", "task 0: ok on attempt 2 on w1", "requeue at",
          "--resume would run 2 task(s): 1-2"})
        EXPECT_NE(text.out.find(expected), std::string::npos) << expected << "\n" << text.out;
}

TEST(Report, TellsOneTasksWholeStory) {
    EventfulRun run;
    ASSERT_EQ(run.output.exit_code, 1) << run.output.err;
    const json story = run.report({"--task", "2"}).at("task");
    EXPECT_EQ(story.at("kind"), "crash");
    const json& steps = story.at("modes").at(0).at("story");
    ASSERT_EQ(steps.size(), 3u) << story.dump(2);
    for (int i = 0; i < 2; ++i) {
        EXPECT_EQ(steps[i].at("what"), "requeue");
        EXPECT_EQ(steps[i].at("attempt"), i + 1);
        EXPECT_TRUE(steps[i].at("reason").get<std::string>().starts_with("worker w1 ")) << steps[i].dump();
    }
    EXPECT_EQ(steps[2].at("what"), "result");
    EXPECT_EQ(steps[2].at("ok"), false);
    EXPECT_EQ(steps[2].at("attempt"), 3);
    EXPECT_EQ(story.at("modes").at(0).at("resume_would_run"), true);

    const Output done = run_binary("coordinator", {"report", run.journal.string(), "--task", "0"});
    ASSERT_EQ(done.exit_code, 0) << done.err;
    EXPECT_NE(done.out.find("task 0: command"), std::string::npos) << done.out;
    EXPECT_NE(done.out.find("requeue at"), std::string::npos) << done.out;
    EXPECT_NE(done.out.find("attempt 2 on w1 (" + host_name() + ")"), std::string::npos) << done.out;
    EXPECT_NE(done.out.find("--resume would not run it: it is done"), std::string::npos) << done.out;
}

TEST(Report, ResumeSkipsEventLinesAndTheReportCountsTheRerun) {
    EventfulRun run;
    ASSERT_EQ(run.output.exit_code, 1) << run.output.err;
    const Output resumed = run_binary("coordinator", {"--plan", run.plan.string(), "--mode", "processes", "--workers",
                                                      "1", "--resume", run.journal.string()});
    EXPECT_EQ(resumed.exit_code, 1) << resumed.err;  // tasks 1 and 2 fail again
    std::map<int, int> results_of;
    for (const json& line : testing::read_result_lines(run.journal)) ++results_of[line.at("id").get<int>()];
    EXPECT_EQ(results_of, (std::map<int, int>{{0, 1}, {1, 2}, {2, 2}, {3, 1}}));
    const json mode = run.report().at("modes").at(0);
    EXPECT_EQ(mode.at("rerun"), 2);
    EXPECT_EQ(mode.at("failed"), 2);
    EXPECT_EQ(mode.at("resume_would_run").at("ranges"), json::parse("[[1,2]]"));
}

// --retries writes a "retrying" line for each failed attempt it runs again: the report tells
// them as steps of the task's story, not as results of their own (nor as --resume's reruns).
TEST(Report, TellsAttemptsThatRetriesRanAgain) {
    testing::TempDir dir;
    const auto journal = dir / "journal.jsonl";
    const auto inputs = dir / "inputs.txt";
    write_file(inputs, "1\n2\n3\n");
    const Output run =
        run_binary("coordinator", {"--command", "test {} -ne 2", "--inputs", inputs.string(), "--retries", "2",
                                   "--workers", "1", "--results", journal.string(), "--output", "none"});
    ASSERT_EQ(run.exit_code, 1) << run.err;  // task 1 ("2") fails three times
    const Output report = run_binary("coordinator", {"report", journal.string(), "--json"});
    ASSERT_EQ(report.exit_code, 0) << report.err;
    const json mode = json::parse(report.out).at("modes").at(0);
    EXPECT_EQ(mode.at("tasks"), 3);
    EXPECT_EQ(mode.at("failed"), 1);
    EXPECT_EQ(mode.at("rerun"), 0);
    ASSERT_EQ(mode.at("retried").size(), 1u) << mode.dump(2);
    const json& retried = mode.at("retried").at(0);
    EXPECT_EQ(retried.at("id"), 1);
    EXPECT_EQ(retried.at("attempt"), 3);
    ASSERT_EQ(retried.at("lost").size(), 2u) << retried.dump(2);
    for (int i = 0; i < 2; ++i) {
        EXPECT_EQ(retried.at("lost").at(i).at("attempt"), i + 1);
        EXPECT_EQ(retried.at("lost").at(i).at("retrying"), true);
    }
    const Output text = run_binary("coordinator", {"report", journal.string(), "--task", "1"});
    ASSERT_EQ(text.exit_code, 0) << text.err;
    EXPECT_NE(text.out.find("ran again (--retries)"), std::string::npos) << text.out;
}

TEST(Report, AnOldJournalWithoutCostsResumesAndIsReported) {
    testing::TempDir dir;
    // As taskfarm wrote journals before costs and events: no "host", no "cost".
    std::string journal;
    for (int id : {0, 2})
        journal += json{{"mode", "threads"},
                        {"id", id},
                        {"attempt", 1},
                        {"kind", "sleep"},
                        {"ok", true},
                        {"worker", "t1"},
                        {"start_s", 0.0},
                        {"end_s", 0.01},
                        {"params", {{"seconds", 0.0}}},
                        {"value", {{"slept_s", 0.0}}},
                        {"error", nullptr}}
                       .dump() +
                   "\n";
    write_file(dir / "r.jsonl", journal);
    const json before = json::parse(run_binary("coordinator", {"report", (dir / "r.jsonl").string(), "--json"}).out);
    const json& mode = before.at("modes").at(0);
    EXPECT_EQ(mode.at("ok"), 2);
    EXPECT_EQ(mode.at("cost").at("measured"), 0);
    EXPECT_EQ(mode.at("resume_would_run").at("ranges"), json::parse("[[1,1]]"));
    const Output resumed = run_binary("coordinator", {"--task", "sleep", "--tasks", "4", "--duration", "0", "--mode",
                                                      "threads", "--resume", (dir / "r.jsonl").string()});
    ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
    std::set<int> ids;
    for (const json& line : testing::read_result_lines(dir / "r.jsonl")) ids.insert(line.at("id").get<int>());
    EXPECT_EQ(ids, (std::set<int>{0, 1, 2, 3}));
}

TEST(Report, ReadsStandardInputATornLineAndNamesFileAndLineOfABadOne) {
    testing::TempDir dir;
    const std::string good = json{{"mode", "threads"}, {"id", 0},         {"kind", "sleep"},
                                  {"ok", false},       {"error", "boom"}, {"params", json::object()}}
                                 .dump() +
                             "\n";
    write_file(dir / "torn.jsonl", good + "{\"mode\":\"threads\",\"id\":1,\"ok");
    const Output torn = run_binary("coordinator", {"report", (dir / "torn.jsonl").string(), "--json"});
    ASSERT_EQ(torn.exit_code, 0) << torn.err;
    const json report = json::parse(torn.out);
    EXPECT_EQ(report.at("torn_last_line").at("line"), 2);
    EXPECT_EQ(report.at("modes").at(0).at("failures").at(0).at("example"), "boom");
    EXPECT_EQ(testing::read_file(dir / "torn.jsonl"), good + "{\"mode\":\"threads\",\"id\":1,\"ok")
        << "report changed the journal";

    write_file(dir / "bad.jsonl", good + "not json\n");
    const Output bad = run_binary("coordinator", {"report", (dir / "bad.jsonl").string()});
    EXPECT_EQ(bad.exit_code, 2);
    EXPECT_NE(bad.err.find((dir / "bad.jsonl").string() + ":2: not a journal line"), std::string::npos) << bad.err;

    const Output missing = run_binary("coordinator", {"report", (dir / "none.jsonl").string()});
    EXPECT_EQ(missing.exit_code, 2);
    EXPECT_NE(missing.err.find("cannot read journal"), std::string::npos) << missing.err;

    const Output no_task = run_binary("coordinator", {"report", (dir / "torn.jsonl").string(), "--task", "7"});
    EXPECT_EQ(no_task.exit_code, 2);
    EXPECT_NE(no_task.err.find("names task 7"), std::string::npos) << no_task.err;

    // `-`: standard input, through a shell so that it is a pipe.
    const Output piped = run_binary("/bin/sh", {"-c", "\"$0\" report - --json < \"$1\"",
                                                testing::bin("coordinator").string(), (dir / "torn.jsonl").string()});
    ASSERT_EQ(piped.exit_code, 0) << piped.err;
    EXPECT_EQ(json::parse(piped.out).at("modes").at(0).at("failed"), 1);
}

TEST(Report, SaysWhyResumeWouldRefuseAJournalNamingTheJournal) {
    testing::TempDir dir;
    const std::string ok =
        json{{"mode", "threads"}, {"id", 0}, {"kind", "sleep"}, {"ok", true}, {"params", {{"seconds", 0}}}}.dump() +
        "\n";
    write_file(dir / "twice.jsonl", ok + ok);
    const Output output = run_binary("coordinator", {"report", (dir / "twice.jsonl").string(), "--json"});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const json report = json::parse(output.out);
    const std::string refused = report.at("resume_refused");
    EXPECT_NE(refused.find((dir / "twice.jsonl").string() + ":2: task 0 of threads is ok a second time"),
              std::string::npos)
        << refused;
    EXPECT_TRUE(report.at("modes").at(0).at("resume_would_run").is_null());
}

TEST(Report, HelpExplainsEveryFlag) {
    const Output help = run_binary("coordinator", {"report", "--help"});
    EXPECT_EQ(help.exit_code, 0);
    for (const char* flag : {"JOURNAL", "--task", "--json", "--slowest", "standard input", "FILE:LINE"})
        EXPECT_NE(help.out.find(flag), std::string::npos) << flag << "\n" << help.out;
}

}  // namespace
}  // namespace taskfarm
