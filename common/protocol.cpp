#include "protocol.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <optional>
#include <span>
#include <stdexcept>
#include <sstream>
#include <string_view>
#include <type_traits>

#include <fmt/format.h>

#include "msgpack_fast.hpp"
#include "text.hpp"

namespace taskfarm::proto {
namespace {

using fast::FastPacker;
using fast::FastReader;
static_assert(fast::kMaxContainer == kMaxBatch);

// msgpack's packer writes through any `write(data, size)`; this one appends to a string.
struct StringWriter {
    std::string& out;
    void write(const char* data, std::size_t size) { out.append(data, size); }
};

template <typename T>
void pack_to(std::string& out, const T& message) {
    out.clear();
    StringWriter writer{out};
    msgpack::pack(writer, message);
}

template <typename T>
std::string pack(const T& message) {
    std::string out;
    pack_to(out, message);
    return out;
}

// msgpack fills absent keys with defaults; required fields are checked here. Empty: valid.
std::string problem(const Hello& message) {
    if (message.name.empty()) return "hello without a name";
    // A name is printed in every result line and log line about its worker: refused, not
    // cleaned up, so that no two names differ only in what the cleaning hides.
    if (!is_printable(message.name, kMaxWorkerName))
        return fmt::format("hello with a name that is not printable or longer than {} bytes: '{}'", kMaxWorkerName,
                           printable(message.name, kMaxWorkerName));
    return {};
}

// The id 2^64-1 is kNoId, which a missing id reads as: one message for both.
std::string no_id_problem(std::string_view what) {
    return fmt::format("{} without an id (or with id {}, which means none)", what, kNoId);
}

// msgpack-c says only "std::bad_cast" when a field has the wrong type; name the field when it
// is an id, an attempt or a resident size, the numbers a peer most likely gets wrong
// (negative, too large, a float).
std::string number_problem(const msgpack::object& map) {
    for (const auto& entry : std::span(map.via.map.ptr, map.via.map.size)) {
        if (entry.key.type != msgpack::type::STR) continue;
        const std::string_view key(entry.key.via.str.ptr, entry.key.via.str.size);
        if ((key == "id" || key == "attempt" || key == "rss") && entry.val.type != msgpack::type::POSITIVE_INTEGER) {
            std::ostringstream value;
            value << entry.val;
            return fmt::format("\"{}\" must be a whole number >= 0, not {}", key, printable(value.str(), 100));
        }
        if (key == "attempt" && entry.val.via.u64 > std::numeric_limits<std::uint32_t>::max())
            return fmt::format("\"attempt\" {} is too large", entry.val.via.u64);
    }
    return {};
}

std::string problem(const Task& message) {
    if (message.id == kNoId) return no_id_problem("task");
    if (message.kind.empty()) return fmt::format("task {} without a kind", message.id);
    if (message.attempt == 0) return fmt::format("task {} has attempt 0", message.id);
    if (message.packed_params.empty() && !message.params.is_object())  // packed: a map (read_params)
        return fmt::format("task {} has params that are not a map", message.id);
    return {};
}

std::string problem(const Result& message) {
    if (message.id == kNoId) return no_id_problem("result");
    if (message.kind.empty()) return fmt::format("result {} without a kind", message.id);
    return {};
}

std::string problem(const Setup& message) {
    if (!message.settings.is_object()) return "setup whose settings are not a map";
    return {};
}

// Each element of a batch must be a valid message of its own, of the one type the batch holds.
template <typename Element>
std::string batch_problem(const std::vector<Element>& elements, const char* batch, const char* type) {
    if (elements.empty()) return fmt::format("{} without any", batch);
    for (std::size_t i = 0; i < elements.size(); ++i) {
        const Element& element = elements[i];
        if (element.type != type || element.v != kVersion)
            return fmt::format("{} element {} is a '{}' of version {}, want a '{}' of version {}", batch, i,
                               element.type, element.v, type, kVersion);
        if (std::string reason = problem(element); !reason.empty())
            return fmt::format("{} element {}: {}", batch, i, reason);
    }
    return {};
}

std::string problem(const TaskBatch& message) { return batch_problem(message.tasks, "tasks", "task"); }
std::string problem(const ResultBatch& message) { return batch_problem(message.results, "results", "result"); }

std::string problem(const Returned& message) {
    if (message.tasks.empty()) return "returned without any tasks";
    for (const TaskRef& task : message.tasks) {
        if (task.id == kNoId) return "returned a task without an id";
        if (task.attempt == 0) return fmt::format("returned task {} with attempt 0", task.id);
    }
    return {};
}

std::string problem(const Cancel& message) {
    if (message.tasks.empty()) return "cancel without any tasks";
    for (const TaskRef& task : message.tasks)
        if (task.id == kNoId) return "cancel of a task without an id";
    return {};
}

template <typename T>
Message checked(T message) {
    if (std::string reason = problem(message); !reason.empty()) return DecodeError{std::move(reason)};
    return message;
}

// Strings in a frame are read in place rather than copied into the zone: decode() copies
// what it keeps into the message before the frame goes away.
bool reference_in_place(msgpack::type::object_type, std::size_t, void*) { return true; }

// Whether `key` is `name`: the size first, then a compare of a known length that the compiler
// does in place (a plain == on string_view was a call per key and most of reading a result).
template <std::size_t N>
bool is(std::string_view key, const char (&name)[N]) {
    return key.size() == N - 1 && std::memcmp(key.data(), name, N - 1) == 0;
}

// Reads one map of `fields`: each key a string, given at most once, known to `field` (which
// reads its value and says whether it could); `field(key, bit)` sets the key's bit.
template <typename Field>
bool read_fields(FastReader& in, Field&& field) {
    std::uint32_t size = 0;
    if (!in.map(size)) return false;
    std::uint32_t seen = 0;
    for (std::uint32_t k = 0; k < size; ++k) {
        std::string_view key;
        if (!in.str(key)) return false;
        std::uint32_t bit = 0;
        if (!field(key, bit) || (seen & bit)) return false;
        seen |= bit;
    }
    return true;
}

bool read_version(FastReader& in, int& out) {
    std::uint64_t value = 0;
    if (!in.unsigned_number(value) || value > static_cast<std::uint64_t>(std::numeric_limits<int>::max())) return false;
    out = static_cast<int>(value);
    return true;
}

bool read_attempt(FastReader& in, std::uint32_t& out) {
    std::uint64_t value = 0;
    if (!in.unsigned_number(value) || value > std::numeric_limits<std::uint32_t>::max()) return false;
    out = static_cast<std::uint32_t>(value);
    return true;
}

bool read_cost(FastReader& in, Cost& out) {
    return read_fields(in, [&](std::string_view key, std::uint32_t& bit) {
        if (is(key, "scope")) return bit = 1, in.str(out.scope);
        if (is(key, "user_s")) return bit = 2, in.number(out.user_s);
        if (is(key, "sys_s")) return bit = 4, in.number(out.sys_s);
        if (is(key, "max_rss_kb")) {
            bit = 8;
            FastReader::Integer value;
            if (!in.integer(value)) return false;
            if (value.negative) {
                out.max_rss_kb = value.i;
                return true;
            }
            if (value.u > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return false;
            out.max_rss_kb = static_cast<std::int64_t>(value.u);
            return true;
        }
        return false;
    });
}

// A value skim() takes is walked over with ValuesAs::Skip (left null); any other is read as JSON,
// which refuses what it must, so a frame is accepted or refused alike either way.
bool read_value(FastReader& in, Json& out, int depth, ValuesAs as) {
    if (as == ValuesAs::Skip) {
        const char* start = in.position();
        if (in.skim(depth)) return true;
        in.rewind(start);
    }
    return in.json(out, depth);
}

// `depth`: the containers around the message (0 alone, 2 in a batch's array). The key's size
// picks the one or few names it can be: a chain of all eleven compares was most of the cost
// of reading a result's keys, the coordinator's side of every task.
bool read_result(FastReader& in, Result& out, int depth, ValuesAs as) {
    return read_fields(in, [&](std::string_view key, std::uint32_t& bit) {
        switch (key.size()) {
            case 1:
                if (is(key, "v")) return bit = 2, read_version(in, out.v);
                break;
            case 2:
                if (is(key, "id")) return bit = 4, in.unsigned_number(out.id);
                if (is(key, "ok")) return bit = 32, in.boolean(out.ok);
                break;
            case 3:
                if (is(key, "rss")) return bit = 1024, in.unsigned_number(out.rss);
                break;
            case 4:
                if (is(key, "type")) return bit = 1, in.str(out.type);
                if (is(key, "kind")) return bit = 16, in.str(out.kind);
                if (is(key, "cost")) return bit = 512, read_cost(in, out.cost);
                break;
            case 5:
                if (is(key, "error")) return bit = 64, in.str(out.error);
                if (is(key, "run_s")) return bit = 128, in.number(out.run_s);
                if (is(key, "value")) return bit = 256, read_value(in, out.value, depth + 1, as);
                break;
            case 7:
                if (is(key, "attempt")) return bit = 8, read_attempt(in, out.attempt);
                break;
        }
        return false;
    });
}

// Params that are a map `skim` takes stay msgpack with ParamsAs::Packed; others are read as JSON.
bool read_params(FastReader& in, Task& out, int depth, ParamsAs as) {
    if (as == ParamsAs::Packed) {
        const char* start = in.position();
        std::uint32_t size = 0;
        FastReader look = in;
        if (look.map(size) && in.skim(depth)) {
            out.packed_params.assign(start, in.position());
            return true;
        }
        in.rewind(start);
    }
    return in.json(out.params, depth);
}

// Into a Task(Task::Unread): params absent are an empty map, as a default Task's.
bool read_task(FastReader& in, Task& out, int depth, ParamsAs as) {
    bool params = false;
    const bool read = read_fields(in, [&](std::string_view key, std::uint32_t& bit) {
        if (is(key, "type")) return bit = 1, in.str(out.type);
        if (is(key, "v")) return bit = 2, read_version(in, out.v);
        if (is(key, "id")) return bit = 4, in.unsigned_number(out.id);
        if (is(key, "attempt")) return bit = 8, read_attempt(in, out.attempt);
        if (is(key, "kind")) return bit = 16, in.str(out.kind);
        if (is(key, "params")) return bit = 32, params = true, read_params(in, out, depth + 1, as);
        if (is(key, "timeout_s")) return bit = 64, in.number(out.timeout_s);
        if (is(key, "gpus")) return bit = 128, in.str(out.gpus);
        return false;
    });
    if (read && !params) out.params = Json::object();
    return read;
}

// A batch: {"type": batch, "v": N, elements: [...]} in this order, as our encoders write it.
template <typename Element, typename Read>
bool read_batch(FastReader& in, std::string_view elements_key, std::vector<Element>& elements, int& v, Read read) {
    std::uint32_t size = 0;
    std::string_view key;
    if (!in.map(size) || size != 3) return false;
    std::string_view type;
    if (!in.str(key) || !is(key, "type") || !in.str(type)) return false;
    if (!in.str(key) || !is(key, "v") || !read_version(in, v)) return false;
    if (!in.str(key) || key != elements_key || !in.array(size)) return false;
    elements.clear();
    elements.reserve(size);
    for (std::uint32_t k = 0; k < size; ++k) {
        if constexpr (std::is_same_v<Element, Task>)
            elements.emplace_back(Task::Unread{});
        else
            elements.emplace_back();
        if (!read(in, elements.back(), 2)) return false;
    }
    return in.done();
}

// The message's type, if the frame is a map whose first key is "type".
std::string_view first_type(std::string_view frame) {
    FastReader in(frame);
    std::uint32_t size = 0;
    std::string_view key;
    std::string_view type;
    if (!in.map(size) || size == 0 || !in.str(key) || !is(key, "type") || !in.str(type)) return {};
    return type;
}

// The frame read by the fast path, or nullopt for decode()'s general one.
std::optional<Message> decode_fast(std::string_view frame, ParamsAs as, ValuesAs values) {
    const auto read_task_as = [as](FastReader& in, Task& task, int depth) { return read_task(in, task, depth, as); };
    const auto read_result_as = [values](FastReader& in, Result& result, int depth) {
        return read_result(in, result, depth, values);
    };
    const std::string_view type = first_type(frame);
    FastReader in(frame);
    if (type == "results") {
        ResultBatch batch;
        if (!read_batch(in, "results", batch.results, batch.v, read_result_as) || batch.v != kVersion)
            return std::nullopt;
        return checked(std::move(batch));
    }
    if (type == "tasks") {
        TaskBatch batch;
        if (!read_batch(in, "tasks", batch.tasks, batch.v, read_task_as) || batch.v != kVersion) return std::nullopt;
        return checked(std::move(batch));
    }
    if (type == "result") {
        Result result;
        if (!read_result(in, result, 0, values) || !in.done() || result.v != kVersion) return std::nullopt;
        return checked(std::move(result));
    }
    if (type == "task") {
        Task task(Task::Unread{});
        if (!read_task(in, task, 0, as) || !in.done() || task.v != kVersion) return std::nullopt;
        return checked(std::move(task));
    }
    return std::nullopt;
}

}  // namespace

std::string encode(const Hello& message) { return pack(message); }
std::string encode(const Task& message) { return pack(message); }
std::string encode(const Result& message) { return pack(message); }
std::string encode(const Heartbeat& message) { return pack(message); }
std::string encode(const Shutdown& message) { return pack(message); }
std::string encode(const TaskBatch& message) { return pack(message); }
std::string encode(const ResultBatch& message) { return pack(message); }
std::string encode(const Returned& message) { return pack(message); }
std::string encode(const Setup& message) { return pack(message); }
std::string encode(const Cancel& message) { return pack(message); }

void encode_to(std::string& out, const Task& message) { pack_to(out, message); }
void encode_to(std::string& out, const Result& message) { pack_to(out, message); }
void encode_to(std::string& out, const TaskBatch& message) { pack_to(out, message); }
void encode_to(std::string& out, const ResultBatch& message) { pack_to(out, message); }

void append_encoded(std::string& out, const Task& message) {
    StringWriter writer{out};
    msgpack::pack(writer, message);
}

void append_encoded(std::string& out, const TaskSpec& task, std::uint32_t attempt) {
    // The keys in Task's order, as its msgpack_pack writes them (gpus only when it holds some).
    StringWriter writer{out};
    FastPacker packer(writer);
    packer.map(task.gpus.empty() ? 7 : 8);
    packer.str("type");
    packer.str("task");
    packer.str("v");
    packer.unsigned_number(kVersion);
    packer.str("id");
    packer.unsigned_number(task.id);
    packer.str("attempt");
    packer.unsigned_number(attempt);
    packer.str("kind");
    packer.str(task.type->name());
    packer.str("params");
    if (!task.packed_params)
        packer.json(task.params);
    else
        packer.raw(*task.packed_params);  // a map already (decision 316)
    packer.str("timeout_s");
    packer.number(task.timeout_s);
    if (!task.gpus.empty()) {
        packer.str("gpus");
        packer.str(task.gpus);
    }
}

void encode_batch_of(std::string& out, std::span<const std::string_view> encoded_tasks) {
    out.clear();
    StringWriter writer{out};
    msgpack::packer<StringWriter> packer(writer);
    // The keys in TaskBatch's order, as TASKFARM_MSGPACK_MAP packs them.
    const TaskBatch header;
    packer.pack_map(3);
    packer.pack(std::string_view("type"));
    packer.pack(header.type);
    packer.pack(std::string_view("v"));
    packer.pack(header.v);
    packer.pack(std::string_view("tasks"));
    packer.pack_array(static_cast<std::uint32_t>(encoded_tasks.size()));
    for (const std::string_view task : encoded_tasks) out.append(task);
}

// Appends without std::string::append's general path for every few bytes msgpack writes.
struct ResultFrame::Writer {
    ResultFrame& frame;
    void write(const char* data, std::size_t size) {
        std::string& buffer = frame.frame_;
        if (frame.used_ + size > buffer.size()) [[unlikely]]
            grow(size);
        char* out = buffer.data() + frame.used_;
        frame.used_ += size;
        if (size > 8) {
            std::memcpy(out, data, size);
            return;
        }
        // Most writes are a few bytes (a type byte, a number, a short key): copied in place.
        for (std::size_t i = 0; i < size; ++i) out[i] = data[i];
    }
    [[gnu::noinline]] void grow(std::size_t size) {
        std::string& buffer = frame.frame_;
        buffer.resize(std::max(2 * buffer.size(), frame.used_ + size + 4096));
    }
};

void ResultFrame::clear() {
    used_ = 0;
    starts_.clear();
    Writer writer{*this};
    msgpack::packer<Writer> packer(writer);
    // The keys in ResultBatch's order, as TASKFARM_MSGPACK_MAP packs them.
    const ResultBatch header;
    packer.pack_map(3);
    packer.pack(std::string_view("type"));
    packer.pack(header.type);
    packer.pack(std::string_view("v"));
    packer.pack(header.v);
    packer.pack(std::string_view("results"));
    writer.write("\xdd\0\0\0\0", 5);  // array 32, its count written by take()
}

void ResultFrame::add(const Result& result) {
    starts_.push_back(used_);
    // The keys in Result's order, as TASKFARM_MSGPACK_MAP packs them, staged (FastPacker).
    Writer writer{*this};
    FastPacker packer(writer);
    packer.map(11);
    packer.str("type");
    packer.str(result.type);
    packer.str("v");
    packer.signed_number(result.v);
    packer.str("id");
    packer.unsigned_number(result.id);
    packer.str("attempt");
    packer.unsigned_number(result.attempt);
    packer.str("kind");
    packer.str(result.kind);
    packer.str("ok");
    packer.boolean(result.ok);
    packer.str("error");
    packer.str(result.error);
    packer.str("run_s");
    packer.number(result.run_s);
    packer.str("value");
    if (result.packed_value.empty())
        packer.json(result.value);
    else
        packer.raw(result.packed_value);
    packer.str("cost");
    packer.map(4);
    packer.str("scope");
    packer.str(result.cost.scope);
    packer.str("user_s");
    packer.number(result.cost.user_s);
    packer.str("sys_s");
    packer.number(result.cost.sys_s);
    packer.str("max_rss_kb");
    packer.signed_number(result.cost.max_rss_kb);
    packer.str("rss");
    packer.unsigned_number(result.rss);
}

void ResultFrame::drop_last() {
    used_ = starts_.back();
    starts_.pop_back();
}

std::string_view ResultFrame::take() {
    if (count() == 1) return std::string_view(frame_).substr(starts_[0], used_ - starts_[0]);
    const auto n = static_cast<std::uint32_t>(count());
    char* at = frame_.data() + starts_[0] - 4;  // big-endian, as msgpack writes it
    at[0] = static_cast<char>(n >> 24);
    at[1] = static_cast<char>(n >> 16);
    at[2] = static_cast<char>(n >> 8);
    at[3] = static_cast<char>(n);
    return std::string_view(frame_).substr(0, used_);
}

Message decode(std::string_view frame, ParamsAs params, ValuesAs values) {
    if (frame.size() <= kMaxFrameBytes)
        if (auto fast = decode_fast(frame, params, values)) return std::move(*fast);
    return detail::decode_general(frame);
}

Message detail::decode_general(std::string_view frame) {
    if (frame.size() > kMaxFrameBytes)
        return DecodeError{fmt::format("frame of {} bytes exceeds the limit of {}", frame.size(), kMaxFrameBytes)};
    // The defaults (2^32-1 of everything) would let one garbage frame ask for gigabytes.
    // Depth: a batch, a task, its params, and nesting of the task type's own below them.
    const msgpack::unpack_limit limits(/*array=*/kMaxBatch, /*map=*/kMaxBatch, /*str=*/kMaxFrameBytes,
                                       /*bin=*/kMaxFrameBytes, /*ext=*/0, /*depth=*/32);
    // One zone per thread, cleared after each frame: its first chunk is kept, so decoding a
    // message of up to that size allocates nothing but the message's own strings and vectors.
    thread_local msgpack::zone zone(64 * 1024);
    struct ClearAfter {
        msgpack::zone& zone;
        ~ClearAfter() { zone.clear(); }
    } clear_after{zone};
    try {
        std::size_t offset = 0;
        const msgpack::object object =
            msgpack::unpack(zone, frame.data(), frame.size(), offset, reference_in_place, nullptr, limits);
        if (offset != frame.size())
            return DecodeError{fmt::format("{} trailing bytes after the message", frame.size() - offset)};
        if (object.type != msgpack::type::MAP) return DecodeError{"message is not a map"};
        const auto head = object.as<Header>();
        if (head.type.empty()) return DecodeError{"message without a type"};
        if (head.v != kVersion) return DecodeError{fmt::format("protocol version {}, want {}", head.v, kVersion)};
        if (const std::string problem = number_problem(object); !problem.empty())
            return DecodeError{fmt::format("malformed message: {}", problem)};
        if (head.type == "hello") return checked(object.as<Hello>());
        if (head.type == "task") return checked(object.as<Task>());
        if (head.type == "result") return checked(object.as<Result>());
        if (head.type == "heartbeat") return object.as<Heartbeat>();
        if (head.type == "shutdown") return object.as<Shutdown>();
        if (head.type == "tasks") return checked(object.as<TaskBatch>());
        if (head.type == "results") return checked(object.as<ResultBatch>());
        if (head.type == "returned") return checked(object.as<Returned>());
        if (head.type == "setup") return checked(object.as<Setup>());
        if (head.type == "cancel") return checked(object.as<Cancel>());
        return DecodeError{fmt::format("unknown message type '{}'", head.type)};
    } catch (const msgpack::insufficient_bytes&) {
        return DecodeError{"truncated message"};
    } catch (const msgpack::type_error&) {  // its what() is "std::bad_cast"
        return DecodeError{
            "malformed message: a field has the wrong type or does not fit (a negative or over-large "
            "number, a string for a number, ...)"};
    } catch (const std::exception& e) {  // unpack_error, size_overflow, bad_alloc
        return DecodeError{fmt::format("malformed message: {}", e.what())};
    }
}

Task to_message(const TaskSpec& task, std::uint32_t attempt) {
    Task message;
    to_message(task, attempt, message);
    return message;
}

void to_message(const TaskSpec& task, std::uint32_t attempt, Task& out) {
    out.id = task.id;
    out.attempt = attempt;
    out.kind = task.type->name();
    out.params = params_of(task);
    out.timeout_s = task.timeout_s;
    out.gpus = task.gpus;
}

TaskSpec to_spec(Task message, const Registry& registry, std::string* packed) {
    TaskSpec spec{message.id, registry.find(message.kind), std::move(message.params), message.timeout_s,
                  {},         std::move(message.gpus)};
    if (!message.packed_params.empty()) {
        if (packed && spec.type && registry.packed_run(spec.type))
            *packed = std::move(message.packed_params);
        else
            spec.params = params_from_packed(message.packed_params);
    }
    return spec;
}

Json params_from_packed(std::string_view packed) {
    FastReader in(packed);
    Json params;
    if (!in.json(params, 1) || !in.done() || !params.is_object())
        throw std::invalid_argument("params that are not a msgpack map");
    return params;
}

// Packed params read back as their type's parse() gives them, so that the text is the JSON
// path's: msgpack keeps no difference between 0 and 0.0 (a whole double packs as an integer),
// and the journal's text is what --resume compares with the plan's, byte for byte.
Json params_of(const TaskSpec& task) {
    if (!task.packed_params) return task.params;
    Json params = params_from_packed(*task.packed_params);
    return task.type ? task.type->parse(params) : params;
}

bool packed_number(std::string_view packed, std::string_view key, double& out) {
    FastReader in(packed);
    std::uint32_t size = 0;
    if (!in.map(size)) return false;
    for (std::uint32_t k = 0; k < size; ++k) {
        std::string_view name;
        if (!in.str(name)) return false;
        if (name == key) return in.number(out);
        if (!in.skim(1)) return false;
    }
    return false;
}

std::string packed_object(std::string_view key, double number) {
    std::string out;
    StringWriter writer{out};
    {
        FastPacker packer(writer);
        packer.map(1);
        packer.str(key);
        packer.number(number);
    }
    return out;
}

std::string packed_object(std::string_view key, std::uint64_t number) {
    std::string out;
    StringWriter writer{out};
    {
        FastPacker packer(writer);
        packer.map(1);
        packer.str(key);
        packer.unsigned_number(number);
    }
    return out;
}

Result to_message(TaskResult result) {
    Result message;
    to_message(std::move(result), message);
    return message;
}

void to_message(TaskResult&& result, Result& out) {
    out.id = result.id;
    out.attempt = result.attempt;
    out.kind = kind_name(result);
    out.ok = result.ok;
    out.error = std::move(result.error);
    out.run_s = result.run_time.count();
    out.value = std::move(result.value);
    out.cost.scope = to_string(result.cost.scope);
    out.cost.user_s = result.cost.user_s;
    out.cost.sys_s = result.cost.sys_s;
    out.cost.max_rss_kb = result.cost.max_rss_kb;
}

TaskResult to_result(Result&& message, std::string worker, const TaskType* type) {
    TaskResult result;
    result.id = message.id;
    result.attempt = message.attempt;
    result.type = type;
    result.ok = message.ok;
    result.error = std::move(message.error);
    result.worker = std::move(worker);
    result.run_time = std::chrono::duration<double>(message.run_s);
    result.value = std::move(message.value);  // a failed task's too (TaskFailed)
    // From another process: an unknown scope is no measurement, a nonsense number none.
    const auto seconds = [](double s) { return std::isfinite(s) && s >= 0 && s <= kMaxSeconds ? s : 0.0; };
    result.cost.scope = cost_scope(message.cost.scope);
    if (result.cost.scope != TaskCost::Scope::None) {
        result.cost.user_s = seconds(message.cost.user_s);
        result.cost.sys_s = seconds(message.cost.sys_s);
        result.cost.max_rss_kb = message.cost.max_rss_kb >= 0 ? message.cost.max_rss_kb : -1;
    }
    return result;
}

TaskResult to_result(const Result& message, std::string worker, const TaskType* type) {
    return to_result(Result(message), std::move(worker), type);
}

}  // namespace taskfarm::proto
