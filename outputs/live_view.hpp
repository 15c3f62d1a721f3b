#pragma once
// --ui: a live page of the run in the browser. A LiveState keeps what the page shows (per
// mode: counts, a lane per worker or thread with its bars and running task, failures; at the
// end the comparison table) and turns it into JSON: a whole snapshot for a page that
// connects, and every kFlushInterval a delta of what changed. LiveView serves the page with
// cpp-httplib and pushes those as server-sent events. The sink only updates memory, in O(1)
// per task: no I/O and no JSON on the runners' threads; results take the state's lock once
// per batch a runner hands over, and a task's start is a slot the runner writes (decision 263).

#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include <nlohmann/json.hpp>

#include "pictures.hpp"
#include "report.hpp"
#include "sinks.hpp"

namespace taskfarm {

// What the page shows, with a generation count per item so that a delta holds only what
// changed since the last one. Thread-safe.
class LiveState {
public:
    // At most this many failures are kept with their reasons (the journal has them all).
    static constexpr std::size_t kMaxFailures = 200;

    // `title`: the command line. `slurm`: remote workers were started by --launch slurm.
    LiveState(std::string title, bool slurm);

    void begin_mode(const std::string& mode, std::size_t tasks);
    // The running mode's count of tasks grows by `more` (less when negative): a server's
    // mode goes on as jobs come (and tasks recorded without running leave it). Before the
    // first mode, set_tasks()'s count does.
    void add_tasks(std::int64_t more);
    // A server's jobs and its workers' resources, as the page's Jobs panel shows them:
    // {"jobs": [{"job","name","state","tasks","ok","failed","running","waiting"}...],
    //  "resources": {NAME: COUNT}, "in_use": {NAME: COUNT}}; sent again when it changes.
    void set_jobs(nlohmann::json jobs);
    // The running mode's number of tasks, for a plan that grows as the run goes (a Farm's
    // submits), where begin_mode() was told 0 (not known).
    void set_tasks(std::size_t tasks);
    void result(const TaskResult& result);
    // Several results under one lock: the same as result() for each, in order.
    void results(std::span<const Finished> batch);
    void event(const RunEvent& event);
    // Where the running mode's lane of `worker` keeps its latest start, made if new: a runner
    // writes each start there without a call (ResultSink::start_slot, decision 263). Null
    // before the first mode.
    StartSlot* start_slot(const std::string& worker);
    // The modes' reports, once the run is over: the comparison table, and the end of the stream.
    void finish(const std::vector<RunReport>& reports);

    // Everything, for a page that connects now.
    nlohmann::json snapshot();
    // What changed since the last delta() (nullopt: nothing, and no mode running). `wanted`
    // false: no one would read it, so none is made (nullopt), and the next holds what changes after.
    std::optional<nlohmann::json> delta(bool wanted = true);
    bool finished() const;

private:
    struct Bar {
        std::uint32_t lane = 0;
        double start_s = 0;
        double end_s = 0;
        bool ok = true;
        std::uint32_t tasks = 1;  // tasks merged into this bar: too short to tell apart at the scale
        TaskId id = kNoId;        // the first of them
        std::uint64_t changed = 0;
    };
    struct Lane {
        std::string name;
        std::string where;  // "this machine, pid 42", "remote host b7", "Slurm node n3"
        bool alive = true;
        std::size_t done = 0;
        std::unique_ptr<StartSlot> start = std::make_unique<StartSlot>();  // never moves: runners keep it
        // The start whose task has ended (its result came, it was requeued, the worker went):
        // the lane runs a task when its latest start is a later one.
        std::uint64_t ended_start = 0;
        std::uint64_t seen_start = 0;         // the latest start a delta has looked at
        std::optional<std::size_t> last_bar;  // index into Mode::bars
        std::uint64_t changed = 0;
    };
    struct Mode {
        std::string name;
        std::size_t tasks = 0;
        std::size_t ok = 0;
        std::size_t failed = 0;
        std::chrono::steady_clock::time_point began;
        double end_s = -1;  // < 0: running
        std::vector<Lane> lanes;
        std::unordered_map<std::string, std::uint32_t> lane_of;
        std::vector<Bar> bars;
        std::uint64_t changed = 0;
        std::uint32_t last_lane = 0;  // of the last result: a batch's come from few lanes
    };
    struct FailureLine {
        std::string mode;
        TaskId id = kNoId;
        std::string worker;
        std::string error;
    };

    Lane& lane(Mode& mode, const std::string& worker, std::uint32_t* index = nullptr);
    // Counts the result into `mode` and `lane` (the lane at `index`, marked changed by lane())
    // and draws it (under mutex_).
    void record(Mode& mode, Lane& lane, std::uint32_t index, const TaskResult& result);
    // record() of the common case, inline: an ok result merged into the lane's last bar; false
    // (nothing done) when it is not that.
    bool record_short(Mode& mode, Lane& lane, const TaskResult& result);
    // The lane's latest start has ended if it is `task`'s (under mutex_).
    static void end_start(Lane& lane, TaskId task);
    // The task the lane runs now, if any: its id and start, seconds of the mode.
    static std::optional<std::pair<TaskId, double>> running_task(const Lane& lane);
    // Marks the lanes whose start slot changed since the last delta (under mutex_).
    void note_starts();
    double now_s(const Mode& mode) const;
    void close(Mode& mode);
    void resize(Mode& mode, std::int64_t tasks);
    nlohmann::json mode_json(const Mode& mode, std::size_t index, std::uint64_t since) const;
    nlohmann::json document(std::uint64_t since, std::size_t failures_from) const;

    mutable std::mutex mutex_;
    const std::string title_;
    const bool slurm_;
    std::vector<Mode> modes_;
    std::vector<FailureLine> failures_;
    std::size_t failures_total_ = 0;
    std::optional<nlohmann::json> reports_;
    nlohmann::json jobs_;             // set_jobs(); null: not a server
    std::uint64_t jobs_changed_ = 0;  // the generation it changed in
    std::size_t given_tasks_ = 0;     // set_tasks()'s, for a mode begun with 0
    std::uint64_t generation_ = 1;    // what changes now is stamped with it; delta() moves it on
    std::size_t failures_sent_ = 0;
    bool reports_sent_ = false;
};

// The sink that feeds a LiveState; asks for task starts.
class LiveSink final : public ResultSink {
public:
    explicit LiveSink(LiveState& state) : state_(state) {}
    bool wants_task_starts() const override { return true; }
    void on_task_started(const RunEvent& event) override { state_.event(event); }  // LiveState locks
    StartSlot* start_slot(const std::string& worker) override { return state_.start_slot(worker); }

protected:
    void begin_mode_(const std::string& mode, std::size_t tasks) override { state_.begin_mode(mode, tasks); }
    void sink_it_(const TaskSpec&, const TaskResult& result) override { state_.result(result); }
    void sink_all_(std::span<const Finished> batch) override { state_.results(batch); }
    void event_it_(const RunEvent& event) override { state_.event(event); }

private:
    LiveState& state_;
};

// "[ADDR:]PORT" of --ui: ADDR 127.0.0.1 when absent (the CLI checks it as --listen's); PORT
// from 0 (a free one) to 65535. Nullopt when it is not that.
struct UiAddress {
    std::string host;
    int port = 0;
};
std::optional<UiAddress> parse_ui_address(const std::string& text);

// The page's HTTP server: binds in the constructor (ConfigError naming --ui when it cannot),
// serves from start() until destruction. Pages get a snapshot, then a delta every
// kFlushInterval while anything changes; once the run is over, the final state and then
// the end of the stream. Connections go through a UiDoor (live_view_door.hpp): bounded in
// number, time and descriptors, closed at once without the token; destruction never waits
// on a client for more than about a second.
class LiveView {
public:
    static constexpr auto kFlushInterval = std::chrono::milliseconds(100);

    LiveView(const std::string& address, std::string title, bool slurm);
    ~LiveView();
    LiveView(const LiveView&) = delete;
    LiveView& operator=(const LiveView&) = delete;

    // The page's address, with its secret path: only who has it can see the page.
    const std::string& url() const { return url_; }
    std::unique_ptr<ResultSink> sink() { return std::make_unique<LiveSink>(*state_); }
    LiveState& state() { return *state_; }
    void start();  // after the SignalWatcher, like every thread

private:
    class Server;
    // Shared with the threads that serve requests: stopping waits for them a bounded time only.
    std::shared_ptr<LiveState> state_;
    std::shared_ptr<Server> server_;
    std::string token_;
    std::string url_;
};

}  // namespace taskfarm
