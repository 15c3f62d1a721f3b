#pragma once
// A user's function as a task type, shared by App and Farm (app/ only: not installed).

#include <memory>
#include <string>

#include <taskfarm/app.hpp>

namespace taskfarm {

std::shared_ptr<const TaskType> make_function_type(const std::string& name, TaskFunction fn, TaskOptions options);

}  // namespace taskfarm
