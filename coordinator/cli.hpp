#pragma once

#include <variant>

#include "config.hpp"
#include "control.hpp"
#include "coordinator.hpp"
#include "errors.hpp"
#include "journal_report.hpp"

namespace taskfarm {

using ParsedCli = std::variant<RunConfig, KeygenConfig, ReportConfig, CancelConfig, ExitCode>;

// argv -> RunConfig (the task types are `program`'s), or KeygenConfig for `coordinator keygen DIR`,
// ReportConfig for `coordinator report JOURNAL`, or CancelConfig for `coordinator cancel --run
// DIR_OR_PID ID...`. On --help it prints the
// help and returns ExitCode::Ok; on a bad value it prints one line naming the flag and the
// value and returns ExitCode::Usage.
ParsedCli parse_cli(const ProgramInfo& program, int argc, const char* const* argv);

// Why `text` is no --ui [ADDR:]PORT this machine can serve on ("" when it is): the run's and
// `serve --ui`'s one check.
std::string check_ui_address(const std::string& text);

// Why `text` is no --listen tcp://ADDR:PORT this machine can bind ("" when it is): the run's
// and `serve --listen`'s one check.
std::string check_listen_endpoint(const std::string& text);

// --launch slurm|mpirun: the job step of `workers` workers (--workers; not given: $SLURM_NTASKS
// for Slurm), with `args_text` (--slurm-args, --mpirun-args) split as the shell would; not
// pinned. The run's and `serve --launch`'s one reading. Throws CLI::ValidationError naming
// the flag.
StepConfig launch_step(StepLauncher launcher, std::optional<int> workers, const std::string& args_text);

}  // namespace taskfarm
