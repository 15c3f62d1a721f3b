#include "cli.hpp"

#include <sched.h>

#include <algorithm>
#include <charconv>
#include <cmath>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "affinity.hpp"
#include "dispatcher.hpp"
#include "log.hpp"

namespace taskfarm {
namespace {

constexpr std::string_view kModeNames[] = {"sequential", "threads", "gil-threads", "processes"};

std::optional<double> parse_seconds(std::string_view text) {
    double value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size() || !std::isfinite(value) || value < 0) return std::nullopt;
    return value;
}

// "0.5" -> {0.5, 0.5}; "1:10" -> {1, 10}.
std::optional<std::pair<double, double>> parse_duration(std::string_view text) {
    const auto colon = text.find(':');
    if (colon == std::string_view::npos) {
        const auto seconds = parse_seconds(text);
        if (!seconds) return std::nullopt;
        return std::pair{*seconds, *seconds};
    }
    const auto lo = parse_seconds(text.substr(0, colon));
    const auto hi = parse_seconds(text.substr(colon + 1));
    if (!lo || !hi || *lo > *hi) return std::nullopt;
    return std::pair{*lo, *hi};
}

const CLI::Validator kDuration(
    [](std::string& text) -> std::string {
        return parse_duration(text) ? "" : fmt::format("'{}' is not SECONDS or LO:HI with 0 <= LO <= HI", text);
    },
    "SECONDS|LO:HI");

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
                    return fmt::format("CPU {} in '{}' is not one this process may use (it may use {})", cpu,
                                       text, format_cpu_list(allowed));
            return "";
        } catch (const std::invalid_argument& e) {
            return fmt::format("bad CPU list '{}': {}", text, e.what());
        }
    },
    "LIST");

}  // namespace

std::string_view to_string(Mode mode) { return kModeNames[static_cast<int>(mode)]; }

std::optional<Mode> parse_mode(std::string_view name) {
    for (Mode mode : kAllModes)
        if (to_string(mode) == name) return mode;
    return std::nullopt;
}

int available_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    return std::max(1, CPU_COUNT(&set));
}

std::variant<RunConfig, ExitCode> parse_cli(int argc, const char* const* argv) {
    RunConfig config;
    config.workers = available_cpus();
    config.command_line.assign(argv, argv + argc);
    std::string task = "sleep";
    std::string duration = "1";
    std::vector<std::string> modes{"sequential", "threads", "processes"};
    std::string cpus;
    bool pin = false;

    CLI::App app{
        "taskfarm coordinator: runs one plan of tasks sequentially, on a pool of threads and on a pool of\n"
        "worker processes, prints each result as it completes, then compares the modes' wall times.\n"};
    app.get_formatter()->column_width(34);
    app.add_option("-w,--workers", config.workers, "worker processes (and threads) to run tasks on")
        ->check(CLI::Range(1, 1024))
        ->capture_default_str();
    auto* task_option =
        app.add_option("-t,--task", task, "task kind: sleep (waits --duration) or cpu (counts primes, see --cpu-n)")
            ->check(CLI::IsMember({"sleep", "cpu"}))
            ->capture_default_str();
    auto* tasks_option = app.add_option("-n,--tasks", config.tasks, "number of tasks in the plan")
                             ->check(CLI::Range(1, 100'000'000))
                             ->capture_default_str();
    auto* duration_option =
        app.add_option("-d,--duration", duration,
                       "sleep: seconds per task, or LO:HI for a uniformly random duration per task (see --seed)")
            ->check(kDuration)
            ->capture_default_str();
    auto* cpu_n_option =
        app.add_option("--cpu-n", config.cpu_n,
                       "cpu: numbers per task; task i counts the primes in [i*N, (i+1)*N). The default takes\n"
                       "about 0.5 s of CPU per task on a current x86 core")
            ->check(CLI::Range(std::uint64_t{1}, kMaxPrimeLimit))
            ->capture_default_str();
    app.add_option("--plan", config.plan_path,
                   "run the tasks in FILE instead: JSON Lines, one task per line, e.g. {\"kind\":\"sleep\",\n"
                   "\"seconds\":0.5} or {\"kind\":\"cpu\",\"n\":2000000} (primes below n; or \"lo\" and \"hi\");\n"
                   "\"timeout_s\" on any line sets that task's timeout; {\"kind\":\"fail\"} and {\"kind\":\"crash\"} inject faults\n"
                   "(see docs/reliability.md); blank lines and lines starting with # are skipped; a bad line stops\n"
                   "the run before it starts")
        ->type_name("FILE")
        ->excludes(task_option)
        ->excludes(tasks_option)
        ->excludes(duration_option)
        ->excludes(cpu_n_option);
    app.add_option("--seed", config.seed, "seed for random task parameters; the same seed gives the same plan")
        ->capture_default_str();
    app.add_option("-m,--mode", modes,
                   "comma-separated modes to run, in order: sequential (one thread), threads (a pool of --workers\n"
                   "threads in the coordinator), gil-threads (the same pool, but a task must hold one global lock\n"
                   "while it computes and lets go while it sleeps, like CPython's GIL: sleeps overlap, computing\n"
                   "does not), processes (--workers worker processes over ZeroMQ), or all (all four)")
        ->delimiter(',')
        ->check(kModeList)
        ->capture_default_str();
    app.add_flag("--pin", pin, "pin worker process (or thread) i to one CPU, going round the CPUs this process\n"
                               "may use; sequential runs on the first");
    app.add_option("--cpus", cpus, "CPUs to pin to, e.g. 0-3,6 (implies --pin); each must be one this process may\n"
                                    "use (sched_getaffinity, see taskset)")
        ->check(kCpuList);
    std::string prefetch = "auto";
    app.add_option("--prefetch", prefetch,
                   fmt::format("the most tasks a worker process may hold at once, K (1 to 10000) or auto ({}).\n"
                               "It holds one until the tasks' times are known, then as many as take about {:g} ms;\n"
                               "short tasks travel in batches, and a long task never has others waiting behind it",
                               kMaxWindow, std::chrono::duration<double, std::milli>(kQueueBudget).count()))
        ->check(kPrefetch)
        ->capture_default_str();
    app.add_option("--worker-bin", config.worker_bin, "worker executable (default: `worker` next to this binary)");
    app.add_option("--json", config.json_path, "write the report as JSON to FILE")->type_name("FILE");
    app.add_option("--results", config.results_path,
                   "append one JSON line per finished task to FILE, flushed as each arrives")
        ->type_name("FILE");
    app.add_option("--resume", config.resume_path,
                   "resume from the journal FILE of an earlier run of the same plan: skip the tasks it records as\n"
                   "ok (per mode), run the rest and append their lines to FILE")
        ->type_name("FILE");
    app.add_option("--heartbeat-interval", config.heartbeat_interval_s, "seconds between heartbeats, both ways")
        ->check(CLI::Range(0.001, 3600.0))
        ->capture_default_str();
    app.add_option("--heartbeat-timeout", config.heartbeat_timeout_s,
                   "a worker (or coordinator) silent this long is dead")
        ->check(CLI::Range(0.01, 86400.0))
        ->capture_default_str();
    app.add_option("--start-timeout", config.start_timeout_s, "seconds to wait for every worker's HELLO")
        ->check(CLI::Range(0.1, 3600.0))
        ->capture_default_str();
    app.add_option("--task-timeout", config.task_timeout_s,
                   "a task running longer than this many seconds fails with \"timed out\" (not retried);\n"
                   "0: no limit. A plan line's \"timeout_s\" overrides it for that task")
        ->check(CLI::Range(0.0, 31'536'000.0))
        ->capture_default_str();
    app.add_option("--max-attempts", config.max_attempts,
                   "tries per task when its worker dies or goes silent under it; then the task fails")
        ->check(CLI::Range(1, 100))
        ->capture_default_str();
    app.add_option("--max-respawns", config.max_respawns, "replacement workers to start, per mode, for ones that died")
        ->check(CLI::Range(0, 100'000))
        ->capture_default_str();
    std::string progress = "auto";
    bool quiet = false;
    int verbose = 0;
    auto* progress_option =
        app.add_option("--progress", progress,
                       "progress on stderr: auto (a bar redrawn in place if stderr is a terminal, else a log line\n"
                       "every few seconds), always (the bar, even into a pipe) or never")
            ->check(CLI::IsMember({"auto", "always", "never"}))
            ->capture_default_str();
    auto* quiet_flag = app.add_flag("-q,--quiet", quiet,
                                    "only warnings and errors on stderr, no progress; stdout is unchanged");
    auto* verbose_flag =
        app.add_flag("-v,--verbose", verbose, "debug logs on stderr, the worker processes' included; -vv: trace");
    auto* level_option =
        app.add_option("--log-level", config.log_level, "log level on stderr, worker processes included (default: info,\n"
                                                        "or SPDLOG_LEVEL)")
            ->check(CLI::IsMember(std::vector<std::string>(std::begin(kLogLevels), std::end(kLogLevels))));
    quiet_flag->excludes(verbose_flag)->excludes(level_option);
    verbose_flag->excludes(level_option);
    app.add_option("--trace", config.trace_path,
                   "write the run as Chrome trace-event JSON to FILE (open it in ui.perfetto.dev or\n"
                   "chrome://tracing): a process per mode, a thread per worker, an event per task attempt")
        ->type_name("FILE");
    app.add_option("--timeline", config.timeline_path,
                   "draw the run as an SVG timeline to FILE: a panel per mode on one time axis, a lane per\n"
                   "worker or thread, a bar per task")
        ->type_name("FILE.svg");
    app.footer(
        "The table: speedup = sequential wall_s / wall_s; efficiency = speedup / workers; cpu_s = user + system\n"
        "CPU seconds, worker processes included; cpus = CPUs the mode could use (its pinned CPUs, else\n"
        "min(workers, CPUs available)); util = cpu_s / (wall_s x cpus).\n"
        "Exit status: 0 every task ok, 1 some task failed (or an output file could not be written), 2 bad usage,\n"
        "130/143 interrupted by SIGINT/SIGTERM.\n"
        "Examples: coordinator --workers 4 --task sleep --tasks 8 --duration 0.5\n"
        "          coordinator --workers 2 --task cpu --tasks 8 --mode all --pin");

    try {
        app.parse(argc, argv);
        if (task == "cpu" && config.cpu_n > kMaxPrimeLimit / static_cast<std::uint64_t>(config.tasks))
            throw CLI::ValidationError(
                "--cpu-n", fmt::format("{} tasks of {} numbers go beyond the largest number, {}; lower --cpu-n",
                                       config.tasks, config.cpu_n, kMaxPrimeLimit));
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? ExitCode::Ok : ExitCode::Usage;
    }

    config.task = *parse_task_kind(task);
    config.prefetch = prefetch == "auto" ? 0 : std::stoi(prefetch);
    if (!cpus.empty())
        config.pin_cpus = parse_cpu_list(cpus);
    else if (pin)
        config.pin_cpus = allowed_cpus();
    std::tie(config.duration_lo_s, config.duration_hi_s) = *parse_duration(duration);
    config.modes.clear();
    for (const std::string& name : modes) {
        if (name == "all") {
            config.modes.assign(std::begin(kAllModes), std::end(kAllModes));
            break;
        }
        config.modes.push_back(*parse_mode(name));
    }
    config.progress = progress == "always" ? ProgressMode::Always
                      : progress == "never"  ? ProgressMode::Never
                                             : ProgressMode::Auto;
    if (quiet) {
        config.log_level = "warn";
        if (progress_option->count() == 0) config.progress = ProgressMode::Never;
    }
    if (verbose > 0) config.log_level = verbose > 1 ? "trace" : "debug";
    return config;
}

}  // namespace taskfarm
