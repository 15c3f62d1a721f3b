#include "log.hpp"

#include <algorithm>
#include <stdexcept>

#include <spdlog/cfg/env.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace taskfarm {

void init_logging(const std::string& name) {
    // spdlog's own default logger writes to stdout, which holds only results.
    auto logger = spdlog::get(name);
    if (!logger) logger = spdlog::stderr_color_mt(name);
    logger->set_pattern("%H:%M:%S.%e %n[%P] %^%l%$ %v");
    spdlog::set_default_logger(std::move(logger));
    spdlog::cfg::load_env_levels();
}

void set_log_level(std::string_view name) {
    if (std::find(std::begin(kLogLevels), std::end(kLogLevels), name) == std::end(kLogLevels))
        throw std::invalid_argument("unknown log level '" + std::string(name) + "'");
    spdlog::set_level(spdlog::level::from_str(std::string(name)));  // from_str knows "warn"
}

}  // namespace taskfarm
