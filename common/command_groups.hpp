#pragma once
// The process groups of the commands this process runs now (tasks/command/child.cpp), for
// a process that outlives it to end them: a worker reports them to its coordinator in each
// heartbeat, and the coordinator SIGKILLs the groups of a worker it loses (killed with the
// command's guardian, say) and, at the end of a run, of every worker (decision 116).
// Also the command's grace, which the coordinator must wait out before it calls a worker
// that overran a timeout stuck.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace taskfarm::command_groups {

// At most this many groups go in one report; a worker runs one command at a time.
inline constexpr std::size_t kMaxReported = 64;

// Thread-safe. `group` is the command's process group id (its pid).
void add(pid_t group);
void remove(pid_t group);
// The groups added and not removed, at most kMaxReported of them.
std::vector<std::int64_t> live();

// A descriptor that becomes readable after add() or remove() (an eventfd; made by the first
// call, never closed); take_change() reads it: true if anything changed since the last call.
int change_fd();
bool take_change();

// The command type's grace between SIGTERM and SIGKILL (--set command_grace_s=S, 2 s),
// from the run's settings: a value that check_grace() refuses gives the default.
std::chrono::duration<double> grace(const nlohmann::json& settings);
// Why `value` cannot be command_grace_s ("must be a number of seconds in [0, 3600]"), or "".
std::string check_grace(const nlohmann::json& value);

}  // namespace taskfarm::command_groups
