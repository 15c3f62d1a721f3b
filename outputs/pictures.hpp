#pragma once
// What happened during a run, kept for pictures: every final result of every mode, plus
// the worker lifecycle (start, exit) and the attempts lost with a worker. Two writers
// turn it into a Chrome trace-event JSON (Perfetto, chrome://tracing) and an SVG timeline.
// Both put every mode on the same time axis, starting at 0, so modes compare at a glance.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "events.hpp"
#include "report.hpp"
#include "task.hpp"

namespace taskfarm {

// One mode's run, as the writers need it.
struct ModeRecording {
    std::string mode;                 // any name: "sequential", "threads", "processes", ...
    std::optional<RunReport> report;  // none if the mode never finished
    std::vector<TaskResult> results;  // the final result of each task, in completion order
    std::vector<RunEvent> events;     // in the order they happened
};

// The lanes of a mode: every worker or thread named by a result or an event, in natural
// order ("t2" before "t10"). A result with no worker (never ran) gets the lane "unassigned".
std::vector<std::string> lanes_of(const ModeRecording& mode);

// The Chrome trace-event document: one process (pid) per mode, one thread (tid) per lane,
// named by metadata events (the report, when there is one, as process labels); an "X" event per attempt (lost ones too,
// with "lost": true in args) and an "i" event per worker start, exit and requeue. `command` goes in otherData.
nlohmann::json trace_json(const std::vector<ModeRecording>& modes, std::string_view command);

// A self-contained SVG: `title` on top, then one panel per mode on one shared time axis,
// headed by its report (wall time, speedup, CPU cores kept busy), one lane per worker or thread, one <rect class="task
// ok|failed"> per final result and one <rect class="attempt lost"> per lost attempt, then the axis and a legend.
std::string timeline_svg(const std::vector<ModeRecording>& modes, std::string_view title);

}  // namespace taskfarm
