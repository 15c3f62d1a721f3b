#include "log.hpp"

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

}  // namespace taskfarm
