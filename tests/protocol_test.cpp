#include <cmath>
#include <limits>
#include <random>
#include <fmt/format.h>
#include <sstream>

#include <gtest/gtest.h>

#include "protocol.hpp"
#include "support.hpp"

namespace taskfarm::proto {
namespace {

template <typename T>
std::string raw(const T& value) {
    std::stringstream buffer;
    msgpack::pack(buffer, value);
    return buffer.str();
}

std::string rejection(std::string_view frame) {
    const Message message = decode(frame);
    if (const auto* error = std::get_if<DecodeError>(&message)) return error->reason;
    return "accepted";
}

const TaskType* type(std::string_view name) { return testing::type(name); }

// One of `seeds`, edited `least` to 3 + `least` times at random places: a byte changed, taken
// out or put in.
std::string mutated(const std::vector<std::string>& seeds, std::mt19937_64& random, int least) {
    std::string frame = seeds[random() % seeds.size()];
    const int edits = least + static_cast<int>(random() % 4);
    for (int e = 0; e < edits && !frame.empty(); ++e) {
        const std::size_t at = random() % frame.size();
        switch (random() % 3) {
            case 0: frame[at] = static_cast<char>(random()); break;
            case 1: frame.erase(at, 1); break;
            default: frame.insert(at, 1, static_cast<char>(random())); break;
        }
    }
    return frame;
}

// A task packed by hand, {"type":"task","v":kVersion,"id":ID,"kind":"sleep"}, then `more` keys
// and values in turn: what no encoder of ours writes (an id of another type, a key again, a
// key no version has).
template <typename Id, typename... More>
std::string hand_packed_task(const Id& id, const More&... more) {
    static_assert(sizeof...(More) % 2 == 0, "keys and values in turn");
    std::stringstream buffer;
    msgpack::packer packer(buffer);
    packer.pack_map(4 + sizeof...(More) / 2);
    packer.pack(std::string("type")).pack(std::string("task"));
    packer.pack(std::string("v")).pack(kVersion);
    packer.pack(std::string("id")).pack(id);
    packer.pack(std::string("kind")).pack(std::string("sleep"));
    (packer.pack(more), ...);
    return buffer.str();
}

TEST(Protocol, TaskRoundTripsWithEveryField) {
    TaskSpec spec{42, type("sleep"), {{"seconds", 0.25}}, 7.5};
    const Message message = decode(encode(to_message(spec, 3)));
    const auto* task = std::get_if<Task>(&message);
    ASSERT_NE(task, nullptr) << rejection(encode(to_message(spec, 3)));
    EXPECT_EQ(task->id, 42u);
    EXPECT_EQ(task->attempt, 3u);
    EXPECT_EQ(task->kind, "sleep");
    EXPECT_EQ(task->params, (Json{{"seconds", 0.25}}));
    EXPECT_EQ(task->timeout_s, 7.5);
    const TaskSpec back = to_spec(*task, builtin_types());
    EXPECT_EQ(back.id, 42u);
    EXPECT_EQ(back.type, type("sleep"));
    EXPECT_EQ(back.timeout_s, 7.5);
}

TEST(Protocol, ATaskCarriesTheGpusItHoldsAndOneThatHoldsNoneHasNoSuchKey) {
    TaskSpec spec{4, type("sleep"), {{"seconds", 0}}, 0};
    const std::string plain = encode(to_message(spec, 1));
    EXPECT_EQ(plain.find("gpus"), std::string::npos) << "a task that holds no GPU costs not a byte more";
    spec.gpus = "3,5";
    const Message message = decode(encode(to_message(spec, 1)));
    const auto* task = std::get_if<Task>(&message);
    ASSERT_NE(task, nullptr) << rejection(encode(to_message(spec, 1)));
    EXPECT_EQ(task->gpus, "3,5");
    EXPECT_EQ(to_spec(*task, builtin_types()).gpus, "3,5");
    const Message none = decode(plain);
    ASSERT_NE(std::get_if<Task>(&none), nullptr);
    EXPECT_EQ(std::get<Task>(none).gpus, "");
}

TEST(Protocol, ParamsAndValuesKeepEveryJsonTypeAndNesting) {
    const Json params = {{"text", "a b\u00e9"},
                         {"n", 18446744073709551615u},
                         {"neg", -3},
                         {"x", 0.125},
                         {"yes", true},
                         {"none", nullptr},
                         {"list", {1, "two", {{"three", 3}}}},
                         {"map", {{"deep", {{"deeper", {1, 2}}}}}}};
    TaskSpec spec{1, type("sleep"), params, 0};
    const Message message = decode(encode(to_message(spec, 1)));
    ASSERT_TRUE(std::holds_alternative<Task>(message)) << rejection(encode(to_message(spec, 1)));
    EXPECT_EQ(std::get<Task>(message).params, params);

    TaskResult result;
    result.id = 1;
    result.type = type("sleep");
    result.ok = true;
    result.value = params;
    const Message reply = decode(encode(to_message(result)));
    ASSERT_TRUE(std::holds_alternative<Result>(reply));
    EXPECT_EQ(to_result(std::get<Result>(reply), "w1", type("sleep")).value, params);
}

TEST(Protocol, AKindThisProgramLacksDecodesToATaskWithoutAType) {
    Task task;
    task.id = 5;
    task.kind = "mine_bitcoin";
    const Message message = decode(encode(task));
    ASSERT_TRUE(std::holds_alternative<Task>(message)) << rejection(encode(task));
    EXPECT_EQ(to_spec(std::get<Task>(message), builtin_types()).type, nullptr);
}

TEST(Protocol, ResultRoundTripsWithItsValue) {
    TaskResult result;
    result.id = 7;
    result.attempt = 2;
    result.type = type("sleep");
    result.ok = true;
    result.value = {{"slept_s", 0.5}};
    result.run_time = std::chrono::duration<double>(0.51);
    const Message message = decode(encode(to_message(result)));
    const auto* decoded = std::get_if<Result>(&message);
    ASSERT_NE(decoded, nullptr);
    EXPECT_EQ(decoded->kind, "sleep");
    const TaskResult back = to_result(*decoded, "w3", type("sleep"));
    EXPECT_EQ(back.id, 7u);
    EXPECT_EQ(back.attempt, 2u);
    EXPECT_TRUE(back.ok);
    EXPECT_EQ(back.value, (Json{{"slept_s", 0.5}}));
    EXPECT_EQ(back.run_time.count(), 0.51);
    EXPECT_EQ(back.worker, "w3");
}

TEST(Protocol, AResultCarriesItsCostAndAnOldOneWithoutItReadsAsNotMeasured) {
    TaskResult result;
    result.id = 3;
    result.type = type("cpu");
    result.ok = true;
    result.cost = {.scope = TaskCost::Scope::Process, .user_s = 1.25, .sys_s = 0.5, .max_rss_kb = 4096, .host = "here"};
    const Message message = decode(encode(to_message(result)));
    const auto* decoded = std::get_if<Result>(&message);
    ASSERT_NE(decoded, nullptr);
    EXPECT_EQ(decoded->cost.scope, "process");
    const TaskResult back = to_result(*decoded, "w1", type("cpu"));
    EXPECT_EQ(back.cost.scope, TaskCost::Scope::Process);
    EXPECT_EQ(back.cost.user_s, 1.25);
    EXPECT_EQ(back.cost.sys_s, 0.5);
    EXPECT_EQ(back.cost.max_rss_kb, 4096);
    EXPECT_EQ(back.cost.host, "") << "the host is the worker's, from its hello: the schedule sets it";

    // A result of a worker from before costs: no "cost" key.
    std::stringstream buffer;
    msgpack::packer packer(buffer);
    packer.pack_map(4);
    packer.pack(std::string("type")).pack(std::string("result"));
    packer.pack(std::string("v")).pack(kVersion);
    packer.pack(std::string("id")).pack(3);
    packer.pack(std::string("kind")).pack(std::string("cpu"));
    const Message old = decode(buffer.str());
    ASSERT_TRUE(std::holds_alternative<Result>(old)) << rejection(buffer.str());
    EXPECT_EQ(to_result(std::get<Result>(old), "w1", type("cpu")).cost.scope, TaskCost::Scope::None);
}

TEST(Protocol, ACostFromAPeerIsNeverTrusted) {
    Result result;
    result.id = 1;
    result.kind = "cpu";
    result.cost = {.scope = "process", .user_s = -3, .sys_s = std::nan(""), .max_rss_kb = -77};
    TaskResult back = to_result(result, "w1", type("cpu"));
    EXPECT_EQ(back.cost.user_s, 0);
    EXPECT_EQ(back.cost.sys_s, 0);
    EXPECT_EQ(back.cost.max_rss_kb, -1);
    result.cost.scope = "galaxy";  // an unknown scope is no measurement at all
    result.cost.user_s = 5;
    back = to_result(result, "w1", type("cpu"));
    EXPECT_EQ(back.cost.scope, TaskCost::Scope::None);
    EXPECT_EQ(back.cost.user_s, 0);
    // A cost that is not a map, or a field of the wrong type, is a malformed message.
    for (int variant = 0; variant < 2; ++variant) {
        std::stringstream buffer;
        msgpack::packer packer(buffer);
        packer.pack_map(5);
        packer.pack(std::string("type")).pack(std::string("result"));
        packer.pack(std::string("v")).pack(kVersion);
        packer.pack(std::string("id")).pack(3);
        packer.pack(std::string("kind")).pack(std::string("cpu"));
        packer.pack(std::string("cost"));
        if (variant == 0) {
            packer.pack(std::string("lots"));
        } else {
            packer.pack_map(1);
            packer.pack(std::string("user_s")).pack(std::string("1.5"));
        }
        EXPECT_EQ(rejection(buffer.str()).rfind("malformed message: ", 0), 0u) << rejection(buffer.str());
    }
}

TEST(Protocol, AFailedResultKeepsTheValueItWasSentWith) {
    Result result;
    result.id = 7;
    result.kind = "command";
    result.ok = false;
    result.error = "exited with status 3";
    result.value = {{"exit_code", 3}};  // a type's TaskFailed value, for the journal
    const TaskResult back = to_result(result, "w1", type("command"));
    EXPECT_FALSE(back.ok);
    EXPECT_EQ(back.value, (Json{{"exit_code", 3}}));
    EXPECT_EQ(back.error, "exited with status 3");
}

TEST(Protocol, SetupRoundTripsAndMustHoldAMap) {
    proto::Setup setup;
    setup.settings = {{"max_bytes", 1000}, {"lang", "en"}};
    const Message message = decode(encode(setup));
    ASSERT_TRUE(std::holds_alternative<proto::Setup>(message)) << rejection(encode(setup));
    EXPECT_EQ(std::get<proto::Setup>(message).settings, setup.settings);
    setup.settings = Json::array({1, 2});
    EXPECT_EQ(rejection(encode(setup)), "setup whose settings are not a map");
}

TEST(Protocol, RejectsATaskWhoseParamsAreNotAMap) {
    Task task;
    task.id = 5;
    task.kind = "sleep";
    task.params = "seconds=1";
    EXPECT_EQ(rejection(encode(task)), "task 5 has params that are not a map");
}

TEST(Protocol, HelloHeartbeatAndShutdownRoundTrip) {
    Hello hello;
    hello.name = "w1";
    hello.pid = 1234;
    hello.host = "box";
    hello.cpu = 3;
    const Message message = decode(encode(hello));
    ASSERT_TRUE(std::holds_alternative<Hello>(message));
    EXPECT_EQ(std::get<Hello>(message).name, "w1");
    EXPECT_EQ(std::get<Hello>(message).pid, 1234);
    EXPECT_EQ(std::get<Hello>(message).cpu, 3);
    EXPECT_TRUE(std::holds_alternative<Heartbeat>(decode(encode(Heartbeat{}))));
    EXPECT_TRUE(std::holds_alternative<Shutdown>(decode(encode(Shutdown{}))));
}

TEST(Protocol, RejectsGarbage) {
    EXPECT_EQ(rejection(""), "truncated message");
    EXPECT_NE(rejection("\xc1\xc1\xc1garbage"), "accepted");  // 0xc1 is never valid msgpack
    EXPECT_EQ(rejection(raw(std::vector<int>{1, 2, 3})), "message is not a map");
    EXPECT_EQ(rejection(raw(42)), "message is not a map");
}

TEST(Protocol, RejectsAMapWithoutTypeOrWithAnUnknownOne) {
    EXPECT_EQ(rejection(raw(std::map<std::string, int>{{"v", 1}})), "message without a type");
    Header header{"launch_missiles", kVersion};
    EXPECT_EQ(rejection(raw(header)), "unknown message type 'launch_missiles'");
}

TEST(Protocol, RejectsAnotherVersion) {
    Hello hello;
    hello.name = "w1";
    hello.v = kVersion + 1;
    EXPECT_EQ(rejection(encode(hello)), fmt::format("protocol version {}, want {}", kVersion + 1, kVersion));
    hello.v = 0;
    EXPECT_EQ(rejection(encode(hello)), fmt::format("protocol version 0, want {}", kVersion));
}

TEST(Protocol, RejectsMissingRequiredFields) {
    Task task;
    task.kind = "sleep";
    EXPECT_EQ(rejection(encode(task)), "task without an id (or with id 18446744073709551615, which means none)");
    task.id = 5;
    task.kind.clear();
    EXPECT_EQ(rejection(encode(task)), "task 5 without a kind");
    Hello hello;
    EXPECT_EQ(rejection(encode(hello)), "hello without a name");
    Result result;
    result.kind = "sleep";
    EXPECT_EQ(rejection(encode(result)), "result without an id (or with id 18446744073709551615, which means none)");
}

TEST(Protocol, RejectsAFieldOfTheWrongType) {
    const std::string frame = hand_packed_task(std::string("seven"));
    EXPECT_EQ(rejection(frame).rfind("malformed message: ", 0), 0u) << rejection(frame);
}

// A peer's id that no TaskId holds is named, not reported as msgpack-c's "std::bad_cast".
TEST(Protocol, SaysWhatIsWrongWithAnIdThatIsNotAWholeNumber) {
    const auto task_with_id = [](auto id) { return rejection(hand_packed_task(id)); };
    EXPECT_EQ(task_with_id(-1), "malformed message: \"id\" must be a whole number >= 0, not -1");
    EXPECT_EQ(task_with_id(2.5), "malformed message: \"id\" must be a whole number >= 0, not 2.5");
    EXPECT_EQ(task_with_id(std::string("seven")),
              "malformed message: \"id\" must be a whole number >= 0, not \"seven\"");
    EXPECT_EQ(task_with_id(~std::uint64_t{0}),
              "task without an id (or with id 18446744073709551615, which means none)");
}

TEST(Protocol, RejectsATruncatedMessage) {
    const std::string whole = encode(to_message(TaskSpec{1, type("sleep"), {{"seconds", 1}}}, 1));
    for (std::size_t size = 0; size < whole.size(); ++size)
        EXPECT_EQ(rejection(std::string_view(whole).substr(0, size)), "truncated message") << "size " << size;
}

TEST(Protocol, RejectsTrailingBytes) {
    EXPECT_EQ(rejection(encode(Heartbeat{}) + "x"), "1 trailing bytes after the message");
}

TEST(Protocol, RejectsAnOversizedFrame) {
    const std::string frame(kMaxFrameBytes + 1, '\x90');
    EXPECT_EQ(rejection(frame),
              fmt::format("frame of {} bytes exceeds the limit of {}", kMaxFrameBytes + 1, kMaxFrameBytes));
}

TEST(Protocol, RejectsHugeDeclaredSizesWithoutAllocatingThem) {
    // An array header claiming 2^32-1 elements in five bytes must not allocate 2^32 objects.
    EXPECT_NE(rejection(std::string("\xdd\xff\xff\xff\xff", 5)), "accepted");
    // A map of 2^32-1 entries, and a string of 2^32-1 bytes.
    EXPECT_NE(rejection(std::string("\xdf\xff\xff\xff\xff", 5)), "accepted");
    EXPECT_NE(rejection(std::string("\xdb\xff\xff\xff\xff", 5)), "accepted");
}

TEST(Protocol, RejectsDeepNesting) {
    std::string frame(100, '\x91');  // [[[[...]]]]
    frame += '\x90';
    EXPECT_NE(rejection(frame), "accepted");
}

TEST(Protocol, SurvivesRandomMutationsOfValidFrames) {
    const std::vector<std::string> seeds{encode(to_message(TaskSpec{9, type("sleep"), {{"seconds", 2}}}, 1)),
                                         encode(to_message(TaskResult{})), encode(to_message([] {
                                             TaskResult measured;
                                             measured.id = 4;
                                             measured.cost.scope = TaskCost::Scope::Tree;
                                             measured.cost.user_s = 0.25;
                                             measured.cost.max_rss_kb = 1024;
                                             return measured;
                                         }()))};
    std::mt19937_64 random(7);
    std::size_t accepted = 0;
    for (int round = 0; round < 20000; ++round) {
        const std::string frame = mutated(seeds, random, 1);
        if (!std::holds_alternative<DecodeError>(decode(frame))) ++accepted;  // must simply not crash
    }
    EXPECT_LT(accepted, 20000u);
}

// The coordinator encodes each task once (decision 151) and puts those bytes into a frame:
// the frame must be exactly the TaskBatch an encoder of the whole would make, so a worker
// reads it as before.
TEST(Protocol, ABatchOfTasksEncodedAlreadyIsTheBatchEncodedWhole) {
    for (const std::size_t count : {1u, 2u, 17u, 128u}) {
        TaskBatch tasks;
        std::string each;
        for (TaskId id = 0; id < count; ++id) {
            tasks.tasks.push_back(
                to_message(TaskSpec{id * 1000, type("sleep"), {{"seconds", 0.5 * id}}, id % 2 ? 3.0 : 0}, 1 + id % 3));
            append_encoded(each, tasks.tasks.back());
        }
        std::vector<std::string_view> pieces;
        std::size_t at = 0;
        for (const Task& task : tasks.tasks) {
            const std::size_t size = encode(task).size();
            pieces.emplace_back(each.data() + at, size);
            at += size;
        }
        std::string frame = "left over";
        encode_batch_of(frame, pieces);
        EXPECT_EQ(frame, encode(tasks)) << count << " tasks";
    }
}

// The worker packs each result once, into the frame (decision 200): what it sends decodes as
// the batch of those results, or as the one result's own message, and a frame cleared and
// filled again holds nothing of the last.
TEST(Protocol, AResultFrameDecodesAsTheBatchOfWhatWasAddedOrAsItsOneResult) {
    ResultFrame frame;
    for (const std::size_t count : {1u, 2u, 3u, 300u}) {
        frame.clear();
        for (TaskId id = 0; id < count; ++id) {
            TaskResult result;
            result.id = id * 7;
            result.ok = id % 2 == 0;
            result.error = result.ok ? "" : "failed";
            result.value = Json{{"n", id}};
            frame.add(to_message(std::move(result)));
        }
        TaskResult dropped;
        dropped.id = 99999;
        frame.add(to_message(std::move(dropped)));
        frame.drop_last();
        ASSERT_EQ(frame.count(), count);
        const std::string sent(frame.take());
        EXPECT_EQ(sent.size(), frame.bytes());
        const Message message = decode(sent);
        if (count == 1) {
            ASSERT_TRUE(std::holds_alternative<Result>(message)) << rejection(sent);
            EXPECT_EQ(std::get<Result>(message).id, 0u);
            continue;
        }
        ASSERT_TRUE(std::holds_alternative<ResultBatch>(message)) << count << ": " << rejection(sent);
        const auto& back = std::get<ResultBatch>(message).results;
        ASSERT_EQ(back.size(), count);
        for (TaskId id = 0; id < count; ++id) {
            EXPECT_EQ(back[id].id, id * 7);
            EXPECT_EQ(back[id].ok, id % 2 == 0);
            EXPECT_EQ(back[id].value, (Json{{"n", id}}));
        }
    }
}

// The coordinator packs a task from its spec (no copy of the params into a Task first):
// byte for byte what the Task message makes.
TEST(Protocol, ATaskPackedFromItsSpecIsTheTaskMessage) {
    TaskSpec plain{41, type("sleep"), {{"seconds", 0.25}, {"note", "x"}}, 0};
    TaskSpec full{42, type("cpu"), {{"lo", 1}, {"hi", 9}}, 2.5};
    full.gpus = "3,5";
    TaskSpec packed{43, type("sleep"), {}, 1.5};  // params made packed (decision 316)
    packed.packed_params = packed_object("seconds", 0.25);
    for (const TaskSpec* task : {&plain, &full, &packed}) {
        std::string out = "before";
        append_encoded(out, *task, 3);
        EXPECT_EQ(out, "before" + encode(to_message(*task, 3))) << task->id;
    }
}

// The hot frames are read and written by a fast path of their own (decision 241): what it
// reads must be what msgpack's object tree reads, frame for frame, valid or not, and what it
// writes must be byte for byte what msgpack-c writes.
TEST(Protocol, TheFastPathReadsAndWritesWhatTheGeneralOneDoes) {
    const Json odd = Json{{"n", -5},
                          {"big", -70000},
                          {"huge", std::numeric_limits<std::int64_t>::min()},
                          {"u", 300},
                          {"u64", std::numeric_limits<std::uint64_t>::max()},
                          {"f", -0.125},
                          {"s", std::string(40, 'x')},
                          {"long", std::string(300, 'y')},
                          {"list", Json::array({nullptr, true, false, Json::array({1, 2}), Json::object()})}};
    TaskBatch tasks;
    ResultBatch results;
    for (TaskId id = 0; id < 20; ++id) {
        TaskSpec spec{id * 1000, type("sleep"), id % 3 ? Json{{"seconds", 0.5 * id}} : odd, id % 2 ? 3.0 : 0};
        if (id == 7) spec.gpus = "3,5";
        tasks.tasks.push_back(to_message(spec, 1 + id % 3));
        std::string packed;
        append_encoded(packed, spec, 1 + id % 3);
        EXPECT_EQ(packed, encode(tasks.tasks.back())) << id;
        TaskResult result;
        result.id = id;
        result.ok = id % 2;
        result.error = result.ok ? "" : "failed";
        result.value = id % 3 ? Json{{"slept_s", 0.0}} : odd;
        result.cost.scope = TaskCost::Scope::Process;
        result.cost.max_rss_kb = id % 2 ? -1 : 4096;
        results.results.push_back(to_message(std::move(result)));
        ResultFrame frame;
        frame.add(results.results.back());
        EXPECT_EQ(std::string(frame.take()), encode(results.results.back())) << id;
    }
    const std::vector<std::string> seeds{encode(tasks), encode(results), encode(tasks.tasks[7]),
                                         encode(results.results[3])};
    std::mt19937_64 random(11);
    std::size_t both_read = 0;
    for (int round = 0; round < 4000; ++round) {
        const std::string frame = mutated(seeds, random, 0);  // 0 edits: the valid frame
        const Message fast = decode(frame);
        const Message general = detail::decode_general(frame);
        ASSERT_EQ(fast.index(), general.index()) << round;
        // As a worker reads it (params kept as msgpack where they can be): the same message
        // once the params are made JSON, or the same refusal.
        Message packed = decode(frame, ParamsAs::Packed);
        ASSERT_EQ(packed.index(), general.index()) << round;
        const auto unpack = [](Task& task) {
            if (task.packed_params.empty()) return;
            task.params = params_from_packed(task.packed_params);
            task.packed_params.clear();
        };
        if (auto* task = std::get_if<Task>(&packed)) unpack(*task);
        if (auto* batch = std::get_if<TaskBatch>(&packed))
            for (Task& task : batch->tasks) unpack(task);
        // As a coordinator whose sinks read no value does (decision 250): the same message but
        // for the values it walked over (null), or the same refusal.
        Message skipped = decode(frame, ParamsAs::Json, ValuesAs::Skip);
        ASSERT_EQ(skipped.index(), general.index()) << round;
        const auto without_values = [](Message& message) {
            if (auto* result = std::get_if<Result>(&message)) result->value = nullptr;
            if (auto* batch = std::get_if<ResultBatch>(&message))
                for (Result& result : batch->results) result.value = nullptr;
        };
        if (const auto* error = std::get_if<DecodeError>(&general)) {
            EXPECT_EQ(std::get<DecodeError>(fast).reason, error->reason) << round;
            EXPECT_EQ(std::get<DecodeError>(skipped).reason, error->reason) << round;
            continue;
        }
        ++both_read;
        const auto encoded = [](const Message& message) {
            return std::visit(
                [](const auto& read) -> std::string {
                    if constexpr (std::is_same_v<std::decay_t<decltype(read)>, DecodeError>)
                        return {};
                    else
                        return encode(read);
                },
                message);
        };
        EXPECT_EQ(encoded(fast), encoded(general)) << round;
        EXPECT_EQ(encoded(packed), encoded(general)) << round;
        Message general_without = general;
        without_values(general_without);
        without_values(skipped);
        EXPECT_EQ(encoded(skipped), encoded(general_without)) << round;
    }
    EXPECT_GT(both_read, 1000u);
}

// A coordinator none of whose sinks reads a value drops the values it can walk over, and
// decodes every other field as before (decision 250); a value the walk refuses (a map of more
// keys than it compares) is read as JSON as before.
TEST(Protocol, ResultsReadWithoutTheirValuesKeepEverythingElse) {
    Json wide = Json::object();
    for (int key = 0; key < 20; ++key) wide[fmt::format("k{}", key)] = key;
    for (const Json& value : {Json{{"slept_s", 0.0}}, Json::array({1, "two", nullptr}), Json(-3), wide}) {
        TaskResult made;
        made.id = 9;
        made.attempt = 2;
        made.ok = true;
        made.value = value;
        made.cost.scope = TaskCost::Scope::Process;
        made.cost.user_s = 0.25;
        const Result sent = to_message(std::move(made));
        const std::string frame = encode(sent);
        const Message read = decode(frame, ParamsAs::Json, ValuesAs::Skip);
        ASSERT_TRUE(std::holds_alternative<Result>(read)) << rejection(frame);
        const Result& got = std::get<Result>(read);
        EXPECT_EQ(got.value, value.size() > 16 ? value : Json()) << value.dump();
        Result expected = sent;
        expected.value = got.value;
        EXPECT_EQ(encode(got), encode(expected)) << value.dump();
        EXPECT_EQ(std::get<Result>(decode(frame)).value, value);  // ValuesAs::Json, the default
    }
}

// The fast path reads a task into one without params (its default map is an allocation,
// decision 251): a task frame without "params" still reads as an empty map, as the general
// decoder's default, alone and in a batch, and one whose params are nil is still refused.
TEST(Protocol, ATaskWithoutParamsReadsAsAnEmptyMapAndNilParamsAreRefused) {
    const auto task_frame = [](bool with_params) {
        std::stringstream buffer;
        msgpack::packer packer(buffer);
        packer.pack_map(with_params ? 5 : 4);
        packer.pack(std::string("type")).pack(std::string("task"));
        packer.pack(std::string("v")).pack(kVersion);
        packer.pack(std::string("id")).pack(3);
        packer.pack(std::string("kind")).pack(std::string("sleep"));
        if (with_params) packer.pack(std::string("params")).pack_nil();
        return buffer.str();
    };
    for (const ParamsAs as : {ParamsAs::Json, ParamsAs::Packed}) {
        const Message alone = decode(task_frame(false), as);
        ASSERT_TRUE(std::holds_alternative<Task>(alone)) << rejection(task_frame(false));
        EXPECT_EQ(std::get<Task>(alone).params, Json::object());
        const std::string tasks[] = {task_frame(false), task_frame(false)};
        std::string batch;
        encode_batch_of(batch, std::vector<std::string_view>{tasks[0], tasks[1]});
        const Message both = decode(batch, as);
        ASSERT_TRUE(std::holds_alternative<TaskBatch>(both)) << rejection(batch);
        for (const Task& task : std::get<TaskBatch>(both).tasks) EXPECT_EQ(task.params, Json::object());
        const Message nil = decode(task_frame(true), as);
        ASSERT_TRUE(std::holds_alternative<DecodeError>(nil));
        EXPECT_EQ(std::get<DecodeError>(nil).reason, "task 3 has params that are not a map");
    }
    EXPECT_EQ(Task().params, Json::object());  // a Task made by hand has none, as before
}

// A worker keeps a task's params as msgpack for a type that runs from them (decision 242):
// the no-op sleep decodes nothing and packs its value as the JSON run's would be packed;
// any other sleep, bad params and other types run from JSON as before.
// Decision 281: a registry finds each type's PackedRun when the type is added; a worker's
// run_task() asks it instead of casting per task, and runs the no-op from its bytes alike.
TEST(Protocol, ARegistryKnowsWhichOfItsTypesRunFromPackedParams) {
    const Registry& builtins = builtin_types();
    ASSERT_NE(builtins.packed_run(type("sleep")), nullptr);
    EXPECT_EQ(builtins.packed_run(type("sleep")), dynamic_cast<const PackedRun*>(type("sleep")));
    EXPECT_EQ(builtins.packed_run(type("cpu")), nullptr);
    EXPECT_EQ(builtins.packed_run(nullptr), nullptr);
    Registry other;
    add_builtin_types(other);
    EXPECT_NE(other.packed_run(other.find("sleep")), nullptr);
    EXPECT_EQ(builtins.packed_run(other.find("sleep")), nullptr);  // another registry's type

    const TaskSpec noop{1, type("sleep"), {{"seconds", 0.0}}, 0};
    const Message message = decode(encode(to_message(noop, 1)), ParamsAs::Packed);
    std::string packed;
    const TaskSpec spec = to_spec(std::get<Task>(message), builtins, &packed);
    ASSERT_FALSE(packed.empty());
    RunEnv env{.worker = "w1", .mode = "processes", .isolated = true, .cost_per_slice = true};
    std::string cast_value;
    const TaskResult cast = run_task(spec, 1, env, packed, cast_value);
    env.registry = &builtins;
    std::string looked_up_value;
    const TaskResult looked_up = run_task(spec, 1, env, packed, looked_up_value);
    ASSERT_TRUE(looked_up.ok) << looked_up.error;
    EXPECT_TRUE(looked_up.value.is_null());  // ran from its bytes: the value is packed
    EXPECT_FALSE(looked_up_value.empty());
    EXPECT_EQ(looked_up_value, cast_value);
}

TEST(Protocol, AWorkerRunsTheNoOpFromItsPackedParams) {
    struct AsWorker {
        TaskSpec spec;
        std::string packed;
    };
    const auto as_worker = [](const TaskSpec& spec) {
        const Message message = decode(encode(to_message(spec, 1)), ParamsAs::Packed);
        AsWorker read;
        read.spec = to_spec(std::get<Task>(message), builtin_types(), &read.packed);
        return read;
    };
    const RunEnv env{.worker = "w1", .mode = "processes", .isolated = true, .cost_per_slice = true};
    const auto run_as_worker = [&](const TaskSpec& spec, std::string& value) {
        const AsWorker read = as_worker(spec);
        return run_task(read.spec, 1, env, read.packed, value);
    };
    const AsWorker noop = as_worker(TaskSpec{1, type("sleep"), {{"seconds", 0.0}}, 0});
    EXPECT_FALSE(noop.packed.empty());
    EXPECT_TRUE(noop.spec.params.is_null());  // nothing made: they are in `packed` (decision 251)
    EXPECT_EQ(params_from_packed(noop.packed), (Json{{"seconds", 0.0}}));
    const AsWorker cpu = as_worker(TaskSpec{2, type("cpu"), {{"lo", 1}, {"hi", 9}}, 0});
    EXPECT_TRUE(cpu.packed.empty());
    EXPECT_EQ(cpu.spec.params, (Json{{"lo", 1}, {"hi", 9}}));

    Result packed;
    const TaskResult ran = run_task(noop.spec, 1, env, noop.packed, packed.packed_value);
    ASSERT_TRUE(ran.ok) << ran.error;
    EXPECT_TRUE(ran.value.is_null());
    EXPECT_FALSE(packed.packed_value.empty());
    to_message(TaskResult(ran), packed);
    Result reference = packed;  // the same result with the value the JSON run gives
    reference.packed_value.clear();
    reference.value = Json{{"slept_s", 0.0}};
    ResultFrame frame;
    frame.add(reference);
    const std::string expected(frame.take());
    frame.clear();
    frame.add(packed);
    EXPECT_EQ(std::string(frame.take()), expected);
    const Message back = decode(expected);
    EXPECT_EQ(to_result(std::get<Result>(back), "w1", type("sleep")).value, (Json{{"slept_s", 0}}));

    std::string none;
    const TaskResult slept = run_as_worker(TaskSpec{3, type("sleep"), {{"seconds", 0.001}}, 0}, none);
    ASSERT_TRUE(slept.ok) << slept.error;
    EXPECT_GE(slept.value.at("slept_s").get<double>(), 0.0);
    EXPECT_TRUE(none.empty());
    const TaskResult refused = run_as_worker(TaskSpec{4, type("sleep"), {{"seconds", "soon"}}, 0}, none);
    EXPECT_FALSE(refused.ok);
    EXPECT_EQ(refused.error, "sleep needs \"seconds\"");
    const TaskResult negative = run_as_worker(TaskSpec{5, type("sleep"), {{"seconds", -1}}, 0}, none);
    EXPECT_FALSE(negative.ok);
    EXPECT_EQ(negative.error, run_task(TaskSpec{5, type("sleep"), {{"seconds", -1}}, 0}, 1, env).error);
}

TEST(Protocol, BatchesRoundTripInOrder) {
    TaskBatch tasks;
    for (TaskId id = 0; id < 3; ++id)
        tasks.tasks.push_back(to_message(TaskSpec{id, type("sleep"), {{"seconds", 0.5}}}, 2));
    const Message message = decode(encode(tasks));
    ASSERT_TRUE(std::holds_alternative<TaskBatch>(message)) << rejection(encode(tasks));
    const auto& back = std::get<TaskBatch>(message).tasks;
    ASSERT_EQ(back.size(), 3u);
    for (TaskId id = 0; id < 3; ++id) {
        EXPECT_EQ(back[id].id, id);
        EXPECT_EQ(back[id].attempt, 2u);
        EXPECT_EQ(to_spec(back[id], builtin_types()).params.at("seconds"), 0.5);
    }
    ResultBatch results;
    for (TaskId id = 0; id < 2; ++id) {
        TaskResult result;
        result.id = id;
        result.ok = true;
        results.results.push_back(to_message(result));
    }
    const Message reply = decode(encode(results));
    ASSERT_TRUE(std::holds_alternative<ResultBatch>(reply)) << rejection(encode(results));
    EXPECT_EQ(std::get<ResultBatch>(reply).results.at(1).id, 1u);
    Returned returned;
    returned.tasks = {{4, 1}, {5, 2}};
    returned.busy_s = 0.25;
    const Message back_again = decode(encode(returned));
    ASSERT_TRUE(std::holds_alternative<Returned>(back_again)) << rejection(encode(returned));
    EXPECT_EQ(std::get<Returned>(back_again).tasks.at(1).attempt, 2u);
    EXPECT_EQ(std::get<Returned>(back_again).busy_s, 0.25);
}

TEST(Protocol, EncodeToReusesItsBufferAndMatchesEncode) {
    std::string frame = "left over from an earlier message";
    const Task task = to_message(TaskSpec{8, type("cpu"), {{"lo", 1}, {"hi", 9}}}, 1);
    encode_to(frame, task);
    EXPECT_EQ(frame, encode(task));
}

TEST(Protocol, RejectsABatchWithOneBadElementNamingIt) {
    TaskBatch tasks;
    tasks.tasks.push_back(to_message(TaskSpec{1, type("sleep"), {{"seconds", 0}}}, 1));
    tasks.tasks.push_back(to_message(TaskSpec{2, type("sleep"), {{"seconds", 0}}}, 1));
    tasks.tasks[1].kind = "";
    EXPECT_EQ(rejection(encode(tasks)), "tasks element 1: task 2 without a kind");
    tasks.tasks[1].kind = "sleep";
    tasks.tasks[1].type = "result";
    EXPECT_EQ(rejection(encode(tasks)),
              fmt::format("tasks element 1 is a 'result' of version {0}, want a 'task' of version {0}", kVersion));
    EXPECT_EQ(rejection(encode(TaskBatch{})), "tasks without any");
    EXPECT_EQ(rejection(encode(ResultBatch{})), "results without any");
    EXPECT_EQ(rejection(encode(Returned{})), "returned without any tasks");
    Returned returned;
    returned.tasks = {{kNoId, 1}};
    EXPECT_EQ(rejection(encode(returned)), "returned a task without an id");
}

TEST(Protocol, RejectsAKeyGivenTwice) {
    // {"type":"task","v":1,"id":1,"kind":"sleep","id":2}: which id was meant?
    EXPECT_EQ(rejection(hand_packed_task(1, std::string("id"), 2)), "malformed message: duplicate key 'id'");
}

TEST(Protocol, IgnoresUnknownKeysAndKeepsDefaultsForMissingOnes) {
    // {"type":"task","v":1,"id":3,"kind":"sleep","colour":"blue"}: a newer peer's extra field.
    const std::string frame = hand_packed_task(3, std::string("colour"), std::string("blue"));
    const Message message = decode(frame);
    ASSERT_TRUE(std::holds_alternative<Task>(message)) << rejection(frame);
    EXPECT_EQ(std::get<Task>(message).attempt, 1u);
    EXPECT_EQ(std::get<Task>(message).timeout_s, 0);
}

}  // namespace
}  // namespace taskfarm::proto

namespace taskfarm::proto {
namespace {

// A heartbeat of `rss`, packed by hand so that any type can stand in for the number.
template <typename T>
std::string heartbeat_with_rss(const T& rss) {
    std::stringstream buffer;
    msgpack::packer packer(buffer);
    packer.pack_map(3);
    packer.pack(std::string("type")).pack(std::string("heartbeat"));
    packer.pack(std::string("v")).pack(kVersion);
    packer.pack(std::string("rss")).pack(rss);
    return buffer.str();
}

TEST(Protocol, ResidentMemoryTravelsInHelloHeartbeatAndResultAndIsOptional) {
    Hello hello;
    hello.name = "w1";
    hello.rss = 12u << 20;
    EXPECT_EQ(std::get<Hello>(decode(encode(hello))).rss, 12u << 20);
    Heartbeat heartbeat;
    heartbeat.rss = 99u << 20;
    EXPECT_EQ(std::get<Heartbeat>(decode(encode(heartbeat))).rss, 99u << 20);
    Result result;
    result.id = 1;
    result.kind = "sleep";
    result.rss = 5;
    EXPECT_EQ(std::get<Result>(decode(encode(result))).rss, 5u);
    // A peer without the field: 0, not known.
    std::stringstream old;
    msgpack::packer packer(old);
    packer.pack_map(2);
    packer.pack(std::string("type")).pack(std::string("heartbeat"));
    packer.pack(std::string("v")).pack(kVersion);
    EXPECT_EQ(std::get<Heartbeat>(decode(old.str())).rss, 0u);
    // Hostile values are rejections, never a crash or a wrapped-around size.
    EXPECT_EQ(rejection(heartbeat_with_rss(-1)), "malformed message: \"rss\" must be a whole number >= 0, not -1");
    EXPECT_NE(rejection(heartbeat_with_rss(std::string("lots"))), "accepted");
    EXPECT_NE(rejection(heartbeat_with_rss(1.5)), "accepted");
}

TEST(Protocol, CancelRoundTripsAndNeedsTasksWithIds) {
    Cancel cancel;
    cancel.tasks = {{3, 1}, {7, 2}};
    const Message message = decode(encode(cancel));
    ASSERT_TRUE(std::holds_alternative<Cancel>(message)) << rejection(encode(cancel));
    ASSERT_EQ(std::get<Cancel>(message).tasks.size(), 2u);
    EXPECT_EQ(std::get<Cancel>(message).tasks[1].id, 7u);
    EXPECT_EQ(std::get<Cancel>(message).tasks[1].attempt, 2u);
    EXPECT_EQ(rejection(encode(Cancel{})), "cancel without any tasks");
    cancel.tasks = {{kNoId, 1}};
    EXPECT_EQ(rejection(encode(cancel)), "cancel of a task without an id");
}

}  // namespace
}  // namespace taskfarm::proto
