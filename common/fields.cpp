#include <algorithm>
#include <cmath>
#include <stdexcept>

#include <fmt/format.h>

#include <taskfarm/task_type.hpp>

namespace taskfarm {
namespace {

std::string shown(const Json& value) {
    std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
    return text.size() > 100 ? text.substr(0, 100) + "..." : text;
}

}  // namespace

Fields::Fields(const Params& params) : params_(params) {
    if (!params_.is_object()) throw std::invalid_argument(fmt::format("parameters must be a JSON object, not {}", shown(params_)));
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
    if (!value->is_number() || !std::isfinite(value->get<double>()) || value->get<double>() < 0)
        throw std::invalid_argument(fmt::format("\"{}\" must be a number of seconds >= 0, not {}", key, shown(*value)));
    return value->get<double>();
}

std::optional<std::uint64_t> Fields::count(std::string_view key) {
    const Json* value = take(key);
    if (!value) return std::nullopt;
    if (!value->is_number_unsigned())
        throw std::invalid_argument(fmt::format("\"{}\" must be a whole number >= 0, not {}", key, shown(*value)));
    return value->get<std::uint64_t>();
}

std::optional<std::string> Fields::text(std::string_view key) {
    const Json* value = take(key);
    if (!value) return std::nullopt;
    if (!value->is_string()) throw std::invalid_argument(fmt::format("\"{}\" must be a string, not {}", key, shown(*value)));
    return value->get<std::string>();
}

void Fields::finish() const {
    for (const auto& [key, value] : params_.items())
        if (std::find(read_.begin(), read_.end(), key) == read_.end())
            throw std::invalid_argument(fmt::format("unknown field \"{}\"", key));
}

}  // namespace taskfarm
