// Hardening (issue 16): how reports reach their paths, files given twice, text from
// outside on a terminal, signals and a closed stdout, worker process groups, journals.

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "plan.hpp"
#include "protocol.hpp"
#include "sinks.hpp"
#include "support.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

namespace fs = std::filesystem;
using testing::Output;
using testing::run_binary;

const std::vector<std::string> kQuickRun{"--mode", "threads", "--workers", "2", "--tasks", "2", "--duration", "0"};

std::vector<std::string> quick_run(std::vector<std::string> more) {
    std::vector<std::string> args = kQuickRun;
    args.insert(args.end(), more.begin(), more.end());
    return args;
}

// Runs `script` with bash -c; COORDINATOR and WORKER name the binaries built here.
Output run_shell(const std::string& script) {
    ::setenv("COORDINATOR", testing::bin("coordinator").c_str(), 1);
    ::setenv("WORKER", testing::bin("worker").c_str(), 1);
    return run_binary("/bin/bash", {"-c", script});
}

void write_text(const fs::path& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// What was written to `out` (a tmpfile()), up to 4 KiB; `out` is closed.
std::string read_back_and_close(std::FILE* out) {
    std::rewind(out);
    std::string text(4096, '\0');
    text.resize(std::fread(text.data(), 1, text.size(), out));
    std::fclose(out);
    return text;
}

unsigned mode_of(const fs::path& path) {
    struct stat st {};
    EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
    return st.st_mode & 07777;
}

// ---- 1. Output files ----

TEST(Outputs, ASymlinkIsFollowedAndTheFileKeepsItsMode) {
    testing::TempDir dir;
    write_text(dir / "real.json", "old");
    ASSERT_EQ(::chmod((dir / "real.json").c_str(), 0600), 0);
    fs::create_symlink("real.json", dir / "link.json");
    const Output output = run_binary("coordinator", quick_run({"--json", (dir / "link.json").string()}));
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_TRUE(fs::is_symlink(dir / "link.json"));
    EXPECT_EQ(testing::read_json(dir / "real.json")["runs"][0]["ok"], 2);
    EXPECT_EQ(mode_of(dir / "real.json"), 0600u);
}

TEST(Outputs, ADanglingSymlinkCreatesItsTarget) {
    testing::TempDir dir;
    fs::create_symlink(dir / "made.svg", dir / "link.svg");
    const Output output = run_binary("coordinator", quick_run({"--timeline", (dir / "link.svg").string()}));
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_TRUE(fs::is_symlink(dir / "link.svg"));
    EXPECT_NE(testing::read_file(dir / "made.svg").find("<svg"), std::string::npos);
}

TEST(Outputs, AnExistingFileKeepsItsModeWhenReplaced) {
    testing::TempDir dir;
    write_text(dir / "trace.json", "old");
    ASSERT_EQ(::chmod((dir / "trace.json").c_str(), 0640), 0);
    ASSERT_EQ(run_binary("coordinator", quick_run({"--trace", (dir / "trace.json").string()})).exit_code, 0);
    EXPECT_TRUE(testing::read_json(dir / "trace.json").contains("traceEvents"));
    EXPECT_EQ(mode_of(dir / "trace.json"), 0640u);
    EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), 1);  // no temp file left
}

TEST(Outputs, DashIsStdoutAndTheResultLinesGoToStderr) {
    const Output output = run_binary("coordinator", quick_run({"--json", "-"}));
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const auto report = nlohmann::json::parse(output.out);  // the report alone
    EXPECT_EQ(report["runs"][0]["ok"], 2);
    EXPECT_NE(output.err.find("threads    task    "), std::string::npos) << output.err;
    EXPECT_NE(output.err.find("mode         workers  tasks"), std::string::npos) << output.err;
}

TEST(Outputs, DevStdoutIsWrittenThroughNotReplaced) {
    const Output output = run_binary("coordinator", quick_run({"--json", "/dev/stdout"}));
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(nlohmann::json::parse(output.out)["runs"][0]["ok"], 2);
    EXPECT_TRUE(fs::is_symlink("/dev/stdout"));
}

TEST(Outputs, AFifoIsWrittenStraightInto) {
    testing::TempDir dir;
    const fs::path fifo = dir / "report.fifo";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    std::string received;
    std::thread reader([&] { received = testing::read_file(fifo); });
    const Output output = run_binary("coordinator", quick_run({"--json", fifo.string()}));
    reader.join();
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(nlohmann::json::parse(received)["runs"][0]["ok"], 2);
    struct stat st {};
    ASSERT_EQ(::lstat(fifo.c_str(), &st), 0);
    EXPECT_TRUE(S_ISFIFO(st.st_mode));
}

TEST(Outputs, AFifoWithoutAReaderFailsTheRunInsteadOfHanging) {
    testing::TempDir dir;
    const fs::path fifo = dir / "report.fifo";
    ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
    const Output output = run_binary("coordinator", quick_run({"--json", fifo.string()}));
    EXPECT_EQ(output.exit_code, 1);
    EXPECT_NE(output.err.find(fmt::format("--json: cannot write '{}': nothing is reading from it", fifo.string())),
              std::string::npos)
        << output.err;
}

TEST(Outputs, ProcessSubstitutionWorks) {
    testing::TempDir dir;
    const Output output = run_shell(fmt::format(
        R"("$COORDINATOR" --mode threads --tasks 2 --duration 0 --json >(cat > '{}') ; status=$?; wait $!; exit $status)",
        (dir / "copy.json").string()));
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(testing::read_json(dir / "copy.json")["runs"][0]["ok"], 2);
}

TEST(Outputs, ADirectoryExitsTwoBeforeTheRun) {
    testing::TempDir dir;
    const Output output = run_binary("coordinator", quick_run({"--trace", dir.path().string()}));
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find(fmt::format("--trace: cannot write '{}': it is a directory", dir.path().string())),
              std::string::npos)
        << output.err;
    EXPECT_TRUE(output.out.empty()) << output.out;
}

TEST(Outputs, PlanAndUrlsReadStdinForDash) {
    const Output plan = run_shell(
        R"(printf '{"kind":"sleep","seconds":0}\n{"kind":"fail"}\n' | "$COORDINATOR" --mode threads --plan -)");
    EXPECT_EQ(plan.exit_code, 1) << plan.err;
    EXPECT_NE(plan.out.find("task 1: failed on purpose"), std::string::npos) << plan.out;
    const Output urls = run_shell(R"(printf 'http://127.0.0.1:9/x\nnot a url\n' | "$COORDINATOR" --urls -)");
    EXPECT_EQ(urls.exit_code, 2);
    EXPECT_NE(urls.err.find("--urls: stdin:2: 'not a url' is not an http:// or https:// URL"), std::string::npos)
        << urls.err;
}

struct SameFileCase {
    std::vector<std::string> args;  // FILE stands for one path, LINK for a symlink to it
    std::string message;
};

class SameFile : public ::testing::TestWithParam<SameFileCase> {};

TEST_P(SameFile, ExitsTwoNamingBothFlags) {
    testing::TempDir dir;
    write_text(dir / "file", "http://127.0.0.1:9/a\n");
    fs::create_symlink(dir / "file", dir / "link");
    std::vector<std::string> args;
    for (std::string arg : GetParam().args) {
        if (arg == "FILE") arg = (dir / "file").string();
        if (arg == "LINK") arg = (dir / "link").string();
        if (arg == "NEW") arg = (dir / "new.json").string();
        if (arg == "NEW2") arg = (dir / "sub" / ".." / "new.json").string();
        args.push_back(arg);
    }
    fs::create_directory(dir / "sub");
    const std::string before = testing::read_file(dir / "file");
    const Output output = run_binary("coordinator", args);
    EXPECT_EQ(output.exit_code, 2) << output.err;
    std::string expected = GetParam().message;
    for (const auto& [word, path] : {std::pair<std::string, fs::path>{"FILE", dir / "file"},
                                     {"LINK", dir / "link"},
                                     {"NEW2", dir / "sub" / ".." / "new.json"},
                                     {"NEW", dir / "new.json"}})
        for (auto at = expected.find(word); at != std::string::npos; at = expected.find(word))
            expected.replace(at, word.size(), path.string());
    EXPECT_NE(output.err.find(expected), std::string::npos) << output.err;
    EXPECT_EQ(testing::read_file(dir / "file"), before);
    EXPECT_FALSE(fs::exists(dir / "new.json"));
}

INSTANTIATE_TEST_SUITE_P(
    Hardening, SameFile,
    ::testing::Values(SameFileCase{{"--urls", "FILE", "--json", "FILE"},
                                   "--json: cannot use 'FILE': it is the same file as --urls 'FILE'"},
                      SameFileCase{{"--tasks", "1", "--json", "FILE", "--results", "FILE"},
                                   "--json: cannot use 'FILE': it is the same file as --results 'FILE'"},
                      SameFileCase{{"--tasks", "1", "--trace", "FILE", "--timeline", "LINK"},
                                   "--timeline: cannot use 'LINK': it is the same file as --trace 'FILE'"},
                      SameFileCase{{"--plan", "LINK", "--results", "FILE"},
                                   "--results: cannot use 'FILE': it is the same file as --plan 'LINK'"},
                      SameFileCase{{"--tasks", "1", "--json", "NEW", "--trace", "NEW2"},
                                   "--trace: cannot use 'NEW2': it is the same file as --json 'NEW'"},
                      SameFileCase{{"--tasks", "1", "--json", "-", "--trace", "-"},
                                   "--trace: cannot use '-': it is the same file as --json '-'"}));

TEST(Outputs, ResumeAndResultsMayNameTheSameJournal) {
    testing::TempDir dir;
    const std::string journal = (dir / "j.jsonl").string();
    ASSERT_EQ(run_binary("coordinator", quick_run({"--results", journal})).exit_code, 0);
    fs::create_symlink(journal, dir / "alias.jsonl");
    const Output output =
        run_binary("coordinator", quick_run({"--resume", journal, "--results", (dir / "alias.jsonl").string()}));
    EXPECT_EQ(output.exit_code, 0) << output.err;
}

// ---- 2. Text that reaches a terminal ----

TEST(Printable, EscapesControlBytesAndBadUtf8AndKeepsTheRest) {
    EXPECT_EQ(printable("a\x1b[2Jb"), "a\\x1b[2Jb");
    EXPECT_EQ(printable("one\ntwo\r\tthree"), "one\\ntwo\\r\\tthree");
    EXPECT_EQ(printable(std::string("nul\0tail", 8)), "nul\\x00tail");
    EXPECT_EQ(printable("del\x7f"), "del\\x7f");
    EXPECT_EQ(printable("caf\xc3\xa9 \xe2\x9c\x93"), "caf\xc3\xa9 \xe2\x9c\x93");  // UTF-8 stays
    EXPECT_EQ(printable("bad\xff\xc3"), "bad\\xff\\xc3");                          // stray and cut-off bytes
    EXPECT_EQ(printable("\xc0\xaf"), "\\xc0\\xaf");                                // overlong '/'
    EXPECT_EQ(printable("csi\xc2\x9b"
                        "2J"),
              "csi\\u009b2J");  // C1 control
    EXPECT_EQ(printable("abc\xe2\x80\xae"
                        "cba"),
              "abc\\u202ecba");  // bidi override
    EXPECT_EQ(printable(std::string(2000, 'a'), 10), "aaaaaaaaaa... (1990 more bytes)");
    EXPECT_EQ(printable("\x1b\x1b", 5), "\\x1b... (1 more bytes)");  // never half an escape
    EXPECT_EQ(printable_lines("a\x1b\nb\n"), "a\\x1b\nb\n");
    EXPECT_TRUE(is_printable("w1"));
    EXPECT_FALSE(is_printable("w\n1"));
}

TEST(Printable, AResultIsOneLineWhateverItsWorkerSays) {
    std::FILE* out = std::tmpfile();
    ASSERT_NE(out, nullptr);
    {
        ConsoleSink sink(out);
        sink.begin_mode("processes", 1);
        TaskResult result;
        result.id = 7;
        result.ok = false;
        result.worker = "w\x1b[31m1";
        result.error = "boom\x1b[2J\x1b[H\nprocesses  task    8 on w2     done: ok";
        sink.on_result(TaskSpec{}, result);
        sink.flush();
    }
    const std::string text = read_back_and_close(out);
    EXPECT_EQ(text,
              "== processes: 1 tasks\n"
              "processes  task    7 on w\\x1b[31m1 done at   0.000 s, ran 0.000 s: FAILED: "
              "boom\\x1b[2J\\x1b[H\\nprocesses  task    8 on w2     done: ok\n");
}

// A block of results (a threads-mode slice, decision 203) prints exactly the lines that one
// result at a time prints, cleaned up the same way.
TEST(Printable, ABlockOfResultsPrintsWhatOneAtATimePrints) {
    std::vector<Finished> batch(3);
    batch[0].result.id = 7;
    batch[0].result.worker = "w\x1b[31m1";
    batch[0].result.error = "boom\nprocesses  task    8 on w2     done: ok";
    batch[1].result.id = 8;
    batch[1].result.ok = true;
    batch[1].result.worker = "t2";
    batch[1].result.attempt = 3;
    batch[2].result.id = 9;
    batch[2].result.retrying = true;
    batch[2].result.error = "again";
    batch[2].result.worker = "t1";
    const auto printed = [&](bool as_block) {
        std::FILE* out = std::tmpfile();
        {
            ConsoleSink sink(out);
            sink.begin_mode("threads", 3);
            if (as_block)
                sink.on_results(batch);
            else
                for (const Finished& done : batch) sink.on_result(done.task, done.result);
            sink.flush();
        }
        return read_back_and_close(out);
    };
    const std::string one_at_a_time = printed(false);
    EXPECT_EQ(printed(true), one_at_a_time);
    EXPECT_EQ(one_at_a_time,
              "== threads: 3 tasks\n"
              "threads    task    7 on w\\x1b[31m1 done at   0.000 s, ran 0.000 s: FAILED: "
              "boom\\nprocesses  task    8 on w2     done: ok\n"
              "threads    task    8 on t2     done at   0.000 s, ran 0.000 s:  (attempt 3)\n"
              "threads    task    9 on t1     done at   0.000 s, ran 0.000 s: FAILED, runs again (--retries): again\n");
}

// A result whose type throws something that is not a std::exception while the console
// writes a block (a threads-mode slice) costs that one line: the rest of the block, and the
// results after it one at a time, are still written, and nothing reaches the runner.
TEST(Printable, AThrowingTypeInABlockLosesNoOtherLine) {
    struct Throws final : TaskType {
        std::string name() const override { return "throws"; }
        Value run(const Params&, Context&) const override { return nullptr; }
        std::string describe(const Value& value) const override {
            if (value == "bad") throw 42;
            return value.get<std::string>();
        }
    };
    const Throws type;
    const auto result = [&](TaskId id, const char* value) {
        Finished done;
        done.result.id = id;
        done.result.ok = true;
        done.result.type = &type;
        done.result.worker = "t1";
        done.result.value = value;
        return done;
    };
    std::vector<Finished> block{result(1, "bad"), result(2, "two")};
    std::FILE* out = std::tmpfile();
    ASSERT_NE(out, nullptr);
    {
        ConsoleSink sink(out);
        sink.begin_mode("threads", 4);
        EXPECT_NO_THROW(sink.on_results(block));
        const Finished single = result(3, "three");
        sink.on_result(single.task, single.result);
        std::vector<Finished> next{result(4, "four")};
        sink.on_results(next);
        sink.flush();
    }
    const std::string text = read_back_and_close(out);
    EXPECT_EQ(text,
              "== threads: 4 tasks\n"
              "threads    task    2 on t1     done at   0.000 s, ran 0.000 s: two\n"
              "threads    task    3 on t1     done at   0.000 s, ran 0.000 s: three\n"
              "threads    task    4 on t1     done at   0.000 s, ran 0.000 s: four\n");
}

TEST(Printable, AHelloNameWithControlBytesIsRejected) {
    proto::Hello hello;
    hello.name = "w1\x1b]0;owned\x07";
    const auto message = proto::decode(proto::encode(hello));
    const auto* error = std::get_if<proto::DecodeError>(&message);
    ASSERT_NE(error, nullptr);
    EXPECT_EQ(error->reason, "hello with a name that is not printable or longer than 64 bytes: 'w1\\x1b]0;owned\\x07'");
    hello.name = std::string(65, 'w');
    EXPECT_NE(std::get_if<proto::DecodeError>(&static_cast<const proto::Message&>(proto::decode(proto::encode(hello)))),
              nullptr);
    hello.name = "w\xc3\xa9";
    EXPECT_NE(std::get_if<proto::Hello>(&static_cast<const proto::Message&>(proto::decode(proto::encode(hello)))),
              nullptr);
}

TEST(Printable, AWorkerRefusesANameWithControlBytes) {
    const Output output = run_binary("worker", {"--connect", "ipc:///nonexistent/x", "--name", "w\x1b[2J"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("'w\\x1b[2J' is not printable"), std::string::npos) << output.err;
    EXPECT_EQ(output.err.find('\x1b'), std::string::npos);
}

TEST(Printable, PlanAndUrlErrorsShowEscapesAndAreNotCutAtANul) {
    testing::TempDir dir;
    // JSON escapes decode to raw bytes, which the error quotes.
    write_text(dir / "plan.jsonl",
               "{\"kind\":\"sleep\",\"seconds\":0}\n"
               "{\"kind\":\"sleep\",\"seconds\":0,\"\\u001b[2J\\u0000x\":1}\n");
    const Output plan = run_binary("coordinator", {"--plan", (dir / "plan.jsonl").string()});
    EXPECT_EQ(plan.exit_code, 2);
    EXPECT_NE(
        plan.err.find(fmt::format("{}:2: a key holds a NUL byte: \"\\x1b[2J\\x00x\"\n", (dir / "plan.jsonl").string())),
        std::string::npos)
        << plan.err;
    EXPECT_EQ(plan.err.find('\x1b'), std::string::npos) << plan.err;

    write_text(dir / "urls.txt", std::string("http://a/\x1b[2J\0tail\n", 19));
    const Output urls = run_binary("coordinator", {"--urls", (dir / "urls.txt").string()});
    EXPECT_EQ(urls.exit_code, 2);
    EXPECT_NE(urls.err.find(fmt::format("--urls: {}:1: 'http://a/\\x1b[2J\\x00tail' is not an http:// or https:// URL: "
                                        "contains a space or a control character",
                                        (dir / "urls.txt").string())),
              std::string::npos)
        << urls.err;
    EXPECT_EQ(urls.err.find('\x1b'), std::string::npos) << urls.err;
}

TEST(Printable, LogLinesShowEscapes) {
    // A file name is logged as given; the logger shows its control bytes as escapes.
    const Output output = run_binary("coordinator", {"--plan", "/nonexistent/\x1b[2Jplan"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--plan: cannot open '/nonexistent/\\x1b[2Jplan'"), std::string::npos) << output.err;
    EXPECT_EQ(output.err.find('\x1b'), std::string::npos) << output.err;
}

// ---- 3. Signals, pipes and wrappers ----

struct SignalCase {
    int signo;
    int exit_code;
};

class StopSignal : public ::testing::TestWithParam<SignalCase> {};

TEST_P(StopSignal, PrintsThePartialTableAndLeavesNoSocketDirectory) {
    testing::TempDir tmp;
    ::setenv("TMPDIR", tmp.path().c_str(), 1);
    // --drain-timeout 0: SIGHUP drains, and gives up on 60 s tasks at once.
    testing::Running coordinator("coordinator", {"--mode", "processes", "--workers", "2", "--tasks", "4", "--duration",
                                                 "60", "--drain-timeout", "0"});
    ::unsetenv("TMPDIR");
    std::vector<pid_t> workers;
    ASSERT_TRUE(testing::eventually([&] { return (workers = testing::workers_of(coordinator.pid())).size() == 2; },
                                    std::chrono::seconds(10)));
    ASSERT_TRUE(testing::eventually([&] { return coordinator.out().find("== processes") != std::string::npos; },
                                    std::chrono::seconds(10)));
    coordinator.signal(GetParam().signo);
    const Output output = coordinator.wait(std::chrono::seconds(20));
    EXPECT_EQ(output.exit_code, GetParam().exit_code) << output.err;
    EXPECT_NE(output.out.find("(interrupted)"), std::string::npos) << output.out;
    for (pid_t worker : workers) EXPECT_FALSE(testing::process_exists(worker)) << "worker " << worker;
    for (const auto& entry : fs::directory_iterator(tmp.path()))  // Running keeps its output in a taskfarm-test-*
        EXPECT_TRUE(entry.path().filename().string().starts_with("taskfarm-test-")) << entry.path() << " was left";
}

INSTANTIATE_TEST_SUITE_P(Hardening, StopSignal, ::testing::Values(SignalCase{SIGHUP, 129}, SignalCase{SIGQUIT, 131}),
                         [](const auto& param_info) {
                             return param_info.param.signo == SIGHUP ? "SIGHUP" : "SIGQUIT";
                         });

TEST(Pipes, AClosedStdoutEndsTheRunAndItsWorkers) {
    testing::TempDir dir;
    const fs::path journal = dir / "j.jsonl";
    const fs::path report = dir / "report.json";
    const Output output = run_shell(fmt::format(
        R"("$COORDINATOR" --mode processes --pin --workers 2 --tasks 400 --duration 0.05 --results '{}' --json '{}' 2>'{}' | head -2 >/dev/null; echo "${{PIPESTATUS[0]}}")",
        journal.string(), report.string(), (dir / "err").string()));
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(output.out, "141\n") << testing::read_file(dir / "err");
    EXPECT_NE(testing::read_file(dir / "err").find("stdout is closed (its reader has gone): stopping"),
              std::string::npos);
    EXPECT_LT(testing::read_json_lines(journal).size(), 400u);
    const auto run = testing::read_json(report)["runs"][0];
    EXPECT_TRUE(run["interrupted"].get<bool>());
    for (const auto& place : run["placement"])
        EXPECT_FALSE(testing::process_exists(place["pid"].get<pid_t>())) << place.dump();
}

TEST(Wrappers, AWorkerWrappersChildrenEndWithTheWorker) {
    testing::TempDir dir;
    const fs::path wrapper = dir / "wrapper.sh";
    const fs::path pids = dir / "pids";
    write_text(wrapper, fmt::format("#!/bin/sh\nsleep 300 &\necho $! >> '{}'\nexec '{}' \"$@\"\n", pids.string(),
                                    testing::bin("worker").string()));
    fs::permissions(wrapper, fs::perms::owner_all);
    const Output output = run_binary("coordinator", {"--mode", "processes", "--workers", "2", "--tasks", "4",
                                                     "--duration", "0.01", "--worker-bin", wrapper.string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    std::istringstream lines(testing::read_file(pids));
    std::vector<pid_t> children;
    for (pid_t pid; lines >> pid;) children.push_back(pid);
    ASSERT_EQ(children.size(), 2u);
    for (pid_t child : children)
        EXPECT_TRUE(testing::eventually([&] { return !testing::process_exists(child); }, std::chrono::seconds(3)))
            << "the wrapper's child " << child << " outlived the run";
}

TEST(Wrappers, AWorkerKilledForSilenceTakesItsGroupWithIt) {
    testing::TempDir dir;
    const fs::path wrapper = dir / "wrapper.sh";
    const fs::path pids = dir / "pids";
    write_text(wrapper, fmt::format("#!/bin/sh\nsleep 300 &\necho $! >> '{}'\nexec '{}' \"$@\"\n", pids.string(),
                                    testing::bin("worker").string()));
    fs::permissions(wrapper, fs::perms::owner_all);
    testing::Running coordinator("coordinator", {"--mode", "processes", "--workers", "1", "--tasks", "2", "--duration",
                                                 "60", "--heartbeat-timeout", "0.5", "--worker-bin", wrapper.string(),
                                                 "--log-level", "debug", "--drain-timeout", "0"});
    std::vector<pid_t> workers;
    ASSERT_TRUE(testing::eventually([&] { return (workers = testing::workers_of(coordinator.pid())).size() == 1; },
                                    std::chrono::seconds(10)));
    ASSERT_TRUE(testing::eventually([&] { return coordinator.err().find(" said hello") != std::string::npos; },
                                    std::chrono::seconds(10)));
    const pid_t sleeper = std::stoi(testing::read_file(pids));
    ASSERT_TRUE(testing::process_exists(sleeper));
    ::kill(workers[0], SIGSTOP);  // silent: the coordinator kills it and starts another
    EXPECT_TRUE(testing::eventually([&] { return !testing::process_exists(sleeper); }, std::chrono::seconds(10)))
        << "the stopped worker's group outlived it: " << coordinator.err();
    coordinator.signal(SIGTERM);
    const Output output = coordinator.wait(std::chrono::seconds(20));
    EXPECT_EQ(output.exit_code, 143) << output.err;
    EXPECT_FALSE(testing::process_exists(workers[0]));
}

// ---- 4. Journals ----

TEST(Journals, AJournalInUseIsRefusedNamingTheFlag) {
    testing::TempDir dir;
    const std::string journal = (dir / "j.jsonl").string();
    testing::Running first("coordinator", {"--mode", "threads", "--workers", "1", "--tasks", "3", "--duration", "60",
                                           "--results", journal, "--drain-timeout", "0"});
    ASSERT_TRUE(testing::eventually([&] { return first.out().find("== threads") != std::string::npos; },
                                    std::chrono::seconds(10)));
    const Output second = run_binary("coordinator", quick_run({"--results", journal}));
    EXPECT_EQ(second.exit_code, 2);
    EXPECT_NE(second.err.find(fmt::format("--results: cannot lock '{}': another run is writing to it", journal)),
              std::string::npos)
        << second.err;
    const Output resumed = run_binary("coordinator", quick_run({"--resume", journal}));
    EXPECT_EQ(resumed.exit_code, 2);
    EXPECT_NE(resumed.err.find(fmt::format("--resume: cannot lock '{}'", journal)), std::string::npos) << resumed.err;
    first.signal(SIGTERM);
    EXPECT_EQ(first.wait(std::chrono::seconds(20)).exit_code, 143);
    EXPECT_TRUE(testing::read_file(journal).empty());
}

TEST(Journals, DuplicateOkLinesAreRejected) {
    testing::TempDir dir;
    const fs::path journal = dir / "j.jsonl";
    ASSERT_EQ(run_binary("coordinator", quick_run({"--results", journal.string()})).exit_code, 0);
    const std::string text = testing::read_file(journal);
    write_text(journal, text + text);  // what two runs appending at once leave
    const Output output = run_binary("coordinator", quick_run({"--resume", journal.string()}));
    EXPECT_EQ(output.exit_code, 2);
    const int first_id = nlohmann::json::parse(text.substr(0, text.find('\n')))["id"];
    EXPECT_NE(output.err.find(fmt::format("--resume: {}:3: task {} of threads is ok a second time (first "
                                          "on line 1)",
                                          journal.string(), first_id)),
              std::string::npos)
        << output.err;
    EXPECT_EQ(testing::read_file(journal), text + text);
}

TEST(Journals, ResumingACompleteJournalSaysSoAndCountsThePlan) {
    testing::TempDir dir;
    const std::string journal = (dir / "j.jsonl").string();
    const std::vector<std::string> args{"--mode", "sequential,threads", "--tasks", "3", "--duration", "0"};
    auto first = args;
    first.insert(first.end(), {"--results", journal});
    ASSERT_EQ(run_binary("coordinator", first).exit_code, 0);
    auto again = args;
    again.insert(again.end(), {"--resume", journal});
    const Output output = run_binary("coordinator", again);
    EXPECT_EQ(output.exit_code, 0) << output.err;
    EXPECT_NE(output.err.find(fmt::format("nothing to do: all 3 tasks are ok in '{}'", journal)), std::string::npos)
        << output.err;
    EXPECT_NE(output.out.find("sequential         0      3      3      0"), std::string::npos) << output.out;
    EXPECT_NE(output.out.find("threads            0      3      3      0"), std::string::npos) << output.out;
    EXPECT_EQ(testing::read_json_lines(journal).size(), 6u);
}

// ---- 5. A plan line's timeout ----

TEST(Timeouts, APlanLinesZeroMeansNoLimitAndAbsentMeansTheDefault) {
    RunConfig config;
    config.task_timeout_s = 2;
    testing::TempDir dir;
    write_text(dir / "plan.jsonl",
               "{\"kind\":\"sleep\",\"seconds\":0,\"timeout_s\":0}\n"
               "{\"kind\":\"sleep\",\"seconds\":0}\n"
               "{\"kind\":\"sleep\",\"seconds\":0,\"timeout_s\":5}\n");
    config.plan_path = dir / "plan.jsonl";
    const Plan plan = testing::plan_for(config);
    ASSERT_EQ(all_tasks(plan).size(), 3u);
    EXPECT_EQ(all_tasks(plan)[0].timeout_s, 0.0);
    EXPECT_EQ(all_tasks(plan)[1].timeout_s, 2.0);
    EXPECT_EQ(all_tasks(plan)[2].timeout_s, 5.0);
}

TEST(Timeouts, AZeroTimeoutLineOutlivesTaskTimeout) {
    testing::TempDir dir;
    write_text(dir / "plan.jsonl",
               "{\"kind\":\"sleep\",\"seconds\":0.3,\"timeout_s\":0}\n"
               "{\"kind\":\"sleep\",\"seconds\":0.3}\n");
    const Output output = run_binary("coordinator", {"--mode", "threads", "--workers", "2", "--task-timeout", "0.1",
                                                     "--plan", (dir / "plan.jsonl").string()});
    EXPECT_EQ(output.exit_code, 1);
    EXPECT_NE(output.out.find("1 task(s) failed in threads:\n  task 1: timed out after 0.1 s\n"), std::string::npos)
        << output.out;
}

// ---- 5. Validation: what cannot work is exit 2 before the run, naming the flag or FILE:LINE ----

struct Refused {
    std::vector<std::string> args;
    std::string message;  // must appear on stderr
};

class RefusedBeforeTheRun : public ::testing::TestWithParam<Refused> {};

TEST_P(RefusedBeforeTheRun, ExitsTwoWithNothingOnStdout) {
    const Output output = run_binary("coordinator", GetParam().args);
    EXPECT_EQ(output.exit_code, 2) << output.err;
    EXPECT_NE(output.err.find(GetParam().message), std::string::npos) << output.err;
    EXPECT_EQ(output.err.find("filesystem error"), std::string::npos) << output.err;
    EXPECT_TRUE(output.out.empty()) << output.out;
}

INSTANTIATE_TEST_SUITE_P(
    Validation, RefusedBeforeTheRun,
    ::testing::Values(
        Refused{quick_run({"--heartbeat-interval", "2", "--heartbeat-timeout", "2"}),
                "--heartbeat-interval: --heartbeat-interval 2 must be at most half of --heartbeat-timeout 2"},
        Refused{quick_run({"--heartbeat-timeout", "0.01"}),
                "--heartbeat-timeout: '0.01' is not a number of seconds from 0.1"},
        Refused{quick_run({"--task-timeout", "nan"}), "--task-timeout: 'nan' is not a number of seconds"},
        Refused{quick_run({"--seed", "-1"}), "--seed: '-1' is not a whole number"},
        Refused{quick_run({"--mode", "threads,threads"}), "names a mode twice (all is every mode)"},
        Refused{quick_run({"--out-dir", ""}), "--out-dir: an empty path names no file"},
        Refused{{"--listen", "tcp://localhost:5555", "--insecure", "--workers", "1"},
                "cannot listen on 'tcp://localhost:5555'"},
        Refused{{"--listen", "tcp://[::1]:5555", "--insecure", "--workers", "1"},
                "cannot listen on 'tcp://[::1]:5555'"}));

TEST(Validation, APlanNumberThatOverflowsIsFileAndLine) {
    testing::TempDir dir;
    write_text(dir.path() / "p.jsonl", "{\"kind\":\"sleep\",\"seconds\":1e400}\n");
    const Output output =
        run_binary("coordinator", {"--mode", "sequential", "--plan", (dir.path() / "p.jsonl").string()});
    EXPECT_EQ(output.exit_code, 2) << output.err;
    EXPECT_NE(output.err.find("p.jsonl:1: not JSON: number overflow parsing '1e400'"), std::string::npos) << output.err;
    EXPECT_TRUE(output.out.empty()) << output.out;
}

TEST(Validation, AMissingTmpdirIsExitTwoBeforeTheRun) {
    const Output output = run_shell(
        "TMPDIR=/nonexistent-taskfarm-tmp \"$COORDINATOR\" --mode processes --workers 1 "
        "--tasks 1 --duration 0");
    EXPECT_EQ(output.exit_code, 2) << output.err;
    EXPECT_NE(output.err.find("TMPDIR: cannot use TMPDIR '/nonexistent-taskfarm-tmp': "), std::string::npos)
        << output.err;
    EXPECT_TRUE(output.out.empty()) << output.out;
}

// A peer's task skips the plan's checks; sleep checks "seconds" again when it runs, so NaN or
// a value past any clock fails at once instead of hanging its executor.
TEST(Validation, ASleepOfNanOrHugeSecondsFromAPeerFailsAtOnce) {
    RunEnv env;
    env.worker = "test";
    for (const double seconds : {std::numeric_limits<double>::quiet_NaN(), 1e300, -1.0}) {
        const TaskResult result = run_task(testing::task_of("sleep", {{"seconds", seconds}}), 1, env);
        EXPECT_FALSE(result.ok) << seconds;
        EXPECT_EQ(result.error.rfind("sleep \"seconds\" must be from 0 to 31536000, not ", 0), 0u) << result.error;
    }
}

}  // namespace
}  // namespace taskfarm
