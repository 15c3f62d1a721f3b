#pragma once
// Resources (docs/resources.md, decision 184): what the local workers of a run have,
// together, and what a task asks for. A task that asks for some starts only when all of it
// is free, holds it from its hand-out to its result, and, holding GPUs, sees
// CUDA_VISIBLE_DEVICES set to their ids.

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <taskfarm/task_type.hpp>

namespace taskfarm {

// One resource and a count of it: "gpu" 1, "slot" 2, "mem" 2048 (MiB).
struct ResourceAmount {
    std::string name;
    std::uint64_t amount = 0;
    bool operator==(const ResourceAmount&) const = default;
};
// What a task asks for: each name once, every amount at least 1, sorted by name. Empty: nothing.
using ResourceRequest = std::vector<ResourceAmount>;

// The resource whose units have ids: a task holding some gets CUDA_VISIBLE_DEVICES.
inline constexpr std::string_view kGpuResource = "gpu";

// "gpu=1,slot=2" -> a request. Names are [A-Za-z0-9_-]+; an amount is a whole number >= 1,
// for "mem" a size in MiB or with K, M or G ("2G"). Throws std::invalid_argument saying what
// is wrong.
ResourceRequest parse_resources(std::string_view text);
// What workers have (--worker-resources, as parse_resources), never "gpu": GPUs have ids, so
// they come from --gpus (a count of them would be taken and never handed out).
ResourceRequest parse_worker_resources(std::string_view text);
// A plan line's {"gpu": 1, "mem": "2G"}: each count a JSON number, a whole one >= 1; "mem"
// may be a size with its unit ("2G"). Throws std::invalid_argument.
ResourceRequest resources_from_json(const Json& object);
// "gpu=1,slot=2".
std::string resources_text(const ResourceRequest& request);

// "3,5" -> {"3", "5"}: device ids or UUIDs, as CUDA_VISIBLE_DEVICES takes them; each once.
// Throws std::invalid_argument.
std::vector<std::string> parse_gpu_list(std::string_view text);
// The GPUs this machine shows: CUDA_VISIBLE_DEVICES when it is set (empty: none), else
// the devices `nvidia-smi -L` lists (0, 1, ...), else none.
std::vector<std::string> find_gpus();

// What the local workers of a run have, together: the named counts given, "cpus" (the CPUs
// this process may use) and "mem" (physical memory in MiB) unless given, and "gpu" (the
// ids given, else find_gpus(), looked for only when a task first asks for a GPU).
// Thread-safe.
class LocalResources {
public:
    explicit LocalResources(ResourceRequest given = {}, std::optional<std::vector<std::string>> gpus = std::nullopt);
    // How much of `name` there is; 0 for a name it does not have.
    std::uint64_t amount(std::string_view name) const;
    const std::vector<std::string>& gpus() const;
    // Why `request` can never be met here ("asks for gpu=3, but the local workers have 2
    // (ids 3,5)"); empty when it can.
    std::string unmet(const ResourceRequest& request) const;
    // Every named count, for messages: "cpus=2,mem=7936,slot=2" (gpu listed once known).
    const ResourceRequest& counts() const { return counts_; }

private:
    ResourceRequest counts_;  // by name
    mutable std::optional<std::vector<std::string>> gpus_;
    mutable std::once_flag found_;
};

}  // namespace taskfarm
