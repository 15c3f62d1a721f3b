#include "plan.hpp"

#include <cmath>
#include <random>

namespace taskfarm {
namespace {

// A uniform double in [0, 1) from the top 53 bits: std::uniform_real_distribution is not
// specified bit for bit, so it could give other plans on other standard libraries.
double unit_interval(std::mt19937_64& generator) { return static_cast<double>(generator() >> 11) * 0x1.0p-53; }

double round_to_ms(double seconds) { return std::round(seconds * 1000.0) / 1000.0; }

}  // namespace

Plan make_plan(const RunConfig& config) {
    Plan plan;
    plan.tasks.reserve(static_cast<std::size_t>(config.tasks));
    std::mt19937_64 generator(config.seed);
    for (int i = 0; i < config.tasks; ++i) {
        TaskSpec task;
        task.id = static_cast<TaskId>(i);
        task.kind = config.task;
        const double span = config.duration_hi_s - config.duration_lo_s;
        task.params.seconds =
            span > 0 ? round_to_ms(config.duration_lo_s + span * unit_interval(generator)) : config.duration_lo_s;
        plan.tasks.push_back(task);
    }
    return plan;
}

}  // namespace taskfarm
