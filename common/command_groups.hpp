#pragma once
// The process groups of the commands this process runs now (tasks/command/child.cpp), for
// a process that outlives it to end them. A worker its coordinator started keeps them in a
// table file of the coordinator's --state-dir (`command-groups-PGRP/PID`), which the
// coordinator reads when it reaps the worker (found dead, killed as lost, at the end of the
// run) and SIGKILLs every group in it (decision 206); only a worker without that file (one
// started by hand) reports them in its heartbeats (decision 116). Also the command's grace,
// which the coordinator must wait out before it calls a worker that overran a timeout stuck.

#include <signal.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace taskfarm::command_groups {

// Sends `signal` to process group `group`, one recorded as a command's: every such kill
// goes through here. Refuses 0 and 1 (kill(0) and kill(-1) mean this group and every
// process), negative numbers, and the caller's own group (a table or report that names it
// would be our own death). Async-signal-safe (a guardian calls it after fork). True when
// sent.
inline bool kill_group(pid_t group, int signal) {
    if (group <= 1 || group == ::getpgrp()) return false;
    return ::kill(-group, signal) == 0;
}

// The groups of the commands a process runs now, in memory its guardian shares
// (tasks/command/child.cpp): a command writes its group into a slot before it execs, and
// its caller clears the slot before it reaps it. In a process given a table directory
// (use_table_dir(): a worker its coordinator started), the memory is a file there, which
// the coordinator reads when it reaps the worker (take_tables()): it knows every group of
// the worker's commands from their first instant, with no message about them (decision 206).
inline constexpr std::uint32_t kTableSlots = 64 * 1024;  // commands at once in one process
struct Table {
    std::atomic<std::int64_t> grace_ns{0};
    std::atomic<std::uint32_t> used{0};  // slots below this may hold a group
    std::atomic<pid_t> slots[kTableSlots];
};

// Called once, before the first command: this process's table goes in a file of `dir`.
void use_table_dir(const std::filesystem::path& dir);
// "DIR/command-groups-GROUP/PID": the tables of one process group sit in a directory of their
// own, so that reaping a worker reads its group's directory, not every worker's files (a run
// that ends 1,000 workers listed 1,000 files a reap).
std::filesystem::path table_path(const std::filesystem::path& dir, pid_t group, pid_t pid);
// table_path() of this process, its directory made, or "" with no table directory.
std::string table_file();
// The groups in the tables of the processes of process group `group` (a worker's, whose id
// is its pid) in `dir`; the files and their directory are removed. Call it once they are
// dead, before the worker is reaped. Nothing when there are none.
std::vector<pid_t> take_tables(const std::filesystem::path& dir, pid_t group);
// The groups in one table file, which stays.
std::vector<pid_t> groups_in_table(const std::filesystem::path& file);

// At most this many groups go in one report; a worker runs one command at a time.
inline constexpr std::size_t kMaxReported = 64;

// Thread-safe. `group` is the command's process group id (its pid). add() wakes change_fd()
// at once: a command that runs on must be known before its worker can die. remove() wakes it
// only when `wake` says so: a command type's task queues its result next, and the worker's
// loop, woken for the result, takes the change first (take_change()) and sends it before
// the result, one wake-up for both.
void add(pid_t group);
void remove(pid_t group, bool wake = true);
// The groups added and not removed, at most kMaxReported of them.
std::vector<std::int64_t> live();

// A descriptor that becomes readable after add() or remove() (an eventfd; made by the first
// call, never closed); take_change() reads it: true if anything changed since the last call,
// a remove() that did not wake it included.
int change_fd();
bool take_change();
// Whether take_change() would say true now, without a system call: a loop that did not poll
// change_fd() asks this before it sends results, and calls take_change() only then.
bool pending();

// The command type's grace between SIGTERM and SIGKILL (its flag --command-grace, the setting
// command_grace_s), from the run's settings: a value that check_grace() refuses gives the default.
// The schedule waits it out too before it calls a worker stuck (launch/processes.cpp).
inline constexpr double kDefaultGraceS = 2;
inline constexpr double kMostGraceS = 3600;
std::chrono::duration<double> grace(const nlohmann::json& settings);
// Why `value` cannot be command_grace_s ("must be a number of seconds in [0, 3600]"), or "".
std::string check_grace(const nlohmann::json& value);

}  // namespace taskfarm::command_groups
