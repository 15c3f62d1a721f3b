#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <optional>

#include <gtest/gtest.h>

#include "affinity.hpp"
#include "builtin.hpp"
#include "cli.hpp"
#include "plan_sources.hpp"
#include "task.hpp"
#include "support.hpp"

namespace taskfarm {
namespace {

struct Parsed {
    ParsedCli result;
    std::string err;
};

Parsed parse(std::vector<std::string> args) {
    args.insert(args.begin(), "coordinator");
    std::vector<const char*> argv;
    for (const std::string& arg : args) argv.push_back(arg.c_str());
    ::testing::internal::CaptureStderr();
    ::testing::internal::CaptureStdout();
    auto result = parse_cli(testing::stock_program(), static_cast<int>(argv.size()), argv.data());
    ::testing::internal::GetCapturedStdout();
    return {std::move(result), ::testing::internal::GetCapturedStderr()};
}

// Parses `args` as the program `info`: the result and what it printed (stdout, then stderr).
std::pair<ParsedCli, std::string> run_program(const ProgramInfo& info, std::vector<std::string> args) {
    args.insert(args.begin(), info.name);
    std::vector<const char*> argv;
    for (const std::string& arg : args) argv.push_back(arg.c_str());
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    auto result = parse_cli(info, static_cast<int>(argv.size()), argv.data());
    const std::string out = ::testing::internal::GetCapturedStdout();
    return {std::move(result), out + ::testing::internal::GetCapturedStderr()};
}

TEST(Cli, DefaultsRunTenOneSecondSleepsInEveryMode) {
    const auto parsed = parse({});
    const auto& config = std::get<RunConfig>(parsed.result);
    EXPECT_EQ(config.task, "sleep");
    EXPECT_EQ(config.tasks, 10);
    EXPECT_EQ(config.settings.at("duration_s"), Json::array({1.0, 1.0}));  // sleep's --duration default
    EXPECT_EQ(config.workers, available_cpus());
    EXPECT_EQ(config.modes, (std::vector<Mode>{Mode::Sequential, Mode::Threads, Mode::Processes}));
}

TEST(Cli, ReadsEveryValue) {
    const auto parsed =
        parse({"--workers", "8", "--task", "sleep", "--tasks", "15", "--duration", "1:10", "--seed", "9", "--mode",
               "threads,processes", "--prefetch", "4", "--json", "r.json", "--results", "r.jsonl"});
    const auto& config = std::get<RunConfig>(parsed.result);
    EXPECT_EQ(config.workers, 8);
    EXPECT_EQ(config.tasks, 15);
    EXPECT_EQ(config.settings.at("duration_s"), Json::array({1.0, 10.0}));
    EXPECT_EQ(config.seed, 9u);
    EXPECT_EQ(config.modes, (std::vector<Mode>{Mode::Threads, Mode::Processes}));
    EXPECT_EQ(config.prefetch, 4);
    EXPECT_EQ(config.json_path, "r.json");
    EXPECT_EQ(config.results_path, "r.jsonl");
}

TEST(Cli, AllMeansEveryModeGilThreadsIncluded) {
    const auto parsed = parse({"--mode", "all"});
    EXPECT_EQ(std::get<RunConfig>(parsed.result).modes,
              (std::vector<Mode>{Mode::Sequential, Mode::Threads, Mode::GilThreads, Mode::Processes}));
}

TEST(Cli, ReadsCpuTasksAndGilThreads) {
    const auto parsed = parse({"--task", "cpu", "--cpu-n", "2000000", "--mode", "gil-threads,threads"});
    const auto& config = std::get<RunConfig>(parsed.result);
    EXPECT_EQ(config.task, "cpu");
    EXPECT_EQ(config.settings.at("cpu_n"), 2'000'000u);
    EXPECT_EQ(config.modes, (std::vector<Mode>{Mode::GilThreads, Mode::Threads}));
    EXPECT_TRUE(config.pin_cpus.empty());
}

TEST(Cli, PinUsesEveryAllowedCpuAndCpusChoosesThem) {
    EXPECT_EQ(std::get<RunConfig>(parse({"--pin"}).result).pin_cpus, allowed_cpus());
    const int last = allowed_cpus().back();
    const auto chosen = parse({"--cpus", std::to_string(last)});
    EXPECT_EQ(std::get<RunConfig>(chosen.result).pin_cpus, (std::vector<int>{last}));
    const auto both = parse({"--pin", "--cpus", std::to_string(last)});
    EXPECT_EQ(std::get<RunConfig>(both.result).pin_cpus, (std::vector<int>{last}));
}

TEST(Cli, DownloadDefaultsToFifteenImagesOfTheBuiltInServer) {
    const auto parsed = parse({"--task", "download"});
    const auto& config = std::get<RunConfig>(parsed.result);
    EXPECT_EQ(config.task, "download");
    EXPECT_EQ(config.tasks, 15);
    EXPECT_TRUE(config.inputs_path.empty());
    EXPECT_TRUE(config.out_dir.empty()) << "decided with the plan's types: download's own directory";
    EXPECT_EQ(config.settings.at("max_bytes"), 100u * 1024 * 1024);  // the download type's flags' defaults
    EXPECT_FALSE(config.retries) << "download's own default of 2 applies, not the program's";
    EXPECT_FALSE(settings_json(config).contains("retries"));
    EXPECT_EQ(config.settings.at("file_size"), 200u * 1024);
    EXPECT_EQ(config.settings.at("latency_s"), 0.2);
    EXPECT_EQ(config.settings.at("bandwidth"), 0u);
}

TEST(Cli, ReadsEveryDownloadValueWithSizeSuffixes) {
    const auto parsed = parse({"--task", "download", "--tasks", "3", "--file-size", "1.5M", "--latency", "0.05",
                               "--bandwidth", "64k", "--max-bytes", "2GiB", "--retries", "0", "--out-dir", "pictures"});
    const auto& config = std::get<RunConfig>(parsed.result);
    EXPECT_EQ(config.tasks, 3);
    EXPECT_EQ(config.settings.at("file_size"), 1'572'864u);
    EXPECT_EQ(config.settings.at("latency_s"), 0.05);
    EXPECT_EQ(config.settings.at("bandwidth"), 65'536u);
    EXPECT_EQ(config.settings.at("max_bytes"), 2u << 30);
    EXPECT_EQ(config.retries, 0u);
    EXPECT_EQ(settings_json(config).at("retries"), 0u);
    EXPECT_EQ(config.out_dir, "pictures");
    EXPECT_EQ(config.settings.at("min_speed"), 1024u);  // the defaults: a drip of a byte a second fails
    EXPECT_EQ(config.settings.at("stall_s"), 15);
    const auto slow =
        std::get<RunConfig>(parse({"--task", "download", "--min-speed", "2K", "--stall-time", "3"}).result);
    EXPECT_EQ(slow.settings.at("min_speed"), 2048u);
    EXPECT_EQ(slow.settings.at("stall_s"), 3);
    EXPECT_EQ(std::get<RunConfig>(parse({"--task", "download", "--file-size", "0"}).result).settings.at("file_size"),
              0u);
    EXPECT_EQ(std::get<RunConfig>(parse({"--task", "download", "--file-size", "1000"}).result).settings.at("file_size"),
              1000u);
}

TEST(Cli, UrlsImplyDownload) {
    const auto parsed = parse({"--urls", "urls.txt", "--max-bytes", "1M"});
    const auto& config = std::get<RunConfig>(parsed.result);
    EXPECT_EQ(config.task, "download");
    EXPECT_EQ(config.inputs_path, "urls.txt");
    EXPECT_EQ(config.inputs_flag, "--urls");  // the messages about the file name the flag given
    EXPECT_EQ(config.settings.at("max_bytes"), 1u << 20);
    EXPECT_EQ(std::get<RunConfig>(parse({"--urls", "u", "--task", "download"}).result).task, "download");
}

// The download type declares its flags (TaskType::flags()), as sleep and cpu do theirs: a
// program without the type has none of them, and the stock one lists them under the type.
TEST(Cli, DownloadsFlagsAreTheDownloadTypesOwn) {
    Registry sleeps_only;
    sleeps_only.add(sleep_type());
    const ProgramInfo program{"sleeper", sleeps_only, testing::stock_program().worker};
    const auto run = [&](std::vector<std::string> args) { return run_program(program, std::move(args)); };
    const auto [help, help_text] = run({"--help"});
    for (const char* flag : {"--max-bytes", "--min-speed", "--stall-time", "--file-size", "--latency", "--bandwidth"}) {
        EXPECT_EQ(help_text.find(flag), std::string::npos) << flag;
        const auto [given, text] = run({flag, "1"});
        ASSERT_TRUE(std::holds_alternative<ExitCode>(given)) << flag;
        EXPECT_EQ(std::get<ExitCode>(given), ExitCode::Usage) << flag;
    }
    EXPECT_FALSE(std::get<RunConfig>(run({}).first).settings.contains("max_bytes"));
    ::testing::internal::CaptureStdout();
    const char* argv[] = {"coordinator", "--help"};
    static_cast<void>(parse_cli(testing::stock_program(), 2, argv));
    const std::string stock = ::testing::internal::GetCapturedStdout();
    const auto group = stock.find("download task type");
    ASSERT_NE(group, std::string::npos);
    EXPECT_GT(stock.find("\n  --max-bytes"), group);  // each one's line of help, under the type
    EXPECT_GT(stock.find("\n  --bandwidth"), group);
}

// The same for the command type's flags and download's --urls, which pick the run's tasks
// (Flag::Picks): a program without the type has none of them, and the stock one lists each
// under its type and reads it into the settings.
TEST(Cli, CommandsFlagsAreTheCommandTypesOwn) {
    Registry sleeps_only;
    sleeps_only.add(sleep_type());
    const ProgramInfo program{"sleeper", sleeps_only, testing::stock_program().worker};
    const std::string help = run_program(program, {"--help"}).second;
    for (const std::string flag : {"--command", "--max-output", "--urls"}) {
        // No option line of it (other flags' help may name it).
        EXPECT_EQ(help.find("\n  " + flag + " "), std::string::npos) << flag;
        const auto given = run_program(program, {flag, "1", "--inputs", "f"}).first;
        ASSERT_TRUE(std::holds_alternative<ExitCode>(given)) << flag;
        EXPECT_EQ(std::get<ExitCode>(given), ExitCode::Usage) << flag;
    }
    EXPECT_FALSE(std::get<RunConfig>(run_program(program, {}).first).settings.contains("max_output"));
    const std::string stock = run_program(testing::stock_program(), {"--help"}).second;
    const auto command_group = stock.find("command task type");
    ASSERT_NE(command_group, std::string::npos);
    EXPECT_GT(stock.find("\n  --command"), command_group);  // each one's line of help, under its type
    EXPECT_GT(stock.find("\n  --max-output"), command_group);
    const auto download_group = stock.find("download task type");
    ASSERT_NE(download_group, std::string::npos);
    EXPECT_GT(stock.find("\n  --urls"), download_group);
    const auto commands =
        run_program(testing::stock_program(), {"--command", "gzip {}", "--inputs", "f", "--max-output", "2K"});
    const auto& config = std::get<RunConfig>(commands.first);
    EXPECT_EQ(config.task, "command");
    EXPECT_EQ(config.settings.at("command"), "gzip {}");
    EXPECT_EQ(config.settings.at("max_output"), 2048u);
    EXPECT_EQ(std::get<RunConfig>(run_program(testing::stock_program(), {"--task", "command", "--inputs", "f"}).first)
                  .settings.at("max_output"),
              1024u * 1024)
        << "--max-output's default";
}

// A user's type with the command type's traits: its run shows the output alone on stdout
// (plain) by default, and --help's examples are the registered types' own, none of a type the
// program lacks.
class PrintType final : public TaskType {
public:
    std::string name() const override { return "print"; }
    Value run(const Params& params, Context&) const override { return params; }
    TaskTraits traits() const override {
        return {.plain_output = true, .examples = {"{program} --task print --inputs lines.txt"}};
    }
};

TEST(Cli, ATypesTraitsGiveTheDefaultOutputAndTheHelpExamples) {
    Registry registry;
    registry.add(sleep_type());
    registry.add(std::make_shared<PrintType>());
    const ProgramInfo program{"printer", registry, testing::stock_program().worker};
    const auto run = [&](std::vector<std::string> args) { return run_program(program, std::move(args)); };
    EXPECT_EQ(std::get<RunConfig>(run({"--task", "print"}).first).output, OutputBlocks::Plain);
    EXPECT_EQ(std::get<RunConfig>(run({"--task", "print", "--output", "tag"}).first).output, OutputBlocks::Tag);
    EXPECT_EQ(std::get<RunConfig>(run({"--task", "sleep"}).first).output, OutputBlocks::Group);
    const std::string help = run({"--help"}).second;
    EXPECT_NE(help.find("printer --task print --inputs lines.txt"), std::string::npos) << help;
    EXPECT_NE(help.find("printer --workers 4 --task sleep"), std::string::npos) << help;
    for (const char* other : {"--command", "--urls", "--task download", "--task cpu", "parallel -j"})
        EXPECT_EQ(help.find(other), std::string::npos) << other << " in\n" << help;
}

// No type is the default by its name: without --task a program runs its registry's first type.
TEST(Cli, WithoutTaskTheProgramsFirstRegisteredTypeRuns) {
    Registry registry;
    registry.add(std::make_shared<PrintType>());
    registry.add(sleep_type());
    const ProgramInfo program{"printer", registry, testing::stock_program().worker};
    EXPECT_EQ(std::get<RunConfig>(run_program(program, {}).first).task, "print");
    const ProgramInfo chosen{"printer", registry, testing::stock_program().worker, "sleep"};
    EXPECT_EQ(std::get<RunConfig>(run_program(chosen, {}).first).task, "sleep");
}

// Descriptors open in this process now.
std::size_t open_descriptors() {
    std::size_t count = 0;
    for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/fd")) ++count;
    return count;
}

// A job maker that throws in its constructor (a bad --colsep, after its eventfd is made)
// leaves no descriptor open: each is owned by an object (UniqueFd) that closes it.
TEST(Cli, ParallelThatRefusesAValueLeavesNoDescriptorOpen) {
    const std::size_t before = open_descriptors();
    for (int i = 0; i < 3; ++i) {
        const auto parsed = parse({"parallel", "--colsep", "(", "echo", ":::", "a"});
        EXPECT_EQ(std::get<ExitCode>(parsed.result), ExitCode::Usage);
        EXPECT_NE(parsed.err.find("--colsep"), std::string::npos) << parsed.err;
    }
    EXPECT_EQ(open_descriptors(), before);
}

TEST(Cli, APlanMayHaveDownloadsSoItTakesTheirFlags) {
    const auto parsed = parse({"--plan", "p.jsonl", "--out-dir", "d", "--retries", "5"});
    EXPECT_EQ(std::get<RunConfig>(parsed.result).out_dir, "d");
    EXPECT_EQ(std::get<RunConfig>(parsed.result).retries, 5u);
    EXPECT_EQ(std::get<RunConfig>(parsed.result).task_retries, 5u) << "--retries given: the engine's too";
    EXPECT_EQ(std::get<RunConfig>(parse({"--plan", "p.jsonl"}).result).task_retries, 0u) << "the engine's default";
}

TEST(Cli, ReadsAPlanPath) {
    const auto parsed = parse({"--plan", "tasks.jsonl", "--workers", "2"});
    EXPECT_EQ(std::get<RunConfig>(parsed.result).plan_path, "tasks.jsonl");
}

// The first CPU this process may not use: a valid number that --cpus must refuse.
int forbidden_cpu() {
    const std::vector<int> allowed = allowed_cpus();
    int cpu = 0;
    while (std::find(allowed.begin(), allowed.end(), cpu) != allowed.end()) ++cpu;
    return cpu;
}

TEST(Cli, HelpExitsZeroAndExplainsEveryFlag) {
    ::testing::internal::CaptureStdout();
    const char* argv[] = {"coordinator", "--help"};
    const auto result = parse_cli(testing::stock_program(), 2, argv);
    const std::string help = ::testing::internal::GetCapturedStdout();
    EXPECT_EQ(std::get<ExitCode>(result), ExitCode::Ok);
    for (const char* flag : {"--workers",
                             "--task",
                             "--tasks",
                             "--duration",
                             "--seed",
                             "--mode",
                             "--prefetch",
                             "--worker-bin",
                             "--json",
                             "--results",
                             "--heartbeat-interval",
                             "--heartbeat-timeout",
                             "--start-timeout",
                             "--max-attempts",
                             "--max-respawns",
                             "--cpu-n",
                             "--pin",
                             "--cpus",
                             "--plan",
                             "gil-threads",
                             "cpu",
                             "download",
                             "--urls",
                             "--out-dir",
                             "--max-bytes",
                             "--retries",
                             "--file-size",
                             "--latency",
                             "--bandwidth",
                             "--task-timeout",
                             "--listen",
                             "--keys",
                             "--authorized",
                             "--insecure",
                             "--expect-workers",
                             "--wait-workers",
                             "--launch",
                             "--slurm-args",
                             "--mpirun-args",
                             "--alloc",
                             "--max-allocs",
                             "--alloc-workers",
                             "--alloc-time",
                             "--alloc-args",
                             "--min-speed",
                             "--stall-time",
                             "keygen",
                             "--drain-timeout",
                             "--max-tasks-per-worker",
                             "--max-worker-memory"})
        EXPECT_NE(help.find(flag), std::string::npos) << flag;
}

struct BadValue {
    std::vector<std::string> args;
    std::string flag;  // must appear in the message
    std::string value;
};

class CliRejects : public ::testing::TestWithParam<BadValue> {};

TEST_P(CliRejects, WithExitTwoNamingTheFlagAndValue) {
    const auto parsed = parse(GetParam().args);
    ASSERT_TRUE(std::holds_alternative<ExitCode>(parsed.result));
    EXPECT_EQ(std::get<ExitCode>(parsed.result), ExitCode::Usage);
    EXPECT_NE(parsed.err.find(GetParam().flag), std::string::npos) << parsed.err;
    EXPECT_NE(parsed.err.find(GetParam().value), std::string::npos) << parsed.err;
}

INSTANTIATE_TEST_SUITE_P(
    BadValues, CliRejects,
    ::testing::Values(
        BadValue{{"--workers", "0"}, "--workers", "0"}, BadValue{{"--workers", "abc"}, "--workers", "abc"},
        BadValue{{"--workers", "99999"}, "--workers", "99999"}, BadValue{{"--task", "nope"}, "--task", "nope"},
        BadValue{{"--mode", "nope"}, "--mode", "nope"}, BadValue{{"--mode", "threads,nope"}, "--mode", "nope"},
        BadValue{{"--duration", "-1"}, "--duration", "-1"}, BadValue{{"--duration", "5:1"}, "--duration", "5:1"},
        BadValue{{"--duration", "1:x"}, "--duration", "1:x"}, BadValue{{"--tasks", "-3"}, "--tasks", "-3"},
        BadValue{{"--tasks", "0"}, "--tasks", "0"}, BadValue{{"--prefetch", "0"}, "--prefetch", "0"},
        BadValue{{"--heartbeat-timeout", "0"}, "--heartbeat-timeout", "0"}, BadValue{{"--nope"}, "--nope", "--nope"},
        BadValue{{"--mode", "gil_threads"}, "--mode", "gil_threads"}, BadValue{{"--cpu-n", "0"}, "--cpu-n", "0"},
        BadValue{{"--cpu-n", "-5"}, "--cpu-n", "-5"}, BadValue{{"--cpu-n", "1e3"}, "--cpu-n", "1e3"},
        BadValue{{"--cpu-n", "1000000000001"}, "--cpu-n", "1000000000001"},
        BadValue{{"--cpus", ""}, "--cpus", "empty item"}, BadValue{{"--cpus", "x"}, "--cpus", "'x'"},
        BadValue{{"--cpus", "0-"}, "--cpus", "0-"}, BadValue{{"--cpus", "1-0"}, "--cpus", "1-0"},
        BadValue{{"--cpus", "0,0"}, "--cpus", "0,0"}, BadValue{{"--cpus", "0,,1"}, "--cpus", "0,,1"},
        BadValue{{"--cpus", "5000"}, "--cpus", "5000"},
        BadValue{{"--cpus", std::to_string(forbidden_cpu())}, "--cpus", std::to_string(forbidden_cpu())},
        BadValue{{"--plan", "p.jsonl", "--task", "cpu"}, "--plan", "--task"},
        BadValue{{"--plan", "p.jsonl", "--tasks", "3"}, "--plan", "--tasks"},
        BadValue{{"--duration", "2", "--plan", "p.jsonl"}, "--plan", "--duration"},
        BadValue{{"--plan", "p.jsonl", "--cpu-n", "9"}, "--plan", "--cpu-n"},
        BadValue{{"--task", "download", "--file-size", "x"}, "--file-size", "'x'"},
        BadValue{{"--task", "download", "--file-size", "-1K"}, "--file-size", "-1K"},
        BadValue{{"--task", "download", "--file-size", "1T"}, "--file-size", "1T"},
        BadValue{{"--task", "download", "--max-bytes", "0"}, "--max-bytes", "'0'"},
        BadValue{{"--task", "download", "--max-bytes", "10 M"}, "--max-bytes", "10 M"},
        BadValue{{"--task", "download", "--bandwidth", "0"}, "--bandwidth", "'0'"},
        BadValue{{"--task", "download", "--retries", "-1"}, "--retries", "-1"},
        BadValue{{"--task", "download", "--retries", "101"}, "--retries", "101"},
        BadValue{{"--task", "download", "--latency", "-1"}, "--latency", "-1"},
        BadValue{{"--urls", "u.txt", "--tasks", "3"}, "--urls", "--tasks"},
        BadValue{{"--urls", "u.txt", "--task", "sleep"}, "--urls", "sleep"},
        BadValue{{"--urls", "u.txt", "--file-size", "1M"}, "--urls", "--file-size"},
        BadValue{{"--urls", "u.txt", "--latency", "1"}, "--urls", "--latency"},
        BadValue{{"--plan", "p.jsonl", "--urls", "u.txt"}, "--plan", "--urls"},
        BadValue{{"--command", "echo {}", "--plan", "p.jsonl"}, "--command", "--plan"},
        BadValue{{"--command", "echo {}", "--inputs", "f", "--task", "sleep"}, "--command", "sleep"},
        BadValue{{"--command", "echo {}", "--urls", "u.txt"}, "--command", "--urls"},
        BadValue{{"--command", "", "--inputs", "f"}, "--command", "the template is empty"},
        BadValue{{"--command", "echo {}", "--inputs", "f", "--max-output", "2M"}, "--max-output", "1536K"},
        BadValue{{"--command-grace", "-1"}, "--command-grace", "-1"},
        BadValue{{"--command-grace", "3601"}, "--command-grace", "3601"},
        BadValue{{"--set", "command_grace_s=1"}, "--set", "give --command-grace instead"},
        BadValue{{"--set", "served_urls=[]"}, "--set", "itself, for --task download"},
        BadValue{{"--set", "spill_dir=/tmp"}, "--set", "from --output plain"},
        BadValue{{"--plan", "p.jsonl", "--bandwidth", "1M"}, "--plan", "--bandwidth"},
        BadValue{{"--listen", "nope"}, "--listen", "nope"},
        BadValue{{"--listen", "tcp://127.0.0.1"}, "--listen", "tcp://127.0.0.1"},
        BadValue{{"--listen", "tcp://127.0.0.1:70000"}, "--listen", "70000"},
        BadValue{{"--listen", "tcp://0.0.0.0:5555"}, "--insecure", "0.0.0.0"},
        BadValue{{"--listen", "tcp://10.1.2.3:5555"}, "--listen", "10.1.2.3 is not an address of this machine"},
        BadValue{{"--listen", "tcp://127.0.0.1:5555"}, "--insecure", "any user of this machine"},
        BadValue{{"--keys", "k"}, "--keys", "--listen"},
        BadValue{{"--expect-workers", "2"}, "--expect-workers", "--listen"},
        BadValue{{"--listen", "tcp://127.0.0.1:5555", "--keys", "k", "--insecure"}, "--insecure", "--keys"},
        BadValue{{"--listen", "tcp://127.0.0.1:5555", "--insecure", "--mode", "threads"}, "--mode", "threads"},
        BadValue{
            {"--listen", "tcp://127.0.0.1:5555", "--insecure", "--workers", "0"}, "--expect-workers", "--workers 0"},
        BadValue{
            {"--listen", "tcp://127.0.0.1:5555", "--insecure", "--expect-workers", "-1"}, "--expect-workers", "-1"},
        BadValue{{"--listen", "tcp://127.0.0.1:5555", "--insecure", "--wait-workers", "0"}, "--wait-workers", "0"},
        BadValue{{"--wait-workers", "5"}, "--wait-workers", "--listen"},
        BadValue{{"--slurm-args", "-p short"}, "--slurm-args", "--launch slurm"},
        BadValue{{"--mpirun-args", "-x A"}, "--mpirun-args", "--launch mpirun"},
        BadValue{{"--launch", "slurm", "--workers", "2", "--mpirun-args", "-x A"}, "--mpirun-args", "--launch mpirun"},
        BadValue{{"--launch", "mpirun"}, "--workers", "give --workers N"},
        BadValue{{"--launch", "mpirun", "--workers", "2", "--mpirun-args", "-x $(id)"},
                 "--mpirun-args",
                 "command substitution"},
        BadValue{{"--launch", "mpirun", "--workers", "2", "--mode", "threads"}, "--mode", "threads"},
        BadValue{{"--launch", "ssh"}, "--launch", "ssh"},
        BadValue{{"--launch", "slurm", "--workers", "0"}, "--workers", "at least 1"},
        BadValue{{"--launch", "slurm", "--workers", "2", "--mode", "threads"}, "--mode", "threads"},
        BadValue{{"--launch", "slurm", "--workers", "2", "--listen", "tcp://127.0.0.1:*", "--keys", "k"},
                 "--keys",
                 "--launch slurm"},
        BadValue{{"--launch", "slurm", "--workers", "2", "--listen", "tcp://127.0.0.1:*", "--insecure"},
                 "--insecure",
                 "--launch slurm"},
        BadValue{
            {"--launch", "slurm", "--workers", "2", "--slurm-args", "'-p short"}, "--slurm-args", "unbalanced quotes"},
        BadValue{{"--launch", "slurm", "--workers", "2", "--slurm-args", "-p $(id -un)"},
                 "--slurm-args",
                 "command substitution"},
        BadValue{{"--alloc", "pbs"}, "--alloc", "pbs"},
        BadValue{{"--alloc", "slurm"}, "--alloc-time", "--alloc slurm needs"},
        BadValue{{"--alloc", "slurm", "--alloc-time", "1h"}, "--alloc-time", "'1h' is not a Slurm time limit"},
        BadValue{{"--alloc", "slurm", "--alloc-time", "5", "--max-allocs", "0"}, "--max-allocs", "0"},
        BadValue{{"--alloc", "slurm", "--alloc-time", "5", "--alloc-workers", "0"}, "--alloc-workers", "0"},
        BadValue{{"--max-allocs", "2"}, "--max-allocs", "--alloc"},
        BadValue{{"--alloc-args", "-p short"}, "--alloc-args", "--alloc"},
        BadValue{{"--alloc", "slurm", "--alloc-time", "5", "--launch", "slurm"}, "--launch", "--alloc"},
        BadValue{{"--alloc", "slurm", "--alloc-time", "5", "--alloc-args", "-p $(id -un)"},
                 "--alloc-args",
                 "command substitution"},
        BadValue{{"--alloc", "slurm", "--alloc-time", "5", "--mode", "threads"}, "--mode", "threads"},
        BadValue{{"--alloc", "slurm", "--alloc-time", "5", "--listen", "tcp://127.0.0.1:*", "--insecure"},
                 "--insecure",
                 "--alloc slurm"},
        BadValue{{"keygen"}, "DIR", "required"},
        BadValue{{"report", "--task", "-1", "j.jsonl"}, "--task", "'-1' is not a whole number"},
        BadValue{{"keygen", "d", "--worker-only", "--client-only"}, "--client-only", "excludes"},
        // What cannot work is refused before the run, naming the flag and the value.
        BadValue{{"--heartbeat-interval", "1", "--heartbeat-timeout", "1"},
                 "--heartbeat-interval",
                 "at most half of --heartbeat-timeout 1"},
        BadValue{{"--heartbeat-interval", "3"}, "--heartbeat-interval", "--heartbeat-interval 3"},
        BadValue{{"--heartbeat-timeout", "0.01"}, "--heartbeat-timeout", "'0.01' is not a number of seconds from 0.1"},
        BadValue{{"--heartbeat-timeout", "nan"}, "--heartbeat-timeout", "'nan'"},
        BadValue{{"--heartbeat-interval", "inf"}, "--heartbeat-interval", "'inf'"},
        BadValue{{"--start-timeout", "nan"}, "--start-timeout", "'nan'"},
        BadValue{{"--task-timeout", "nan"}, "--task-timeout", "'nan'"},
        BadValue{{"--task-timeout", "inf"}, "--task-timeout", "'inf'"},
        BadValue{{"--task-timeout", "1e999"}, "--task-timeout", "'1e999'"},
        BadValue{{"--task", "download", "--latency", "nan"}, "--latency", "'nan'"},
        BadValue{{"--duration", "nan"}, "--duration", "'nan'"},
        BadValue{{"--duration", "1:inf"}, "--duration", "'1:inf'"},
        BadValue{
            {"--listen", "tcp://127.0.0.1:5555", "--insecure", "--wait-workers", "nan"}, "--wait-workers", "'nan'"},
        BadValue{{"--seed", "-1"}, "--seed", "'-1'"},
        BadValue{{"--seed", "18446744073709551616"}, "--seed", "'18446744073709551616'"},
        BadValue{{"--mode", "threads,threads"}, "--mode", "'threads,threads' names a mode twice"},
        BadValue{{"--mode", "all,threads"}, "--mode", "'all,threads'"},
        BadValue{{"--out-dir", ""}, "--out-dir", "an empty path"}, BadValue{{"--json", ""}, "--json", "an empty path"},
        BadValue{{"--results", ""}, "--results", "an empty path"},
        BadValue{{"--task", "download", "--min-speed", "x"}, "--min-speed", "'x'"},
        BadValue{{"--task", "download", "--stall-time", "0"}, "--stall-time", "'0'"},
        BadValue{{"--task", "download", "--stall-time", "nan"}, "--stall-time", "'nan'"},
        BadValue{{"--listen", "tcp://localhost:5555", "--insecure"}, "--listen", "'tcp://localhost:5555'"},
        BadValue{{"--listen", "tcp://[::1]:5555", "--insecure"}, "--listen", "'tcp://[::1]:5555'"},
        BadValue{{"--listen", "tcp://lo:5555", "--insecure"}, "--listen", "tcp://127.0.0.1:PORT"}));

// The processes mode makes its socket directory in $TMPDIR: a missing one is exit 2 before
// the run, not a filesystem error when that mode starts.
TEST(Cli, RefusesATmpdirThatIsNotADirectory) {
    const char* old = std::getenv("TMPDIR");
    const std::string saved = old ? old : "";
    ::setenv("TMPDIR", "/nonexistent-taskfarm-tmpdir", 1);
    const auto parsed = parse({"--mode", "processes"});
    const auto sequential = parse({"--mode", "sequential"});
    if (old)
        ::setenv("TMPDIR", saved.c_str(), 1);
    else
        ::unsetenv("TMPDIR");
    ASSERT_TRUE(std::holds_alternative<ExitCode>(parsed.result));
    EXPECT_EQ(std::get<ExitCode>(parsed.result), ExitCode::Usage);
    EXPECT_NE(parsed.err.find("cannot use TMPDIR '/nonexistent-taskfarm-tmpdir': "), std::string::npos) << parsed.err;
    EXPECT_TRUE(std::holds_alternative<RunConfig>(sequential.result)) << sequential.err;  // it makes none
}

// Sets an environment variable for one scope, and puts back what was there.
class ScopedEnv {
public:
    ScopedEnv(const char* name, const char* value) : name_(name) {
        if (const char* old = std::getenv(name)) old_ = old;
        if (value)
            ::setenv(name, value, 1);
        else
            ::unsetenv(name);
    }
    ~ScopedEnv() {
        if (old_)
            ::setenv(name_, old_->c_str(), 1);
        else
            ::unsetenv(name_);
    }

private:
    const char* name_;
    std::optional<std::string> old_;
};

TEST(Cli, LaunchSlurmStartsSlurmNtasksRemoteWorkersByDefault) {
    const ScopedEnv ntasks("SLURM_NTASKS", "6");
    const auto parsed = parse({"--launch", "slurm", "--pin", "--slurm-args", "--partition=short  --comment='a b'"});
    const auto& config = std::get<RunConfig>(parsed.result);
    ASSERT_TRUE(config.step);
    EXPECT_EQ(config.step->launcher, StepLauncher::Slurm);
    EXPECT_TRUE(config.step->pin);
    EXPECT_EQ(config.step->tasks, 6);
    EXPECT_EQ(config.expect_workers, 6);
    EXPECT_EQ(config.workers, 0);  // no local worker
    EXPECT_EQ(config.step->args, (std::vector<std::string>{"--partition=short", "--comment=a b"}));
    EXPECT_EQ(config.modes, std::vector<Mode>{Mode::Processes});
    EXPECT_TRUE(config.listen.starts_with("tcp://") && config.listen.ends_with(":*")) << config.listen;
}

TEST(Cli, LaunchSlurmTakesWorkersAndListenWhenGiven) {
    const ScopedEnv ntasks("SLURM_NTASKS", "6");
    const auto parsed = parse({"--launch", "slurm", "--workers", "3", "--listen", "tcp://127.0.0.1:5555"});
    const auto& config = std::get<RunConfig>(parsed.result);
    ASSERT_TRUE(config.step);
    EXPECT_EQ(config.step->tasks, 3);
    EXPECT_FALSE(config.step->pin);
    EXPECT_EQ(config.listen, "tcp://127.0.0.1:5555");
    EXPECT_TRUE(config.step->args.empty());
}

TEST(Cli, AllocSlurmListensWithRunKeysAndStartsNoLocalWorker) {
    const auto parsed = parse({"--alloc", "slurm", "--max-allocs", "3", "--alloc-workers", "4", "--alloc-time",
                               "1-02:00", "--alloc-args", "--partition=short --comment='a b'", "--wait-workers", "7"});
    const auto& config = std::get<RunConfig>(parsed.result);
    ASSERT_TRUE(config.alloc);
    EXPECT_EQ(config.alloc->max_allocs, 3);
    EXPECT_EQ(config.alloc->workers, 4);
    EXPECT_EQ(config.alloc->time_limit, "1-02:00");
    EXPECT_EQ(config.alloc->args, (std::vector<std::string>{"--partition=short", "--comment=a b"}));
    EXPECT_EQ(config.alloc->give_up, std::chrono::milliseconds(7000));
    EXPECT_EQ(config.workers, 0);  // no local worker unless --workers is given
    EXPECT_FALSE(config.step);
    EXPECT_EQ(config.modes, std::vector<Mode>{Mode::Processes});
    EXPECT_TRUE(config.listen.starts_with("tcp://") && config.listen.ends_with(":*")) << config.listen;
    for (const char* time : {"30", "30:00", "2:00:00", "1-2", "1-2:30", "1-2:30:00"}) EXPECT_TRUE(is_slurm_time(time));
    for (const char* time : {"", "1h", "-5", "1:2:3:4", "UNLIMITED", "1-"}) EXPECT_FALSE(is_slurm_time(time)) << time;
    // The allocation of a worker, from the name its batch script gives it (NODE-JOBID.RANK).
    EXPECT_EQ(alloc_job_of("tf1-12.0"), "12");
    EXPECT_EQ(alloc_job_of("node-a-7.3"), "7");
    EXPECT_EQ(alloc_job_of("tf1-1234"), "");  // NODE-PID: a worker of no allocation
    EXPECT_EQ(alloc_job_of("w1"), "");
}

TEST(Cli, LaunchMpirunStartsWorkersWithItsOwnArgs) {
    const auto parsed =
        parse({"--launch", "mpirun", "--workers", "4", "--pin", "--mpirun-args", "--hostfile 'my hosts'"});
    const auto& config = std::get<RunConfig>(parsed.result);
    ASSERT_TRUE(config.step);
    EXPECT_EQ(config.step->launcher, StepLauncher::Mpirun);
    EXPECT_EQ(config.step->tasks, 4);
    EXPECT_TRUE(config.step->pin);
    EXPECT_EQ(config.expect_workers, 4);
    EXPECT_EQ(config.workers, 0);
    EXPECT_EQ(config.step->args, (std::vector<std::string>{"--hostfile", "my hosts"}));
    EXPECT_EQ(config.modes, std::vector<Mode>{Mode::Processes});
}

TEST(Cli, LaunchSlurmOutsideAnAllocationNeedsWorkers) {
    for (const char* value : {static_cast<const char*>(nullptr), "0", "x"}) {
        const ScopedEnv ntasks("SLURM_NTASKS", value);
        const auto parsed = parse({"--launch", "slurm"});
        ASSERT_TRUE(std::holds_alternative<ExitCode>(parsed.result));
        EXPECT_EQ(std::get<ExitCode>(parsed.result), ExitCode::Usage);
        EXPECT_NE(parsed.err.find("--workers"), std::string::npos) << parsed.err;
        EXPECT_NE(parsed.err.find("SLURM_NTASKS"), std::string::npos) << parsed.err;
    }
}

TEST(Cli, ListenRunsOnlyTheProcessesModeAndMayHaveNoLocalWorker) {
    const auto parsed = parse({"--listen", "tcp://*:5555", "--keys", "keys", "--authorized", "more", "--workers", "0",
                               "--expect-workers", "3", "--wait-workers", "5"});
    const auto& config = std::get<RunConfig>(parsed.result);
    EXPECT_EQ(config.listen, "tcp://*:5555");
    EXPECT_EQ(config.keys_dir, "keys");
    EXPECT_EQ(config.authorized_dir, "more");
    EXPECT_EQ(config.workers, 0);
    EXPECT_EQ(config.expect_workers, 3);
    EXPECT_EQ(config.wait_workers_s, 5.0);
    EXPECT_EQ(config.modes, std::vector<Mode>{Mode::Processes});
    // Plaintext anywhere, loopback included, only with --insecure.
    EXPECT_TRUE(std::holds_alternative<RunConfig>(parse({"--listen", "tcp://127.0.0.1:5555", "--insecure"}).result));
    EXPECT_TRUE(std::holds_alternative<RunConfig>(parse({"--listen", "tcp://127.0.0.1:*", "--insecure"}).result));
    // ZeroMQ would read localhost as an interface name, and [::1] needs ZMQ_IPV6: refused (CliRejects).
    EXPECT_TRUE(std::holds_alternative<RunConfig>(parse({"--listen", "tcp://0.0.0.0:5555", "--insecure"}).result));
    EXPECT_TRUE(std::holds_alternative<RunConfig>(
        parse({"--listen", "tcp://127.0.0.1:5555", "--insecure", "--mode", "processes"}).result));
    EXPECT_TRUE(std::holds_alternative<ExitCode>(parse({"--listen", "tcp://[::1]:5555"}).result));
}

TEST(Cli, KeygenTakesADirectory) {
    const auto parsed = parse({"keygen", "some/dir", "--worker-only"});
    const auto& keygen = std::get<KeygenConfig>(parsed.result);
    EXPECT_EQ(keygen.dir, "some/dir");
    EXPECT_TRUE(keygen.worker_only);
    EXPECT_FALSE(std::get<KeygenConfig>(parse({"keygen", "d"}).result).worker_only);
}

}  // namespace
}  // namespace taskfarm
