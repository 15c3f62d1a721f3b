#pragma once

#include <istream>
#include <string>
#include <vector>

#include "config.hpp"
#include "task.hpp"

namespace taskfarm {

// The tasks of one run. Ids are 0..N-1 in plan order; every mode runs the same plan.
struct Plan {
    std::vector<TaskSpec> tasks;
};

// Deterministic: the same config (seed included) gives the same plan on every machine.
// With config.plan_path the tasks come from that file (read_plan); with config.urls_path,
// a download per URL in that file (read_url_list); else --tasks tasks of kind --task:
// sleeps of --duration, cpu task i counting the primes in [i*cpu_n, (i+1)*cpu_n), or
// downloads of `served_urls` (the built-in server's, one per task). Download tasks get
// --max-bytes and --retries; for_mode() gives them their directory. Throws ConfigError for
// a plan or URL file it cannot read or accept.
Plan make_plan(const RunConfig& config, const std::vector<std::string>& served_urls = {});

// `plan` for one mode: its download tasks save into config.out_dir/<mode>/ (made absolute,
// so that a worker process with another working directory would agree).
Plan for_mode(Plan plan, Mode mode, const RunConfig& config);

// Reads a list of URLs, one per line; blank lines and lines whose first non-blank
// character is '#' are skipped, as is blank space around a URL. A line that is not an
// http:// or https:// URL throws ConfigError("NAME:LINE: problem"); so does a list without URLs.
std::vector<std::string> read_url_list(std::istream& in, const std::string& name);

// Reads a JSON Lines plan, one task per line:
//   {"kind":"sleep","seconds":0.5}
//   {"kind":"cpu","n":2000000}          primes below n, i.e. "lo":0,"hi":n
//   {"kind":"cpu","lo":100,"hi":200}
//   {"kind":"download","url":"https://example.com/a.jpg"}
// Blank lines and lines whose first non-blank character is '#' are skipped. The first bad
// line throws ConfigError("NAME:LINE: problem"); so does a plan without tasks. A line's
// "timeout_s" is its task's (0: no limit); without one the task gets kTimeoutNotGiven,
// which make_plan() replaces with --task-timeout.
Plan read_plan(std::istream& in, const std::string& name);
inline constexpr double kTimeoutNotGiven = -1;

}  // namespace taskfarm
