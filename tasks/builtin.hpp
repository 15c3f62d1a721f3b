#pragma once
// The built-in task types, one file each. Each registers through the same public API as a
// user's own type (add_builtin_types in builtin.cpp is their only list).

#include <memory>

#include <taskfarm/task_type.hpp>

namespace taskfarm {

std::shared_ptr<const TaskType> sleep_type();     // sleep.cpp
std::shared_ptr<const TaskType> cpu_type();       // cpu.cpp
std::shared_ptr<const TaskType> download_type();  // download/download.cpp
std::shared_ptr<const TaskType> fail_type();      // fail.cpp
std::shared_ptr<const TaskType> crash_type();     // crash.cpp
std::shared_ptr<const TaskType> command_type();   // command/command.cpp

class Registry;
// A registry of the built-in types alone, made at the first call: for tests and benchmarks.
const Registry& builtin_types();

}  // namespace taskfarm
