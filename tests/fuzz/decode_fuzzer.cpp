// libFuzzer target for proto::decode(): it must never crash, hang or leak, whatever the bytes.
// Built by scripts/fuzz with clang; tests/fuzz/replay.cpp runs the corpus and every saved
// crasher through the same function in the normal (gcc) build.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "protocol.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto message = taskfarm::proto::decode(std::string_view(reinterpret_cast<const char*>(data), size));
    // Whatever decoded must encode again: the structs it produced are complete.
    if (const auto* task = std::get_if<taskfarm::proto::Task>(&message))
        static_cast<void>(taskfarm::proto::encode(*task));
    if (const auto* result = std::get_if<taskfarm::proto::Result>(&message))
        static_cast<void>(taskfarm::proto::encode(*result));
    if (const auto* tasks = std::get_if<taskfarm::proto::TaskBatch>(&message))
        static_cast<void>(taskfarm::proto::encode(*tasks));
    if (const auto* results = std::get_if<taskfarm::proto::ResultBatch>(&message))
        static_cast<void>(taskfarm::proto::encode(*results));
    if (const auto* returned = std::get_if<taskfarm::proto::Returned>(&message))
        static_cast<void>(taskfarm::proto::encode(*returned));
    return 0;
}
