// Hardening round 2 (issue 26), inputs, outputs and journals: no file the run reads is one it
// writes; every journal reader is bounded per line and names FILE:LINE; a journal keeps the
// exact bytes of what ran; a journal must be a regular file; temporary directories do not
// outlive their process. Real coordinator processes on real files.

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include "support.hpp"

namespace taskfarm {
namespace {

namespace fs = std::filesystem;
using testing::Output;
using testing::run_binary;

// Runs `script` with bash -c; COORDINATOR names the binary built here.
Output run_shell(const std::string& script) {
    ::setenv("COORDINATOR", testing::bin("coordinator").c_str(), 1);
    return run_binary("/bin/bash", {"-c", script});
}

void write_text(const fs::path& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// ---- An input is never an output ----

struct ReadWriteCase {
    std::string script;   // L is the list (two lines), run in the test's directory
    std::string message;  // what stderr must say
};

void PrintTo(const ReadWriteCase& c, std::ostream* os) { *os << c.script; }

class InputIsOutput : public ::testing::TestWithParam<ReadWriteCase> {};

TEST_P(InputIsOutput, IsRefusedNamingBothAndTheListIsUntouched) {
    testing::TempDir dir;
    write_text(dir / "L", "a\nb\n");
    write_text(dir / "P", "{\"kind\": \"sleep\", \"seconds\": 0}\n");
    const Output output =
        run_shell(fmt::format("cd '{}' && ulimit -f 2048 && timeout -k 2 10 \"$COORDINATOR\" --mode threads {}",
                              dir.path().string(), GetParam().script));
    // With `2>> L` the refusal itself is all that reaches the list.
    const std::string list = testing::read_file(dir / "L");
    const std::string err = output.err + (list.size() > 4 ? list.substr(4) : "");
    EXPECT_EQ(output.exit_code, 2) << err;
    EXPECT_TRUE(has(err, GetParam().message)) << err;
    EXPECT_TRUE(has(err, "a run never writes to a file it reads")) << err;
    EXPECT_EQ(list.substr(0, 4), "a\nb\n");
    EXPECT_EQ(std::count(list.begin(), list.end(), '\n'), list.size() == 4 ? 2 : 3) << list;
    EXPECT_EQ(testing::read_file(dir / "P"), "{\"kind\": \"sleep\", \"seconds\": 0}\n");
}

INSTANTIATE_TEST_SUITE_P(
    HardInputs, InputIsOutput,
    ::testing::Values(ReadWriteCase{"--command 'echo {}' --inputs L --json L",
                                    "--json: cannot use 'L': it is the same file as --inputs 'L'"},
                      ReadWriteCase{"--command 'echo {}' --inputs L --trace L",
                                    "--trace: cannot use 'L': it is the same file as --inputs 'L'"},
                      ReadWriteCase{"--command 'echo {}' --inputs L --timeline L",
                                    "--timeline: cannot use 'L': it is the same file as --inputs 'L'"},
                      ReadWriteCase{"--command 'echo {}' --inputs L --results L",
                                    "--results: cannot use 'L': it is the same file as --inputs 'L'"},
                      ReadWriteCase{"--command 'echo {}' --inputs ./L --resume L",
                                    "--resume: cannot use 'L': it is the same file as --inputs './L'"},
                      ReadWriteCase{"--plan P --json ./P",
                                    "--json: cannot use './P': it is the same file as --plan 'P'"},
                      ReadWriteCase{"--command 'echo {}' --inputs - --json L < L",
                                    "--json: cannot use 'L': it is the same file as --inputs '-'"},
                      ReadWriteCase{"--command 'echo {}' --inputs L >> L",
                                    "--inputs: cannot use 'L': it is the same file as standard output"},
                      ReadWriteCase{"--command 'echo {}' --inputs L 2>> L",
                                    "--inputs: cannot use 'L': it is the same file as standard error"}));

TEST(HardInputs, TwoInputsMayBeOneFile) {
    testing::TempDir dir;
    write_text(dir / "L", "a\n");
    const Output output =
        run_shell(fmt::format("cd '{}' && timeout 20 \"$COORDINATOR\" --mode threads --command 'echo {{}}' "
                              "--inputs - < L",
                              dir.path().string()));
    EXPECT_EQ(output.exit_code, 0) << output.err;
}

// ---- A journal is a regular file ----

TEST(HardInputs, AJournalThatIsAFifoIsRefusedNotWaitedOn) {
    testing::TempDir dir;
    write_text(dir / "L", "a\n");
    ASSERT_EQ(::mkfifo((dir / "F").c_str(), 0600), 0);
    for (const std::string flag : {"--resume", "--results"}) {
        const Output output =
            run_shell(fmt::format("cd '{}' && timeout -k 2 5 \"$COORDINATOR\" --mode threads --command 'echo {{}}' "
                                  "--inputs L {} F",
                                  dir.path().string(), flag));
        EXPECT_EQ(output.exit_code, 2) << flag << ": " << output.err;
        EXPECT_TRUE(has(output.err, flag + ": cannot use 'F' as a journal: it is a FIFO")) << output.err;
    }
}

// ---- Journal readers: bounded per line, FILE:LINE, never a library's message ----

struct BadLine {
    std::string line;  // the journal's second line
    std::string why;   // after "not a journal line: " (or the whole complaint)
};

void PrintTo(const BadLine& c, std::ostream* os) { *os << c.line.substr(0, 60); }

class BadJournalLine : public ::testing::TestWithParam<BadLine> {};

TEST_P(BadJournalLine, EveryReaderNamesFileAndLine) {
    testing::TempDir dir;
    write_text(dir / "L", "a\nb\n");
    const fs::path journal = dir / "j.jsonl";
    write_text(journal,
               "{\"mode\":\"threads\",\"id\":0,\"attempt\":1,\"kind\":\"command\",\"ok\":true,"
               "\"params\":{\"shell\":\"echo 'a'\"}}\n" +
                   GetParam().line + "\n");
    const std::vector<std::pair<std::string, std::vector<std::string>>> readers{
        {"report", {"report", journal.string()}},
        {"--resume",
         {"--mode", "threads", "--command", "echo {}", "--inputs", (dir / "L").string(), "--resume",
          journal.string()}}};
    for (const auto& [flag, args] : readers) {
        const Output output = run_binary("coordinator", args);
        EXPECT_EQ(output.exit_code, 2) << flag << ": " << output.err;
        EXPECT_TRUE(has(output.err, fmt::format("{}: {}:2: ", flag, journal.string()) + GetParam().why)) << output.err;
        EXPECT_FALSE(has(output.err, "json.exception")) << output.err;
    }
}

INSTANTIATE_TEST_SUITE_P(
    HardInputs, BadJournalLine,
    ::testing::Values(
        BadLine{R"({"mode":"threads","id":"1","ok":true,"kind":"command","params":{}})",
                "not a journal line: \"id\" is not a whole number >= 0"},
        BadLine{R"({"mode":"threads","id":1,"ok":true,"kind":"command","params":{}, "x)",
                "not a journal line: not JSON (at byte"},
        BadLine{"{\"mode\":\"threads\",\"id\":1,\"ok\":true,\"kind\":\"command\",\"params\":\"caf\xe9\"}",
                "not a journal line: byte 66 is not UTF-8 (0xe9)"},
        BadLine{R"({"mode":"threads","id":1,"ok":"yes","kind":"command","params":{}})",
                "not a journal line: \"ok\" is not true or false"},
        BadLine{R"({"mode":"threads","id":1,"attempt":"2","ok":true,"kind":"command","params":{}})",
                "not a journal line: \"attempt\" is not a whole number >= 0"},
        BadLine{R"({"id":1,"ok":true,"kind":"command","params":{}})", "not a journal line: \"mode\" is not a string"},
        BadLine{R"([1, 2])", "not a journal line: not a JSON object"},
        BadLine{
            R"({"mode":"threads","id":1,"ok":true,"kind":"command","params":{"shell":"x"},"bytes":{"/params/shell":"%%%%"}})",
            "not a journal line: \"bytes\" names '/params/shell': its value is not base64"},
        BadLine{
            R"({"mode":"threads","id":1,"ok":true,"kind":"command","params":{"shell":"x"},"bytes":{"/params/nothing":"eA=="}})",
            "not a journal line: \"bytes\" names '/params/nothing', which is not a string of the line"}));

TEST(HardInputs, AJournalLineIsBoundedInEveryReader) {
    testing::TempDir dir;
    write_text(dir / "L", "a\n");
    // A stream without a line end, without end: refused at the limit, in bounded memory (the
    // address space is capped at 1 GiB: a reader that kept it all would fail otherwise).
#if defined(__SANITIZE_ADDRESS__)
    // ASan reserves terabytes of address space for its shadow: no cap under it; the release
    // build runs the capped version.
    const std::string cap;
#else
    const std::string cap = "ulimit -v 1048576; ";
#endif
    const Output stream = run_shell(cap + "yes | tr -d '\\n' | timeout -k 2 60 \"$COORDINATOR\" report -");
    EXPECT_EQ(stream.exit_code, 2) << stream.err;
    EXPECT_TRUE(has(stream.err, "report: -:1: a line longer than 32 MiB")) << stream.err;
    // A file whose second line is over the limit: named by both readers.
    const fs::path journal = dir / "j.jsonl";
    write_text(journal,
               "{\"mode\":\"threads\",\"id\":0,\"ok\":true,\"kind\":\"command\",\"params\":{\"shell\":\"echo "
               "'a'\"}}\n{\"error\":\"" +
                   std::string(33u << 20, 'e') + "\"}\n");
    const Output report = run_shell(fmt::format("{}\"$COORDINATOR\" report '{}'", cap, journal.string()));
    EXPECT_EQ(report.exit_code, 2) << report.err;
    EXPECT_TRUE(has(report.err, fmt::format("report: {}:2: a line longer than 32 MiB", journal.string())))
        << report.err;
    const Output resume =
        run_shell(fmt::format("{}\"$COORDINATOR\" --mode threads --command 'echo {{}}' "
                              "--inputs '{}' --resume '{}'",
                              cap, (dir / "L").string(), journal.string()));
    EXPECT_EQ(resume.exit_code, 2) << resume.err;
    EXPECT_TRUE(has(resume.err, fmt::format("--resume: {}:2: a line longer than 32 MiB", journal.string())))
        << resume.err;
}

// ---- A journal keeps the exact bytes of what ran ----

std::vector<nlohmann::json> lines_of(const fs::path& journal) { return testing::read_json_lines(journal); }

TEST(HardInputs, AnInputThatIsNotUtf8IsKeptExactlyAndResumes) {
    testing::TempDir dir;
    // Two inputs that U+FFFD would make one, and one of UTF-8.
    write_text(dir / "L", "caf\xe9\ncaf\xe8\nb\n");
    const fs::path journal = dir / "j.jsonl";
    const auto run = [&](const std::string& flag) {
        return run_binary("coordinator", {"--mode", "threads", "--command", "echo {}", "--inputs", (dir / "L").string(),
                                          flag, journal.string()});
    };
    const Output first = run("--results");
    ASSERT_EQ(first.exit_code, 0) << first.err;
    std::map<std::uint64_t, nlohmann::json> by_id;
    for (const auto& line : lines_of(journal)) by_id[line.at("id").get<std::uint64_t>()] = line;
    ASSERT_EQ(by_id.size(), 3u);
    EXPECT_EQ(by_id[0].at("bytes").at("/params/shell"), "ZWNobyAnY2Fm6Sc=");  // echo 'caf\xe9'
    EXPECT_EQ(by_id[1].at("bytes").at("/params/shell"), "ZWNobyAnY2Fm6Cc=");  // echo 'caf\xe8'
    EXPECT_FALSE(by_id[2].contains("bytes"));
    // Resumed: all three are done, nothing runs again.
    const Output resumed = run("--resume");
    EXPECT_EQ(resumed.exit_code, 0) << resumed.err;
    EXPECT_EQ(lines_of(journal).size(), 3u);
    // `report` shows the bytes.
    const Output report = run_binary("coordinator", {"report", journal.string(), "--task", "1"});
    EXPECT_EQ(report.exit_code, 0) << report.err;
    EXPECT_TRUE(has(report.out, "echo 'caf\\xe8'")) << report.out;
    // One byte of the list changed: the journal is from another list, said with FILE:LINE.
    write_text(dir / "L", "caf\xe9\ncaf\xe7\nb\n");
    const Output changed = run("--resume");
    EXPECT_EQ(changed.exit_code, 2) << changed.err;
    EXPECT_TRUE(has(changed.err,
                    "task 1 is command {\"shell\":\"echo 'caf\\xe8'\"} there but command "
                    "{\"shell\":\"echo 'caf\\xe7'\"} here"))
        << changed.err;
    // A journal from before "bytes" (U+FFFD in place of the byte) still reads: a clear
    // refusal of that task, not a library's error.
    std::string old;
    for (auto line : lines_of(journal)) {
        line.erase("bytes");
        old += line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
    write_text(journal, old);
    write_text(dir / "L", "caf\xe9\ncaf\xe8\nb\n");
    const Output older = run("--resume");
    EXPECT_EQ(older.exit_code, 2) << older.err;
    EXPECT_TRUE(has(older.err, fmt::format("--resume: {}:", journal.string()))) << older.err;
    EXPECT_TRUE(has(older.err, "the journal is from a different plan")) << older.err;
    EXPECT_FALSE(has(older.err, "json.exception")) << older.err;
    EXPECT_TRUE(run_binary("coordinator", {"report", journal.string()}).exit_code == 0);
}

// ---- Temporary directories do not outlive their run ----

// The entries of `dir` a run made (taskfarm-WHAT-PID-XXXXXX, or main's taskfarm-XXXXXX);
// not the taskfarm-test-* directories of testing::Running.
std::vector<std::string> run_leftovers(const fs::path& dir) {
    std::vector<std::string> found;
    for (const auto& entry : fs::directory_iterator(dir)) {
        const std::string name = entry.path().filename().string();
        if (name.starts_with("taskfarm-") && !name.starts_with("taskfarm-test-")) found.push_back(name);
    }
    return found;
}

// Sets TMPDIR for the processes a test starts, and back at the end.
class TmpDir {
public:
    explicit TmpDir(const fs::path& dir) {
        if (const char* old = std::getenv("TMPDIR")) old_ = old;
        ::setenv("TMPDIR", dir.c_str(), 1);
    }
    ~TmpDir() {
        if (old_.empty())
            ::unsetenv("TMPDIR");
        else
            ::setenv("TMPDIR", old_.c_str(), 1);
    }

private:
    std::string old_;
};

TEST(HardInputs, WhatAKilledRunLeftIsRemovedByTheNextRun) {
    testing::TempDir tmp;
    {
        const TmpDir use(tmp.path());
        testing::Running coordinator("coordinator",
                                     {"--mode", "processes", "--workers", "2", "--tasks", "4", "--duration", "60"});
        // Its control directory and the processes mode's, which holds the socket: the mode makes
        // it after its "== processes" line, so that line is no sign of it (under load the test
        // looked in between and found one directory). Wait for the two directories themselves.
        const auto both_made = [&] {
            std::set<std::string> made;
            for (const std::string& name : run_leftovers(tmp.path()))
                for (const char* what : {"run", "ipc"})
                    if (name.starts_with(fmt::format("taskfarm-{}-{}-", what, coordinator.pid()))) made.insert(what);
            return made.size() == 2;
        };
        ASSERT_TRUE(testing::eventually(both_made, std::chrono::seconds(30)))
            << fmt::format("{}", fmt::join(run_leftovers(tmp.path()), " ")) << "\n"
            << coordinator.err();
        coordinator.signal(SIGKILL);
        coordinator.wait();
        ASSERT_GE(run_leftovers(tmp.path()).size(), 2u);
        const Output next = run_binary("coordinator", {"--mode", "threads", "--tasks", "1", "--duration", "0"});
        EXPECT_EQ(next.exit_code, 0) << next.err;
        EXPECT_TRUE(has(next.err, "temporary director")) << next.err;
    }
    EXPECT_EQ(run_leftovers(tmp.path()), std::vector<std::string>{});
}

TEST(HardInputs, ASecondCtrlCLeavesNoTemporaryDirectory) {
    testing::TempDir tmp;
    write_text(tmp / "L", "a\nb\n");
    {
        const TmpDir use(tmp.path());
        // Commands that ignore SIGTERM: the first Ctrl-C cannot end the run at once.
        testing::Running coordinator(
            "coordinator", {"--mode", "threads", "--workers", "2", "--command", "trap '' TERM INT; sleep 20 # {}",
                            "--inputs", (tmp / "L").string()});
        ASSERT_TRUE(
            testing::eventually([&] { return run_leftovers(tmp.path()).size() >= 1; }, std::chrono::seconds(30)));
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        coordinator.signal(SIGINT);
        ASSERT_TRUE(
            testing::eventually([&] { return has(coordinator.err(), "press Ctrl-C again"); }, std::chrono::seconds(10)))
            << coordinator.err();
        coordinator.signal(SIGINT);
        const Output output = coordinator.wait();
        EXPECT_EQ(output.exit_code, 128 + SIGINT) << output.err;
    }
    EXPECT_EQ(run_leftovers(tmp.path()), std::vector<std::string>{});
}

}  // namespace
}  // namespace taskfarm
