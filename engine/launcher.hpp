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
    // Starts a worker named `name` that connects to the run, pinned to `cpu` when >= 0; its
    // pid. Throws when it cannot start.
    virtual pid_t spawn(const std::string& name, int cpu) = 0;
    // SIGKILLs a live worker this launcher started and reaps it; no-op for an unknown pid.
    virtual void kill(pid_t pid) = 0;
    // The workers that exited since the last call, reaped, without blocking.
    virtual std::vector<WorkerExit> reap_exited() = 0;
    // What worker `pid`, which has ended (reaped by reap_exited() or kill()), was running
    // when it ended, from its RunningBoard; Known::No when the launcher keeps no boards.
    virtual LastRunning last_running(pid_t) const { return {}; }
};

}  // namespace taskfarm
