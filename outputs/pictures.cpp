#include "pictures.hpp"

#include <algorithm>
#include <cmath>
#include <map>
#include <stdexcept>

#include <fmt/format.h>

namespace taskfarm {
namespace {

constexpr std::string_view kUnassigned = "unassigned";  // lane of a result no worker ran

const std::string& lane_of(const TaskResult& result) {
    static const std::string unassigned(kUnassigned);
    return result.worker.empty() ? unassigned : result.worker;
}

// "t2" < "t10": runs of digits compare by value, everything else byte by byte.
bool natural_less(std::string_view a, std::string_view b) {
    const auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
    std::size_t i = 0;
    std::size_t j = 0;
    while (i < a.size() && j < b.size()) {
        if (is_digit(a[i]) && is_digit(b[j])) {
            std::size_t end_a = i;
            std::size_t end_b = j;
            while (end_a < a.size() && is_digit(a[end_a])) ++end_a;
            while (end_b < b.size() && is_digit(b[end_b])) ++end_b;
            std::string_view run_a = a.substr(i, end_a - i);
            std::string_view run_b = b.substr(j, end_b - j);
            run_a.remove_prefix(std::min(run_a.find_first_not_of('0'), run_a.size()));
            run_b.remove_prefix(std::min(run_b.find_first_not_of('0'), run_b.size()));
            if (run_a.size() != run_b.size()) return run_a.size() < run_b.size();
            if (run_a != run_b) return run_a < run_b;
            i = end_a;
            j = end_b;
        } else {
            if (a[i] != b[j]) return static_cast<unsigned char>(a[i]) < static_cast<unsigned char>(b[j]);
            ++i;
            ++j;
        }
    }
    return a.size() - i < b.size() - j;
}

std::int64_t micros(double seconds) { return std::llround(seconds * 1e6); }

// ---- Chrome trace events

nlohmann::json metadata(std::string_view name, int pid, int tid, nlohmann::json args) {
    return {{"name", name}, {"ph", "M"}, {"pid", pid}, {"tid", tid}, {"args", std::move(args)}};
}

nlohmann::json complete(std::string name, std::string_view category, double start_s, double end_s, int pid, int tid,
                        nlohmann::json args) {
    return {{"name", std::move(name)},
            {"cat", category},
            {"ph", "X"},
            {"ts", micros(start_s)},
            {"dur", std::max<std::int64_t>(0, micros(end_s) - micros(start_s))},
            {"pid", pid},
            {"tid", tid},
            {"args", std::move(args)}};
}

nlohmann::json result_event(const TaskResult& result, int pid, int tid) {
    nlohmann::json args = {{"id", result.id},
                           {"kind", kind_name(result)},
                           {"attempt", result.attempt},
                           {"ok", result.ok},
                           {"worker", result.worker}};
    if (result.ok)
        args["value"] = result.value;
    else
        args["error"] = result.error;
    return complete(fmt::format("{} #{}", kind_name(result), result.id), "task", result.start_s, result.end_s, pid, tid,
                    std::move(args));
}

nlohmann::json lost_attempt_event(const RunEvent& event, int pid, int tid) {
    return complete(
        fmt::format("{} #{} (lost)", (event.task_type ? event.task_type->name() : std::string("?")), event.task),
        "task,lost", event.started_s, event.at_s, pid, tid,
        {{"id", event.task},
         {"kind", (event.task_type ? event.task_type->name() : std::string("?"))},
         {"attempt", event.attempt},
         {"ok", false},
         {"lost", true},
         {"worker", event.worker},
         {"error", event.detail}});
}

nlohmann::json instant_event(const RunEvent& event, int pid, int tid) {
    nlohmann::json args = {{"worker", event.worker}, {"detail", event.detail}};
    if (event.kind == RunEvent::Kind::Requeued) {
        args["id"] = event.task;
        args["lost_attempt"] = event.attempt;
    }
    return {{"name", to_string(event.kind)}, {"cat", "worker"}, {"ph", "i"},  {"s", "t"},
            {"ts", micros(event.at_s)},      {"pid", pid},      {"tid", tid}, {"args", std::move(args)}};
}

// ---- SVG

// Text as XML character data: markup escaped, and anything that is not valid UTF-8 or not
// allowed in XML 1.0 (control characters) replaced, so a task's error text cannot break the file.
std::string xml_text(std::string_view text) {
    std::string out;
    out.reserve(text.size());
    const auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
    for (std::size_t i = 0; i < text.size();) {
        const unsigned char c = byte(i);
        if (c < 0x80) {
            switch (c) {
                case '&': out += "&amp;"; break;
                case '<': out += "&lt;"; break;
                case '>': out += "&gt;"; break;
                case '"': out += "&quot;"; break;
                case '\'': out += "&apos;"; break;
                default: out += (c < 0x20 && c != '\t' && c != '\n' && c != '\r') ? '?' : static_cast<char>(c);
            }
            ++i;
            continue;
        }
        // The length of a UTF-8 sequence and the range of its second byte (no overlongs, no surrogates).
        std::size_t length = 0;
        unsigned char lo = 0x80;
        unsigned char hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
            length = 2;
        else if (c == 0xE0)
            length = 3, lo = 0xA0;
        else if (c == 0xED)
            length = 3, hi = 0x9F;
        else if (c >= 0xE1 && c <= 0xEF)
            length = 3;
        else if (c == 0xF0)
            length = 4, lo = 0x90;
        else if (c == 0xF4)
            length = 4, hi = 0x8F;
        else if (c >= 0xF1 && c <= 0xF3)
            length = 4;
        bool valid = length > 0 && i + length <= text.size() && byte(i + 1) >= lo && byte(i + 1) <= hi;
        for (std::size_t k = 2; valid && k < length; ++k) valid = byte(i + k) >= 0x80 && byte(i + k) <= 0xBF;
        if (valid) {
            out.append(text.substr(i, length));
            i += length;
        } else {
            out += "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER
            ++i;
        }
    }
    return out;
}

constexpr double kWidth = 1000;
constexpr double kMargin = 16;
constexpr double kLeft = 110;  // lane labels sit left of this
constexpr double kRight = 30;
constexpr double kPlotWidth = kWidth - kLeft - kRight;
constexpr double kTitleLine = 18;
constexpr double kPanelHead = 24;
constexpr double kPanelGap = 16;
constexpr double kLane = 20;
constexpr double kBar = 14;
constexpr std::size_t kTitleChars = 110;  // about what fits in kWidth at the title's font size
constexpr const char* kOkColour = "#4e79a7";
constexpr const char* kFailedColour = "#e15759";
constexpr const char* kStartColour = "#59a14f";
constexpr const char* kInk = "#333333";

// Splits `title` at spaces into lines of about kTitleChars.
std::vector<std::string> wrap(std::string_view title) {
    std::vector<std::string> lines{""};
    std::size_t start = 0;
    while (start <= title.size()) {
        std::size_t end = title.find(' ', start);
        if (end == std::string_view::npos) end = title.size();
        const std::string_view word = title.substr(start, end - start);
        if (!lines.back().empty() && lines.back().size() + 1 + word.size() > kTitleChars) lines.emplace_back();
        if (!lines.back().empty()) lines.back() += ' ';
        lines.back() += word;
        start = end + 1;
    }
    return lines;
}

// A tick step of 1, 2 or 5 times a power of ten giving at most about 10 ticks.
double tick_step(double span) {
    const double rough = span / 10;
    const double power = std::pow(10.0, std::floor(std::log10(rough)));
    for (double factor : {1.0, 2.0, 5.0})
        if (factor * power >= rough) return factor * power;
    return 10 * power;
}

double wall_of(const ModeRecording& mode) { return mode.report ? mode.report->wall_s : 0; }

// "wall 1.24 s, x2.94 vs sequential, CPU 0.01 s (0.0 cores busy)": what the mode came to.
std::string report_text(const std::vector<ModeRecording>& modes, const RunReport& report) {
    std::vector<RunReport> reports;
    for (const ModeRecording& mode : modes)
        if (mode.report) reports.push_back(*mode.report);
    std::string text = fmt::format("wall {:.2f} s", report.wall_s);
    if (const double speedup = speedup_vs_sequential(reports, report); speedup > 0 && report.mode != "sequential")
        text += fmt::format(", x{:.2f} vs sequential", speedup);
    if (report.wall_s > 0)
        text += fmt::format(", CPU {:.2f} s ({:.1f} cores busy)", report.cpu_s, report.cpu_s / report.wall_s);
    if (report.interrupted) text += ", interrupted";
    return text;
}

double last_time(const ModeRecording& mode) {
    double last = wall_of(mode);
    for (const TaskResult& result : mode.results) last = std::max(last, result.end_s);
    for (const RunEvent& event : mode.events) last = std::max(last, event.at_s);
    return last;
}

std::string seconds_text(double seconds) { return fmt::format("{:.3f} s", seconds); }

class SvgWriter {
public:
    SvgWriter(const std::vector<ModeRecording>& modes, std::string_view title) : modes_(modes), title_(title) {
        double span = 0;
        for (const ModeRecording& mode : modes_) span = std::max(span, last_time(mode));
        if (span <= 0) span = 1;
        step_ = tick_step(span);
        ticks_ = static_cast<int>(std::ceil(span / step_ - 1e-9));
        axis_end_ = step_ * ticks_;
        decimals_ = std::max(0, -static_cast<int>(std::floor(std::log10(step_))));
    }

    std::string write() {
        double y = kMargin;
        for (const std::string& line : wrap(title_)) {
            y += kTitleLine;
            body_ += fmt::format(R"(<text class="title" x="{}" y="{:.1f}" font-size="14" font-weight="bold">{}</text>)",
                                 kMargin, y - 4, xml_text(line)) +
                     "\n";
        }
        y += 10;
        for (const ModeRecording& mode : modes_) y = panel(mode, y);
        axis(y);
        y = legend(y + 44);
        return header(y + kMargin) + body_ + "</svg>\n";
    }

private:
    double x_of(double seconds) const { return kLeft + kPlotWidth * std::clamp(seconds, 0.0, axis_end_) / axis_end_; }

    static std::string header(double height) {
        return fmt::format(
            R"svg(<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{0}" height="{1:.0f}" viewBox="0 0 {0} {1:.0f}" )svg"
            R"svg(font-family="DejaVu Sans, Helvetica, Arial, sans-serif">
<defs>
<pattern id="taskfarm-lost" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">
<rect width="6" height="6" fill="#fbe3e3"/><line x1="0" y1="0" x2="0" y2="6" stroke="{2}" stroke-width="2"/>
</pattern>
</defs>
<rect width="100%" height="100%" fill="#ffffff"/>
)svg",
            kWidth, height, kFailedColour);
    }

    double panel(const ModeRecording& mode, double top) {
        const std::vector<std::string> lanes = lanes_of(mode);
        std::map<std::string, std::size_t> lane_index;
        for (std::size_t i = 0; i < lanes.size(); ++i) lane_index[lanes[i]] = i;
        const auto failed = std::count_if(mode.results.begin(), mode.results.end(),
                                          [](const TaskResult& r) { return !r.ok && !r.retrying; });
        const auto lost = std::count_if(mode.events.begin(), mode.events.end(),
                                        [](const RunEvent& e) { return e.kind == RunEvent::Kind::Requeued; });
        std::string summary = fmt::format("{}: {} tasks on {} {}", mode.mode, mode.results.size(), lanes.size(),
                                          lanes.size() == 1 ? "lane" : "lanes");
        if (failed > 0) summary += fmt::format(", {} failed", failed);
        if (lost > 0) summary += fmt::format(", {} {} lost", lost, lost == 1 ? "attempt" : "attempts");
        summary += mode.report ? ", " + report_text(modes_, *mode.report) : ", did not finish";
        body_ += fmt::format(R"(<g class="mode"><text class="mode-title" x="{}" y="{:.1f}" font-size="13" )"
                             R"(font-weight="bold">{}</text>)",
                             kMargin, top + 16, xml_text(summary)) +
                 "\n";

        const double lanes_top = top + kPanelHead;
        const double lanes_bottom = lanes_top + kLane * static_cast<double>(std::max<std::size_t>(lanes.size(), 1));
        for (std::size_t i = 0; i < lanes.size(); ++i) {
            const double lane_y = lanes_top + kLane * static_cast<double>(i);
            body_ += fmt::format(R"(<rect class="lane" x="{}" y="{:.1f}" width="{}" height="{}" fill="{}"/>)", kLeft,
                                 lane_y, kPlotWidth, kLane, i % 2 == 0 ? "#f3f3f3" : "#fafafa");
            body_ +=
                fmt::format(R"(<text class="lane-name" x="{}" y="{:.1f}" font-size="11" text-anchor="end">{}</text>)",
                            kLeft - 8, lane_y + kLane / 2 + 4, xml_text(lanes[i])) +
                "\n";
        }
        for (int i = 1; i <= ticks_; ++i)
            body_ += fmt::format(
                         R"(<line class="grid" x1="{0:.2f}" y1="{1:.1f}" x2="{0:.2f}" y2="{2:.1f}" stroke="#dddddd"/>)",
                         x_of(step_ * i), lanes_top, lanes_bottom) +
                     "\n";

        const auto bar_y = [&](const std::string& lane) {
            return lanes_top + kLane * static_cast<double>(lane_index.at(lane)) + (kLane - kBar) / 2;
        };
        for (const RunEvent& event : mode.events)
            if (event.kind == RunEvent::Kind::Requeued) lost_bar(event, bar_y(event.worker));
        for (const TaskResult& result : mode.results) task_bar(result, bar_y(lane_of(result)));
        for (const RunEvent& event : mode.events)
            if (event.kind != RunEvent::Kind::Requeued) marker(event, bar_y(event.worker));
        if (const double wall = wall_of(mode); wall > 0)
            body_ +=
                fmt::format(R"(<line class="wall" x1="{0:.2f}" y1="{1:.1f}" x2="{0:.2f}" y2="{2:.1f}" stroke="{3}" )"
                            R"(stroke-width="1.5" stroke-dasharray="5,3"><title>wall time {4}</title></line>)",
                            x_of(wall), lanes_top - 4, lanes_bottom + 4, kInk, seconds_text(wall)) +
                "\n";
        body_ += "</g>\n";
        return lanes_bottom + kPanelGap;
    }

    void task_bar(const TaskResult& result, double y) {
        const double x = x_of(result.start_s);
        const double width = std::max(1.5, x_of(result.end_s) - x);
        const bool retried = result.attempt > 1;
        // A retry is outlined dark; a first attempt thinly in white, so that back-to-back bars stay apart.
        const std::string outline = retried ? fmt::format(R"( stroke="{}" stroke-width="2")", kInk)
                                            : std::string(R"( stroke="#ffffff" stroke-width="0.75")");
        const std::string tip =
            fmt::format("task {} ({}), attempt {}, on {}: {} to {}, {}", result.id, kind_name(result), result.attempt,
                        lane_of(result), seconds_text(result.start_s), seconds_text(result.end_s),
                        result.ok ? describe_value(result) : "FAILED: " + result.error);
        body_ += fmt::format(R"(<rect class="task {}{}" x="{:.2f}" y="{:.1f}" width="{:.2f}" height="{}" rx="2" )"
                             R"(fill="{}"{}><title>{}</title></rect>)",
                             result.ok ? "ok" : "failed", retried ? " retry" : "", x, y, width, kBar,
                             result.ok ? kOkColour : kFailedColour, outline, xml_text(tip)) +
                 "\n";
        const std::string label = std::to_string(result.id);
        if (width >= 7.0 * static_cast<double>(label.size()) + 6)
            body_ += fmt::format(R"(<text class="task-id" x="{:.2f}" y="{:.1f}" font-size="10" fill="#ffffff" )"
                                 R"(text-anchor="middle">{}</text>)",
                                 x + width / 2, y + kBar - 3.5, label) +
                     "\n";
    }

    void lost_bar(const RunEvent& event, double y) {
        const double x = x_of(event.started_s);
        const double width = std::max(1.5, x_of(event.at_s) - x);
        const std::string tip =
            fmt::format("task {} ({}), attempt {}, lost with {}: {} to {}, {}; queued again", event.task,
                        (event.task_type ? event.task_type->name() : std::string("?")), event.attempt, event.worker,
                        seconds_text(event.started_s), seconds_text(event.at_s), event.detail);
        body_ += fmt::format(
                     R"svg(<rect class="attempt lost" x="{:.2f}" y="{:.1f}" width="{:.2f}" height="{}" rx="2" )svg"
                     R"svg(fill="url(#taskfarm-lost)" stroke="{}" stroke-dasharray="3,2"><title>{}</title></rect>)svg",
                     x, y, width, kBar, kFailedColour, xml_text(tip)) +
                 "\n";
    }

    void marker(const RunEvent& event, double y) {
        const double x = x_of(event.at_s);
        const std::string tip =
            fmt::format("{} {} at {}: {}", event.worker, to_string(event.kind), seconds_text(event.at_s), event.detail);
        if (event.kind == RunEvent::Kind::WorkerStarted)
            body_ +=
                fmt::format(
                    R"(<path class="event start" d="M{:.2f},{:.1f} l6,{} l-6,{} z" fill="{}"><title>{}</title></path>)",
                    x - 6, y, kBar / 2, kBar / 2, kStartColour, xml_text(tip)) +
                "\n";
        else
            body_ += fmt::format(R"(<rect class="event exit" x="{:.2f}" y="{:.1f}" width="2.5" height="{}" )"
                                 R"(fill="{}"><title>{}</title></rect>)",
                                 x, y, kBar, kInk, xml_text(tip)) +
                     "\n";
    }

    void axis(double bottom) {
        const double y = bottom - kPanelGap + 6;
        body_ += fmt::format(R"(<g class="axis"><line x1="{}" y1="{:.1f}" x2="{}" y2="{:.1f}" stroke="{}"/>)", kLeft, y,
                             kLeft + kPlotWidth, y, kInk) +
                 "\n";
        for (int i = 0; i <= ticks_; ++i) {
            const double seconds = step_ * i;
            body_ +=
                fmt::format(
                    R"(<line x1="{0:.2f}" y1="{1:.1f}" x2="{0:.2f}" y2="{2:.1f}" stroke="{3}"/><text )"
                    R"(class="tick" x="{0:.2f}" y="{4:.1f}" font-size="11" text-anchor="middle">{5:.{6}f} s</text>)",
                    x_of(seconds), y, y + 5, kInk, y + 18, seconds, decimals_) +
                "\n";
        }
        body_ += fmt::format(
                     R"(<text x="{:.1f}" y="{:.1f}" font-size="11" text-anchor="middle" fill="#555555">seconds since )"
                     R"(the start of each mode; one lane per worker or thread</text></g>)",
                     kLeft + kPlotWidth / 2, y + 34) +
                 "\n";
    }

    double legend(double y) {
        double x = kMargin;
        const auto item = [&](const std::string& swatch, std::string_view label) {
            body_ += swatch;
            body_ +=
                fmt::format(R"(<text x="{:.1f}" y="{:.1f}" font-size="11">{}</text>)", x + 20, y + 11, label) + "\n";
            x += 28 + 6.2 * static_cast<double>(label.size());
        };
        body_ += R"(<g class="legend">)";
        item(fmt::format(R"(<rect x="{:.1f}" y="{:.1f}" width="14" height="{}" rx="2" fill="{}"/>)", x, y, kBar,
                         kOkColour),
             "task ok");
        item(fmt::format(R"(<rect x="{:.1f}" y="{:.1f}" width="14" height="{}" rx="2" fill="{}"/>)", x, y, kBar,
                         kFailedColour),
             "task failed");
        item(
            fmt::format(
                R"(<rect x="{:.1f}" y="{:.1f}" width="14" height="{}" rx="2" fill="{}" stroke="{}" stroke-width="2"/>)",
                x + 1, y + 1, kBar - 2, kOkColour, kInk),
            "ok on a later attempt");
        item(
            fmt::format(R"svg(<rect x="{:.1f}" y="{:.1f}" width="14" height="{}" rx="2" fill="url(#taskfarm-lost)" )svg"
                        R"svg(stroke="{}" stroke-dasharray="3,2"/>)svg",
                        x, y, kBar, kFailedColour),
            "attempt lost with its worker, retried");
        item(fmt::format(R"(<path d="M{:.1f},{:.1f} l6,{} l-6,{} z" fill="{}"/>)", x + 4, y, kBar / 2, kBar / 2,
                         kStartColour),
             "worker started");
        item(fmt::format(R"(<rect x="{:.1f}" y="{:.1f}" width="2.5" height="{}" fill="{}"/>)", x + 6, y, kBar, kInk),
             "worker exited");
        item(fmt::format(R"(<line x1="{0:.1f}" y1="{1:.1f}" x2="{0:.1f}" y2="{2:.1f}" stroke="{3}" stroke-width="1.5" )"
                         R"(stroke-dasharray="5,3"/>)",
                         x + 7, y - 2, y + kBar + 2, kInk),
             "wall time");
        body_ += "</g>\n";
        return y + kBar;
    }

    const std::vector<ModeRecording>& modes_;
    std::string_view title_;
    double step_ = 1;      // seconds between ticks
    int ticks_ = 1;        // ticks after the one at 0
    double axis_end_ = 1;  // seconds at the right end of the plot: step_ * ticks_
    int decimals_ = 0;     // in tick labels
    std::string body_;
};

}  // namespace

std::vector<std::string> lanes_of(const ModeRecording& mode) {
    std::vector<std::string> lanes;
    const auto add = [&](const std::string& lane) {
        if (std::find(lanes.begin(), lanes.end(), lane) == lanes.end()) lanes.push_back(lane);
    };
    for (const TaskResult& result : mode.results) add(lane_of(result));
    for (const RunEvent& event : mode.events) add(event.worker);
    std::sort(lanes.begin(), lanes.end(), natural_less);
    return lanes;
}

nlohmann::json trace_json(const std::vector<ModeRecording>& modes, std::string_view command) {
    nlohmann::json events = nlohmann::json::array();
    for (std::size_t m = 0; m < modes.size(); ++m) {
        const ModeRecording& mode = modes[m];
        const int pid = static_cast<int>(m) + 1;
        events.push_back(metadata("process_name", pid, 0, {{"name", mode.mode}}));
        events.push_back(metadata("process_sort_index", pid, 0, {{"sort_index", pid}}));
        if (mode.report)
            events.push_back(metadata("process_labels", pid, 0, {{"labels", report_text(modes, *mode.report)}}));
        std::map<std::string, int> tids;
        for (const std::string& lane : lanes_of(mode)) {
            const int tid = static_cast<int>(tids.size()) + 1;
            tids[lane] = tid;
            events.push_back(metadata("thread_name", pid, tid, {{"name", lane}}));
            events.push_back(metadata("thread_sort_index", pid, tid, {{"sort_index", tid}}));
        }
        for (const TaskResult& result : mode.results)
            events.push_back(result_event(result, pid, tids.at(lane_of(result))));
        for (const RunEvent& event : mode.events) {
            if (event.kind == RunEvent::Kind::Requeued)
                events.push_back(lost_attempt_event(event, pid, tids.at(event.worker)));
            events.push_back(instant_event(event, pid, tids.at(event.worker)));
        }
    }
    return {{"traceEvents", std::move(events)},
            {"displayTimeUnit", "ms"},
            {"otherData", {{"generator", "taskfarm"}, {"command", command}}}};
}

std::string timeline_svg(const std::vector<ModeRecording>& modes, std::string_view title) {
    return SvgWriter(modes, title).write();
}

}  // namespace taskfarm
