#pragma once
// The options both programs' command lines have alike (the coordinator's cli.cpp and the
// worker's options.cpp), with their checks written once. Header-only and CLI11's: only
// the two option files include it (each links CLI11); nothing else in common/ needs CLI11.

#include <iterator>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "checks.hpp"
#include "log.hpp"

namespace taskfarm {

// A number of seconds from `lo` to `hi`.
inline CLI::Validator seconds_between(double lo, double hi) {
    return CLI::Validator([lo, hi](std::string& text) { return check_seconds(text, lo, hi); },
                          fmt::format("SECONDS in [{:g} - {:g}]", lo, hi));
}

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
