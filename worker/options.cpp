#include "worker.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <iterator>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "affinity.hpp"
#include "checks.hpp"
#include "curve.hpp"
#include "errors.hpp"
#include "flag_checks.hpp"
#include "fork_server.hpp"
#include "log.hpp"
#include "process_title.hpp"
#include "command_groups.hpp"
#include "session.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

// Dies with the parent: PR_SET_PDEATHSIG is also set by the coordinator before exec; this
// covers a worker started by hand with --parent-pid, and a parent that died before we ran.
void exit_with_parent(long parent) {
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) spdlog::warn("cannot set parent-death signal");
    if (::getppid() != parent) {
        spdlog::error("parent {} is gone; exiting", parent);
        std::_Exit(1);
    }
}

const CLI::Validator kEndpoint(
    [](std::string& text) -> std::string {
        if ((text.starts_with("ipc://") && text.size() > 6) || curve::parse_tcp_endpoint(text, false)) return "";
        return fmt::format("'{}' is not ipc://PATH or tcp://HOST:PORT", text);
    },
    "");  // the option's type_name says what it wants

const CLI::Validator kAllowedCpu(
    [](std::string& text) -> std::string {
        const std::vector<int> allowed = allowed_cpus();
        for (int cpu : allowed)
            if (std::to_string(cpu) == text) return "";
        return fmt::format("'{}' is not a CPU this process may use (it may use {})", text, format_cpu_list(allowed));
    },
    "");  // the option's type_name says what it wants

}  // namespace

int worker_main(const std::string& name, const Registry& registry, int argc, const char* const* argv) {
    WorkerConfig config;
    config.registry = &registry;
    bool fork_server = false;
    std::vector<std::string> preload;
    CLI::App app{fmt::format(
        "{}: runs the tasks a coordinator hands out (task types: {}). The coordinator starts its own local\n"
        "workers; start one by hand (on this or another machine) to join a coordinator that runs with --listen.\n",
        name, registry.names_text())};
    app.name(name);  // "wordcount worker" in the usage line, not argv[0]
    app.set_version_flag("--version", fmt::format("{} (taskfarm {})", name, version()));
    app.get_formatter()->column_width(30);
    app.add_option("--connect", config.connect,
                   "the coordinator: tcp://HOST:PORT of its --listen, or the ipc://PATH it gives its own workers")
        ->check(kEndpoint)
        ->type_name("ENDPOINT");
    auto* keys_option =
        app.add_option("--keys", config.keys_dir,
                       "talk CurveZMQ (encrypted, authenticated) with this worker's worker.secret and the\n"
                       "coordinator's coordinator.public from DIR; needed when the coordinator has --keys")
            ->type_name("DIR");
    auto* insecure_option =
        app.add_flag("--insecure", config.insecure,
                     "connect to a tcp:// endpoint in plaintext, without --keys (for a coordinator run with\n"
                     "--insecure): tasks and results travel unencrypted, and whoever holds the port runs\n"
                     "commands here as this worker's user; refused as root without --insecure-as-root")
            ->excludes(keys_option);
    bool insecure_as_root = false;
    app.add_flag("--insecure-as-root", insecure_as_root,
                 "with --insecure, run as root all the same: anyone who can reach the port (or take it\n"
                 "over) then runs any command as root on this machine")
        ->needs(insecure_option);
    app.add_option("--name", config.name,
                   "name in logs and results (default: HOST-PID, or NODE-PID with Slurm's node name in a Slurm job); "
                   "at most 64 bytes, no control characters")
        ->check(CLI::Validator(
            [](std::string& given) -> std::string {
                // The coordinator rejects a hello whose name it could not print as it is.
                return is_printable(given, kMaxWorkerName)
                           ? ""
                           : fmt::format("'{}' is not printable or longer than {} bytes",
                                         printable(given, kMaxWorkerName), kMaxWorkerName);
            },
            "NAME"));
    app.add_option("--out-dir", config.out_dir,
                   fmt::format("where tasks save files (a task type's outputs); the coordinator's own workers get its\n"
                               "--out-dir/processes (default: {}, the directory of this program's first type that\n"
                               "saves files and names one, else the working directory)",
                               default_out_dir(registry).string()))
        ->type_name("DIR");
    app.add_option("--scratch-dir", config.scratch_dir,
                   "where tasks make their scratch directories (default: TMPDIR); the coordinator gives its own\n"
                   "workers its private run directory, removed after the run, so a killed worker's go with it")
        ->type_name("DIR");
    app.add_option("--state-dir", config.state_dir,
                   "keep DIR/PID.running, which says which task runs, so that a coordinator on this machine\n"
                   "charges a crash of this worker to that task alone (the coordinator gives its own workers\n"
                   "its private run directory)")
        ->type_name("DIR");
    app.add_option("--pin", config.pin, "run only on this CPU (one worker per core: --pin 0, --pin 1, ...)")
        ->check(kAllowedCpu)
        ->type_name("CPU");
    app.add_option("--connect-timeout", config.connect_timeout_s,
                   "exit 1 when no coordinator has answered this many seconds after starting (it may\n"
                   "start after its workers); a refused worker exits at once, saying why")
        ->check(seconds_between(0.1, 86'400))
        ->capture_default_str();
    app.add_option("--parent-pid", config.parent_pid, "exit when this process (the coordinator) dies")
        ->check(CLI::PositiveNumber);
    add_heartbeat_options(app, config.heartbeat_interval_s, config.heartbeat_timeout_s,
                          "seconds between heartbeats; use the coordinator's --heartbeat-interval",
                          "exit when the coordinator is silent this many seconds; use the coordinator's\n"
                          "--heartbeat-timeout");
    add_log_level_option(app, config.log_level, "log level on stderr (default: SPDLOG_LEVEL, else info)");
    app.add_flag("--fork-server", fork_server,
                 "instead of connecting, fork workers on the coordinator's requests on descriptor 3, with\n"
                 "--parent-pid (the coordinator starts one itself for its local workers; see decision 101)");
    auto* preload_option =
        app.add_option("--preload", preload,
                       "with --fork-server: load only what these task types need before forking (the plan's\n"
                       "types; every type's without it), so that each fork copies no more than the run uses")
            ->delimiter(',')
            ->type_name("TYPE,...");
    app.footer(fmt::format(
        "Exit status: 0 after the coordinator's SHUTDOWN; 1 when the coordinator refused this worker, never\n"
        "answered, or went silent; 2 bad usage. See docs/multihost.md.\n"
        "Example: {} --connect tcp://coordinator-host:5555 --keys ~/.taskfarm/keys --pin 0",
        name));
    try {
        app.parse(argc, argv);
        if (fork_server && config.parent_pid <= 0)
            throw CLI::ValidationError("--fork-server", "needs --parent-pid, the coordinator it forks workers for");
        if (!fork_server && config.connect.empty()) throw CLI::RequiredError("--connect");
        require_heartbeats(config.heartbeat_interval_s, config.heartbeat_timeout_s);
        const auto tcp = curve::parse_tcp_endpoint(config.connect, false);
        if (!config.keys_dir.empty() && !tcp)
            throw CLI::ValidationError("--keys", fmt::format("only for tcp:// endpoints, not '{}'", config.connect));
        if (config.insecure && ::geteuid() == 0 && !insecure_as_root)
            throw CLI::ValidationError(
                "--insecure",
                "refused as root: without --keys, whoever holds the port runs commands here as root; run "
                "the worker as another user, give --keys DIR, or add --insecure-as-root to accept it");
        if (tcp && config.keys_dir.empty() && !config.insecure)
            throw CLI::ValidationError(
                "--connect", fmt::format("'{}' without --keys: tasks and results would travel unencrypted; give --keys "
                                         "DIR, or --insecure to talk to a coordinator run with --insecure",
                                         config.connect));
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? static_cast<int>(ExitCode::Ok) : static_cast<int>(ExitCode::Usage);
    }
    if (config.out_dir.empty()) config.out_dir = default_out_dir(registry);
    if (fork_server) {
        init_logging("fork-server");
        if (!config.log_level.empty()) set_log_level(config.log_level);
        exit_with_parent(config.parent_pid);
        auto args = serve_forks(registry, kForkServerChannel, static_cast<pid_t>(config.parent_pid),
                                preload_option->count() > 0 ? &preload : nullptr);
        if (!args) return static_cast<int>(ExitCode::Ok);
        // A new worker: the arguments the coordinator would have exec'd it with.
        const std::string program = argv[0];  // the title below overwrites what argv points to
        std::vector<const char*> child_argv{program.c_str()};
        for (const std::string& arg : *args) child_argv.push_back(arg.c_str());
        // ps shows "worker w3", not the server's "worker --fork-server --parent-pid N".
        const auto name_flag = std::find(args->begin(), args->end(), "--name");
        if (name_flag != args->end() && name_flag + 1 != args->end())
            ProcessTitle(fmt::format("{} {}", name, *(name_flag + 1)), "").apply();
        return worker_main(name, registry, static_cast<int>(child_argv.size()), child_argv.data());
    }
    if (config.name.empty()) config.name = fmt::format("{}-{}", this_node(), ::getpid());
    init_logging(config.name);
    if (!config.log_level.empty()) set_log_level(config.log_level);
    // The coordinator may have blocked these for its own signal thread; the mask survives exec.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    ::pthread_sigmask(SIG_UNBLOCK, &signals, nullptr);
    if (config.parent_pid > 0) exit_with_parent(config.parent_pid);
    if (!config.keys_dir.empty()) {
        if (!curve::available()) {
            spdlog::error("--keys: this libzmq was built without CURVE support (libsodium), so it cannot encrypt");
            return static_cast<int>(ExitCode::Usage);
        }
        try {
            config.keys = curve::read_client_keys(config.keys_dir);
        } catch (const std::runtime_error& e) {
            spdlog::error("--keys: {}", e.what());
            return static_cast<int>(ExitCode::Usage);
        }
    }
    try {
        // Before the ZeroMQ context and the executor start their threads, which inherit it.
        if (config.pin >= 0) pin_this_thread(config.pin);
    } catch (const std::exception& e) {
        spdlog::error("--pin: cannot run on CPU {}: {}", config.pin, e.what());
        return static_cast<int>(ExitCode::Usage);
    }
    // Its commands' groups in a file there, which the coordinator reads if this worker dies
    // (with their guardian, say): no message about each command (decision 206).
    if (!config.state_dir.empty()) command_groups::use_table_dir(config.state_dir);
    try {
        return run_session(config);
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return static_cast<int>(ExitCode::TasksFailed);
    }
}

}  // namespace taskfarm
