#include "cli.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cerrno>
#include <cstdlib>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <filesystem>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "affinity.hpp"
#include "checks.hpp"
#include "curve.hpp"
#include "coordinator.hpp"
#include "dispatcher.hpp"
#include "flag_checks.hpp"
#include "live_view.hpp"
#include "log.hpp"
#include "parallel_cli.hpp"
#include "plan_sources.hpp"
#include "step.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

constexpr std::string_view kModeNames[] = {"sequential", "threads", "gil-threads", "processes"};

// Resources (docs/resources.md): --worker-resources, --gpus and --task-resources, in a group
// of their own; read by finish() once the command line is parsed.
struct ResourceFlags {
    std::string worker;
    std::string gpus;
    std::string task;
    CLI::Option* worker_option = nullptr;
    CLI::Option* gpus_option = nullptr;
    CLI::Option* task_option = nullptr;

    void add(CLI::App& app) {
        const auto checked = [](auto parse) {
            return CLI::Validator(
                [parse](std::string& text) -> std::string {
                    try {
                        parse(text);
                        return "";
                    } catch (const std::invalid_argument& e) {
                        return e.what();
                    }
                },
                "LIST");
        };
        const std::string group = "Resources (processes mode; docs/resources.md)";
        worker_option = app.add_option("--worker-resources", worker,
                                       "what the local worker processes have, together: NAME=COUNT,... (slot=2,\n"
                                       "license=1). cpus (the CPUs this process may use) and mem (MiB of memory)\n"
                                       "unless given. A task that asks for some starts only when all of it is free")
                            ->check(checked(parse_worker_resources))
                            ->group(group);
        gpus_option = app.add_option("--gpus", gpus,
                                     "GPU ids the local workers share (0,1); default: CUDA_VISIBLE_DEVICES, else\n"
                                     "nvidia-smi -L. A task holding some runs with CUDA_VISIBLE_DEVICES set to them")
                          ->check(checked(parse_gpu_list))
                          ->group(group);
        task_option = app.add_option("--task-resources", task,
                                     "what each task asks for (gpu=1,mem=2G) unless its plan line's \"resources\"\n"
                                     "says; one that asks goes to a local worker that holds no other task")
                          ->check(checked(parse_resources))
                          ->group(group);
    }

    // Sets config's resources; a request the workers can never meet exits 2 naming the flag.
    void finish(RunConfig& config) const {
        std::optional<std::vector<std::string>> ids;
        if (gpus_option->count() > 0) ids = parse_gpu_list(gpus);
        config.resources = std::make_shared<const LocalResources>(
            worker_option->count() > 0 ? parse_worker_resources(worker) : ResourceRequest{}, std::move(ids));
        if (task_option->count() == 0) return;
        config.task_resources = parse_resources(task);
        if (const std::string why = unmet_resources(config, config.task_resources); !why.empty())
            throw CLI::ValidationError("--task-resources", why);
    }
    bool given() const { return worker_option->count() + gpus_option->count() + task_option->count() > 0; }
};

CLI::Validator size_validator(std::uint64_t least) {
    return CLI::Validator(
        [least](std::string& text) -> std::string {
            const auto bytes = parse_size(text);
            if (!bytes) return fmt::format("'{}' is not a size like 1000, 200K, 1.5M or 2G", text);
            if (*bytes < least) return fmt::format("'{}' is below {} byte(s)", text, least);
            return "";
        },
        "SIZE");
}
const CLI::Validator kPrefetch(
    [](std::string& text) -> std::string {
        int value = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (text == "auto" || (ec == std::errc{} && end == text.data() + text.size() && value >= 1 && value <= 10'000))
            return "";
        return fmt::format("'{}' is not auto or a number of tasks from 1 to 10000", text);
    },
    "K|auto");

const CLI::Validator kModeList(
    [](std::string& text) -> std::string {
        if (text == "all" || parse_mode(text)) return "";
        return fmt::format("unknown mode '{}' (want sequential, threads, gil-threads, processes or all)", text);
    },
    "MODE");

// Each CPU must be one sched_getaffinity allows: pinning to another would fail in the child.
const CLI::Validator kCpuList(
    [](std::string& text) -> std::string {
        try {
            const std::vector<int> allowed = allowed_cpus();
            for (int cpu : parse_cpu_list(text))
                if (std::find(allowed.begin(), allowed.end(), cpu) == allowed.end())
                    return fmt::format("CPU {} in '{}' is not one this process may use (it may use {})", cpu, text,
                                       format_cpu_list(allowed));
            return "";
        } catch (const std::invalid_argument& e) {
            return fmt::format("bad CPU list '{}': {}", text, e.what());
        }
    },
    "LIST");

// An empty path names no file: refused here rather than met as a filesystem error later.
const CLI::Validator kPath(
    [](std::string& text) -> std::string { return text.empty() ? "an empty path names no file" : ""; }, "");

// "" if ZeroMQ can bind `host` (of --listen, or --ui's): `*`, or an IPv4 address of this
// machine. ZeroMQ reads any other name as a network interface, and fails only when the run
// starts. `flag` and `loopback`: the option, and a value of it for loopback ("--listen",
// "tcp://127.0.0.1:PORT"), which the message suggests.
std::string check_listen_host(const std::string& host, std::string_view flag, std::string_view loopback) {
    if (host == "*") return "";
    in_addr address{};
    if (::inet_pton(AF_INET, host.c_str(), &address) != 1)
        return fmt::format(
            "ADDRESS must be * or an IPv4 address of this machine (for loopback, {} {}); "
            "host names and IPv6 addresses are not supported",
            flag, loopback);
    const int probe = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0) return "";  // cannot tell here; the run will say
    sockaddr_in local{};
    local.sin_family = AF_INET;
    local.sin_addr = address;
    local.sin_port = 0;
    const bool bound = ::bind(probe, reinterpret_cast<const sockaddr*>(&local), sizeof local) == 0;
    const int error = errno;
    ::close(probe);
    return bound ? ""
                 : fmt::format("{} is not an address of this machine ({}; for loopback, {} {})", host,
                               std::strerror(error), flag, loopback);
}

const CLI::Validator kListenEndpoint([](std::string& text) -> std::string { return check_listen_endpoint(text); },
                                     "");  // the option's type_name says what it wants

}  // namespace

StepConfig launch_step(StepLauncher launcher, std::optional<int> workers, const std::string& args_text) {
    if (launcher == StepLauncher::Slurm && !workers) {
        const char* ntasks = std::getenv("SLURM_NTASKS");
        int value = 0;
        const std::string_view text = ntasks ? ntasks : "";
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (!ntasks || ec != std::errc{} || end != text.data() + text.size() || value < 1)
            throw CLI::ValidationError(
                "--workers", fmt::format("--launch slurm starts --workers N workers, by default $SLURM_NTASKS, "
                                         "which is {}: give --workers N outside an allocation",
                                         ntasks ? fmt::format("'{}'", printable(ntasks)) : "not set"));
        workers = value;
    }
    if (!workers)
        throw CLI::ValidationError("--workers",
                                   "--launch mpirun starts --workers N workers: give --workers N (the slots "
                                   "of the job, e.g. $NSLOTS, $PBS_NP)");
    if (*workers < 1)
        throw CLI::ValidationError("--workers",
                                   fmt::format("--launch {} needs at least 1 worker", launch_name(launcher)));
    StepConfig step{.launcher = launcher, .tasks = *workers};
    try {
        step.args = split_launcher_args(args_text);
    } catch (const std::invalid_argument& e) {
        throw CLI::ValidationError(launcher == StepLauncher::Slurm ? "--slurm-args" : "--mpirun-args",
                                   fmt::format("cannot split '{}': {}", printable(args_text), e.what()));
    }
    return step;
}

std::string check_listen_endpoint(const std::string& text) {
    if (const auto endpoint = curve::parse_tcp_endpoint(text, /*wildcard_port=*/true)) {
        const std::string why = check_listen_host(endpoint->host, "--listen", "tcp://127.0.0.1:PORT");
        return why.empty() ? "" : fmt::format("cannot listen on '{}': {}", printable(text, 100), why);
    }
    return fmt::format(
        "'{}' is not tcp://ADDRESS:PORT (e.g. tcp://10.0.0.5:5555; tcp://*:5555 for every "
        "interface; PORT * picks a free one)",
        text);
}

std::string check_ui_address(const std::string& text) {
    const auto address = parse_ui_address(text);
    if (!address)
        return fmt::format("'{}' is not [ADDRESS:]PORT (e.g. 8080, 127.0.0.1:8080, *:8080; PORT 0 picks a free one)",
                           printable(text, 100));
    const std::string loopback = address->port == 0
                                     ? std::string("127.0.0.1:0")
                                     : fmt::format("127.0.0.1:{}, or --ui 127.0.0.1:0 for a free port", address->port);
    const std::string why = check_listen_host(address->host, "--ui", loopback);
    return why.empty() ? "" : fmt::format("cannot serve on '{}': {}", printable(text, 100), why);
}

namespace {

// --ui [ADDR:]PORT: ADDR by --listen's rules, so what --listen refuses --ui refuses too.
const CLI::Validator kUiAddress([](std::string& text) -> std::string { return check_ui_address(text); }, "");

}  // namespace

namespace {

// How a person starts this program's worker: `worker`, or `PROGRAM worker` for an App.
std::string worker_command(const ProgramInfo& program) {
    return program.worker.prefix.empty() ? std::string("worker") : program.name + " worker";
}

// --task's help: every registered type with its summary.
std::string task_help(const Registry& registry) {
    std::string text = "task type of the run's tasks (--tasks of them, or one per --inputs line):";
    for (const auto& type : registry.types()) {
        const std::string summary = type->summary();
        text += fmt::format("\n  {}{}", type->name(), summary.empty() ? "" : ": " + summary);
        const TaskTraits traits = type->traits();
        if (traits.writes_files && !traits.out_dir.empty())
            text += fmt::format(" (--out-dir default: {})", traits.out_dir);
    }
    return text;
}

}  // namespace

std::vector<TypeFlag> add_type_flags(CLI::App& app, const Registry& registry, CLI::Option* plan, CLI::Option* tasks,
                                     CLI::Option* inputs, bool picking_only) {
    std::vector<TypeFlag> added;
    for (const auto& type : registry.types()) {
        for (Flag& flag : type->flags()) {
            if (picking_only && flag.picks == Flag::Picks::Nothing) continue;
            const auto same = std::find_if(added.begin(), added.end(),
                                           [&](const TypeFlag& other) { return other.declared.name == flag.name; });
            if (same != added.end()) {
                if (same->declared.key != flag.key)
                    throw std::logic_error(
                        fmt::format("task type {} declares {} for setting '{}', another type for '{}'", type->name(),
                                    flag.name, flag.key, same->declared.key));
                continue;
            }
            TypeFlag made{std::move(flag), type->name(), std::make_unique<std::string>(), nullptr};
            *made.value = made.declared.default_value;
            const Flag& declared = made.declared;
            const std::string value_name = !declared.value_name.empty()          ? declared.value_name
                                           : declared.type == Flag::Type::Count  ? "COUNT"
                                           : declared.type == Flag::Type::Number ? "NUMBER"
                                           : declared.type == Flag::Type::Size   ? "SIZE"
                                                                                 : "TEXT";
            made.option = app.add_option(declared.name, *made.value, declared.help)
                              ->check(CLI::Validator(
                                  [declared](std::string& text) -> std::string {
                                      try {
                                          static_cast<void>(declared.read(text));
                                          return "";
                                      } catch (const std::invalid_argument& e) {
                                          return e.what();
                                      }
                                  },
                                  ""))
                              ->type_name(value_name)
                              ->group(fmt::format("{} task type", type->name()))
                              ->capture_default_str();
            added.push_back(std::move(made));
        }
    }
    // A type's flag that picks the run's tasks (Flag::picks) brings them: no --plan, no
    // --tasks, no other such flag, and none of the flags for the tasks a type generates.
    const auto exclude = [](CLI::Option* flag, CLI::Option* other) {
        if (other) flag->excludes(other);
    };
    for (const TypeFlag& flag : added) {
        if (flag.declared.picks == Flag::Picks::Nothing) continue;
        exclude(flag.option, plan);
        exclude(flag.option, tasks);
        if (flag.declared.picks == Flag::Picks::InputsFile) exclude(flag.option, inputs);
        for (const TypeFlag& other : added)
            if (&other != &flag && (other.declared.generated_only || other.declared.picks != Flag::Picks::Nothing))
                flag.option->excludes(other.option);
    }
    for (const TypeFlag& flag : added)
        if (flag.declared.generated_only) exclude(plan, flag.option);
    return added;
}

void decide_type_flags(const std::vector<TypeFlag>& flags, bool task_given, std::string& task, RunConfig& config) {
    // A type's flag that picks the tasks (Picks::InputsFile: --task NAME --inputs FILE;
    // Picks::PerInput: a task per --inputs line) is --task of its type.
    for (const TypeFlag& flag : flags) {
        if (flag.declared.picks == Flag::Picks::Nothing || flag.option->count() == 0) continue;
        const std::string name = flag.option->get_name();
        if (task_given && task != flag.type)
            throw CLI::ValidationError(
                name, fmt::format("makes {} tasks, but --task {} asks for other tasks", flag.type, task));
        task = flag.type;
        if (flag.declared.picks == Flag::Picks::InputsFile) {
            config.inputs_path = *flag.value;
            config.inputs_flag = name;
        } else if (config.inputs_path.empty()) {
            throw CLI::ValidationError(name, fmt::format("needs --inputs FILE (or --inputs - for standard input): a "
                                                         "{} task runs per line",
                                                         flag.type));
        }
    }
    for (const TypeFlag& flag : flags) {  // given or not: its default is its setting
        const bool picks = flag.declared.picks != Flag::Picks::Nothing;
        if (flag.declared.key.empty() || (picks && flag.option->count() == 0)) continue;  // only when given
        try {
            config.settings[flag.declared.key] = flag.declared.read(*flag.value);
        } catch (const std::invalid_argument& e) {  // a given value failed the validator already
            throw CLI::ValidationError(flag.option->get_name(), fmt::format("default {}", e.what()));
        }
    }
}

namespace {

// --set KEY=VALUE: VALUE as JSON when it parses as JSON (3, 0.5, true, "x", [1,2]), else as a string.
const CLI::Validator kSetting(
    [](std::string& text) -> std::string {
        const auto equals = text.find('=');
        if (equals == std::string::npos || equals == 0) return fmt::format("'{}' is not KEY=VALUE", text);
        return "";
    },
    "KEY=VALUE");

}  // namespace

namespace {

// The command line as CLI11 reads it, before the one validation step (decide()): the run's
// configuration where a flag's value goes there as it is, the text of the flags whose value
// needs more than CLI11's checks, and the options whose presence decide() asks about.
struct CommandLine {
    RunConfig config;
    std::string task;
    std::vector<std::string> modes{"sequential", "threads", "processes"};
    std::string cpus;
    bool pin = false;
    std::vector<std::string> settings;  // --set KEY=VALUE
    std::uint32_t retries = 0;          // --retries, when given
    std::vector<TypeFlag> type_flags;
    std::string output = "group";
    std::string prefetch = "auto";
    std::string max_worker_memory = "0";
    std::string progress = "auto";
    bool quiet = false;
    int verbose = 0;
    std::string launch = "local";
    std::string slurm_args;
    std::string mpirun_args;
    KeygenConfig keygen;
    ReportConfig report;
    TaskId report_task = 0;
    CancelConfig cancel;
    ResourceFlags resources;  // --worker-resources, --gpus, --task-resources
    std::string alloc;        // --alloc slurm (launch/alloc.hpp)
    AllocConfig alloc_config;
    std::string alloc_args;
    CLI::Option* alloc_option = nullptr;
    CLI::Option* alloc_time_option = nullptr;
    CLI::Option* alloc_args_option = nullptr;
    // The coordinator's flags that become settings, with the setting each becomes; given for a
    // plan no type of which reads it, a warning says so (the run goes on).
    std::vector<std::pair<CLI::Option*, const char*>> setting_flags;
    CLI::Option* workers_option = nullptr;
    CLI::Option* task_option = nullptr;
    CLI::Option* tasks_option = nullptr;
    CLI::Option* inputs_option = nullptr;
    CLI::Option* plan_option = nullptr;
    CLI::Option* output_option = nullptr;
    CLI::Option* out_dir_option = nullptr;
    CLI::Option* retries_option = nullptr;
    CLI::Option* mode_option = nullptr;
    CLI::Option* worker_bin_option = nullptr;
    CLI::Option* progress_option = nullptr;
    CLI::Option* wait_option = nullptr;
    CLI::Option* launch_option = nullptr;
    CLI::Option* slurm_args_option = nullptr;
    CLI::Option* mpirun_args_option = nullptr;
    CLI::Option* keys_option = nullptr;
    CLI::Option* insecure_option = nullptr;
    CLI::Option* expect_option = nullptr;
    CLI::Option* report_task_option = nullptr;
    CLI::App* keygen_command = nullptr;
    CLI::App* report_command = nullptr;
    CLI::App* cancel_command = nullptr;
};

// The run's tasks: how many workers, which type, how many tasks or from which file, the types'
// own flags, and the settings every task reads.
void add_task_options(CLI::App& app, CommandLine& cl, const ProgramInfo& program) {
    RunConfig& config = cl.config;
    const Registry& registry = program.registry;
    std::string& task = cl.task;
    std::vector<std::string>& settings = cl.settings;
    std::vector<TypeFlag>& type_flags = cl.type_flags;
    cl.workers_option =
        app.add_option("-w,--workers", config.workers,
                       "worker processes (and threads) to run tasks on; with --listen, 0 runs on remote workers only")
            ->check(CLI::Range(0, 1024))
            ->capture_default_str();
    cl.task_option = app.add_option("-t,--task", task, task_help(registry))
                         ->check(CLI::Validator(
                             [&registry](std::string& text) -> std::string {
                                 return registry.find(text) ? ""
                                                            : fmt::format("unknown task type '{}' (want {})", text,
                                                                          registry.names_text());
                             },
                             "NAME"))
                         ->capture_default_str();
    cl.tasks_option = app.add_option("-n,--tasks", config.tasks,
                                     "number of tasks in the plan (a type may have a default of\n"
                                     "its own: see --task)")
                          ->check(CLI::Range(1, 100'000'000))
                          ->capture_default_str();
    app.add_option("--set", settings,
                   "a setting every task can read (Context::settings()), for the user's own task types;\n"
                   "VALUE is JSON if it parses as JSON, else a string. Repeatable: --set lang=en --set k=3")
        ->check(kSetting)
        ->take_all();
    cl.inputs_option =
        app.add_option(
               "--inputs", config.inputs_path,
               "one task of --task per line of FILE (blank lines and lines starting with # skipped): the type\n"
               "makes its parameters from the line ({\"input\": LINE} for a user's function). A FILE is checked\n"
               "whole before the run (a bad line: exit 2 naming FILE:LINE) and read again as tasks go out\n"
               "(one that has more or fewer tasks by then changed under the run: exit 2 naming it);\n"
               "- reads stdin as tasks go out, in bounded memory, never holding up the run while the next\n"
               "line is slow to come: a bad line there ends the run after the tasks before it (exit 2,\n"
               "stdin:LINE). A line over 4 MiB is refused as it is read. Several modes read it again from a\n"
               "private temporary copy; with --resume it is read whole first")
            ->type_name("FILE");
    cl.plan_option =
        app.add_option("--plan", config.plan_path,
                       "run the tasks in FILE instead: JSON Lines, one task per line, {\"kind\":TYPE, its parameters}\n"
                       "(each type's under --task, e.g. {\"kind\":TYPE,\"PARAMETER\":VALUE}); any line may add\n"
                       "\"timeout_s\"; blank lines and lines starting with # are skipped; a bad line stops the run\n"
                       "before it starts; - reads stdin (whole, into a private temporary file, before the run).\n"
                       "Read again as tasks go out: never held")
            ->type_name("FILE")
            ->excludes(cl.task_option)
            ->excludes(cl.tasks_option)
            ->excludes(cl.inputs_option);
    cl.inputs_option->excludes(cl.tasks_option);
    // The types' own flags, each in a group of its type's name (before the coordinator's, which
    // follow under OPTIONS).
    type_flags = add_type_flags(app, registry, cl.plan_option, cl.tasks_option, cl.inputs_option);
    cl.out_dir_option =
        app.add_option("--out-dir", config.out_dir,
                       "tasks that save files (see --task) save into DIR/<mode>/ (made if missing). Default: the\n"
                       "directory the plan's first such type names (see --task), else the working directory")
            ->check(kPath)
            ->type_name("DIR");
    cl.retries_option =
        app.add_option("--retries", cl.retries,
                       "runs a failed task up to N more times, on any worker, in every mode; each failed attempt\n"
                       "is in --results, the last one is the task's result (default: 0). A type that retries\n"
                       "inside its tasks (see --task) takes N for its own tries instead, with its own default")
            ->check(CLI::Range(0, 100))
            ->type_name("N");
    // Each becomes a setting; given for a plan no type of which reads it, a warning says so (the run goes on).
    cl.setting_flags = {{cl.out_dir_option, "out_dir"}, {cl.retries_option, "retries"}};
    app.add_option("--seed", config.seed, "seed for random task parameters; the same seed gives the same plan")
        ->check(kUnsigned)
        ->capture_default_str();
}

// Where the tasks run: the modes, pinning, prefetch and the worker program.
void add_mode_options(CLI::App& app, CommandLine& cl, const ProgramInfo& program) {
    RunConfig& config = cl.config;
    std::vector<std::string>& modes = cl.modes;
    std::string& cpus = cl.cpus;
    bool& pin = cl.pin;
    std::string& prefetch = cl.prefetch;
    cl.mode_option =
        app.add_option("-m,--mode", modes,
                       "comma-separated modes to run, in order: sequential (one thread), threads (a pool of --workers\n"
                       "threads in the coordinator), gil-threads (the same pool, but a task must hold one global lock\n"
                       "while it computes and lets go while it sleeps, like CPython's GIL: sleeps overlap, computing\n"
                       "does not; a task of your own lets go inside Context::waiting()), processes (--workers worker\n"
                       "processes over ZeroMQ), or all (all four). Not given: the three below for a plan of the\n"
                       "built-in demo types, processes alone for anything else (a program's own types, a type\n"
                       "whose tasks act on the world), which then runs once. With --listen\n"
                       "only processes runs: remote workers are worker processes")
            ->delimiter(',')
            ->check(kModeList)
            ->capture_default_str();
    app.add_flag("--pin", pin,
                 "pin worker process (or thread) i to one CPU, going round the CPUs this process\n"
                 "may use; sequential runs on the first");
    app.add_option("--cpus", cpus,
                   "CPUs to pin to, e.g. 0-3,6 (implies --pin); each must be one this process may\n"
                   "use (sched_getaffinity, see taskset)")
        ->check(kCpuList);
    app.add_option(
           "--prefetch", prefetch,
           fmt::format("the most tasks a worker process may hold at once, K (1 to 10000) or auto ({}).\n"
                       "It holds one until the tasks' times are known and it has sent a result, then as many\n"
                       "as take about {:g} ms ({:g} ms of commands); short tasks travel in batches (of at most\n"
                       "4 MiB), and a long task never has others waiting behind it",
                       kMaxWindow, std::chrono::duration<double, std::milli>(kQueueBudget).count(),
                       std::chrono::duration<double, std::milli>(kCommandQueueBudget).count()))
        ->check(kPrefetch)
        ->capture_default_str();
    cl.resources.add(app);
    cl.worker_bin_option = app.add_option(
        "--worker-bin", config.worker_bin,
        program.worker.prefix.empty()
            ? std::string("worker executable (default: `worker` next to this binary, whose fork server forks\n"
                          "the local workers); each worker given here is exec'd, with `--connect ...`")
            : fmt::format("worker executable (default: this program, whose fork server, `{} worker\n"
                          "--fork-server`, forks the local workers); each worker given here is exec'd, with\n"
                          "`worker --connect ...`",
                          program.name));
}

// What the run shows and writes: console output, reports, the journal, progress, logs, pictures
// and the live view.
void add_output_options(CLI::App& app, CommandLine& cl) {
    RunConfig& config = cl.config;
    std::string& output = cl.output;
    std::string& progress = cl.progress;
    bool& quiet = cl.quiet;
    int& verbose = cl.verbose;
    cl.output_option =
        app.add_option(
               "--output", output,
               "the tasks' output on stdout: plain (the default for a --task whose type asks for it, as\n"
               "commands do: their stdout alone on stdout, each task's whole, and their stderr on stderr, as GNU\n"
               "parallel prints them; failed tasks' result lines and the table go to stderr), group (the default\n"
               "otherwise: each task's stdout and stderr as one block under its result line, lines marked\n"
               "\"  | \" and \"  ! \"),\n"
               "tag (the same, each line starting with \"task ID\", for grep) or none (the journal still has them)")
            ->check(CLI::IsMember({"plain", "group", "tag", "none"}))
            ->capture_default_str();
    app.add_option("--json", config.json_path,
                   "write the report as JSON to FILE when the run ends. For --json, --trace and --timeline:\n"
                   "- (or /dev/stdout) is stdout, and the result lines and table then go to stderr; a\n"
                   "regular file is replaced through a temp file and a rename, keeping its mode; a symlink\n"
                   "is followed; a FIFO, terminal or /dev/fd/N is written straight into")
        ->check(kPath)
        ->type_name("FILE");
    app.add_option("--results", config.results_path,
                   "append one JSON line per finished task to FILE, flushed as each arrives; the file is\n"
                   "locked for the run, so a journal another run writes to is refused; a regular file (not a\n"
                   "FIFO); bytes that are not UTF-8 are kept exactly in the line's \"bytes\"")
        ->check(kPath)
        ->type_name("FILE");
    app.add_option("--resume", config.resume_path,
                   "resume from the journal FILE of an earlier run of the same plan: skip the tasks it records as\n"
                   "ok (per mode), run the rest and append their lines to FILE; a journal with two ok lines\n"
                   "for one task and mode is refused")
        ->check(kPath)
        ->type_name("FILE");
    cl.progress_option =
        app.add_option("--progress", progress,
                       "progress on stderr: auto (a bar redrawn in place if stderr is a terminal, else a log line\n"
                       "every few seconds), always (the bar, even into a pipe) or never")
            ->check(CLI::IsMember({"auto", "always", "never"}))
            ->capture_default_str();
    auto* quiet_flag =
        app.add_flag("-q,--quiet", quiet, "only warnings and errors on stderr, no progress; stdout is unchanged");
    auto* verbose_flag =
        app.add_flag("-v,--verbose", verbose, "debug logs on stderr, the worker processes' included; -vv: trace");
    auto* level_option = add_log_level_option(app, config.log_level,
                                              "log level on stderr, worker processes included (default: info,\n"
                                              "or SPDLOG_LEVEL)");
    quiet_flag->excludes(verbose_flag)->excludes(level_option);
    verbose_flag->excludes(level_option);
    app.add_option("--trace", config.trace_path,
                   "write the run as Chrome trace-event JSON to FILE (open it in ui.perfetto.dev or\n"
                   "chrome://tracing): a process per mode, a thread per worker, an event per task attempt.\n"
                   "Keeps every result in memory (about 2.4 KB each at its peak): refused past 250,000 results\n"
                   "in all (tasks x modes); a list on stdin, of no known size, is drawn up to that many")
        ->check(kPath)
        ->type_name("FILE");
    app.add_option("--timeline", config.timeline_path,
                   "draw the run as an SVG timeline to FILE: a panel per mode on one time axis, a lane per\n"
                   "worker or thread, a bar per task; keeps every result in memory (about 1 KB each), up to\n"
                   "250,000 results, as --trace does")
        ->check(kPath)
        ->type_name("FILE.svg");
    auto* ui_option =
        app.add_option("--ui", config.ui,
                       "serve a live view of the run on http://ADDR:PORT (ADDR 127.0.0.1 unless given; * or an IPv4\n"
                       "address of this machine, as for --listen; PORT 0 picks a free one): a lane per worker or\n"
                       "thread with a bar per task as it runs, a panel per mode on one time axis, counts, rate and\n"
                       "ETA, failures with their reasons, where each worker runs, and at the end the table. The\n"
                       "URL, printed on stderr, holds a secret path: the page is served only to who has it. Read\n"
                       "only; plain HTTP, so on another address anyone on the network path can read it. Other\n"
                       "users' connections are bounded (64 pending, 2 s each, 16 slots kept for yours) and never\n"
                       "take the run's last descriptors, and the run's exit never waits on a client. See\n"
                       "docs/observability.md")
            ->check(kUiAddress)
            ->type_name("[ADDR:]PORT");
    app.add_option("--ui-linger", config.ui_linger_s,
                   "with --ui: seconds to keep serving the page after the run, so the final picture can be\n"
                   "looked at (default: until Ctrl-C, which then ends only the serving: the exit status is the\n"
                   "run's; SIGTERM too, at once); a run stopped by a signal does not linger")
        ->check(CLI::Validator(
            [](std::string& text) -> std::string {
                const std::string why = check_seconds(text, 0, 31'536'000);  // a year
                return why.empty() ? why
                                   : why +
                                         " (e.g. --ui-linger 60; --ui-linger 0 does not linger; without it, the "
                                         "page stays until Ctrl-C)";
            },
            fmt::format("SECONDS in [{:g} - {:g}]", 0.0, 31'536'000.0)))
        ->needs(ui_option);
}

// How the run watches its workers and tasks: heartbeats, timeouts, attempts, recycling, drain.
void add_health_options(CLI::App& app, CommandLine& cl) {
    RunConfig& config = cl.config;
    std::string& max_worker_memory = cl.max_worker_memory;
    add_heartbeat_options(app, config.heartbeat_interval_s, config.heartbeat_timeout_s,
                          "seconds between heartbeats, both ways",
                          "a worker (or coordinator) silent this long is dead");
    app.add_option("--start-timeout", config.start_timeout_s, "seconds to wait for every worker's HELLO")
        ->check(seconds_between(0.1, 3600))
        ->capture_default_str();
    app.add_option("--task-timeout", config.task_timeout_s,
                   "a task running longer than this many seconds fails with \"timed out\" (not retried);\n"
                   "0: no limit. A plan line's \"timeout_s\" overrides it for that task (0 there: no limit).\n"
                   "A worker that has not stopped its task a second after that and the grace its type gives\n"
                   "a task to stop (a type's flag, under --task's types below) is killed, and with it its processes")
        ->check(seconds_between(0, 31'536'000))
        ->capture_default_str();
    app.add_option("--max-attempts", config.max_attempts,
                   "tries per task when its worker dies or goes silent under it; then the task fails")
        ->check(CLI::Range(1, 100))
        ->capture_default_str();
    app.add_option("--max-respawns", config.max_respawns, "replacement workers to start, per mode, for ones that died")
        ->check(CLI::Range(0, 100'000))
        ->capture_default_str();
    app.add_option("--max-tasks-per-worker", config.max_tasks_per_worker,
                   "processes: a worker that has run N tasks exits and is replaced (recycled, not counted as\n"
                   "a death or a task's attempt); 0: never. No effect on the coordinator's own threads")
        ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{1'000'000'000}))
        ->type_name("N")
        ->capture_default_str();
    app.add_option("--max-worker-memory", max_worker_memory,
                   "processes: a worker whose resident memory (as it reports it, in heartbeats and results)\n"
                   "passes SIZE finishes its task, exits and is replaced; K, M, G are x1024; 0: no limit.\n"
                   "A worker that starts above SIZE stops the run with exit 2")
        ->check(size_validator(0))
        ->type_name("SIZE")
        ->capture_default_str();
    app.add_option("--drain-timeout", config.drain_timeout_s,
                   "after SIGTERM (or SIGHUP) no task starts and the running ones may finish for S seconds;\n"
                   "then, or at a second SIGTERM more than 1 s after the first, or a SIGINT, they are cancelled")
        ->check(seconds_between(0, 31'536'000))
        ->type_name("S")
        ->capture_default_str();
}

// Workers on other machines: --listen and its keys, or a launcher (Slurm, mpirun) that starts them.
void add_remote_options(CLI::App& app, CommandLine& cl) {
    RunConfig& config = cl.config;
    std::string& launch = cl.launch;
    std::string& slurm_args = cl.slurm_args;
    std::string& mpirun_args = cl.mpirun_args;
    auto* listen_option =
        app.add_option("--listen", config.listen,
                       "also accept workers started by hand on other machines (`worker --connect`) on this tcp\n"
                       "endpoint; PORT * picks a free one, which the log names. Only the processes mode runs.\n"
                       "Needs --keys, or --insecure for plaintext. See docs/multihost.md")
            ->check(kListenEndpoint)
            ->type_name("tcp://ADDR:PORT");
    cl.keys_option =
        app.add_option("--keys", config.keys_dir,
                       "encrypt and authenticate remote workers with CurveZMQ: this coordinator's key pair\n"
                       "(coordinator.secret) and the authorised worker key (worker.public) from DIR, as\n"
                       "`coordinator keygen DIR` writes them; a worker with any other key is refused")
            ->type_name("DIR")
            ->needs(listen_option);
    app.add_option("--authorized", config.authorized_dir,
                   "also admit the workers whose public keys are in DIR, one NAME.public file each (e.g. a\n"
                   "worker.public from `coordinator keygen --worker-only`, renamed hostb.public)")
        ->type_name("DIR")
        ->needs(cl.keys_option);
    cl.insecure_option =
        app.add_flag("--insecure", config.insecure,
                     "listen in plaintext, without --keys: tasks and results travel unencrypted, and any peer that\n"
                     "can connect gets tasks (on loopback, any user of this machine). Only where you trust them all")
            ->needs(listen_option)
            ->excludes(cl.keys_option);
    cl.expect_option =
        app.add_option("--expect-workers", config.expect_workers,
                       "remote workers to wait for before handing out the first task; more may join later")
            ->check(CLI::Range(0, 100'000))
            ->needs(listen_option)
            ->capture_default_str();
    cl.wait_option =
        app.add_option("--wait-workers", config.wait_workers_s,
                       "seconds to wait for the --expect-workers (exit 1 if they do not all come), and how long a\n"
                       "run with no worker left waits for one before the remaining tasks fail")
            ->check(seconds_between(0.1, 86'400))
            ->capture_default_str();
    cl.launch_option =
        app.add_option("--launch", launch,
                       "how the worker processes start: local (forked here), slurm (one `srun` job step of\n"
                       "--workers tasks, default $SLURM_NTASKS, one CPU each, connecting back over tcp with keys\n"
                       "made for the run in the working directory; inside sbatch or salloc it uses the allocation,\n"
                       "outside one srun allocates with --slurm-args) or mpirun (one `mpirun -n N` of --workers\n"
                       "workers on the hosts it is given: PBS, LSF, Grid Engine; Open MPI or MPICH). Only the\n"
                       "processes mode runs. See docs/multihost.md")
            ->check(CLI::IsMember({"local", "slurm", "mpirun"}))
            ->capture_default_str();
    cl.slurm_args_option = app.add_option("--slurm-args", slurm_args,
                                          "with --launch slurm: more srun options, split as the shell would, e.g.\n"
                                          "--slurm-args '--partition=short --time=10'")
                               ->type_name("'ARGS'");
    cl.mpirun_args_option = app.add_option("--mpirun-args", mpirun_args,
                                           "with --launch mpirun: more mpirun options, split as the shell would, e.g.\n"
                                           "--mpirun-args '--hostfile hosts --map-by node'")
                                ->type_name("'ARGS'");
    // --alloc slurm: allocations on demand (launch/alloc.hpp, docs/cluster.md).
    cl.alloc_option =
        app.add_option("--alloc", cl.alloc,
                       "submit Slurm allocations (`sbatch`) while tasks wait, each one `srun` step of\n"
                       "--alloc-workers workers that connect back with keys made for the run: at most --max-allocs\n"
                       "at once, one waiting in the queue at a time; one whose workers are idle while no task waits\n"
                       "is cancelled, and the run's end cancels every one left. Only the processes mode runs.\n"
                       "See docs/cluster.md")
            ->check(CLI::IsMember({"slurm"}))
            ->excludes(cl.launch_option);
    app.add_option("--max-allocs", cl.alloc_config.max_allocs,
                   "with --alloc: the most allocations of the run at once, queued ones included")
        ->check(CLI::Range(1, 1000))
        ->needs(cl.alloc_option)
        ->capture_default_str();
    app.add_option("--alloc-workers", cl.alloc_config.workers,
                   "with --alloc: workers per allocation (sbatch --ntasks, one CPU each)")
        ->check(CLI::Range(1, 100'000))
        ->needs(cl.alloc_option)
        ->capture_default_str();
    cl.alloc_time_option =
        app.add_option("--alloc-time", cl.alloc_config.time_limit,
                       "with --alloc (needed): each allocation's time limit, sbatch --time: MINUTES, MM:SS,\n"
                       "HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS. A task its end interrupts runs again elsewhere")
            ->check(CLI::Validator(
                [](std::string& text) -> std::string {
                    return is_slurm_time(text) ? "" : fmt::format("'{}' is not a Slurm time limit", printable(text));
                },
                "TIME"))
            ->needs(cl.alloc_option);
    cl.alloc_args_option =
        app.add_option("--alloc-args", cl.alloc_args,
                       "with --alloc: more sbatch options, after taskfarm's own (yours win), split as the shell\n"
                       "would, e.g. --alloc-args '--partition=short --account=proj'")
            ->type_name("'ARGS'")
            ->needs(cl.alloc_option);
}

// keygen, report and cancel.
void add_subcommands(CLI::App& app, CommandLine& cl) {
    KeygenConfig& keygen = cl.keygen;
    ReportConfig& report = cl.report;
    TaskId& report_task = cl.report_task;
    CancelConfig& cancel = cl.cancel;
    cl.keygen_command =
        app.add_subcommand("keygen",
                           "write CurveZMQ key pairs for remote workers and service clients into DIR and exit:\n"
                           "coordinator.*, worker.*, client.* (`coordinator keygen --help`)");
    cl.keygen_command->add_option("DIR", keygen.dir, "directory for the keys, created (mode 0700) if missing")
        ->required();
    auto* worker_only =
        cl.keygen_command->add_flag("--worker-only", keygen.worker_only,
                                    "write only worker.secret and worker.public: a key of its own for another\n"
                                    "worker machine, admitted with the coordinator's --authorized DIR");
    cl.keygen_command
        ->add_flag("--client-only", keygen.client_only,
                   "write only client.secret and client.public: a key of its own for another client of\n"
                   "`serve --listen-clients`, admitted with serve's --authorized-clients DIR")
        ->excludes(worker_only);
    cl.keygen_command->footer(
        "Secret files get mode 0600; an existing key file is never overwritten (exit 2). Keep\n"
        "coordinator.secret on the coordinator's machine; copy worker.secret and coordinator.public to\n"
        "each worker machine, client.secret and coordinator.public to a machine that submits to a\n"
        "server over tcp (a worker's key is refused there). See docs/multihost.md, docs/service.md.");
    cl.report_command =
        app.add_subcommand("report",
                           "summarise a --results journal, finished or not, and exit: per mode, counts, failures by\n"
                           "reason, retried tasks and why, the slowest, each worker's load and deaths, what the tasks\n"
                           "cost, and what --resume would run (`coordinator report --help`)");
    cl.report_command->add_option("JOURNAL", report.journal, "the journal (--results FILE); - reads standard input")
        ->required();
    cl.report_task_option = cl.report_command
                                ->add_option("--task", report_task,
                                             "tell this task's whole story instead: every attempt, worker,\n"
                                             "host, reason, time and cost, mode by mode")
                                ->check(kUnsigned)  // not -1 read as 2^64-1
                                ->type_name("ID");
    cl.report_command->add_flag("--json", report.json, "the report as one JSON document on stdout, for scripts");
    cl.report_command
        ->add_option("--plan", report.plan_path,
                     "the plan the journal was written by (a run's --plan FILE): what --resume would run is\n"
                     "then worked out against it, as --resume does, with the tasks ok in the journal that run\n"
                     "again because a task they wait for (\"after\") does")
        ->check(kPath)
        ->type_name("FILE");
    cl.report_command->add_option("--slowest", report.slowest, "how many of the slowest tasks to list per mode")
        ->check(CLI::Range(0, 1000000))
        ->type_name("N")
        ->capture_default_str();
    cl.report_command->footer(
        "Reads the journal without changing it (a torn last line is reported and left out, as --resume\n"
        "would cut it off). A line that is not a journal line exits 2 naming FILE:LINE. 'what --resume\n"
        "would run' comes from --resume's own reading of the journal; tasks of the plan that never\n"
        "reached it (ids past the last one it names) would run too; with --plan, the plan's own count,\n"
        "and the dependents of a task that runs again (\"after\"). See docs/reliability.md.");
    cl.cancel_command =
        app.add_subcommand("cancel",
                           "cancel tasks of a live run by id, without stopping the run: a running task is stopped and\n"
                           "recorded as cancelled, a queued one is when its turn comes (`coordinator cancel --help`)");
    cl.cancel_command
        ->add_option("--run", cancel.run,
                     "the run: its coordinator's pid (the run logs it at start), or its control directory\n"
                     "($TMPDIR/taskfarm-run-PID-XXXXXX). Only a directory of this user's, mode 0700, not a\n"
                     "symlink, with a socket of this user's is used; others are skipped with a message")
        ->required()
        ->type_name("DIR_OR_PID");
    cl.cancel_command->add_option("ID", cancel.ids, "task ids, as the result lines and the journal show them")
        ->required()
        ->check(CLI::Range(std::uint64_t{0}, kNoId - 1));
    cl.cancel_command->footer(
        "A cancelled task fails with \"cancelled (coordinator cancel)\" (\"cancelled\": true in --results) and is\n"
        "never retried; --resume runs it again. The cancel is for the mode that runs when it comes. The run\n"
        "answers once it has applied the request, and a line per task says what it did. Exit status: 0 every\n"
        "task is cancelled, 1 some task is not (not in the plan, no mode running) or no answer within 5 s,\n"
        "2 no such run.");
}

// The Examples of --help: each registered type's (TaskTraits::examples), the default --task's
// first, so that a program lists the commands of the types it has and no others.
std::string type_examples(const ProgramInfo& program) {
    const TaskType* first = program.registry.find(default_task(program));
    std::vector<const TaskType*> types;
    if (first) types.push_back(first);
    for (const auto& type : program.registry.types())
        if (type.get() != first) types.push_back(type.get());
    std::string text;
    for (const TaskType* type : types)
        for (std::string example : type->traits().examples) {
            for (auto at = example.find("{program}"); at != std::string::npos; at = example.find("{program}", at))
                example.replace(at, 9, program.name);
            text += (text.empty() ? " " : "          ") + example + "\n";
        }
    return text.empty() ? fmt::format(" {} --workers 4 --tasks 8\n", program.name) : text;
}

void add_footer(CLI::App& app, const ProgramInfo& program) {
    app.footer(
        std::string(
            "The table: speedup = sequential wall_s / wall_s; efficiency = speedup / workers; cpu_s = user + system\n"
            "CPU seconds, worker processes included; cpus = CPUs the mode could use (its pinned CPUs, else\n"
            "min(workers, CPUs available)); util = cpu_s / (T x C), the share of the machine kept busy: T from the\n"
            "mode's start to its last worker reaped, C the CPUs this process may use (one busy core of two: 50%).\n"
            "The second table (task cost): per mode, the tasks' own user and system CPU seconds and their largest\n"
            "peak memory, measured where each ran (scope thread, process or tree; docs/reliability.md).\n"
            "Exit status: 0 every task ok, 1 some task failed (or an output file could not be written), 2 bad usage\n"
            "(also: an output that is a directory, two flags naming the same file, a file read that is also\n"
            "written, --inputs L --json L), 129/130/131/143 stopped by\n"
            "SIGHUP/SIGINT/SIGQUIT/SIGTERM, 141 stdout closed by its reader (as with | head). SIGTERM and SIGHUP\n"
            "drain (no new task, the running ones finish, --drain-timeout); SIGINT and SIGQUIT cancel at once.\n"
            "The same request again within 1 s (timeout(1) and a closing terminal send theirs twice) is one.\n") +
        "Examples:" + type_examples(program) +
        fmt::format(
            "Remote workers (docs/multihost.md):\n"
            "          {0} keygen keys\n"
            "          {0} --listen tcp://*:5555 --keys keys --workers 0 --expect-workers 2\n"
            "          {1} --connect tcp://COORDINATOR-HOST:5555 --keys keys      (on each worker machine)\n"
            "A journal's story (docs/reliability.md):\n"
            "          {0} report run.jsonl [--task ID] [--json]\n"
            "On Slurm, in an sbatch script (docs/examples/slurm.sbatch): one srun step of $SLURM_NTASKS workers:\n"
            "          {0} --launch slurm --pin --plan plan.jsonl --results run.jsonl",
            program.name, worker_command(program)));
}

// The one validation step: what CLI11 cannot check alone (flags that go together, values that
// depend on others, the environment) throws CLI::ValidationError naming the flag; then the
// text of the flags becomes the configuration, decided: nothing changes it after this.
ParsedCli decide(CommandLine& cl, const ProgramInfo& program) {
    RunConfig& config = cl.config;
    const Registry& registry = program.registry;
    std::string& task = cl.task;
    std::vector<std::string>& modes = cl.modes;
    std::string& cpus = cl.cpus;
    bool& pin = cl.pin;
    std::vector<std::string>& settings = cl.settings;
    std::vector<TypeFlag>& type_flags = cl.type_flags;
    std::string& output = cl.output;
    std::string& prefetch = cl.prefetch;
    std::string& max_worker_memory = cl.max_worker_memory;
    std::string& progress = cl.progress;
    bool& quiet = cl.quiet;
    int& verbose = cl.verbose;
    std::string& launch = cl.launch;
    std::string& slurm_args = cl.slurm_args;
    std::string& mpirun_args = cl.mpirun_args;
    KeygenConfig& keygen = cl.keygen;
    ReportConfig& report = cl.report;
    TaskId& report_task = cl.report_task;
    CancelConfig& cancel = cl.cancel;
    config.fork_server = cl.worker_bin_option->count() == 0;  // a binary of the user's own is exec'd (decision 102)
    decide_type_flags(type_flags, cl.task_option->count() > 0, task, config);
    for (const std::string& setting : settings) {
        const auto equals = setting.find('=');
        for (const auto& [key, flag] : kFlagSettings)
            if (setting.substr(0, equals) == key)
                throw CLI::ValidationError(
                    "--set", fmt::format("'{}': the run sets '{}' itself, from {}; give {} instead", printable(setting),
                                         key, flag, flag));
        for (const TypeFlag& flag : type_flags)
            if (!flag.declared.key.empty() && setting.substr(0, equals) == flag.declared.key)
                throw CLI::ValidationError(
                    "--set", fmt::format("'{}': the run sets '{}' itself, from {}; give {} instead", printable(setting),
                                         flag.declared.key, flag.option->get_name(), flag.option->get_name()));
        for (const auto& type : registry.types())
            for (const std::string& made : type->traits().settings_made)
                if (setting.substr(0, equals) == made)
                    throw CLI::ValidationError("--set", fmt::format("'{}': the run sets '{}' itself, for --task {}",
                                                                    printable(setting), made, type->name()));
        const std::string value = setting.substr(equals + 1);
        Json parsed = Json::parse(value, nullptr, /*allow_exceptions=*/false);
        if (parsed.is_discarded()) parsed = Json(value);
        config.settings[setting.substr(0, equals)] = std::move(parsed);
    }
    if (cl.keygen_command->parsed()) return keygen;
    if (cl.report_command->parsed()) {
        if (cl.report_task_option->count() > 0) report.task = report_task;
        if (!report.plan_path.empty()) {
            std::ifstream in(report.plan_path);
            if (!in)
                throw ConfigError(fmt::format("--plan '{}': cannot read it: {}", printable(report.plan_path.string()),
                                              std::strerror(errno)));
            report.plan = std::make_shared<const Plan>(read_plan(in, report.plan_path.string(), program.registry));
        }
        return report;
    }
    if (cl.cancel_command->parsed()) return cancel;
    cl.resources.finish(config);
    config.resources_given = cl.resources.given();
    require_heartbeats(config.heartbeat_interval_s, config.heartbeat_timeout_s);
    for (auto name = modes.begin(); name != modes.end(); ++name)
        if (std::find(modes.begin(), name, *name) != name || (*name == "all" && modes.size() > 1))
            throw CLI::ValidationError(
                "--mode", fmt::format("'{}' names a mode twice (all is every mode): each mode runs once per run",
                                      fmt::join(modes, ",")));
    const bool processes =
        !config.listen.empty() || std::find_if(modes.begin(), modes.end(), [](const std::string& name) {
                                      return name == "processes" || name == "all";
                                  }) != modes.end();
    if (std::error_code ec; processes && std::filesystem::temp_directory_path(ec).empty()) {
        // The processes mode makes its socket directory there (libstdc++ also reads TMP, TEMP, TEMPDIR).
        const char* tmpdir = std::getenv("TMPDIR");
        throw CLI::ValidationError(
            "TMPDIR", fmt::format("cannot use TMPDIR '{}': {}", printable(tmpdir ? tmpdir : "", 200), ec.message()));
    }
    const bool stepped = launch == "slurm" || launch == "mpirun";
    if (cl.wait_option->count() > 0 && config.listen.empty() && !stepped && cl.alloc_option->count() == 0)
        throw CLI::ValidationError("--wait-workers",
                                   "is for remote workers: it needs --listen, --launch slurm|mpirun or --alloc slurm");
    if (cl.slurm_args_option->count() > 0 && launch != "slurm")
        throw CLI::ValidationError("--slurm-args", "goes to srun: it needs --launch slurm");
    if (cl.mpirun_args_option->count() > 0 && launch != "mpirun")
        throw CLI::ValidationError("--mpirun-args", "goes to mpirun: it needs --launch mpirun");
    // Remote workers (--alloc, --launch, --listen) are worker processes: only the processes mode
    // runs, and a --mode that names another is refused.
    const auto processes_only = [&](const std::string& what, std::string_view why) {
        for (const std::string& name : modes)
            if (name != "processes" && cl.mode_option->count() > 0)
                throw CLI::ValidationError("--mode", fmt::format("'{}' cannot run with {}: {}", name, what, why));
        modes = {"processes"};
    };
    if (cl.alloc_option->count() > 0) {
        AllocConfig& alloc_config = cl.alloc_config;
        if (cl.alloc_time_option->count() == 0)
            throw CLI::ValidationError("--alloc-time",
                                       "--alloc slurm needs each allocation's time limit, e.g. "
                                       "--alloc-time 30 (minutes) or --alloc-time 2:00:00");
        for (const CLI::Option* option : {cl.keys_option, cl.insecure_option, cl.expect_option})
            if (option->count() > 0)
                throw CLI::ValidationError(option->get_name(),
                                           "cannot go with --alloc slurm, which makes keys for the run and starts "
                                           "its workers itself");
        try {
            alloc_config.args = split_launcher_args(cl.alloc_args);
        } catch (const std::invalid_argument& e) {
            throw CLI::ValidationError(cl.alloc_args_option->get_name(),
                                       fmt::format("cannot split '{}': {}", printable(cl.alloc_args), e.what()));
        }
        processes_only("--alloc slurm", "its workers are worker processes, so only the processes mode runs");
        if (config.listen.empty()) config.listen = fmt::format("tcp://{}:*", first_non_loopback_address());
        if (cl.workers_option->count() == 0) config.workers = 0;
        alloc_config.give_up = std::chrono::milliseconds(static_cast<std::int64_t>(config.wait_workers_s * 1000));
        config.alloc = std::move(alloc_config);
    } else if (cl.launch_option->count() > 0 && stepped) {
        const StepLauncher launcher = launch == "slurm" ? StepLauncher::Slurm : StepLauncher::Mpirun;
        // The workers are remote workers that this coordinator starts, with keys of the run's own.
        for (const CLI::Option* option : {cl.keys_option, cl.insecure_option, cl.expect_option})
            if (option->count() > 0)
                throw CLI::ValidationError(option->get_name(),
                                           fmt::format("cannot go with --launch {}, which makes keys for the run "
                                                       "and waits for the --workers it starts",
                                                       launch));
        StepConfig step =
            launch_step(launcher, cl.workers_option->count() > 0 ? std::optional(config.workers) : std::nullopt,
                        launcher == StepLauncher::Slurm ? slurm_args : mpirun_args);
        step.pin = pin || !cpus.empty();
        config.workers = step.tasks;
        processes_only("--launch " + launch, "its workers are worker processes, so only the processes mode runs");
        if (config.listen.empty()) config.listen = fmt::format("tcp://{}:*", first_non_loopback_address());
        config.expect_workers = config.workers;
        config.step = std::move(step);
        config.workers = 0;
    } else if (!config.listen.empty()) {
        processes_only("--listen",
                       "remote workers are worker processes, so only the processes mode runs; "
                       "compare the modes without --listen");
        const auto endpoint = *curve::parse_tcp_endpoint(config.listen, /*wildcard_port=*/true);
        // Loopback too: any user of this machine can connect to a port on it.
        if (config.keys_dir.empty() && !config.insecure)
            throw CLI::ValidationError(
                "--listen", fmt::format("'{}' without --keys would hand tasks and results, unencrypted, to any "
                                        "peer that connects (on loopback, any user of this machine): give --keys "
                                        "DIR (see `coordinator keygen --help`), or --insecure where you trust them",
                                        config.listen));
    }
    if (config.workers == 0 && config.listen.empty())
        throw CLI::ValidationError("--workers",
                                   "0 starts no worker; 0 local workers needs --listen and remote "
                                   "workers");
    if (config.workers == 0 && config.expect_workers == 0 && !config.alloc)
        throw CLI::ValidationError("--expect-workers",
                                   fmt::format("--workers 0 starts no local worker: give --expect-workers M (M >= 1), "
                                               "the remote workers to wait for; got {}",
                                               cl.expect_option->count() > 0 ? "0" : "none"));

    for (const auto& [option, key] : cl.setting_flags)
        if (option->count() > 0) config.given_settings.emplace_back(option->get_name(), key);
    for (const TypeFlag& flag : type_flags)
        if (flag.option->count() > 0 && !flag.declared.key.empty())
            config.given_settings.emplace_back(flag.option->get_name(), flag.declared.key);
    config.task = task;
    if (cl.tasks_option->count() == 0)
        if (const std::uint64_t count = registry.at(task).traits().default_count; count > 0)
            config.tasks = static_cast<int>(count);
    config.max_worker_memory = *parse_size(max_worker_memory);
    if (cl.retries_option->count() > 0) set_retries(config, cl.retries);
    config.output = output == "tag"     ? OutputBlocks::Tag
                    : output == "none"  ? OutputBlocks::None
                    : output == "plain" ? OutputBlocks::Plain
                                        : OutputBlocks::Group;
    if (cl.output_option->count() == 0 && registry.at(task).traits().plain_output) config.output = OutputBlocks::Plain;
    config.modes_given = cl.mode_option->count() > 0;
    config.prefetch = prefetch == "auto" ? 0 : parse_whole<int>(prefetch).value_or(0);  // checked by kPrefetch
    if (!cpus.empty())
        config.pin_cpus = parse_cpu_list(cpus);
    else if (pin)
        config.pin_cpus = allowed_cpus();
    config.modes.clear();
    for (const std::string& name : modes) {
        if (name == "all") {
            config.modes.assign(std::begin(kAllModes), std::end(kAllModes));
            break;
        }
        config.modes.push_back(*parse_mode(name));
    }
    config.progress = progress == "always"  ? ProgressMode::Always
                      : progress == "never" ? ProgressMode::Never
                                            : ProgressMode::Auto;
    if (quiet) {
        config.log_level = "warn";
        if (cl.progress_option->count() == 0) config.progress = ProgressMode::Never;
    }
    if (verbose > 0) config.log_level = verbose > 1 ? "trace" : "debug";
    return config;
}

}  // namespace

ParsedCli parse_cli(const ProgramInfo& program, int argc, const char* const* argv) {
    if (argc > 1 && std::string_view(argv[1]) == "parallel") return parse_parallel(program, argc - 1, argv + 1);
    CommandLine cl;
    RunConfig& config = cl.config;
    config.worker_bin = program.worker.path;
    config.worker_prefix = program.worker.prefix;
    config.worker_command = worker_command(program);
    config.workers = available_cpus();
    config.command_line.assign(argv, argv + argc);
    cl.task = default_task(program);
    CLI::App app{
        fmt::format("{}: runs one plan of tasks sequentially, on a pool of threads and on a pool of worker processes,\n"
                    "prints each result as it completes, then compares the modes' wall times. Task types: {}.\n",
                    program.name, program.registry.names_text())};
    app.set_version_flag("--version", fmt::format("{} (taskfarm {})", program.name, version()));
    app.get_formatter()->column_width(34);
    add_task_options(app, cl, program);
    add_mode_options(app, cl, program);
    add_output_options(app, cl);
    add_health_options(app, cl);
    add_remote_options(app, cl);
    add_subcommands(app, cl);
    add_footer(app, program);
    try {
        app.parse(argc, argv);
        return decide(cl, program);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? ExitCode::Ok : ExitCode::Usage;
    }
}

}  // namespace taskfarm
