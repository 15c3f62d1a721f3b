#pragma once
// Reading a --results journal back for --resume.

#include <filesystem>
#include <map>
#include <string>

#include "id_set.hpp"
#include "plan.hpp"

namespace taskfarm {

// Task ids recorded as ok, per mode name: a compact record (IdSet), not a set of ids.
using Done = std::map<std::string, IdSet>;

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

// What a journal records as ok per mode, without a plan to check it against: for readers
// of journals (a report). Throws ConfigError as above, naming `flag`.
Done read_done(const std::filesystem::path& path, const std::string& flag);

}  // namespace taskfarm
