#pragma once
// `coordinator parallel [OPTIONS] COMMAND ::: ARGS...`: GNU parallel's command line, read
// into a run of command tasks in the processes mode (docs/commands.md, "GNU parallel's
// command line").

#include <string>
#include <string_view>
#include <vector>

#include "cli.hpp"

namespace taskfarm {

// argv after "parallel" (argv[0] is "parallel") -> a RunConfig whose plan is the jobs' shell
// commands and whose `parallel` says how to print them, or an ExitCode: Ok after --help,
// --version or --dry-run (the commands printed), Usage for an option it does not know or a
// bad value (one line naming it).
ParsedCli parse_parallel(const ProgramInfo& program, int argc, const char* const* argv);

namespace parallel {

// `text` as GNU parallel quotes a value for the shell: as it is when the shell would not
// change it (letters, digits and _ + - . /), else in single quotes with ' written '"'"'.
std::string quote(std::string_view text);

}  // namespace parallel
}  // namespace taskfarm
