#pragma once

#include <string>
#include <string_view>

namespace taskfarm {

// Installs a stderr logger named `name` as the default; call first in every main().
// SPDLOG_LEVEL=debug (or warn, ...) in the environment sets the level.
void init_logging(const std::string& name);

// The levels --log-level accepts, from the most verbose.
inline constexpr std::string_view kLogLevels[] = {"trace", "debug", "info", "warn", "error", "critical", "off"};

// Sets the level of every logger to `name`, one of kLogLevels; overrides SPDLOG_LEVEL.
// Throws std::invalid_argument for any other name.
void set_log_level(std::string_view name);

}  // namespace taskfarm
