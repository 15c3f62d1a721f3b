// The fork server (decision 101): local workers are forked from it as children of the
// coordinator, and no process outlives a SIGKILL of any level: the coordinator, the fork
// server, a worker. Assertions are on pids, parents, exit codes and counts, never on time.

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <gtest/gtest.h>

#include "process_pool.hpp"
#include "support.hpp"

namespace taskfarm {
namespace {

using nlohmann::json;
using testing::Output;

std::string proc_file(pid_t pid, const char* name) {
    return testing::read_file(std::filesystem::path("/proc") / std::to_string(pid) / name);
}

// The fields of /proc/PID/stat after the command name: state, ppid, pgrp, ...
std::vector<std::string> stat_fields(pid_t pid) {
    const std::string stat = proc_file(pid, "stat");
    std::istringstream rest(stat.substr(stat.rfind(')') + 1));
    std::vector<std::string> fields;
    for (std::string field; rest >> field;) fields.push_back(field);
    return fields;
}

pid_t parent_of(pid_t pid) { return std::stoi(stat_fields(pid).at(1)); }
pid_t group_of(pid_t pid) { return std::stoi(stat_fields(pid).at(2)); }

// Waits for the fork server and `count` workers of a running coordinator.
std::pair<pid_t, std::vector<pid_t>> server_and_workers(const testing::Running& coordinator, std::size_t count) {
    pid_t server = -1;
    std::vector<pid_t> workers;
    testing::eventually(
        [&] {
            server = testing::fork_server_of(coordinator.pid());
            workers = testing::workers_of(coordinator.pid());
            return server > 0 && workers.size() == count && std::all_of(workers.begin(), workers.end(), [](pid_t w) {
                       return testing::runs_program(w, "worker");
                   });
        },
        std::chrono::seconds(20));
    return {server, workers};
}

bool all_gone(const std::vector<pid_t>& pids) {
    return testing::eventually([&] { return std::none_of(pids.begin(), pids.end(), testing::process_exists); },
                               std::chrono::seconds(10));
}

TEST(ForkServer, ForksEachWorkerAsAChildOfTheCoordinatorInAGroupOfItsOwn) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "sanitized builds exec their workers: no fork server (decisions 101, 104)";
#endif
    testing::TempDir dir;
    testing::Running coordinator("coordinator",
                                 {"--mode", "processes", "--workers", "2", "--tasks", "2", "--duration", "60", "--json",
                                  (dir / "report.json").string(), "--log-level", "debug", "--drain-timeout", "0"});
    const auto [server, workers] = server_and_workers(coordinator, 2);
    ASSERT_GT(server, 0) << coordinator.err();
    ASSERT_EQ(workers.size(), 2u) << coordinator.err();
    EXPECT_EQ(parent_of(server), coordinator.pid());
    EXPECT_TRUE(testing::runs_program(server, "worker"));
    EXPECT_NE(proc_file(server, "cmdline").find("--fork-server"), std::string::npos);
    for (pid_t worker : workers) {
        EXPECT_EQ(parent_of(worker), coordinator.pid()) << worker;
        EXPECT_EQ(group_of(worker), worker) << worker;
        EXPECT_EQ(proc_file(worker, "comm"), "worker\n") << worker;
    }
    // Both said hello with the pids the pool was told (a pid it did not spawn would be "attached").
    ASSERT_TRUE(testing::eventually(
        [&] {
            const std::string err = coordinator.err();
            const auto first = err.find(" said hello");
            return first != std::string::npos && err.find(" said hello", first + 1) != std::string::npos;
        },
        std::chrono::seconds(10)))
        << coordinator.err();
    EXPECT_EQ(coordinator.err().find(") attached"), std::string::npos) << coordinator.err();
    coordinator.signal(SIGTERM);
    const Output output = coordinator.wait(std::chrono::seconds(20));
    EXPECT_EQ(output.exit_code, 143) << output.err;
    const json run = testing::read_json(dir / "report.json")["runs"][0];
    std::vector<pid_t> placed;
    for (const json& place : run["placement"]) placed.push_back(place["pid"].get<pid_t>());
    std::sort(placed.begin(), placed.end());
    std::vector<pid_t> expected = workers;
    std::sort(expected.begin(), expected.end());
    EXPECT_EQ(placed, expected) << run["placement"].dump();
    EXPECT_TRUE(all_gone({server, workers[0], workers[1]}));
}

TEST(ForkServer, NothingOutlivesASigkillOfTheCoordinator) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "sanitized builds exec their workers: no fork server (decisions 101, 104)";
#endif
    testing::Running coordinator("coordinator",
                                 {"--mode", "processes", "--workers", "3", "--tasks", "3", "--duration", "60"});
    const auto [server, workers] = server_and_workers(coordinator, 3);
    ASSERT_GT(server, 0) << coordinator.err();
    ASSERT_EQ(workers.size(), 3u) << coordinator.err();
    coordinator.signal(SIGKILL);
    EXPECT_EQ(coordinator.wait().exit_code, 128 + SIGKILL);
    std::vector<pid_t> everyone = workers;
    everyone.push_back(server);
    EXPECT_TRUE(all_gone(everyone)) << "PR_SET_PDEATHSIG should have ended them with the coordinator";
}

// Without its fork server the run goes on: its workers are the coordinator's, and a
// replacement for one that dies afterwards is exec'd.
TEST(ForkServer, ASigkilledForkServerLosesNothingAndLaterWorkersAreExecd) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "sanitized builds exec their workers: no fork server (decisions 101, 104)";
#endif
    testing::TempDir dir;
    testing::Running coordinator("coordinator", {"--mode", "processes", "--workers", "2", "--tasks", "6", "--duration",
                                                 "1", "--results", (dir / "r.jsonl").string()});
    const auto [server, workers] = server_and_workers(coordinator, 2);
    ASSERT_GT(server, 0) << coordinator.err();
    ASSERT_EQ(workers.size(), 2u) << coordinator.err();
    ::kill(server, SIGKILL);
    ASSERT_TRUE(testing::eventually([&] { return !testing::process_exists(server); }, std::chrono::seconds(10)));
    EXPECT_TRUE(testing::process_exists(workers[0]));
    EXPECT_TRUE(testing::process_exists(workers[1]));
    ::kill(workers[0], SIGKILL);  // its tasks are requeued, and its replacement cannot be forked
    const Output output = coordinator.wait(std::chrono::seconds(60));
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_NE(output.err.find("workers are exec'd from now on"), std::string::npos) << output.err;
    std::set<int> ok;
    for (const json& line : testing::read_result_lines(dir / "r.jsonl"))  // not the "worker lost" line
        if (line["ok"].get<bool>()) ok.insert(line["id"].get<int>());
    EXPECT_EQ(ok.size(), 6u);
    EXPECT_TRUE(all_gone(workers));
}

// /proc/PID/cmdline as ps shows it: NULs as spaces, without the trailing ones.
std::string command_line(pid_t pid) {
    std::string text = proc_file(pid, "cmdline");
    std::replace(text.begin(), text.end(), '\0', ' ');
    while (!text.empty() && text.back() == ' ') text.pop_back();
    return text;
}

// In ps a forked worker is named as what it is, "worker w1", not with the fork server's
// arguments it was forked with (issue 26, class 7).
TEST(ForkServer, AForkedWorkerShowsItsNameInPs) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "sanitized builds exec their workers: no fork server (decisions 101, 104)";
#endif
    testing::Running coordinator("coordinator", {"--mode", "processes", "--workers", "2", "--tasks", "2", "--duration",
                                                 "60", "--drain-timeout", "0"});
    const auto [server, workers] = server_and_workers(coordinator, 2);
    ASSERT_EQ(workers.size(), 2u) << coordinator.err();
    std::set<std::string> names;
    EXPECT_TRUE(testing::eventually(
        [&] {
            names.clear();
            for (pid_t worker : workers) names.insert(command_line(worker));
            return names == std::set<std::string>{"worker w1", "worker w2"};
        },
        std::chrono::seconds(10)))
        << fmt::format("{}", fmt::join(names, ", "));
    for (pid_t worker : workers) EXPECT_EQ(proc_file(worker, "comm"), "worker\n");
    EXPECT_NE(command_line(server).find("--fork-server"), std::string::npos);  // the server is what it says
    coordinator.signal(SIGTERM);
    EXPECT_EQ(coordinator.wait(std::chrono::seconds(20)).exit_code, 143);
}

// The fork server loads only what the plan's types need: libcurl (the download type's) in a
// run of sleep tasks made every fork of a worker, and every fork a worker makes for a
// command, dearer (issue 29).
TEST(ForkServer, PreloadsOnlyWhatThePlansTypesNeed) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "sanitized builds exec their workers: no fork server (decisions 101, 104)";
#endif
    testing::Running coordinator("coordinator", {"--mode", "processes", "--workers", "1", "--tasks", "1", "--duration",
                                                 "60", "--drain-timeout", "0"});
    const auto [server, workers] = server_and_workers(coordinator, 1);
    ASSERT_GT(server, 0) << coordinator.err();
    ASSERT_EQ(workers.size(), 1u) << coordinator.err();
    EXPECT_EQ(proc_file(server, "maps").find("libcurl"), std::string::npos);
    EXPECT_EQ(proc_file(workers[0], "maps").find("libcurl"), std::string::npos);
    EXPECT_NE(proc_file(server, "cmdline").find(std::string("--preload\0sleep", 15)), std::string::npos);
    coordinator.signal(SIGTERM);
    coordinator.wait();
}

// Decision 262: the server's first packet says it has preloaded the plan's types (libcurl for
// downloads), and the processes mode's clock starts only after it came.
TEST(ForkServer, SaysItIsReadyOnlyOnceItsTypesArePreloaded) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "sanitized builds exec their workers: no fork server (decisions 101, 104)";
#endif
    ForkServer server(testing::bin("worker"), {}, "", {"download"});
    ASSERT_TRUE(server.wait_ready(std::chrono::seconds(30)));
    EXPECT_NE(proc_file(server.pid(), "maps").find("libcurl"), std::string::npos);
    EXPECT_TRUE(server.wait_ready(std::chrono::milliseconds(0)));  // once ready, always
    EXPECT_FALSE(server.take_reply().has_value());                 // the ready packet is no fork's reply
    EXPECT_TRUE(server.alive());
}

// A fork server that never says it is ready, as one whose preload hangs: `/bin/sh -c 'exec sleep
// 600'`, given the server's arguments. A stop or a drain ends the wait for it at once.
TEST(ForkServer, WaitingForItsReadyEndsAtAStopOrADrain) {
    for (const bool drain : {false, true}) {
        ForkServer server("/bin/sh", {"-c", "exec sleep 600", "sh"}, "", {});
        const pid_t pid = server.pid();
        std::stop_source stop;
        std::stop_source drained;
        std::jthread signal([&] {
            std::this_thread::sleep_for(std::chrono::milliseconds(100));
            (drain ? drained : stop).request_stop();
        });
        // Minutes: a wait that did not look at the tokens would outlast the test's timeout.
        EXPECT_FALSE(server.wait_ready(std::chrono::minutes(10), stop.get_token(), drained.get_token())) << drain;
        EXPECT_TRUE(server.alive()) << "a stop is no reason to give the server up";
        EXPECT_FALSE(server.wait_ready(std::chrono::minutes(10), stop.get_token(), drained.get_token()))
            << "stopped already: no wait";
        signal.join();
        EXPECT_TRUE(testing::process_exists(pid));
    }
}

// The ready packet is checked in one place (ForkServer::receive): a reply to a request before it
// gives the server up, whether it comes to wait_ready() or to take_reply().
TEST(ForkServer, AReplyBeforeTheReadyPacketGivesTheServerUp) {
    // A server that answers pid 7 at once: the packet the real one sends after a fork.
    const std::string reply = "printf '\\007\\000\\000\\000\\000\\000\\000\\000' >&3; exec sleep 600";
    for (const bool waiting : {true, false}) {
        ForkServer server("/bin/sh", {"-c", reply, "sh"}, "", {});
        if (waiting) {
            EXPECT_FALSE(server.wait_ready(std::chrono::seconds(30)));
        } else {
            EXPECT_TRUE(testing::eventually([&] { return !server.take_reply().has_value() && !server.alive(); },
                                            std::chrono::seconds(30)));
        }
        EXPECT_FALSE(server.alive()) << waiting;
    }
}

// A copy of the coordinator whose `worker`, next to it, is a fork server that never says it is
// ready (a script that sleeps in its place): a run signalled while it waits for the server.
bool has_control_dir(pid_t coordinator) {
    std::error_code ec;
    const std::string prefix = fmt::format("taskfarm-run-{}-", coordinator);
    for (const auto& entry : std::filesystem::directory_iterator(std::filesystem::temp_directory_path(), ec))
        if (entry.path().filename().string().starts_with(prefix)) return true;
    return false;
}

TEST(ForkServer, ASignalWhileTheServerStartsEndsTheRunAtOnceWithNoWorkerStartedAndNothingLeft) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "sanitized builds exec their workers: no fork server (decisions 101, 104)";
#endif
    for (const int signal : {SIGTERM, SIGINT}) {
        testing::TempDir dir;
        const auto coordinator_copy = dir / "coordinator";
        std::filesystem::copy_file(testing::bin("coordinator"), coordinator_copy);
        {
            std::ofstream script(dir / "worker");
            script << "#!/bin/sh\nexec sleep 600\n";
        }
        std::filesystem::permissions(dir / "worker", std::filesystem::perms::owner_all);
        testing::Running coordinator(coordinator_copy.string(),
                                     {"--mode", "processes", "--workers", "2", "--tasks", "4", "--duration", "0",
                                      "--log-level", "debug", "--results", (dir / "r.jsonl").string()});
        // The server is up, the run past its signal set-up (its control socket's directory is
        // made after it) and the processes mode in its wait for the server (its log says so just
        // before: a signal before the mode starts ends the run before the wait, with no message
        // of it): the signal reaches the run while it waits.
        pid_t server = -1;
        ASSERT_TRUE(testing::eventually(
            [&] {
                const auto children = testing::children_of(coordinator.pid());
                server = children.size() == 1 ? children[0] : -1;
                return server > 0 && has_control_dir(coordinator.pid()) &&
                       coordinator.err().find("waiting for the fork server to say it is ready") != std::string::npos;
            },
            std::chrono::seconds(20)))
            << coordinator.err();
        coordinator.signal(signal);
        const Output output = coordinator.wait(std::chrono::seconds(30));
        EXPECT_EQ(output.exit_code, 128 + signal) << output.err;
        EXPECT_NE(output.err.find("stopped while waiting for the fork server"), std::string::npos) << output.err;
        // Before, a SIGTERM's run waited out the 2 s and then asked the server for w1 anyway.
        EXPECT_EQ(output.err.find("asked the fork server for worker"), std::string::npos) << output.err;
        EXPECT_EQ(output.err.find("started worker"), std::string::npos) << output.err;
        EXPECT_TRUE(testing::read_result_lines(dir / "r.jsonl").empty()) << "nothing ran: --resume runs all 4";
        EXPECT_TRUE(all_gone({server})) << signal;
    }
}

TEST(ForkServer, TheProcessesModesClockStartsOnceTheServerIsReady) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "sanitized builds exec their workers: no fork server (decisions 101, 104)";
#endif
    // --json -: the report on stdout, so the mode's header goes to stderr with the log.
    const Output output =
        testing::run_binary("coordinator", {"--mode", "processes", "--workers", "1", "--tasks", "1", "--duration", "0",
                                            "--log-level", "debug", "--json", "-"});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const auto ready = output.err.find("the fork server is ready; the processes mode's clock starts");
    const auto header = output.err.find("== processes");
    ASSERT_NE(ready, std::string::npos) << output.err;
    ASSERT_NE(header, std::string::npos) << output.err;
    EXPECT_LT(ready, header) << output.err;
}

// Decision 265: more requests than the socket's buffer holds wait in the coordinator and go as
// replies make room: every worker of hundreds asked at once is forked, none exec'd (before,
// the first request that did not fit gave the server up, and the rest were exec'd).
TEST(ForkServer, HundredsOfWorkersAskedAtOnceAreAllForked) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "sanitized builds exec their workers: no fork server (decisions 101, 104)";
#endif
    const Output output =
        testing::run_binary("coordinator", {"--mode", "processes", "--workers", "400", "--tasks", "400", "--duration",
                                            "0", "--log-level", "debug", "--progress", "never", "--json", "-"});
    ASSERT_EQ(output.exit_code, 0) << output.err.substr(0, 3000);
    EXPECT_EQ(nlohmann::json::parse(output.out)["runs"][0]["ok"], 400);
    std::size_t forked = 0;
    for (std::size_t at = 0; (at = output.err.find("forked worker ", at)) != std::string::npos; ++at) ++forked;
    EXPECT_EQ(forked, 400u);
    EXPECT_EQ(output.err.find("workers are exec'd"), std::string::npos);
    EXPECT_EQ(output.err.find("instead of the fork server"), std::string::npos);
}

TEST(ForkServer, AWorkerBinIsExecdWithoutAForkServer) {
    testing::Running coordinator(
        "coordinator", {"--mode", "processes", "--workers", "2", "--tasks", "2", "--duration", "60", "--worker-bin",
                        testing::bin("worker").string(), "--drain-timeout", "0"});
    std::vector<pid_t> workers;
    ASSERT_TRUE(testing::eventually([&] { return (workers = testing::workers_of(coordinator.pid())).size() == 2; },
                                    std::chrono::seconds(20)));
    EXPECT_EQ(testing::fork_server_of(coordinator.pid()), -1);
    for (pid_t worker : workers) EXPECT_EQ(proc_file(worker, "cmdline").find("--fork-server"), std::string::npos);
    coordinator.signal(SIGTERM);
    EXPECT_EQ(coordinator.wait(std::chrono::seconds(20)).exit_code, 143);
    EXPECT_TRUE(all_gone(workers));
}

// Only the processes mode starts one, and only when it has local workers to fork.
TEST(ForkServer, ARunWithoutWorkerProcessesStartsNone) {
    testing::Running coordinator("coordinator", {"--mode", "threads", "--workers", "2", "--tasks", "2", "--duration",
                                                 "60", "--drain-timeout", "0"});
    ASSERT_TRUE(testing::eventually([&] { return coordinator.out().find("== threads") != std::string::npos; },
                                    std::chrono::seconds(10)));
    EXPECT_EQ(testing::children_of(coordinator.pid()), std::vector<pid_t>{});
    coordinator.signal(SIGTERM);
    EXPECT_EQ(coordinator.wait(std::chrono::seconds(20)).exit_code, 143);
}

TEST(ForkServer, TheWorkerRefusesAForkServerWithoutItsParent) {
    const Output output = testing::run_binary("worker", {"--fork-server"});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--fork-server"), std::string::npos) << output.err;
    EXPECT_NE(output.err.find("--parent-pid"), std::string::npos) << output.err;
}

}  // namespace
}  // namespace taskfarm
