#pragma once
// The coordinator <-> worker wire protocol: one msgpack map per ZeroMQ frame, each with
// a `type` and the protocol version `v`. See docs/protocol.md.

#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include <msgpack.hpp>

#include "task.hpp"

namespace taskfarm::proto {

inline constexpr int kVersion = 1;
// Largest frame either side accepts (ZMQ_MAXMSGSIZE and the msgpack unpack limit).
inline constexpr std::size_t kMaxFrameBytes = 1 << 20;

struct Header {
    std::string type;
    int v = 0;
    MSGPACK_DEFINE_MAP(type, v)
};

// Worker -> coordinator, first message after connecting.
struct Hello {
    std::string type = "hello";
    int v = kVersion;
    std::string name;  // required: "w3"
    std::int64_t pid = 0;
    std::string host;
    int cpu = -1;  // CPU the worker is pinned to, -1 if not pinned
    MSGPACK_DEFINE_MAP(type, v, name, pid, host, cpu)
};

// Coordinator -> worker: run this.
struct Task {
    std::string type = "task";
    int v = kVersion;
    TaskId id = kNoId;  // required
    std::uint32_t attempt = 1;
    std::string kind;   // required, a known task kind
    TaskParams params;
    double timeout_s = 0;  // 0: none
    MSGPACK_DEFINE_MAP(type, v, id, attempt, kind, params, timeout_s)
};

// Worker -> coordinator: what running a Task produced.
struct Result {
    std::string type = "result";
    int v = kVersion;
    TaskId id = kNoId;  // required
    std::uint32_t attempt = 1;
    std::string kind;   // required
    bool ok = false;
    std::string error;
    double run_s = 0;    // measured by the worker
    double slept_s = 0;  // sleep value
    std::uint64_t primes = 0;  // cpu value
    int http_status = 0;       // download values
    std::uint64_t bytes = 0;
    std::string sha256;
    std::string final_url;
    std::string path;
    std::uint32_t tries = 0;
    MSGPACK_DEFINE_MAP(type, v, id, attempt, kind, ok, error, run_s, slept_s, primes, http_status, bytes, sha256,
                       final_url, path, tries)
};

// Either way: "I am alive". Any frame counts as a sign of life, this one says nothing else.
struct Heartbeat {
    std::string type = "heartbeat";
    int v = kVersion;
    MSGPACK_DEFINE_MAP(type, v)
};

// Coordinator -> worker: stop now, drop what you hold, exit 0.
struct Shutdown {
    std::string type = "shutdown";
    int v = kVersion;
    MSGPACK_DEFINE_MAP(type, v)
};

struct DecodeError {
    std::string reason;
};

using Message = std::variant<DecodeError, Hello, Task, Result, Heartbeat, Shutdown>;

std::string encode(const Hello& message);
std::string encode(const Task& message);
std::string encode(const Result& message);
std::string encode(const Heartbeat& message);
std::string encode(const Shutdown& message);

// Never throws and never trusts `frame`: anything but a complete, valid message of this
// version is a DecodeError saying why.
Message decode(std::string_view frame);

// Conversions between the wire and the task model.
Task to_message(const TaskSpec& task, std::uint32_t attempt);
TaskSpec to_spec(const Task& message);  // message must come from decode()
Result to_message(const TaskResult& result);
TaskResult to_result(const Result& message, std::string worker);  // ditto

}  // namespace taskfarm::proto
