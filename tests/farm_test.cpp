// The farm from a program's own main(), through the public API only: this test program is
// its own worker (`farm_test worker ...`), as a user's program is.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ranges>
#include <regex>
#include <set>
#include <string>
#include <system_error>
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

// Opened by the progress test: "gate" tasks wait for it (threads mode: this process).
std::atomic<bool> gate_open{false};

// Whether this process has libcurl mapped: the download type loads it when it first runs, a
// fork server that preloads that type before it forks a worker.
bool libcurl_mapped() {
    std::ifstream maps("/proc/self/maps");
    for (std::string line; std::getline(maps, line);)
        if (line.find("libcurl") != std::string::npos) return true;
    return false;
}

void register_types(Farm& farm) {
    farm.task("libcurl-mapped", [](const Params&, Context&) { return Value(libcurl_mapped()); });
    farm.task("gate", [](const Params& params, Context& context) {
        for (int i = 0; i < 2000 && !gate_open; ++i) {
            context.check();
            std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        return params.at("x");
    });
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
    farm.task("slow-square", [](const Params& params, Context&) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        const auto x = params.at("x").get<long>();
        return Value(x * x);
    });
    // Writes a line to each of std::cout, C's stdout and std::cerr, none of them flushed.
    farm.task("say", [](const Params& params, Context&) {
        const auto x = params.at("x").get<long>();
        // One write per line: pieces written by several threads (threads mode) interleave.
        std::cout << ("cout " + std::to_string(x) + "\n");
        std::printf("printf %ld\n", x);
        std::cerr << ("cerr " + std::to_string(x) + "\n");
        return Value(x);
    });
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

// While it lives, this process's stdout and stderr are files (what a farm's workers inherit
// when they start).
class RedirectedOutput {
public:
    RedirectedOutput(const std::filesystem::path& out, const std::filesystem::path& err)
        : saved_out_(::dup(1)), saved_err_(::dup(2)) {
        std::cout.flush();
        std::fflush(stdout);
        redirect(1, out);
        redirect(2, err);
    }
    ~RedirectedOutput() {
        std::cout.flush();
        std::fflush(stdout);
        ::dup2(saved_out_, 1);
        ::dup2(saved_err_, 2);
        ::close(saved_out_);
        ::close(saved_err_);
    }

private:
    static void redirect(int fd, const std::filesystem::path& path) {
        const int file = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        ::dup2(file, fd);
        ::close(file);
    }
    int saved_out_;
    int saved_err_;
};

// How often each line occurs in `path`.
std::map<std::string, int> line_counts(const std::filesystem::path& path) {
    std::map<std::string, int> counts;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) ++counts[line];
    return counts;
}

// One rule in every mode (decision 167): what a function writes to stdout and stderr goes to
// the program's stdout and stderr, each line once, written before its result is delivered.
TEST(Farm, AFunctionsOutputGoesToTheProgramsStdoutAndStderrInEveryMode) {
    for (const FarmMode mode : {FarmMode::Sequential, FarmMode::Threads, FarmMode::Processes}) {
        SCOPED_TRACE(static_cast<int>(mode));
        taskfarm::testing::TempDir dir;
        const auto out = dir / "out";
        const auto err = dir / "err";
        std::map<std::string, int> out_when_delivered;
        {
            const RedirectedOutput redirected(out, err);
            Farm farm{{.mode = mode, .workers = 3}};
            register_types(farm);
            for (long x = 0; x < 30; ++x) farm.submit("say", {{"x", x}});
            long sum = 0;
            for (const auto& result : farm.as_completed<long>()) sum += result.value();
            EXPECT_EQ(sum, 435);
            // Every task's output is out by the time its result is: before close().
            out_when_delivered = line_counts(out);
            farm.close();
        }
        const auto out_lines = line_counts(out);
        const auto err_lines = line_counts(err);
        for (long x = 0; x < 30; ++x) {
            for (const auto& line : {"cout " + std::to_string(x), "printf " + std::to_string(x)}) {
                EXPECT_EQ(out_when_delivered[line], 1) << line << " in stdout when the results were in";
                EXPECT_EQ(out_lines.count(line) ? out_lines.at(line) : 0, 1) << line << " in stdout";
            }
            const std::string line = "cerr " + std::to_string(x);
            EXPECT_EQ(err_lines.count(line) ? err_lines.at(line) : 0, 1) << line << " in stderr";
        }
        EXPECT_EQ(out_lines.size(), 60u) << "stdout holds the functions' lines only";
    }
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

// The types registered in `farm`, then `type` (a square of "x") for each x below `count`: prints
// the sum of the values.
int print_sum(Farm& farm, const std::string& type, long count) {
    register_types(farm);
    for (long x = 0; x < count; ++x) farm.submit(type, {{"x", x}});
    long sum = 0;
    for (const auto& result : farm.as_completed<long>()) sum += result.value();
    std::printf("%ld\n", sum);
    return 0;
}

// A program that sums squares with its farm resuming from a journal: `farm_test sum-squares
// JOURNAL COUNT` prints the sum of x*x for x below COUNT.
int sum_squares(const std::filesystem::path& journal, long count) {
    Farm farm{{.mode = FarmMode::Processes, .workers = 2, .journal = journal, .resume = true}};
    return print_sum(farm, "slow-square", count);
}

// Killed (SIGKILL) mid-way, the program is run again: what the journal has as ok is not run
// again but delivered from it, so the sum is right and each task is ok once in the journal.
TEST(Farm, AKilledFarmResumesFromItsJournalRunningEachTaskOnce) {
    taskfarm::testing::TempDir dir;
    const auto journal = dir / "journal.jsonl";
    constexpr long kCount = 300;
    const auto ok_lines = [&] {
        std::vector<Value> lines;
        if (!std::filesystem::exists(journal)) return lines;
        std::ifstream in(journal);
        for (std::string text; std::getline(in, text);) {
            try {
                Value line = Value::parse(text);
                if (!line.contains("event") && line.at("ok").get<bool>()) lines.push_back(std::move(line));
            } catch (const std::exception&) {  // a line being written
            }
        }
        return lines;
    };
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    std::size_t before_kill = 0;
    {
        taskfarm::testing::Running first(self, {"sum-squares", journal.string(), std::to_string(kCount)});
        ASSERT_TRUE(taskfarm::testing::eventually([&] { return ok_lines().size() >= 40; }, std::chrono::seconds(60)));
        first.signal(SIGKILL);
        const auto killed = first.wait();
        EXPECT_NE(killed.exit_code, 0);
        before_kill = ok_lines().size();
    }
    ASSERT_LT(before_kill, static_cast<std::size_t>(kCount)) << "the first run finished before it was killed";
    const auto second = taskfarm::testing::run_binary(self, {"sum-squares", journal.string(), std::to_string(kCount)});
    ASSERT_EQ(second.exit_code, 0) << second.err;
    EXPECT_EQ(second.out, "8955050\n");  // 0^2 + ... + 299^2
    std::map<long, int> ok_by_x;
    std::set<std::uint64_t> ids;
    for (const auto& line : ok_lines()) {
        ++ok_by_x[line.at("params").at("x").get<long>()];
        EXPECT_TRUE(ids.insert(line.at("id").get<std::uint64_t>()).second) << "id twice: " << line.dump();
    }
    EXPECT_EQ(ok_by_x.size(), static_cast<std::size_t>(kCount));
    for (const auto& [x, count] : ok_by_x) EXPECT_EQ(count, 1) << "x " << x;
    // A third run runs nothing: every result comes from the journal.
    const auto third = taskfarm::testing::run_binary(self, {"sum-squares", journal.string(), std::to_string(kCount)});
    ASSERT_EQ(third.exit_code, 0) << third.err;
    EXPECT_EQ(third.out, "8955050\n");
    EXPECT_EQ(ok_lines().size(), static_cast<std::size_t>(kCount));
}

// A farm's log lines are the coordinator's (time, program[pid], level), on stderr; a killed
// farm's torn last journal line is cut off before resuming.
TEST(Farm, LogsGoToStderrInTheCoordinatorsPatternAndATornLineIsCut) {
    taskfarm::testing::TempDir dir;
    const auto journal = dir / "journal.jsonl";
    {
        Farm farm{{.mode = FarmMode::Sequential, .journal = journal}};
        register_types(farm);
        farm.submit("square", {{"x", 4}});
        farm.wait();
    }
    std::ofstream(journal, std::ios::app) << R"({"mode":"sequential","id":1,"ok":tr)";  // killed while writing
    const auto out = dir / "out";
    const auto err = dir / "err";
    {
        const RedirectedOutput redirected(out, err);
        Farm farm{{.mode = FarmMode::Sequential, .journal = journal, .resume = true}};
        register_types(farm);
        farm.submit("square", {{"x", 4}});
        farm.submit("square", {{"x", 5}});
        long sum = 0;
        for (const auto& result : farm.as_completed<long>()) sum += result.value();
        EXPECT_EQ(sum, 41);
    }
    EXPECT_EQ(taskfarm::testing::read_file(out), "") << "a log line on stdout";
    const std::string logged = taskfarm::testing::read_file(err);
    const std::regex pattern(
        R"((^|\n)\d\d:\d\d:\d\d\.\d{3} farm_test\[\d+\] warn\w* journal '[^']*' ends in a torn line of 35 bytes)");
    EXPECT_TRUE(std::regex_search(logged, pattern)) << logged;
    const auto lines = taskfarm::testing::read_result_lines(journal);
    ASSERT_EQ(lines.size(), 2u);
    EXPECT_EQ(lines[1].at("params"), Value({{"x", 5}}));
    EXPECT_EQ(lines[1].at("id"), 1) << "the new task's id follows the journal's";
}

TEST(Farm, ResumingUnderOtherSettingsIsRefusedNamingTheSetting) {
    taskfarm::testing::TempDir dir;
    const auto journal = dir / "journal.jsonl";
    {
        Farm farm{{.mode = FarmMode::Threads, .workers = 2, .journal = journal, .settings = {{"chunk", 200}}}};
        register_types(farm);
        farm.submit("square", {{"x", 3}});
        EXPECT_EQ(farm.next()->as<long>().value(), 9);
    }
    Farm farm{
        {.mode = FarmMode::Threads, .workers = 2, .journal = journal, .resume = true, .settings = {{"chunk", 100}}}};
    register_types(farm);
    try {
        farm.submit("square", {{"x", 3}});
        ADD_FAILURE() << "resumed under another setting";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(
            std::string(e.what()).find("setting \"chunk\" is 100 now, but the journal's results were made with 200"),
            std::string::npos)
            << e.what();
    }
    // The same settings resume: the task is delivered from the journal, not run.
    Farm same{
        {.mode = FarmMode::Threads, .workers = 2, .journal = journal, .resume = true, .settings = {{"chunk", 200}}}};
    register_types(same);
    const auto handle = same.submit("square", {{"x", 3}});
    const auto result = same.next();
    ASSERT_TRUE(result);
    EXPECT_EQ(result->id(), handle.id);
    EXPECT_EQ(result->as<long>().value(), 9);
    same.close();
    EXPECT_EQ(taskfarm::testing::read_result_lines(journal).size(), 1u);
}

// Remote workers started by hand (`farm_test worker --connect ENDPOINT --keys DIR`, as a user
// starts their program on another machine) join a farm listening with CurveZMQ keys; the one
// killed (SIGKILL) mid-task has its task requeued on the other, delivered once.
TEST(Farm, RemoteWorkersStartedByHandRunTheTasksAndAKilledOnesTaskIsRequeued) {
    taskfarm::testing::TempDir dir;
    const auto keys = dir / "keys";
    const auto made = taskfarm::testing::run_binary("coordinator", {"keygen", keys.string()});
    ASSERT_EQ(made.exit_code, 0) << made.err;
    const auto pidfile = dir / "pid";
    const auto journal = dir / "journal.jsonl";
    Farm farm{{.workers = 0,
               .journal = journal,
               .settings = {{"pidfile", pidfile.string()}},
               .listen = "tcp://127.0.0.1:*",
               .keys = keys,
               .expect_workers = 2}};
    register_types(farm);
    EXPECT_EQ(farm.endpoint(), "") << "not started yet";
    for (long x = 0; x < 20; ++x) farm.submit("hold", {{"x", x}});
    const std::string endpoint = farm.endpoint();
    ASSERT_TRUE(endpoint.starts_with("tcp://127.0.0.1:")) << endpoint;
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    std::vector<std::unique_ptr<taskfarm::testing::Running>> workers;
    for (const char* name : {"r1", "r2"})
        workers.push_back(std::make_unique<taskfarm::testing::Running>(
            self, std::vector<std::string>{"worker", "--connect", endpoint, "--name", name, "--keys", keys.string()}));
    ASSERT_TRUE(
        taskfarm::testing::eventually([&] { return std::filesystem::exists(pidfile); }, std::chrono::seconds(30)));
    pid_t pid = 0;
    std::ifstream(pidfile) >> pid;
    const bool killed_r1 = pid == workers[0]->pid();
    ASSERT_TRUE(killed_r1 || pid == workers[1]->pid()) << "task 3 ran in neither remote worker: " << pid;
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    std::map<taskfarm::TaskId, int> seen;
    long sum = 0;
    for (const auto& result : farm.as_completed<long>()) {
        ++seen[result.id()];
        sum += result.value();
        if (result.id() == 3) {
            EXPECT_EQ(result.attempts(), 2u);
        }
    }
    EXPECT_EQ(sum, 190);  // 0 + ... + 19
    EXPECT_EQ(seen.size(), 20u);
    for (const auto& [id, count] : seen) EXPECT_EQ(count, 1) << "task " << id;
    farm.close();
    // The survivor got SHUTDOWN from the farm (exit 0); every ok line names a remote worker.
    const auto done = workers[killed_r1 ? 1 : 0]->wait(std::chrono::seconds(30));
    EXPECT_EQ(done.exit_code, 0) << done.err;
    std::map<std::uint64_t, int> ok_lines;
    for (const auto& line : taskfarm::testing::read_result_lines(journal)) {
        if (!line.at("ok").get<bool>()) continue;
        ++ok_lines[line.at("id").get<std::uint64_t>()];
        EXPECT_TRUE(line.at("worker") == "r1" || line.at("worker") == "r2") << line.dump();
    }
    EXPECT_EQ(ok_lines.size(), 20u);
    for (const auto& [id, count] : ok_lines) EXPECT_EQ(count, 1) << "task " << id;
}

// A remote worker that goes silent (SIGSTOP: a hung machine) is lost after the heartbeat
// timeout, and the task it held runs again on the other, delivered once.
TEST(Farm, ASilentRemoteWorkerIsLostAfterTheHeartbeatTimeoutAndItsTaskRunsElsewhere) {
    taskfarm::testing::TempDir dir;
    const auto keys = dir / "keys";
    const auto made = taskfarm::testing::run_binary("coordinator", {"keygen", keys.string()});
    ASSERT_EQ(made.exit_code, 0) << made.err;
    const auto pidfile = dir / "pid";
    Farm farm{{.workers = 0,
               .heartbeat_interval_s = 0.1,
               .heartbeat_timeout_s = 1.0,
               .settings = {{"pidfile", pidfile.string()}},
               .listen = "tcp://127.0.0.1:*",
               .keys = keys,
               .expect_workers = 2}};
    register_types(farm);
    for (long x = 0; x < 8; ++x) farm.submit("hold", {{"x", x}});
    const std::string endpoint = farm.endpoint();
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    std::vector<std::unique_ptr<taskfarm::testing::Running>> workers;
    for (const char* name : {"r1", "r2"})
        workers.push_back(std::make_unique<taskfarm::testing::Running>(
            self, std::vector<std::string>{"worker", "--connect", endpoint, "--name", name, "--keys", keys.string(),
                                           "--heartbeat-interval", "0.1"}));
    ASSERT_TRUE(
        taskfarm::testing::eventually([&] { return std::filesystem::exists(pidfile); }, std::chrono::seconds(30)));
    pid_t pid = 0;
    std::ifstream(pidfile) >> pid;
    ASSERT_TRUE(pid == workers[0]->pid() || pid == workers[1]->pid()) << pid;
    ASSERT_EQ(::kill(pid, SIGSTOP), 0);
    std::map<taskfarm::TaskId, int> seen;
    for (const auto& result : farm.as_completed<long>()) {
        ++seen[result.id()];
        EXPECT_EQ(result.value(), static_cast<long>(result.id()));
        if (result.id() == 3) {
            EXPECT_EQ(result.attempts(), 2u);
        }
    }
    EXPECT_EQ(seen.size(), 8u);
    for (const auto& [id, count] : seen) EXPECT_EQ(count, 1) << "task " << id;
    ::kill(pid, SIGKILL);
}

// Remote-worker options that cannot work are refused at the first submit, naming the option,
// before anything starts: the coordinator's rules for --listen, --keys and --launch slurm.
TEST(Farm, BadRemoteWorkerOptionsAreRefusedNamingTheOption) {
    taskfarm::testing::TempDir dir;
    ::unsetenv("SLURM_NTASKS");
    const std::vector<std::pair<FarmOptions, std::string>> cases{
        {{.listen = "tcp://127.0.0.1:*"}, "FarmOptions::listen: 'tcp://127.0.0.1:*' without keys"},
        {{.listen = "127.0.0.1:5555", .insecure = true}, "FarmOptions::listen: '127.0.0.1:5555' is not tcp://"},
        {{.mode = FarmMode::Threads, .listen = "tcp://127.0.0.1:*", .insecure = true},
         "FarmOptions::listen: remote workers are worker processes"},
        {{.listen = "tcp://127.0.0.1:*", .keys = dir / "none"}, "FarmOptions::keys: "},
        {{.workers = 0}, "FarmOptions::workers: 0 starts no worker"},
        {{.workers = 0, .listen = "tcp://127.0.0.1:*", .insecure = true}, "FarmOptions::expect_workers: "},
        {{.expect_workers = 2}, "FarmOptions::expect_workers: is for remote workers"},
        {{.heartbeat_interval_s = 2, .heartbeat_timeout_s = 3},
         "FarmOptions::heartbeat_interval_s: 2 must be at most half"},
        {{.heartbeat_timeout_s = 0.01}, "FarmOptions::heartbeat_timeout_s: 0.01 is not from 0.1"},
        {{.insecure = true, .slurm = taskfarm::SlurmStep{.tasks = 2}}, "FarmOptions::insecure: cannot go with a Slurm"},
        {{.slurm = taskfarm::SlurmStep{}}, "FarmOptions::slurm: tasks 0 means $SLURM_NTASKS, which is not set"},
        {{.slurm = taskfarm::SlurmStep{.tasks = 1, .args = "--x='open"}}, "FarmOptions::slurm: cannot split args"},
        {{.insecure = true, .mpirun = taskfarm::MpirunStep{.tasks = 2}},
         "FarmOptions::insecure: cannot go with an mpirun job"},
        {{.mpirun = taskfarm::MpirunStep{}}, "FarmOptions::mpirun: tasks must be at least 1"},
        {{.mpirun = taskfarm::MpirunStep{.tasks = 1, .args = "'open"}}, "FarmOptions::mpirun: cannot split args"},
        {{.mode = FarmMode::Threads, .mpirun = taskfarm::MpirunStep{.tasks = 1}},
         "FarmOptions::mpirun: remote workers are worker processes"},
        {{.slurm = taskfarm::SlurmStep{.tasks = 1}, .mpirun = taskfarm::MpirunStep{.tasks = 1}},
         "FarmOptions::mpirun: give one of slurm, mpirun and alloc"},
        {{.alloc = taskfarm::SlurmAllocations{}}, "FarmOptions::alloc: time '' is not a time limit of sbatch --time"},
        {{.alloc = taskfarm::SlurmAllocations{.time = "30", .workers = 0}},
         "FarmOptions::alloc: workers must be at least 1"},
        {{.alloc = taskfarm::SlurmAllocations{.time = "30", .max_allocs = 0}},
         "FarmOptions::alloc: max_allocs must be at least 1"},
        {{.keys = dir / "none", .alloc = taskfarm::SlurmAllocations{.time = "30"}},
         "FarmOptions::keys: cannot go with Slurm allocations"},
    };
    for (const auto& [options, expected] : cases) {
        Farm farm{options};
        register_types(farm);
        try {
            farm.submit("square", {{"x", 1}});
            ADD_FAILURE() << "not refused: " << expected;
        } catch (const std::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
        }
    }
}

// An endpoint that cannot be bound (another socket holds the port) stops the farm, and
// endpoint() and next() say why, naming FarmOptions::listen.
// A tcp port on loopback that this process holds listening until the end of the scope, for
// a farm to find in use. Throws (the test fails) where it cannot.
class HeldPort {
public:
    HeldPort() : fd_(::socket(AF_INET, SOCK_STREAM, 0)) {
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t length = sizeof address;
        if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
            ::listen(fd_, 1) != 0 || ::getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
            const int error = errno;
            if (fd_ >= 0) ::close(fd_);
            throw std::system_error(error, std::generic_category(), "holding a loopback port");
        }
        port_ = ntohs(address.sin_port);
    }
    HeldPort(const HeldPort&) = delete;
    HeldPort& operator=(const HeldPort&) = delete;
    ~HeldPort() { ::close(fd_); }
    int port() const { return port_; }

private:
    int fd_;
    int port_ = 0;
};

TEST(Farm, AListenEndpointInUseIsSaidNamingTheOption) {
    const HeldPort held;
    const std::string endpoint = "tcp://127.0.0.1:" + std::to_string(held.port());
    {
        Farm farm{{.workers = 1, .listen = endpoint, .insecure = true}};
        register_types(farm);
        farm.submit("square", {{"x", 2}});
        const std::string expected = "FarmOptions::listen: cannot listen on '" + endpoint + "'";
        try {
            static_cast<void>(farm.endpoint());
            ADD_FAILURE() << "bound a port in use";
        } catch (const std::runtime_error& e) {
            EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
        }
        try {
            static_cast<void>(farm.next());
            ADD_FAILURE() << "a result from a farm that did not start";
        } catch (const std::runtime_error& e) {
            EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
        }
    }
}

// Progress on a stderr that is a file: FarmProgress::Always draws the bar there (its final
// count always), Auto logs a line every progress_interval_s while tasks run, Never (the
// default) writes none.
TEST(Farm, ProgressGoesToARedirectedStderrAsTheOptionAsks) {
    taskfarm::testing::TempDir dir;
    const auto out = dir / "out";
    const auto err = dir / "err";
    {
        const RedirectedOutput redirected(out, err);
        Farm farm{{.mode = FarmMode::Threads, .workers = 2, .progress = taskfarm::FarmProgress::Always}};
        register_types(farm);
        for (long x = 0; x < 20; ++x) farm.submit("square", {{"x", x}});
        long sum = 0;
        for (const auto& result : farm.as_completed<long>()) sum += result.value();
        EXPECT_EQ(sum, 2470);
    }
    const std::string bar = taskfarm::testing::read_file(err);
    EXPECT_TRUE(std::regex_search(bar, std::regex(R"(\rthreads +\[#+\] 20/20  [0-9.]+ tasks/s)"))) << bar;
    EXPECT_EQ(taskfarm::testing::read_file(out), "");

    // Auto on a file: log lines, while the gate holds the tasks (a condition, not a time).
    gate_open = false;
    {
        const RedirectedOutput redirected(out, err);
        Farm farm{{.mode = FarmMode::Threads,
                   .workers = 2,
                   .progress = taskfarm::FarmProgress::Auto,
                   .progress_interval_s = 0.05}};
        register_types(farm);
        for (long x = 0; x < 4; ++x) farm.submit("gate", {{"x", x}});
        const std::regex line(R"(info\w* threads: 0/4 tasks done, 0 failed, 0.0 tasks/s, [0-9.]+s elapsed, ETA \?)");
        for (int i = 0; i < 1000 && !std::regex_search(taskfarm::testing::read_file(err), line); ++i)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        gate_open = true;
        farm.wait();
    }
    const std::string logged = taskfarm::testing::read_file(err);
    EXPECT_TRUE(std::regex_search(logged, std::regex(R"(info\w* threads: 0/4 tasks done)"))) << logged;
    EXPECT_EQ(logged.find('\r'), std::string::npos) << "a control character in a file";

    {
        const RedirectedOutput redirected(out, err);
        Farm farm{{.mode = FarmMode::Threads, .workers = 2}};
        register_types(farm);
        for (long x = 0; x < 20; ++x) farm.submit("square", {{"x", x}});
        farm.wait();
    }
    EXPECT_EQ(taskfarm::testing::read_file(err), "") << "progress without asking";
}

// GET PATH from 127.0.0.1:PORT over a socket of its own (HTTP/1.1, Connection: close): the
// status and the body, de-chunked.
std::pair<int, std::string> http_get(int port, const std::string& path) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const timeval patience{30, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &patience, sizeof patience);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<std::uint16_t>(port));
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
        ::close(fd);
        return {0, ""};
    }
    const std::string request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    EXPECT_EQ(::send(fd, request.data(), request.size(), MSG_NOSIGNAL), static_cast<ssize_t>(request.size()));
    std::string raw;
    char buffer[4096];
    for (ssize_t got; (got = ::recv(fd, buffer, sizeof buffer, 0)) > 0;)
        raw.append(buffer, static_cast<std::size_t>(got));
    ::close(fd);
    const auto head_end = raw.find("\r\n\r\n");
    if (head_end == std::string::npos || !raw.starts_with("HTTP/1.1 ")) return {0, raw};
    const std::string head = raw.substr(0, head_end);
    std::string body = raw.substr(head_end + 4);
    if (head.find("chunked") != std::string::npos) {
        std::string whole;
        for (std::size_t at = 0;;) {
            const auto line_end = body.find("\r\n", at);
            if (line_end == std::string::npos) break;
            const std::size_t size = std::stoul(body.substr(at, line_end - at), nullptr, 16);
            if (size == 0) break;
            whole += body.substr(line_end + 2, size);
            at = line_end + 2 + size + 2;
        }
        body = whole;
    }
    return {std::stoi(raw.substr(9, 3)), body};
}

// FarmOptions::ui: the live view on loopback, from the first submit. Its page is served at
// the secret path only; after close() its event stream gives the final state (the mode, its
// ok count, finished) and ends. A bad address or a port in use throws, naming the option.
TEST(Farm, TheLiveViewServesItsPageAndEventsOnLoopback) {
    {
        Farm farm{{.mode = FarmMode::Threads, .workers = 2, .ui = "127.0.0.1:0"}};
        register_types(farm);
        EXPECT_EQ(farm.ui_url(), "") << "before the first submit";
        for (long x = 0; x < 12; ++x) farm.submit("square", {{"x", x}});
        const std::string url = farm.ui_url();
        std::smatch parts;
        ASSERT_TRUE(std::regex_match(url, parts, std::regex(R"(http://127\.0\.0\.1:(\d+)(/\w+/))"))) << url;
        const int port = std::stoi(parts[1]);
        const std::string path = parts[2];
        long sum = 0;
        for (const auto& result : farm.as_completed<long>()) sum += result.value();
        EXPECT_EQ(sum, 506);
        const auto [status, page] = http_get(port, path);
        EXPECT_EQ(status, 200);
        EXPECT_TRUE(page.starts_with("<!doctype html>")) << page.substr(0, 200);
        EXPECT_EQ(http_get(port, "/events").first, 404) << "served without the secret path";
        farm.close();
        const auto [events_status, events] = http_get(port, path + "events");
        EXPECT_EQ(events_status, 200);
        const auto first = events.find("event: state\ndata: ");
        ASSERT_NE(first, std::string::npos) << events;
        const auto data_at = first + std::strlen("event: state\ndata: ");
        const Value state = Value::parse(events.substr(data_at, events.find('\n', data_at) - data_at));
        EXPECT_TRUE(state.at("finished").get<bool>());
        ASSERT_EQ(state.at("modes").size(), 1u);
        EXPECT_EQ(state.at("modes")[0].at("name"), "threads");
        EXPECT_EQ(state.at("modes")[0].at("ok"), 12);
        EXPECT_EQ(state.at("modes")[0].at("tasks"), 12) << "the tasks submitted, not 0";
        EXPECT_NE(events.find("event: end\n"), std::string::npos) << events;
    }
    for (const std::string bad : {"nonsense", "127.0.0.1:70000"}) {
        Farm farm{{.mode = FarmMode::Threads, .workers = 1, .ui = bad}};
        register_types(farm);
        try {
            farm.submit("square", {{"x", 2}});
            ADD_FAILURE() << "took ui " << bad;
        } catch (const std::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find("FarmOptions::ui: '" + bad + "'"), std::string::npos) << e.what();
        }
    }
    {
        const HeldPort held;
        Farm farm{{.mode = FarmMode::Threads, .workers = 1, .ui = "127.0.0.1:" + std::to_string(held.port())}};
        register_types(farm);
        try {
            farm.submit("square", {{"x", 2}});
            ADD_FAILURE() << "bound a port in use";
        } catch (const std::invalid_argument& e) {
            EXPECT_NE(std::string(e.what()).find("FarmOptions::ui: cannot listen on 127.0.0.1:"), std::string::npos)
                << e.what();
        }
    }
}

// A Farm's resume compares what changes results, as the coordinator's --resume does: a
// type's flag declared changes_results = false and the command type's policy (command_grace_s)
// may differ; a setting no type declares may not. The journal notes only those.
TEST(Farm, ResumeComparesOnlyTheSettingsThatChangeResults) {
    taskfarm::testing::TempDir dir;
    const auto journal = dir / "journal.jsonl";
    const auto make = [&](long cap, double grace, long chunk) {
        auto farm = std::make_unique<Farm>(
            FarmOptions{.mode = FarmMode::Threads,
                        .workers = 1,
                        .journal = journal,
                        .resume = true,
                        .settings = {{"log_cap", cap}, {"command_grace_s", grace}, {"chunk", chunk}}});
        register_types(*farm);
        taskfarm::TaskOptions options;
        options.flags = {
            {.name = "--log-cap", .key = "log_cap", .type = taskfarm::Flag::Type::Count, .changes_results = false}};
        farm->task(
            "cube", [](const Params& params, Context&) { return Value(params.at("x").get<long>() * 3); },
            std::move(options));
        return farm;
    };
    {
        auto farm = make(10, 1, 7);
        farm->submit("cube", {{"x", 2}});
        EXPECT_EQ(farm->next()->as<long>().value(), 6);
    }
    {
        auto farm = make(20, 5, 7);  // neither changes results
        farm->submit("cube", {{"x", 2}});
        EXPECT_EQ(farm->next()->as<long>().value(), 6);
    }
    EXPECT_EQ(taskfarm::testing::read_result_lines(journal).size(), 1u) << "the resumed task ran again";
    const std::string text = taskfarm::testing::read_file(journal);
    EXPECT_NE(text.find(R"("settings":{"chunk":7})"), std::string::npos) << text;
    auto farm = make(20, 5, 8);
    try {
        farm->submit("cube", {{"x", 2}});
        ADD_FAILURE() << "resumed under another chunk";
    } catch (const std::invalid_argument& e) {
        EXPECT_NE(std::string(e.what()).find(R"(setting "chunk" is 8 now, but the journal's results were made with 7)"),
                  std::string::npos)
            << e.what();
    }
}

// FarmOptions::mpirun: the workers are one real `mpirun -n 2` of this program; each task runs
// once (the journal), and nothing of the job is left afterwards.
TEST(Farm, AnMpirunJobOfWorkersRunsEachTaskOnce) {
    if (std::system("command -v mpirun >/dev/null 2>&1") != 0) GTEST_SKIP() << "no mpirun (tests/mpirun_test.py fails)";
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 1);  // Open MPI refuses root otherwise (containers)
    ::setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 1);
    taskfarm::testing::TempDir dir;
    const auto journal = dir / "journal.jsonl";
    {
        Farm farm{{.journal = journal, .mpirun = taskfarm::MpirunStep{.tasks = 2, .args = "--oversubscribe"}}};
        register_types(farm);
        for (long x = 0; x < 100; ++x) farm.submit("square", {{"x", x}});
        long sum = 0;
        for (const auto& result : farm.as_completed<long>()) sum += result.value();
        EXPECT_EQ(sum, 328350);
    }
    std::set<long> ids;
    std::set<std::string> workers;
    for (const auto& line : taskfarm::testing::read_result_lines(journal)) {
        EXPECT_TRUE(ids.insert(line.at("id").get<long>()).second) << line.dump();
        workers.insert(line.value("worker", ""));
    }
    EXPECT_EQ(ids.size(), 100u);
    EXPECT_FALSE(workers.contains("")) << "a result without its worker";
    // No child of this process is an mpirun left ("[m]" keeps the shell's own command line out).
    const std::string left = "pgrep -P " + std::to_string(::getpid()) + " -f '[m]pirun' >/dev/null";
    EXPECT_EQ(std::system(left.c_str()), 256) << "the mpirun job is left";
}

// FarmOptions::signals: SIGTERM drains a farm as it drains the coordinator. The running tasks
// finish (no line of the journal failed), the program's next() throws saying so and it exits
// 128 + 15, its workers are gone; a resume runs exactly the rest.
TEST(Farm, ItsForkServerPreloadsItsOwnTypesAndTheFirstTasksNotEveryBuiltInOne) {
    // A worker per task (recycled after one), each forked from the server: what it has mapped
    // before its task is what the server preloaded.
    {
        Farm farm{{.mode = FarmMode::Processes, .workers = 1, .max_tasks_per_worker = 1}};
        register_types(farm);
        for (int i = 0; i < 2; ++i) farm.submit("libcurl-mapped", Params::object());
        for (const auto& result : farm.as_completed<bool>()) EXPECT_FALSE(result.value()) << "task " << result.id();
    }
#if !defined(__SANITIZE_ADDRESS__)  // sanitized builds exec every worker (decision 104): nothing is preloaded
    Farm farm{{.mode = FarmMode::Processes, .workers = 1, .retries = 0, .max_tasks_per_worker = 1}};
    register_types(farm);
    farm.submit("download", {{"url", "http://127.0.0.1:9/nothing-listens"}});  // fails: it needs only to be first
    const auto mapped = farm.submit("libcurl-mapped", Params::object());
    for (const auto& result : farm.as_completed()) {
        if (result.id() == mapped.id) {
            EXPECT_TRUE(result.as<bool>().value());
        }
    }
#endif
}

// Whether this thread blocks `signal`.
bool blocked_here(int signal) {
    sigset_t mask;
    ::pthread_sigmask(SIG_BLOCK, nullptr, &mask);
    return sigismember(&mask, signal) == 1;
}

// The disposition of `signal` now: SIG_DFL, SIG_IGN or a handler.
void (*disposition(int signal))(int) {
    struct sigaction now {};
    ::sigaction(signal, nullptr, &now);
    return now.sa_handler;
}

void program_handler(int) {}

TEST(Farm, TakingSignalsChangesNoThreadsMaskAndPutsBackWhatWasThereFromAnyThread) {
    // This thread blocks SIGHUP on purpose, as a program may; SIGQUIT has a handler of the
    // program's and SIGHUP is ignored (nohup): the farm leaves those as they are.
    sigset_t hup;
    sigemptyset(&hup);
    sigaddset(&hup, SIGHUP);
    ::pthread_sigmask(SIG_BLOCK, &hup, nullptr);
    struct sigaction mine {};
    mine.sa_handler = program_handler;
    struct sigaction quit_before {};
    ::sigaction(SIGQUIT, &mine, &quit_before);
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    struct sigaction hup_before {};
    ::sigaction(SIGHUP, &ignore, &hup_before);
    // Fed on one thread, closed on it: its mask never changes.
    {
        Farm farm{{.mode = FarmMode::Threads, .workers = 2, .signals = true}};
        register_types(farm);
        std::thread first([&] {
            farm.submit("square", {{"x", 3}});
            for (const int signal : {SIGINT, SIGTERM, SIGQUIT}) EXPECT_FALSE(blocked_here(signal)) << signal;
            EXPECT_NE(disposition(SIGTERM), SIG_DFL) << "the farm's handler, while it runs";
            EXPECT_EQ(disposition(SIGHUP), SIG_IGN) << "an ignored one stays ignored";
            farm.wait();
            farm.close();
            for (const int signal : {SIGINT, SIGTERM, SIGQUIT}) EXPECT_FALSE(blocked_here(signal)) << signal;
        });
        first.join();
        EXPECT_EQ(disposition(SIGTERM), SIG_DFL);
        EXPECT_EQ(disposition(SIGQUIT), program_handler);
    }
    // Fed on one thread and destroyed on another while the first still runs: before, the first
    // kept the stop signals blocked for the rest of its life (decision 294's "Left").
    {
        std::mutex mutex;
        std::condition_variable cv;
        bool fed = false;
        bool destroyed = false;
        std::optional<Farm> farm;
        farm.emplace(FarmOptions{.mode = FarmMode::Threads, .workers = 2, .signals = true});
        register_types(*farm);
        std::thread first([&] {
            farm->submit("square", {{"x", 3}});
            farm->wait();
            std::unique_lock lock(mutex);
            fed = true;
            cv.notify_all();
            cv.wait(lock, [&] { return destroyed; });
            for (const int signal : {SIGINT, SIGTERM, SIGQUIT}) EXPECT_FALSE(blocked_here(signal)) << signal;
        });
        {
            std::unique_lock lock(mutex);
            cv.wait(lock, [&] { return fed; });
        }
        farm.reset();  // on this thread
        EXPECT_EQ(disposition(SIGTERM), SIG_DFL);
        EXPECT_EQ(disposition(SIGINT), SIG_DFL);
        EXPECT_EQ(disposition(SIGQUIT), program_handler);
        {
            std::lock_guard lock(mutex);
            destroyed = true;
        }
        cv.notify_all();
        first.join();
    }
    EXPECT_TRUE(blocked_here(SIGHUP));
    EXPECT_FALSE(blocked_here(SIGINT));
    ::sigaction(SIGQUIT, &quit_before, nullptr);
    ::sigaction(SIGHUP, &hup_before, nullptr);
    ::pthread_sigmask(SIG_UNBLOCK, &hup, nullptr);
}

TEST(Farm, AStopSignalThatLandsOnAThreadOfTheProgramsMadeBeforeTheFirstSubmitIsTheFarms) {
    // A thread of the program's made before the farm took the signals blocks none of them, so
    // the kernel may hand it a SIGTERM sent to the process: while the farm blocked them in the
    // thread of its first submit, it did, and the default action ended the program (decision
    // 313). Now the farm's handler takes it on whichever thread it lands.
    std::atomic<bool> done{false};
    std::thread program([&] {
        while (!done) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    });
    {
        Farm farm{{.mode = FarmMode::Threads, .workers = 2, .signals = true}};
        register_types(farm);
        farm.submit("square", {{"x", 3}});
        ::kill(::getpid(), SIGTERM);
        EXPECT_TRUE(taskfarm::testing::eventually([&] { return farm.signal() == SIGTERM; }, std::chrono::seconds(10)));
    }
    done = true;
    program.join();
    EXPECT_EQ(disposition(SIGTERM), SIG_DFL);
}

TEST(Farm, AStopSignalToAChildTheProgramForkedEndsTheChildNotTheFarm) {
    // A child forked without an exec inherits the farm's handler and its pipe: a SIGTERM sent to
    // the child went into the parent's farm, which stopped, and the child lived on. The handler
    // now tells a child by its pid and lets the signal do there what it would have done.
    Farm farm{{.mode = FarmMode::Threads, .workers = 2, .signals = true}};
    register_types(farm);
    farm.submit("square", {{"x", 3}});
    ASSERT_NE(disposition(SIGTERM), SIG_DFL);  // the farm's handler is in place
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        for (;;) ::pause();  // only a signal ends it
    }
    ::kill(child, SIGTERM);
    int status = 0;
    const bool ended = taskfarm::testing::eventually([&] { return ::waitpid(child, &status, WNOHANG) == child; },
                                                     std::chrono::seconds(10));
    if (!ended) {  // before: the child lived on, its SIGTERM taken for the farm's
        ::kill(child, SIGKILL);
        ::waitpid(child, &status, 0);
    }
    ASSERT_TRUE(ended) << "the child outlived its SIGTERM";
    EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGTERM) << "status " << status;
    farm.wait();
    EXPECT_EQ(farm.signal(), 0);
}

// A type whose name() throws once `names_refused` is set (after it was registered), so that the
// farm cannot make its results into the program's.
std::atomic<bool> names_refused{false};

class Unnamed final : public taskfarm::TaskType {
public:
    std::string name() const override {
        if (names_refused) throw std::runtime_error("no name today");
        return "unnamed";
    }
    Value run(const Params& params, Context&) const override { return params.at("x"); }
};

TEST(Farm, AResultThatCannotBeHandedOverFailsAloneAndTheOthersCome) {
    // Threads mode hands the sink a thread's results as a batch, sequential one at a time: a
    // result that throws in either lost the rest of the batch, or itself, and wait() never returned.
    for (const FarmMode mode : {FarmMode::Threads, FarmMode::Sequential}) {
        SCOPED_TRACE(mode == FarmMode::Threads ? "threads" : "sequential");
        Farm farm{{.mode = mode, .workers = 2}};
        register_types(farm);
        farm.add(std::make_shared<Unnamed>());
        names_refused = true;
        constexpr long kTasks = 400;
        for (long x = 0; x < kTasks; ++x) farm.submit(x % 2 == 0 ? "square" : "unnamed", {{"x", x}});
        long squares = 0, sum = 0, refused = 0;
        const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
        while (squares + refused < kTasks && std::chrono::steady_clock::now() < deadline) {
            const auto result = farm.try_next();
            if (!result) {
                std::this_thread::sleep_for(std::chrono::milliseconds(5));
                continue;
            }
            if (result->id() % 2 == 0) {
                ++squares;
                sum += result->as<long>().value();
            } else {
                ++refused;
                EXPECT_FALSE(result->ok());
                EXPECT_EQ(result->error().reason(), "cannot hand over its result: no name today");
            }
        }
        names_refused = false;
        EXPECT_EQ(squares, kTasks / 2);
        EXPECT_EQ(refused, kTasks / 2);
        long expected = 0;
        for (long x = 0; x < kTasks; x += 2) expected += x * x;
        EXPECT_EQ(sum, expected);
        EXPECT_EQ(farm.outstanding(), 0u);
    }
}

TEST(Farm, SigtermDrainsAFarmThatTakesSignalsAndAResumeRunsTheRest) {
    taskfarm::testing::TempDir dir;
    const auto journal = dir / "journal.jsonl";
    const auto ok_count = [&] {
        const std::string text = std::filesystem::exists(journal) ? taskfarm::testing::read_file(journal) : "";
        std::size_t count = 0;
        for (auto at = text.find("\"ok\":true"); at != std::string::npos; at = text.find("\"ok\":true", at + 1))
            ++count;
        return count;
    };
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    taskfarm::testing::Running first(self, {"drain-sum", journal.string(), "300"});
    ASSERT_TRUE(taskfarm::testing::eventually([&] { return ok_count() >= 40; }, std::chrono::seconds(60)));
    const std::vector<pid_t> workers = taskfarm::testing::workers_of(first.pid());
    EXPECT_FALSE(workers.empty());
    first.signal(SIGTERM);
    const auto drained = first.wait();
    EXPECT_EQ(drained.exit_code, 128 + SIGTERM) << drained.err;
    EXPECT_NE(drained.err.find("the farm stopped: SIGTERM (FarmOptions::signals): the running tasks finished"),
              std::string::npos)
        << drained.err;
    EXPECT_NE(drained.err.find("the running ones finish (up to FarmOptions::drain_timeout_s 25 s)"), std::string::npos)
        << drained.err;
    // A farm's plan has no count: the drain says so rather than print the engine's placeholder.
    EXPECT_NE(drained.err.find("finish; those not handed out stay for --resume"), std::string::npos) << drained.err;
    for (const pid_t pid : workers)
        EXPECT_TRUE(taskfarm::testing::eventually([&] { return ::kill(pid, 0) != 0; }, std::chrono::seconds(10)))
            << "worker " << pid << " is left";
    const auto lines = taskfarm::testing::read_result_lines(journal);
    ASSERT_LT(lines.size(), 300u) << "the farm finished before it was drained";
    for (const auto& line : lines)
        EXPECT_TRUE(line.at("ok").get<bool>()) << "a task stopped by a drain: " << line.dump();
    const auto second = taskfarm::testing::run_binary(self, {"sum-squares", journal.string(), "300"});
    ASSERT_EQ(second.exit_code, 0) << second.err;
    EXPECT_EQ(second.out, "8955050\n");
    std::map<long, int> ok_by_x;
    for (const auto& line : taskfarm::testing::read_result_lines(journal))
        ++ok_by_x[line.at("params").at("x").get<long>()];
    EXPECT_EQ(ok_by_x.size(), 300u);
    for (const auto& [x, count] : ok_by_x) EXPECT_EQ(count, 1) << "x " << x;
}

// ... and SIGINT stops it: the running tasks are cancelled, the program is told so and exits
// 128 + 2, its workers are gone, and a resume runs the rest (the cancelled ones too).
TEST(Farm, SigintStopsAFarmThatTakesSignalsAndAResumeRunsTheRest) {
    taskfarm::testing::TempDir dir;
    const auto journal = dir / "journal.jsonl";
    const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    taskfarm::testing::Running first(self, {"drain-sum", journal.string(), "300"});
    ASSERT_TRUE(taskfarm::testing::eventually(
        [&] { return std::filesystem::exists(journal) && std::filesystem::file_size(journal) > 2000; },
        std::chrono::seconds(60)));
    const std::vector<pid_t> workers = taskfarm::testing::workers_of(first.pid());
    first.signal(SIGINT);
    const auto stopped = first.wait();
    EXPECT_EQ(stopped.exit_code, 128 + SIGINT) << stopped.err;
    EXPECT_NE(stopped.err.find("the farm stopped: SIGINT (FarmOptions::signals): the running tasks were cancelled"),
              std::string::npos)
        << stopped.err;
    for (const pid_t pid : workers)
        EXPECT_TRUE(taskfarm::testing::eventually([&] { return ::kill(pid, 0) != 0; }, std::chrono::seconds(10)))
            << "worker " << pid << " is left";
    ASSERT_LT(taskfarm::testing::read_result_lines(journal).size(), 300u) << "the farm finished before it was stopped";
    const auto second = taskfarm::testing::run_binary(self, {"sum-squares", journal.string(), "300"});
    ASSERT_EQ(second.exit_code, 0) << second.err;
    EXPECT_EQ(second.out, "8955050\n");
    std::map<long, int> ok_by_x;
    for (const auto& line : taskfarm::testing::read_result_lines(journal))
        if (line.at("ok").get<bool>()) ++ok_by_x[line.at("params").at("x").get<long>()];
    EXPECT_EQ(ok_by_x.size(), 300u);
    for (const auto& [x, count] : ok_by_x) EXPECT_EQ(count, 1) << "x " << x;
}

// `farm_test slurm-sum COUNT TASKS JOURNAL`: COUNT squares on a Slurm step of TASKS workers
// (0: $SLURM_NTASKS), their sum printed (tests/slurm/slurm_test.py runs it on a real cluster).
int slurm_sum(long count, int tasks, const std::filesystem::path& journal) {
    Farm farm{{.journal = journal, .slurm = taskfarm::SlurmStep{.tasks = tasks, .args = "--time=5"}}};
    return print_sum(farm, "square", count);
}

// `farm_test noop-map TASKS MAX_QUEUED`: TASKS no-op functions through Farm::map on 2 worker
// processes, at most MAX_QUEUED of them waiting; prints how many were ok (tests/perf_test.py
// counts this process's instructions per task: the Farm's side of processes mode).
int noop_map(long tasks, std::size_t max_queued) {
    Farm farm{{.mode = FarmMode::Processes, .workers = 2, .max_queued = max_queued}};
    register_types(farm);
    long ok = 0;
    farm.map(
        "noop", std::views::iota(0L, tasks), [](long) { return Params::object(); },
        [&](const taskfarm::Result<>& result) { ok += result.ok() ? 1 : 0; });
    std::printf("%ld\n", ok);
    return ok == tasks ? 0 : 1;
}

// `farm_test alloc-sum COUNT JOURNAL`: COUNT slow squares in Slurm allocations the farm submits
// while they wait (FarmOptions::alloc: at most 2 at once, 1 worker each, 5 minutes), their sum
// printed (tests/slurm/slurm_test.py runs it on a real cluster, outside any allocation).
int alloc_sum(long count, const std::filesystem::path& journal) {
    Farm farm{{.journal = journal, .alloc = taskfarm::SlurmAllocations{.time = "5", .workers = 1, .max_allocs = 2}}};
    return print_sum(farm, "slow-square", count);
}

// `farm_test drain-sum JOURNAL COUNT`: sum-squares with FarmOptions::signals; a stop signal
// ends it with 128 + the signal, after what the farm said.
int drain_sum(const std::filesystem::path& journal, long count) {
    Farm farm{{.mode = FarmMode::Processes, .workers = 2, .journal = journal, .resume = true, .signals = true}};
    register_types(farm);
    long sum = 0;
    try {
        for (long x = 0; x < count; ++x) farm.submit("slow-square", {{"x", x}});
        for (const auto& result : farm.as_completed<long>()) sum += result.value();
    } catch (const std::runtime_error& e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 128 + farm.signal();
    }
    std::printf("%ld\n", sum);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc == 4 && std::strcmp(argv[1], "drain-sum") == 0) return drain_sum(argv[2], std::atol(argv[3]));
    if (argc == 4 && std::strcmp(argv[1], "sum-squares") == 0) return sum_squares(argv[2], std::atol(argv[3]));
    if (argc == 4 && std::strcmp(argv[1], "noop-map") == 0)
        return noop_map(std::atol(argv[2]), static_cast<std::size_t>(std::atol(argv[3])));
    if (argc == 4 && std::strcmp(argv[1], "alloc-sum") == 0) return alloc_sum(std::atol(argv[2]), argv[3]);
    if (argc == 5 && std::strcmp(argv[1], "slurm-sum") == 0)
        return slurm_sum(std::atol(argv[2]), std::atoi(argv[3]), argv[4]);
    // The farm's workers run this same program: `farm_test worker ...`.
    if (Farm::is_worker(argc, argv)) {
        Farm farm;
        register_types(farm);
        return farm.run_worker(argc, argv);
    }
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
