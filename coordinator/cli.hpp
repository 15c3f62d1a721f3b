#pragma once

#include <variant>

#include "config.hpp"
#include "errors.hpp"

namespace taskfarm {

using ParsedCli = std::variant<RunConfig, KeygenConfig, ExitCode>;

// argv -> RunConfig, or KeygenConfig for `coordinator keygen DIR`. On --help it prints the
// help and returns ExitCode::Ok; on a bad value it prints one line naming the flag and the
// value and returns ExitCode::Usage.
ParsedCli parse_cli(int argc, const char* const* argv);

}  // namespace taskfarm
