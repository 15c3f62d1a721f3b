// The farm from a program's own main(), through the public API only: this test program is
// its own worker (`farm_test worker ...`), as a user's program is.

#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>

#include <gtest/gtest.h>

#include <taskfarm/taskfarm.hpp>

#include "support.hpp"

namespace {

using taskfarm::Context;
using taskfarm::Farm;
using taskfarm::FarmMode;
using taskfarm::FarmOptions;
using taskfarm::Params;
using taskfarm::Value;

// Typed parameters: read once, at submit.
struct Box {
    long width = 0;
    long height = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Box, width, height)

void register_types(Farm& farm) {
    farm.task<Box>("area", [](const Box& box, Context&) { return box.width * box.height; });
    farm.task("square", [](const Params& params, Context&) {
        const auto x = params.at("x").get<long>();
        return Value(x * x);
    });
    // One step of the Collatz sequence.
    farm.task("collatz", [](const Params& params, Context&) {
        const auto n = params.at("n").get<long>();
        return Value(n % 2 == 0 ? n / 2 : 3 * n + 1);
    });
    farm.task("noop", [](const Params&, Context&) { return Value(nullptr); });
    farm.task("refuse", [](const Params& params, Context&) -> Value {
        throw std::runtime_error("refused " + std::to_string(params.at("x").get<long>()));
    });
    farm.task("exit3", [](const Params&, Context&) -> Value {
        throw taskfarm::TaskFailed("exited with status 3", Value{{"exit_code", 3}});
    });
    // Task "x": 3 on its first attempt writes its pid into the file the setting "pidfile"
    // names, then waits to be killed; every other task, and attempt 2, returns x.
    farm.task("hold", [](const Params& params, Context& context) {
        const auto x = params.at("x").get<long>();
        if (x == 3 && context.attempt() == 1) {
            const std::string path = context.settings().at("pidfile").get<std::string>();
            std::ofstream(path + ".tmp") << ::getpid() << "\n";
            std::filesystem::rename(path + ".tmp", path);
            for (int i = 0; i < 1000; ++i) {
                context.check();
                std::this_thread::sleep_for(std::chrono::milliseconds(10));
            }
        }
        return Value(x);
    });
}

// Resident memory of this process, in KiB.
long rss_kib() {
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
        if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
    return -1;
}

TEST(Farm, SumsAThousandResultsInCodeWithEachTaskOnceInTheJournal) {
    taskfarm::testing::TempDir dir;
    const auto journal = dir / "journal.jsonl";
    Farm farm{{.mode = FarmMode::Processes, .workers = 3, .journal = journal}};
    register_types(farm);
    for (long x = 0; x < 1000; ++x) farm.submit("square", {{"x", x}});
    long sum = 0;
    std::set<taskfarm::TaskId> ids;
    for (const auto& result : farm.as_completed<long>()) {
        sum += result.value();
        EXPECT_TRUE(ids.insert(result.id()).second) << "result " << result.id() << " twice";
    }
    EXPECT_EQ(sum, 332'833'500);  // 0^2 + ... + 999^2
    EXPECT_EQ(ids.size(), 1000u);
    EXPECT_EQ(farm.outstanding(), 0u);
    farm.close();
    std::set<std::uint64_t> journaled;
    for (const auto& line : taskfarm::testing::read_json_lines(journal)) {
        EXPECT_EQ(line.at("mode"), "processes");
        EXPECT_TRUE(line.at("ok").get<bool>());
        EXPECT_TRUE(journaled.insert(line.at("id").get<std::uint64_t>()).second) << line.dump();
    }
    EXPECT_EQ(journaled.size(), 1000u);
}

TEST(Farm, ThreadsAndSequentialGiveTheSameSum) {
    for (const FarmMode mode : {FarmMode::Threads, FarmMode::Sequential}) {
        Farm farm{{.mode = mode, .workers = 3}};
        register_types(farm);
        long sum = 0;
        farm.map(
            "square", std::vector<long>{1, 2, 3, 4},
            [](long x) {
                return Params{{"x", x}};
            },
            [&](const taskfarm::Result<>& result) { sum += result.as<long>().value(); });
        EXPECT_EQ(sum, 30);
    }
}

TEST(Farm, ResultsFeedNewTasksWhileOthersRun) {
    Farm farm{{.mode = FarmMode::Processes, .workers = 2}};
    register_types(farm);
    // Each start's Collatz sequence, one step a task, each step submitted from the last result.
    std::map<taskfarm::TaskId, long> start_of;
    std::map<long, int> steps;
    for (long n = 2; n <= 30; ++n) start_of[farm.submit("collatz", {{"n", n}}).id] = n;
    for (const auto& result : farm.as_completed<long>()) {
        const long start = start_of.at(result.id());
        ++steps[start];
        if (result.value() != 1) start_of[farm.submit("collatz", {{"n", result.value()}}).id] = start;
    }
    for (long n = 2; n <= 30; ++n) {
        int expected = 0;
        for (long m = n; m != 1; m = m % 2 == 0 ? m / 2 : 3 * m + 1) ++expected;
        EXPECT_EQ(steps[n], expected) << n;
    }
    EXPECT_EQ(steps[27], 111);
}

TEST(Farm, AWorkerKilledMidTaskHasItsTaskDeliveredOnce) {
    taskfarm::testing::TempDir dir;
    const auto pidfile = dir / "pid";
    const auto journal = dir / "journal.jsonl";
    Farm farm{
        {.mode = FarmMode::Processes, .workers = 2, .journal = journal, .settings = {{"pidfile", pidfile.string()}}}};
    register_types(farm);
    for (long x = 0; x < 20; ++x) farm.submit("hold", {{"x", x}});
    // The worker running task 3 says who it is; SIGKILL it from outside.
    for (int i = 0; i < 1000 && !std::filesystem::exists(pidfile); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ASSERT_TRUE(std::filesystem::exists(pidfile));
    pid_t pid = 0;
    std::ifstream(pidfile) >> pid;
    ASSERT_GT(pid, 0);
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    std::map<taskfarm::TaskId, int> seen;
    for (const auto& result : farm.as_completed<long>()) {
        ++seen[result.id()];
        EXPECT_EQ(result.value(), static_cast<long>(result.id()));
        if (result.id() == 3) {
            EXPECT_EQ(result.attempts(), 2u);
        }
    }
    EXPECT_EQ(seen.size(), 20u);
    for (const auto& [id, count] : seen) EXPECT_EQ(count, 1) << "task " << id;
    farm.close();
    std::map<std::uint64_t, int> ok_lines;
    for (const auto& line : taskfarm::testing::read_json_lines(journal))
        if (!line.contains("event") && line.at("ok").get<bool>()) ++ok_lines[line.at("id").get<std::uint64_t>()];
    EXPECT_EQ(ok_lines.size(), 20u);
    for (const auto& [id, count] : ok_lines) EXPECT_EQ(count, 1) << "task " << id;
}

TEST(Farm, AFailedTasksErrorIsInspected) {
    Farm farm{{.mode = FarmMode::Processes, .workers = 1, .retries = 1}};
    register_types(farm);
    const auto refused = farm.submit("refuse", {{"x", 7}});
    const auto exited = farm.submit("exit3", Params::object());
    int failures = 0;
    for (const auto& result : farm.as_completed<long>()) {
        ASSERT_FALSE(result.ok());
        ++failures;
        try {
            static_cast<void>(result.value());
            ADD_FAILURE() << "value() of a failed task returned";
        } catch (const taskfarm::TaskError& error) {
            EXPECT_EQ(error.id(), result.id());
            EXPECT_EQ(error.attempts(), 2u) << "--retries 1: two tries";
            EXPECT_FALSE(error.cancelled());
            if (result.id() == refused.id) {
                EXPECT_EQ(error.type(), "refuse");
                EXPECT_EQ(error.reason(), "refused 7");
                EXPECT_EQ(error.exit(), std::nullopt);
            } else {
                EXPECT_EQ(result.id(), exited.id);
                EXPECT_EQ(error.reason(), "exited with status 3");
                EXPECT_EQ(error.exit(), 3);
            }
        }
    }
    EXPECT_EQ(failures, 2);
    // A parameter the type cannot take fails at submit, naming the type.
    EXPECT_THROW(farm.submit("no-such-type", Params::object()), std::invalid_argument);
}

TEST(Farm, ACancelledTaskIsStoppedAndSaysSo) {
    taskfarm::testing::TempDir dir;
    const auto pidfile = dir / "pid";
    Farm farm{{.mode = FarmMode::Processes, .workers = 1, .settings = {{"pidfile", pidfile.string()}}}};
    register_types(farm);
    const auto held = farm.submit("hold", {{"x", 3}});  // waits 10 s for a stop on its first attempt
    ASSERT_TRUE(
        taskfarm::testing::eventually([&] { return std::filesystem::exists(pidfile); }, std::chrono::seconds(30)));
    EXPECT_TRUE(farm.cancel(held));
    const auto result = farm.next();
    ASSERT_TRUE(result);
    EXPECT_EQ(result->id(), held.id);
    ASSERT_FALSE(result->ok());
    EXPECT_TRUE(result->error().cancelled()) << result->error().reason();
    EXPECT_EQ(result->attempts(), 1u) << "a cancelled task was tried again";
    EXPECT_FALSE(farm.cancel(held)) << "cancelled twice";
}

TEST(Farm, TypedParametersAreCheckedAtSubmitNamingTheField) {
    Farm farm{{.mode = FarmMode::Threads, .workers = 2}};
    register_types(farm);
    const auto refused = [&](const Params& params) {
        try {
            farm.submit("area", params);
        } catch (const std::invalid_argument& e) {
            return std::string(e.what());
        }
        return std::string("accepted");
    };
    EXPECT_EQ(refused({{"width", 2}, {"height", "three"}}), "field \"height\": type must be number, but is string");
    EXPECT_NE(refused({{"width", 2}}).find("'height'"), std::string::npos) << refused({{"width", 2}});
    EXPECT_EQ(refused({{"width", 2}, {"height", 3}, {"depth", 4}}), "unknown field \"depth\"");
    EXPECT_EQ(farm.outstanding(), 0u) << "a refused task was queued";
    farm.submit("area", {{"width", 6}, {"height", 7}});
    EXPECT_EQ(farm.next()->as<long>().value(), 42);
}

TEST(Farm, MemoryStaysFlatFor200000TasksConsumedAsTheyComplete) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "resident memory under AddressSanitizer is not the program's own";
#endif
    Farm farm{{.mode = FarmMode::Processes, .workers = 2}};
    register_types(farm);
    constexpr long kTasks = 200'000;
    long taken = 0;
    long rss_early = 0;
    struct Count {
        long n;
        struct It {
            long i;
            long operator*() const { return i; }
            It& operator++() {
                ++i;
                return *this;
            }
            bool operator!=(const It& o) const { return i != o.i; }
        };
        It begin() const { return {0}; }
        It end() const { return {n}; }
    };
    farm.map(
        "noop", Count{kTasks}, [](long) { return Params::object(); },
        [&](const taskfarm::Result<>& result) {
            ASSERT_TRUE(result.ok());
            if (++taken == 20'000) rss_early = rss_kib();
        });
    const long rss_late = rss_kib();
    EXPECT_EQ(taken, kTasks);
    ASSERT_GT(rss_early, 0);
    // Held results or tasks would be some 400 bytes each: 70 MiB for the 180,000 after the
    // first 20,000. The queue (max_queued) and the engine's compact records are bounded.
    EXPECT_LT(rss_late - rss_early, 24 * 1024) << "KiB: from " << rss_early << " to " << rss_late;
}

}  // namespace

int main(int argc, char** argv) {
    // The farm's workers run this same program: `farm_test worker ...`.
    if (Farm::is_worker(argc, argv)) {
        Farm farm;
        register_types(farm);
        return farm.run_worker(argc, argv);
    }
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
