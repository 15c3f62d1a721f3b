#pragma once
// Cancelling one task of a live run (`coordinator cancel --run DIR_OR_PID ID...`): the run
// serves a control socket in a private directory of its own, and the ids asked for go on a
// CancelBoard that every mode reads. A queued task is recorded as cancelled when its turn
// comes (at once in processes mode, where the coordinator holds the queue); a running one is stopped through its stop
// token (the path a stop takes: a task that waits wakes, a task's process group is killed) and recorded as cancelled. A
// cancelled task is never retried; --resume runs it again, as any task that is not ok.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
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

// What a cancel did to one task, as the run applied it: the answer `coordinator cancel` prints.
struct CancelOutcome {
    TaskId id = 0;
    bool cancelled = false;  // it is, or will be, recorded as cancelled (unless it finishes ok first)
    std::string what;
};

// The ids asked for, shared by the control thread and the mode's runner. Thread-safe.
// A request is answered only once the run has applied it: in the sequential and threads
// modes the board is what their runners read, so recording it here is applying it; in
// processes mode the dispatcher applies it to its schedule (attach ... applied ... detach)
// and request() waits for that. Between modes nothing runs, and nothing is cancelled.
class CancelBoard {
public:
    // The control thread: waits up to `wait` for a dispatcher to apply the request.
    std::vector<CancelOutcome> request(const std::vector<TaskId>& ids,
                                       std::chrono::milliseconds wait = std::chrono::milliseconds(4000));
    void clear();  // a new mode starts: what was asked was for the last; requests are taken again
    void close();  // the mode ended: requests are refused until the next clear()
    bool requested(TaskId id) const;
    // A thread that runs tasks one after another (sequential, threads modes) holds one Lane
    // for all of them: its stop source, linked to the run's stop, is made once and made again
    // only after a cancel used it, and a task's start and end are two atomic stores and a
    // load, the board's mutex taken only when a cancel was asked in this mode (decision 148).
    class Lane {
    public:
        // `board` may be null: nothing is ever cancelled, token() is `run_stop`.
        Lane(CancelBoard* board, std::stop_token run_stop);
        ~Lane();
        Lane(const Lane&) = delete;
        Lane& operator=(const Lane&) = delete;
        // Task `id` starts on this thread: false when it was cancelled before it started
        // (then do not run it, and call no end()).
        bool begin(TaskId id);
        // The token the task runs under until end(): a cancel of its id requests it.
        std::stop_token token() const { return board_ ? source_.get_token() : run_stop_; }
        // The task ended: true when a cancel stopped it (and not the run's stop).
        bool end();

    private:
        friend class CancelBoard;
        void link();
        CancelBoard* board_;
        std::stop_token run_stop_;
        std::stop_source source_;
        std::optional<std::stop_callback<std::function<void()>>> link_;
        std::atomic<TaskId> running_{kNoId};  // the task it runs; kNoId between tasks
    };
    // The dispatcher: ids asked for since its last call; cheap when there are none.
    bool has_new() const { return fresh_.load(std::memory_order_acquire); }
    std::vector<TaskId> take_new();
    // The dispatcher, while it runs (RAII; null board: nothing): requests wait for applied().
    class Attached {
    public:
        explicit Attached(CancelBoard* board);
        ~Attached();
        Attached(const Attached&) = delete;
        Attached& operator=(const Attached&) = delete;

    private:
        CancelBoard* board_;
    };
    void applied(TaskId id, bool cancelled, std::string what);

private:
    bool stop_running(TaskId id);  // under mutex_: stops the lanes running `id`; false when none does
    mutable std::mutex mutex_;
    std::condition_variable answered_;
    bool open_ = false;      // a mode runs
    bool attached_ = false;  // a dispatcher applies the requests
    std::set<TaskId> requested_;
    std::atomic<std::size_t> requests_{0};  // requested_.size(): a Lane looks at the set only when not 0
    std::vector<TaskId> new_;
    std::vector<Lane*> lanes_;                                // every Lane of the board, registered once per thread
    std::atomic<int> stopping_{0};                            // request() is looking at the lanes' running tasks
    std::map<TaskId, std::optional<CancelOutcome>> waiting_;  // asked, to be applied by the dispatcher
    std::atomic<bool> fresh_{false};
};

// The control socket, ipc://DIR/control in a private (0700) directory DIR =
// $TMPDIR/taskfarm-run-PID-XXXXXX, answered by a thread of its own until destroyed (which
// removes DIR). Construct it after the SignalWatcher, like every thread. Requests are one
// JSON object per message, `{"cancel": [ID, ...]}`; answers `{"ok": B, "pid": PID,
// "cancel": [ID, ...], "outcomes": [{"id": ID, "cancelled": B, "what": "..."}, ...]}` once
// the run applied it (ok: every one is cancelled), or `{"ok": false, "error": "..."}`.
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

// Asks the run to cancel the tasks; prints its answer on stdout, a line per task. Throws
// ConfigError (exit 2) for a run that cannot be found: only a directory and a socket of the
// caller's own (owner, 0700, no symlink) are used, others are skipped with a message.
// Returns TasksFailed (1) when it does not answer, or a task was not cancelled.
ExitCode cancel_tasks(const CancelConfig& config);

}  // namespace taskfarm
