#pragma once
// The whole public API: task types (task_type.hpp) and programs built on them (app.hpp).

#include "app.hpp"
#include "farm.hpp"
#include "task_type.hpp"
