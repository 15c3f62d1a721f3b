// Replays every file of the fuzz corpus and of the saved crashers through the fuzz target,
// so ctest catches a regression of any input the fuzzer ever found interesting.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "protocol.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

std::vector<std::filesystem::path> inputs() {
    std::vector<std::filesystem::path> files;
    for (const char* dir : {"corpus/decode", "crashers/decode"})
        for (const auto& entry : std::filesystem::directory_iterator(std::filesystem::path(TASKFARM_FUZZ_DIR) / dir))
            if (entry.is_regular_file()) files.push_back(entry.path());
    return files;
}

TEST(DecodeFuzzReplay, EverySavedInputDecodesWithoutCrashing) {
    const auto files = inputs();
    ASSERT_GE(files.size(), 5u) << "the seed corpus is missing";
    for (const auto& file : files) {
        std::ifstream in(file, std::ios::binary);
        const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        SCOPED_TRACE(file.filename().string());
        EXPECT_EQ(LLVMFuzzerTestOneInput(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()), 0);
    }
}

// The seeds are where the fuzzer starts: one valid message of each type (download task and
// result, with their maps of params and values, and setup included) lets it reach every
// field's decoding, not just the header checks.
TEST(DecodeFuzzReplay, TheSeedsOfEachMessageTypeAreValid) {
    const std::filesystem::path corpus = std::filesystem::path(TASKFARM_FUZZ_DIR) / "corpus/decode";
    for (const char* name : {"hello", "task", "tasks", "result", "results", "returned", "heartbeat", "shutdown",
                             "download-task", "download-result", "setup"}) {
        std::ifstream in(corpus / (std::string(name) + ".msgpack"), std::ios::binary);
        ASSERT_TRUE(in) << name;
        const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        const auto message = taskfarm::proto::decode(bytes);
        const auto* error = std::get_if<taskfarm::proto::DecodeError>(&message);
        EXPECT_EQ(error, nullptr) << name << ": " << (error ? error->reason : "");
    }
}

}  // namespace
