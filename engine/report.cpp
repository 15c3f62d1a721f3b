#include "report.hpp"

#include <sys/resource.h>

#include <algorithm>

#include <fmt/format.h>
#include <fmt/ranges.h>

namespace taskfarm {
namespace {

double cpu_seconds(int who) {
    rusage usage{};
    ::getrusage(who, &usage);
    return seconds_of(usage.ru_utime) + seconds_of(usage.ru_stime);
}

}  // namespace

CpuTimes CpuTimes::now() { return CpuTimes{cpu_seconds(RUSAGE_SELF), cpu_seconds(RUSAGE_CHILDREN)}; }

double speedup_vs_sequential(const std::vector<RunReport>& reports, const RunReport& report) {
    const auto sequential = std::find_if(reports.begin(), reports.end(),
                                         [](const RunReport& r) { return r.mode == "sequential" && !r.interrupted; });
    if (sequential == reports.end() || report.wall_s <= 0 || report.interrupted) return 0;
    return sequential->wall_s / report.wall_s;
}

double utilisation(const RunReport& report) {
    const double capacity = report.cpu_span_s > 0 && report.cpus_available > 0
                                ? report.cpu_span_s * report.cpus_available
                                : report.wall_s * std::max(report.cpus_used, 1);
    return capacity > 0 ? report.cpu_s / capacity : 0;
}

std::string format_table(const std::vector<RunReport>& reports) {
    std::string out =
        fmt::format("{:<12} {:>7} {:>6} {:>6} {:>6} {:>9} {:>8} {:>10} {:>8} {:>5} {:>5}\n", "mode", "workers", "tasks",
                    "ok", "failed", "wall_s", "speedup", "efficiency", "cpu_s", "cpus", "util");
    for (const RunReport& report : reports) {
        const double speedup = speedup_vs_sequential(reports, report);
        const std::string speedup_text = speedup > 0 ? fmt::format("x{:.2f}", speedup) : "-";
        const std::string efficiency_text =
            speedup > 0 ? fmt::format("{:.0f}%", 100.0 * speedup / std::max(report.workers, 1)) : "-";
        out += fmt::format("{:<12} {:>7} {:>6} {:>6} {:>6} {:>9.3f} {:>8} {:>10} {:>8.3f} {:>5} {:>4.0f}%{}\n",
                           report.mode, report.workers, report.tasks, report.ok, report.failed, report.wall_s,
                           speedup_text, efficiency_text, report.cpu_s, report.cpus_used, 100.0 * utilisation(report),
                           report.interrupted ? "  (interrupted)" : "");
    }
    return out;
}

void CostTotals::add(const TaskCost& cost) {
    if (cost.scope == TaskCost::Scope::None) return;
    ++measured;
    user_s += cost.user_s;
    sys_s += cost.sys_s;
    max_rss_kb = std::max(max_rss_kb, cost.max_rss_kb);
    const std::string_view scope = to_string(cost.scope);
    if (std::find(scopes.begin(), scopes.end(), scope) == scopes.end()) scopes.emplace_back(scope);
}

std::string format_kib(std::int64_t kib) {
    if (kib < 0) return "-";
    if (kib < 1024) return fmt::format("{}K", kib);
    if (kib < 1024 * 1024) return fmt::format("{:.1f}M", static_cast<double>(kib) / 1024);
    return fmt::format("{:.2f}G", static_cast<double>(kib) / (1024 * 1024));
}

std::string format_cost_table(const std::vector<RunReport>& reports) {
    if (std::none_of(reports.begin(), reports.end(), [](const RunReport& r) { return r.cost.measured > 0; })) return {};
    std::string out = fmt::format("{:<12} {:>8} {:>9} {:>9} {:>9} {:>9}  {}\n", "task cost", "measured", "user_s",
                                  "sys_s", "cpu_s", "peak_rss", "scope");
    for (const RunReport& report : reports) {
        const CostTotals& cost = report.cost;
        out += fmt::format("{:<12} {:>8} {:>9.3f} {:>9.3f} {:>9.3f} {:>9}  {}\n", report.mode, cost.measured,
                           cost.user_s, cost.sys_s, cost.user_s + cost.sys_s, format_kib(cost.max_rss_kb),
                           cost.scopes.empty() ? "-" : fmt::format("{}", fmt::join(cost.scopes, "+")));
    }
    return out;
}

std::string format_placement(const std::vector<RunReport>& reports) {
    std::string out;
    for (const RunReport& report : reports) {
        if (std::none_of(report.placement.begin(), report.placement.end(),
                         [](const Placement& p) { return p.cpu >= 0; }))
            continue;
        std::string line;
        for (const Placement& place : report.placement) {
            if (!line.empty()) line += ", ";
            line += place.cpu >= 0 ? fmt::format("{} -> cpu {} (pid {})", place.worker, place.cpu, place.pid)
                                   : fmt::format("{} -> not pinned (pid {})", place.worker, place.pid);
        }
        out += fmt::format("{}: {}\n", report.mode, line);
    }
    return out;
}

nlohmann::json report_json(const std::vector<RunReport>& reports, const RunReport& report) {
    const double speedup = speedup_vs_sequential(reports, report);
    nlohmann::json failures = nlohmann::json::array();
    for (const Failure& failure : report.failures) failures.push_back({{"id", failure.id}, {"error", failure.error}});
    nlohmann::json placement = nlohmann::json::array();
    for (const Placement& place : report.placement)
        placement.push_back({{"worker", place.worker},
                             {"cpu", place.cpu >= 0 ? nlohmann::json(place.cpu) : nlohmann::json(nullptr)},
                             {"pid", place.pid}});
    return {
        {"mode", report.mode},
        {"workers", report.workers},
        {"tasks", report.tasks},
        {"ok", report.ok},
        {"failed", report.failed},
        {"wall_s", report.wall_s},
        {"speedup_vs_sequential", speedup > 0 ? nlohmann::json(speedup) : nlohmann::json(nullptr)},
        {"efficiency", speedup > 0 ? nlohmann::json(speedup / std::max(report.workers, 1)) : nlohmann::json(nullptr)},
        {"cpu_s", report.cpu_s},
        {"cpus_used", report.cpus_used},
        {"cpu_span_s", report.cpu_span_s},
        {"cpus_available", report.cpus_available},
        {"utilisation", utilisation(report)},
        {"interrupted", report.interrupted},
        {"retried", report.retried},
        {"recycled", report.recycled},
        {"failures", failures},
        {"failures_not_listed", report.failed - std::min(report.failed, report.failures.size())},
        {"plan_error", report.plan_error.empty() ? nlohmann::json(nullptr) : nlohmann::json(report.plan_error)},
        {"placement", placement},
        {"allocations", report.allocations},
        {"task_cost",
         {{"measured", report.cost.measured},
          {"user_s", report.cost.user_s},
          {"sys_s", report.cost.sys_s},
          {"max_rss_kb",
           report.cost.max_rss_kb >= 0 ? nlohmann::json(report.cost.max_rss_kb) : nlohmann::json(nullptr)},
          {"scopes", report.cost.scopes}}},
    };
}

}  // namespace taskfarm
