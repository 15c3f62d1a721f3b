#include "mode.hpp"

namespace taskfarm {
namespace {

constexpr std::string_view kModeNames[] = {"sequential", "threads", "gil-threads", "processes"};

}  // namespace

std::string_view to_string(Mode mode) { return kModeNames[static_cast<int>(mode)]; }

std::optional<Mode> parse_mode(std::string_view name) {
    for (Mode mode : kAllModes)
        if (to_string(mode) == name) return mode;
    return std::nullopt;
}

std::filesystem::path mode_out_dir(const std::filesystem::path& out_dir, Mode mode) {
    // Empty: not decided by a program (a RunConfig made in code): the working directory, as
    // default_out_dir() says for types that name none.
    const std::filesystem::path base = out_dir.empty() ? std::filesystem::path(".") : out_dir;
    return (std::filesystem::absolute(base) / to_string(mode)).lexically_normal();
}

}  // namespace taskfarm
