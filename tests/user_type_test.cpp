// A task type defined in this file alone, through the public API only, run in every mode,
// processes included: this test program is its own worker (`user_type_test worker ...`),
// as a user's program is.

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <taskfarm/taskfarm.hpp>

#include "support.hpp"

namespace {

using taskfarm::Context;
using taskfarm::Params;
using taskfarm::Value;

std::string reversed(std::string text) {
    std::reverse(text.begin(), text.end());
    return text;
}

// A type of the user's own making, with its own parameter checks.
class Shout final : public taskfarm::TaskType {
public:
    std::string name() const override { return "shout"; }
    std::string summary() const override { return "upper-cases \"text\""; }
    Params parse(const Params& fields) const override {
        taskfarm::Fields read(fields);
        const auto text = read.text("text");
        if (!text) throw std::invalid_argument("shout needs \"text\"");
        read.finish();
        return Params{{"text", *text}};
    }
    Params from_input(const taskfarm::Input& input) const override { return Params{{"text", std::string(input.line)}}; }
    Value run(const Params& params, Context& context) const override {
        std::string text = params.at("text").get<std::string>();
        for (char& c : text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
        return Value{{"shouted", text}, {"by", context.worker()}, {"mode", context.mode()}};
    }
    std::string describe(const Value& value) const override { return value.at("shouted").get<std::string>(); }
};

// Typed parameters: checked when the plan line is read.
struct Box {
    long width = 0;
    long height = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Box, width, height)

// Values of every JSON type and nesting, for the journal to keep as the function made them.
const std::vector<Value>& mixed_values() {
    static const std::vector<Value> values = [] {
        Value wide = Value::object();  // more keys than the coordinator walks over in place
        for (int key = 0; key < 20; ++key) wide[fmt::format("k{:02}", key)] = key % 2 ? Value(key) : Value(-key);
        return std::vector<Value>{
            Value(),
            Value(true),
            Value(-7),
            Value(std::numeric_limits<std::uint64_t>::max()),
            Value(0.1),
            Value(-2.5e300),
            Value("text \xce\xb4 with \"quotes\" and \\"),
            Value::array({1, "two", Value::array({3.5, Value::array()}), Value::object(), nullptr, false}),
            Value{{"a", {{"b", Value::array({1, 2, {{"c", -1}}})}}},
                  {"empty", Value::object()},
                  {"list", Value::array()}},
            Value{{"slept_s", 0.0}},
            wide,
            Value(std::string(300, 'y')),
        };
    }();
    return values;
}

void register_types(taskfarm::App& made) {
    made.task<Box>("area", [](const Box& box, Context&) { return box.width * box.height; });
    made.task("reverse", [](const Params& params, Context& context) {
        // The settings of the run (--set) reach the function in every mode.
        const std::string suffix = context.settings().value("suffix", std::string());
        return Value{{"reversed", reversed(params.at("input").get<std::string>()) + suffix}};
    });
    made.task("refuse", [](const Params& params, Context&) -> Value {
        throw std::runtime_error("refused " + params.at("input").get<std::string>());
    });
    made.task("scratch", [](const Params&, Context& context) {
        const auto dir = context.scratch_dir();
        std::ofstream(dir / "f") << "x";
        return Value{{"dir", dir.string()}, {"exists", std::filesystem::exists(dir / "f")}};
    });
    made.task("die", [](const Params&, Context& context) -> Value {
        if (context.isolated()) ::raise(SIGKILL);  // only a worker process of its own
        throw std::runtime_error("not in a process of its own");
    });
    // Ends its whole process with exit(3), after making its scratch directory: what a
    // careless function may do.
    made.task("quit", [](const Params&, Context& context) -> Value {
        static_cast<void>(context.scratch_dir());
        std::exit(3);
    });
    // Fails with an error of 40 MB, more than a journal line holds.
    made.task("vast", [](const Params&, Context&) -> Value { throw std::runtime_error(std::string(40'000'000, 'e')); });
    // Its input line is an index into mixed_values(): a value of every JSON type.
    made.task("mixed", [](const Params& params, Context&) {
        return mixed_values().at(std::stoul(params.at("input").get<std::string>()));
    });
    made.add(std::make_shared<Shout>());
    // Keeps 16 MiB more of touched memory at each task, for good: a worker that grows.
    made.task("leak", [](const Params&, Context&) {
        static std::vector<std::vector<char>> kept;
        kept.emplace_back(std::size_t{16} << 20, 'x');
        return Value{{"kept_mib", 16 * kept.size()}};
    });
    // Notes its input in the file the setting "started" names, then takes 0.3 s, stopping early on a stop.
    made.task("nap", [](const Params& params, Context& context) -> Value {
        std::ofstream(context.settings().at("started").get<std::string>(), std::ios::app)
            << params.at("input").get<std::string>() << "\n"
            << std::flush;
        for (int slice = 0; slice < 30; ++slice) {
            context.check();
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        return Value{{"napped", true}};
    });
    // Fails until its attempt reaches the number it is given.
    made.task("flaky", [](const Params& params, Context& context) -> Value {
        const unsigned want = std::stoul(params.at("input").get<std::string>());
        if (context.attempt() < want)
            throw std::runtime_error(fmt::format("attempt {} of {}", context.attempt(), want));
        return Value{{"attempt", context.attempt()}};
    });
    // Repeats its input --times N times, joined with --joiner: a type with flags of its own.
    taskfarm::TaskOptions repeat{.summary = "repeats each input line --times times"};
    repeat.flags.push_back(taskfarm::Flag{.name = "--times",
                                          .key = "times",
                                          .type = taskfarm::Flag::Type::Count,
                                          .default_value = "2",
                                          .help = "how many times each line is repeated",
                                          .least = 1,
                                          .most = 100});
    repeat.flags.push_back(
        taskfarm::Flag{.name = "--joiner", .key = "joiner", .default_value = "-", .help = "between"});
    made.task(
        "repeat",
        [](const Params& params, Context& context) {
            const auto times = context.settings().at("times").get<std::uint64_t>();
            const auto joiner = context.settings().at("joiner").get<std::string>();
            std::string text = params.at("input").get<std::string>();
            for (std::uint64_t i = 1; i < times; ++i) text += joiner + params.at("input").get<std::string>();
            return Value{{"repeated", text}};
        },
        repeat);
    // Save their input into a file of that name in Context::out_dir(): one names the directory
    // --out-dir defaults to, the other names none.
    const auto save = [](const Params& params, Context& context) {
        const std::filesystem::path file = context.out_dir() / params.at("input").get<std::string>();
        std::ofstream(file) << "saved";
        return Value{{"path", file.string()}};
    };
    made.task("keep", save, {.summary = "saves its input", .writes_files = true, .out_dir = "kept"});
    made.task("drop", save, {.summary = "saves its input too", .writes_files = true});
    // A value of 40,000 bytes, or of 5 MB for the input "huge": more than a frame may hold.
    made.task("bulky", [](const Params& params, Context&) {
        return Value{{"text", std::string(params.at("input") == "huge" ? 5'000'000 : 40'000, 'x')}};
    });
}

taskfarm::App& app() {
    static taskfarm::App app{"user_type_test"};
    static const bool registered = (register_types(app), true);
    static_cast<void>(registered);
    return app;
}

// Runs this program as a coordinator with `args` and its output captured.
taskfarm::testing::Output coordinator(const std::vector<std::string>& args) {
    return taskfarm::testing::run_binary(std::filesystem::read_symlink("/proc/self/exe").string(), args);
}

std::filesystem::path write_lines(const taskfarm::testing::TempDir& dir, const std::string& name,
                                  const std::vector<std::string>& lines) {
    std::ofstream out(dir / name);
    for (const std::string& line : lines) out << line << "\n";
    return dir / name;
}

// Decision 282: a type's default params are built in place; what they hold is as before.
TEST(UserType, TheDefaultParamsAreTheTasksIndexOrItsInputLine) {
    struct Bare final : taskfarm::TaskType {
        std::string name() const override { return "bare"; }
        Value run(const Params&, Context&) const override { return nullptr; }
    };
    const Bare bare;
    std::mt19937_64 random(1);
    const taskfarm::Json settings = taskfarm::Json::object();
    taskfarm::Generate generate{.index = 41, .count = 100, .random = random, .settings = settings};
    const Params made = bare.generate(generate);
    EXPECT_EQ(made, (Params{{"index", 41}}));
    EXPECT_TRUE(made.at("index").is_number_unsigned());
    const Params read = bare.from_input(taskfarm::Input{.line = "two words", .index = 3, .settings = settings});
    EXPECT_EQ(read, (Params{{"input", "two words"}}));
}

TEST(UserType, RunsInEveryModeWithItsValueInTheJournalExactlyOnce) {
    taskfarm::testing::TempDir dir;
    const std::vector<std::string> words{"alpha", "beta gamma", "δέλτα", "$(rm -rf ~)", "x"};
    const auto inputs = write_lines(dir, "words.txt", words);
    const auto journal = dir / "journal.jsonl";
    const auto output = coordinator({"--task", "reverse", "--inputs", inputs.string(), "--mode", "all", "--workers",
                                     "2", "--set", "suffix=!", "--results", journal.string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    std::map<std::string, std::set<std::uint64_t>> seen;
    for (const auto& line : taskfarm::testing::read_json_lines(journal)) {
        if (line.contains("event")) continue;  // the settings (--set suffix) that --resume checks
        const auto id = line.at("id").get<std::uint64_t>();
        const std::string mode = line.at("mode");
        EXPECT_TRUE(seen[mode].insert(id).second) << "task " << id << " twice in " << mode;
        EXPECT_EQ(line.at("kind"), "reverse");
        EXPECT_EQ(line.at("params"), (taskfarm::Json{{"input", words.at(id)}}));
        if (id == 2)  // reversed byte by byte, δέλτα is no longer UTF-8: the journal keeps the line, with U+FFFD
            EXPECT_NE(line.at("value").at("reversed").get<std::string>().find("\xEF\xBF\xBD"), std::string::npos);
        else
            EXPECT_EQ(line.at("value"), (taskfarm::Json{{"reversed", reversed(words.at(id)) + "!"}})) << mode;
    }
    for (const char* mode : {"sequential", "threads", "gil-threads", "processes"})
        EXPECT_EQ(seen[mode], (std::set<std::uint64_t>{0, 1, 2, 3, 4})) << mode;
}

TEST(UserType, AUserClassChecksItsPlanLinesAndRunsInWorkers) {
    taskfarm::testing::TempDir dir;
    const auto plan =
        write_lines(dir, "plan.jsonl", {R"({"kind":"shout","text":"hi"})", R"({"kind":"reverse","input":"ab"})"});
    const auto json = dir / "report.json";
    const auto output = coordinator({"--plan", plan.string(), "--mode", "processes", "--workers", "1"});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_NE(output.out.find(": HI\n"), std::string::npos) << output.out;                // Shout::describe
    EXPECT_NE(output.out.find(R"({"reversed":"ba"})"), std::string::npos) << output.out;  // the default: JSON

    const auto bad = write_lines(dir, "bad.jsonl", {R"({"kind":"shout","txt":"hi"})"});
    const auto refused = coordinator({"--plan", bad.string()});
    EXPECT_EQ(refused.exit_code, 2);
    EXPECT_NE(refused.err.find(bad.string() + ":1: shout needs \"text\""), std::string::npos) << refused.err;
}

TEST(UserType, AnExceptionIsAFailedTaskWithItsMessageInEveryMode) {
    taskfarm::testing::TempDir dir;
    const auto inputs = write_lines(dir, "in.txt", {"one"});
    const auto journal = dir / "journal.jsonl";
    const auto output = coordinator({"--task", "refuse", "--inputs", inputs.string(), "--mode", "all", "--workers", "1",
                                     "--results", journal.string()});
    EXPECT_EQ(output.exit_code, 1);
    const auto lines = taskfarm::testing::read_json_lines(journal);
    ASSERT_EQ(lines.size(), 4u);
    for (const auto& line : lines) {
        EXPECT_FALSE(line.at("ok").get<bool>());
        EXPECT_EQ(line.at("error"), "refused one");
        EXPECT_TRUE(line.at("value").is_null());
    }
}

TEST(UserType, ACrashCostsOnlyItsWorkerAndTheTaskIsTriedAgainThenFails) {
    taskfarm::testing::TempDir dir;
    const auto inputs = write_lines(dir, "in.txt", {"one"});
    const auto journal = dir / "journal.jsonl";
    const auto output = coordinator({"--task", "die", "--inputs", inputs.string(), "--mode", "processes", "--workers",
                                     "2", "--max-attempts", "2", "--results", journal.string()});
    EXPECT_EQ(output.exit_code, 1) << output.err;
    const auto lines = taskfarm::testing::read_result_lines(journal);
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0].at("attempt"), 2);
    EXPECT_TRUE(lines[0].at("error").get<std::string>().starts_with("gave up after 2 attempts")) << lines[0].dump();

    // The program's own `report` subcommand tells the story: App::run() is the coordinator.
    const auto story = coordinator({"report", journal.string(), "--task", "0", "--json"});
    ASSERT_EQ(story.exit_code, 0) << story.err;
    const auto report = taskfarm::Json::parse(story.out);
    const auto& steps = report.at("task").at("modes").at(0).at("story");
    ASSERT_EQ(steps.size(), 2u) << story.out;  // attempt 1 lost with its worker, attempt 2 the final result
    EXPECT_EQ(steps[0].at("what"), "requeue");
    EXPECT_EQ(steps[0].at("attempt"), 1);
    EXPECT_TRUE(steps[0].at("reason").get<std::string>().starts_with("worker w")) << story.out;  // died or disconnected
    EXPECT_EQ(steps[1].at("what"), "result");
    EXPECT_EQ(steps[1].at("attempt"), 2);
    EXPECT_EQ(report.at("task").at("modes").at(0).at("resume_would_run"), true);
}

TEST(UserType, LargeValuesReachTheCoordinatorAndOneTooLargeFailsItsTaskAlone) {
    // 300 quick tasks with 40,000-byte values: a worker's batch of their results can pass the
    // 4 MiB a frame may hold, so it is cut; a 5 MB value can never travel, so its task fails.
    taskfarm::testing::TempDir dir;
    std::vector<std::string> inputs(300, "large");
    inputs[150] = "huge";
    const auto file = write_lines(dir, "in.txt", inputs);
    for (const char* prefetch : {"1", "8", "auto"}) {
        SCOPED_TRACE(prefetch);
        const auto journal = dir / (std::string("journal-") + prefetch + ".jsonl");
        const auto output = coordinator({"--task", "bulky", "--inputs", file.string(), "--mode", "processes",
                                         "--workers", "2", "--prefetch", prefetch, "--results", journal.string()});
        EXPECT_EQ(output.exit_code, 1) << output.err.substr(0, 2000);
        EXPECT_EQ(output.err.find("requeueing"), std::string::npos) << "a worker was lost";
        std::set<std::uint64_t> seen;
        for (const auto& line : taskfarm::testing::read_json_lines(journal)) {
            const auto id = line.at("id").get<std::uint64_t>();
            EXPECT_TRUE(seen.insert(id).second) << "task " << id << " twice";
            EXPECT_EQ(line.at("attempt"), 1) << id;
            if (id != 150) {
                EXPECT_TRUE(line.at("ok").get<bool>()) << id;
                continue;
            }
            EXPECT_FALSE(line.at("ok").get<bool>());
            EXPECT_TRUE(line.at("error").get<std::string>().starts_with("its result takes ")) << line.at("error");
        }
        EXPECT_EQ(seen.size(), 300u);
    }
}

TEST(UserType, AScratchDirectoryIsTheTasksOwnAndGoneAfterIt) {
    taskfarm::testing::TempDir dir;
    const auto journal = dir / "journal.jsonl";
    const auto output = coordinator({"--task", "scratch", "--tasks", "3", "--mode", "threads,processes", "--workers",
                                     "2", "--results", journal.string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    std::set<std::string> dirs;
    for (const auto& line : taskfarm::testing::read_json_lines(journal)) {
        EXPECT_TRUE(line.at("value").at("exists").get<bool>());
        const std::string scratch = line.at("value").at("dir");
        EXPECT_FALSE(std::filesystem::exists(scratch)) << scratch;
        dirs.insert(scratch);
    }
    EXPECT_EQ(dirs.size(), 6u);  // one per task and mode
}

// Runs this program as a coordinator in the working directory `cwd`.
taskfarm::testing::Output coordinator_in(const std::filesystem::path& cwd, std::vector<std::string> args) {
    args.insert(args.begin(), {"-c", "cd \"$1\" && shift && exec \"$@\"", "sh", cwd.string(),
                               std::filesystem::read_symlink("/proc/self/exe").string()});
    return taskfarm::testing::run_binary("/bin/sh", args);
}

// --out-dir's default is the directory the plan's type names (TaskTraits::out_dir), else the
// working directory: never the built-in download's, which this program has but the plan does not use.
TEST(UserType, FilesGoWhereThePlansTypeSaysWithoutOutDir) {
    taskfarm::testing::TempDir dir;
    const auto inputs = write_lines(dir, "names.txt", {"a", "b"});
    for (const char* type : {"keep", "drop"}) {
        const std::filesystem::path cwd = dir / type;
        std::filesystem::create_directory(cwd);
        const auto output = coordinator_in(
            cwd, {"--task", type, "--inputs", inputs.string(), "--mode", "threads,processes", "--workers", "2"});
        ASSERT_EQ(output.exit_code, 0) << output.err;
        const std::filesystem::path saved = std::string(type) == "keep" ? cwd / "kept" : cwd;
        for (const char* mode : {"threads", "processes"})
            for (const char* name : {"a", "b"})
                EXPECT_EQ(taskfarm::testing::read_file(saved / mode / name), "saved") << type << " " << mode;
        EXPECT_FALSE(std::filesystem::exists(cwd / "downloads")) << type;
    }
    const auto given = coordinator_in(dir.path(), {"--task", "keep", "--inputs", inputs.string(), "--mode", "processes",
                                                   "--out-dir", (dir / "mine").string()});
    ASSERT_EQ(given.exit_code, 0) << given.err;
    EXPECT_EQ(taskfarm::testing::read_file(dir / "mine" / "processes" / "a"), "saved");
    EXPECT_FALSE(std::filesystem::exists(dir / "kept"));
    // --help says which directory each type names.
    const auto help = coordinator({"--help"});
    EXPECT_NE(help.out.find("keep: saves its input (--out-dir default: kept)"), std::string::npos) << help.out;
    EXPECT_NE(help.out.find("drop: saves its input too\n"), std::string::npos) << help.out;
}

TEST(UserType, HelpAndVersionNameTheProgramAndItsTypes) {
    const auto help = coordinator({"--help"});
    EXPECT_EQ(help.exit_code, 0);
    EXPECT_NE(help.out.find("user_type_test: runs one plan"), std::string::npos) << help.out;
    EXPECT_NE(help.out.find("shout: upper-cases \"text\""), std::string::npos) << help.out;
    EXPECT_NE(help.out.find("reverse"), std::string::npos);
    const auto version = coordinator({"--version"});
    EXPECT_EQ(version.exit_code, 0);
    EXPECT_EQ(version.out, std::string("user_type_test (taskfarm ") + taskfarm::version() + ")\n");
    const auto worker_help = coordinator({"worker", "--help"});
    EXPECT_EQ(worker_help.exit_code, 0);
    EXPECT_NE(worker_help.out.find("user_type_test worker: runs the tasks"), std::string::npos) << worker_help.out;
}

TEST(UserType, ATypesFlagsAreInHelpUnderTheTypeAndReachItsTasksInEveryMode) {
    const auto help = coordinator({"--help"});
    ASSERT_EQ(help.exit_code, 0) << help.err;
    const auto group = help.out.find("repeat task type");
    ASSERT_NE(group, std::string::npos) << help.out;
    const auto times = help.out.find("--times", group);
    ASSERT_NE(times, std::string::npos) << help.out;
    EXPECT_NE(help.out.find("how many times each line is repeated", times), std::string::npos) << help.out;
    EXPECT_NE(help.out.find("--joiner", group), std::string::npos) << help.out;
    // The built-ins' flags come the same way, each under its own type.
    EXPECT_NE(help.out.find("--duration", help.out.find("sleep task type")), std::string::npos) << help.out;
    EXPECT_NE(help.out.find("--cpu-n", help.out.find("cpu task type")), std::string::npos) << help.out;

    taskfarm::testing::TempDir dir;
    const auto inputs = write_lines(dir, "in.txt", {"ab", "c"});
    const auto journal = dir / "journal.jsonl";
    const auto output = coordinator({"--task", "repeat", "--inputs", inputs.string(), "--times", "3", "--joiner", "+",
                                     "--mode", "all", "--workers", "2", "--results", journal.string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const std::vector<std::string> want{"ab+ab+ab", "c+c+c"};
    auto lines = taskfarm::testing::read_json_lines(journal);
    ASSERT_FALSE(lines.empty());
    // First, what --resume checks: the flags that change results.
    EXPECT_EQ(
        lines.front(),
        (taskfarm::Json{{"event", "settings"}, {"mode", "sequential"}, {"settings", {{"times", 3}, {"joiner", "+"}}}}));
    lines.erase(lines.begin());
    ASSERT_EQ(lines.size(), 8u);
    for (const auto& line : lines)
        EXPECT_EQ(line.at("value").at("repeated"), want.at(line.at("id").get<std::size_t>())) << line.dump();

    // Not given: the declared defaults.
    const auto defaults = coordinator({"--task", "repeat", "--inputs", inputs.string(), "--mode", "threads"});
    ASSERT_EQ(defaults.exit_code, 0) << defaults.err;
    EXPECT_NE(defaults.out.find(R"({"repeated":"ab-ab"})"), std::string::npos) << defaults.out;
}

TEST(UserType, ABadValueOfATypesFlagExitsTwoNamingTheFlag) {
    taskfarm::testing::TempDir dir;
    const auto inputs = write_lines(dir, "in.txt", {"ab"});
    for (const std::string bad : {"0", "101", "x", "-1", "2.5"}) {
        const auto output = coordinator({"--task", "repeat", "--inputs", inputs.string(), "--times", bad});
        EXPECT_EQ(output.exit_code, 2) << bad;
        EXPECT_NE(output.err.find("--times"), std::string::npos) << output.err;
        EXPECT_NE(output.err.find("'" + bad + "'"), std::string::npos) << output.err;
    }
    // Its setting is the flag's: --set may not replace it.
    const auto set = coordinator({"--task", "repeat", "--inputs", inputs.string(), "--set", "times=4"});
    EXPECT_EQ(set.exit_code, 2);
    EXPECT_NE(set.err.find("give --times instead"), std::string::npos) << set.err;
}

TEST(UserType, AProgramsOwnTypeRunsOnceInProcessesUnlessModeAsksForMore) {
    taskfarm::testing::TempDir dir;
    const auto inputs = write_lines(dir, "in.txt", {"ab", "c"});
    const auto journal = dir / "journal.jsonl";
    const auto output = coordinator(
        {"--task", "reverse", "--inputs", inputs.string(), "--workers", "2", "--results", journal.string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    std::multiset<std::uint64_t> ids;
    for (const auto& line : taskfarm::testing::read_json_lines(journal)) {
        if (line.contains("event")) continue;
        EXPECT_EQ(line.at("mode"), "processes") << line.dump();
        ids.insert(line.at("id").get<std::uint64_t>());
    }
    EXPECT_EQ(ids, (std::multiset<std::uint64_t>{0, 1})) << "each task once";
    // The built-in demo keeps its comparison of the modes.
    const auto demo = coordinator({"--task", "sleep", "--duration", "0", "--tasks", "2", "--workers", "1"});
    ASSERT_EQ(demo.exit_code, 0) << demo.err;
    for (const char* mode : {"sequential", "threads", "processes"})
        EXPECT_NE(demo.out.find(mode), std::string::npos) << demo.out;
}

TEST(UserType, ResumeRefusesOtherValuesOfSettingsThatChangeResults) {
    taskfarm::testing::TempDir dir;
    const auto inputs = write_lines(dir, "in.txt", {"ab", "c"});
    const auto journal = dir / "journal.jsonl";
    const std::vector<std::string> run{"--task", "repeat", "--inputs", inputs.string(), "--mode", "threads"};
    const auto with = [&](std::vector<std::string> more) {
        std::vector<std::string> args = run;
        args.insert(args.end(), more.begin(), more.end());
        return coordinator(args);
    };
    ASSERT_EQ(with({"--times", "3", "--set", "chunk=200000", "--results", journal.string()}).exit_code, 0);
    const auto other_set = with({"--times", "3", "--set", "chunk=100000", "--resume", journal.string()});
    EXPECT_EQ(other_set.exit_code, 2) << other_set.err;
    EXPECT_NE(other_set.err.find("--set chunk is 100000 now"), std::string::npos) << other_set.err;
    EXPECT_NE(other_set.err.find("200000"), std::string::npos) << other_set.err;
    const auto other_flag = with({"--times", "4", "--set", "chunk=200000", "--resume", journal.string()});
    EXPECT_EQ(other_flag.exit_code, 2) << other_flag.err;
    EXPECT_NE(other_flag.err.find("--times is 4 now"), std::string::npos) << other_flag.err;
    const auto dropped = with({"--times", "3", "--resume", journal.string()});
    EXPECT_EQ(dropped.exit_code, 2) << dropped.err;
    EXPECT_NE(dropped.err.find("--set chunk is not given now"), std::string::npos) << dropped.err;
    const auto same = with({"--times", "3", "--set", "chunk=200000", "--resume", journal.string()});
    EXPECT_EQ(same.exit_code, 0) << same.err;
    EXPECT_NE(same.err.find("nothing to do"), std::string::npos) << same.err;
}

TEST(UserType, ATypedParameterThatIsBadFailsWhenThePlanIsReadNamingFileLineAndField) {
    taskfarm::testing::TempDir dir;
    const auto plan = write_lines(
        dir, "plan.jsonl", {R"({"kind":"area","width":2,"height":3})", R"({"kind":"area","width":2,"height":"x"})"});
    const auto journal = dir / "journal.jsonl";
    const auto refused = coordinator({"--plan", plan.string(), "--mode", "all", "--results", journal.string()});
    EXPECT_EQ(refused.exit_code, 2) << refused.err;
    EXPECT_NE(refused.err.find(plan.string() + ":2: field \"height\": type must be number"), std::string::npos)
        << refused.err;
    EXPECT_EQ(taskfarm::testing::read_json_lines(journal).size(), 0u) << "a task ran before the bad line was found";
    const auto good = write_lines(dir, "good.jsonl", {R"({"kind":"area","width":2,"height":3})"});
    const auto ran = coordinator({"--plan", good.string(), "--workers", "1", "--results", journal.string()});
    ASSERT_EQ(ran.exit_code, 0) << ran.err;
    const auto lines = taskfarm::testing::read_json_lines(journal);
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines.front().at("value"), 6);
    EXPECT_EQ(lines.front().at("params"), (taskfarm::Json{{"width", 2}, {"height", 3}}));
}

TEST(UserType, ANameThatIsTakenOrNotANameIsRefused) {
    taskfarm::App local{"local"};
    EXPECT_THROW(local.task("sleep", [](const Params&, Context&) { return Value(); }), std::invalid_argument);
    EXPECT_THROW(local.task("two words", [](const Params&, Context&) { return Value(); }), std::invalid_argument);
    EXPECT_THROW(local.task("", [](const Params&, Context&) { return Value(); }), std::invalid_argument);
    EXPECT_NO_THROW(local.task("fine_name-2", [](const Params&, Context&) { return Value(); }));
}

}  // namespace

int main(int argc, char** argv) {
    // The coordinator's side of the tests runs this same program; so do its workers.
    if (argc > 1 && std::strcmp(argv[1], "--gtest_list_tests") != 0 && !std::string(argv[1]).starts_with("--gtest"))
        return app().run(argc, argv);
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}

TEST(UserType, AWorkerThatLeaksIsRecycledByMaxWorkerMemoryAndNoTaskFails) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "resident memory under AddressSanitizer is not the program's own";
#endif
    taskfarm::testing::TempDir dir;
    const auto journal = dir / "journal.jsonl";
    const auto json = dir / "report.json";
    // 16 MiB a task against 96 MiB: a worker is recycled every few tasks.
    const auto output = coordinator({"--task", "leak", "--tasks", "16", "--mode", "processes", "--workers", "1",
                                     "--max-worker-memory", "96M", "--max-respawns", "0", "--prefetch", "1",
                                     "--results", journal.string(), "--json", json.string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const auto lines = taskfarm::testing::read_json_lines(journal);
    ASSERT_EQ(lines.size(), 16u);
    for (const auto& line : lines) {
        EXPECT_TRUE(line.at("ok").get<bool>()) << line.dump();
        EXPECT_EQ(line.at("attempt"), 1) << line.dump();
        EXPECT_LE(line.at("value").at("kept_mib").get<int>(), 96) << "a worker went on past the limit";
    }
    const auto run = taskfarm::testing::read_json(json).at("runs").at(0);
    EXPECT_GE(run.at("recycled").get<int>(), 2) << output.err;
    EXPECT_NE(output.err.find("over --max-worker-memory 96.0 MiB"), std::string::npos) << output.err;
}

TEST(UserType, AFailedFunctionRunsAgainWithRetriesInEveryMode) {
    taskfarm::testing::TempDir dir;
    const auto inputs = write_lines(dir, "in.txt", {"1", "3", "5"});
    const auto journal = dir / "journal.jsonl";
    const auto output = coordinator({"--task", "flaky", "--inputs", inputs.string(), "--mode", "all", "--workers", "2",
                                     "--retries", "2", "--results", journal.string()});
    EXPECT_EQ(output.exit_code, 1) << output.err;
    std::map<std::string, std::map<std::uint64_t, std::vector<int>>> attempts;  // mode -> id -> attempts
    std::map<std::string, std::map<std::uint64_t, bool>> final_ok;
    for (const auto& line : taskfarm::testing::read_json_lines(journal)) {
        const auto id = line.at("id").get<std::uint64_t>();
        attempts[line.at("mode")][id].push_back(line.at("attempt").get<int>());
        if (!line.contains("retrying")) final_ok[line.at("mode")][id] = line.at("ok").get<bool>();
    }
    for (const char* mode : {"sequential", "threads", "gil-threads", "processes"}) {
        SCOPED_TRACE(mode);
        EXPECT_EQ(attempts[mode][0], std::vector<int>{1});
        EXPECT_EQ(attempts[mode][1], (std::vector<int>{1, 2, 3}));
        EXPECT_EQ(attempts[mode][2], (std::vector<int>{1, 2, 3}));
        EXPECT_EQ(final_ok[mode], (std::map<std::uint64_t, bool>{{0, true}, {1, true}, {2, false}}));
    }
}

TEST(UserType, SigtermLetsRunningFunctionsFinishAndResumeRunsExactlyTheRest) {
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    for (const std::string mode : {"sequential", "threads", "processes"}) {
        SCOPED_TRACE(mode);
        taskfarm::testing::TempDir dir;
        std::vector<std::string> inputs;
        for (int i = 0; i < 20; ++i) inputs.push_back(std::to_string(i));
        const auto file = write_lines(dir, "in.txt", inputs);
        const auto started = dir / "started";
        const auto journal = dir / "journal.jsonl";
        const std::vector<std::string> args{
            "--task", "nap",       "--inputs", file.string(), "--mode",
            mode,     "--workers", "2",        "--set",       "started=" + started.string()};
        std::vector<std::string> first = args;
        first.insert(first.end(), {"--results", journal.string()});
        taskfarm::testing::Running run(self, first);
        const auto started_count = [&] {
            std::ifstream in(started);
            return std::count(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>(), '\n');
        };
        ASSERT_TRUE(taskfarm::testing::eventually([&] { return started_count() >= 3; }, std::chrono::seconds(30)))
            << run.err();
        run.signal(SIGTERM);
        const auto drained = run.wait(std::chrono::seconds(60));
        EXPECT_EQ(drained.exit_code, 143) << drained.err;
        std::set<std::uint64_t> ok;
        for (const auto& line : taskfarm::testing::read_json_lines(journal)) {
            if (line.contains("event")) continue;  // the settings (--set started) that --resume checks
            EXPECT_TRUE(line.at("ok").get<bool>()) << "a drained task did not finish: " << line.dump();
            EXPECT_TRUE(ok.insert(line.at("id").get<std::uint64_t>()).second) << line.dump();
        }
        EXPECT_EQ(static_cast<long>(ok.size()), started_count()) << "every task that started finished, and no other";
        std::vector<std::string> second = args;
        second.insert(second.end(), {"--resume", journal.string()});
        EXPECT_EQ(coordinator(second).exit_code, 0);
        std::map<std::uint64_t, int> all;
        for (const auto& line : taskfarm::testing::read_json_lines(journal))
            if (!line.contains("event") && line.at("ok").get<bool>()) ++all[line.at("id").get<std::uint64_t>()];
        EXPECT_EQ(all.size(), 20u);
        for (const auto& [id, count] : all) EXPECT_EQ(count, 1) << "task " << id;
        EXPECT_EQ(started_count(), 20) << "a task ran twice";
    }
}

// A function that calls exit(): the process ends with its status, says why, and leaves no
// temporary directory (the control directory, the function's scratch directory).
TEST(UserType, ExitInAFunctionIsSaidAndLeavesNoTemporaryDirectory) {
    taskfarm::testing::TempDir dir;
    const auto inputs = write_lines(dir, "one.txt", {"x"});
    const char* old = std::getenv("TMPDIR");
    const std::string kept = old ? old : "";
    ::setenv("TMPDIR", dir.path().c_str(), 1);
#if defined(__SANITIZE_ADDRESS__)
    // exit() in the middle of a task leaves the run's memory allocated, by design: LeakSanitizer
    // would turn the status into an abort.
    const char* asan = std::getenv("ASAN_OPTIONS");
    const std::string asan_kept = asan ? asan : "";
    ::setenv("ASAN_OPTIONS", (asan_kept + ":detect_leaks=0").c_str(), 1);
#endif
    const auto output = coordinator({"--task", "quit", "--inputs", inputs.string(), "--mode", "threads"});
#if defined(__SANITIZE_ADDRESS__)
    ::setenv("ASAN_OPTIONS", asan_kept.c_str(), 1);
#endif
    if (old)
        ::setenv("TMPDIR", kept.c_str(), 1);
    else
        ::unsetenv("TMPDIR");
    EXPECT_EQ(output.exit_code, 3) << output.err;
    EXPECT_NE(output.err.find("task 0 called exit() from its function"), std::string::npos) << output.err;
    for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
        const std::string name = entry.path().filename().string();
        EXPECT_TRUE(!name.starts_with("taskfarm-") || name.starts_with("taskfarm-test-")) << name << " was left";
    }
}

// A result too large for a journal line is shortened by the writer, so that every reader,
// bounded at kMaxJournalLineBytes, still reads the journal.
TEST(UserType, AResultOverTheJournalLineLimitIsCutAndTheJournalStillReads) {
    taskfarm::testing::TempDir dir;
    const auto inputs = write_lines(dir, "one.txt", {"x"});
    const auto journal = dir / "j.jsonl";
    const auto output = coordinator(
        {"--task", "vast", "--inputs", inputs.string(), "--mode", "threads", "--results", journal.string()});
    EXPECT_EQ(output.exit_code, 1) << output.err.substr(0, 2000);
    const std::string text = taskfarm::testing::read_file(journal);
    EXPECT_LE(text.size(), (std::size_t{32} << 20) + 1);
    const auto lines = taskfarm::testing::read_json_lines(journal);
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_TRUE(lines[0].contains("cut")) << text.substr(0, 300);
    EXPECT_FALSE(lines[0].at("ok").get<bool>());
    const auto report = coordinator({"report", journal.string()});
    EXPECT_EQ(report.exit_code, 0) << report.err.substr(0, 2000);
    const auto resumed =
        coordinator({"--task", "vast", "--inputs", inputs.string(), "--mode", "threads", "--resume", journal.string()});
    EXPECT_EQ(resumed.exit_code, 1) << resumed.err.substr(0, 2000);
    EXPECT_EQ(resumed.err.find("not a journal line"), std::string::npos);
    EXPECT_EQ(taskfarm::testing::read_json_lines(journal).size(), 2u);
}

// A processes-mode coordinator decodes its workers' values only for a sink that reads them
// (decision 250): with the console's lines going to /dev/null the journal still reads them, and
// writes each value byte for byte as with a console that prints them. (In processes mode a
// whole double travels as an integer, as msgpack-c packs it: 0.0 is written 0 there.)
TEST(UserType, TheJournalKeepsEveryTypeOfValueWhetherOrNotTheConsoleReadsThem) {
    taskfarm::testing::TempDir dir;
    std::vector<std::string> lines;
    for (std::size_t index = 0; index < mixed_values().size(); ++index) lines.push_back(std::to_string(index));
    const auto inputs = write_lines(dir, "indices.txt", lines);
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    // Each value as the journal wrote it, by mode, then id.
    const auto values = [](const std::filesystem::path& journal) {
        std::map<std::string, std::map<std::uint64_t, std::string>> found;
        for (const auto& line : taskfarm::testing::read_json_lines(journal)) {
            if (line.contains("event")) continue;
            EXPECT_TRUE(line.at("ok").get<bool>()) << line.dump();
            const auto id = line.at("id").get<std::uint64_t>();
            EXPECT_EQ(line.at("value"), mixed_values().at(id)) << line.dump();  // numbers compare by value
            found[line.at("mode")][id] = line.at("value").dump();
        }
        return found;
    };
    const auto quiet_journal = dir / "quiet.jsonl";
    const auto quiet = taskfarm::testing::run_binary(
        "/bin/sh", {"-c", fmt::format("exec '{}' --task mixed --inputs '{}' --mode threads,processes --workers 2 "
                                      "--progress never --results '{}' >/dev/null",
                                      self, inputs.string(), quiet_journal.string())});
    ASSERT_EQ(quiet.exit_code, 0) << quiet.err;
    const auto printed_journal = dir / "printed.jsonl";
    const auto printed = coordinator({"--task", "mixed", "--inputs", inputs.string(), "--mode", "threads,processes",
                                      "--workers", "2", "--progress", "never", "--results", printed_journal.string()});
    ASSERT_EQ(printed.exit_code, 0) << printed.err;
    EXPECT_NE(printed.out.find("-2.5e+300"), std::string::npos) << printed.out;  // the console described them
    auto quiet_values = values(quiet_journal);
    auto printed_values = values(printed_journal);
    for (const char* mode : {"threads", "processes"}) {
        EXPECT_EQ(quiet_values[mode].size(), mixed_values().size()) << mode;
        EXPECT_EQ(quiet_values[mode], printed_values[mode]) << mode;
    }
}
