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
#include <string>
#include <vector>

#include <fmt/format.h>
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
    std::string script;    // L is the list (two lines), run in the test's directory
    std::string message;   // what stderr must say
};

void PrintTo(const ReadWriteCase& c, std::ostream* os) { *os << c.script; }

class InputIsOutput : public ::testing::TestWithParam<ReadWriteCase> {};

TEST_P(InputIsOutput, IsRefusedNamingBothAndTheListIsUntouched) {
    testing::TempDir dir;
    write_text(dir / "L", "a\nb\n");
    write_text(dir / "P", "{\"kind\": \"sleep\", \"seconds\": 0}\n");
    const Output output = run_shell(fmt::format("cd '{}' && ulimit -f 2048 && timeout -k 2 10 \"$COORDINATOR\" --mode threads {}", dir.path().string(),
                                                GetParam().script));
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
    ::testing::Values(
        ReadWriteCase{"--command 'echo {}' --inputs L --json L", "--json: cannot use 'L': it is the same file as --inputs 'L'"},
        ReadWriteCase{"--command 'echo {}' --inputs L --trace L", "--trace: cannot use 'L': it is the same file as --inputs 'L'"},
        ReadWriteCase{"--command 'echo {}' --inputs L --timeline L",
                      "--timeline: cannot use 'L': it is the same file as --inputs 'L'"},
        ReadWriteCase{"--command 'echo {}' --inputs L --results L",
                      "--results: cannot use 'L': it is the same file as --inputs 'L'"},
        ReadWriteCase{"--command 'echo {}' --inputs ./L --resume L",
                      "--resume: cannot use 'L': it is the same file as --inputs './L'"},
        ReadWriteCase{"--plan P --json ./P", "--json: cannot use './P': it is the same file as --plan 'P'"},
        ReadWriteCase{"--command 'echo {}' --inputs - --json L < L",
                      "--json: cannot use 'L': it is the same file as --inputs '-'"},
        ReadWriteCase{"--command 'echo {}' --inputs L >> L",
                      "--inputs: cannot use 'L': it is the same file as standard output"},
        ReadWriteCase{"--command 'echo {}' --inputs L 2>> L",
                      "--inputs: cannot use 'L': it is the same file as standard error"}));

TEST(HardInputs, TwoInputsMayBeOneFile) {
    testing::TempDir dir;
    write_text(dir / "L", "a\n");
    const Output output = run_shell(fmt::format("cd '{}' && timeout 20 \"$COORDINATOR\" --mode threads --command 'echo {{}}' "
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
        const Output output = run_shell(fmt::format("cd '{}' && timeout -k 2 5 \"$COORDINATOR\" --mode threads --command 'echo {{}}' "
                                                    "--inputs L {} F",
                                                    dir.path().string(), flag));
        EXPECT_EQ(output.exit_code, 2) << flag << ": " << output.err;
        EXPECT_TRUE(has(output.err, flag + ": cannot use 'F' as a journal: it is a FIFO")) << output.err;
    }
}

}  // namespace
}  // namespace taskfarm
