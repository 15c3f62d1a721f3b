// Progress and logs on stderr: the bar's text, the bar on a real pseudo-terminal, plain
// log lines (no control characters) into a pipe or file, and the logging flags, down to
// the worker processes.

#include <poll.h>
#include <pty.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <regex>

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "cli.hpp"
#include "progress.hpp"
#include "support.hpp"

extern char** environ;

namespace taskfarm {
namespace {

using testing::Output;
using testing::run_binary;

// ---- the text

TEST(ProgressBar, ShowsCountsFailuresRateElapsedAndEta) {
    const std::string bar = progress_bar({"threads", 8, 4, 1, 2.0}, 100);
    EXPECT_EQ(bar, "threads    [###############---------------] 4/8  1 failed  2.0 tasks/s  2.0s  ETA 2.0s");
}

TEST(ProgressBar, HasNoEtaBeforeTheFirstResultAndZeroAfterTheLast) {
    EXPECT_NE(progress_bar({"processes", 3, 0, 0, 0.5}, 100).find("0/3  0.0 tasks/s  0.5s  ETA ?"), std::string::npos);
    EXPECT_NE(progress_bar({"processes", 3, 3, 0, 1.5}, 100).find("3/3  2.0 tasks/s  1.5s  ETA 0.0s"),
              std::string::npos);
}

TEST(ProgressBar, NeverWrapsANarrowTerminal) {
    const std::string bar = progress_bar({"sequential", 100, 7, 0, 3661}, 40);
    EXPECT_LE(bar.size(), 39u);
    EXPECT_EQ(bar.find('['), std::string::npos) << bar;  // no room for the graphic
    EXPECT_NE(progress_bar({"a-long-mode-name", 100, 7, 0, 3661}, 120).find("  1h01m  ETA 13h"), std::string::npos);
}

TEST(ProgressSummary, SaysTheSameInWords) {
    EXPECT_EQ(progress_summary({"processes", 10, 4, 1, 125}),
              "processes: 4/10 tasks done, 1 failed, 0.0 tasks/s, 2m05s elapsed, ETA 3m07s");
}

// ---- the sink

using testing::CollectingSink;

TaskResult result_of(TaskId id, bool ok) {
    TaskResult result;
    result.id = id;
    result.ok = ok;
    result.error = ok ? "" : "boom";
    return result;
}

std::string contents(std::FILE* file) {
    std::fflush(file);
    std::rewind(file);
    std::string text;
    char buffer[4096];
    for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, file)) > 0;) text.append(buffer, n);
    return text;
}

TEST(ProgressSink, DrawsTheBarErasesItOnCloseAndForwardsEverything) {
    std::FILE* terminal = std::tmpfile();
    ASSERT_NE(terminal, nullptr);
    std::vector<std::string> calls;
    const auto log_sinks = spdlog::default_logger()->sinks();
    {
        ProgressSink progress({.style = ProgressStyle::Bar, .terminal = terminal},
                              std::make_unique<CollectingSink>(&calls));
        EXPECT_NE(spdlog::default_logger()->sinks(), log_sinks);  // logs now go above the bar
        progress.begin_mode("threads", 2);
        progress.on_result({}, result_of(0, true));
        progress.on_event({.kind = RunEvent::Kind::WorkerStarted, .worker = "w1", .detail = "pid 1"});
        progress.on_result({}, result_of(1, false));
        progress.close();
        progress.close();
    }
    EXPECT_EQ(spdlog::default_logger()->sinks(), log_sinks);
    EXPECT_EQ(calls, (std::vector<std::string>{"begin threads", "result 0", "event w1", "result 1"}));
    const std::string drawn = contents(terminal);
    std::fclose(terminal);
    EXPECT_NE(drawn.find("\rthreads    ["), std::string::npos) << drawn;
    EXPECT_NE(drawn.find("] 2/2  1 failed"), std::string::npos) << drawn;  // the last count is always drawn
    EXPECT_TRUE(drawn.ends_with("\r\x1b[K")) << drawn;                     // erased at the end
}

TEST(ProgressSink, KeepsLogLinesAboveTheBar) {
    std::FILE* terminal = std::tmpfile();
    ASSERT_NE(terminal, nullptr);
    auto ostream = std::make_shared<std::ostringstream>();
    auto logger =
        std::make_shared<spdlog::logger>("progress-test", std::make_shared<spdlog::sinks::ostream_sink_mt>(*ostream));
    logger->set_pattern("%v");
    const auto previous = spdlog::default_logger();
    spdlog::set_default_logger(logger);
    {
        std::vector<std::string> calls;
        ProgressSink progress({.style = ProgressStyle::Bar, .terminal = terminal},
                              std::make_unique<CollectingSink>(&calls));
        progress.begin_mode("processes", 4);
        spdlog::warn("worker w1 died");
    }
    spdlog::set_default_logger(previous);
    EXPECT_EQ(ostream->str(), "worker w1 died\n");
    const std::string drawn = contents(terminal);
    std::fclose(terminal);
    // Drawn, erased for the log line and drawn again at once (the timer may redraw it too), erased at the end.
    EXPECT_TRUE(drawn.starts_with("\rprocesses  [")) << drawn;
    const std::string erased_and_redrawn = "\x1b[K\r\x1b[K\rprocesses  [";
    const auto first = drawn.find(erased_and_redrawn);
    EXPECT_NE(first, std::string::npos) << drawn;
    EXPECT_EQ(drawn.find(erased_and_redrawn, first + 1), std::string::npos) << drawn;
    EXPECT_TRUE(drawn.ends_with("\x1b[K\r\x1b[K")) << drawn;
}

TEST(ProgressSink, LogsALineEveryIntervalWhereThereIsNoTerminal) {
    auto ostream = std::make_shared<std::ostringstream>();
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(*ostream);
    auto logger = std::make_shared<spdlog::logger>("progress-test", sink);
    logger->set_pattern("%l %v");
    const auto previous = spdlog::default_logger();
    spdlog::set_default_logger(logger);
    std::vector<std::string> calls;
    {
        ProgressSink progress({.style = ProgressStyle::Log, .log_interval = std::chrono::milliseconds(20)},
                              std::make_unique<CollectingSink>(&calls));
        progress.begin_mode("processes", 3);
        progress.on_result({}, result_of(0, true));
        EXPECT_TRUE(testing::eventually(
            [&] {
                sink->flush();
                return ostream->str().find("info processes: 1/3 tasks done, 0 failed, ") != std::string::npos;
            },
            std::chrono::seconds(10)))
            << ostream->str();
    }
    spdlog::set_default_logger(previous);
    EXPECT_EQ(calls, (std::vector<std::string>{"begin processes", "result 0"}));
    EXPECT_EQ(ostream->str().find('\x1b'), std::string::npos);
    EXPECT_EQ(ostream->str().find('\r'), std::string::npos);
}

// ---- the terminal, for real

struct TerminalRun {
    int exit_code = -1;
    std::string output;  // stdout and stderr together, as a terminal shows them
};

// Runs build/bin/<program> on a new pseudo-terminal (120 columns) with TERM=`term`.
TerminalRun run_on_terminal(const std::string& program, const std::vector<std::string>& args, const std::string& term) {
    const std::string exe = testing::bin(program).string();
    std::vector<std::string> env_strings{"TERM=" + term};
    for (char** e = environ; *e; ++e)
        if (std::strncmp(*e, "TERM=", 5) != 0) env_strings.emplace_back(*e);
    std::vector<char*> env;
    for (std::string& s : env_strings) env.push_back(s.data());
    env.push_back(nullptr);
    std::vector<std::string> argv_strings{exe};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& s : argv_strings) argv.push_back(s.data());
    argv.push_back(nullptr);

    winsize size{};
    size.ws_row = 40;
    size.ws_col = 120;
    int master = -1;
    const pid_t pid = ::forkpty(&master, nullptr, nullptr, &size);
    if (pid < 0) throw std::runtime_error("forkpty failed");
    if (pid == 0) {
        ::execve(exe.c_str(), argv.data(), env.data());
        ::_exit(127);
    }
    TerminalRun run;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
        pollfd item{master, POLLIN, 0};
        if (::poll(&item, 1, 100) <= 0) continue;
        char buffer[4096];
        const ssize_t n = ::read(master, buffer, sizeof buffer);
        if (n <= 0) break;  // EIO: every writer to the terminal is gone
        run.output.append(buffer, static_cast<std::size_t>(n));
    }
    ::close(master);
    int status = 0;
    if (::waitpid(pid, &status, WNOHANG) == 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
    }
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return run;
}

TEST(ProgressOnATerminal, ShowsABarWithRateAndEtaAndErasesItBeforeTheTable) {
    // Three 0.3 s tasks: the bar is drawn after each of the first two, with a rate and an ETA.
    const TerminalRun run = run_on_terminal(
        "coordinator", {"--mode", "sequential,processes", "--workers", "2", "--tasks", "3", "--duration", "0.3"},
        "xterm");
    ASSERT_EQ(run.exit_code, 0) << run.output;
    const std::regex bar(R"(\rsequential \[#+-+\] [12]/3  [0-9]+\.[0-9] tasks/s  [0-9.]+s  ETA [0-9]+\.[0-9]s\x1b\[K)");
    EXPECT_TRUE(std::regex_search(run.output, bar)) << run.output;
    EXPECT_NE(run.output.find("\rprocesses  ["), std::string::npos) << run.output;
    const auto table = run.output.find("mode         workers");
    ASSERT_NE(table, std::string::npos) << run.output;
    const auto last_erase = run.output.rfind("\r\x1b[K");
    ASSERT_NE(last_erase, std::string::npos);
    EXPECT_LT(last_erase, table);
    EXPECT_EQ(run.output.find("tasks/s", table), std::string::npos) << "a bar after the table";
}

TEST(ProgressOnATerminal, ADumbTerminalGetsNoBarAndNoControlSequences) {
    const TerminalRun run =
        run_on_terminal("coordinator", {"--mode", "threads", "--tasks", "2", "--duration", "0.2"}, "dumb");
    ASSERT_EQ(run.exit_code, 0) << run.output;
    EXPECT_EQ(run.output.find('\x1b'), std::string::npos) << run.output;
    EXPECT_EQ(run.output.find("tasks/s"), std::string::npos) << run.output;
}

// ---- pipes and files

bool has_control_characters(const std::string& text) {
    return text.find('\x1b') != std::string::npos || text.find('\r') != std::string::npos;
}

TEST(ProgressIntoAFile, HasNoControlCharactersEvenWithDebugLogsFromTheWorkers) {
    const Output output = run_binary("coordinator", {"--mode", "all", "--workers", "2", "--tasks", "3", "--duration",
                                                     "0.05", "--log-level", "debug"});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_FALSE(has_control_characters(output.out)) << output.out;
    EXPECT_FALSE(has_control_characters(output.err)) << output.err;
    // The workers got --log-level debug, and their lines carry their names.
    EXPECT_NE(output.err.find(" w1["), std::string::npos) << output.err;
    EXPECT_NE(output.err.find(" w2["), std::string::npos) << output.err;
    EXPECT_NE(output.err.find("debug connected to ipc://"), std::string::npos) << output.err;
}

TEST(ProgressIntoAFile, AlwaysDrawsTheBarAnyway) {
    const Output output =
        run_binary("coordinator", {"--mode", "threads", "--tasks", "2", "--duration", "0.05", "--progress", "always"});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_NE(output.err.find("\rthreads    ["), std::string::npos) << output.err;
    EXPECT_NE(output.err.find("2/2"), std::string::npos) << output.err;
    EXPECT_FALSE(has_control_characters(output.out)) << output.out;
}

TEST(Quiet, LeavesStderrEmptyAndStdoutAsItWas) {
    const Output output =
        run_binary("coordinator", {"-q", "--mode", "all", "--workers", "2", "--tasks", "2", "--duration", "0.01"});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(output.err, "");
    EXPECT_NE(output.out.find("threads    task"), std::string::npos) << output.out;
    EXPECT_NE(output.out.find("mode         workers"), std::string::npos) << output.out;
}

// ---- the flags

ParsedCli parse(std::vector<std::string> args, std::string* err = nullptr) {
    args.insert(args.begin(), "coordinator");
    std::vector<const char*> argv;
    for (const std::string& arg : args) argv.push_back(arg.c_str());
    ::testing::internal::CaptureStderr();
    ::testing::internal::CaptureStdout();
    auto result = parse_cli(testing::stock_program(), static_cast<int>(argv.size()), argv.data());
    ::testing::internal::GetCapturedStdout();
    const std::string captured = ::testing::internal::GetCapturedStderr();
    if (err) *err = captured;
    return result;
}

TEST(LoggingFlags, SetTheLevelAndTheProgress) {
    const auto config = [](std::vector<std::string> args) { return std::get<RunConfig>(parse(std::move(args))); };
    EXPECT_EQ(config({}).log_level, "");
    EXPECT_EQ(config({}).progress, ProgressMode::Auto);
    EXPECT_EQ(config({"-q"}).log_level, "warn");
    EXPECT_EQ(config({"--quiet"}).progress, ProgressMode::Never);
    EXPECT_EQ(config({"-q", "--progress", "always"}).progress, ProgressMode::Always);
    EXPECT_EQ(config({"-v"}).log_level, "debug");
    EXPECT_EQ(config({"-vv"}).log_level, "trace");
    EXPECT_EQ(config({"--log-level", "error"}).log_level, "error");
    EXPECT_EQ(config({"--progress", "never"}).progress, ProgressMode::Never);
    EXPECT_EQ(config({"--trace", "t.json", "--timeline", "t.svg"}).trace_path, "t.json");
    EXPECT_EQ(config({"--trace", "t.json", "--timeline", "t.svg"}).timeline_path, "t.svg");
}

struct BadFlags {
    std::vector<std::string> args;
    std::string named;  // in the message
};

class LoggingFlagsReject : public ::testing::TestWithParam<BadFlags> {};

TEST_P(LoggingFlagsReject, WithExitTwoNamingTheFlag) {
    std::string err;
    const auto result = parse(GetParam().args, &err);
    ASSERT_TRUE(std::holds_alternative<ExitCode>(result));
    EXPECT_EQ(std::get<ExitCode>(result), ExitCode::Usage);
    EXPECT_NE(err.find(GetParam().named), std::string::npos) << err;
}

INSTANTIATE_TEST_SUITE_P(Cases, LoggingFlagsReject,
                         ::testing::Values(BadFlags{{"--progress", "sometimes"}, "sometimes"},
                                           BadFlags{{"--log-level", "loud"}, "loud"},
                                           BadFlags{{"-q", "-v"}, "--verbose"},
                                           BadFlags{{"-v", "--log-level", "info"}, "--log-level"}));

TEST(LoggingFlags, AreInTheHelp) {
    ::testing::internal::CaptureStdout();
    const char* argv[] = {"coordinator", "--help"};
    EXPECT_EQ(std::get<ExitCode>(parse_cli(testing::stock_program(), 2, argv)), ExitCode::Ok);
    const std::string help = ::testing::internal::GetCapturedStdout();
    for (const char* flag : {"--progress", "--quiet", "--verbose", "--log-level", "--trace", "--timeline"})
        EXPECT_NE(help.find(flag), std::string::npos) << flag;
}

TEST(WorkerLogLevel, RejectsAnUnknownLevelWithExitTwo) {
    const Output output = run_binary("worker", {"--connect", "ipc:///nonexistent/socket", "--log-level", "loud"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--log-level"), std::string::npos) << output.err;
}

}  // namespace
}  // namespace taskfarm
