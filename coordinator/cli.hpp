#pragma once

#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "config.hpp"
#include "control.hpp"
#include "coordinator.hpp"
#include "errors.hpp"
#include "journal_report.hpp"

namespace CLI {
class App;
class Option;
}  // namespace CLI

namespace taskfarm {

using ParsedCli = std::variant<RunConfig, KeygenConfig, ReportConfig, CancelConfig, ExitCode>;

// argv -> RunConfig (the task types are `program`'s), or KeygenConfig for `coordinator keygen DIR`,
// ReportConfig for `coordinator report JOURNAL`, or CancelConfig for `coordinator cancel --run
// DIR_OR_PID ID...`. On --help it prints the
// help and returns ExitCode::Ok; on a bad value it prints one line naming the flag and the
// value and returns ExitCode::Usage.
ParsedCli parse_cli(const ProgramInfo& program, int argc, const char* const* argv);

// A task type's flag (TaskType::flags()) as an option of a program: the run's, and submit's.
struct TypeFlag {
    Flag declared;
    std::string type;                    // the type that declares it (the first, when shared)
    std::unique_ptr<std::string> value;  // where CLI11 writes it; its default until given
    CLI::Option* option = nullptr;
};

// Adds the registered types' flags to `app` (with `picking_only`, only those that pick the tasks:
// Flag::picks), each under its type's name in --help, and makes a flag that picks the tasks
// exclude `plan` and `tasks` (and `inputs` when it is the inputs file), the other such flags and
// the flags for the tasks a type generates. Two types that declare the same flag share it when
// they give it the same key; another key is a program that cannot run (std::logic_error, before
// any parse). Null options: the program has none.
std::vector<TypeFlag> add_type_flags(CLI::App& app, const Registry& registry, CLI::Option* plan, CLI::Option* tasks,
                                     CLI::Option* inputs, bool picking_only = false);

// The types' flags, parsed, into `config`: a flag that picks the tasks, given, makes `task` its
// type (`task_given`: another --task is refused) and gives config.inputs_path (or needs it);
// each flag's value (given, or its default; a flag that picks the tasks only when given) becomes
// its setting. Throws CLI::ValidationError naming the flag. The run's and submit's one reading.
void decide_type_flags(const std::vector<TypeFlag>& flags, bool task_given, std::string& task, RunConfig& config);

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
