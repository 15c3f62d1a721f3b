#include "coordinator.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "affinity.hpp"
#include "cli.hpp"
#include "dispatcher.hpp"
#include "journal.hpp"
#include "log.hpp"
#include "plan.hpp"
#include "process_pool.hpp"
#include "progress.hpp"
#include "runner.hpp"
#include "signals.hpp"
#include "sinks.hpp"
#include "trace.hpp"

namespace taskfarm {
namespace {

void check_config(RunConfig& config) {
    const bool pool = std::any_of(config.modes.begin(), config.modes.end(), [](Mode m) { return m != Mode::Sequential; });
    if (pool && !config.pin_cpus.empty() && std::cmp_greater(config.workers, config.pin_cpus.size()))
        spdlog::warn("{} workers on {} CPU(s) ({}): pinning round-robin, so some share a CPU", config.workers,
                     config.pin_cpus.size(), format_cpu_list(config.pin_cpus));
    const bool processes = std::find(config.modes.begin(), config.modes.end(), Mode::Processes) != config.modes.end();
    if (!processes) return;
    if (config.worker_bin.empty()) config.worker_bin = default_worker_binary();
    if (::access(config.worker_bin.c_str(), X_OK) != 0)
        throw ConfigError(fmt::format("--worker-bin: cannot run '{}': {}", config.worker_bin.string(), std::strerror(errno)));
}

// A bad --trace or --timeline path fails before the run, not after it.
void check_output_paths(const RunConfig& config) {
    const std::pair<const char*, const std::filesystem::path&> outputs[] = {
        {"--json", config.json_path}, {"--trace", config.trace_path}, {"--timeline", config.timeline_path}};
    for (const auto& [flag, path] : outputs) {
        if (path.empty()) continue;
        try {
            check_writable(path);
        } catch (const std::runtime_error& e) {
            throw ConfigError(fmt::format("{}: {}", flag, e.what()));
        }
    }
}

// argv as one shell-quoted line, argv[0] without its directory, so pictures of a run carry
// no machine-specific path of the binary.
std::string command_text(const std::vector<std::string>& argv) {
    std::string text;
    for (std::size_t i = 0; i < argv.size(); ++i) {
        std::string arg = i == 0 ? std::filesystem::path(argv[0]).filename().string() : argv[i];
        const bool plain = !arg.empty() && arg.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
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
            write_file_atomically(path, render());
        } catch (const std::exception& e) {
            if (error.empty()) error = fmt::format("{}: {}", flag, e.what());
            else spdlog::error("{}: {}", flag, e.what());
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
    return {
        {"workers", config.workers},
        {"tasks", plan.tasks.size()},
        {"duration", {config.duration_lo_s, config.duration_hi_s}},
        {"cpu_n", config.cpu_n},
        {"plan", config.plan_path.empty() ? nlohmann::json(nullptr) : nlohmann::json(config.plan_path.string())},
        {"seed", config.seed},
        {"modes", modes},
        {"prefetch", config.prefetch > 0 ? nlohmann::json(config.prefetch) : nlohmann::json("auto")},
        {"max_in_flight", config.prefetch > 0 ? static_cast<std::size_t>(config.prefetch) : kMaxWindow},
        {"pin_cpus", config.pin_cpus},
        {"command", config.command_line},
    };
}

// The kind of every task in the plan, or "mixed".
std::string_view plan_kind(const Plan& plan) {
    const TaskKind first = plan.tasks.front().kind;
    const bool same = std::all_of(plan.tasks.begin(), plan.tasks.end(), [&](const TaskSpec& t) { return t.kind == first; });
    return same ? to_string(first) : "mixed";
}

void write_json(const RunConfig& config, const Plan& plan, const std::vector<RunReport>& reports) {
    nlohmann::json runs = nlohmann::json::array();
    for (const RunReport& report : reports) runs.push_back(report_json(reports, report));
    const nlohmann::json document = {
        {"version", 1},
        {"task", plan_kind(plan)},
        {"config", config_json(config, plan)},
        {"runs", runs},
    };
    // Temp file + rename: a reader never sees half a report.
    write_file_atomically(config.json_path, document.dump(2) + "\n");
}

void print_failures(const std::vector<RunReport>& reports) {
    for (const RunReport& report : reports) {
        if (report.failures.empty()) continue;
        fmt::print("{} task(s) failed in {}:\n", report.failures.size(), report.mode);
        for (const Failure& failure : report.failures) fmt::print("  task {}: {}\n", failure.id, failure.error);
    }
}

ExitCode run(RunConfig config) {
    if (!config.log_level.empty()) set_log_level(config.log_level);
    check_config(config);
    check_output_paths(config);
    const Plan plan = make_plan(config);
    Done done;
    if (!config.resume_path.empty()) {
        if (!config.results_path.empty() && config.results_path != config.resume_path)
            throw ConfigError(fmt::format("--resume '{}' appends to that journal; --results '{}' names another file",
                                          config.resume_path.string(), config.results_path.string()));
        done = read_journal_for_resume(config.resume_path, plan);
        config.results_path = config.resume_path;
    }
    FanOutSink sinks;  // before the SignalWatcher: a progress bar swaps log sinks while no other thread logs
    auto console = std::make_unique<ConsoleSink>(stdout);
    ProgressSink* progress = nullptr;
    if (const auto style = progress_style(config.progress, STDERR_FILENO)) {
        auto sink = std::make_unique<ProgressSink>(ProgressOptions{.style = *style, .lines_share_terminal = ::isatty(STDOUT_FILENO) == 1}, std::move(console));
        progress = sink.get();
        sinks.add(std::move(sink));
    } else {
        sinks.add(std::move(console));
    }
    RecordingSink* recording = nullptr;
    if (!config.trace_path.empty() || !config.timeline_path.empty()) {
        auto sink = std::make_unique<RecordingSink>();
        recording = sink.get();
        sinks.add(std::move(sink));
    }
    JournalSink* journal = nullptr;
    if (!config.results_path.empty()) {
        auto sink = std::make_unique<JournalSink>(config.results_path);
        journal = sink.get();
        sinks.add(std::move(sink));
    }

    const SignalWatcher signals;  // before any thread starts
    std::vector<RunReport> reports;
    try {
        for (Mode mode : config.modes) {
            if (signals.token().stop_requested()) break;
            const Plan todo = remaining(plan, done[std::string(to_string(mode))]);
            if (todo.tasks.size() < plan.tasks.size())
                spdlog::info("{}: {} of {} tasks done in the journal; running the other {}", to_string(mode),
                             plan.tasks.size() - todo.tasks.size(), plan.tasks.size(), todo.tasks.size());
            if (todo.tasks.empty()) continue;
            reports.push_back(make_runner(mode, config, signals.token())->run(todo, sinks));
        }
    } catch (const std::exception&) {
        // The run failed (no report for this mode): what it recorded still helps to see why.
        if (progress) progress->close();
        try {
            if (recording) write_pictures(config, recording->take(), reports);
        } catch (const std::exception& e) {
            spdlog::error("{}", e.what());
        }
        throw;
    }
    if (progress) progress->close();
    fmt::print("\n{}", format_table(reports));
    if (const std::string placement = format_placement(reports); !placement.empty())
        fmt::print("\nplacement (worker -> cpu, pid):\n{}", placement);
    print_failures(reports);
    std::fflush(stdout);
    // An output that could not be written (a full disk, say) fails the run, after the
    // others are written: the results on stdout and in the other files still count.
    std::vector<std::string> output_errors;
    if (journal && journal->lost() > 0)
        output_errors.push_back(fmt::format("--results '{}' lacks {} line(s): {}", config.results_path.string(),
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
    for (const std::string& error : output_errors) spdlog::error("{}", error);

    if (signals.signal() == SIGINT) return ExitCode::Interrupted;
    if (signals.signal() == SIGTERM) return ExitCode::Terminated;
    const bool failed = std::any_of(reports.begin(), reports.end(), [](const RunReport& r) { return r.failed > 0; });
    return failed || !output_errors.empty() ? ExitCode::TasksFailed : ExitCode::Ok;
}

}  // namespace

int coordinator_main(int argc, const char* const* argv) {
    init_logging("coordinator");
    auto parsed = parse_cli(argc, argv);
    if (auto* code = std::get_if<ExitCode>(&parsed)) return static_cast<int>(*code);
    try {
        return static_cast<int>(run(std::get<RunConfig>(std::move(parsed))));
    } catch (const ConfigError& e) {
        spdlog::error("{}", e.what());
        return static_cast<int>(ExitCode::Usage);
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return static_cast<int>(ExitCode::TasksFailed);
    }
}

}  // namespace taskfarm
