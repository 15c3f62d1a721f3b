#pragma once
// `coordinator report JOURNAL`: what a --results journal says happened, finished or not
// (decision 94). Per mode: counts, failures grouped by reason, retried tasks and the
// attempts they lost with why, the slowest tasks, each worker's load and deaths, what the
// tasks cost, and what --resume would run, worked out by --resume's own code. With a task
// id: that task's whole story. For people, or as JSON.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

#include "plan.hpp"
#include "task.hpp"

namespace taskfarm {

struct ReportConfig {
    std::filesystem::path journal;  // "-": standard input
    std::optional<TaskId> task;     // --task ID: that task's story only
    bool json = false;              // --json: the report as one JSON document
    int slowest = 5;                // --slowest N
    // --plan FILE: the plan the journal was written by, read whole. With it, what --resume
    // would run is worked out against it, as --resume does (its ids, kinds and parameters, and
    // the tasks ok in the journal that run again because a task they wait for does: "after").
    std::filesystem::path plan_path;
    std::shared_ptr<const Plan> plan;
};

// The report as JSON (what --json prints). Throws ConfigError naming FILE:LINE for a line
// that is not a journal line, and for a journal that cannot be read; a torn last line is
// reported and left out, as --resume would cut it off (the file itself is never changed).
nlohmann::json journal_report_json(const ReportConfig& config);

// The same for people, as printed.
std::string journal_report_text(const nlohmann::json& report);

// Prints the report on stdout; ExitCode::Ok.
int journal_report(const ReportConfig& config);

}  // namespace taskfarm
