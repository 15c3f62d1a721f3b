#include "resources.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "affinity.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

constexpr std::uint64_t kMiB = 1024 * 1024;

bool resource_name(std::string_view name) {
    return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
        return c == '_' || c == '-' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    });
}

void check_name(std::string_view name) {
    if (!resource_name(name))
        throw std::invalid_argument(
            fmt::format("resource name '{}': want letters, digits, '_' and '-'", printable(name, 100)));
}

std::uint64_t amount_of(std::string_view name, std::string_view text) {
    std::uint64_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec == std::errc{} && end == text.data() + text.size() && value >= 1) return value;
    if (name == "mem")
        if (const auto bytes = parse_size(text); bytes && *bytes > 0) return (*bytes + kMiB - 1) / kMiB;
    throw std::invalid_argument(fmt::format("resource {}: amount '{}': want a whole number >= 1{}", name,
                                            printable(text, 100), name == "mem" ? " (MiB) or a size such as 2G" : ""));
}

// Sorted by name, each once.
ResourceRequest sorted(ResourceRequest request) {
    std::sort(request.begin(), request.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
    for (std::size_t i = 1; i < request.size(); ++i)
        if (request[i].name == request[i - 1].name)
            throw std::invalid_argument(fmt::format("resource {} given twice", request[i].name));
    return request;
}

std::vector<std::string> split(std::string_view text) {
    std::vector<std::string> items;
    while (true) {
        const auto comma = text.find(',');
        items.emplace_back(text.substr(0, comma));
        if (comma == std::string_view::npos) return items;
        text.remove_prefix(comma + 1);
    }
}

bool on_path(const char* program) {
    const char* path = std::getenv("PATH");
    for (std::string_view dirs = path ? path : ""; !dirs.empty();) {
        const auto colon = dirs.find(':');
        const std::string dir(dirs.substr(0, colon));
        if (!dir.empty() && ::access((dir + "/" + program).c_str(), X_OK) == 0) return true;
        dirs = colon == std::string_view::npos ? std::string_view() : dirs.substr(colon + 1);
    }
    return false;
}

}  // namespace

ResourceRequest parse_resources(std::string_view text) {
    ResourceRequest request;
    for (const std::string& item : split(text)) {
        const auto equals = item.find('=');
        if (equals == std::string::npos)
            throw std::invalid_argument(fmt::format("'{}': want NAME=COUNT, as in gpu=1", printable(item, 100)));
        const std::string name = item.substr(0, equals);
        check_name(name);
        request.push_back({name, amount_of(name, std::string_view(item).substr(equals + 1))});
    }
    return sorted(std::move(request));
}

ResourceRequest parse_worker_resources(std::string_view text) {
    ResourceRequest have = parse_resources(text);
    for (const ResourceAmount& item : have)
        if (item.name == kGpuResource)
            throw std::invalid_argument(
                "gpu: GPUs have ids: give --gpus 0,1 (default: CUDA_VISIBLE_DEVICES, "
                "else nvidia-smi -L)");
    return have;
}

ResourceRequest resources_from_json(const Json& object) {
    if (!object.is_object())
        throw std::invalid_argument(
            fmt::format("\"resources\": want an object such as {{\"gpu\": 1}}, not {}", printable(object.dump(), 100)));
    ResourceRequest request;
    for (const auto& [name, value] : object.items()) {
        check_name(name);
        // One rule for every count (decision 218): a JSON number, a whole one >= 1. The one
        // string taken is a size with its unit for "mem" ("8G"): "1" is a count written as
        // text, which a plan generator that quotes everything would hand us by mistake.
        std::uint64_t amount = 0;
        if (value.is_number_unsigned() && value.get<std::uint64_t>() >= 1)
            amount = value.get<std::uint64_t>();
        else if (value.is_string() && name == "mem" && !value.get_ref<const std::string&>().empty() &&
                 !std::isdigit(static_cast<unsigned char>(value.get_ref<const std::string&>().back())))
            amount = amount_of(name, value.get_ref<const std::string&>());
        else
            throw std::invalid_argument(fmt::format(
                "\"resources\": {}: want a whole number >= 1{}, not {}", name,
                name == "mem" ? " (MiB) or a size with its unit such as \"2G\"" : "", printable(value.dump(), 100)));
        request.push_back({name, amount});
    }
    return sorted(std::move(request));
}

std::string resources_text(const ResourceRequest& request) {
    std::string text;
    for (const auto& [name, amount] : request) text += fmt::format("{}{}={}", text.empty() ? "" : ",", name, amount);
    return text;
}

std::vector<std::string> parse_gpu_list(std::string_view text) {
    std::vector<std::string> ids;
    for (std::string& id : split(text)) {
        if (id.empty() || !std::all_of(id.begin(), id.end(), [](char c) {
                return c == '-' || c == '_' || c == ':' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                       (c >= '0' && c <= '9');
            }))
            throw std::invalid_argument(fmt::format(
                "GPU '{}': want a device number or UUID, as CUDA_VISIBLE_DEVICES takes them", printable(id, 100)));
        if (std::find(ids.begin(), ids.end(), id) != ids.end())
            throw std::invalid_argument(fmt::format("GPU {} listed twice", id));
        ids.push_back(std::move(id));
    }
    return ids;
}

std::vector<std::string> find_gpus() {
    if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES")) {
        try {
            return *visible ? parse_gpu_list(visible) : std::vector<std::string>{};
        } catch (const std::invalid_argument&) {
            return {};  // CUDA itself sees no device past a bad entry
        }
    }
    std::vector<std::string> ids;
    if (!on_path("nvidia-smi")) return ids;
    std::FILE* out = ::popen("nvidia-smi -L 2>/dev/null", "r");
    if (!out) return ids;
    char line[512];
    // "GPU 0: NVIDIA H200 (UUID: GPU-...)"; a MIG device's lines are indented and left out.
    while (std::fgets(line, sizeof line, out)) {
        std::string_view text = line;
        if (!text.starts_with("GPU ")) continue;
        text.remove_prefix(4);
        const auto colon = text.find(':');
        unsigned number = 0;
        const auto [end, ec] = std::from_chars(text.data(), text.data() + std::min(colon, text.size()), number);
        if (ec == std::errc{} && colon != std::string_view::npos && end == text.data() + colon)
            ids.push_back(std::to_string(number));
    }
    ::pclose(out);
    return ids;
}

LocalResources::LocalResources(ResourceRequest given, std::optional<std::vector<std::string>> gpus)
    : counts_(std::move(given)), gpus_(std::move(gpus)) {
    std::erase_if(counts_, [](const ResourceAmount& r) { return r.name == kGpuResource; });  // gpus_ holds them
    const auto add_default = [this](std::string name, std::uint64_t amount) {
        if (std::none_of(counts_.begin(), counts_.end(), [&](const auto& r) { return r.name == name; }))
            counts_.push_back({std::move(name), amount});
    };
    add_default("cpus", static_cast<std::uint64_t>(available_cpus()));
    const long pages = ::sysconf(_SC_PHYS_PAGES);
    const long page = ::sysconf(_SC_PAGESIZE);
    if (pages > 0 && page > 0) add_default("mem", static_cast<std::uint64_t>(pages) * page / kMiB);
    counts_ = sorted(std::move(counts_));
    if (gpus_) std::call_once(found_, [] {});  // given: nothing to look for
}

const std::vector<std::string>& LocalResources::gpus() const {
    std::call_once(found_, [this] {
        if (!gpus_) gpus_ = find_gpus();
    });
    return *gpus_;
}

std::uint64_t LocalResources::amount(std::string_view name) const {
    if (name == kGpuResource) return gpus().size();
    for (const auto& [have, amount] : counts_)
        if (have == name) return amount;
    return 0;
}

std::string LocalResources::unmet(const ResourceRequest& request) const {
    for (const auto& [name, amount] : request) {
        const std::uint64_t have = this->amount(name);
        if (amount <= have) continue;
        if (name == kGpuResource)
            return fmt::format(
                "asks for gpu={}, but the local workers have {} GPU(s){} (--gpus, CUDA_VISIBLE_DEVICES "
                "or nvidia-smi -L)",
                amount, have, have ? fmt::format(" ({})", fmt::join(gpus(), ",")) : "");
        if (have == 0)
            return fmt::format("asks for {}={}, but the local workers have no {} (--worker-resources {}=N gives some)",
                               name, amount, name, name);
        return fmt::format("asks for {}={}, but the local workers have {} in all", name, amount, have);
    }
    return {};
}

}  // namespace taskfarm
