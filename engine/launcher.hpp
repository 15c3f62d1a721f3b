#pragma once
// What starts, kills and reaps the local worker processes of processes mode. The engine is
// given one (as make's jobserver is given to its scheduler); launch/ has the real one
// (ProcessPool, with the fork server), a test may have its own.

#include <sys/types.h>

#include <string>
#include <vector>

#include "running_board.hpp"

namespace taskfarm {

struct WorkerExit {
    pid_t pid = 0;
    std::string name;
    std::string reason;  // "exit code 1", "signal 9"
};

class WorkerLauncher {
public:
    virtual ~WorkerLauncher() = default;
    // Starts a worker named `name` that connects to the run, pinned to `cpu` when >= 0,
    // without waiting on another process; an id that stands for it in every later call and
    // WorkerExit (its pid, or a number above any pid until its pid is known: see pid_of()).
    // Throws when it cannot start.
    virtual pid_t spawn(const std::string& name, int cpu) = 0;
    // SIGKILLs a live worker this launcher started and reaps it; no-op for an unknown id.
    virtual void kill(pid_t id) = 0;
    // The workers that exited since the last call, reaped, without blocking.
    virtual std::vector<WorkerExit> reap_exited() = 0;
    // What worker `id`, which has ended (reaped by reap_exited() or kill()), was running
    // when it ended, from its RunningBoard; Known::No when the launcher keeps no boards.
    virtual LastRunning last_running(pid_t /*id*/) { return {}; }

    // For a launcher that starts workers through another process (the fork server): a
    // descriptor readable when it answered (-1: nothing awaited), and taking its answers
    // without waiting. The dispatcher polls the descriptor with its socket.
    virtual int fork_reply_fd() const { return -1; }
    virtual void take_fork_replies() {}
    // The id spawn() gave the worker whose pid is `pid` (the pid its HELLO carries), and the
    // other way round; each is the identity for a launcher whose ids are pids.
    virtual pid_t id_of(pid_t pid) { return pid; }
    virtual pid_t pid_of(pid_t id) const { return id; }
};

}  // namespace taskfarm
