#pragma once

#include <variant>

#include "config.hpp"
#include "errors.hpp"

namespace taskfarm {

// argv -> RunConfig. On --help it prints the help and returns ExitCode::Ok; on a bad
// value it prints one line naming the flag and the value and returns ExitCode::Usage.
std::variant<RunConfig, ExitCode> parse_cli(int argc, const char* const* argv);

}  // namespace taskfarm
