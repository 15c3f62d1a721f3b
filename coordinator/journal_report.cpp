#include "journal_report.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "errors.hpp"
#include "journal.hpp"
#include "journal_line.hpp"
#include "report.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

using nlohmann::json;

// A plan's task type for --resume's checks, known by its name only: the journal names kinds
// that this program may not have (another App's journal), and report never runs a task.
class NamedType final : public TaskType {
public:
    explicit NamedType(std::string name) : name_(std::move(name)) {}
    std::string name() const override { return name_; }
    Value run(const Params&, Context&) const override { throw std::logic_error("report runs no task"); }

private:
    std::string name_;
};

// A plan is rebuilt to ask --resume only when the journal's highest id is at most this many
// more than twice its lines: a hand-written id of 10^15 must not ask for petabytes.
constexpr TaskId kMostMissingIds = 1'000'000;

struct Line {
    int number = 0;
    json entry;
    bool event() const { return entry.contains("event"); }
};

struct TaskLines {
    std::vector<std::size_t> lines;  // into Journal::lines, in journal order: results and events
    std::optional<std::size_t> last_result;
    bool ok = false;  // some result line says ok: --resume counts it done
};

struct ModeLines {
    std::string mode;
    std::map<TaskId, TaskLines> tasks;  // those with a line of any kind
    std::vector<std::size_t> events;
    std::size_t results = 0;
};

struct Journal {
    std::string name;  // as given, "-" for standard input
    std::string text;  // the complete lines
    std::size_t torn_bytes = 0;
    int torn_line = 0;
    std::vector<Line> lines;
    std::vector<ModeLines> modes;  // in order of first appearance
};

Journal parse(const ReportConfig& config) {
    Journal journal;
    journal.name = config.journal.string();
    // A file is read up to its last '\n' (what follows is torn); a stream (`-`, a FIFO) once,
    // to its end. Either way one line at a time, each bounded (journal_line.hpp).
    std::istream* in = &std::cin;
    std::ifstream file;
    std::uintmax_t length = UINTMAX_MAX;
    std::uintmax_t size = 0;
    if (config.journal != "-") {
        struct stat st {};
        const bool known = ::stat(config.journal.c_str(), &st) == 0;
        if (known && S_ISDIR(st.st_mode))
            throw ConfigError(
                fmt::format("report: cannot read journal '{}': it is a directory", printable(journal.name)));
        if (known && S_ISREG(st.st_mode)) {
            length = complete_length(config.journal, "report");
            size = static_cast<std::uintmax_t>(st.st_size);
        }
        file.open(config.journal, std::ios::binary);
        if (!file)
            throw ConfigError(
                fmt::format("report: cannot read journal '{}': {}", printable(journal.name), std::strerror(errno)));
        in = &file;
    }
    JournalLineReader reader(*in, "report", journal.name, length);
    std::map<std::string, std::size_t> mode_index;
    for (std::string text; reader.next(text);) {
        journal.text += text;
        journal.text += '\n';
        if (text.empty()) continue;
        const std::string at = reader.where();
        Line parsed{static_cast<int>(reader.number()), parse_journal_line(text, at)};
        check_journal_line(parsed.entry, at);
        const std::string mode = parsed.entry.at("mode").get<std::string>();
        auto [found, added] = mode_index.try_emplace(mode, journal.modes.size());
        if (added) journal.modes.push_back({mode, {}, {}, 0});
        ModeLines& lines = journal.modes[found->second];
        const std::size_t index = journal.lines.size();
        if (parsed.event()) {
            lines.events.push_back(index);
            if (parsed.entry.contains("id")) lines.tasks[parsed.entry.at("id").get<TaskId>()].lines.push_back(index);
        } else {
            ++lines.results;
            TaskLines& task = lines.tasks[parsed.entry.at("id").get<TaskId>()];
            task.lines.push_back(index);
            task.last_result = index;
            if (parsed.entry.at("ok").get<bool>()) task.ok = true;
        }
        journal.lines.push_back(std::move(parsed));
    }
    journal.torn_bytes = length == UINTMAX_MAX ? reader.torn_bytes() : size - length;
    if (journal.torn_bytes > 0) journal.torn_line = static_cast<int>(reader.number()) + 1;
    return journal;
}

double number_or(const json& entry, const char* key, double fallback = 0) {
    const auto found = entry.find(key);
    return found != entry.end() && found->is_number() ? found->get<double>() : fallback;
}

std::string text_or(const json& entry, const char* key, const std::string& fallback = {}) {
    const auto found = entry.find(key);
    return found != entry.end() && found->is_string() ? found->get<std::string>() : fallback;
}

double run_s(const json& entry) { return std::max(0.0, number_or(entry, "end_s") - number_or(entry, "start_s")); }

std::int64_t rss_of(const json& cost) {
    const auto found = cost.find("max_rss_kb");
    return found != cost.end() && found->is_number_integer() ? found->get<std::int64_t>() : -1;
}

// The error with what differs between tasks of one cause blanked out: quoted names and
// URLs, worker and thread names, task ids and fractional numbers (times). Whole numbers
// stay: an HTTP status, an exit status or a signal is the reason.
// Scanned in one pass (std::regex recurses once a character: a long error overflowed the stack).
std::string reason_of(const std::string& error) {
    const auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
    const auto digit = [](char c) { return c >= '0' && c <= '9'; };
    const auto digits_at = [&](std::size_t at) {
        std::size_t end = at;
        while (end < error.size() && digit(error[end])) ++end;
        return end - at;
    };
    std::string reason;
    reason.reserve(error.size());
    for (std::size_t at = 0; at < error.size();) {
        const char c = error[at];
        const bool starts_word = at == 0 || !word(error[at - 1]);
        if (c == '\'') {  // 'quoted', when it closes
            if (const auto close = error.find('\'', at + 1); close != std::string::npos) {
                reason += "'...'";
                at = close + 1;
                continue;
            }
        } else if (starts_word && (c == 'w' || c == 't')) {  // w3, t12 as whole words
            const std::size_t n = digits_at(at + 1);
            if (n > 0 && (at + 1 + n == error.size() || !word(error[at + 1 + n]))) {
                reason += c;
                reason += 'N';
                at += 1 + n;
                continue;
            }
        }
        if (starts_word && error.compare(at, 5, "task ") == 0) {  // task 12 as whole words
            const std::size_t n = digits_at(at + 5);
            if (n > 0 && (at + 5 + n == error.size() || !word(error[at + 5 + n]))) {
                reason += "task N";
                at += 5 + n;
                continue;
            }
        }
        if (digit(c)) {  // 1.25 as N.N; a whole number stays
            const std::size_t n = digits_at(at);
            if (at + n < error.size() && error[at + n] == '.' && digits_at(at + n + 1) > 0) {
                reason += "N.N";
                at += n + 1 + digits_at(at + n + 1);
                continue;
            }
            reason.append(error, at, n);
            at += n;
            continue;
        }
        reason += c;
        ++at;
    }
    return reason;
}

// Sorted ids as [[first, last], ...].
json ranges_of(const std::vector<TaskId>& ids) {
    json ranges = json::array();
    for (std::size_t i = 0; i < ids.size();) {
        std::size_t j = i;
        while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
        ranges.push_back({ids[i], ids[j]});
        i = j + 1;
    }
    return ranges;
}

std::string ranges_text(const json& ranges, std::size_t most = 20) {
    std::string text;
    std::size_t shown = 0;
    for (const json& range : ranges) {
        if (shown++ == most) return text + ", ...";
        if (!text.empty()) text += ", ";
        const auto first = range[0].get<TaskId>();
        const auto last = range[1].get<TaskId>();
        text += first == last ? fmt::format("{}", first) : fmt::format("{}-{}", first, last);
    }
    return text;
}

// What --resume would make of this journal, by its own code: a plan is made of the tasks
// the journal names (kind and params from their first line), and the journal module checks
// the journal's complete lines against it as --resume does, without touching the journal
// (check_journal; --resume would cut a torn line off); remaining() says what is not done.
// Either the done ids per mode, or why --resume would refuse the journal.
struct ResumeView {
    Done done;
    std::string refused;  // --resume would refuse the journal: why
    std::string unknown;  // the report could not ask: why
    TaskId plan_size = 0;
    bool plan_given = false;                        // --plan: plan_size is the plan's, and reruns are known
    std::map<std::string, std::size_t> dependents;  // per mode: tasks ok in the journal that run again ("after")
};

ResumeView resume_view(const Journal& journal, const Plan* given) {
    ResumeView view;
    if (given) {
        // --resume's own reading of the journal against the plan, then its rule for "after".
        view.plan_given = true;
        view.plan_size = given->count.value_or(0);
        try {
            view.done = check_journal(JournalSource::text(journal.text, journal.name), *given);
        } catch (const ConfigError& e) {
            view.refused = e.what();
            return view;
        }
        for (auto& [mode, ids] : view.done) view.dependents[mode] = rerun_dependents(*given, ids).size();
        return view;
    }
    TaskId highest = 0;
    bool any = false;
    for (const Line& line : journal.lines)
        if (!line.event()) {
            highest = std::max(highest, line.entry.at("id").get<TaskId>());
            any = true;
        }
    if (!any) return view;
    if (highest > 2 * journal.lines.size() + kMostMissingIds) {
        view.unknown = fmt::format(
            "the journal names task {} in only {} lines, too sparse a plan to "
            "rebuild",
            highest, journal.lines.size());
        return view;
    }
    view.plan_size = highest + 1;
    std::map<std::string, std::shared_ptr<const TaskType>> types;
    std::vector<TaskSpec> tasks(view.plan_size);
    std::vector<bool> seen(view.plan_size, false);
    for (const Line& line : journal.lines) {
        if (line.event()) continue;
        const auto id = line.entry.at("id").get<TaskId>();
        if (seen[id]) continue;
        seen[id] = true;
        const std::string kind = text_or(line.entry, "kind", "?");
        auto& type = types[kind];
        if (!type) type = std::make_shared<NamedType>(kind);
        const auto params = line.entry.find("params");
        tasks[id] = TaskSpec{id, type.get(), params != line.entry.end() ? *params : json(nullptr), 0};
    }
    // Ids the journal never names: --resume runs them (they are in the plan, not done); no
    // line refers to them, so their kind and params are never compared.
    static const NamedType unnamed("?");
    for (TaskId id = 0; id < view.plan_size; ++id)
        if (!seen[id]) tasks[id] = TaskSpec{id, &unnamed, json(nullptr), 0};
    const Plan plan = Plan::of(std::move(tasks));
    try {
        view.done = check_journal(JournalSource::text(journal.text, journal.name), plan);
    } catch (const ConfigError& e) {
        view.refused = e.what();
    }
    return view;
}

json cost_json(const CostTotals& cost) {
    return {{"measured", cost.measured},
            {"user_s", cost.user_s},
            {"sys_s", cost.sys_s},
            {"max_rss_kb", cost.max_rss_kb >= 0 ? json(cost.max_rss_kb) : json(nullptr)},
            {"scopes", cost.scopes}};
}

TaskCost task_cost(const json& entry) {
    TaskCost cost;
    const auto found = entry.find("cost");
    if (found == entry.end() || !found->is_object()) return cost;
    cost.scope = cost_scope(text_or(*found, "scope"));
    cost.user_s = number_or(*found, "user_s");
    cost.sys_s = number_or(*found, "sys_s");
    cost.max_rss_kb = rss_of(*found);
    return cost;
}

// A result or event line as one step of a task's story.
json step_json(const Line& line) {
    const json& entry = line.entry;
    json step = {{"line", line.number},
                 {"attempt", entry.value("attempt", json(nullptr))},
                 {"worker", entry.value("worker", json(nullptr))}};
    if (line.event()) {
        step["what"] = entry.at("event");
        step["start_s"] = entry.value("start_s", json(nullptr));
        step["at_s"] = entry.value("at_s", json(nullptr));
        step["reason"] = entry.value("reason", json(nullptr));
        return step;
    }
    step["what"] = "result";
    step["ok"] = entry.at("ok");
    step["start_s"] = entry.value("start_s", json(nullptr));
    step["end_s"] = entry.value("end_s", json(nullptr));
    step["error"] = entry.value("error", json(nullptr));
    step["host"] = entry.value("host", json(nullptr));
    step["cost"] = entry.value("cost", json(nullptr));
    step["value"] = entry.value("value", json(nullptr));
    if (entry.value("retrying", false)) step["retrying"] = true;
    if (entry.value("cancelled", false)) step["cancelled"] = true;
    return step;
}

json mode_json(const Journal& journal, const ModeLines& mode, const ResumeView& resume, const ReportConfig& config) {
    std::size_t ok = 0;
    std::size_t rerun = 0;
    std::map<std::string, json> failures;  // by reason
    std::vector<std::string> failure_order;
    json retried = json::array();
    std::vector<std::pair<double, std::size_t>> runs;  // run_s, line index
    struct WorkerLoad {
        std::string host;
        std::size_t results = 0, ok = 0, failed = 0, attempts_lost = 0;
        double busy_s = 0, cpu_s = 0;
        std::int64_t max_rss_kb = -1;
        json lost = json::array();
    };
    std::map<std::pair<std::size_t, std::string>, WorkerLoad> workers;  // w2 before w10
    const auto worker = [&](const json& entry) -> WorkerLoad& {
        const std::string name = text_or(entry, "worker");
        return workers[{name.size(), name}];
    };
    CostTotals cost;
    std::size_t lost_attempts = 0;
    std::size_t workers_lost = 0;
    for (const auto& [id, task] : mode.tasks) {
        if (!task.last_result) continue;
        std::size_t results = 0;
        json lost = json::array();
        for (std::size_t index : task.lines) {
            const Line& line = journal.lines[index];
            if (line.event() || line.entry.value("retrying", false))  // lost with its worker, or failed and run again
                lost.push_back(step_json(line));
            else
                ++results;
        }
        if (results > 1) ++rerun;
        const json& last = journal.lines[*task.last_result].entry;
        if (task.ok) {
            ++ok;
        } else {
            // Its first kMaxPrintable bytes: the reason is there, and the patterns then never
            // run over megabytes.
            std::string error = text_or(last, "error", "failed without a reason");
            if (error.size() > kMaxPrintable)
                error =
                    fmt::format("{}... ({} more bytes)", error.substr(0, kMaxPrintable), error.size() - kMaxPrintable);
            const std::string reason = reason_of(error);
            auto [found, added] = failures.try_emplace(
                reason, json{{"reason", reason}, {"count", 0}, {"ids", json::array()}, {"example", error}});
            if (added) failure_order.push_back(reason);
            found->second["count"] = found->second["count"].get<std::size_t>() + 1;
            found->second["ids"].push_back(id);
        }
        const auto attempt = last.value("attempt", 1);
        if (attempt > 1 || !lost.empty())
            retried.push_back({{"id", id},
                               {"attempt", attempt},
                               {"ok", last.at("ok")},
                               {"worker", last.value("worker", json(nullptr))},
                               {"lost", lost}});
        runs.emplace_back(run_s(last), *task.last_result);
    }
    for (const auto& [id, task] : mode.tasks)
        for (std::size_t index : task.lines) {
            const Line& line = journal.lines[index];
            if (line.event()) continue;
            WorkerLoad& load = worker(line.entry);
            ++load.results;
            ++(line.entry.at("ok").get<bool>() ? load.ok : load.failed);
            load.busy_s += run_s(line.entry);
            const TaskCost task_cost_here = task_cost(line.entry);
            cost.add(task_cost_here);
            load.cpu_s += task_cost_here.user_s + task_cost_here.sys_s;
            load.max_rss_kb = std::max(load.max_rss_kb, task_cost_here.max_rss_kb);
            if (const std::string host = text_or(line.entry, "host"); !host.empty()) load.host = host;
        }
    for (std::size_t index : mode.events) {
        const json& entry = journal.lines[index].entry;
        const std::string event = entry.at("event").get<std::string>();
        if (event == "requeue") {
            ++lost_attempts;
            ++worker(entry).attempts_lost;
        } else if (event == "worker lost") {
            ++workers_lost;
            worker(entry).lost.push_back({{"line", journal.lines[index].number},
                                          {"at_s", entry.value("at_s", json(nullptr))},
                                          {"reason", entry.value("reason", json(nullptr))}});
        }
    }
    std::stable_sort(runs.begin(), runs.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    json slowest = json::array();
    for (std::size_t i = 0; i < runs.size() && std::cmp_less(i, config.slowest); ++i) {
        const json& entry = journal.lines[runs[i].second].entry;
        slowest.push_back({{"id", entry.at("id")},
                           {"run_s", runs[i].first},
                           {"worker", entry.value("worker", json(nullptr))},
                           {"ok", entry.at("ok")},
                           {"line", journal.lines[runs[i].second].number}});
    }
    json failure_list = json::array();
    for (const std::string& reason : failure_order) failure_list.push_back(failures.at(reason));
    std::stable_sort(failure_list.begin(), failure_list.end(), [](const json& a, const json& b) {
        return a["count"].get<std::size_t>() > b["count"].get<std::size_t>();
    });
    json worker_list = json::array();
    for (const auto& [key, load] : workers)
        worker_list.push_back({{"worker", key.second},
                               {"host", load.host.empty() ? json(nullptr) : json(load.host)},
                               {"results", load.results},
                               {"ok", load.ok},
                               {"failed", load.failed},
                               {"busy_s", load.busy_s},
                               {"cpu_s", load.cpu_s},
                               {"max_rss_kb", load.max_rss_kb >= 0 ? json(load.max_rss_kb) : json(nullptr)},
                               {"attempts_lost", load.attempts_lost},
                               {"lost", load.lost}});
    json would_run = nullptr;
    if (resume.refused.empty() && resume.unknown.empty() && resume.plan_size > 0) {
        std::vector<TaskSpec> ids(resume.plan_size);  // the plan's ids only: skipping() goes by id
        for (TaskId id = 0; id < resume.plan_size; ++id) ids[id].id = id;
        const Plan all = Plan::of(std::move(ids));
        const auto done = resume.done.find(mode.mode);
        static const IdSet none;
        const Plan rest = skipping(all, done == resume.done.end() ? none : done->second);
        std::vector<TaskId> rest_ids;
        const auto cursor = rest.open();
        for (TaskSpec task; cursor->next(task);) rest_ids.push_back(task.id);
        const auto dependents = resume.dependents.find(mode.mode);
        would_run = {{"count", rest_ids.size()},
                     {"ranges", ranges_of(rest_ids)},
                     {"after_id", resume.plan_given ? json(nullptr) : json(resume.plan_size - 1)},
                     {"dependents", dependents == resume.dependents.end() ? 0 : dependents->second}};
    }
    std::size_t tasks = 0;
    for (const auto& [id, task] : mode.tasks)
        if (task.last_result) ++tasks;
    return {
        {"mode", mode.mode},
        {"tasks", tasks},
        {"ok", ok},
        {"failed", tasks - ok},
        {"result_lines", mode.results},
        {"rerun", rerun},
        {"attempts_lost", lost_attempts},
        {"workers_lost", workers_lost},
        {"failures", failure_list},
        {"retried", retried},
        {"slowest", slowest},
        {"workers", worker_list},
        {"cost", cost_json(cost)},
        {"resume_would_run", would_run},
    };
}

json task_json(const Journal& journal, const ResumeView& resume, TaskId id) {
    json modes = json::array();
    json kind = nullptr;
    json params = nullptr;
    for (const ModeLines& mode : journal.modes) {
        const auto found = mode.tasks.find(id);
        if (found == mode.tasks.end()) continue;
        json story = json::array();
        for (std::size_t index : found->second.lines) {
            const Line& line = journal.lines[index];
            story.push_back(step_json(line));
            if (kind.is_null() && line.entry.contains("kind")) kind = line.entry.at("kind");
            if (params.is_null() && line.entry.contains("params")) params = line.entry.at("params");
        }
        json would_run = nullptr;
        if (resume.refused.empty() && resume.unknown.empty() && resume.plan_size > 0) {
            const auto done = resume.done.find(mode.mode);
            would_run = done == resume.done.end() || !done->second.contains(id);
        }
        modes.push_back(
            {{"mode", mode.mode}, {"ok", found->second.ok}, {"story", story}, {"resume_would_run", would_run}});
    }
    return {{"id", id}, {"kind", kind}, {"params", params}, {"modes", modes}};
}

std::string seconds_text(const json& value) {
    return value.is_number() ? fmt::format("{:.3f} s", value.get<double>()) : std::string("?");
}

std::string cost_text(const json& cost) {
    if (!cost.is_object()) return "cost not measured";
    const std::int64_t rss = rss_of(cost);
    return fmt::format("cpu {:.3f} s user + {:.3f} s sys ({}){}", number_or(cost, "user_s"), number_or(cost, "sys_s"),
                       printable(text_or(cost, "scope", "?")), rss >= 0 ? ", peak " + format_kib(rss) : "");
}

std::string step_text(const json& step) {
    const std::string who =
        fmt::format("attempt {} on {}", step["attempt"].is_number() ? step["attempt"].dump() : "?",
                    printable(step["worker"].is_string() ? step["worker"].get<std::string>() : "?"));
    const std::string what = step["what"].get<std::string>();
    if (what == "result") {
        // A failed attempt that --retries ran again, or the task's own result.
        const std::string again =
            step["retrying"].is_boolean() && step["retrying"].get<bool>() ? ", ran again (--retries)" : "";
        const std::string host =
            step["host"].is_string() ? " (" + printable(step["host"].get<std::string>()) + ")" : "";
        const std::string outcome =
            step["ok"].get<bool>()
                ? "ok"
                : "FAILED: " + printable(step["error"].is_string() ? step["error"].get<std::string>() : "?");
        return fmt::format("line {}: {}{}, {} to {}: {}{}; {}", step["line"].get<int>(), who, host,
                           seconds_text(step["start_s"]), seconds_text(step["end_s"]), outcome, again,
                           cost_text(step["cost"]));
    }
    return fmt::format("line {}: {}: {} at {} (handed out at {}): {}", step["line"].get<int>(), who, printable(what),
                       seconds_text(step["at_s"]), seconds_text(step["start_s"]),
                       printable(step["reason"].is_string() ? step["reason"].get<std::string>() : "?"));
}

}  // namespace

json journal_report_json(const ReportConfig& config) {
    const Journal journal = parse(config);
    const ResumeView resume = resume_view(journal, config.plan.get());
    std::size_t events = 0;
    for (const Line& line : journal.lines) events += line.event() ? 1 : 0;
    json report = {
        {"journal", journal.name},
        {"lines", journal.lines.size()},
        {"results", journal.lines.size() - events},
        {"events", events},
        {"torn_last_line",
         journal.torn_bytes > 0 ? json{{"line", journal.torn_line}, {"bytes", journal.torn_bytes}} : json(nullptr)},
        {"resume_refused", resume.refused.empty() ? json(nullptr) : json(resume.refused)},
        {"resume_unknown", resume.unknown.empty() ? json(nullptr) : json(resume.unknown)},
    };
    if (config.task) {
        report["task"] = task_json(journal, resume, *config.task);
        if (report["task"]["modes"].empty())
            throw ConfigError(fmt::format("report --task: no line of journal '{}' names task {}",
                                          printable(journal.name), *config.task));
        return report;
    }
    json modes = json::array();
    for (const ModeLines& mode : journal.modes) modes.push_back(mode_json(journal, mode, resume, config));
    report["modes"] = modes;
    return report;
}

std::string journal_report_text(const json& report) {
    std::string out = fmt::format("journal '{}': {} line(s), {} result(s), {} event(s)\n",
                                  printable(report["journal"].get<std::string>()), report["lines"].get<std::size_t>(),
                                  report["results"].get<std::size_t>(), report["events"].get<std::size_t>());
    if (const json& torn = report["torn_last_line"]; !torn.is_null())
        out += fmt::format(
            "line {} is torn ({} bytes without a line end: the run was killed while writing it); left "
            "out, as --resume cuts it off\n",
            torn["line"].get<int>(), torn["bytes"].get<std::size_t>());
    if (const json& refused = report["resume_refused"]; !refused.is_null())
        out += fmt::format("--resume would refuse this journal: {}\n", printable(refused.get<std::string>()));
    if (const json& unknown = report["resume_unknown"]; !unknown.is_null())
        out += fmt::format("what --resume would run is not worked out: {}\n", printable(unknown.get<std::string>()));
    if (report.contains("task")) {
        const json& task = report["task"];
        out += fmt::format("task {}: {} {}\n", task["id"].get<TaskId>(),
                           printable(task["kind"].is_string() ? task["kind"].get<std::string>() : "?"),
                           printable(exact_text(task["params"]), 300));  // a byte that is not UTF-8 as \xNN
        for (const json& mode : task["modes"]) {
            out += fmt::format("== {}: {}\n", printable(mode["mode"].get<std::string>()),
                               mode["ok"].get<bool>() ? "ok" : "not ok");
            for (const json& step : mode["story"]) out += "  " + step_text(step) + "\n";
            if (mode["resume_would_run"].is_boolean())
                out += mode["resume_would_run"].get<bool>() ? "  --resume would run it again\n"
                                                            : "  --resume would not run it: it is done\n";
        }
        return out;
    }
    for (const json& mode : report["modes"]) {
        out += fmt::format("\n== {}: {} task(s) in the journal, {} ok, {} failed",
                           printable(mode["mode"].get<std::string>()), mode["tasks"].get<std::size_t>(),
                           mode["ok"].get<std::size_t>(), mode["failed"].get<std::size_t>());
        if (const auto rerun = mode["rerun"].get<std::size_t>(); rerun > 0)
            out += fmt::format(", {} run again by --resume", rerun);
        out += fmt::format("; {} attempt(s) lost, {} worker(s) lost\n", mode["attempts_lost"].get<std::size_t>(),
                           mode["workers_lost"].get<std::size_t>());
        if (!mode["failures"].empty()) {
            out += "failures by reason:\n";
            for (const json& failure : mode["failures"]) {
                std::vector<TaskId> ids = failure["ids"].get<std::vector<TaskId>>();
                out +=
                    fmt::format("  {:>5} x {}  (tasks {})\n", failure["count"].get<std::size_t>(),
                                printable(failure["reason"].get<std::string>(), 300), ranges_text(ranges_of(ids), 10));
            }
        }
        if (!mode["retried"].empty()) {
            out += "retried (attempts lost with their worker, or failed and run again by --retries):\n";
            for (const json& retry : mode["retried"]) {
                out += fmt::format("  task {}: {} on attempt {} on {}\n", retry["id"].get<TaskId>(),
                                   retry["ok"].get<bool>() ? "ok" : "failed", retry["attempt"].dump(),
                                   printable(retry["worker"].is_string() ? retry["worker"].get<std::string>() : "?"));
                for (const json& step : retry["lost"]) out += "    " + step_text(step) + "\n";
            }
        }
        if (!mode["slowest"].empty()) {
            out += "slowest:\n";
            for (const json& slow : mode["slowest"])
                out += fmt::format("  task {:>6} {:>9.3f} s on {} ({}, line {})\n", slow["id"].get<TaskId>(),
                                   slow["run_s"].get<double>(),
                                   printable(slow["worker"].is_string() ? slow["worker"].get<std::string>() : "?"),
                                   slow["ok"].get<bool>() ? "ok" : "failed", slow["line"].get<int>());
        }
        out += fmt::format("  {:<8} {:>7} {:>6} {:>6} {:>9} {:>9} {:>9} {:>8}  {}\n", "worker", "results", "ok",
                           "failed", "busy_s", "cpu_s", "peak_rss", "requeued", "host");
        for (const json& load : mode["workers"]) {
            out += fmt::format("  {:<8} {:>7} {:>6} {:>6} {:>9.3f} {:>9.3f} {:>9} {:>8}  {}\n",
                               printable(load["worker"].get<std::string>(), 64), load["results"].get<std::size_t>(),
                               load["ok"].get<std::size_t>(), load["failed"].get<std::size_t>(),
                               load["busy_s"].get<double>(), load["cpu_s"].get<double>(),
                               format_kib(load["max_rss_kb"].is_number() ? load["max_rss_kb"].get<std::int64_t>() : -1),
                               load["attempts_lost"].get<std::size_t>(),
                               printable(load["host"].is_string() ? load["host"].get<std::string>() : "-", 100));
            for (const json& death : load["lost"])
                out += fmt::format("           lost at {}: {} (line {})\n", seconds_text(death["at_s"]),
                                   printable(death["reason"].is_string() ? death["reason"].get<std::string>() : "?"),
                                   death["line"].get<int>());
        }
        const json& cost = mode["cost"];
        if (cost["measured"].get<std::size_t>() > 0)
            out += fmt::format("cost of {} result(s): cpu {:.3f} s user + {:.3f} s sys, largest peak {} ({})\n",
                               cost["measured"].get<std::size_t>(), cost["user_s"].get<double>(),
                               cost["sys_s"].get<double>(),
                               format_kib(cost["max_rss_kb"].is_number() ? cost["max_rss_kb"].get<std::int64_t>() : -1),
                               fmt::join(cost["scopes"].get<std::vector<std::string>>(), "+"));
        if (const json& rest = mode["resume_would_run"]; rest.is_object()) {
            // Without --plan, the tasks past the journal's last id are not known; with it, none are left out.
            const std::string beyond = rest["after_id"].is_null() ? std::string()
                                                                  : fmt::format(", and any task of the plan after {}",
                                                                                rest["after_id"].get<TaskId>());
            const std::size_t dependents = rest.value("dependents", std::size_t{0});
            const std::string why = dependents == 0
                                        ? std::string()
                                        : fmt::format(
                                              " ({} of them ok in the journal, run again because a task they wait "
                                              "for does)",
                                              dependents);
            if (rest["count"].get<std::size_t>() == 0)
                out += rest["after_id"].is_null() ? std::string("--resume would run none of the plan's tasks\n")
                                                  : fmt::format("--resume would run none of tasks 0-{}{}\n",
                                                                rest["after_id"].get<TaskId>(), beyond);
            else
                out += fmt::format("--resume would run {} task(s): {}{}{}\n", rest["count"].get<std::size_t>(),
                                   ranges_text(rest["ranges"]), beyond, why);
        }
    }
    return out;
}

int journal_report(const ReportConfig& config) {
    json report = journal_report_json(config);
    if (config.json) keep_exact_bytes(report);  // strings that are not UTF-8: their bytes in "bytes", as in the journal
    const std::string text =
        config.json ? report.dump(2, ' ', false, json::error_handler_t::replace) + "\n" : journal_report_text(report);
    if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size() || std::fflush(stdout) != 0)
        return static_cast<int>(ExitCode::TasksFailed);
    return static_cast<int>(ExitCode::Ok);
}

}  // namespace taskfarm
