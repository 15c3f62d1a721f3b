#include "coordinator.hpp"

#include <signal.h>

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
#include "runner.hpp"
#include "signals.hpp"
#include "sinks.hpp"

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
        {"prefetch", config.prefetch},
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
    if (const std::string placement = format_placement(reports); !placement.empty())
        fmt::print("\nplacement (worker -> cpu, pid):\n{}", placement);
    print_failures(reports);
    std::fflush(stdout);
    if (!config.json_path.empty()) write_json(config, plan, reports);

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
