#pragma once
// The coordinator's side of the protocol: the ZeroMQ loop around a Schedule. It decodes
// the frames on its ROUTER socket into the schedule's events (hello, results, returned
// tasks, any frame as a sign of life), reaps exited workers, ticks the schedule's clock,
// and does what the schedule asks: send tasks, heartbeats and SHUTDOWN, spawn and kill
// worker processes, record results and events. Every policy (credits, batches, attempts,
// liveness, respawns, remote workers) is the schedule's; see schedule.hpp.
// Single-threaded: the socket never leaves the thread that runs the dispatcher.

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <optional>
#include <stop_token>
#include <string>

#include <zmq.hpp>

#include "control.hpp"
#include "plan.hpp"
#include "launcher.hpp"
#include "protocol.hpp"
#include "runner.hpp"
#include "schedule.hpp"

namespace taskfarm {

class Dispatcher final : private ScheduleActions {
public:
    // `settings` go to each worker in SETUP, after its HELLO and before any task.
    // `drain` (SIGTERM) hands out no more tasks and ends the run once the workers hold none.
    Dispatcher(zmq::socket_t& router, WorkerLauncher& pool, const Plan& plan, ModeRecorder& recorder,
               DispatchOptions options, std::stop_token stop, const Json& settings = Json::object(),
               std::stop_token drain = {});

    // Spawns the workers and runs until every task has its final result, `stop` fires, or
    // `drain` fired and the workers finished what they held.
    // Throws RunError when the initial workers do not all say HELLO in time, or fewer than
    // expect_remote remote workers attach within wait_remote.
    void run();

    // Sends SHUTDOWN to every connected worker.
    void shutdown_workers();
    // After the workers are gone: see Schedule::end_commands.
    void end_commands() { schedule_.end_commands(); }

    // Called as often as exited workers are reaped, on the dispatcher's thread, until it
    // returns a reason why no remote worker will attach any more (the Slurm job step that
    // started them ended): see Schedule::no_more_workers.
    void watch(std::function<std::optional<std::string>()> check) { watch_ = std::move(check); }

    // See Schedule::remote_load; for a watch().
    Schedule::RemoteLoad remote_load() const { return schedule_.remote_load(); }

    // Tasks asked for on `board` (`coordinator cancel`) are cancelled: see Schedule::cancel.
    void watch_cancels(CancelBoard* board) { cancels_ = board; }

private:
    using Clock = std::chrono::steady_clock;

    struct RejectLog {
        Clock::time_point last;
        std::size_t suppressed = 0;
    };

    void drain_incoming();
    void on_frame(const std::string& identity, const zmq::message_t& body);
    void reject(const std::string& identity, const std::string& reason);

    // ScheduleActions
    pid_t spawn(const std::string& name, int cpu) override;
    void kill(pid_t pid) override;
    LastRunning last_running(pid_t pid) override;
    void kill_group(pid_t group) override;
    bool send_tasks(const PeerId& peer, std::span<const Attempt> attempts) override;
    bool send_heartbeat(const PeerId& peer) override;
    void send_shutdown(const PeerId& peer) override;
    void record(const TaskSpec& task, TaskResult result) override;
    void record_retry(const TaskSpec& task, TaskResult result) override;
    void recycled(const std::string& worker, const std::string& reason) override;
    void send_cancel(const PeerId& peer, std::span<const Attempt> attempts) override;
    void note(RunEvent event) override;
    void started(const std::string& worker, const TaskSpec& task, std::uint32_t attempt, Clock::time_point at) override;
    void place(const Placement& placement, int connected) override;
    void restart_clock() override;
    double seconds_at(Clock::time_point when) const override;

    zmq::socket_t& router_;
    WorkerLauncher& pool_;
    const Plan& plan_;
    ModeRecorder& recorder_;
    // Results' values are decoded only for a sink that reads them (decision 250).
    const proto::ValuesAs values_ = recorder_.values_wanted() ? proto::ValuesAs::Json : proto::ValuesAs::Skip;
    const std::stop_token stop_;
    const std::stop_token drain_;
    // Each task is encoded once (decision 151): the schedule's byte count for the cap of a
    // frame encodes it into encoded_, and send_tasks() sends those bytes.
    std::size_t encode_task(const TaskSpec& task, std::uint32_t attempt);
    struct Encoded {
        TaskId id;
        std::uint32_t attempt;
        std::size_t at;
        std::size_t size;
    };
    std::string encoded_;                   // tasks counted since the last frame, back to back
    std::vector<Encoded> encoded_at_;       // where each is in encoded_
    std::vector<std::string_view> pieces_;  // reused for every frame
    Schedule schedule_;                     // after everything its actions use

    std::map<std::string, RejectLog> rejects_;  // rate-limits rejection logs per peer
    Clock::time_point next_reap_;               // exited workers are reaped this often
    // While a frame is handled: when it came, the time its results are recorded at (one clock
    // read per frame, not per result); unset between frames.
    std::optional<Clock::time_point> frame_at_;
    proto::TaskBatch batch_;  // reused for every batch sent
    std::string frame_;
    const std::string heartbeat_ = proto::encode(proto::Heartbeat{});
    const std::string setup_;  // SETUP with the run's settings, the same for every worker
    std::function<std::optional<std::string>()> watch_;
    // HELLOs of local workers whose fork the fork server has not answered yet.
    struct DeferredHello {
        std::string identity;
        proto::Hello hello;
    };
    std::vector<DeferredHello> deferred_hellos_;
    void resume_hellos();
    CancelBoard* cancels_ = nullptr;
};

}  // namespace taskfarm
