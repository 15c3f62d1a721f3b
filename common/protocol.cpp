#include "protocol.hpp"

#include <exception>
#include <sstream>

#include <fmt/format.h>

namespace taskfarm::proto {
namespace {

template <typename T>
std::string pack(const T& message) {
    std::stringstream buffer;
    msgpack::pack(buffer, message);
    return std::move(buffer).str();
}

// msgpack fills absent keys with defaults; required fields are checked here.
Message checked(Hello message) {
    if (message.name.empty()) return DecodeError{"hello without a name"};
    return message;
}

Message checked(Task message) {
    if (message.id == kNoId) return DecodeError{"task without an id"};
    if (!parse_task_kind(message.kind)) return DecodeError{fmt::format("task {} has unknown kind '{}'", message.id, message.kind)};
    if (message.attempt == 0) return DecodeError{fmt::format("task {} has attempt 0", message.id)};
    if (message.kind == "download" && message.params.url.empty())
        return DecodeError{fmt::format("download task {} without a url", message.id)};
    return message;
}

Message checked(Result message) {
    if (message.id == kNoId) return DecodeError{"result without an id"};
    if (!parse_task_kind(message.kind)) return DecodeError{fmt::format("result {} has unknown kind '{}'", message.id, message.kind)};
    return message;
}

}  // namespace

std::string encode(const Hello& message) { return pack(message); }
std::string encode(const Task& message) { return pack(message); }
std::string encode(const Result& message) { return pack(message); }
std::string encode(const Heartbeat& message) { return pack(message); }
std::string encode(const Shutdown& message) { return pack(message); }

Message decode(std::string_view frame) {
    if (frame.size() > kMaxFrameBytes)
        return DecodeError{fmt::format("frame of {} bytes exceeds the limit of {}", frame.size(), kMaxFrameBytes)};
    // The defaults (2^32-1 of everything) would let one garbage frame ask for gigabytes.
    const msgpack::unpack_limit limits(/*array=*/1024, /*map=*/64, /*str=*/kMaxFrameBytes,
                                       /*bin=*/kMaxFrameBytes, /*ext=*/0, /*depth=*/8);
    try {
        std::size_t offset = 0;
        const msgpack::object_handle handle =
            msgpack::unpack(frame.data(), frame.size(), offset, nullptr, nullptr, limits);
        if (offset != frame.size())
            return DecodeError{fmt::format("{} trailing bytes after the message", frame.size() - offset)};
        const msgpack::object& object = handle.get();
        if (object.type != msgpack::type::MAP) return DecodeError{"message is not a map"};
        const auto head = object.as<Header>();
        if (head.type.empty()) return DecodeError{"message without a type"};
        if (head.v != kVersion) return DecodeError{fmt::format("protocol version {}, want {}", head.v, kVersion)};
        if (head.type == "hello") return checked(object.as<Hello>());
        if (head.type == "task") return checked(object.as<Task>());
        if (head.type == "result") return checked(object.as<Result>());
        if (head.type == "heartbeat") return object.as<Heartbeat>();
        if (head.type == "shutdown") return object.as<Shutdown>();
        return DecodeError{fmt::format("unknown message type '{}'", head.type)};
    } catch (const msgpack::insufficient_bytes&) {
        return DecodeError{"truncated message"};
    } catch (const std::exception& e) {  // unpack_error, size_overflow, type_error, bad_alloc
        return DecodeError{fmt::format("malformed message: {}", e.what())};
    }
}

Task to_message(const TaskSpec& task, std::uint32_t attempt) {
    Task message;
    message.id = task.id;
    message.attempt = attempt;
    message.kind = std::string(to_string(task.kind));
    message.params = task.params;
    message.timeout_s = task.timeout_s;
    return message;
}

TaskSpec to_spec(const Task& message) {
    return TaskSpec{message.id, *parse_task_kind(message.kind), message.params, message.timeout_s};
}

Result to_message(const TaskResult& result) {
    Result message;
    message.id = result.id;
    message.attempt = result.attempt;
    message.kind = std::string(to_string(result.kind));
    message.ok = result.ok;
    message.error = result.error;
    message.run_s = result.run_time.count();
    message.slept_s = result.slept_s;
    message.primes = result.primes;
    message.http_status = result.http_status;
    message.bytes = result.bytes;
    message.sha256 = result.sha256;
    message.final_url = result.final_url;
    message.path = result.saved_path;
    message.tries = result.tries;
    return message;
}

TaskResult to_result(const Result& message, std::string worker) {
    TaskResult result;
    result.id = message.id;
    result.attempt = message.attempt;
    result.kind = *parse_task_kind(message.kind);
    result.ok = message.ok;
    result.error = message.error;
    result.worker = std::move(worker);
    result.run_time = std::chrono::duration<double>(message.run_s);
    result.slept_s = message.slept_s;
    result.primes = message.primes;
    result.http_status = message.http_status;
    result.bytes = message.bytes;
    result.sha256 = message.sha256;
    result.final_url = message.final_url;
    result.saved_path = message.path;
    result.tries = message.tries;
    return result;
}

}  // namespace taskfarm::proto
