#include <gtest/gtest.h>

#include "cli.hpp"

namespace taskfarm {
namespace {

struct Parsed {
    std::variant<RunConfig, ExitCode> result;
    std::string err;
};

Parsed parse(std::vector<std::string> args) {
    args.insert(args.begin(), "coordinator");
    std::vector<const char*> argv;
    for (const std::string& arg : args) argv.push_back(arg.c_str());
    ::testing::internal::CaptureStderr();
    ::testing::internal::CaptureStdout();
    auto result = parse_cli(static_cast<int>(argv.size()), argv.data());
    ::testing::internal::GetCapturedStdout();
    return {std::move(result), ::testing::internal::GetCapturedStderr()};
}

TEST(Cli, DefaultsRunTenOneSecondSleepsInEveryMode) {
    const auto parsed = parse({});
    const auto& config = std::get<RunConfig>(parsed.result);
    EXPECT_EQ(config.task, TaskKind::Sleep);
    EXPECT_EQ(config.tasks, 10);
    EXPECT_EQ(config.duration_lo_s, 1.0);
    EXPECT_EQ(config.duration_hi_s, 1.0);
    EXPECT_EQ(config.workers, available_cpus());
    EXPECT_EQ(config.modes, (std::vector<Mode>{Mode::Sequential, Mode::Threads, Mode::Processes}));
}

TEST(Cli, ReadsEveryValue) {
    const auto parsed = parse({"--workers", "8", "--task", "sleep", "--tasks", "15", "--duration", "1:10", "--seed", "9",
                               "--mode", "threads,processes", "--prefetch", "4", "--json", "r.json", "--results", "r.jsonl"});
    const auto& config = std::get<RunConfig>(parsed.result);
    EXPECT_EQ(config.workers, 8);
    EXPECT_EQ(config.tasks, 15);
    EXPECT_EQ(config.duration_lo_s, 1.0);
    EXPECT_EQ(config.duration_hi_s, 10.0);
    EXPECT_EQ(config.seed, 9u);
    EXPECT_EQ(config.modes, (std::vector<Mode>{Mode::Threads, Mode::Processes}));
    EXPECT_EQ(config.prefetch, 4);
    EXPECT_EQ(config.json_path, "r.json");
    EXPECT_EQ(config.results_path, "r.jsonl");
}

TEST(Cli, AllMeansEveryMode) {
    const auto parsed = parse({"--mode", "all"});
    EXPECT_EQ(std::get<RunConfig>(parsed.result).modes, (std::vector<Mode>(std::begin(kAllModes), std::end(kAllModes))));
}

TEST(Cli, HelpExitsZeroAndExplainsEveryFlag) {
    ::testing::internal::CaptureStdout();
    const char* argv[] = {"coordinator", "--help"};
    const auto result = parse_cli(2, argv);
    const std::string help = ::testing::internal::GetCapturedStdout();
    EXPECT_EQ(std::get<ExitCode>(result), ExitCode::Ok);
    for (const char* flag : {"--workers", "--task", "--tasks", "--duration", "--seed", "--mode", "--prefetch",
                             "--worker-bin", "--json", "--results", "--heartbeat-interval", "--heartbeat-timeout",
                             "--start-timeout", "--max-attempts", "--max-respawns"})
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
    ::testing::Values(BadValue{{"--workers", "0"}, "--workers", "0"}, BadValue{{"--workers", "abc"}, "--workers", "abc"},
                      BadValue{{"--workers", "99999"}, "--workers", "99999"},
                      BadValue{{"--task", "nope"}, "--task", "nope"}, BadValue{{"--mode", "nope"}, "--mode", "nope"},
                      BadValue{{"--mode", "threads,nope"}, "--mode", "nope"},
                      BadValue{{"--duration", "-1"}, "--duration", "-1"},
                      BadValue{{"--duration", "5:1"}, "--duration", "5:1"},
                      BadValue{{"--duration", "1:x"}, "--duration", "1:x"},
                      BadValue{{"--tasks", "-3"}, "--tasks", "-3"}, BadValue{{"--tasks", "0"}, "--tasks", "0"},
                      BadValue{{"--prefetch", "0"}, "--prefetch", "0"},
                      BadValue{{"--heartbeat-timeout", "0"}, "--heartbeat-timeout", "0"},
                      BadValue{{"--nope"}, "--nope", "--nope"}));

}  // namespace
}  // namespace taskfarm
