#include "log.hpp"

#include <algorithm>
#include <stdexcept>

#include <spdlog/cfg/env.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include "text.hpp"

namespace taskfarm {
namespace {

// %v with printable() applied: log messages carry worker names, hello fields, rejected
// frames and lines of input files, and none of them may drive the terminal. Doing it in
// the formatter covers every log call, present and future.
class PrintablePayload final : public spdlog::custom_flag_formatter {
public:
    void format(const spdlog::details::log_msg& message, const std::tm&, spdlog::memory_buf_t& dest) override {
        const std::string text =
            printable(std::string_view(message.payload.data(), message.payload.size()), 4 * kMaxPrintable);
        dest.append(text.data(), text.data() + text.size());
    }
    std::unique_ptr<custom_flag_formatter> clone() const override { return std::make_unique<PrintablePayload>(); }
};

}  // namespace

void init_logging(const std::string& name) {
    // spdlog's own default logger writes to stdout, which holds only results.
    auto logger = spdlog::get(name);
    if (!logger) logger = spdlog::stderr_color_mt(name);
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<PrintablePayload>('*').set_pattern("%H:%M:%S.%e %n[%P] %^%l%$ %*");
    logger->set_formatter(std::move(formatter));
    spdlog::set_default_logger(std::move(logger));
    spdlog::cfg::load_env_levels();
}

void set_log_level(std::string_view name) {
    if (std::find(std::begin(kLogLevels), std::end(kLogLevels), name) == std::end(kLogLevels))
        throw std::invalid_argument("unknown log level '" + std::string(name) + "'");
    spdlog::set_level(spdlog::level::from_str(std::string(name)));  // from_str knows "warn"
}

}  // namespace taskfarm
