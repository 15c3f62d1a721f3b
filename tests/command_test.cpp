// The command task type: replacement strings and quoting, what a command records (exit
// status, signal, output, environment), the console's grouped output, and the process
// group that ends with its task: on a timeout, a stop, a killed worker or a killed
// coordinator, checked by pid.

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "command/child.hpp"
#include "command/template.hpp"
#include "command/words.hpp"
#include "command_groups.hpp"
#include "parallel_output.hpp"
#include "support.hpp"

namespace taskfarm {
namespace {

using nlohmann::json;
using testing::Output;
using testing::run_binary;

void write_file(const std::filesystem::path& path, const std::string& text) { std::ofstream(path) << text; }

TaskResult run_command(Params params, const Json& settings = Json::object(), double timeout_s = 0,
                       std::stop_token stop = {}) {
    const TaskSpec task = testing::task_of("command", testing::type("command")->parse(params), 5, timeout_s);
    RunEnv env;
    env.worker = "t1";
    env.mode = "threads";
    env.stop = std::move(stop);
    env.settings = &settings;
    return run_task(task, 2, env);
}

// A shell script that starts two sleeps (one of them in a subshell of its own, so a
// grandchild of the shell) and writes the pids of the sleeps and of the shell to `pids`.
std::string process_tree(const std::filesystem::path& pids, bool ignore_sigterm = false) {
    const std::string file = command::shell_quote(pids.string());
    return std::string(ignore_sigterm ? "trap '' TERM; " : "") + "(sleep 300 & echo $! >> " + file +
           "; wait) & sleep 300 & echo $! >> " + file + "; echo $$ >> " + file + "; wait";
}

std::vector<pid_t> read_pids(const std::filesystem::path& path) {
    std::vector<pid_t> pids;
    std::istringstream in(testing::read_file(path));
    for (pid_t pid = 0; in >> pid;) pids.push_back(pid);
    return pids;
}

// The three pids of process_tree(), once it has written them all.
std::vector<pid_t> wait_for_tree(const std::filesystem::path& path) {
    std::vector<pid_t> pids;
    testing::eventually([&] { return (pids = read_pids(path)).size() == 3; }, std::chrono::seconds(30));
    EXPECT_EQ(pids.size(), 3u) << testing::read_file(path);
    return pids;
}

// Whether every pid is gone; waits a little, since a guardian acts after its caller's death.
bool all_gone(const std::vector<pid_t>& pids) {
    return testing::eventually(
        [&] { return std::none_of(pids.begin(), pids.end(), [](pid_t pid) { return testing::process_exists(pid); }); },
        std::chrono::seconds(20));
}

// As GNU parallel: a value is quoted only where the shell would change it.
TEST(CommandTemplate, EachReplacementIsQuotedWhereTheShellWouldChangeIt) {
    EXPECT_EQ(command::expand("{} {.} {/} {//} {/.} {#}", "dir/sub/x.tar.gz", 7),
              "dir/sub/x.tar.gz dir/sub/x.tar x.tar.gz dir/sub x.tar 7");
    EXPECT_EQ(command::expand("gzip -k {}", "a b.txt", 1), "gzip -k 'a b.txt'");
    EXPECT_EQ(command::expand("echo {//} {.}", "x", 1), "echo . x");
    EXPECT_EQ(command::expand("echo {.} {//}", "/.bashrc", 1), "echo /.bashrc /");
    EXPECT_EQ(command::expand("echo {x} {", "a", 1), "echo {x} { a");
    EXPECT_EQ(command::expand("echo \"value={}\" $(( {} * 2 ))", "3", 1), "echo \"value=3\" $(( 3 * 2 ))");
    for (const std::string hostile : {"a b", "$(x)", "`x`", "a;b", "*", "~", "a=b", "x'y", "a\nb", "-a,b", "\\", "é"})
        EXPECT_EQ(command::expand("echo {}", hostile, 1), "echo " + command::shell_quote(hostile)) << hostile;
}

TEST(CommandTemplate, WithoutAReplacementStringTheInputIsAppended) {
    EXPECT_EQ(command::expand("echo", "it's $(rm -rf ~)", 1), "echo 'it'\\''s $(rm -rf ~)'");
    EXPECT_EQ(command::expand("echo {#}", "a", 3), "echo 3");
    EXPECT_EQ(command::expand("echo", "", 1), "echo ''");
    EXPECT_EQ(command::expand("echo", "plain-1.x/y", 1), "echo plain-1.x/y");
}

// A shell command of plain words is exec'd without /bin/sh, as the shell would split and
// unquote it; anything the shell could read differently is left to it (issue 29).
TEST(CommandWords, PlainWordsAreSplitAndUnquotedAsTheShellWould) {
    using Words = std::vector<std::string>;
    EXPECT_EQ(command::plain_words("true"), Words{"true"});
    EXPECT_EQ(command::plain_words("true '17'"), (Words{"true", "17"}));  // as `xargs -n 1 true` runs it
    EXPECT_EQ(command::plain_words(" \tgzip -9  'a b.txt' "), (Words{"gzip", "-9", "a b.txt"}));
    EXPECT_EQ(command::plain_words("grep 'it'\\''s' f"), (Words{"grep", "it's", "f"}));
    EXPECT_EQ(command::plain_words("cp a\\ b ''"), (Words{"cp", "a b", ""}));
    EXPECT_EQ(command::plain_words("./run --x=1 a,b:c+d@e%f 'x=$(y);*'"),
              (Words{"./run", "--x=1", "a,b:c+d@e%f", "x=$(y);*"}));
    EXPECT_EQ(command::plain_words("'/bin/true'"), Words{"/bin/true"});
    EXPECT_EQ(command::plain_words(command::expand("wc -c {}", "a'b $(c) \"d\\n", 1)),
              (Words{"wc", "-c", "a'b $(c) \"d\\n"}));
    for (const char* shell :
         {"",       "  ",         "a; b",     "a && b",    "a | b",    "a > f",  "a < f",       "a $HOME",
          "a `b`",  "a $(b)",     "a \"b\"",  "a *",       "a ?",      "a [x]",  "a {x,y}",     "a ~",
          "a ~/x",  "a # c",      "! a",      "a\nb",      "a\rb",     "X=1 a",  "a& b",        "(a)",
          "a ^b",   "a \xC3\xA9", "'a",       "a \\",      "a \\\n",   "''",     "cd /",        "exit 3",
          "echo x", "printf x",   "[ -f x ]", "test -f x", "'echo' x", "kill 1", "true --help", "false -v",
          "if",     "while",      "source f", ". f",       "exec a",   "time a"})
        EXPECT_EQ(command::plain_words(shell), std::nullopt) << shell;
}

// What the shell would have given the program (its environment, its PWD), and when the
// program cannot be exec'd, the shell after all, which says why as it did (issue 29).
TEST(Command, APlainCommandGetsWhatTheShellWouldHaveGivenIt) {
    const auto lines = [](const TaskResult& result) {
        std::istringstream in(result.value["stdout"].get<std::string>());
        std::vector<std::string> sorted;
        for (std::string line; std::getline(in, line);) sorted.push_back(line);
        std::sort(sorted.begin(), sorted.end());
        return sorted;
    };
    const TaskResult direct = run_command({{"shell", "env"}, {"env", {{"A", "1"}}}});
    const TaskResult shell = run_command({{"shell", "env; :"}, {"env", {{"A", "1"}}}});
    ASSERT_TRUE(direct.ok) << direct.error;
    ASSERT_TRUE(shell.ok) << shell.error;
    EXPECT_EQ(lines(direct), lines(shell));
    EXPECT_NE(std::find(lines(direct).begin(), lines(direct).end(), "A=1"), lines(direct).end());
    const TaskResult missing = run_command({{"shell", "no-such-program-taskfarm x"}});
    EXPECT_FALSE(missing.ok);
    EXPECT_EQ(missing.error, "exited with status 127: /bin/sh: 1: no-such-program-taskfarm: not found");
    EXPECT_EQ(missing.value["exit_code"], 127);
    const TaskResult builtin = run_command({{"shell", "cd /"}});
    EXPECT_TRUE(builtin.ok) << builtin.error;
    const TaskResult killed = run_command({{"shell", "sleep 30"}}, Json::object(), 0.3);
    EXPECT_EQ(killed.value["signal"], "SIGTERM");
}

// The guardians of a process's commands: its children that run its own program (forked,
// never exec'd), named "...-guard" (cut to 15 bytes).
std::vector<pid_t> guardians_of(pid_t caller) {
    const auto exe = [](pid_t pid) {
        std::error_code ec;
        return std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/exe", ec);
    };
    std::vector<pid_t> children = testing::children_of(caller);
    std::erase_if(children, [&](pid_t child) {
        const std::string comm = testing::read_file("/proc/" + std::to_string(child) + "/comm");
        return exe(child) != exe(caller) || comm.find("-g") == std::string::npos;
    });
    return children;
}

// One guardian per process guards every command it runs: no process per command but the
// command's own (issue 29). It is named after the process it guards.
TEST(Command, OneGuardianServesEveryCommandOfAProcess) {
    ASSERT_TRUE(run_command({{"argv", {"true"}}}).ok);
    const std::vector<pid_t> guardians = guardians_of(::getpid());
    ASSERT_EQ(guardians.size(), 1u);
    std::string cmdline = testing::read_file("/proc/" + std::to_string(guardians[0]) + "/cmdline");
    cmdline.erase(cmdline.find('\0'));
    // Cut to the space our own arguments had.
    EXPECT_TRUE(("command_test-guard " + std::to_string(::getpid())).starts_with(cmdline)) << cmdline;
    EXPECT_GE(cmdline.size(), 12u) << cmdline;
    for (int i = 0; i < 5; ++i) ASSERT_TRUE(run_command({{"shell", "true"}}).ok);
    EXPECT_EQ(guardians_of(::getpid()), guardians);
}

// A worker's commands' groups are in a file of its state directory, which its coordinator
// reads if it dies with its guardian (decision 206): a command's group is there before its
// program runs (this one copies the file), no report needed, and gone once it is reaped.
TEST(Command, AGroupIsInItsWorkersTableFileBeforeItsProgramRuns) {
    testing::TempDir dir;
    const std::string copy = (dir.path() / "copy").string();
    const pid_t child = ::fork();  // a process of its own, as a worker: its own guardian and table
    if (child == 0) {
        ::setpgid(0, 0);
        command_groups::use_table_dir(dir.path());
        command::ChildSpec spec;
        spec.argv = {"cp", command_groups::table_file(), copy};
        spec.env = {"PATH=/usr/bin:/bin"};
        int code = 3;
        try {
            code = command::run_child(spec, command::Watch{}).exit_code.value_or(4);
        } catch (...) {
        }
        std::_Exit(code);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status)) << status;
    ASSERT_EQ(WEXITSTATUS(status), 0);
    const std::vector<pid_t> groups = command_groups::groups_in_table(copy);
    ASSERT_EQ(groups.size(), 1u);
    EXPECT_NE(groups[0], child);                                          // cp's own group
    EXPECT_TRUE(command_groups::take_tables(dir.path(), child).empty());  // reaped: cleared
    std::vector<std::string> left;
    for (const auto& entry : std::filesystem::directory_iterator(dir.path()))
        left.push_back(entry.path().filename().string());
    EXPECT_EQ(left, std::vector<std::string>{"copy"});  // the table's file is removed
}

TEST(Command, AnArgvRunsWithoutAShellAndKeepsEachArgumentWhole) {
    const TaskResult result = run_command({{"argv", {"printf", "%s|", "a b", "$(x)", ""}}});
    ASSERT_TRUE(result.ok) << result.error;
    EXPECT_EQ(result.value, (json{{"exit_code", 0},
                                  {"signal", nullptr},
                                  {"stdout", "a b|$(x)||"},
                                  {"stderr", ""},
                                  {"stdout_bytes", 10},
                                  {"stderr_bytes", 0}}));
}

TEST(Command, SeesItsTaskInItsEnvironmentWithItsOwnVariablesAndDirectory) {
    testing::TempDir dir;
    const TaskResult result =
        run_command({{"shell", "echo $TASKFARM_TASK_ID $TASKFARM_ATTEMPT $TASKFARM_WORKER $TASKFARM_MODE $FOO; pwd"},
                     {"env", {{"FOO", "a b"}}},
                     {"cwd", dir.path().string()}});
    ASSERT_TRUE(result.ok) << result.error;
    EXPECT_EQ(result.value["stdout"], "5 2 t1 threads a b\n" + std::filesystem::canonical(dir.path()).string() + "\n");
}

TEST(Command, ANonZeroExitFailsWithTheLastLineOfStderrAndKeepsTheValue) {
    const TaskResult result =
        run_command({{"shell", "echo out; echo first >&2; printf 'last\\033[2J\\n\\n' >&2; exit 3"}});
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.error, "exited with status 3: last\\x1b[2J");
    EXPECT_EQ(result.value, (json{{"exit_code", 3},
                                  {"signal", nullptr},
                                  {"stdout", "out\n"},
                                  {"stderr", "first\nlast\033[2J\n\n"},
                                  {"stdout_bytes", 4},
                                  {"stderr_bytes", 16}}));
}

TEST(Command, ASignalFailsTheTaskNamingIt) {
    const TaskResult result = run_command({{"shell", "kill -SEGV $$"}});
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.error, "killed by SIGSEGV");
    EXPECT_EQ(result.value["exit_code"], nullptr);
    EXPECT_EQ(result.value["signal"], "SIGSEGV");
}

TEST(Command, AProgramThatCannotStartFailsSayingWhy) {
    TaskResult result = run_command({{"argv", {"no-such-program-taskfarm"}}});
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.error, "cannot run 'no-such-program-taskfarm': No such file or directory");
    EXPECT_EQ(result.value, nullptr);
    result = run_command({{"argv", {"true"}}, {"cwd", "/no/such/dir"}});
    EXPECT_EQ(result.error, "cannot change to directory '/no/such/dir': No such file or directory");
}

// A name is looked up in the PATH once per process and the file found is exec'd at once
// after that, as a shell's hash table does; a file that no longer runs is looked up afresh,
// and a PATH with a relative directory is searched every time (decision 286).
TEST(Command, AProgramsPathIsFoundOnceAndSearchedAgainWhenItNoLongerRuns) {
    testing::TempDir dir;
    const std::filesystem::path early = dir.path() / "early";
    const std::filesystem::path late = dir.path() / "late";
    const std::filesystem::path here = dir.path() / "here";
    for (const auto& path : {early, late, here}) std::filesystem::create_directory(path);
    const auto program = [](const std::filesystem::path& path, const std::string& says) {
        write_file(path, "#!/bin/sh\necho " + says + "\n");
        std::filesystem::permissions(path, std::filesystem::perms::owner_all);
    };
    const auto run = [&](const std::string& path, const std::string& cwd = "") {
        command::ChildSpec spec;
        spec.argv = {"taskfarm-path-probe"};
        spec.env = {"PATH=" + path};
        spec.cwd = cwd;
        try {
            return command::run_child(spec, command::Watch{}).out.head;
        } catch (const std::exception& e) {
            return std::string(e.what());
        }
    };
    const std::string path = early.string() + ":" + late.string();
    program(late / "taskfarm-path-probe", "late");
    EXPECT_EQ(run(path), "late\n");
    program(early / "taskfarm-path-probe", "early");
    EXPECT_EQ(run(path), "late\n");  // found before: not looked up again while it runs
    std::filesystem::remove(late / "taskfarm-path-probe");
    EXPECT_EQ(run(path), "early\n");  // gone: searched afresh
    std::filesystem::remove(early / "taskfarm-path-probe");
    EXPECT_EQ(run(path), "cannot run 'taskfarm-path-probe': No such file or directory");
    program(late / "taskfarm-path-probe", "late again");
    EXPECT_EQ(run(path), "late again\n");
    // "." is the command's working directory, which may differ per task: no cache.
    const std::string relative = ".:" + late.string();
    EXPECT_EQ(run(relative, here.string()), "late again\n");
    program(here / "taskfarm-path-probe", "here");
    EXPECT_EQ(run(relative, here.string()), "here\n");
}

// A program starts with every signal at its default and none blocked, whatever its caller
// ignored or handled; a disposition changed after a process's first command is reset too,
// within SignalsToReset::kRereadEvery (256) commands (decision 285).
void on_signal(int) {}

TEST(Command, AProgramStartsWithEverySignalAtItsDefaultAndNoneBlocked) {
    const pid_t child = ::fork();  // the test's own dispositions stay as they are
    if (child == 0) {
        const auto status_of = [] {
            command::ChildSpec spec;
            spec.argv = {"cat", "/proc/self/status"};
            spec.env = {"PATH=/usr/bin:/bin"};
            const std::string status = command::run_child(spec, command::Watch{}).out.head;
            std::string lines;
            for (const char* key : {"SigBlk:", "SigIgn:", "SigCgt:"})
                lines += status.substr(status.find(key), status.find('\n', status.find(key)) + 1 - status.find(key));
            return lines;
        };
        const std::string defaults =
            "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\nSigCgt:\t0000000000000000\n";
        int code = 0;
        try {
            ::signal(SIGUSR1, SIG_IGN);
            ::signal(SIGUSR2, on_signal);
            if (status_of() != defaults) code |= 1;
            // Ignored after the first command, before a re-read: a command's life depends on
            // these, and an ignored one would outlive the exec (decision 285).
            for (const int signal : {SIGPIPE, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGCHLD}) ::signal(signal, SIG_IGN);
            if (status_of() != defaults) code |= 8;
            ::signal(SIGALRM, SIG_IGN);  // after the first command, seen at a re-read
            for (int i = 0; i < 256; ++i) {
                command::ChildSpec spec;
                spec.argv = {"true"};
                spec.env = {"PATH=/usr/bin:/bin"};
                command::run_child(spec, command::Watch{});
            }
            if (status_of() != defaults) code |= 2;
        } catch (...) {
            code |= 4;
        }
        std::_Exit(code);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFEXITED(status)) << status;
    EXPECT_EQ(WEXITSTATUS(status), 0) << "1: not at default at the first command; 2: not after 256 more; 4: threw; "
                                           "8: a stop signal or SIGPIPE ignored at once kept";
}

// Bytes, not text: a stream is kept as it came (the journal keeps bytes that are not UTF-8
// exactly), cut to --max-output with no mark in it; stdout_bytes says how many there were.
TEST(Command, KeepsTheFirstMaxOutputBytesAsTheyCameAndCountsThemAll) {
    TaskResult result = run_command({{"shell", "printf 0123456789abcdef"}}, {{"max_output", 10}});
    ASSERT_TRUE(result.ok) << result.error;
    EXPECT_EQ(result.value["stdout"], "0123456789");
    EXPECT_EQ(result.value["stdout_bytes"], 16);
    EXPECT_FALSE(result.value.contains("stdout_file"));
    result = run_command({{"shell", "printf 'a\\377b\\000\\303\\251'"}});
    EXPECT_EQ(result.value["stdout"], std::string("a\xFF"
                                                  "b\0\xC3\xA9",
                                                  6));
    EXPECT_EQ(result.value["stdout_bytes"], 6);
}

// With a spill_dir, a stream longer than --max-output is all in a file there, byte for byte.
TEST(Command, AStreamOverMaxOutputGoesWholeIntoAFileOfTheSpillDir) {
    testing::TempDir dir;
    const TaskResult result = run_command(
        {{"shell", "head -c 300000 /dev/urandom > data; cat data; cat data >&2"}, {"cwd", dir.path().string()}},
        {{"max_output", 1000}, {"spill_dir", dir.path().string()}});
    ASSERT_TRUE(result.ok) << result.error;
    const std::string data = testing::read_file(dir / "data");
    ASSERT_EQ(data.size(), 300000u);
    for (const char* key : {"stdout", "stderr"}) {
        EXPECT_EQ(result.value[key].get<std::string>(), data.substr(0, 1000)) << key;
        const std::string file = result.value[std::string(key) + "_file"].get<std::string>();
        EXPECT_EQ(std::filesystem::path(file).parent_path(), dir.path()) << key;
        EXPECT_TRUE(testing::read_file(file) == data) << key;
    }
    // A short one has no file.
    const TaskResult small =
        run_command({{"shell", "echo hi"}}, {{"max_output", 1000}, {"spill_dir", dir.path().string()}});
    EXPECT_FALSE(small.value.contains("stdout_file"));
}

// The reason a task failed is what the program said last, even when its stderr was cut to
// --max-output: not the "... (N more bytes)" line that marks the cut.
// Plain output (coordinator parallel, --output plain) is never cut in silence: a stream
// whose result holds less than its count and no file of it is said on stderr, and fails.
TEST(Command, APlainOutputThatWasCutIsSaidOnStderrAndFails) {
    for (const bool file_gone : {false, true}) {
        testing::TempDir dir;
        const std::string out_path = (dir / "out").string();
        std::FILE* out = std::fopen(out_path.c_str(), "w");
        ASSERT_NE(out, nullptr);
        ParallelOutput output;
        output.named_jobs = true;
        output.add(0, ParallelJob{.command = "cat big", .tag = {}, .results_dir = {}, .stdin_path = {}, .seq = 1});
        ParallelSink sink(output, out);
        TaskResult result;
        result.id = 0;
        result.ok = true;
        result.value = {{"exit_code", 0}, {"signal", nullptr},  {"stdout", "abc"},
                        {"stderr", ""},   {"stdout_bytes", 10}, {"stderr_bytes", 0}};
        if (file_gone) result.value["stdout_file"] = (dir / "gone").string();
        ::testing::internal::CaptureStderr();
        sink.begin_mode("processes", 1);
        sink.on_result(testing::task_of("command", {{"shell", "cat big"}}), result);
        sink.flush();
        const std::string err = ::testing::internal::GetCapturedStderr();
        std::fclose(out);
        EXPECT_EQ(testing::read_file(out_path), "abc");
        EXPECT_NE(err.find("parallel: job 1: its stdout was cut to 3 of 10 bytes"), std::string::npos) << err;
        if (file_gone) {
            EXPECT_NE(err.find("cannot read"), std::string::npos) << err;
        }
        EXPECT_EQ(sink.cut(), 1u);
        EXPECT_EQ(sink.exit_status(), 1);
    }
}

TEST(Command, ACutStderrFailsWithItsLastLine) {
    const TaskResult result = run_command(
        {{"shell",
          "echo first >&2; head -c 5000 /dev/zero | tr '\\0' x >&2; echo >&2; echo 'the real reason' >&2; exit 4"}},
        {{"max_output", 100}});
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.error, "exited with status 4: the real reason");
    EXPECT_EQ(result.value["stderr"].get<std::string>().size(), 100u);
    EXPECT_GT(result.value["stderr_bytes"].get<std::uint64_t>(), 5000u);
    // A last line longer than what is kept of the end still gives its end, shortened.
    const TaskResult long_line =
        run_command({{"shell", "echo first >&2; head -c 50000 /dev/zero | tr '\\0' y >&2; echo ' end' >&2; exit 5"}},
                    {{"max_output", 100}});
    EXPECT_EQ(long_line.error.substr(0, 23), "exited with status 5: y") << long_line.error;
}

TEST(Command, ReadsBothLargeStreamsWithoutDeadlock) {
    const TaskResult result =
        run_command({{"shell", "head -c 3000000 /dev/zero | tr '\\0' e >&2; head -c 2000000 /dev/zero | tr '\\0' o"}});
    ASSERT_TRUE(result.ok) << result.error;
    EXPECT_EQ(result.value["stdout_bytes"], 2000000);
    EXPECT_EQ(result.value["stderr_bytes"], 3000000);
    EXPECT_EQ(result.value["stdout"].get<std::string>().size(), 1024u * 1024);
}

TEST(Command, ATimeoutEndsTheWholeTreeEvenWhenItIgnoresSigterm) {
    for (const bool ignore : {false, true}) {
        testing::TempDir dir;
        const TaskResult result =
            run_command({{"shell", process_tree(dir / "pids", ignore)}}, {{"command_grace_s", 1.0}}, 1.5);
        EXPECT_FALSE(result.ok);
        EXPECT_EQ(result.error, "timed out after 1.5 s");
        EXPECT_EQ(result.value["exit_code"], nullptr);
        EXPECT_EQ(result.value["signal"], ignore ? "SIGKILL" : "SIGTERM");
        const std::vector<pid_t> pids = read_pids(dir / "pids");
        EXPECT_EQ(pids.size(), 3u);
        // The group has had SIGKILL by the time run_task returns; the kernel ends it a moment later.
        EXPECT_TRUE(all_gone(pids)) << (ignore ? "TERM ignored" : "");
    }
}

TEST(Command, AStopEndsTheWholeTree) {
    testing::TempDir dir;
    std::stop_source stop;
    std::thread stopper([&] {
        wait_for_tree(dir / "pids");
        stop.request_stop();
    });
    const TaskResult result = run_command({{"shell", process_tree(dir / "pids")}}, Json::object(), 0, stop.get_token());
    stopper.join();
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.error, "cancelled");
    EXPECT_TRUE(all_gone(read_pids(dir / "pids")));
}

TEST(Command, WhatAProgramLeavesInItsGroupEndsWithIt) {
    testing::TempDir dir;
    const TaskResult result =
        run_command({{"shell", "sleep 300 & echo $! > " + command::shell_quote((dir / "pids").string())}});
    ASSERT_TRUE(result.ok) << result.error;
    const std::vector<pid_t> pids = read_pids(dir / "pids");
    ASSERT_EQ(pids.size(), 1u);
    EXPECT_TRUE(all_gone(pids));
}

TEST(CommandLine, HostileInputsReachTheProgramAsOneLiteralArgument) {
    testing::TempDir dir;
    const std::string pwned = (dir / "pwned").string();
    write_file(dir / "inputs", "$(touch " + pwned + ")\na b; touch " + pwned + "\nit's `touch " + pwned + "`\n");
    const Output output =
        run_binary("coordinator", {"--command", "printf '[%s]'", "--inputs", (dir / "inputs").string(), "--workers",
                                   "2", "--results", (dir / "r.jsonl").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_FALSE(std::filesystem::exists(pwned));
    std::map<int, std::string> printed;
    for (const json& line : testing::read_json_lines(dir / "r.jsonl")) {
        EXPECT_EQ(line["mode"], "processes");  // the one mode of a command run
        printed[line["id"].get<int>()] = line["value"]["stdout"];
    }
    EXPECT_EQ(printed, (std::map<int, std::string>{{0, "[$(touch " + pwned + ")]"},
                                                   {1, "[a b; touch " + pwned + "]"},
                                                   {2, "[it's `touch " + pwned + "`]"}}));
}

// "value={}" and $(( {} * 2 )) work for ordinary inputs, as in GNU parallel.
TEST(CommandLine, AnOrdinaryInputWorksInsideDoubleQuotesAndArithmetic) {
    testing::TempDir dir;
    write_file(dir / "inputs", "3\n");
    const Output output = run_binary("coordinator", {"--command", "echo \"value={}\" $(( {} * 2 ))", "--inputs",
                                                     (dir / "inputs").string(), "--workers", "1"});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(output.out, "value=3 6\n");
}

TEST(CommandLine, EachTasksOutputIsOneBlockUnderItsLine) {
    testing::TempDir dir;
    std::string inputs;
    for (int i = 0; i < 20; ++i) inputs += "in" + std::to_string(i) + "\n";
    write_file(dir / "inputs", inputs);
    const Output output = run_binary(
        "coordinator", {"--command", "echo out {}; echo err {} >&2; echo more {}", "--inputs",
                        (dir / "inputs").string(), "--workers", "2", "--mode", "threads", "--output", "group"});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    for (int i = 0; i < 20; ++i) {
        const std::string in = "in" + std::to_string(i);
        const std::string block = "exit 0, " + std::to_string(11 + 2 * in.size()) + " bytes of stdout, " +
                                  std::to_string(5 + in.size()) + " of stderr\n  | out " + in + "\n  | more " + in +
                                  "\n  ! err " + in + "\n";
        EXPECT_NE(output.out.find(block), std::string::npos) << in << "\n" << output.out;
    }
    const Output quiet = run_binary("coordinator", {"--command", "echo out {}", "--inputs", (dir / "inputs").string(),
                                                    "--workers", "2", "--output", "none"});
    EXPECT_EQ(quiet.out.find("out in"), std::string::npos) << quiet.out;
    ASSERT_EQ(quiet.exit_code, 0) << quiet.err;
    EXPECT_EQ(quiet.out.find("  | "), std::string::npos) << quiet.out;
    const Output tagged = run_binary("coordinator", {"--command", "echo out {}; echo err {} >&2", "--inputs",
                                                     (dir / "inputs").string(), "--workers", "2", "--output", "tag"});
    ASSERT_EQ(tagged.exit_code, 0) << tagged.err;
    EXPECT_NE(tagged.out.find(" of stderr\ntask 7  | out in7\ntask 7  ! err in7\n"), std::string::npos) << tagged.out;
}

// --output plain, the default with --command: stdout is the commands' output alone, each
// task's whole; their stderr, the result lines and the table are on stderr.
TEST(CommandLine, StdoutHoldsTheCommandsOutputAloneEachTasksWhole) {
    testing::TempDir dir;
    std::string inputs;
    for (int i = 0; i < 20; ++i) inputs += "in" + std::to_string(i) + "\n";
    write_file(dir / "inputs", inputs);
    for (const std::string mode : {"threads", "processes"}) {
        const Output output =
            run_binary("coordinator", {"--command", "echo out {}; echo err {} >&2; echo more {}", "--inputs",
                                       (dir / "inputs").string(), "--workers", "2", "--mode", mode, "--results",
                                       (dir / (mode + ".jsonl")).string()});
        ASSERT_EQ(output.exit_code, 0) << output.err;
        std::string expected_lines;
        std::vector<std::string> blocks;
        for (std::size_t at = 0; at < output.out.size(); at = output.out.find('\n', output.out.find('\n', at) + 1) + 1)
            blocks.push_back(output.out.substr(at, output.out.find('\n', output.out.find('\n', at) + 1) + 1 - at));
        std::sort(blocks.begin(), blocks.end());
        std::vector<std::string> expected;
        for (int i = 0; i < 20; ++i) {
            const std::string in = "in" + std::to_string(i);
            expected.push_back("out " + in + "\nmore " + in + "\n");
            EXPECT_NE(output.err.find("err " + in + "\n"), std::string::npos) << output.err;
        }
        std::sort(expected.begin(), expected.end());
        EXPECT_EQ(blocks, expected) << output.out;
        EXPECT_EQ(output.err.find("done at"), std::string::npos) << output.err;    // no line for an ok task
        EXPECT_NE(output.err.find("wall_s"), std::string::npos) << output.err;     // the table
        EXPECT_EQ(testing::read_json_lines(dir / (mode + ".jsonl")).size(), 20u);  // the journal as ever
    }
    // A failed task's line is on stderr, its output where it belongs.
    const Output failed = run_binary("coordinator", {"--command", "echo out {}; echo oops >&2; exit 3", "--inputs",
                                                     (dir / "inputs").string(), "--workers", "2"});
    EXPECT_EQ(failed.exit_code, 1) << failed.err;
    EXPECT_NE(failed.out.find("out in7\n"), std::string::npos) << failed.out;
    EXPECT_EQ(failed.out.find("FAILED"), std::string::npos) << failed.out;
    EXPECT_NE(failed.err.find("FAILED: exited with status 3: oops\n"), std::string::npos) << failed.err;
}

TEST(CommandLine, AFailedCommandKeepsItsExitCodeAndOutputInTheJournal) {
    testing::TempDir dir;
    write_file(dir / "plan.jsonl",
               "{\"kind\":\"command\",\"shell\":\"echo partial; echo oops >&2; exit 3\"}\n"
               "{\"kind\":\"command\",\"argv\":[\"true\"]}\n");
    const Output output = run_binary("coordinator", {"--plan", (dir / "plan.jsonl").string(), "--workers", "1",
                                                     "--results", (dir / "r.jsonl").string()});
    EXPECT_EQ(output.exit_code, 1) << output.err;
    const std::vector<json> lines = testing::read_json_lines(dir / "r.jsonl");
    ASSERT_EQ(lines.size(), 2u);
    for (const json& line : lines) {
        if (line["id"] != 0) continue;
        EXPECT_EQ(line["ok"], false);
        EXPECT_EQ(line["error"], "exited with status 3: oops");
        EXPECT_EQ(line["value"], (json{{"exit_code", 3},
                                       {"signal", nullptr},
                                       {"stdout", "partial\n"},
                                       {"stderr", "oops\n"},
                                       {"stdout_bytes", 8},
                                       {"stderr_bytes", 5}}));
    }
    EXPECT_NE(output.out.find("FAILED: exited with status 3: oops\n  | partial\n  ! oops\n"), std::string::npos)
        << output.out;
}

TEST(CommandLine, BadUsageExitsTwoNamingTheFlagOrLine) {
    testing::TempDir dir;
    Output output = run_binary("coordinator", {"--command", "echo {}"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--command: needs --inputs FILE"), std::string::npos) << output.err;
    write_file(dir / "plan.jsonl", "{\"kind\":\"command\",\"argv\":[\"true\"]}\n{\"kind\":\"command\",\"argv\":[]}\n");
    output = run_binary("coordinator", {"--plan", (dir / "plan.jsonl").string()});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("plan.jsonl:2: \"argv\" must be a non-empty array of strings"), std::string::npos)
        << output.err;
    write_file(dir / "plan.jsonl", "{\"kind\":\"command\",\"shell\":\"true\",\"argv\":[\"true\"]}\n");
    output = run_binary("coordinator", {"--plan", (dir / "plan.jsonl").string()});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("plan.jsonl:1: command needs either \"argv\""), std::string::npos) << output.err;
    output = run_binary("coordinator", {"--task", "command", "--tasks", "2"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("makes no tasks by itself"), std::string::npos) << output.err;
    output = run_binary("coordinator", {"--command", "true", "--inputs", "-", "--max-output", "2M"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--max-output"), std::string::npos) << output.err;
}

TEST(CommandLine, SeveralModesRunEveryCommandEachAndSaySo) {
    testing::TempDir dir;
    write_file(dir / "inputs", "a\n");
    const Output output = run_binary(
        "coordinator", {"--command", "echo {} >> " + command::shell_quote((dir / "ran").string()), "--inputs",
                        (dir / "inputs").string(), "--mode", "sequential,threads", "--workers", "1"});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(testing::read_file(dir / "ran"), "a\na\n");
    EXPECT_NE(output.err.find("--mode: each of the 2 modes runs every command task again"), std::string::npos)
        << output.err;
}

// A plan of one command that starts a process tree and never ends by itself.
std::filesystem::path tree_plan(const testing::TempDir& dir, bool ignore_sigterm) {
    write_file(dir / "plan.jsonl",
               json{{"kind", "command"}, {"shell", process_tree(dir / "pids", ignore_sigterm)}}.dump() + "\n");
    return dir / "plan.jsonl";
}

class TreeInMode : public ::testing::TestWithParam<std::string> {};

TEST_P(TreeInMode, ATimeoutLeavesNoProcessBehind) {
    for (const bool ignore : {false, true}) {
        testing::TempDir dir;
        write_file(
            dir / "plan.jsonl",
            json{{"kind", "command"}, {"shell", process_tree(dir / "pids", ignore)}, {"timeout_s", 2}}.dump() + "\n");
        const Output output = run_binary("coordinator", {"--plan", (dir / "plan.jsonl").string(), "--mode", GetParam(),
                                                         "--workers", "1", "--command-grace", "0.3"});
        EXPECT_EQ(output.exit_code, 1) << output.err;
        EXPECT_NE(output.out.find("FAILED: timed out after 2 s"), std::string::npos) << output.out;
        const std::vector<pid_t> pids = read_pids(dir / "pids");
        EXPECT_EQ(pids.size(), 3u);
        EXPECT_TRUE(all_gone(pids)) << (ignore ? "TERM ignored" : "");
    }
}

TEST_P(TreeInMode, SigtermOfTheCoordinatorLeavesNoProcessBehind) {
    for (const bool ignore : {false, true}) {
        testing::TempDir dir;
        // --drain-timeout 0: the drain cancels the running command at once.
        testing::Running coordinator("coordinator",
                                     {"--plan", tree_plan(dir, ignore).string(), "--mode", GetParam(), "--workers", "1",
                                      "--command-grace", "0.3", "--drain-timeout", "0"});
        const std::vector<pid_t> pids = wait_for_tree(dir / "pids");
        coordinator.signal(SIGTERM);
        const Output output = coordinator.wait();
        EXPECT_EQ(output.exit_code, 143) << output.err;
        EXPECT_TRUE(all_gone(pids)) << (ignore ? "TERM ignored" : "");
    }
}

TEST_P(TreeInMode, SigkillOfTheCoordinatorLeavesNoProcessBehind) {
    testing::TempDir dir;
    testing::Running coordinator("coordinator", {"--plan", tree_plan(dir, true).string(), "--mode", GetParam(),
                                                 "--workers", "1", "--command-grace", "0.3"});
    const std::vector<pid_t> pids = wait_for_tree(dir / "pids");
    coordinator.signal(SIGKILL);
    coordinator.wait();
    EXPECT_TRUE(all_gone(pids));
}

std::string mode_name(const ::testing::TestParamInfo<std::string>& param) { return param.param; }

INSTANTIATE_TEST_SUITE_P(Modes, TreeInMode, ::testing::Values("sequential", "threads", "processes"), mode_name);

TEST(CommandLine, AKilledWorkerLeavesNoProcessBehind) {
    testing::TempDir dir;
    testing::Running coordinator("coordinator", {"--plan", tree_plan(dir, true).string(), "--mode", "processes",
                                                 "--workers", "1", "--max-attempts", "1", "--command-grace", "0.3"});
    const std::vector<pid_t> pids = wait_for_tree(dir / "pids");
    std::vector<pid_t> workers = testing::workers_of(coordinator.pid());
    workers.erase(
        std::remove_if(workers.begin(), workers.end(), [](pid_t pid) { return !testing::runs_program(pid, "worker"); }),
        workers.end());
    ASSERT_EQ(workers.size(), 1u);
    ::kill(workers[0], SIGKILL);
    const Output output = coordinator.wait();
    EXPECT_EQ(output.exit_code, 1) << output.err;
    EXPECT_TRUE(all_gone(pids));
}

// The worker that runs the command of tree_plan(), and the command's guardian: the worker's
// child that is not the shell (one of `pids`: the lines come in any order).
std::pair<pid_t, pid_t> worker_and_guardian(pid_t coordinator, const std::vector<pid_t>& pids) {
    std::vector<pid_t> workers = testing::workers_of(coordinator);
    std::erase_if(workers, [](pid_t pid) { return !testing::runs_program(pid, "worker"); });
    if (workers.size() != 1 || pids.size() != 3) return {-1, -1};
    std::vector<pid_t> children = testing::children_of(workers[0]);
    std::erase_if(children, [&](pid_t child) { return std::find(pids.begin(), pids.end(), child) != pids.end(); });
    return {workers[0], children.size() == 1 ? children[0] : -1};
}

// SIGKILLs whatever of `pids` is left, so that a failed test leaves no sleep behind.
void kill_left(const std::vector<pid_t>& pids) {
    for (pid_t pid : pids)
        if (pid > 1 && testing::process_exists(pid)) ::kill(pid, SIGKILL);
}

// `pkill -9 worker` kills the worker and the command's guardian together: the coordinator,
// which knows the command's process group from the worker, ends it (issue 26, class 7).
TEST(CommandLine, AWorkerKilledWithItsGuardianLeavesNoProcessBehind) {
    testing::TempDir dir;
    testing::Running coordinator("coordinator", {"--plan", tree_plan(dir, true).string(), "--mode", "processes",
                                                 "--workers", "1", "--max-attempts", "1"});
    const std::vector<pid_t> pids = wait_for_tree(dir / "pids");
    const auto [worker, guardian] = worker_and_guardian(coordinator.pid(), pids);
    ASSERT_GT(worker, 0);
    ASSERT_GT(guardian, 0);
    ::kill(guardian, SIGKILL);  // first, so that it cannot act for the worker
    ::kill(worker, SIGKILL);
    const Output output = coordinator.wait();
    EXPECT_EQ(output.exit_code, 1) << output.err;
    EXPECT_TRUE(all_gone(pids)) << output.err;
    kill_left(pids);
}

// A guardian killed while a command runs is replaced at once by one that guards the same
// groups: when the coordinator that runs the command dies, the new guardian ends the tree.
TEST(CommandLine, AKilledGuardianIsReplacedAndEndsTheTreeWhenItsCallerDies) {
    testing::TempDir dir;
    testing::Running coordinator(
        "coordinator", {"--plan", tree_plan(dir, true).string(), "--mode", "sequential", "--command-grace", "0.3"});
    const std::vector<pid_t> pids = wait_for_tree(dir / "pids");
    const std::vector<pid_t> first = guardians_of(coordinator.pid());
    ASSERT_EQ(first.size(), 1u) << coordinator.err();
    ::kill(first[0], SIGKILL);
    std::vector<pid_t> second;
    EXPECT_TRUE(testing::eventually(
        [&] {
            second = guardians_of(coordinator.pid());
            return second.size() == 1 && second != first;
        },
        std::chrono::seconds(10)));
    coordinator.signal(SIGKILL);
    coordinator.wait();
    EXPECT_TRUE(all_gone(pids));
    kill_left(pids);
}

// A command that ignores SIGTERM past --task-timeout gets the whole grace (2 s by default)
// from its worker before SIGKILL: the coordinator waits for that, and kills neither the
// worker nor the task's result (issue 26, class 7).
TEST(CommandLine, ATimedOutCommandThatIgnoresSigtermGetsTheWholeGrace) {
    testing::TempDir dir;
    write_file(dir / "inputs", "x\n");
    const std::string command = ": {}; trap '' TERM; echo $$ > " + command::shell_quote((dir / "pid").string()) +
                                "; while :; do sleep 0.05; done";
    const Output output =
        run_binary("coordinator", {"--command", command, "--inputs", (dir / "inputs").string(), "--task-timeout", "1",
                                   "--workers", "1", "--max-attempts", "1", "--results", (dir / "r.jsonl").string()});
    EXPECT_EQ(output.exit_code, 1) << output.err;
    const std::vector<json> lines = testing::read_json_lines(dir / "r.jsonl");
    ASSERT_EQ(lines.size(), 1u) << output.err;  // no "worker lost" event
    EXPECT_EQ(lines[0]["error"], "timed out after 1 s") << output.err;
    EXPECT_EQ(lines[0]["value"]["signal"], "SIGKILL");
    EXPECT_EQ(output.err.find("did not stop it"), std::string::npos) << output.err;
    EXPECT_TRUE(all_gone(read_pids(dir / "pid")));
}

// In ps, the guardian is named as what it is, not as a second worker, with the worker whose
// commands it guards.
TEST(CommandLine, TheGuardianIsNamedInPs) {
    testing::TempDir dir;
    testing::Running coordinator("coordinator", {"--plan", tree_plan(dir, false).string(), "--mode", "processes",
                                                 "--workers", "1", "--drain-timeout", "0"});
    const std::vector<pid_t> pids = wait_for_tree(dir / "pids");
    const auto [worker, guardian] = worker_and_guardian(coordinator.pid(), pids);
    ASSERT_GT(guardian, 0);
    EXPECT_EQ(testing::read_file("/proc/" + std::to_string(guardian) + "/comm"), "worker-guard\n");
    std::string cmdline = testing::read_file("/proc/" + std::to_string(guardian) + "/cmdline");
    std::replace(cmdline.begin(), cmdline.end(), '\0', ' ');
    EXPECT_EQ(cmdline.substr(0, 13), "worker-guard ") << cmdline;
    EXPECT_EQ(std::atoi(cmdline.c_str() + 13), worker) << cmdline;
    coordinator.signal(SIGTERM);
    coordinator.wait();
    EXPECT_TRUE(all_gone(pids));
}

}  // namespace
}  // namespace taskfarm
