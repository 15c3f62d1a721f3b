// Issue 26, classes 6 and 4, with real coordinators, workers, commands and a second local
// user (nobody, through setpriv): one signal delivered twice is one request, a terminal's
// Ctrl-C cancels and says so, and `coordinator cancel` trusts only the caller's own control
// directory and socket, and answers with what the run did.

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "support.hpp"

extern char** environ;

namespace taskfarm {
namespace {

using testing::Output;
using testing::run_binary;

constexpr uid_t kNobody = 65534;
constexpr gid_t kNogroup = 65534;

using testing::lines_of;
using testing::numbers;

// A process started as a shell starts a job: in a process group of its own (what a terminal's
// Ctrl-C and timeout(1)'s second kill reach), with `env` added to the environment.
class Job {
public:
    Job(std::vector<std::string> argv, std::vector<std::string> env = {}) {
        std::vector<char*> args;
        for (std::string& arg : argv) args.push_back(arg.data());
        args.push_back(nullptr);
        std::vector<std::string> environment = std::move(env);
        for (char** at = environ; *at; ++at) {
            const std::string entry = *at;
            const std::string name = entry.substr(0, entry.find('=') + 1);
            if (std::none_of(environment.begin(), environment.end(),
                             [&](const std::string& e) { return e.starts_with(name); }))
                environment.push_back(entry);
        }
        std::vector<char*> envp;
        for (std::string& entry : environment) envp.push_back(entry.data());
        envp.push_back(nullptr);
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
        const std::string out = (dir_ / "stdout").string();
        const std::string err = (dir_ / "stderr").string();
        posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
        posix_spawnattr_setpgroup(&attr, 0);
        const int rc = ::posix_spawn(&pid_, args[0], &actions, &attr, args.data(), envp.data());
        posix_spawnattr_destroy(&attr);
        posix_spawn_file_actions_destroy(&actions);
        if (rc != 0) throw std::runtime_error(std::string("cannot start ") + args[0]);
    }
    ~Job() {
        if (pid_ > 0) {
            ::kill(-pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
    }
    Job(const Job&) = delete;
    Job& operator=(const Job&) = delete;

    pid_t pid() const { return pid_; }
    std::string out() const { return testing::read_file(dir_ / "stdout"); }
    std::string err() const { return testing::read_file(dir_ / "stderr"); }
    Output wait(std::chrono::seconds limit) {
        const auto deadline = std::chrono::steady_clock::now() + limit;
        int status = 0;
        while (::waitpid(pid_, &status, WNOHANG) == 0) {
            if (std::chrono::steady_clock::now() > deadline) {
                ::kill(-pid_, SIGKILL);
                ::waitpid(pid_, &status, 0);
                break;
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        pid_ = -1;
        return {WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), out(), err()};
    }

private:
    testing::TempDir dir_;
    pid_t pid_ = -1;
};

std::vector<std::string> coordinator(std::vector<std::string> args) {
    args.insert(args.begin(), testing::bin("coordinator").string());
    return args;
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// timeout(1) ends a command with SIGTERM to it and then to its process group: the coordinator
// gets SIGTERM twice. It must drain once: the two running tasks finish and are ok.
TEST(Signals, OneSigtermDeliveredTwiceDrainsAndTheRunningTasksFinish) {
    testing::TempDir dir;
    const auto started = dir / "started";
    const auto done = dir / "done";
    const auto journal = dir / "journal.jsonl";
    const std::string command =
        fmt::format("echo {{}} >> {}; sleep 1.5; echo {{}} >> {}", started.string(), done.string());
    Job job(coordinator({"--mode", "processes", "--workers", "2", "--command", command, "--inputs",
                         numbers(dir, 4).string(), "--output", "none", "--results", journal.string()}));
    ASSERT_TRUE(testing::eventually([&] { return lines_of(started).size() == 2; }, std::chrono::seconds(30)))
        << job.err();
    // As timeout(1) does, but the second only once the first was taken (else the kernel merges them).
    ::kill(job.pid(), SIGTERM);
    ASSERT_TRUE(testing::eventually([&] { return has(job.err(), "SIGTERM received"); }, std::chrono::seconds(10)));
    ::kill(-job.pid(), SIGTERM);
    const Output output = job.wait(std::chrono::seconds(60));
    EXPECT_EQ(output.exit_code, 143) << output.err;
    EXPECT_TRUE(has(output.err, "the same request, still draining")) << output.err;
    EXPECT_FALSE(has(output.err, "cancelling")) << output.err;
    EXPECT_EQ(lines_of(done).size(), 2u) << "a running task did not finish: " << output.err;
    std::size_t ok = 0;
    for (const auto& line : testing::read_json_lines(journal)) ok += line.at("ok").get<bool>() ? 1 : 0;
    EXPECT_EQ(ok, 2u) << output.err;
}

// The same through timeout(1) itself, whose two kills come microseconds apart.
TEST(Signals, TimeoutsSigtermDrainsTheRun) {
    testing::TempDir dir;
    const auto started = dir / "started";
    const auto done = dir / "done";
    const std::string command =
        fmt::format("echo {{}} >> {}; sleep 1.5; echo {{}} >> {}", started.string(), done.string());
    for (int round = 0; round < 3; ++round) {
        SCOPED_TRACE(round);
        std::filesystem::remove(started);
        std::filesystem::remove(done);
        std::vector<std::string> argv = coordinator({"--mode", "processes", "--workers", "2", "--command", command,
                                                     "--inputs", numbers(dir, 4).string(), "--output", "none"});
        argv.insert(argv.begin(), {"/usr/bin/timeout", "60"});
        Job job(argv);
        ASSERT_TRUE(testing::eventually([&] { return lines_of(started).size() == 2; }, std::chrono::seconds(30)))
            << job.err();
        ::kill(job.pid(), SIGTERM);  // timeout's pid: it signals the coordinator, then its group
        const Output output = job.wait(std::chrono::seconds(60));
        EXPECT_EQ(output.exit_code, 143) << output.err;
        EXPECT_EQ(lines_of(done).size(), 2u) << "a running task did not finish: " << output.err;
    }
}

class CtrlCInMode : public ::testing::TestWithParam<std::string> {};

// A terminal's Ctrl-C reaches the whole foreground process group, twice if pressed twice.
// The coordinator cancels the running commands and says so (never "draining ... finish"),
// the workers and commands do not act on it on their own, and a second press within a
// second is the same request: the run still ends with its table.
TEST_P(CtrlCInMode, CtrlCOnTheTerminalCancelsSaysSoAndASecondPressIsTheSameRequest) {
    testing::TempDir dir;
    const auto started = dir / "started";
    // Ignores SIGTERM, so the stop takes command_grace_s: the second Ctrl-C comes during it.
    const std::string command = fmt::format("echo {{}} $$ >> {}; trap '' TERM; sleep 300", started.string());
    Job job(coordinator({"--mode", GetParam(), "--workers", "2", "--command", command, "--inputs",
                         numbers(dir, 4).string(), "--command-grace", "1.5", "--output", "group"}));
    ASSERT_TRUE(testing::eventually([&] { return lines_of(started).size() == 2; }, std::chrono::seconds(30)))
        << job.err();
    ::kill(-job.pid(), SIGINT);
    ASSERT_TRUE(testing::eventually([&] { return has(job.err(), "SIGINT received"); }, std::chrono::seconds(10)));
    ::kill(-job.pid(), SIGINT);
    const Output output = job.wait(std::chrono::seconds(60));
    EXPECT_EQ(output.exit_code, 130) << output.err;
    EXPECT_TRUE(has(output.err, "the running ones are cancelled")) << output.err;
    EXPECT_FALSE(has(output.err, "draining")) << output.err;
    EXPECT_TRUE(has(output.err, "within 1 s: the same request, still stopping")) << output.err;
    EXPECT_FALSE(has(output.err, "died")) << "a worker acted on the Ctrl-C itself: " << output.err;
    EXPECT_TRUE(has(output.out, "(interrupted)")) << "no table: " << output.out;
    for (const std::string& line : lines_of(started)) {
        const pid_t shell = std::stoi(line.substr(line.find(' ') + 1));
        EXPECT_FALSE(testing::process_exists(shell)) << "a cancelled command is still there: " << line;
    }
}

INSTANTIATE_TEST_SUITE_P(Modes, CtrlCInMode, ::testing::Values("threads", "processes"));

// A directory another user can reach (the test runs as root): mode 0711.
void let_others_through(const testing::TempDir& dir) { ::chmod(dir.path().c_str(), 0711); }

// A shared TMPDIR (1777, like /tmp) where nobody plants a symlink named like the victim's
// control directory, to the control directory of a run of nobody's own; and a directory of
// nobody's next to the victim's real one. The victim's cancel skips both.
TEST(Cancel, ASymlinkOrDirectoryPlantedByAnotherUserIsSkipped) {
    if (::getuid() != 0) GTEST_SKIP() << "needs root, to run a coordinator as nobody through setpriv";
    testing::TempDir dir;
    let_others_through(dir);
    const auto victim_tmp = dir / "victim";  // the victim's TMPDIR
    const auto shared_tmp = dir / "shared";  // a TMPDIR every user writes
    const auto nobody_tmp = dir / "nobody";  // nobody's own TMPDIR
    std::filesystem::create_directory(victim_tmp);
    std::filesystem::create_directory(shared_tmp);
    std::filesystem::create_directory(nobody_tmp);
    ::chmod(shared_tmp.c_str(), 01777);
    ASSERT_EQ(::chown(nobody_tmp.c_str(), kNobody, kNogroup), 0);
    const auto started = dir / "started";
    const auto journal = dir / "journal.jsonl";
    Job victim(coordinator({"--mode", "threads", "--workers", "2", "--command",
                            fmt::format("echo {{}} >> {}; exec sleep 300", started.string()), "--inputs",
                            numbers(dir, 2).string(), "--results", journal.string(), "--command-grace", "0.3"}),
               {"TMPDIR=" + victim_tmp.string()});
    Job fake({"/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
              testing::bin("coordinator").string(), "--mode", "threads", "--workers", "1", "--task", "sleep", "--tasks",
              "2", "--duration", "300"},
             {"TMPDIR=" + nobody_tmp.string()});
    ASSERT_TRUE(testing::eventually([&] { return lines_of(started).size() == 2; }, std::chrono::seconds(30)))
        << victim.err();
    std::filesystem::path fake_dir;
    ASSERT_TRUE(testing::eventually(
        [&] {
            std::error_code ec;
            for (const auto& entry : std::filesystem::directory_iterator(nobody_tmp, ec))
                if (std::filesystem::exists(entry.path() / "control")) fake_dir = entry.path();
            return !fake_dir.empty();
        },
        std::chrono::seconds(30)))
        << fake.err();
    const std::string pid = std::to_string(victim.pid());

    // nobody's symlinks in the shared TMPDIR: one named like the victim's control directory,
    // to the shared TMPDIR itself (a directory the victim owns, as root owns /tmp), and one
    // there named `control`, to the socket of nobody's run. On main, cancel followed them,
    // nobody's run answered ok, and nothing of the victim's was cancelled.
    const auto link = shared_tmp / fmt::format("taskfarm-run-{}-AAAAAA", pid);
    std::filesystem::create_directory_symlink(shared_tmp, link);
    ASSERT_EQ(::lchown(link.c_str(), kNobody, kNogroup), 0);
    std::filesystem::create_symlink(fake_dir / "control", shared_tmp / "control");
    ASSERT_EQ(::lchown((shared_tmp / "control").c_str(), kNobody, kNogroup), 0);
    const Output followed = run_binary(
        "/usr/bin/env",
        {"TMPDIR=" + shared_tmp.string(), testing::bin("coordinator").string(), "cancel", "--run", pid, "0"});
    EXPECT_EQ(followed.exit_code, 2) << followed.out << followed.err;
    EXPECT_TRUE(has(followed.err, "skipping '" + link.string() + "': a symbolic link")) << followed.err;
    EXPECT_FALSE(has(followed.out, "cancelled")) << followed.out;
    EXPECT_TRUE(testing::read_json_lines(journal).empty()) << "the victim's task ended";
    EXPECT_FALSE(has(fake.err(), "coordinator cancel: task") || has(fake.err(), "cancelling task"))
        << "nobody's run was asked: " << fake.err();

    // A directory of nobody's next to the victim's own: on main, cancel refused ("2 control
    // directories match"); now it is skipped and the victim's run cancels task 0.
    const auto planted = victim_tmp / fmt::format("taskfarm-run-{}-BBBBBB", pid);
    std::filesystem::create_directory(planted);
    ::chmod(planted.c_str(), 0755);
    ASSERT_EQ(::chown(planted.c_str(), kNobody, kNogroup), 0);
    const Output cancelled = run_binary(
        "/usr/bin/env",
        {"TMPDIR=" + victim_tmp.string(), testing::bin("coordinator").string(), "cancel", "--run", pid, "0"});
    EXPECT_EQ(cancelled.exit_code, 0) << cancelled.out << cancelled.err;
    EXPECT_TRUE(has(cancelled.err, fmt::format("skipping '{}': owned by uid {}", planted.string(), kNobody)))
        << cancelled.err;
    EXPECT_TRUE(has(cancelled.out, fmt::format("run of pid {}: task 0: cancelled: running", pid))) << cancelled.out;
    ASSERT_TRUE(
        testing::eventually([&] { return testing::read_json_lines(journal).size() == 1; }, std::chrono::seconds(30)))
        << victim.err();
    EXPECT_EQ(testing::read_json_lines(journal).at(0).at("id"), 0);
    EXPECT_EQ(testing::read_json_lines(journal).at(0).value("cancelled", false), true);

    // The directory given by path: a symlink, or another user's, is refused.
    const Output by_link = run_binary("coordinator", {"cancel", "--run", link.string(), "1"});
    EXPECT_EQ(by_link.exit_code, 2) << by_link.err;
    EXPECT_TRUE(has(by_link.err, "is a symbolic link")) << by_link.err;
    const Output by_planted = run_binary("coordinator", {"cancel", "--run", planted.string(), "1"});
    EXPECT_EQ(by_planted.exit_code, 2) << by_planted.err;
    EXPECT_TRUE(has(by_planted.err, "not by this user")) << by_planted.err;
}

// The answer is what the run did with each id, from the point where it applied it: a task
// held by a worker is stopped; an id not in the plan is not cancelled, and the command says
// so and exits 1 (on main: "asked the run ... to cancel" and 0 for both).
TEST(Cancel, TheAnswerSaysWhatTheRunDidWithEachTask) {
    testing::TempDir dir;
    const auto started = dir / "started";
    const auto journal = dir / "journal.jsonl";
    testing::Running run("coordinator", {"--command", fmt::format("echo {{}} >> {}; exec sleep 300", started.string()),
                                         "--inputs", numbers(dir, 3).string(), "--mode", "processes", "--workers", "1",
                                         "--results", journal.string(), "--command-grace", "0.3"});
    ASSERT_TRUE(testing::eventually([&] { return lines_of(started).size() == 1; }, std::chrono::seconds(30)))
        << run.err();
    const std::string pid = std::to_string(run.pid());
    const Output mixed = run_binary("coordinator", {"cancel", "--run", pid, "0", "7"});
    EXPECT_EQ(mixed.exit_code, 1) << mixed.out << mixed.err;
    EXPECT_TRUE(has(mixed.out, fmt::format("run of pid {}: task 0: cancelled: held by worker w1", pid))) << mixed.out;
    EXPECT_TRUE(
        has(mixed.out, fmt::format("run of pid {}: task 7: NOT cancelled: not in this run's plan (3 tasks)", pid)))
        << mixed.out;
    const Output rest = run_binary("coordinator", {"cancel", "--run", pid, "1", "2"});
    EXPECT_EQ(rest.exit_code, 0) << rest.out << rest.err;
    const Output output = run.wait(std::chrono::seconds(60));
    EXPECT_EQ(output.exit_code, 1) << output.err;
    const auto lines = testing::read_json_lines(journal);
    EXPECT_EQ(lines.size(), 3u) << output.err;
    for (const auto& line : lines) EXPECT_EQ(line.value("cancelled", false), true) << line.dump();
}

}  // namespace
}  // namespace taskfarm
