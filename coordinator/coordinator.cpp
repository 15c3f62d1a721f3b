#include "coordinator.hpp"

#include <signal.h>

#include <cstdio>
#include <fstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "cli.hpp"
#include "dispatcher.hpp"
#include "journal.hpp"
#include "log.hpp"
#include "plan.hpp"
#include "process_pool.hpp"
#include "runner.hpp"
#include "signals.hpp"
#include "sinks.hpp"

namespace taskfarm {
namespace {

void check_config(RunConfig& config) {
    const bool processes = std::find(config.modes.begin(), config.modes.end(), Mode::Processes) != config.modes.end();
    if (!processes) return;
    if (config.worker_bin.empty()) config.worker_bin = default_worker_binary();
    if (::access(config.worker_bin.c_str(), X_OK) != 0)
        throw ConfigError(fmt::format("--worker-bin: cannot run '{}': {}", config.worker_bin.string(), std::strerror(errno)));
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
    check_config(config);
    const Plan plan = make_plan(config);
    Done done;
    if (!config.resume_path.empty()) {
        if (!config.results_path.empty() && config.results_path != config.resume_path)
            throw ConfigError(fmt::format("--resume '{}' appends to that journal; --results '{}' names another file",
                                          config.resume_path.string(), config.results_path.string()));
        done = read_journal_for_resume(config.resume_path, plan);
        config.results_path = config.resume_path;
    }
    FanOutSink sinks;
    sinks.add(std::make_unique<ConsoleSink>(stdout));
    if (!config.results_path.empty()) sinks.add(std::make_unique<JournalSink>(config.results_path));

    const SignalWatcher signals;  // before any thread starts
    std::vector<RunReport> reports;
    for (Mode mode : config.modes) {
        if (signals.token().stop_requested()) break;
        const Plan todo = remaining(plan, done[std::string(to_string(mode))]);
        if (todo.tasks.size() < plan.tasks.size())
            spdlog::info("{}: {} of {} tasks done in the journal; running the other {}", to_string(mode),
                         plan.tasks.size() - todo.tasks.size(), plan.tasks.size(), todo.tasks.size());
        if (todo.tasks.empty()) continue;
        reports.push_back(make_runner(mode, config, signals.token())->run(todo, sinks));
    }
    fmt::print("\n{}", format_table(reports));
    print_failures(reports);
    std::fflush(stdout);
    if (!config.json_path.empty()) write_json(config, reports);

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
