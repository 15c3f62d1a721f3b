#pragma once

#include <string>

#include "task.hpp"

namespace taskfarm {

// The whole worker program: connects a DEALER to the coordinator, says HELLO, takes the
// run's SETUP, runs TASKs one at a time on an executor thread with the types of `registry`,
// returns RESULTs, heartbeats both ways and exits on SHUTDOWN, on a silent coordinator or
// when its parent dies. `name` is the program's, for --help and --version. Returns the exit code.
int worker_main(const std::string& name, const Registry& registry, int argc, const char* const* argv);

}  // namespace taskfarm
