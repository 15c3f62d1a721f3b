#pragma once
// Which task a local worker process is running, kept where it outlives the process: a small
// file, DIR/PID.running, that the worker maps and writes before and after each task (two
// stores, no system call). When the worker is lost, by a crash, an OOM kill, a SIGKILL or a
// kill for silence, the coordinator reads it and charges the lost attempt to that task alone:
// the tasks queued behind it never started, and results that were still in the worker's
// outbox are not mistaken for a running task (decision 110). A remote worker has no board;
// see Schedule::lose_worker for what counts as running then.

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <memory>

#include "task.hpp"

namespace taskfarm {

// The worker's side. Used from the one thread that runs tasks.
class RunningBoard {
public:
    // Creates DIR/<this process's pid>.running, "nothing running"; nullptr (logged) when it
    // cannot: the coordinator then knows no more than the order of its tasks.
    static std::unique_ptr<RunningBoard> create(const std::filesystem::path& dir);
    ~RunningBoard();  // unmaps; the file stays for the coordinator, which removes it
    RunningBoard(const RunningBoard&) = delete;
    RunningBoard& operator=(const RunningBoard&) = delete;

    void started(TaskId id, std::uint32_t attempt);  // before the task's first instruction
    void ended();                                    // before its result goes out

private:
    explicit RunningBoard(std::uint64_t* slots) : slots_(slots) {}
    std::uint64_t* slots_;  // [0]: id + 1 of the running task, 0 for none; [1]: its attempt
};

// What an ended worker's board says.
struct LastRunning {
    enum class Known {
        No,       // no board (a remote worker, one that could not make it, not ours)
        Idle,     // it ran no task when it ended: between tasks, or before the first
        Running,  // it had started `id`, attempt `attempt`, and not finished it
    };
    Known known = Known::No;
    TaskId id = kNoId;
    std::uint32_t attempt = 0;
};

// The board of process `pid` in `dir`, which must have ended (reaped); removes the file.
LastRunning read_running_board(const std::filesystem::path& dir, pid_t pid);

}  // namespace taskfarm
