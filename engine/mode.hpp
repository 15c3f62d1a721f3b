#pragma once
// The execution modes, by name, and where each mode's tasks save their files.

#include <filesystem>
#include <optional>
#include <string_view>

namespace taskfarm {

// GilThreads: Threads, but every task computes under one shared Gil, as CPython threads do.
enum class Mode { Sequential, Threads, GilThreads, Processes };
inline constexpr Mode kAllModes[] = {Mode::Sequential, Mode::Threads, Mode::GilThreads, Mode::Processes};

std::string_view to_string(Mode mode);  // "sequential", "threads", "gil-threads", "processes"
std::optional<Mode> parse_mode(std::string_view name);

// Where the tasks of `mode` save files: out_dir/<mode>, absolute, so that a worker process
// with another working directory agrees. An empty out_dir is the working directory.
std::filesystem::path mode_out_dir(const std::filesystem::path& out_dir, Mode mode);

}  // namespace taskfarm
