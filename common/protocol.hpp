#pragma once
// The coordinator <-> worker wire protocol: one msgpack map per ZeroMQ frame, each with
// a `type` and the protocol version `v`. See docs/protocol.md.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <variant>

#include <vector>

#include <msgpack.hpp>

#include "json_msgpack.hpp"
#include "msgpack_map.hpp"
#include "task.hpp"

namespace taskfarm::proto {

inline constexpr int kVersion = 2;
// Largest frame either side accepts (ZMQ_MAXMSGSIZE and the msgpack unpack limit): room for a
// command's two streams of --max-output 1M and the rest of its result (decision 84).
inline constexpr std::size_t kMaxFrameBytes = 4 << 20;
// Most tasks or results in one `tasks` or `results` message (the unpack limit on arrays).
inline constexpr std::size_t kMaxBatch = 1024;
// Most bytes a sender puts in one `tasks` or `results` message: the headroom below
// kMaxFrameBytes covers the batch's own keys and array header many times over.
inline constexpr std::size_t kMaxBatchBytes = kMaxFrameBytes - (64 << 10);

struct Header {
    std::string type;
    int v = 0;
    TASKFARM_MSGPACK_MAP(type, v)
};

// Worker -> coordinator, first message after connecting.
struct Hello {
    std::string type = "hello";
    int v = kVersion;
    std::string name;  // required: "w3"
    std::int64_t pid = 0;
    std::string host;
    int cpu = -1;           // CPU the worker is pinned to, -1 if not pinned
    std::uint64_t rss = 0;  // resident bytes as it starts; 0: not known (an older worker)
    TASKFARM_MSGPACK_MAP(type, v, name, pid, host, cpu, rss)
};

// Coordinator -> worker, the answer to its hello, before any task: what every task of the
// run may read (Context::settings()).
struct Setup {
    std::string type = "setup";
    int v = kVersion;
    Json settings = Json::object();  // required: a map
    TASKFARM_MSGPACK_MAP(type, v, settings)
};

// Coordinator -> worker: run this.
struct Task {
    // A Task whose params are null, not an empty map (whose making allocates): what the fast
    // path of decode() reads a task into, and then sets (decision 251).
    struct Unread {};
    Task() = default;
    explicit Task(Unread) : params() {}
    std::string type = "task";
    int v = kVersion;
    TaskId id = kNoId;  // required
    std::uint32_t attempt = 1;
    std::string kind;              // required: a task type's name
    Json params = Json::object();  // required: a map, what the type's run() reads
    double timeout_s = 0;          // 0: none
    // The task's CUDA_VISIBLE_DEVICES: the GPUs it holds ("3,5", docs/resources.md). Empty:
    // none, and then not sent at all, so a task that holds none costs not a byte more.
    std::string gpus;
    // Read with ParamsAs::Packed (a worker): the params as the frame held them (a msgpack map),
    // `params` then empty (decision 242). Not a field of the message: encode() packs `params`.
    std::string packed_params;
    template <typename Packer>
    void msgpack_pack(Packer& packer) const {
        if (gpus.empty())
            msgpack::type::make_define_map MSGPACK_DEFINE_MAP_IMPL(type, v, id, attempt, kind, params, timeout_s)
                .msgpack_pack(packer);
        else
            msgpack::type::make_define_map MSGPACK_DEFINE_MAP_IMPL(type, v, id, attempt, kind, params, timeout_s, gpus)
                .msgpack_pack(packer);
    }
    void msgpack_unpack(msgpack::object const& object) {
        ::taskfarm::detail::unpack_map(object, msgpack::type::make_define_map MSGPACK_DEFINE_MAP_IMPL(
                                                   type, v, id, attempt, kind, params, timeout_s, gpus));
    }
};

// What a task cost where it ran (TaskCost), inside a result. Missing (an older worker) or
// with an unknown scope: not measured. Numbers that are negative or not finite read as 0.
struct Cost {
    std::string scope;  // "thread", "process", "tree"
    double user_s = 0;
    double sys_s = 0;
    std::int64_t max_rss_kb = -1;  // -1: not measured
    TASKFARM_MSGPACK_MAP(scope, user_s, sys_s, max_rss_kb)
};

// Worker -> coordinator: what running a Task produced.
struct Result {
    std::string type = "result";
    int v = kVersion;
    TaskId id = kNoId;  // required
    std::uint32_t attempt = 1;
    std::string kind;  // required
    bool ok = false;
    std::string error;
    double run_s = 0;       // measured by the worker
    Json value;             // what the type's run() returned, or a failure's TaskFailed value; else nil
    Cost cost;              // what it cost (the host is the worker's, from its hello)
    std::uint64_t rss = 0;  // the worker's resident bytes when it sent this; 0: not known
    // The value as msgpack, from a PackedRun (decision 242), `value` then null: ResultFrame
    // writes it as the value; encode() does not (it packs `value`). Set by the worker's executor.
    std::string packed_value;
    TASKFARM_MSGPACK_MAP(type, v, id, attempt, kind, ok, error, run_s, value, cost, rss)
};

// Coordinator -> worker: several tasks in one frame, run in this order. Each element is a
// complete `task` message.
struct TaskBatch {
    std::string type = "tasks";
    int v = kVersion;
    std::vector<Task> tasks;  // 1..kMaxBatch
    TASKFARM_MSGPACK_MAP(type, v, tasks)
};

// Worker -> coordinator: several results in one frame, each a complete `result` message.
struct ResultBatch {
    std::string type = "results";
    int v = kVersion;
    std::vector<Result> results;  // 1..kMaxBatch
    TASKFARM_MSGPACK_MAP(type, v, results)
};

// One attempt of one task, as in `returned`.
struct TaskRef {
    TaskId id = kNoId;  // required
    std::uint32_t attempt = 1;
    TASKFARM_MSGPACK_MAP(id, attempt)
};

// Worker -> coordinator: tasks it was sent but has not started and never will, because the
// task it runs has taken `busy_s` already; the coordinator hands them to someone else.
struct Returned {
    std::string type = "returned";
    int v = kVersion;
    std::vector<TaskRef> tasks;  // 1..kMaxBatch
    double busy_s = 0;           // how long the running task has run so far
    TASKFARM_MSGPACK_MAP(type, v, tasks, busy_s)
};

// Either way: "I am alive". Any frame counts as a sign of life.
struct Heartbeat {
    std::string type = "heartbeat";
    int v = kVersion;
    std::uint64_t rss = 0;  // worker -> coordinator: its resident bytes; 0: not known (and from the coordinator)
    // Worker -> coordinator: the process groups of the commands it runs now, all of them
    // (command_groups::live()); sent again at once when they change. Absent from an older
    // worker: none known.
    std::vector<std::int64_t> groups;
    TASKFARM_MSGPACK_MAP(type, v, rss, groups)
};

// Coordinator -> worker: cancel these attempts (`coordinator cancel`): the running one is
// stopped (its stop token), queued ones are dropped, each answered with a failed result.
struct Cancel {
    std::string type = "cancel";
    int v = kVersion;
    std::vector<TaskRef> tasks;  // 1..kMaxBatch
    TASKFARM_MSGPACK_MAP(type, v, tasks)
};

// Coordinator -> worker: stop now, drop what you hold, exit 0.
struct Shutdown {
    std::string type = "shutdown";
    int v = kVersion;
    TASKFARM_MSGPACK_MAP(type, v)
};

struct DecodeError {
    std::string reason;
};

using Message = std::variant<DecodeError, Hello, Task, Result, Heartbeat, Shutdown, TaskBatch, ResultBatch, Returned,
                             Setup, Cancel>;

std::string encode(const Hello& message);
std::string encode(const Task& message);
std::string encode(const Result& message);
std::string encode(const Heartbeat& message);
std::string encode(const Shutdown& message);
std::string encode(const TaskBatch& message);
std::string encode(const ResultBatch& message);
std::string encode(const Returned& message);
std::string encode(const Setup& message);
std::string encode(const Cancel& message);

// The same into `out` (cleared first), whose capacity is reused: no allocation per message
// once it has grown to the largest.
void encode_to(std::string& out, const Task& message);
void encode_to(std::string& out, const Result& message);
void encode_to(std::string& out, const TaskBatch& message);
void encode_to(std::string& out, const ResultBatch& message);
// A `task` message appended to `out` (not cleared): the coordinator encodes each task once,
// to count its bytes, and sends those bytes (decision 151).
void append_encoded(std::string& out, const Task& message);
// The same bytes as append_encoded(out, to_message(task, attempt)), packed from the task
// itself: no copy of its params into a Task first.
void append_encoded(std::string& out, const TaskSpec& task, std::uint32_t attempt);
// A `tasks` message of tasks encoded already (each a whole `task` message, in order) into
// `out` (cleared first): byte for byte what encode_to() makes of a TaskBatch of them.
void encode_batch_of(std::string& out, std::span<const std::string_view> encoded_tasks);

// Results to the coordinator, each packed once, straight into the frame (decision 200): a
// `results` message whose array count is written when the frame is taken (as a 32-bit
// count, which every msgpack reader takes for any size), or the one result's own `result`
// message when it holds one. The worker adds results until the frame is full or too large,
// then takes it; clear() keeps the capacity, so a steady stream of frames allocates nothing.
class ResultFrame {
public:
    ResultFrame() { clear(); }
    void clear();
    void add(const Result& result);
    // Takes the last result added back out (it made the frame too large).
    void drop_last();
    std::size_t count() const { return starts_.size(); }
    // Bytes of the frame take() would give now.
    std::size_t bytes() const { return count() == 1 ? used_ - starts_[0] : used_; }
    // The frame, at least one result in it; valid until the next call that changes this.
    std::string_view take();

private:
    struct Writer;       // msgpack's packer writes through it, straight into frame_
    std::string frame_;  // its first used_ bytes are the frame; the rest is room
    std::size_t used_ = 0;
    std::vector<std::size_t> starts_;  // where each result begins in frame_
};

// Never throws and never trusts `frame`: anything but a complete, valid message of this
// version is a DecodeError saying why. A batch is accepted only if every element is valid.
// The frames of the hot path (task, tasks, result, results) in the form our encoders write are
// read straight from their bytes (decision 241); any other frame by msgpack's object tree.
// ParamsAs::Packed (the worker's): a task's params read by the fast path stay msgpack, in
// Task::packed_params, for to_spec() to keep or to make JSON (decision 242).
enum class ParamsAs { Json, Packed };
// ValuesAs::Skip (a coordinator none of whose sinks reads a value: ResultSink::wants_values()):
// a result's value that the fast path can walk over is checked and dropped, Result::value left
// null, instead of being made JSON for nobody (decision 250). Any other frame reads as with Json.
enum class ValuesAs { Json, Skip };
Message decode(std::string_view frame, ParamsAs params = ParamsAs::Json, ValuesAs values = ValuesAs::Json);
namespace detail {
// decode() without that fast path: what it must agree with (tests).
Message decode_general(std::string_view frame);
}  // namespace detail

// Conversions between the wire and the task model.
Task to_message(const TaskSpec& task, std::uint32_t attempt);
void to_message(const TaskSpec& task, std::uint32_t attempt, Task& out);  // reuses out's strings
// The task `message` (from decode()) asks for; its type from `registry`, or null when this
// program has no type of that name.
// Params that came packed (Task::packed_params) become JSON, unless `packed` is given and the
// type is a PackedRun: they then move there, for run_task() (decision 242).
TaskSpec to_spec(Task message, const Registry& registry, std::string* packed = nullptr);
// Params kept as msgpack (Task::packed_params), as JSON; throws std::invalid_argument if they are not a map.
Json params_from_packed(std::string_view packed);
// A task's params as JSON: TaskSpec::params, or its packed_params made JSON (decision 316).
Json params_of(const TaskSpec& task);
// The number under `key` in the msgpack map `packed`; false when absent or not a number.
bool packed_number(std::string_view packed, std::string_view key, double& out);
// {key: number} as msgpack, as a value packed by msgpack-c would be.
std::string packed_object(std::string_view key, double number);
std::string packed_object(std::string_view key, std::uint64_t number);
Result to_message(TaskResult result);
void to_message(TaskResult&& result, Result& out);  // reuses out's strings
// `type`: the task's type in the plan (the result's own "kind" is not trusted).
TaskResult to_result(Result&& message, std::string worker, const TaskType* type);
TaskResult to_result(const Result& message, std::string worker, const TaskType* type);

}  // namespace taskfarm::proto
