#pragma once

#include <string>

namespace taskfarm {

// Installs a stderr logger named `name` as the default; call first in every main().
// SPDLOG_LEVEL=debug (or warn, ...) in the environment sets the level.
void init_logging(const std::string& name);

}  // namespace taskfarm
