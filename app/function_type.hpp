#pragma once
// What App and Farm share (app/ only: not installed): a user's function as a task type, and
// the program's own path, which it starts as its workers.

#include <filesystem>
#include <memory>
#include <string>

#include <taskfarm/app.hpp>

namespace taskfarm {

std::shared_ptr<const TaskType> make_function_type(const std::string& name, TaskFunction fn, TaskOptions options);

// This very program (/proc/self/exe), so that it can start itself as its workers. Throws
// std::runtime_error when it cannot be read.
std::filesystem::path this_program();

}  // namespace taskfarm
