// Remote workers: `coordinator keygen`, a coordinator listening on tcp with CURVE keys, and
// workers started by hand, all on loopback (and across two network namespaces where the test
// may create them). Assertions are on exit codes, messages, ids and worker names, never on
// how long anything took.

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <fstream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <set>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <zmq.h>

#include "affinity.hpp"
#include "support.hpp"

namespace taskfarm {
namespace {

using nlohmann::json;
using testing::Output;
using testing::run_binary;
using testing::Running;
namespace fs = std::filesystem;

constexpr auto kLimit = std::chrono::seconds(30);

void make_keys(const fs::path& dir, bool worker_only = false) {
    std::vector<std::string> args{"keygen", dir.string()};
    if (worker_only) args.push_back("--worker-only");
    const Output output = run_binary("coordinator", args);
    ASSERT_EQ(output.exit_code, 0) << output.err;
}

// A key directory for a worker: its own secret and the coordinator.public it trusts.
fs::path worker_keys(const fs::path& dir, const fs::path& worker_secret_from, const fs::path& server_public_from) {
    fs::create_directories(dir);
    fs::copy_file(worker_secret_from / "worker.secret", dir / "worker.secret");
    fs::copy_file(server_public_from / "coordinator.public", dir / "coordinator.public");
    return dir;
}

// Waits until `process` logged `text`; false if it did not within kLimit.
bool logged(const Running& process, const std::string& text) {
    return testing::eventually([&] { return process.err().find(text) != std::string::npos; }, kLimit);
}

// The tcp endpoint a coordinator says it listens on, once it has said so.
std::string endpoint_of(const Running& coordinator) {
    static const std::regex listening(R"(listening for remote workers on (tcp://[^ ]+))");
    std::string endpoint;
    testing::eventually(
        [&] {
            const std::string err = coordinator.err();
            std::smatch match;
            if (!std::regex_search(err, match, listening)) return false;
            endpoint = match[1].str();
            return true;
        },
        kLimit);
    return endpoint;
}

std::vector<std::string> worker_args(const std::string& endpoint, const std::string& name, std::optional<fs::path> keys,
                                     std::vector<std::string> more = {}) {
    std::vector<std::string> args{"--connect", endpoint, "--name", name};
    if (keys) args.insert(args.end(), {"--keys", keys->string()});
    args.insert(args.end(), more.begin(), more.end());
    return args;
}

// Task id -> journal line of the processes mode; a second line for one id fails the test.
std::map<int, json> journal(const fs::path& path) {
    std::map<int, json> lines;
    for (const json& line : testing::read_result_lines(path)) {
        EXPECT_EQ(line["mode"], "processes");
        EXPECT_TRUE(lines.emplace(line["id"].get<int>(), line).second) << "two lines for task " << line["id"];
    }
    return lines;
}

std::set<std::string> workers_in(const std::map<int, json>& lines) {
    std::set<std::string> names;
    for (const auto& [id, line] : lines) names.insert(line["worker"].get<std::string>());
    return names;
}

TEST(Keygen, WritesSixZ85KeysWithPrivateSecretFilesAndNeverOverwrites) {
    testing::TempDir dir;
    const fs::path keys = dir / "keys";
    const Output output = run_binary("coordinator", {"keygen", keys.string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_NE(output.out.find("worker.secret"), std::string::npos) << output.out;
    for (const char* name : {"coordinator", "worker", "client"}) {
        SCOPED_TRACE(name);
        const fs::path secret = keys / (std::string(name) + ".secret");
        const fs::path pub = keys / (std::string(name) + ".public");
        struct stat info {};
        ASSERT_EQ(::stat(secret.c_str(), &info), 0);
        EXPECT_EQ(info.st_mode & 0777, 0600u);
        ASSERT_EQ(::stat(pub.c_str(), &info), 0);
        EXPECT_EQ(info.st_mode & 0022, 0u) << "a public key is not writable by others";
        const std::string secret_text = testing::read_file(secret);
        const std::string public_text = testing::read_file(pub);
        ASSERT_EQ(secret_text.size(), 41u);
        ASSERT_EQ(public_text.size(), 41u);
        EXPECT_EQ(secret_text.back(), '\n');
        // The public key is the one that belongs to the secret, by libzmq's own computation.
        char derived[41] = {};
        ASSERT_EQ(::zmq_curve_public(derived, secret_text.substr(0, 40).c_str()), 0);
        EXPECT_EQ(std::string(derived), public_text.substr(0, 40));
    }
    EXPECT_NE(testing::read_file(keys / "coordinator.secret"), testing::read_file(keys / "worker.secret"));

    const std::string before = testing::read_file(keys / "worker.secret");
    const Output again = run_binary("coordinator", {"keygen", keys.string()});
    EXPECT_EQ(again.exit_code, 2);
    EXPECT_NE(again.err.find("refusing to overwrite"), std::string::npos) << again.err;
    EXPECT_EQ(testing::read_file(keys / "worker.secret"), before);

    const Output partial = run_binary("coordinator", {"keygen", (dir / "other").string(), "--worker-only"});
    ASSERT_EQ(partial.exit_code, 0) << partial.err;
    EXPECT_TRUE(fs::exists(dir / "other" / "worker.secret"));
    EXPECT_FALSE(fs::exists(dir / "other" / "coordinator.secret"));
    EXPECT_FALSE(fs::exists(dir / "other" / "client.secret"));
    const Output client = run_binary("coordinator", {"keygen", (dir / "client").string(), "--client-only"});
    ASSERT_EQ(client.exit_code, 0) << client.err;
    EXPECT_TRUE(fs::exists(dir / "client" / "client.secret"));
    EXPECT_FALSE(fs::exists(dir / "client" / "worker.secret"));
}

TEST(Remote, AuthorisedWorkersOverLoopbackRunEveryTaskBesideALocalOne) {
    testing::TempDir dir;
    make_keys(dir / "keys");
    make_keys(dir / "hostb", /*worker_only=*/true);  // a second worker key, admitted by --authorized
    fs::create_directories(dir / "authorized");
    fs::copy_file(dir / "hostb" / "worker.public", dir / "authorized" / "hostb.public");
    const fs::path hostb = worker_keys(dir / "hostb-worker", dir / "hostb", dir / "keys");

    Running coordinator("coordinator", {"--listen", "tcp://127.0.0.1:*", "--keys", (dir / "keys").string(),
                                        "--authorized", (dir / "authorized").string(), "--workers", "1",
                                        "--expect-workers", "2", "--tasks", "9", "--duration", "0.05", "--results",
                                        (dir / "r.jsonl").string(), "--json", (dir / "report.json").string()});
    const std::string endpoint = endpoint_of(coordinator);
    ASSERT_FALSE(endpoint.empty()) << coordinator.err();
    Running r1("worker", worker_args(endpoint, "r1", dir / "keys"));
    Running r2("worker", worker_args(endpoint, "r2", hostb));

    const Output output = coordinator.wait(kLimit * 2);
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const auto lines = journal(dir / "r.jsonl");
    ASSERT_EQ(lines.size(), 9u);
    for (const auto& [id, line] : lines) {
        EXPECT_TRUE(line["ok"].get<bool>()) << line.dump();
        EXPECT_EQ(line["attempt"], 1);
    }
    // Dispatch waits for all three, then the first three tasks go one to each.
    EXPECT_EQ(workers_in(lines), (std::set<std::string>{"w1", "r1", "r2"}));
    EXPECT_NE(output.err.find("with CURVE key 'worker'"), std::string::npos) << output.err;
    EXPECT_NE(output.err.find("with CURVE key 'hostb'"), std::string::npos) << output.err;
    EXPECT_EQ(testing::read_json(dir / "report.json")["runs"][0]["workers"], 3);
    // Both remote workers got SHUTDOWN (exit 0), rather than noticing the coordinator had gone.
    for (Running* worker : {&r1, &r2}) {
        const Output done = worker->wait(kLimit);
        EXPECT_EQ(done.exit_code, 0) << done.err;
    }
}

TEST(Remote, RefusedWorkersGetNoTaskAndExitSayingWhy) {
    testing::TempDir dir;
    make_keys(dir / "keys");
    make_keys(dir / "stranger");  // another coordinator's and another worker's keys
    const fs::path unauthorised = worker_keys(dir / "unauthorised", dir / "stranger", dir / "keys");
    const fs::path wrong_server = worker_keys(dir / "wrong-server", dir / "keys", dir / "stranger");

    Running coordinator("coordinator", {"--listen", "tcp://127.0.0.1:*", "--keys", (dir / "keys").string(), "--workers",
                                        "0", "--expect-workers", "1", "--tasks", "4", "--duration", "0.05", "--results",
                                        (dir / "r.jsonl").string()});
    const std::string endpoint = endpoint_of(coordinator);
    ASSERT_FALSE(endpoint.empty()) << coordinator.err();

    struct Refused {
        const char* name;
        std::optional<fs::path> keys;
        const char* worker_says;       // in the worker's own error
        const char* coordinator_says;  // in the coordinator's log
    };
    const Refused refused[] = {
        {"unauthorised", unauthorised, "is not authorised there", "is not authorised"},
        {"wrong-server", wrong_server, "coordinator.public' the public key of the coordinator",
         "could not be decrypted"},
        // Either side may notice the mismatch first and hang up, so the coordinator's log of it is
        // best effort; the worker always says.
        {"plaintext", std::nullopt, "start this worker with --keys", nullptr},  // with --insecure
    };
    for (const Refused& worker : refused) {
        SCOPED_TRACE(worker.name);
        // The connect timeout is far longer than the test's limit: only a refusal ends these.
        std::vector<std::string> more{"--connect-timeout", "600"};
        if (!worker.keys) more.insert(more.end(), {"--insecure", "--insecure-as-root"});
        Running process("worker", worker_args(endpoint, worker.name, worker.keys, more));
        const Output output = process.wait(kLimit);
        EXPECT_EQ(output.exit_code, 1) << output.err;
        EXPECT_NE(output.err.find(worker.worker_says), std::string::npos) << output.err;
        if (worker.coordinator_says) {
            EXPECT_TRUE(logged(coordinator, worker.coordinator_says)) << coordinator.err();
        }
    }

    Running good("worker", worker_args(endpoint, "good", dir / "keys"));
    const Output output = coordinator.wait(kLimit * 2);
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const auto lines = journal(dir / "r.jsonl");
    ASSERT_EQ(lines.size(), 4u);
    EXPECT_EQ(workers_in(lines), std::set<std::string>{"good"});
    EXPECT_EQ(good.wait(kLimit).exit_code, 0);
}

TEST(Remote, TooFewWorkersWithinTheWaitExitOneSayingSo) {
    testing::TempDir dir;
    make_keys(dir / "keys");
    const Output output =
        run_binary("coordinator", {"--listen", "tcp://127.0.0.1:*", "--keys", (dir / "keys").string(), "--workers", "0",
                                   "--expect-workers", "2", "--wait-workers", "0.5", "--tasks", "2"});
    EXPECT_EQ(output.exit_code, 1) << output.err;
    EXPECT_NE(output.err.find("only 0 of the 2 remote worker(s) of --expect-workers attached within 0.5 s"),
              std::string::npos)
        << output.err;
}

TEST(Remote, ALostWorkersTasksAreRequeuedNotRespawnedAndALaterArrivalFinishesThem) {
    testing::TempDir dir;
    make_keys(dir / "keys");
    Running coordinator("coordinator", {"--listen", "tcp://127.0.0.1:*", "--keys", (dir / "keys").string(), "--workers",
                                        "0", "--expect-workers", "1", "--heartbeat-timeout", "1", "--tasks", "4",
                                        "--duration", "1", "--results", (dir / "r.jsonl").string()});
    const std::string endpoint = endpoint_of(coordinator);
    ASSERT_FALSE(endpoint.empty()) << coordinator.err();
    Running stopped("worker", worker_args(endpoint, "stopped", dir / "keys"));
    // r1 runs alone for 4 s; stopping it as soon as tasks flow leaves it holding one.
    ASSERT_TRUE(logged(coordinator, "handing out tasks")) << coordinator.err();
    ASSERT_EQ(::kill(stopped.pid(), SIGSTOP), 0);
    Running later("worker", worker_args(endpoint, "later", dir / "keys"));
    const Output output = coordinator.wait(kLimit * 2);
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_NE(output.err.find("worker stopped silent for"), std::string::npos) << output.err;
    const auto lines = journal(dir / "r.jsonl");
    ASSERT_EQ(lines.size(), 4u);
    int retried = 0;
    for (const auto& [id, line] : lines) {
        EXPECT_TRUE(line["ok"].get<bool>()) << line.dump();
        if (line["attempt"].get<int>() > 1) {
            ++retried;
            EXPECT_EQ(line["worker"], "later") << line.dump();
        }
    }
    EXPECT_EQ(retried, 1);
    EXPECT_TRUE(workers_in(lines).contains("later"));
    // No replacement for a remote worker: the coordinator never started a process.
    EXPECT_EQ(output.err.find("not replacing"), std::string::npos) << output.err;
    ::kill(stopped.pid(), SIGCONT);
    EXPECT_NE(stopped.wait(kLimit).exit_code, 137) << "the lost worker did not exit by itself";
}

TEST(Remote, WorkersExitWhenTheCoordinatorIsKilled) {
    testing::TempDir dir;
    make_keys(dir / "keys");
    Running coordinator("coordinator", {"--listen", "tcp://127.0.0.1:*", "--keys", (dir / "keys").string(), "--workers",
                                        "0", "--expect-workers", "1", "--tasks", "2", "--duration", "60"});
    const std::string endpoint = endpoint_of(coordinator);
    ASSERT_FALSE(endpoint.empty()) << coordinator.err();
    Running worker("worker", worker_args(endpoint, "r1", dir / "keys", {"--heartbeat-timeout", "1"}));
    ASSERT_TRUE(logged(coordinator, "handing out tasks")) << coordinator.err();
    coordinator.signal(SIGKILL);
    const Output output = worker.wait(kLimit);
    EXPECT_EQ(output.exit_code, 1) << output.err;
    EXPECT_NE(output.err.find("coordinator silent for"), std::string::npos) << output.err;
}

TEST(Remote, PlaintextRunsWithInsecureAndWithoutItExitsTwoNamingIt) {
    testing::TempDir dir;
    Running coordinator("coordinator",
                        {"--listen", "tcp://127.0.0.1:*", "--insecure", "--workers", "0", "--expect-workers", "1",
                         "--tasks", "3", "--duration", "0", "--results", (dir / "r.jsonl").string()});
    const std::string endpoint = endpoint_of(coordinator);
    ASSERT_FALSE(endpoint.empty()) << coordinator.err();
    EXPECT_NE(coordinator.err().find("(plaintext"), std::string::npos) << coordinator.err();
    // The command it shows for the workers is one they accept: plaintext needs --insecure there too.
    EXPECT_NE(coordinator.err().find("worker --connect " + endpoint + " --insecure"), std::string::npos)
        << coordinator.err();
    std::vector<std::string> insecure{"--insecure"};
    if (::geteuid() == 0) insecure.push_back("--insecure-as-root");  // see the test below
    Running worker("worker", worker_args(endpoint, "r1", std::nullopt, insecure));
    const Output output = coordinator.wait(kLimit * 2);
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(workers_in(journal(dir / "r.jsonl")), std::set<std::string>{"r1"});

    // Refused while parsing the command line: nothing is bound or connected.
    for (const char* address : {"tcp://127.0.0.1:5555", "tcp://0.0.0.0:5555", "tcp://*:5555"}) {
        const Output refused = run_binary("coordinator", {"--listen", address, "--workers", "1", "--tasks", "1"});
        EXPECT_EQ(refused.exit_code, 2) << address;
        EXPECT_NE(refused.err.find("--insecure"), std::string::npos) << refused.err;
        EXPECT_TRUE(refused.out.empty()) << refused.out;
    }
    // Addresses ZeroMQ could not bind (a host or interface name, IPv6) are refused first, by name.
    for (const char* address : {"tcp://[::1]:5555", "tcp://localhost:5555", "tcp://[::]:5555", "tcp://eth0:5555"}) {
        const Output refused = run_binary("coordinator", {"--listen", address, "--workers", "1", "--tasks", "1"});
        EXPECT_EQ(refused.exit_code, 2) << address;
        EXPECT_NE(refused.err.find(fmt::format("--listen: cannot listen on '{}'", address)), std::string::npos)
            << refused.err;
        EXPECT_TRUE(refused.out.empty()) << refused.out;
    }
    for (const char* address : {"tcp://127.0.0.1:5555", "tcp://10.200.0.1:5555"}) {
        const Output worker_refused = run_binary("worker", {"--connect", address});
        EXPECT_EQ(worker_refused.exit_code, 2) << address;
        EXPECT_NE(worker_refused.err.find("--insecure"), std::string::npos) << worker_refused.err;
    }
}

// A worker in plaintext runs the commands of whoever holds its port: as root, only when
// asked for by name (issue 26, class 8). The tests run as root.
TEST(Remote, AnInsecureWorkerAsRootIsRefusedWithoutInsecureAsRoot) {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root";
    const Output refused =
        run_binary("worker", {"--connect", "tcp://127.0.0.1:9", "--insecure", "--connect-timeout", "0.2"});
    EXPECT_EQ(refused.exit_code, 2) << refused.err;
    EXPECT_NE(refused.err.find("--insecure-as-root"), std::string::npos) << refused.err;
    EXPECT_NE(refused.err.find("root"), std::string::npos) << refused.err;
    // Asked for by name, it runs (and here finds no coordinator: exit 1).
    const Output allowed = run_binary(
        "worker", {"--connect", "tcp://127.0.0.1:9", "--insecure", "--insecure-as-root", "--connect-timeout", "0.2"});
    EXPECT_EQ(allowed.exit_code, 1) << allowed.err;
    EXPECT_NE(allowed.err.find("no coordinator answered"), std::string::npos) << allowed.err;
    // Without --insecure it means nothing.
    const Output alone = run_binary("worker", {"--connect", "tcp://127.0.0.1:9", "--insecure-as-root"});
    EXPECT_EQ(alone.exit_code, 2) << alone.err;
    const Output help = run_binary("worker", {"--help"});
    EXPECT_NE(help.out.find("--insecure-as-root"), std::string::npos) << help.out;
}

TEST(Remote, BadValuesExitTwoNamingTheFlag) {
    testing::TempDir dir;
    make_keys(dir / "keys");
    fs::create_directories(dir / "empty");
    std::ofstream(dir / "bad.public") << "not a key\n";
    // Something already listens here: ours, on loopback.
    void* context = ::zmq_ctx_new();
    void* taken = ::zmq_socket(context, ZMQ_REP);
    ASSERT_EQ(::zmq_bind(taken, "tcp://127.0.0.1:*"), 0);
    char busy[256] = {};
    std::size_t size = sizeof busy;
    ::zmq_getsockopt(taken, ZMQ_LAST_ENDPOINT, busy, &size);

    const std::string keys = (dir / "keys").string();
    const std::vector<std::pair<std::vector<std::string>, std::string>> coordinator_cases{
        {{"--listen", "tcp://127.0.0.1:*", "--keys", (dir / "nope").string()}, "--keys"},
        {{"--listen", "tcp://127.0.0.1:*", "--keys", keys, "--authorized", (dir / "empty").string()}, "--authorized"},
        {{"--listen", "tcp://127.0.0.1:*", "--keys", (dir / "empty").string()}, "--keys"},
        {{"--listen", busy, "--keys", keys}, "--listen"},
        {{"--listen", "tcp://127.0.0.1:*", "--insecure", "--workers", "0"}, "--expect-workers"},
        {{"--listen", "tcp://127.0.0.1:*", "--insecure", "--mode", "threads"}, "--mode"},
    };
    for (const auto& [args, flag] : coordinator_cases) {
        std::vector<std::string> full = args;
        full.insert(full.end(), {"--tasks", "1", "--duration", "0"});
        const Output output = run_binary("coordinator", full);
        EXPECT_EQ(output.exit_code, 2) << flag << ": " << output.err;
        EXPECT_NE(output.err.find(flag), std::string::npos) << output.err;
    }
    const std::vector<std::pair<std::vector<std::string>, std::string>> worker_cases{
        {{"--connect", "nope"}, "--connect"},
        {{"--connect", "tcp://127.0.0.1"}, "--connect"},
        {{"--connect", "tcp://127.0.0.1:5555", "--keys", (dir / "nope").string()}, "--keys"},
        {{"--connect", "ipc:///tmp/x", "--keys", keys}, "--keys"},
        {{"--connect", "tcp://127.0.0.1:5555", "--pin", "99999"}, "--pin"},
        {{"--connect", "tcp://127.0.0.1:5555", "--connect-timeout", "0"}, "--connect-timeout"},
    };
    for (const auto& [args, flag] : worker_cases) {
        const Output output = run_binary("worker", args);
        EXPECT_EQ(output.exit_code, 2) << flag << ": " << output.err;
        EXPECT_NE(output.err.find(flag), std::string::npos) << output.err;
    }
    ::zmq_close(taken);
    ::zmq_ctx_term(context);
}

TEST(Remote, WorkerHelpExplainsEveryFlag) {
    const Output output = run_binary("worker", {"--help"});
    EXPECT_EQ(output.exit_code, 0);
    for (const char* flag : {"--connect", "--keys", "--insecure", "--name", "--pin", "--connect-timeout",
                             "--heartbeat-interval", "--heartbeat-timeout", "--log-level", "--parent-pid"})
        EXPECT_NE(output.out.find(flag), std::string::npos) << flag;
    const Output keygen = run_binary("coordinator", {"keygen", "--help"});
    EXPECT_EQ(keygen.exit_code, 0);
    EXPECT_NE(keygen.out.find("--worker-only"), std::string::npos) << keygen.out;
}

// scripts/launch-ssh with an `ssh` that runs the command here: two "hosts", one worker per
// CPU asked for on each, pinned, all attached to one coordinator.
TEST(LaunchSsh, StartsPinnedWorkersOnEveryHostThatExitWithTheRun) {
    testing::TempDir dir;
    make_keys(dir / "keys");
    const fs::path fake_ssh = dir / "ssh";
    std::ofstream(fake_ssh) << "#!/bin/sh\n# ssh HOST COMMAND...: run COMMAND here\nshift\nexec \"$@\"\n";
    fs::permissions(fake_ssh, fs::perms::owner_all);
    ASSERT_EQ(::setenv("TASKFARM_SSH", fake_ssh.c_str(), 1), 0);

    Running coordinator("coordinator", {"--listen", "tcp://127.0.0.1:*", "--keys", (dir / "keys").string(), "--workers",
                                        "0", "--expect-workers", "3", "--tasks", "6", "--duration", "0.05", "--results",
                                        (dir / "r.jsonl").string(), "--json", (dir / "report.json").string()});
    const std::string endpoint = endpoint_of(coordinator);
    ASSERT_FALSE(endpoint.empty()) << coordinator.err();
    Running launcher(fs::path(TASKFARM_SCRIPTS_DIR) / "launch-ssh",
                     {"--connect", endpoint, "--keys", (dir / "keys").string(), "--worker",
                      testing::bin("worker").string(), "hosta:2", "hostb:1"});
    const Output output = coordinator.wait(kLimit * 2);
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_EQ(workers_in(journal(dir / "r.jsonl")), (std::set<std::string>{"hosta-0", "hosta-1", "hostb-0"}));
    const Output launched = launcher.wait(kLimit);
    EXPECT_EQ(launched.exit_code, 0) << launched.err << launched.out;
    // Worker i on a host is pinned to the i-th CPU it may use (round-robin past the last).
    const std::vector<int> cpus = allowed_cpus();
    std::map<std::string, int> placed;
    const json report = testing::read_json(dir / "report.json");
    for (const json& place : report["runs"][0]["placement"]) placed[place["worker"]] = place["cpu"];
    ASSERT_EQ(placed.size(), 3u) << report.dump();
    EXPECT_EQ(placed["hosta-0"], cpus[0]);
    EXPECT_EQ(placed["hosta-1"], cpus[1 % cpus.size()]);
    EXPECT_EQ(placed["hostb-0"], cpus[0]);
}

// Two network namespaces joined by a veth pair, addresses only on that pair: the coordinator
// in one, a remote worker in the other, a real (if virtual) link between them that the test
// then cuts. Needs root and `ip netns`; skipped otherwise.
class Netns {
public:
    Netns() {
        const std::string tag = std::to_string(::getpid() % 100000);
        names_ = {"tf-c" + tag, "tf-w" + tag};
        veth_ = {"tfc" + tag, "tfw" + tag};
        const int octet = static_cast<int>(::getpid() % 250) + 1;
        address_ = {fmt::format("10.200.{}.1", octet), fmt::format("10.200.{}.2", octet)};
    }
    ~Netns() {
        for (const std::string& name : names_) ip({"netns", "del", name});
    }
    Netns(const Netns&) = delete;
    Netns& operator=(const Netns&) = delete;

    // Empty on success, else why the test cannot run here.
    std::string create() {
        if (::geteuid() != 0) return "not root";
        if (ip_path().empty()) return "no ip command";
        for (const std::string& name : names_)
            if (ip({"netns", "add", name}) != 0) return "ip netns add failed";
        const std::vector<std::vector<std::string>> steps{
            {"link", "add", veth_[0], "netns", names_[0], "type", "veth", "peer", "name", veth_[1], "netns", names_[1]},
            {"-n", names_[0], "addr", "add", address_[0] + "/24", "dev", veth_[0]},
            {"-n", names_[1], "addr", "add", address_[1] + "/24", "dev", veth_[1]},
            {"-n", names_[0], "link", "set", veth_[0], "up"},
            {"-n", names_[1], "link", "set", veth_[1], "up"},
            {"-n", names_[0], "link", "set", "lo", "up"},
            {"-n", names_[1], "link", "set", "lo", "up"},
        };
        for (const auto& step : steps)
            if (ip(step) != 0) return "cannot set up the veth pair";
        return "";
    }
    // Runs build/bin/<program> in namespace i.
    std::unique_ptr<Running> run(int i, const std::string& program, const std::vector<std::string>& args) const {
        std::vector<std::string> full{"netns", "exec", names_[i], testing::bin(program).string()};
        full.insert(full.end(), args.begin(), args.end());
        return std::make_unique<Running>(ip_path(), full);
    }
    void cut() const { ip({"-n", names_[1], "link", "set", veth_[1], "down"}); }
    const std::string& coordinator_address() const { return address_[0]; }

private:
    static std::string ip_path() {
        for (const char* path : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
            if (fs::exists(path)) return path;
        return "";
    }
    static int ip(const std::vector<std::string>& args) {
        if (ip_path().empty()) return -1;
        Running process(ip_path(), args);
        return process.wait(std::chrono::seconds(30)).exit_code;
    }
    std::array<std::string, 2> names_, veth_, address_;
};

TEST(Remote, AcrossTwoNetworkNamespacesALostHostsTasksAreRequeued) {
    Netns netns;
    if (const std::string why = netns.create(); !why.empty())
        GTEST_SKIP() << "skipped: needs root and `ip netns` to make two network namespaces (" << why << ")";
    testing::TempDir dir;
    make_keys(dir / "keys");
    // A local worker in the coordinator's namespace, a remote one in the other.
    const auto coordinator =
        netns.run(0, "coordinator",
                  {"--listen", fmt::format("tcp://{}:*", netns.coordinator_address()), "--keys",
                   (dir / "keys").string(), "--workers", "1", "--expect-workers", "1", "--heartbeat-timeout", "1",
                   "--tasks", "6", "--duration", "1", "--results", (dir / "r.jsonl").string()});
    const std::string endpoint = endpoint_of(*coordinator);
    ASSERT_NE(endpoint.find(netns.coordinator_address()), std::string::npos) << coordinator->err();
    const auto worker =
        netns.run(1, "worker", worker_args(endpoint, "far", dir / "keys", {"--heartbeat-timeout", "1"}));
    ASSERT_TRUE(logged(*coordinator, "handing out tasks")) << coordinator->err() << worker->err();
    EXPECT_NE(coordinator->err().find(fmt::format("attached from {}", "10.200.")), std::string::npos)
        << coordinator->err();
    // The far host holds a task for the first 2-3 s; its link goes down under it.
    netns.cut();
    const Output output = coordinator->wait(kLimit * 2);
    ASSERT_EQ(output.exit_code, 0) << output.err;
    EXPECT_NE(output.err.find("worker far silent for"), std::string::npos) << output.err;
    const auto lines = journal(dir / "r.jsonl");
    ASSERT_EQ(lines.size(), 6u);
    int retried = 0;
    for (const auto& [id, line] : lines) {
        EXPECT_TRUE(line["ok"].get<bool>()) << line.dump();
        retried += line["attempt"].get<int>() > 1;
    }
    EXPECT_EQ(retried, 1);
    const Output far = worker->wait(kLimit);
    EXPECT_EQ(far.exit_code, 1) << far.err;
    EXPECT_NE(far.err.find("coordinator silent for"), std::string::npos) << far.err;
}

}  // namespace
}  // namespace taskfarm
