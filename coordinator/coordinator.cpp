#include "coordinator.hpp"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli.hpp"
#include "dispatcher.hpp"
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
    const bool processes = std::find(config.modes.begin(), config.modes.end(), Mode::Processes) != config.modes.end();
    if (!processes) return;
    if (config.worker_bin.empty()) config.worker_bin = default_worker_binary();
    if (::access(config.worker_bin.c_str(), X_OK) != 0)
        throw ConfigError(fmt::format("--worker-bin: cannot run '{}': {}", config.worker_bin.string(), std::strerror(errno)));
}

// A bad --trace or --timeline path fails before the run, not after it.
void check_output_paths(const RunConfig& config) {
    const std::pair<const char*, const std::filesystem::path&> outputs[] = {{"--trace", config.trace_path},
                                                                            {"--timeline", config.timeline_path}};
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

nlohmann::json config_json(const RunConfig& config) {
    nlohmann::json modes = nlohmann::json::array();
    for (Mode mode : config.modes) modes.push_back(to_string(mode));
    return {
        {"workers", config.workers},
        {"tasks", config.tasks},
        {"duration", {config.duration_lo_s, config.duration_hi_s}},
        {"seed", config.seed},
        {"modes", modes},
        {"prefetch", config.prefetch},
        {"command", config.command_line},
    };
}

void write_json(const RunConfig& config, const std::vector<RunReport>& reports) {
    nlohmann::json runs = nlohmann::json::array();
    for (const RunReport& report : reports) runs.push_back(report_json(reports, report));
    const nlohmann::json document = {
        {"version", 1},
        {"task", to_string(config.task)},
        {"config", config_json(config)},
        {"runs", runs},
    };
    // Temp file + rename: a reader never sees half a report.
    const auto temp = config.json_path.string() + ".tmp";
    std::ofstream out(temp);
    out << document.dump(2) << '\n';
    out.close();
    if (!out) throw ConfigError(fmt::format("cannot write JSON report '{}'", temp));
    std::filesystem::rename(temp, config.json_path);
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
    FanOutSink sinks;  // before the SignalWatcher: a progress bar swaps log sinks while no other thread logs
    auto console = std::make_unique<ConsoleSink>(stdout);
    ProgressSink* progress = nullptr;
    if (const auto style = progress_style(config.progress, STDERR_FILENO)) {
        auto sink = std::make_unique<ProgressSink>(ProgressOptions{.style = *style}, std::move(console));
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
    if (!config.results_path.empty()) sinks.add(std::make_unique<JournalSink>(config.results_path));

    const SignalWatcher signals;  // before any thread starts
    std::vector<RunReport> reports;
    try {
        for (Mode mode : config.modes) {
            if (signals.token().stop_requested()) break;
            reports.push_back(make_runner(mode, config, signals.token())->run(plan, sinks));
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
    print_failures(reports);
    std::fflush(stdout);
    if (!config.json_path.empty()) write_json(config, reports);
    if (recording) write_pictures(config, recording->take(), reports);

    if (signals.signal() == SIGINT) return ExitCode::Interrupted;
    if (signals.signal() == SIGTERM) return ExitCode::Terminated;
    const bool failed = std::any_of(reports.begin(), reports.end(), [](const RunReport& r) { return r.failed > 0; });
    return failed ? ExitCode::TasksFailed : ExitCode::Ok;
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
