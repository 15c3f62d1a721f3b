#pragma once
// The CLI11 validators and options that the programs' command lines share: the one-shot run's
// flags (coordinator/cli.cpp), the service's subcommands (service.cpp) and the worker's
// (worker/options.cpp): one rule for a number of seconds, a whole number, the heartbeats and
// the log level, so that a value is refused the same way, with the same words, by each
// (common/checks.hpp). Header-only: only those option files include it (each links CLI11).

#include <iterator>
#include <string>
#include <utility>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "checks.hpp"
#include "log.hpp"

namespace taskfarm {

// A number of seconds in [lo, hi]: finite, written in full.
inline CLI::Validator seconds_between(double lo, double hi) {
    return CLI::Validator([lo, hi](std::string& text) { return check_seconds(text, lo, hi); },
                          fmt::format("SECONDS in [{:g} - {:g}]", lo, hi));
}

// A whole number from 0 (CLI11 would read -1 as 2^64-1, and "1,,2" as 1, 2), shown as `name`.
inline CLI::Validator whole_number(std::string name) {
    return CLI::Validator([](std::string& text) { return check_unsigned(text); }, std::move(name));
}

inline const CLI::Validator kUnsigned = whole_number("UINT");

// --log-level: one of spdlog's levels.
inline CLI::Option* add_log_level_option(CLI::App& app, std::string& level, const std::string& help) {
    return app.add_option("--log-level", level, help)
        ->check(CLI::IsMember(std::vector<std::string>(std::begin(kLogLevels), std::end(kLogLevels))));
}

// --heartbeat-interval and --heartbeat-timeout, each in its range; require_heartbeats()
// checks the two together once parsed.
inline void add_heartbeat_options(CLI::App& app, double& interval_s, double& timeout_s,
                                  const std::string& interval_help, const std::string& timeout_help) {
    app.add_option("--heartbeat-interval", interval_s, interval_help)
        ->check(seconds_between(0.001, 3600))
        ->capture_default_str();
    app.add_option("--heartbeat-timeout", timeout_s, timeout_help)
        ->check(seconds_between(kMinHeartbeatTimeout, 86'400))
        ->capture_default_str();
}

// The heartbeat options together (check_heartbeats), as a usage error naming the flag.
inline void require_heartbeats(double interval_s, double timeout_s) {
    if (const std::string why = check_heartbeats(interval_s, timeout_s); !why.empty())
        throw CLI::ValidationError("--heartbeat-interval", why);
}

}  // namespace taskfarm
