#pragma once
// The CLI11 validators that the one-shot run's flags (cli.cpp) and the service's subcommands
// (service.cpp) share: one rule for a number of seconds and for a whole number, so that a
// value is refused the same way, with the same words, by each (common/checks.hpp).

#include <string>
#include <utility>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "checks.hpp"

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

}  // namespace taskfarm
