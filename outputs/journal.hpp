#pragma once
// Reading a --results journal back for --resume.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <istream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "id_set.hpp"
#include "plan.hpp"

namespace taskfarm {

// Task ids recorded as ok, per mode name: a compact record (IdSet), not a set of ids.
using Done = std::map<std::string, IdSet>;

// A journal to read: its name in messages ("NAME:LINE") and a way to open it from its start,
// as often as a reader needs to (a file, or the text a report holds), up to `length` bytes
// (its complete lines; what follows the last '\n' of a stream is a torn line, left out).
struct JournalSource {
    std::string name;
    std::function<std::unique_ptr<std::istream>()> open;  // throws ConfigError when it cannot
    std::uintmax_t length = UINTMAX_MAX;

    static JournalSource file(const std::filesystem::path& path, std::uintmax_t length, const std::string& flag);
    static JournalSource text(std::string_view text, std::string name);  // `text` must outlive it
};

// What --resume would make of `journal` against `plan`, without touching it (a report asks
// this): the checks and the result of read_journal_for_resume(), with `flag` in messages.
Done check_journal(const JournalSource& journal, const Plan& plan, const std::string& flag = "--resume");

// Reads the journal at `path`, line by line (never whole), checks that every line belongs
// to `plan` (an id below its count, the same kind and parameters) and returns what is
// done. `plan.count` must be known. A torn last line (the coordinator was killed while
// writing it) is cut off the file, so appending goes on from a clean line end. Throws
// ConfigError for a missing or unreadable file, a malformed line before the last, a second
// ok line of one task and mode, or a line from another plan.
//
// The plan is not held either: the first line of each task is summed into a 64-bit digest
// of (id, kind, params), and one pass of a cursor over the plan sums the same for those ids.
// Only when the two differ is the journal read again, a million ids at a time, to name the
// first line that does not match.
Done read_journal_for_resume(const std::filesystem::path& path, const Plan& plan);

// --resume of a plan with "after": a task `done` has as ok runs again when a task it waits for
// runs again (not in `done`: its line gone from the journal, or not ok there), since what it
// read may change; and so on down the chain. Erases them from `done` and returns their ids in
// plan order. One pass of a cursor over `plan`, in order: a task's dependencies come before
// it. The one rule of a run's --resume and of `coordinator report --plan`.
std::vector<TaskId> rerun_dependents(const Plan& plan, IdSet& done);

// The settings the last run that wrote to the journal at `path` recorded (JournalSink::
// note_settings()), with "FILE:LINE" of that line; nullopt for a journal without one (a run
// with no such settings writes none). Throws ConfigError as read_done() does.
struct JournalSettings {
    Json settings;
    std::string where;
};
std::optional<JournalSettings> journal_settings(const std::filesystem::path& path, const std::string& flag);

// Cuts a torn last line (a run killed while writing it) off the journal at `path`, with a
// warning that gives its size and first bytes, so that appending goes on from a line end;
// returns the length of its complete lines. Every reader that appends to a journal it reads
// (--resume, a Farm's resume, the service's restart) repairs it through this. Throws
// ConfigError naming `flag` when the file cannot be read or cut.
std::uintmax_t cut_torn_line(const std::filesystem::path& path, const std::string& flag);

// The first setting (by key) whose value in `identity` (what changes results, now) is not the
// one the journal's last run recorded (journal_settings(); a journal without any recorded
// none); null `now` or `then`: not given. nullopt: all agree. Throws as journal_settings().
struct ChangedSetting {
    std::string key;
    Json now;
    Json then;
    std::string where;  // "FILE:LINE" of the recorded settings, or "it records none"
};
std::optional<ChangedSetting> changed_setting(const std::filesystem::path& path, const Json& identity,
                                              const std::string& flag);

// What a journal records as ok per mode, without a plan to check it against: for readers
// of journals (a report). Throws ConfigError as above, naming `flag`.
Done read_done(const std::filesystem::path& path, const std::string& flag);

}  // namespace taskfarm
