#pragma once
// Cancelling one task of a live run (`coordinator cancel --run DIR_OR_PID ID...`): the run
// serves a control socket in a private directory of its own, and the ids asked for go on a
// CancelBoard that every mode reads. A queued task is recorded as cancelled when its turn
// comes (at once in processes mode, where the coordinator holds the queue); a running one is stopped through its stop token (the path a stop takes: a sleep wakes, a
// command's process group is killed) and recorded as cancelled. A cancelled task is never
// retried; --resume runs it again, as any task that is not ok.

#include <atomic>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "errors.hpp"
#include "task.hpp"

namespace taskfarm {

// The error of a cancelled task.
inline constexpr const char* kCancelledError = "cancelled (coordinator cancel)";

// A task's result as cancelled: not ok, kCancelledError, TaskResult::cancelled; what it had
// (its value, its run time) is kept.
TaskResult cancelled(TaskResult result);

// The ids asked for, shared by the control thread and the mode's runner. Thread-safe.
class CancelBoard {
public:
    void request(const std::vector<TaskId>& ids);  // the control thread
    void clear();                                 // a new mode starts: what was asked was for the last
    bool requested(TaskId id) const;
    // Task `id` runs under `stop` on the calling thread until finished(id): a cancel (asked
    // before or meanwhile) requests `stop`.
    void running(TaskId id, std::stop_source* stop);
    void finished(TaskId id);
    // The dispatcher: ids asked for since its last call; cheap when there are none.
    bool has_new() const { return fresh_.load(std::memory_order_acquire); }
    std::vector<TaskId> take_new();

private:
    mutable std::mutex mutex_;
    std::set<TaskId> requested_;
    std::vector<TaskId> new_;
    std::map<TaskId, std::stop_source*> running_;
    std::atomic<bool> fresh_{false};
};

// The control socket, ipc://DIR/control in a private (0700) directory DIR =
// $TMPDIR/taskfarm-run-PID-XXXXXX, answered by a thread of its own until destroyed (which
// removes DIR). Construct it after the SignalWatcher, like every thread. Requests are one
// JSON object per message, `{"cancel": [ID, ...]}`; answers `{"ok": true, "pid": PID,
// "cancel": [ID, ...]}` or `{"ok": false, "error": "..."}`.
class ControlServer {
public:
    explicit ControlServer(CancelBoard& board);  // throws RunError when it cannot bind
    ~ControlServer();
    ControlServer(const ControlServer&) = delete;
    ControlServer& operator=(const ControlServer&) = delete;
    const std::filesystem::path& dir() const { return dir_; }

private:
    CancelBoard& board_;
    std::filesystem::path dir_;
    std::jthread thread_;
};

// `coordinator cancel --run DIR_OR_PID ID...`.
struct CancelConfig {
    std::string run;  // a run's control directory, or its coordinator's pid
    std::vector<TaskId> ids;
};

// Asks the run to cancel the tasks; prints its answer on stdout. Throws ConfigError (exit 2)
// for a run that cannot be found; returns TasksFailed (1) when it does not answer.
ExitCode cancel_tasks(const CancelConfig& config);

}  // namespace taskfarm
