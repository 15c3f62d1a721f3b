#pragma once

#include <stdexcept>

namespace taskfarm {

// The only list of exit codes. main() alone picks one.
enum class ExitCode : int {
    Ok = 0,
    TasksFailed = 1,    // the run finished, some tasks failed
    Usage = 2,          // bad command line or configuration, nothing ran
    HungUp = 129,       // SIGHUP (128 + 1): the terminal went away
    Interrupted = 130,  // SIGINT (128 + 2)
    Quit = 131,         // SIGQUIT (128 + 3)
    BrokenPipe = 141,   // stdout's reader went away (128 + SIGPIPE, as a shell reports it)
    Terminated = 143,   // SIGTERM (128 + 15)
};

// A bad value from the user: main() prints it and exits with ExitCode::Usage.
struct ConfigError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The run cannot go on: e.g. a worker never came up, a launcher failed.
struct RunError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

}  // namespace taskfarm
