// The worker's two threads against a coordinator played by the test (decision 301): the real
// worker program, a real ROUTER socket. While a task runs long the watcher has the socket:
// heartbeats keep coming, the tasks queued behind it are given back, a cancel stops it; then
// the task thread has the socket again and runs a thousand no-op tasks alone.

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <zmq.hpp>

#include "protocol.hpp"
#include "support.hpp"
#include "wire.hpp"

extern char** environ;

namespace taskfarm {
namespace {

using namespace std::chrono_literals;

std::filesystem::path worker_program() { return std::filesystem::path(TASKFARM_BIN_DIR) / "worker"; }

// The coordinator's side: a ROUTER, one worker process connected to it.
class FakeCoordinator {
public:
    FakeCoordinator(const testing::TempDir& dir, std::string heartbeat_timeout = "60")
        : endpoint_("ipc://" + (dir / "c").string()) {
        wire::configure(router_, zmq::socket_type::router);
        router_.bind(endpoint_);
        std::filesystem::create_directories(dir / "state");
        std::vector<std::string> args = {worker_program().string(),
                                         "--connect",
                                         endpoint_,
                                         "--name",
                                         "w1",
                                         "--heartbeat-interval",
                                         "0.05",
                                         "--heartbeat-timeout",
                                         heartbeat_timeout,
                                         "--state-dir",
                                         (dir / "state").string(),
                                         "--out-dir",
                                         (dir / "out").string()};
        std::vector<char*> argv;
        for (std::string& arg : args) argv.push_back(arg.data());
        argv.push_back(nullptr);
        EXPECT_EQ(::posix_spawn(&pid_, argv[0], nullptr, nullptr, argv.data(), environ), 0);
    }
    ~FakeCoordinator() {
        if (pid_ > 0) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, nullptr, 0);
        }
    }

    // The next message from the worker; DecodeError "nothing" after `limit`.
    proto::Message next(std::chrono::milliseconds limit = 20s) {
        zmq::pollitem_t items[] = {{router_.handle(), 0, ZMQ_POLLIN, 0}};
        if (zmq::poll(items, 1, limit) == 0) return proto::DecodeError{"nothing"};
        zmq::message_t identity;
        zmq::message_t frame;
        EXPECT_TRUE(router_.recv(identity));
        EXPECT_TRUE(router_.recv(frame));
        identity_ = identity.to_string();
        return proto::decode(frame.to_string_view());
    }
    template <typename M>
    void send(const M& message) {
        ASSERT_FALSE(identity_.empty()) << "no hello yet";
        ASSERT_TRUE(wire::send_to(router_, identity_, proto::encode(message)));
    }
    // The worker's exit code once it exits, within 60 s; -1 if it is still running then.
    int exit_code() {
        int status = 0;
        for (int i = 0; i < 6000; ++i) {
            if (::waitpid(pid_, &status, WNOHANG) == pid_) {
                pid_ = -1;
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            }
            std::this_thread::sleep_for(10ms);
        }
        return -1;
    }

private:
    std::string endpoint_;
    zmq::context_t context_{1};
    zmq::socket_t router_{context_, zmq::socket_type::router};
    std::string identity_;
    pid_t pid_ = -1;
};

proto::Task sleep_task(TaskId id, double seconds) {
    proto::Task task;
    task.id = id;
    task.kind = "sleep";
    task.params = Json::object();
    task.params["seconds"] = seconds;
    return task;
}

TEST(WorkerSession, ALongTaskKeepsHeartbeatsGivesBackWhatWaitsStopsWhenCancelledAndTheNoOpsThatFollowRunAlone) {
    const testing::TempDir dir;
    FakeCoordinator coordinator(dir);
    ASSERT_TRUE(std::holds_alternative<proto::Hello>(coordinator.next())) << "no hello";
    coordinator.send(proto::Setup{});

    // A task of 60 s with two queued behind it.
    proto::TaskBatch batch;
    batch.tasks = {sleep_task(1, 60), sleep_task(2, 0), sleep_task(3, 0)};
    coordinator.send(batch);
    int heartbeats = 0;
    std::set<TaskId> given_back;
    while (heartbeats < 3 || given_back.size() < 2) {
        proto::Message message = coordinator.next();
        if (std::holds_alternative<proto::Heartbeat>(message)) {
            ++heartbeats;
        } else if (const auto* returned = std::get_if<proto::Returned>(&message)) {
            for (const proto::TaskRef& ref : returned->tasks) given_back.insert(ref.id);
            EXPECT_GE(returned->busy_s, 0.02);  // kGiveBackAfter
        } else {
            FAIL() << "while task 1 runs, only heartbeats and the give-back: got message " << message.index();
        }
    }
    EXPECT_EQ(given_back, (std::set<TaskId>{2, 3}));

    // Cancelled, task 1 ends long before its 60 s, and says so.
    proto::Cancel cancel;
    cancel.tasks = {{1, 1}};
    coordinator.send(cancel);
    const auto result_of_one = [&]() -> std::optional<proto::Result> {
        while (true) {
            proto::Message message = coordinator.next();
            if (auto* result = std::get_if<proto::Result>(&message)) return *result;
            if (auto* results = std::get_if<proto::ResultBatch>(&message)) return results->results.at(0);
            if (!std::holds_alternative<proto::Heartbeat>(message)) return std::nullopt;
        }
    }();
    ASSERT_TRUE(result_of_one.has_value()) << "no result of the cancelled task";
    EXPECT_EQ(result_of_one->id, 1U);
    EXPECT_FALSE(result_of_one->ok);
    EXPECT_FALSE(result_of_one->error.empty());

    // A thousand no-op tasks: every one's result comes back, once.
    std::set<TaskId> done;
    for (TaskId first = 10; first < 1010; first += 100) {
        proto::TaskBatch noops;
        for (TaskId id = first; id < first + 100; ++id) noops.tasks.push_back(sleep_task(id, 0));
        coordinator.send(noops);
    }
    while (done.size() < 1000) {
        proto::Message message = coordinator.next();
        std::vector<proto::Result> results;
        if (auto* one = std::get_if<proto::Result>(&message)) results.push_back(*one);
        if (auto* many = std::get_if<proto::ResultBatch>(&message)) results = many->results;
        if (std::holds_alternative<proto::DecodeError>(message)) FAIL() << "results missing: " << done.size();
        for (const proto::Result& result : results) {
            EXPECT_TRUE(result.ok) << result.error;
            EXPECT_TRUE(done.insert(result.id).second) << "task " << result.id << " twice";
        }
    }
    EXPECT_EQ(*done.begin(), 10U);
    EXPECT_EQ(*done.rbegin(), 1009U);

    coordinator.send(proto::Shutdown{});
    EXPECT_EQ(coordinator.exit_code(), 0);
}

// The coordinator's silence ends the worker while a task runs long: the watcher, which has the
// socket then, notices it (heartbeats out, none in), and the worker exits 1 without waiting
// for the task's 600 s.
TEST(WorkerSession, ASilentCoordinatorEndsTheWorkerWhileATaskRunsLong) {
    const testing::TempDir dir;
    FakeCoordinator coordinator(dir, "0.5");
    ASSERT_TRUE(std::holds_alternative<proto::Hello>(coordinator.next())) << "no hello";
    proto::TaskBatch batch;
    batch.tasks = {sleep_task(1, 600)};
    coordinator.send(batch);
    EXPECT_EQ(coordinator.exit_code(), 1);
}

}  // namespace
}  // namespace taskfarm
