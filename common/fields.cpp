#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include <taskfarm/task_type.hpp>

#include "text.hpp"

namespace taskfarm {
namespace {

// A value or key for a message: printable (a field may hold anything), at most 100 bytes.
std::string shown(const Json& value) {
    return printable(value.dump(-1, ' ', false, Json::error_handler_t::replace), 100);
}

}  // namespace

Json Flag::read(const std::string& text) const {
    if (parse) return parse(text);
    if (type == Type::Text) return Json(text);
    const auto out_of_range = [&] {
        return std::invalid_argument(fmt::format("'{}' is not a {} from {:.16g} to {:.16g}", printable(text, 100),
                                                 type == Type::Count ? "whole number" : "number", least, most));
    };
    if (type == Type::Size) {
        const auto bytes = parse_size(text);
        if (!bytes)
            throw std::invalid_argument(
                fmt::format("'{}' is not a size like 1000, 200K, 1.5M or 2G", printable(text, 100)));
        if (static_cast<double>(*bytes) < least)
            throw std::invalid_argument(fmt::format("'{}' is below {:.16g} byte(s)", printable(text, 100), least));
        if (static_cast<double>(*bytes) > most)
            throw std::invalid_argument(fmt::format("'{}' is over {:.16g} bytes", printable(text, 100), most));
        return Json(*bytes);
    }
    if (type == Type::Count) {
        std::uint64_t value = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (ec != std::errc{} || end != text.data() + text.size() || text.empty() ||
            static_cast<double>(value) < least || static_cast<double>(value) > most)
            throw out_of_range();
        return Json(value);
    }
    double value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size() || !std::isfinite(value) || value < least || value > most)
        throw out_of_range();
    return Json(value);
}

Fields::Fields(const Params& params) : params_(params) {
    if (!params_.is_object())
        throw std::invalid_argument(fmt::format("parameters must be a JSON object, not {}", shown(params_)));
}

bool Fields::has(std::string_view key) const { return params_.contains(key); }

const Json* Fields::take(std::string_view key) {
    if (std::find(read_.begin(), read_.end(), key) == read_.end()) read_.emplace_back(key);
    const auto found = params_.find(key);
    return found == params_.end() ? nullptr : &*found;
}

const Json* Fields::any(std::string_view key) { return take(key); }

std::optional<double> Fields::seconds(std::string_view key) {
    const Json* value = take(key);
    if (!value) return std::nullopt;
    if (!value->is_number() || !(value->get<double>() >= 0) || value->get<double>() > kMaxSeconds)
        throw std::invalid_argument(fmt::format("\"{}\" must be a number of seconds from 0 to {:.0f} (a year), not {}",
                                                printable(key, 100), kMaxSeconds, shown(*value)));
    return value->get<double>();
}

std::optional<std::uint64_t> Fields::count(std::string_view key) {
    const Json* value = take(key);
    if (!value) return std::nullopt;
    if (!value->is_number_unsigned())
        throw std::invalid_argument(
            fmt::format("\"{}\" must be a whole number >= 0, not {}", printable(key, 100), shown(*value)));
    return value->get<std::uint64_t>();
}

std::optional<std::string> Fields::text(std::string_view key) {
    const Json* value = take(key);
    if (!value) return std::nullopt;
    if (!value->is_string())
        throw std::invalid_argument(fmt::format("\"{}\" must be a string, not {}", printable(key, 100), shown(*value)));
    return value->get<std::string>();
}

void Fields::finish() const {
    for (const auto& [key, value] : params_.items())
        if (std::find(read_.begin(), read_.end(), key) == read_.end())
            throw std::invalid_argument(fmt::format("unknown field \"{}\"", printable(key, 100)));
}

}  // namespace taskfarm
