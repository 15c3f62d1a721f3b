#include "journal.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <functional>
#include <map>
#include <set>
#include <optional>
#include <set>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "errors.hpp"
#include "journal_line.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

// How many task ids the search for a mismatching line holds at once (8 bytes each).
constexpr std::uint64_t kCheckChunk = std::uint64_t{1} << 20;

std::uint64_t mix(std::uint64_t x) {  // splitmix64's finaliser
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// What a journal line and a plan task have to agree on, in 64 bits.
std::uint64_t task_digest(TaskId id, const std::string& kind, const Json& params) {
    // exact_text(): the bytes that ran, whether or not they are UTF-8 (journal_line.hpp).
    return mix(std::hash<std::string>{}(kind + '\0' + exact_text(params)) + mix(id + 1));
}

struct Line {
    std::size_t number;
    TaskId id;
    std::string kind;
    Json params;
    bool ok;
    std::string mode;
};

// Calls `each` for every line of the journal's complete lines, parsed; empty lines are
// skipped. Throws ConfigError naming the line for one that is not a journal line.
void for_each_line(const JournalSource& journal, const std::string& flag, const std::function<void(const Line&)>& each,
                   const std::function<void(const nlohmann::json&)>& on_event = nullptr) {
    const std::unique_ptr<std::istream> opened = journal.open();
    std::istream& in = *opened;
    // Bounded per line, and every message FILE:LINE (journal_line.hpp).
    JournalLineReader reader(in, flag, journal.name, journal.length);
    Line parsed;
    for (std::string text; reader.next(text);) {
        if (text.empty()) continue;
        const std::string at = reader.where();
        const nlohmann::json entry = parse_journal_line(text, at);
        check_journal_line(entry, at);
        // What happened on the way (a lost attempt, a lost worker; decision 93) says
        // nothing about what is done.
        if (entry.contains("event")) {
            if (on_event) on_event(entry);
            continue;
        }
        const auto kind = entry.find("kind");
        const auto params = entry.find("params");
        if (kind == entry.end() || !kind->is_string())
            throw ConfigError(fmt::format("{}: not a journal line: \"kind\" is not a string", at));
        if (params == entry.end()) throw ConfigError(fmt::format("{}: not a journal line: it has no \"params\"", at));
        parsed.number = reader.number();
        parsed.id = entry.at("id").get<TaskId>();
        parsed.kind = kind->get<std::string>();
        parsed.params = *params;
        parsed.ok = entry.at("ok").get<bool>();
        parsed.mode = entry.at("mode").get<std::string>();
        each(parsed);
    }
}

std::string where(const std::string& flag, const JournalSource& journal, std::size_t number) {
    return fmt::format("{}: {}:{}", flag, printable(journal.name), number);
}

// Reads the ok lines into a Done; a second ok line of one task and mode is refused, naming
// the first (found by reading again: only then is a line number per task needed).
Done read_ok_lines(const JournalSource& journal, const std::string& flag,
                   const std::function<void(const Line&)>& also = nullptr) {
    Done done;
    // Tasks ok above that a resume ran again ({"event":"rerun"}: a dependency of theirs ran
    // again): the next ok line of each is theirs, not a second run's.
    std::map<std::string, std::set<TaskId>> again;
    const auto on_event = [&](const nlohmann::json& entry) {
        if (entry.value("event", std::string()) != "rerun" || !entry.contains("ids") || !entry.at("ids").is_array())
            return;
        std::set<TaskId>& ids = again[entry.value("mode", std::string())];
        for (const nlohmann::json& range : entry.at("ids"))
            if (range.is_array() && range.size() == 2 && range[0].is_number_unsigned() && range[1].is_number_unsigned())
                for (TaskId id = range[0].get<TaskId>(); id <= range[1].get<TaskId>() && ids.size() < kCheckChunk; ++id)
                    ids.insert(id);
    };
    for_each_line(
        journal, flag,
        [&](const Line& line) {
            if (also) also(line);
            if (!line.ok) {
                // A task run again that failed this time is not done any more.
                if (const auto found = again.find(line.mode); found != again.end() && found->second.erase(line.id) > 0)
                    done[line.mode].erase(line.id);
                return;
            }
            // One run writes one line per task and mode, and a resume reruns only what is not
            // ok (or what waits for a task it reruns, said by a "rerun" event first): a second
            // ok line otherwise means two runs appended at once (or a hand edit), and the counts
            // built on this journal would be wrong.
            if (done[line.mode].insert(line.id)) return;
            if (const auto found = again.find(line.mode); found != again.end() && found->second.erase(line.id) > 0)
                return;
            std::size_t first = 0;
            try {
                for_each_line(journal, flag, [&](const Line& earlier) {
                    if (earlier.ok && earlier.id == line.id && earlier.mode == line.mode) {
                        first = earlier.number;
                        throw std::range_error("found");
                    }
                });
            } catch (const std::range_error&) {
            }
            throw ConfigError(
                fmt::format("{}: task {} of {} is ok a second time (first on line {}); two runs wrote to this "
                            "journal, so it cannot say what is done",
                            where(flag, journal, line.number), line.id, printable(line.mode), first));
        },
        on_event);
    return done;
}

// The task of `plan` with id `id`, made by a cursor of its own.
std::optional<TaskSpec> task_of(const Plan& plan, TaskId id) {
    const auto cursor = plan.open();
    for (TaskSpec task; cursor->next(task);)
        if (task.id == id) return task;
    return std::nullopt;
}

// The digests disagree: finds the first line (a million ids at a time) whose task differs
// from the plan's and throws naming it. Returns if none does (the digest of a number can
// differ where JSON's comparison does not: 2 and 2.0).
void name_the_mismatch(const JournalSource& journal, const std::string& flag, const Plan& plan, std::uint64_t count) {
    for (std::uint64_t lo = 0; lo < count; lo += kCheckChunk) {
        const std::uint64_t hi = std::min(count, lo + kCheckChunk);
        std::vector<std::uint64_t> digests(hi - lo);
        const auto cursor = plan.open();
        for (TaskSpec task; cursor->next(task);)
            if (task.id >= lo && task.id < hi)
                digests[task.id - lo] = task_digest(task.id, task.type->name(), task.params);
        for_each_line(journal, flag, [&](const Line& line) {
            if (line.id < lo || line.id >= hi || task_digest(line.id, line.kind, line.params) == digests[line.id - lo])
                return;
            const auto task = task_of(plan, line.id);
            if (task && task->type->name() == line.kind && task->params == line.params) return;
            throw ConfigError(fmt::format(
                "{}: task {} is {} {} there but {} {} here; the journal is from a different plan",
                where(flag, journal, line.number), line.id, printable(line.kind), printable(exact_text(line.params)),
                task ? task->type->name() : "?", task ? printable(exact_text(task->params)) : "?"));
        });
    }
}

}  // namespace

JournalSource JournalSource::file(const std::filesystem::path& path, std::uintmax_t length, const std::string& flag) {
    return {path.string(),
            [path, flag]() -> std::unique_ptr<std::istream> {
                auto in = std::make_unique<std::ifstream>(path, std::ios::binary);
                if (!*in)
                    throw ConfigError(fmt::format("{}: cannot read journal '{}': {}", flag, printable(path.string()),
                                                  std::strerror(errno)));
                return in;
            },
            length};
}

JournalSource JournalSource::text(std::string_view text, std::string name) {
    return {std::move(name), [text]() -> std::unique_ptr<std::istream> {
                return std::make_unique<std::istringstream>(std::string(text));
            }};
}

Done check_journal(const JournalSource& journal, const Plan& plan, const std::string& flag) {
    const std::uint64_t count = plan.known_count().value();
    IdSet seen;                        // ids with a line
    std::uint64_t journal_digest = 0;  // summed over the first line of each id
    Done done = read_ok_lines(journal, flag, [&](const Line& line) {
        if (line.id >= count)
            throw ConfigError(
                fmt::format("{}: task {} is not in this plan of {} tasks; the journal is from a different plan",
                            where(flag, journal, line.number), line.id, count));
        if (seen.insert(line.id)) journal_digest += task_digest(line.id, line.kind, line.params);
    });
    if (seen.empty()) return done;
    std::uint64_t plan_digest = 0;
    const auto cursor = plan.open();
    for (TaskSpec task; cursor->next(task);)
        if (seen.contains(task.id)) plan_digest += task_digest(task.id, task.type->name(), task.params);
    if (plan_digest != journal_digest) name_the_mismatch(journal, flag, plan, count);
    return done;
}

std::uintmax_t cut_torn_line(const std::filesystem::path& path, const std::string& flag) {
    const std::uintmax_t complete = complete_length(path, flag);
    std::error_code ec;
    if (const auto size = std::filesystem::file_size(path, ec); !ec && complete < size) {
        std::ifstream in(path, std::ios::binary);
        in.seekg(static_cast<std::streamoff>(complete));
        // Its size, and its start to recognise it by: never "(N more bytes)" of a 4 KiB read,
        // which would understate a torn tail of hundreds of megabytes.
        constexpr std::size_t kShown = 80;
        std::string torn(static_cast<std::size_t>(std::min<std::uintmax_t>(size - complete, kShown)), '\0');
        in.read(torn.data(), static_cast<std::streamsize>(torn.size()));
        spdlog::warn(
            "journal '{}' ends in a torn line of {} bytes without a line end (the run was killed while "
            "writing it); cutting it off. It begins: {}{}",
            printable(path.string()), size - complete, printable(torn, kShown), size - complete > kShown ? " ..." : "");
        std::filesystem::resize_file(path, complete, ec);
        if (ec)
            throw ConfigError(
                fmt::format("{}: cannot repair journal '{}': {}", flag, printable(path.string()), ec.message()));
    }
    return complete;
}

Done read_journal_for_resume(const std::filesystem::path& path, const Plan& plan) {
    const std::uintmax_t complete = cut_torn_line(path, "--resume");
    return check_journal(JournalSource::file(path, complete, "--resume"), plan, "--resume");
}

std::optional<ChangedSetting> changed_setting(const std::filesystem::path& path, const Json& identity,
                                              const std::string& flag) {
    const auto recorded = journal_settings(path, flag).value_or(JournalSettings{Json::object(), "it records none"});
    std::set<std::string> keys;
    for (const auto& [key, value] : identity.items()) keys.insert(key);
    for (const auto& [key, value] : recorded.settings.items()) keys.insert(key);
    for (const std::string& key : keys) {
        Json now = identity.value(key, Json(nullptr));
        Json then = recorded.settings.value(key, Json(nullptr));
        if (now != then) return ChangedSetting{key, std::move(now), std::move(then), recorded.where};
    }
    return std::nullopt;
}

std::optional<JournalSettings> journal_settings(const std::filesystem::path& path, const std::string& flag) {
    const JournalSource journal = JournalSource::file(path, complete_length(path, flag), flag);
    const std::unique_ptr<std::istream> opened = journal.open();
    JournalLineReader reader(*opened, flag, journal.name, journal.length);
    std::optional<JournalSettings> last;
    for (std::string text; reader.next(text);) {
        // Cheap for the result lines: only a line that names the event is parsed.
        if (text.find("\"settings\"") == std::string::npos) continue;
        const std::string at = reader.where();
        const nlohmann::json entry = parse_journal_line(text, at);
        const auto event = entry.find("event");
        if (event == entry.end() || *event != "settings") continue;
        const auto settings = entry.find("settings");
        if (settings == entry.end() || !settings->is_object())
            throw ConfigError(fmt::format("{}: not a journal line: \"settings\" is not an object", at));
        last = JournalSettings{*settings, fmt::format("{}:{}", printable(journal.name), reader.number())};
    }
    return last;
}

Done read_done(const std::filesystem::path& path, const std::string& flag) {
    return read_ok_lines(JournalSource::file(path, complete_length(path, flag), flag), flag);
}

std::vector<TaskId> rerun_dependents(const Plan& plan, IdSet& done) {
    std::vector<TaskId> again;
    if (done.empty()) return again;
    const auto cursor = plan.open();
    for (TaskSpec task; cursor->next(task);) {
        if (task.after.empty() || !done.contains(task.id)) continue;
        if (std::all_of(task.after.begin(), task.after.end(), [&](TaskId before) { return done.contains(before); }))
            continue;
        done.erase(task.id);  // before its dependents are looked at: they come later
        again.push_back(task.id);
    }
    return again;
}

}  // namespace taskfarm
