#pragma once

// Checks the coordinator's and the worker's command lines share: what cannot work is refused
// while the flags are read (exit 2), with the value in the message.
#include <charconv>
#include <cmath>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "text.hpp"

namespace taskfarm {

// `text` in full as a whole number of type T (from_chars: no sign for an unsigned T, no
// space, no exception past T's range), or nullopt. Numbers from users and files are read so,
// never with std::sto* (which throws std::out_of_range) nor std::regex (which recurses once a
// character and overflows the stack on a long text).
template <class T>
std::optional<T> parse_whole(std::string_view text) {
    T value{};
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
    return value;
}

// A number of seconds: finite (no nan, inf), written in full (no trailing text).
inline std::optional<double> parse_finite(std::string_view text) {
    double value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size() || !std::isfinite(value)) return std::nullopt;
    return value;
}

// "" if `text` is a number of seconds in [lo, hi], else why not.
inline std::string check_seconds(std::string_view text, double lo, double hi) {
    const auto value = parse_finite(text);
    if (!value || *value < lo || *value > hi)
        return fmt::format("'{}' is not a number of seconds from {:g} to {:g}", printable(text, 100), lo, hi);
    return "";
}

// "" if `text` is a whole number in [0, 2^64): CLI11 would read -1 into an unsigned as 2^64-1.
inline std::string check_unsigned(std::string_view text) {
    unsigned long long value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (text.empty() || ec != std::errc{} || end != text.data() + text.size())
        return fmt::format("'{}' is not a whole number from 0 to 18446744073709551615", printable(text, 100));
    return "";
}

// The least --heartbeat-timeout: a peer's heartbeat every interval is late by up to a poll
// round and a scheduling delay on a busy machine, tens of milliseconds; below this, healthy
// workers are declared dead.
inline constexpr double kMinHeartbeatTimeout = 0.1;

// "" if a heartbeat every `interval` seconds can keep a peer alive under `timeout`: at least
// two heartbeats fit in a timeout, so one late heartbeat is not a death.
inline std::string check_heartbeats(double interval, double timeout) {
    if (interval * 2 > timeout)
        return fmt::format(
            "--heartbeat-interval {:g} must be at most half of --heartbeat-timeout {:g}: a peer is "
            "declared dead when silent for the timeout, so two heartbeats must fit in it",
            interval, timeout);
    return "";
}

}  // namespace taskfarm
