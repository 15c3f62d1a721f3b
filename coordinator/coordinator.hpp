#pragma once

namespace taskfarm {

// The whole `coordinator` program; returns its exit code (see ExitCode).
int coordinator_main(int argc, const char* const* argv);

}  // namespace taskfarm
