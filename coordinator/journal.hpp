#pragma once
// Reading a --results journal back for --resume.

#include <filesystem>
#include <map>
#include <set>
#include <string>

#include "plan.hpp"

namespace taskfarm {

// Task ids recorded as ok, per mode name.
using Done = std::map<std::string, std::set<TaskId>>;

// Reads the journal at `path`, checks that every line belongs to `plan` (same id, kind and
// parameters) and returns what is done. A torn last line (the coordinator was killed while
// writing it) is cut off the file, so appending goes on from a clean line end. Throws
// ConfigError for a missing or unreadable file, a malformed line before the last, or a
// line from another plan.
Done read_journal_for_resume(const std::filesystem::path& path, const Plan& plan);

// The tasks of `plan` not in `done`, in plan order.
Plan remaining(const Plan& plan, const std::set<TaskId>& done);

}  // namespace taskfarm
