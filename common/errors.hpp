#pragma once

#include <stdexcept>

namespace taskfarm {

// The only list of exit codes. main() alone picks one.
enum class ExitCode : int {
    Ok = 0,
    TasksFailed = 1,  // the run finished, some tasks failed
    Usage = 2,        // bad command line or configuration, nothing ran
    Interrupted = 130,  // SIGINT (128 + 2)
    Terminated = 143,   // SIGTERM (128 + 15)
};

// A bad value from the user: main() prints it and exits with ExitCode::Usage.
struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

}  // namespace taskfarm
