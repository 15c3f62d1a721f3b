#pragma once
// The program picks a runner per mode and hands it the part of the configuration it needs:
// the engine's runners and launch/'s processes mode never see RunConfig.

#include <filesystem>
#include <memory>
#include <optional>
#include <string_view>
#include <vector>
#include <stop_token>

#include "config.hpp"
#include "runner.hpp"

namespace taskfarm {

#if defined(__SANITIZE_ADDRESS__)
// AddressSanitizer knows a process's threads by the ids it saw them start with; a worker cloned
// from the fork server has another id than the one it inherited, so LeakSanitizer could not
// scan its stack and would report false leaks at its exit. Sanitized builds exec every worker
// (decision 104); the fork path is covered by the release build's tests. The one-shot run and
// the server both go by it.
inline constexpr bool kForkServerUsable = false;
#else
inline constexpr bool kForkServerUsable = true;
#endif

class CancelBoard;
class ForkServer;

// What every mode of a run shares besides the config.
struct RunShared {
    const Registry& registry;
    const Json& settings;               // Context::settings() of every task
    CancelBoard* cancels = nullptr;     // tasks `coordinator cancel` asks for; null: none can be
    ForkServer* fork_server = nullptr;  // forks the local workers; null: they are exec'd
};

// Whether the run's modes include processes.
bool runs_processes(const RunConfig& config);

// The keys of config.keys_dir and config.authorized_dir, read for a run with worker processes;
// none without keys_dir. Throws ConfigError naming `keys_flag` or `authorized_flag` (the
// coordinator's --keys and --authorized; a Farm's FarmOptions::keys ...).
std::optional<curve::ServerKeys> read_keys(const RunConfig& config, std::string_view keys_flag = "--keys",
                                           std::string_view authorized_flag = "--authorized");

// Forks the local workers when processes mode runs them, started while this process has no
// thread and no ZeroMQ context: it forks from a copy of us, with `types` preloaded. Null: they
// are exec'd (a sanitized build, --worker-bin, no local worker, a Slurm step, or it failed).
std::unique_ptr<ForkServer> start_fork_server(const RunConfig& config, const std::vector<const TaskType*>& types);

// Builds the runner for `mode`; `stop` interrupts it (SIGINT; running tasks are cancelled),
// `drain` lets it start no more tasks (SIGTERM; running tasks finish). See SignalWatcher.
std::unique_ptr<Runner> make_runner(Mode mode, const RunConfig& config, const RunShared& shared, std::stop_token stop,
                                    std::stop_token drain = {});

// What of the run's settings changes what its tasks produce, which a journal records and a
// resume compares (decision 128): every setting no registered type declares as a flag (the
// run cannot tell what a type does with it), and each flag of `types` declared changes_results
// that neither is generated_only nor picks the tasks; not a type's policies (its flags declared
// not to change results, "spill_dir"). The coordinator's --resume and a Farm's resume both use it.
Json result_settings(const RunConfig& config, const Registry& registry, const std::vector<const TaskType*>& types);

// Where the tasks of `mode` save files: --out-dir/<mode>, absolute.
inline std::filesystem::path mode_out_dir(const RunConfig& config, Mode mode) {
    return mode_out_dir(config.out_dir, mode);
}

}  // namespace taskfarm
