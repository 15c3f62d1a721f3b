#include "coordinator.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <set>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "affinity.hpp"
#include "cli.hpp"
#include "control.hpp"
#include "curve.hpp"
#include "dispatcher.hpp"
#include "journal.hpp"
#include "journal_report.hpp"
#include "live_view.hpp"
#include "log.hpp"
#include "outputs.hpp"
#include "parallel_output.hpp"
#include "plan_sources.hpp"
#include "progress.hpp"
#include "run_session.hpp"
#include "service.hpp"
#include "modes.hpp"
#include "signals.hpp"
#include "sinks.hpp"
#include "temp_dirs.hpp"
#include "text.hpp"
#include "pictures.hpp"

namespace taskfarm {
namespace {

void check_worker_bin(const RunConfig& config) {
    if (runs_processes(config) && ::access(config.worker_bin.c_str(), X_OK) != 0)
        throw ConfigError(
            fmt::format("--worker-bin: cannot run '{}': {}", config.worker_bin.string(), std::strerror(errno)));
}

// What the run will do that the user may not expect, said once the modes are decided.
void warn_config(const RunConfig& config) {
    const bool pool =
        std::any_of(config.modes.begin(), config.modes.end(), [](Mode m) { return m != Mode::Sequential; });
    if (pool && !config.pin_cpus.empty() && std::cmp_greater(config.workers, config.pin_cpus.size()))
        spdlog::warn("{} workers on {} CPU(s) ({}): pinning round-robin, so some share a CPU", config.workers,
                     config.pin_cpus.size(), format_cpu_list(config.pin_cpus));
    if ((config.max_tasks_per_worker > 0 || config.max_worker_memory > 0) &&
        std::any_of(config.modes.begin(), config.modes.end(), [](Mode m) { return m != Mode::Processes; }))
        spdlog::warn(
            "--max-tasks-per-worker and --max-worker-memory recycle worker processes: in the sequential and "
            "threads modes, whose tasks run in the coordinator's own threads, they do nothing");
}

// A bad report path, or a file given twice, fails before the run, not after it.
void check_files(const RunConfig& config) {
    for (const auto& [flag, path] : {std::pair<const char*, const std::filesystem::path&>{"--json", config.json_path},
                                     {"--trace", config.trace_path},
                                     {"--timeline", config.timeline_path}})
        check_report_path(flag, path);
    for (const auto& [flag, path] :
         {std::pair<const char*, const std::filesystem::path&>{"--results", config.results_path},
          {"--resume", config.resume_path}})
        if (path == "-")
            throw ConfigError(
                fmt::format("{}: cannot append a journal to '-': it must be a file that --resume can "
                            "read back and lock",
                            flag));
    for (const auto& [flag, path] :
         {std::pair<const char*, const std::filesystem::path&>{"--results", config.results_path},
          {"--resume", config.resume_path}})
        check_journal_path(flag, path);
    using Role = NamedFile::Role;
    // Every file the run reads against every file it writes (decision 120).
    check_distinct({{"--plan", config.plan_path, Role::Input},
                    {config.inputs_flag.c_str(), config.inputs_path, Role::Input},  // or a type's flag that is it
                    {"--worker-bin", config.worker_bin, Role::Input},
                    {"--resume", config.resume_path, Role::Journal},
                    {"--results", config.results_path},
                    {"--json", config.json_path},
                    {"--trace", config.trace_path},
                    {"--timeline", config.timeline_path},
                    {"standard output", {}, Role::Console, STDOUT_FILENO},
                    {"standard error", {}, Role::Console, STDERR_FILENO}});
    if (!config.resume_path.empty() && !config.results_path.empty() &&
        !same_file(config.resume_path, config.results_path))
        throw ConfigError(fmt::format("--resume '{}' appends to that journal; --results '{}' names another file",
                                      printable(config.resume_path.string()), printable(config.results_path.string())));
}

// Whether a report goes to stdout: then it must be all that is there, and the result lines
// and the table go to stderr.
bool report_on_stdout(const RunConfig& config) {
    const std::filesystem::path* reports[] = {&config.json_path, &config.trace_path, &config.timeline_path};
    return std::any_of(std::begin(reports), std::end(reports),
                       [](const std::filesystem::path* path) { return !path->empty() && is_stdout(*path); });
}

// The peak memory per result of --trace (the results kept, then the trace built from them)
// and of --timeline alone, measured at 200,000 results (bench/README.md).
constexpr std::size_t kTraceBytesPerResult = 2400;
constexpr std::size_t kTimelineBytesPerResult = 1000;
// The most results they keep in all (tasks x modes): about 570 MiB with --trace.
constexpr std::size_t kMaxRecordedResults = 250'000;

// --trace and --timeline keep every result of every mode in memory, by design: said before
// the run, and refused past kMaxRecordedResults when the plan's size is known. A plan read
// from standard input as the run goes is drawn up to that many results.
void check_recording(const RunConfig& config, const Plan& plan) {
    if (config.trace_path.empty() && config.timeline_path.empty()) return;
    const char* flag = config.trace_path.empty() ? "--timeline" : "--trace";
    const std::size_t per_result = config.trace_path.empty() ? kTimelineBytesPerResult : kTraceBytesPerResult;
    const auto count = plan.known_count();
    if (!count) {
        spdlog::info("{}: keeps every result in memory (about {} bytes each), the first {} at most", flag, per_result,
                     kMaxRecordedResults);
        return;
    }
    const std::uint64_t results = *count * config.modes.size();
    const double mib = static_cast<double>(results * per_result) / (1 << 20);
    if (results > kMaxRecordedResults)
        throw ConfigError(
            fmt::format("{}: would keep every result in memory: {} tasks x {} mode(s), about {:.0f} MiB; "
                        "it draws at most {} results (a smaller --tasks, or fewer --mode)",
                        flag, *count, config.modes.size(), mib, kMaxRecordedResults));
    if (mib >= 16)
        spdlog::info("{}: keeps every result in memory: about {:.0f} MiB for {} results", flag, mib, results);
}

// A flag that no type of the plan reads (neither declares it in flags() nor lists its setting
// in settings_read()) is most likely a mistake (a type's flag given for a plan of other types):
// said, not silently ignored. Not refused: scripts/sweep passes the same types' flags to runs of every type.
void warn_unread_settings(const RunConfig& config, const std::vector<const TaskType*>& types) {
    for (const auto& [flag, key] : config.given_settings) {
        if (key == "retries") continue;  // the engine reruns failed tasks of every other type (--retries)
        const bool read = std::any_of(types.begin(), types.end(), [&key = key](const TaskType* type) {
            const TaskTraits traits = type->traits();
            std::vector<std::string> keys = traits.settings_read;
            for (const Flag& declared : type->flags()) keys.push_back(declared.key);
            return key == "out_dir" ? traits.writes_files : std::find(keys.begin(), keys.end(), key) != keys.end();
        });
        if (read) continue;
        std::string names;
        for (const TaskType* type : types) names += (names.empty() ? "" : ", ") + type->name();
        spdlog::warn("{}: no task of this plan uses it (its task types: {}); it is for {}", flag, names,
                     key == "out_dir" ? "types that save files (see --task)" : "other task types");
    }
}

// The modes a run takes without --mode (decision 127), decided here alone: the comparison of
// the modes is the tutorial's lesson, the default for a plan of the built-in demo types only;
// a user's work (a program's own types, a type with side effects) runs once, in processes, so that its
// journal, table and report hold one mode. With --mode given, a type whose tasks have side
// effects gets a warning when several modes will each run every task.
std::vector<Mode> choose_modes(const RunConfig& config, const std::vector<const TaskType*>& types,
                               const Registry& registry) {
    // Resources are handed out by the processes mode alone (docs/resources.md).
    const bool after = config.after_asked->load();
    const bool asked = !config.task_resources.empty() || config.resources_asked->load() || after;
    if (asked && config.modes_given &&
        std::any_of(config.modes.begin(), config.modes.end(), [](Mode mode) { return mode != Mode::Processes; }))
        throw ConfigError(
            fmt::format("--mode: tasks of this plan {}, which only the processes mode {}: give --mode processes",
                        after ? "wait for others (a plan line's \"after\")"
                              : "ask for resources (--task-resources or a plan line's \"resources\")",
                        after ? "orders" : "hands out"));
    if (asked || config.resources_given) return config.modes_given ? config.modes : std::vector<Mode>{Mode::Processes};
    if (!config.modes_given) {
        const bool demo = std::all_of(types.begin(), types.end(), [&](const TaskType* type) {
            return registry.builtin(type) && !type->traits().side_effects;
        });
        return demo ? config.modes : std::vector<Mode>{Mode::Processes};
    }
    const auto acting =
        std::find_if(types.begin(), types.end(), [](const TaskType* type) { return type->traits().side_effects; });
    if (acting != types.end() && config.modes.size() > 1)
        spdlog::warn("--mode: each of the {} modes runs every {} task again, side effects and all", config.modes.size(),
                     (*acting)->name());
    return config.modes;
}

// The setting `key` as the command line gives it: a type's flag ("--times") or "--set KEY".
std::string setting_flag(const std::string& key, const Registry& registry) {
    for (const auto& type : registry.types())
        for (const Flag& flag : type->flags())
            if (flag.key == key) return flag.name.substr(flag.name.rfind(',') + 1);
    return "--set " + key;
}

void check_resume_settings(const std::filesystem::path& journal, const Json& identity, const Registry& registry) {
    const auto changed = changed_setting(journal, identity, "--resume");
    if (!changed) return;
    const auto shown = [](const Json& value) { return value.is_null() ? std::string("not given") : value.dump(); };
    throw ConfigError(
        fmt::format("--resume: {} is {} now, but the journal's results were made with {} ({}): resume with the same "
                    "value, or write a new journal (--results)",
                    setting_flag(changed->key, registry), printable(shown(changed->now)),
                    printable(shown(changed->then)), changed->where));
}

// --out-dir/<mode>/ for every mode, made before the run when a type of the plan saves files,
// so that a bad --out-dir stops it with exit 2 rather than failing every task.
void make_out_dirs(const RunConfig& config, const std::vector<const TaskType*>& types) {
    if (std::none_of(types.begin(), types.end(), [](const TaskType* type) { return type->traits().writes_files; }))
        return;
    for (Mode mode : config.modes) {
        const std::filesystem::path dir = config.out_dir / to_string(mode);
        std::error_code ec;
        std::filesystem::create_directories(dir, ec);
        if (ec)
            throw ConfigError(fmt::format("--out-dir: cannot create directory '{}': {}", dir.string(), ec.message()));
        if (::access(dir.c_str(), W_OK | X_OK) != 0)
            throw ConfigError(fmt::format("--out-dir: cannot write into '{}': {}", dir.string(), std::strerror(errno)));
    }
    spdlog::info("saving files into '{}'", (std::filesystem::absolute(config.out_dir) / "<mode>").string());
}

// argv as one shell-quoted line, argv[0] without its directory, so pictures of a run carry
// no machine-specific path of the binary.
std::string command_text(const std::vector<std::string>& argv) {
    std::string text;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        std::string arg = i == 0 ? std::filesystem::path(argv[0]).filename().string() : argv[i];
        const bool plain = !arg.empty() && arg.find_first_not_of(
                                               "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                                               "0123456789_-+=.,:/@%") == std::string::npos;
        if (!plain) {
            std::string quoted = "'";
            for (char c : arg) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
            arg = quoted + "'";
        }
        if (i > 0) text += ' ';
        text += arg;
    }
    return text;
}

// Writes --trace and --timeline from what the run recorded; tries both, then throws
// ConfigError for the first that failed.
void write_pictures(const RunConfig& config, std::vector<ModeRecording> modes, const std::vector<RunReport>& reports) {
    for (std::size_t i = 0; i < modes.size() && i < reports.size(); ++i)
        if (modes[i].mode == reports[i].mode) modes[i].report = reports[i];
    const std::string command = command_text(config.command_line);
    std::string error;
    const auto write = [&](const char* flag, const std::filesystem::path& path, const auto& render) {
        if (path.empty()) return;
        try {
            write_report(path, render());
        } catch (const std::exception& e) {
            if (error.empty())
                error = fmt::format("{}: {}", flag, e.what());
            else
                spdlog::error("{}: {}", flag, e.what());
        }
    };
    write("--trace", config.trace_path, [&] {
        // Replace, not throw, on bytes that are not UTF-8: an error text may hold anything.
        return trace_json(modes, command).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    });
    write("--timeline", config.timeline_path, [&] { return timeline_svg(modes, "taskfarm: " + command); });
    if (!error.empty()) throw ConfigError(error);
}

nlohmann::json config_json(const RunConfig& config, const Plan& plan) {
    nlohmann::json modes = nlohmann::json::array();
    for (Mode mode : config.modes) modes.push_back(to_string(mode));
    const auto count = plan.known_count();
    return {
        {"workers", config.workers},
        {"tasks", count ? nlohmann::json(*count) : nlohmann::json(nullptr)},
        {"plan", config.plan_path.empty() ? nlohmann::json(nullptr) : nlohmann::json(config.plan_path.string())},
        {"seed", config.seed},
        {"modes", modes},
        {"prefetch", config.prefetch > 0 ? nlohmann::json(config.prefetch) : nlohmann::json("auto")},
        {"max_in_flight", config.prefetch > 0 ? static_cast<std::size_t>(config.prefetch) : kMaxWindow},
        {"pin_cpus", config.pin_cpus},
        {"inputs", config.inputs_path.empty() ? nlohmann::json(nullptr) : nlohmann::json(config.inputs_path.string())},
        {"settings", config.settings},
        {"out_dir", config.out_dir.string()},
        {"retries", config.retries ? nlohmann::json(*config.retries) : nlohmann::json(nullptr)},
        {"task_retries", config.task_retries},
        {"max_tasks_per_worker", config.max_tasks_per_worker},
        {"max_worker_memory", config.max_worker_memory},
        {"drain_timeout_s", config.drain_timeout_s},
        {"command", config.command_line},
        {"listen", config.listen.empty() ? nlohmann::json(nullptr) : nlohmann::json(config.listen)},
        {"expect_workers", config.expect_workers},
        {"alloc", config.alloc ? nlohmann::json{{"scheduler", "slurm"},
                                                {"max_allocs", config.alloc->max_allocs},
                                                {"workers", config.alloc->workers},
                                                {"time_limit", config.alloc->time_limit},
                                                {"args", config.alloc->args}}
                               : nlohmann::json(nullptr)},
    };
}

void write_json(const RunConfig& config, const Plan& plan, const std::vector<RunReport>& reports) {
    // The type of every task in the plan, or "mixed".
    const std::vector<const TaskType*>& types = plan.types;
    nlohmann::json runs = nlohmann::json::array();
    for (const RunReport& report : reports) runs.push_back(report_json(reports, report));
    const nlohmann::json document = {
        {"version", 1},
        {"task", types.size() == 1 ? types.front()->name() : "mixed"},
        {"config", config_json(config, plan)},
        {"runs", runs},
    };
    write_report(config.json_path, document.dump(2) + "\n");
}

// The table, the placement and the failure summary, as printed after the run. Errors and
// worker names come from other processes: each is made printable, each failure one line.
std::string summary_text(const std::vector<RunReport>& reports) {
    std::string text = "\n" + printable_lines(format_table(reports), std::string::npos);
    if (const std::string cost = format_cost_table(reports); !cost.empty()) text += "\n" + cost;
    if (const std::string placement = format_placement(reports); !placement.empty())
        text += "\nplacement (worker -> cpu, pid):\n" + printable_lines(placement, std::string::npos);
    for (const RunReport& report : reports) {
        if (report.failures.empty()) continue;
        text += fmt::format("{} task(s) failed in {}:\n", report.failures.size(), report.mode);
        for (const Failure& failure : report.failures)
            text += fmt::format("  task {}: {}\n", failure.id, printable(failure.error));
        if (report.failed > report.failures.size())
            text += fmt::format("  ... and {} more (every failure is in the journal, --results FILE)\n",
                                report.failed - report.failures.size());
    }
    for (const RunReport& report : reports) {
        if (report.retried > 0)
            text += fmt::format("{}: {} failed attempt(s) ran again (--retries)\n", report.mode, report.retried);
        if (report.recycled > 0)
            text += fmt::format("{}: {} worker(s) recycled (--max-tasks-per-worker, --max-worker-memory)\n",
                                report.mode, report.recycled);
    }
    return text;
}

ExitCode exit_code(int signal, const std::vector<RunReport>& reports, const std::vector<std::string>& output_errors) {
    switch (signal) {
        case SIGHUP: return ExitCode::HungUp;
        case SIGINT: return ExitCode::Interrupted;
        case SIGQUIT: return ExitCode::Quit;
        case SIGPIPE: return ExitCode::BrokenPipe;
        case SIGTERM: return ExitCode::Terminated;
        default: break;
    }
    // A bad line of standard input, found as the run read it: bad input, as it would have
    // been before the run; the tasks before it ran and are in the table and the journal.
    for (const RunReport& report : reports)
        if (!report.plan_error.empty()) {
            spdlog::error("{} (the run stopped there: the tasks after it did not run)", report.plan_error);
            return ExitCode::Usage;
        }
    const bool failed = std::any_of(reports.begin(), reports.end(), [](const RunReport& r) { return r.failed > 0; });
    return failed || !output_errors.empty() ? ExitCode::TasksFailed : ExitCode::Ok;
}

// --ui: the page stays up after the run, for `linger_s` seconds (< 0: until a signal). Any
// stop signal now ends only this, at once: the run is over and its exit status stands.
void linger(const LiveView& live, double linger_s, SignalWatcher& signals) {
    signals.run_over();
    const std::stop_token stop = signals.drain_token();  // a stop is a drain too
    if (linger_s == 0) return;
    fmt::print(stderr, "live view: the run is over; still serving {} {}\n", live.url(),
               linger_s < 0 ? std::string("until Ctrl-C") : fmt::format("for {:g} s (--ui-linger)", linger_s));
    std::mutex mutex;
    std::condition_variable_any never;
    std::unique_lock lock(mutex);
    if (linger_s < 0)
        never.wait(lock, stop, [] { return false; });
    else
        never.wait_for(lock, stop, std::chrono::duration<double>(linger_s), [] { return false; });
}

// The run decided (decision 163): the command line's configuration, checked, with what only
// the plan tells (the modes without --mode, decision 127) and what the files say (the keys);
// the plan, and the settings every task sees. Nothing changes the configuration after this.
struct DecidedRun {
    RunConfig config;
    Plan plan;
    Json settings;
    std::unique_ptr<ParallelOutput> plain_output;  // --output plain's, with its spill directory; null: not plain
};

// On the heap, where it stays: the plan's cursors keep pointers to the configuration.
std::unique_ptr<DecidedRun> decide_run(const ProgramInfo& program, RunConfig given) {
    auto decided = std::make_unique<DecidedRun>();
    decided->config = std::move(given);
    RunConfig& config = decided->config;
    if (!config.log_level.empty()) set_log_level(config.log_level);
    config.server_keys = read_keys(config);
    check_worker_bin(config);
    check_files(config);
    // A type's services (TaskType::prepare's) bind now; their threads start after the
    // SignalWatcher, like every thread.
    Json& settings = decided->settings;
    settings = settings_json(config);
    // --output plain with local workers: a task's stream longer than a result holds comes
    // whole through a file of this directory, as with `coordinator parallel`.
    std::unique_ptr<ParallelOutput>& plain_output = decided->plain_output;
    if (config.output == OutputBlocks::Plain && !config.parallel) plain_output = std::make_unique<ParallelOutput>();
    if (plain_output && config.listen.empty() && !config.step) {
        std::error_code ec;
        const std::filesystem::path base = std::filesystem::temp_directory_path(ec);
        try {
            plain_output->spool_dir = make_temp_dir(ec ? std::filesystem::path("/tmp") : base, "plain");
            settings["spill_dir"] = plain_output->spool_dir.string();
        } catch (const std::system_error& e) {
            spdlog::warn("no temporary directory ({}): a task's output longer than a result holds is cut", e.what());
        }
    }
    decided->plan = make_plan(config, program.registry, settings);
    const Plan& plan = decided->plan;
    if (config.out_dir.empty()) config.out_dir = default_out_dir(plan.types);
    warn_unread_settings(config, plan.types);
    config.modes = choose_modes(config, plan.types, program.registry);
    warn_config(config);
    return decided;
}

// The journal the run appends to: --resume's, else --results' (check_files: the same file
// when both); empty: none.
const std::filesystem::path& journal_path(const RunConfig& config) {
    return config.resume_path.empty() ? config.results_path : config.resume_path;
}

// Standard input can be read once: kept in a private temporary file for the modes after the
// first, and read whole before the run for --resume, which checks the journal against the
// whole plan (disk, not memory, either way).
void keep_stdin(const RunConfig& config, Plan& plan) {
    if (!plan.stdin_spool) return;
    if (!config.resume_path.empty()) {
        plan.stdin_spool->read_all();
        count_tasks(plan);
    } else if (config.modes.size() > 1) {
        plan.stdin_spool->keep();
    }
}

// Locked before --resume reads (and may repair) the journal, so that no other run appends to
// it between the reading and the writing.
std::unique_ptr<JournalSink> open_journal(const RunConfig& config) {
    if (journal_path(config).empty()) return nullptr;
    try {
        return std::make_unique<JournalSink>(journal_path(config), /*create=*/config.resume_path.empty());
    } catch (const ConfigError& e) {
        throw ConfigError(fmt::format("{}: {}", config.resume_path.empty() ? "--results" : "--resume", e.what()));
    }
}

// --resume of a plan with "after": the tasks ok in the journal that run again because a task
// they wait for does (rerun_dependents(), outputs/journal.hpp, which `report --plan` asks too).
// The journal says which ({"event":"rerun"}), so that their next ok line is theirs.
void rerun_dependents_per_mode(const Plan& plan, Done& done, JournalSink* journal) {
    for (auto& [mode, ids] : done) {
        const std::vector<TaskId> again = rerun_dependents(plan, ids);
        if (again.empty()) continue;
        nlohmann::json ranges = nlohmann::json::array();  // [[first, last], ...] of those run again
        for (const TaskId id : again) {
            if (!ranges.empty() && ranges.back()[1].get<TaskId>() + 1 == id)
                ranges.back()[1] = id;
            else
                ranges.push_back({id, id});
        }
        spdlog::info("{}: {} task(s) ok in the journal run again: a task they wait for (\"after\") runs again", mode,
                     again.size());
        if (journal) journal->note_rerun(mode, ranges);
    }
}

// --resume: the tasks the journal has as ok, per mode, after checking that it was written
// under the same settings; the journal notes this run's settings when there are any.
Done resume_from_journal(const RunConfig& config, const Registry& registry, const Plan& plan, JournalSink* journal) {
    const Json identity = result_settings(config, registry, plan.types);
    if (!config.resume_path.empty()) check_resume_settings(config.resume_path, identity, registry);
    Done done = config.resume_path.empty() ? Done{} : read_journal_for_resume(config.resume_path, plan);
    if (!done.empty() && config.after_asked->load()) rerun_dependents_per_mode(plan, done, journal);
    if (journal && !identity.empty()) journal->note_settings(std::string(to_string(config.modes.front())), identity);
    if (!config.resume_path.empty() && std::all_of(config.modes.begin(), config.modes.end(), [&](Mode m) {
            const auto found = done.find(std::string(to_string(m)));
            return (found == done.end() ? 0 : found->second.size()) == plan.count;
        }))
        fmt::print(stderr, "nothing to do: all {} tasks are ok in '{}'\n", *plan.count,
                   printable(config.resume_path.string()));
    return done;
}

// The console's sinks, added to the run's: the result lines (or `coordinator parallel`'s and
// --output plain's GNU parallel output) behind the progress bar.
struct Console {
    std::FILE* results_out = stdout;  // the result lines and the table
    ConsoleSink* lines = nullptr;
    ParallelSink* parallel = nullptr;
    ProgressSink* progress = nullptr;
    bool plain = false;  // --output plain: `parallel` shows the commands' own output
};

// `plain_output`: --output plain's (null: not plain).
Console add_console(const RunConfig& config, const ParallelOutput* plain_output, RunSession& session) {
    Console made;
    // A report on stdout must be all there is on it; the results and the table then go to stderr.
    // --output plain: stdout is the commands' own (or stderr's too, under a report on stdout).
    const bool plain = plain_output != nullptr;
    made.results_out = report_on_stdout(config) || plain ? stderr : stdout;
    made.plain = plain;
    // `coordinator parallel`: the jobs' output as GNU parallel prints it, in place of the result lines.
    std::unique_ptr<ResultSink> console;
    if (config.parallel || plain) {
        auto sink = std::make_unique<ParallelSink>(plain ? *plain_output : *config.parallel,
                                                   report_on_stdout(config) ? stderr : stdout);
        if (plain) session.add(std::make_unique<ConsoleSink>(made.results_out, config.output));
        made.parallel = sink.get();
        console = std::move(sink);
    } else {
        auto sink = std::make_unique<ConsoleSink>(made.results_out, config.output);
        made.lines = sink.get();
        console = std::move(sink);
    }
    made.progress = session.add_progress(
        config.progress, ProgressOptions{.lines_share_terminal = ::isatty(::fileno(made.results_out)) == 1},
        std::move(console));
    return made;
}

// Runs the plan in each mode in turn, skipping what the journal has as ok, a report per mode
// into `reports` (kept when a later mode throws); stops at a drain or at a plan that ended early.
void run_modes(const RunConfig& config, const Plan& plan, const Done& done, RunSession& session,
               std::vector<RunReport>& reports) {
    for (Mode mode : config.modes) {
        if (session.drain_token().stop_requested()) break;  // a stop is a drain too
        // A mode with tasks done in the journal skips them as its cursor goes.
        const auto found = done.find(std::string(to_string(mode)));
        static const IdSet none;
        const IdSet& done_here = found == done.end() ? none : found->second;
        std::optional<Plan> own;
        if (!done_here.empty()) own = skipping(plan, done_here);
        const Plan& todo = own ? *own : plan;
        const std::size_t earlier = done_here.size();
        if (earlier > 0)
            spdlog::info("{}: {} of {} tasks done in the journal; running the other {}", to_string(mode), earlier,
                         *plan.count, *todo.count);
        // A resumed mode's row counts the whole plan, the journal's ok tasks among its ok;
        // its times are this run's, so a mode with nothing left has none (and no speedup).
        RunReport report;
        if (todo.count == std::uint64_t{0}) {
            report.mode = to_string(mode);
            report.workers = report.cpus_used = 0;
        } else {
            report = session.run(*session.runner(mode), todo);
        }
        report.tasks += earlier;
        report.ok += earlier;
        reports.push_back(std::move(report));
        if (!reports.back().plan_error.empty()) break;  // the plan ended early: no mode runs it again
    }
}

// The table on the console and the files written after the run (--json, --trace, --timeline);
// returns what could not be written, for the exit status.
std::vector<std::string> write_outputs(const RunConfig& config, const Plan& plan, const std::vector<RunReport>& reports,
                                       const Console& console, const SignalWatcher& signals, const JournalSink* journal,
                                       RecordingSink* recording) {
    if (!config.parallel) {
        const std::string summary = summary_text(reports);
        const bool written = std::fwrite(summary.data(), 1, summary.size(), console.results_out) == summary.size();
        // After an EPIPE the console sink has said so; the files below are still written.
        if ((std::fflush(console.results_out) != 0 || !written) && signals.signal() != SIGPIPE)
            spdlog::error("cannot write the table: {}", std::strerror(errno));
    }
    // An output that could not be written (a full disk, say) fails the run, after the
    // others are written: the results on stdout and in the other files still count.
    std::vector<std::string> output_errors;
    if (journal && journal->lost() > 0)
        output_errors.push_back(fmt::format("--results '{}' lacks {} line(s): {}", journal_path(config).string(),
                                            journal->lost(), journal->error()));
    if (!config.json_path.empty()) {
        try {
            write_json(config, plan, reports);
        } catch (const std::exception& e) {
            output_errors.push_back(fmt::format("--json: {}", e.what()));
        }
    }
    if (recording) {
        try {
            write_pictures(config, recording->take(), reports);
        } catch (const std::exception& e) {
            output_errors.push_back(e.what());
        }
    }
    if (console.plain && console.parallel && console.parallel->cut() > 0)
        output_errors.push_back(
            fmt::format("the output of {} task(s) was cut (said above for each)", console.parallel->cut()));
    for (const std::string& error : output_errors) spdlog::error("{}", error);
    if (recording && recording->dropped() > 0)
        spdlog::warn("--trace/--timeline: drew the first {} results; {} more were not kept", kMaxRecordedResults,
                     recording->dropped());
    return output_errors;
}

// The run over a decided configuration, in named steps: what must happen before any thread
// starts (the fork server, the journal's lock, the live view's port), the sinks, the modes,
// then the outputs and the exit status.
ExitCode run(const ProgramInfo& program, const RunConfig& config, Plan& plan, const Json& settings,
             const ParallelOutput* plain_output) {
    // What runs of ours that were killed (SIGKILL) left in $TMPDIR: their pids are gone.
    if (const std::size_t swept = sweep_stale_temp_dirs(); swept > 0)
        spdlog::info("removed {} temporary director{} left by killed runs", swept, swept == 1 ? "y" : "ies");
    RunSession session(config, program.registry, settings, plan.types);  // the fork server, before any thread
    make_out_dirs(config, plan.types);
    keep_stdin(config, plan);
    check_recording(config, plan);
    std::unique_ptr<JournalSink> journal_sink = open_journal(config);
    // --ui binds now: a port in use is exit 2 before the run, naming --ui.
    session.open_live_view({config.ui, command_text(config.command_line)});
    const Done done = resume_from_journal(config, program.registry, plan, journal_sink.get());

    const Console console = add_console(config, plain_output, session);
    RecordingSink* recording = nullptr;
    if (!config.trace_path.empty() || !config.timeline_path.empty()) {
        auto sink = std::make_unique<RecordingSink>(kMaxRecordedResults);
        recording = sink.get();
        session.add(std::move(sink));
    }
    JournalSink* const journal = session.add_journal(std::move(journal_sink));
    session.start(SignalSetup{std::chrono::milliseconds(static_cast<std::int64_t>(config.drain_timeout_s * 1000)),
                              "--drain-timeout"});
    SignalWatcher& signals = *session.signals();
    if (session.live()) fmt::print(stderr, "live view: {}\n", session.live()->url());
    // Nobody reads the results any more (`| head`): stop as a signal would, rather than run
    // the whole plan for no one; SIGPIPE itself is ignored (coordinator_main).
    if (console.lines) console.lines->on_closed([&signals] { signals.stop(SIGPIPE); });
    if (console.parallel) {
        console.parallel->on_halt([&signals](bool now) { signals.halt(now); });
        console.parallel->on_closed([&signals] { signals.stop(SIGPIPE); });
    }
    for (const auto& service : plan.services) service->start();
    const ControlServer control(session.cancels());  // `coordinator cancel --run PID ID...`
    std::vector<RunReport> reports;
    try {
        run_modes(config, plan, done, session, reports);
    } catch (const std::exception&) {
        // The run failed (no report for this mode): what it recorded still helps to see why.
        session.end_progress();
        try {
            if (recording) write_pictures(config, recording->take(), reports);
        } catch (const std::exception& e) {
            spdlog::error("{}", e.what());
        }
        throw;
    }
    session.end_progress();
    const std::vector<std::string> output_errors =
        write_outputs(config, plan, reports, console, signals, journal, recording);

    ExitCode code = exit_code(signals.signal(), reports, output_errors);
    if (config.parallel && signals.signal() == 0 && output_errors.empty() &&
        std::all_of(reports.begin(), reports.end(), [](const RunReport& r) { return r.plan_error.empty(); }))
        code = static_cast<ExitCode>(console.parallel->exit_status());
    if (session.live()) {
        session.finish(reports);
        if (signals.signal() == 0) linger(*session.live(), config.ui_linger_s, signals);
    }
    return code;
}

// `coordinator keygen DIR`: the key files, and what to do with each, on stdout.
ExitCode keygen(const KeygenConfig& config) {
    if (!curve::available())
        throw ConfigError("keygen: this libzmq was built without CURVE support (libsodium), so it cannot make keys");
    std::vector<std::filesystem::path> written;
    try {
        written = curve::write_key_directory(config.dir, config.worker_only   ? std::vector<std::string>{"worker"}
                                                         : config.client_only ? std::vector<std::string>{"client"}
                                                                              : curve::kAllKeyPairs);
    } catch (const std::runtime_error& e) {
        throw ConfigError(fmt::format("keygen: {}", e.what()));
    }
    for (const auto& path : written) {
        const std::string name = path.filename().string();
        const char* use = name == "coordinator.secret"   ? "keep it on the coordinator's machine only"
                          : name == "coordinator.public" ? "copy it to every worker and client machine"
                          : name == "worker.secret"      ? "copy it to each worker machine (mode 0600)"
                          : name == "worker.public"      ? "the coordinator admits workers holding worker.secret"
                          : name == "client.secret"      ? "copy it to each machine that submits over tcp (mode 0600)"
                                                    : "serve --listen-clients admits clients holding client.secret";
        fmt::print("{:<40} {}\n", path.string(), use);
    }
    return ExitCode::Ok;
}

}  // namespace

int coordinator_main(const ProgramInfo& given, int argc, const char* const* argv) {
    ProgramInfo program = given;
    program.default_task = default_task(given);
    init_logging(program.name);
    // A closed stdout is then an EPIPE the console sink sees and stops the run for, instead
    // of a signal that kills us with workers running and the socket directory left behind.
    // Workers get the default back (process_pool.cpp).
    ::signal(SIGPIPE, SIG_IGN);
    try {
        // serve, submit, wait... (service.hpp): their errors end here too, as a run's do.
        if (auto code = service_main(program, argc, argv)) return *code;
        auto parsed = parse_cli(program, argc, argv);
        if (auto* code = std::get_if<ExitCode>(&parsed)) return static_cast<int>(*code);
        if (auto* keys = std::get_if<KeygenConfig>(&parsed)) return static_cast<int>(keygen(*keys));
        if (auto* report = std::get_if<ReportConfig>(&parsed)) return journal_report(*report);
        if (auto* cancel = std::get_if<CancelConfig>(&parsed)) return static_cast<int>(cancel_tasks(*cancel));
        const std::unique_ptr<DecidedRun> decided = decide_run(program, std::get<RunConfig>(std::move(parsed)));
        return static_cast<int>(
            run(program, decided->config, decided->plan, decided->settings, decided->plain_output.get()));
    } catch (const ConfigError& e) {
        spdlog::error("{}", e.what());
        return static_cast<int>(ExitCode::Usage);
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return static_cast<int>(ExitCode::TasksFailed);
    }
}

}  // namespace taskfarm
