// Nothing blocks the loop that heartbeats (issue 26, class 1), and a plan read as the run
// goes is bounded and counted (class 5): a slow producer of the plan (a FIFO, standard
// input) or a stopped fork server holds up only what depends on it; a signal is obeyed
// while no input comes; a list that changes its count under the run, and a line longer
// than a task may be, are errors that name FILE:LINE. Real processes throughout; the
// assertions are on results, exit codes and sizes, never on time.

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support.hpp"

namespace taskfarm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::Output;

// A FIFO the test writes to, held open read-write so that opening it never waits and the
// coordinator sees its end only when the test closes it.
class Fifo {
public:
    explicit Fifo(fs::path path) : path_(std::move(path)) {
        EXPECT_EQ(::mkfifo(path_.c_str(), 0600), 0);
        fd_ = ::open(path_.c_str(), O_RDWR | O_CLOEXEC);
        EXPECT_GE(fd_, 0);
    }
    ~Fifo() { close(); }
    void write_line(const std::string& line) {
        const std::string text = line + "\n";
        ASSERT_EQ(::write(fd_, text.data(), text.size()), static_cast<ssize_t>(text.size()));
    }
    void close() {
        if (fd_ >= 0) ::close(fd_);
        fd_ = -1;
    }
    const fs::path& path() const { return path_; }

private:
    fs::path path_;
    int fd_ = -1;
};

bool shows(const testing::Running& coordinator, const std::string& text, std::chrono::seconds limit) {
    return testing::eventually([&] { return coordinator.out().find(text) != std::string::npos; }, limit);
}

// Runs `script` with bash -c; COORDINATOR names the binary built here.
Output run_shell(const std::string& script) {
    ::setenv("COORDINATOR", testing::bin("coordinator").c_str(), 1);
    return testing::run_binary("/bin/bash", {"-c", script});
}

// ---- a slow producer ----

// The first task runs, and its result comes, while the second line has not been written:
// the loop does not wait for the producer, so its workers hear heartbeats all along.
TEST(SlowProducer, TheFirstResultComesBeforeTheSecondLineAndEveryTaskIsOk) {
    testing::TempDir tmp;
    Fifo fifo(tmp / "inputs");
    const fs::path journal = tmp / "results.jsonl";
    testing::Running coordinator(
        "coordinator", {"--command", "echo {}", "--inputs", fifo.path().string(), "--mode", "processes", "--workers",
                        "2", "--results", journal.string(), "--output", "group"});  // the result lines on stdout
    fifo.write_line("one");
    // Longer than the heartbeat timeout (2 s): a loop that waited for the line would lose its workers.
    const bool first = shows(coordinator, "task    0", std::chrono::seconds(4));
    EXPECT_TRUE(first) << "task 0's result did not come while the second line was awaited\n" << coordinator.err();
    fifo.write_line("two");
    fifo.write_line("three");
    fifo.close();
    const Output output = coordinator.wait(std::chrono::seconds(60));
    EXPECT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(output.err.find("silent"), std::string::npos) << output.err;
    const auto results = testing::read_result_lines(journal);
    ASSERT_EQ(results.size(), 3u) << output.err;
    for (const json& result : results) {
        EXPECT_TRUE(result.value("ok", false)) << result.dump();
        EXPECT_EQ(result.value("attempt", 0), 1) << result.dump();
    }
}

// The pipeline of the issue: `( echo one; sleep 4; echo two ) | coordinator --inputs -`.
TEST(SlowProducer, AStdinPipelineWithAPauseRunsEveryTaskOnce) {
    const Output output = run_shell(
        "( echo one; sleep 4; echo two; echo three ) | "
        "\"$COORDINATOR\" --command 'echo {}' --inputs - --mode processes --workers 2 --max-respawns 1 "
        "--output group");
    EXPECT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(output.err.find("silent"), std::string::npos) << output.err;
    EXPECT_EQ(output.err.find("died"), std::string::npos) << output.err;
    EXPECT_NE(output.out.find("processes          2      3      3      0"), std::string::npos) << output.out;
}

struct SignalCase {
    const char* mode;
    int signo;
    int exit_code;
    bool stdin = false;  // the FIFO is the coordinator's standard input (--inputs -), not --inputs FIFO
};

void PrintTo(const SignalCase& param, std::ostream* out) {
    *out << param.mode << " signal " << param.signo << (param.stdin ? " stdin" : " fifo");
}

class SignalWhileWaiting : public ::testing::TestWithParam<SignalCase> {};

// A signal while the next line is awaited ends the run (SIGTERM: as a drain does, exit
// 143; SIGINT: 130), with the partial table, in every mode, without waiting for the
// producer: the test never writes again.
TEST_P(SignalWhileWaiting, EndsTheRunWithoutTheNextLine) {
    const SignalCase& param = GetParam();
    testing::TempDir tmp;
    Fifo fifo(tmp / "inputs");
    std::vector<std::string> args{"--command", "echo {}",  "--inputs",  param.stdin ? "-" : fifo.path().string(),
                                  "--mode",    param.mode, "--workers", "2",
                                  "--output",  "group"};
    std::optional<testing::Running> coordinator;
    if (param.stdin) {
        // bash execs the coordinator with the FIFO as its standard input: the pid is the coordinator's.
        std::string script = "exec \"$COORDINATOR\"";
        for (const std::string& arg : args) script += " '" + arg + "'";
        ::setenv("COORDINATOR", testing::bin("coordinator").c_str(), 1);
        coordinator.emplace("/bin/bash", std::vector<std::string>{"-c", script + " < '" + fifo.path().string() + "'"});
    } else {
        coordinator.emplace("coordinator", args);
    }
    fifo.write_line("one");
    // Task 0 is handed out once its line is read; its result, before the next line, is
    // shown by SlowProducer above: here only the signal matters.
    ASSERT_TRUE(shows(*coordinator, "== " + std::string(param.mode), std::chrono::seconds(20))) << coordinator->err();
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the run now waits for the next line
    coordinator->signal(param.signo);
    // Far longer than ending a run with nothing running takes; the producer never writes again.
    const Output output = coordinator->wait(std::chrono::seconds(20));
    EXPECT_EQ(output.exit_code, param.exit_code) << output.err;
    EXPECT_NE(output.out.find("(interrupted)"), std::string::npos) << output.out;
}

INSTANTIATE_TEST_SUITE_P(Loop, SignalWhileWaiting,
                         ::testing::Values(SignalCase{"processes", SIGTERM, 143}, SignalCase{"threads", SIGTERM, 143},
                                           SignalCase{"sequential", SIGTERM, 143}, SignalCase{"processes", SIGINT, 130},
                                           SignalCase{"processes", SIGTERM, 143, true},
                                           SignalCase{"threads", SIGINT, 130, true}),
                         [](const auto& param_info) {
                             const SignalCase& param = param_info.param;
                             return std::string(param.mode) + (param.signo == SIGINT ? "_SIGINT" : "_SIGTERM") +
                                    (param.stdin ? "_stdin" : "_fifo");
                         });

// ---- a stopped fork server ----

// A worker dies while the fork server is stopped: its replacement waits for the server (or,
// after ProcessPool::kForkReplyTimeout, is exec'd), but the other worker goes on hearing
// heartbeats and finishes its task at its first attempt. The server is continued after.
TEST(StoppedForkServer, DoesNotCostAHealthyWorker) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "sanitized builds exec their workers (decision 104)";
#endif
    testing::TempDir tmp;
    const fs::path plan = tmp / "plan.jsonl";
    std::ofstream(plan) << "{\"kind\":\"sleep\",\"seconds\":6}\n{\"kind\":\"sleep\",\"seconds\":6}\n";
    const fs::path journal = tmp / "results.jsonl";
    testing::Running coordinator("coordinator", {"--plan", plan.string(), "--mode", "processes", "--workers", "2",
                                                 "--results", journal.string()});
    pid_t server = -1;
    std::vector<pid_t> workers;
    ASSERT_TRUE(testing::eventually(
        [&] {
            server = testing::fork_server_of(coordinator.pid());
            workers = testing::workers_of(coordinator.pid());
            return server > 0 && workers.size() == 2 && coordinator.err().find("cancel a task") != std::string::npos;
        },
        std::chrono::seconds(20)));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));  // both hold their task
    ASSERT_EQ(::kill(server, SIGSTOP), 0);
    ASSERT_EQ(::kill(workers[0], SIGKILL), 0);
    // Longer than the heartbeat timeout (2 s): a loop waiting on the server would have lost workers[1].
    std::this_thread::sleep_for(std::chrono::seconds(4));
    EXPECT_TRUE(testing::process_exists(workers[1])) << coordinator.err();
    ::kill(server, SIGCONT);
    const Output output = coordinator.wait(std::chrono::seconds(60));
    EXPECT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(output.err.find("silent"), std::string::npos) << output.err;
    const auto results = testing::read_result_lines(journal);
    ASSERT_EQ(results.size(), 2u) << output.err;
    int first_attempts = 0;
    for (const json& result : results) {
        EXPECT_TRUE(result.value("ok", false)) << result.dump();
        if (result.value("attempt", 0) == 1) ++first_attempts;
    }
    EXPECT_EQ(first_attempts, 1) << "the healthy worker's task ran again";
}

// ---- inputs bounded and counted ----

// The list loses its lines while the run reads it (the first task empties it): the run
// ends in an error naming the file, not in "N tasks, a few ok, 0 failed" and exit 0.
TEST(Inputs, AListThatShrinksUnderTheRunIsAnErrorNamingTheFile) {
    testing::TempDir tmp;
    const fs::path list = tmp / "list.txt";
    {
        std::ofstream out(list);
        for (int i = 0; i < 2000; ++i) out << std::string(200, 'a') << i << "\n";  // far more than one read
    }
    const Output output = testing::run_binary("coordinator", {"--command", ": > '" + list.string() + "' #", "--inputs",
                                                              list.string(), "--mode", "sequential"});
    EXPECT_EQ(output.exit_code, 2) << output.err;
    EXPECT_NE(output.err.find(list.string() + ":"), std::string::npos) << output.err;
    EXPECT_NE(output.err.find("changed under the run"), std::string::npos) << output.err;
}

// One line of 64 MiB: refused as it is read, FILE:LINE in the message, and never held
// whole (the largest process of the run stays well under the line's size).
TEST(Inputs, ALongLineIsRefusedWithoutBeingHeld) {
    testing::TempDir tmp;
    const fs::path list = tmp / "long.txt";
    {
        std::ofstream out(list, std::ios::binary);
        const std::string chunk(1 << 20, 'x');
        for (int i = 0; i < 64; ++i) out << chunk;
        out << "\n";
    }
    for (const bool from_stdin : {false, true}) {
        const std::string inputs = from_stdin ? "-" : list.string();
        const std::string name = from_stdin ? "stdin" : list.string();
        const Output output =
            run_shell(fmt::format("{} \"$COORDINATOR\" --command 'echo {{}}' --inputs {} --mode processes",
                                  from_stdin ? "cat '" + list.string() + "' |" : "", inputs));
        EXPECT_EQ(output.exit_code, 2) << output.err;
        EXPECT_NE(output.err.find(name + ":1: a line of more than"), std::string::npos) << output.err;
    }
    rusage usage{};
    ASSERT_EQ(::getrusage(RUSAGE_CHILDREN, &usage), 0);
#if defined(__SANITIZE_ADDRESS__)
    // ASan's shadow memory and quarantine of freed blocks: a bound that still tells a line
    // held whole (8 x 64 MiB before the fix) from one read in 4 MiB pieces.
    constexpr long kMaxRssKiB = 320 * 1024;
#else
    constexpr long kMaxRssKiB = 48 * 1024;
#endif
    EXPECT_LT(usage.ru_maxrss, kMaxRssKiB) << "KiB: a process of the run held the line";
}

}  // namespace
}  // namespace taskfarm
