// The lazy plan: tasks made as they are handed out (generators, files, standard input), the
// compact record of what a journal says is done, and memory that does not grow with the plan.

#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "errors.hpp"
#include "function_type.hpp"
#include "id_set.hpp"
#include "journal.hpp"
#include "plan.hpp"
#include "protocol.hpp"
#include "support.hpp"

namespace taskfarm {
namespace {

namespace fs = std::filesystem;
using testing::Output;
using testing::run_binary;

void write_text(const fs::path& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
}

// A shell command line with the coordinator's path quoted, to run with a pipe into it.
Output shell(const std::string& command) { return run_binary("/bin/sh", {"-c", command}); }
std::string coordinator() { return fmt::format("'{}'", testing::bin("coordinator").string()); }

// The eager plan as make_plan() made it before it became lazy: one generator for the whole
// plan, every task made in order, all held. The lazy generator must give the same tasks.
std::vector<TaskSpec> eager_reference(const RunConfig& config, const Json& settings) {
    const TaskType& type = *testing::type(config.task);
    std::vector<TaskSpec> tasks;
    std::mt19937_64 random(config.seed);
    const auto count = static_cast<std::uint64_t>(config.tasks);
    for (std::uint64_t i = 0; i < count; ++i) {
        Generate args{.index = i, .count = count, .random = random, .settings = settings};
        tasks.push_back({i, &type, type.generate(args), config.task_timeout_s});
    }
    return tasks;
}

TEST(LazyPlan, TheGeneratorGivesTheEagerPlansTasksToEveryCursor) {
    for (const std::uint64_t seed : {1, 7, 42}) {
        RunConfig config;
        config.task = "sleep";
        config.tasks = 500;
        config.settings["duration_s"] = {0.1, 3};
        config.seed = seed;
        config.task_timeout_s = 4;
        Json settings = settings_json(config);
        const Plan plan = make_plan(config, builtin_types(), settings);
        ASSERT_EQ(plan.count, 500u);
        const std::vector<TaskSpec> reference = eager_reference(config, settings);
        // Two cursors at once (two modes, or a resume check during a run) draw alike.
        const auto first = plan.open();
        const auto second = plan.open();
        TaskSpec a;
        TaskSpec b;
        for (const TaskSpec& expected : reference) {
            ASSERT_TRUE(first->next(a));
            ASSERT_TRUE(second->next(b));
            EXPECT_EQ(a.id, expected.id);
            EXPECT_EQ(a.params, expected.params) << "seed " << seed << " task " << expected.id;
            EXPECT_EQ(b.params, expected.params) << "seed " << seed << " task " << expected.id;
            EXPECT_EQ(a.timeout_s, 4.0);
        }
        EXPECT_FALSE(first->next(a));
        EXPECT_FALSE(second->next(b));
    }
}

// Decision 316: the schedule's cursor (open_packed) makes a generated sleep's params as msgpack;
// a worker must get byte for byte the frame the JSON params made, and the journal the same
// params; a type that cannot pack them (cpu) gives JSON as before; a resumed plan packs too.
// Every task of `plan` and of it resumed (a third done), opened packed and as JSON: the same
// ids, the same params and the same frame bytes; `packs`: whether the packed cursor made them so.
void expect_packed_as_json(const Plan& plan, bool packs, const std::string& label) {
    IdSet done;
    for (TaskId id = 0; id < plan.count; id += 3) done.insert(id);
    const Plan rest = skipping(plan, done);
    for (const Plan* which : {&plan, &rest}) {
        const auto json = which->open();
        const auto packed = which->open_packed();
        TaskSpec a;
        TaskSpec b;
        while (json->next(a)) {
            ASSERT_TRUE(packed->next(b));
            ASSERT_EQ(a.id, b.id);
            EXPECT_FALSE(a.packed_params);
            EXPECT_EQ(b.packed_params.has_value(), packs) << label << " task " << b.id;
            if (b.packed_params) {
                EXPECT_TRUE(b.params.is_null());
            }
            // The text too, not only JSON's ==, for which 0 == 0.0: the journal's text is what
            // --resume compares with the plan's (a sleep's "seconds":0.0 read back as 0 made every
            // line differ, and the check name each one by walking the plan: quadratic).
            EXPECT_EQ(proto::params_of(b).dump(), a.params.dump()) << label << " task " << a.id;
            std::string from_json;
            std::string from_packed;
            proto::append_encoded(from_json, a, 2);
            proto::append_encoded(from_packed, b, 2);
            EXPECT_EQ(from_packed, from_json) << label << " task " << a.id;
        }
        EXPECT_FALSE(packed->next(b));
    }
}

TEST(LazyPlan, APackedCursorGivesTheSameTasksAsTheBytesTheJsonMakes) {
    for (const auto& [task, duration] : std::vector<std::pair<std::string, Json>>{{"sleep", Json::array({0, 0})},
                                                                                  {"sleep", Json::array({0.5, 0.5})},
                                                                                  {"sleep", Json::array({0.1, 3})},
                                                                                  {"cpu", nullptr}}) {
        RunConfig config;
        config.task = task;
        config.tasks = 300;
        if (!duration.is_null()) config.settings["duration_s"] = duration;
        config.seed = 9;
        Json settings = settings_json(config);
        const Plan plan = make_plan(config, builtin_types(), settings);
        expect_packed_as_json(plan, task == "sleep", task + " " + duration.dump());
    }
}

// Decision 321: a user's function packs its default params ({"index": i}) too, past the
// one-byte, two-byte and four-byte integers.
TEST(LazyPlan, APackedCursorOfAUsersFunctionGivesTheBytesItsJsonMakes) {
    Registry registry;
    registry.add(make_function_type("noop", [](const Params&, Context&) { return Value(); }, {}));
    RunConfig config;
    config.task = "noop";
    config.tasks = 70'000;
    Json settings = settings_json(config);
    const Plan plan = make_plan(config, registry, settings);
    expect_packed_as_json(plan, true, "noop");
}

// A packed task run where a JSON one is (threads mode's run_task) runs from its params as JSON.
TEST(LazyPlan, APackedTaskRunsInTheCoordinatorAsItsJsonWould) {
    RunConfig config;
    config.task = "sleep";
    config.tasks = 1;
    config.settings["duration_s"] = {0, 0};
    Json settings = settings_json(config);
    const Plan plan = make_plan(config, builtin_types(), settings);
    TaskSpec task;
    ASSERT_TRUE(plan.open_packed()->next(task));
    ASSERT_TRUE(task.packed_params);
    const TaskResult result = run_task(task, 1, RunEnv{.worker = "t1", .mode = "threads"});
    EXPECT_TRUE(result.ok) << result.error;
    EXPECT_EQ(result.value, (Json{{"slept_s", 0.0}}));
}

TEST(LazyPlan, AFileIsCheckedWholeBeforeTheRunAndNamesALateBadLine) {
    testing::TempDir dir;
    std::string text;
    for (int i = 0; i < 5000; ++i) text += "{\"kind\":\"sleep\",\"seconds\":0}\n";
    text += "{\"kind\":\"sleep\",\"seconds\":\"soon\"}\n";
    write_text(dir / "plan.jsonl", text);
    RunConfig config;
    config.plan_path = dir / "plan.jsonl";
    try {
        testing::plan_for(config);
        ADD_FAILURE() << "no error for line 5001";
    } catch (const ConfigError& e) {
        EXPECT_EQ(std::string(e.what()).rfind(fmt::format("{}:5001: ", config.plan_path.string()), 0), 0u) << e.what();
    }
    // The binary: exit 2 before any task ran, so the journal stays empty.
    const Output output = run_binary("coordinator", {"--plan", config.plan_path.string(), "--mode", "threads",
                                                     "--results", (dir / "r.jsonl").string()});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find(fmt::format("{}:5001: ", config.plan_path.string())), std::string::npos) << output.err;
    EXPECT_TRUE(testing::read_file(dir / "r.jsonl").empty());
}

TEST(LazyPlan, AFileIsCountedAndReadAgainByEachCursor) {
    testing::TempDir dir;
    write_text(dir / "plan.jsonl",
               "# a comment\n{\"kind\":\"sleep\",\"seconds\":0.5}\n\n{\"kind\":\"cpu\",\"n\":10}\n");
    RunConfig config;
    config.plan_path = dir / "plan.jsonl";
    config.task_timeout_s = 3;
    const Plan plan = testing::plan_for(config);
    EXPECT_EQ(plan.count, 2u);
    ASSERT_EQ(plan.types.size(), 2u);
    EXPECT_EQ(plan.types[0]->name(), "sleep");
    EXPECT_EQ(plan.types[1]->name(), "cpu");
    for (int cursor = 0; cursor < 2; ++cursor) {
        const std::vector<TaskSpec> tasks = all_tasks(plan);
        ASSERT_EQ(tasks.size(), 2u);
        EXPECT_EQ(tasks[1].id, 1u);
        EXPECT_EQ(tasks[1].params, (Json{{"lo", 0}, {"hi", 10}}));
        EXPECT_EQ(tasks[0].timeout_s, 3.0);
    }
}

TEST(IdSet, HoldsIdsInAnyOrderOnceEach) {
    IdSet set;
    EXPECT_TRUE(set.empty());
    EXPECT_TRUE(set.insert(5));
    EXPECT_FALSE(set.insert(5));
    EXPECT_TRUE(set.insert(1'000'000'007));
    EXPECT_TRUE(set.contains(5));
    EXPECT_FALSE(set.contains(4));
    EXPECT_FALSE(set.contains(6));
    EXPECT_TRUE(set.contains(1'000'000'007));
    EXPECT_EQ(set.size(), 2u);
    // A whole chunk, backwards, becomes a count; its neighbours stay out.
    for (TaskId id = 2 * 65536; id-- > 65536;) set.insert(id);
    EXPECT_EQ(set.size(), 2u + 65536u);
    EXPECT_TRUE(set.contains(65536));
    EXPECT_TRUE(set.contains(2 * 65536 - 1));
    EXPECT_FALSE(set.contains(2 * 65536));
    EXPECT_FALSE(set.insert(70000));
    EXPECT_EQ(set.size(), 2u + 65536u);
}

// Journal lines for `ids` of sleep tasks of 0 s, ok in `mode`.
std::string journal_lines(const std::vector<TaskId>& ids, const std::string& mode, double seconds = 0) {
    std::string text;
    for (const TaskId id : ids)
        text += nlohmann::json{{"id", id},   {"kind", "sleep"}, {"params", {{"seconds", seconds}}},
                               {"ok", true}, {"mode", mode},    {"attempt", 1}}
                    .dump() +
                "\n";
    return text;
}

Plan zero_sleeps(int tasks) {
    RunConfig config;
    config.task = "sleep";
    config.tasks = tasks;
    config.settings["duration_s"] = {0, 0};
    return testing::plan_for(config);
}

TEST(Resume, TheCompactRecordHasTheGapsAndRefusesAnotherPlan) {
    testing::TempDir dir;
    const fs::path journal = dir / "j.jsonl";
    write_text(journal, journal_lines({0, 1, 2, 5, 9}, "threads") + journal_lines({3}, "processes"));
    const Plan plan = zero_sleeps(10);
    const Done done = read_journal_for_resume(journal, plan);
    ASSERT_EQ(done.size(), 2u);
    EXPECT_EQ(done.at("threads").size(), 5u);
    for (TaskId id = 0; id < 10; ++id) EXPECT_EQ(done.at("threads").contains(id), id <= 2 || id == 5 || id == 9) << id;
    const std::vector<TaskSpec> rest = all_tasks(skipping(plan, done.at("threads")));
    std::vector<TaskId> ids;
    for (const TaskSpec& task : rest) ids.push_back(task.id);
    EXPECT_EQ(ids, (std::vector<TaskId>{3, 4, 6, 7, 8}));
    EXPECT_EQ(skipping(plan, done.at("threads")).count, 5u);
    EXPECT_EQ(read_done(journal, "report").at("processes").size(), 1u);

    // The same ids with other parameters: another plan, named by its line.
    write_text(journal, journal_lines({0, 1}, "threads") + journal_lines({2}, "threads", 0.5));
    try {
        read_journal_for_resume(journal, plan);
        ADD_FAILURE() << "accepted a journal of another plan";
    } catch (const ConfigError& e) {
        EXPECT_NE(
            std::string(e.what()).find("j.jsonl:3: task 2 is sleep {\"seconds\":0.5} there but sleep {\"seconds\":0.0} "
                                       "here; the journal is from a different plan"),
            std::string::npos)
            << e.what();
    }
    write_text(journal, journal_lines({3, 4, 3}, "threads"));
    try {
        read_journal_for_resume(journal, plan);
        ADD_FAILURE() << "accepted a second ok line";
    } catch (const ConfigError& e) {
        EXPECT_NE(std::string(e.what()).find("j.jsonl:3: task 3 of threads is ok a second time (first on line 1)"),
                  std::string::npos)
            << e.what();
    }
    write_text(journal, journal_lines({10}, "threads"));
    EXPECT_THROW(read_journal_for_resume(journal, plan), ConfigError);
}

TEST(Resume, RunsOnlyTheGapsOfAGeneratedPlan) {
    testing::TempDir dir;
    const fs::path journal = dir / "j.jsonl";
    const std::vector<std::string> args{"--mode", "threads", "--workers", "2", "--tasks", "3000", "--duration", "0"};
    auto first = args;
    first.insert(first.end(), {"--results", journal.string()});
    ASSERT_EQ(run_binary("coordinator", first).exit_code, 0);
    // Drop every third line: the resumed run must run exactly those tasks.
    std::istringstream lines(testing::read_file(journal));
    std::string kept;
    std::set<TaskId> dropped;
    std::size_t number = 0;
    for (std::string line; std::getline(lines, line); ++number) {
        if (number % 3 == 0)
            dropped.insert(nlohmann::json::parse(line)["id"].get<TaskId>());
        else
            kept += line + "\n";
    }
    write_text(journal, kept);
    auto again = args;
    again.insert(again.end(), {"--resume", journal.string()});
    const Output output = run_binary("coordinator", again);
    ASSERT_EQ(output.exit_code, 0) << output.err;
    std::map<TaskId, int> seen;
    for (const auto& line : testing::read_json_lines(journal)) ++seen[line["id"].get<TaskId>()];
    EXPECT_EQ(seen.size(), 3000u);
    for (const auto& [id, times] : seen) EXPECT_EQ(times, 1) << "task " << id;
    EXPECT_EQ(testing::read_json_lines(journal).size(), 3000u);
    EXPECT_NE(output.err.find(fmt::format("{} of 3000 tasks done in the journal; running the other {}",
                                          3000 - dropped.size(), dropped.size())),
              std::string::npos)
        << output.err;
}

TEST(LazyStdin, InputsArriveAsTheRunGoes) {
    // The writer sends a second line only after the first line's task has run: a
    // coordinator that read standard input whole before starting would wait forever.
    testing::TempDir dir;
    const std::string marker = (dir / "first.done").string();
    const Output output = shell(fmt::format(
        "(echo first; i=0; while [ ! -e '{0}' ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo second) | "
        "{1} --command 'touch {2}/{{}}.done' --inputs - --mode threads --workers 1 --results '{2}/r.jsonl'",
        marker, coordinator(), dir.path().string()));
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_TRUE(fs::exists(dir / "first.done"));
    EXPECT_TRUE(fs::exists(dir / "second.done"));
    EXPECT_EQ(testing::read_json_lines(dir / "r.jsonl").size(), 2u);
}

TEST(LazyStdin, MoreLinesThanAPipeHoldsRunOnceEachInEveryMode) {
    // 100,000 lines (about 200 KB) do not fit a 64 KiB pipe; two modes read them twice,
    // the second time from the private copy.
    testing::TempDir dir;
    const Output output =
        shell(fmt::format("yes 0 | head -n 100000 | {} --task sleep --inputs - --mode threads,processes "
                          "--workers 2 -q --results '{}' --json '{}' > /dev/null",
                          coordinator(), (dir / "r.jsonl").string(), (dir / "report.json").string()));
    ASSERT_EQ(output.exit_code, 0) << output.err;
    std::map<std::string, IdSet> by_mode;
    std::size_t lines = 0;
    for (const auto& line : testing::read_json_lines(dir / "r.jsonl")) {
        ++lines;
        EXPECT_TRUE(line["ok"].get<bool>());
        EXPECT_TRUE(by_mode[line["mode"].get<std::string>()].insert(line["id"].get<TaskId>())) << line.dump();
    }
    EXPECT_EQ(lines, 200000u);
    EXPECT_EQ(by_mode["threads"].size(), 100000u);
    EXPECT_EQ(by_mode["processes"].size(), 100000u);
    EXPECT_TRUE(by_mode["threads"].contains(99999));
    const auto report = testing::read_json(dir / "report.json");
    EXPECT_EQ(report["config"]["tasks"], 100000);  // known once the first mode reached the end
    for (const auto& run : report["runs"]) {
        EXPECT_EQ(run["tasks"], 100000) << run.dump();
        EXPECT_EQ(run["ok"], 100000) << run.dump();
    }
}

// A list that is not a regular file (a FIFO, bash's `<(...)`) can be read once too: it is
// read as the run goes, like standard input, kept for the second mode, and named in errors.
TEST(LazyStdin, AFifoOrAPipeNamedByPathIsReadOnceAndKeptForTheNextMode) {
    testing::TempDir dir;
    const fs::path fifo = dir / "list";
    // 40,000 lines (80 KB): more than a pipe holds, so the writer waits on the run's reading.
    const Output output =
        shell(fmt::format("mkfifo '{0}' && ((yes 0 | head -n 40000) > '{0}' &) && {1} --task sleep "
                          "--inputs '{0}' --mode threads,processes --workers 2 -q "
                          "--results '{2}' > '{3}'",
                          fifo.string(), coordinator(), (dir / "r.jsonl").string(), (dir / "out").string()));
    ASSERT_EQ(output.exit_code, 0) << output.err;
    std::map<std::string, IdSet> by_mode;
    for (const auto& line : testing::read_json_lines(dir / "r.jsonl")) {
        EXPECT_TRUE(line["ok"].get<bool>()) << line.dump();
        EXPECT_TRUE(by_mode[line["mode"].get<std::string>()].insert(line["id"].get<TaskId>())) << line.dump();
    }
    EXPECT_EQ(by_mode["threads"].size(), 40000u);
    EXPECT_EQ(by_mode["processes"].size(), 40000u);
    EXPECT_NE(testing::read_file(dir / "out").find("== threads: tasks as the list is read"), std::string::npos);
    const Output late =
        run_binary("/bin/bash", {"-c", fmt::format("{} --task sleep --inputs <(printf '0\\nsoon\\n') -q "
                                                   ">/dev/null",
                                                   coordinator())});
    EXPECT_EQ(late.exit_code, 2) << late.err;
    EXPECT_NE(late.err.find(":2: sleep takes a number of seconds per line, not 'soon'"), std::string::npos) << late.err;
    EXPECT_NE(late.err.find("--inputs: /dev/fd/"), std::string::npos) << late.err;
}

TEST(LazyStdin, ABadLineLateInStandardInputEndsTheRunAfterTheTasksBeforeIt) {
    testing::TempDir dir;
    const Output output =
        shell(fmt::format("(yes 0 | head -n 30000; echo soon; yes 0 | head -n 10) | {} --task sleep "
                          "--inputs - --mode threads,sequential --workers 2 -q --results '{}' > '{}'",
                          coordinator(), (dir / "r.jsonl").string(), (dir / "out").string()));
    EXPECT_EQ(output.exit_code, 2) << output.err;
    EXPECT_NE(output.err.find("--inputs: stdin:30001: sleep takes a number of seconds per line, not 'soon'"),
              std::string::npos)
        << output.err;
    // The tasks before it ran, once each, in the first mode only: the run stopped there.
    const auto lines = testing::read_json_lines(dir / "r.jsonl");
    EXPECT_EQ(lines.size(), 30000u);
    for (const auto& line : lines) EXPECT_EQ(line["mode"], "threads");
    const std::string out = testing::read_file(dir / "out");
    EXPECT_NE(out.find("threads            2  30000  30000      0"), std::string::npos) << out.substr(out.size() - 500);
}

TEST(LazyStdin, ResumeReadsItWholeChecksItAndRunsTheRest) {
    testing::TempDir dir;
    const std::string journal = (dir / "j.jsonl").string();
    const std::string run = fmt::format("{} --task sleep --inputs - --mode threads,sequential -q", coordinator());
    ASSERT_EQ(shell(fmt::format("yes 0 | head -n 1000 | {} --results '{}' > /dev/null", run, journal)).exit_code, 0);
    const std::string text = testing::read_file(journal);
    std::size_t cut = 0;
    for (int line = 0; line < 1500; ++line) cut = text.find('\n', cut) + 1;
    write_text(journal, text.substr(0, cut));  // threads all done, sequential half
    const Output resumed = shell(fmt::format("yes 0 | head -n 1000 | {} --resume '{}' > /dev/null", run, journal));
    ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
    std::map<std::string, IdSet> by_mode;
    for (const auto& line : testing::read_json_lines(journal))
        EXPECT_TRUE(by_mode[line["mode"].get<std::string>()].insert(line["id"].get<TaskId>())) << line.dump();
    EXPECT_EQ(by_mode["threads"].size(), 1000u);
    EXPECT_EQ(by_mode["sequential"].size(), 1000u);
    // Another list on stdin is another plan.
    const Output other = shell(fmt::format("yes 1 | head -n 1000 | {} --resume '{}' > /dev/null", run, journal));
    EXPECT_EQ(other.exit_code, 2);
    EXPECT_NE(other.err.find("the journal is from a different plan"), std::string::npos) << other.err;
}

TEST(Memory, TwoMillionNoOpsStayUnderABound) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "AddressSanitizer's shadow memory and quarantine make resident size no measure of the plan";
#endif
    // The eager plan held about 130 bytes a task: 250 MiB here. The lazy one holds the
    // tasks in flight only. The peak comes from getrusage(RUSAGE_CHILDREN) in a small
    // python3 that runs the coordinator (threads mode: no worker processes), not in this
    // process: a child spawned from here with CLONE_VM is charged this process's own peak.
    testing::TempDir dir;
    const Output output =
        shell(fmt::format("python3 -c 'import resource, subprocess, sys; "
                          "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode; "
                          "print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)' "
                          "{} --tasks 2000000 --duration 0 --mode threads --workers 2 -q --json '{}'",
                          coordinator(), (dir / "report.json").string()));
    ASSERT_EQ(output.exit_code, 0) << output.err;
    std::istringstream words(output.out);
    int code = -1;
    long peak_kib = -1;
    words >> code >> peak_kib;
    ASSERT_EQ(code, 0) << output.out << output.err;
    EXPECT_EQ(testing::read_json(dir / "report.json")["runs"][0]["ok"], 2000000);
    EXPECT_GT(peak_kib, 0);
    EXPECT_LT(peak_kib, 64 * 1024) << "peak RSS in KiB";
}

TEST(Memory, TraceSaysWhatItWouldKeepAndRefusesPastItsBound) {
    testing::TempDir dir;
    const Output output = run_binary("coordinator", {"--tasks", "600000", "--duration", "0", "--mode",
                                                     "threads,processes", "--trace", (dir / "t.json").string()});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--trace: would keep every result in memory: 600000 tasks x 2 mode(s), about 2747 MiB; "
                              "it draws at most 250000 results"),
              std::string::npos)
        << output.err;
    EXPECT_FALSE(fs::exists(dir / "t.json"));
}

}  // namespace
}  // namespace taskfarm
