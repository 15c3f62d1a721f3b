#pragma once

namespace taskfarm {

// The whole `worker` program: connects a DEALER to the coordinator, says HELLO, runs
// TASKs one at a time on an executor thread, returns RESULTs, heartbeats both ways and
// exits on SHUTDOWN, on a silent coordinator or when its parent dies. Returns the exit code.
int worker_main(int argc, const char* const* argv);

}  // namespace taskfarm
