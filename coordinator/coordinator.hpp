#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "task.hpp"

namespace taskfarm {

// How the coordinator starts a local worker: `path PREFIX... --connect ...`. The stock
// coordinator runs `worker` next to itself; a user's App runs itself with prefix "worker".
struct WorkerProgram {
    std::filesystem::path path;
    std::vector<std::string> prefix;
};

// What a program built on the library is: its name (--help, --version, logs), the task types
// it knows, and its worker.
struct ProgramInfo {
    std::string name;
    const Registry& registry;
    WorkerProgram worker;
    std::string default_task{};  // --task when not given; empty: the registry's first type
};

// The task type of `--task` when not given: ProgramInfo::default_task, else the registry's
// first type (the stock coordinator's first built-in), else none.
inline std::string default_task(const ProgramInfo& program) {
    if (!program.default_task.empty() || program.registry.types().empty()) return program.default_task;
    return program.registry.types().front()->name();
}

// The whole coordinator program; returns its exit code (see ExitCode).
int coordinator_main(const ProgramInfo& program, int argc, const char* const* argv);

}  // namespace taskfarm
