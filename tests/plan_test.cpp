#include <gtest/gtest.h>

#include "plan.hpp"

namespace taskfarm {
namespace {

RunConfig sleeps(int tasks, double lo, double hi, std::uint64_t seed = 1) {
    RunConfig config;
    config.tasks = tasks;
    config.duration_lo_s = lo;
    config.duration_hi_s = hi;
    config.seed = seed;
    return config;
}

TEST(Plan, NumbersTasksFromZeroInPlanOrder) {
    const Plan plan = make_plan(sleeps(5, 0.5, 0.5));
    ASSERT_EQ(plan.tasks.size(), 5u);
    for (std::size_t i = 0; i < plan.tasks.size(); ++i) {
        EXPECT_EQ(plan.tasks[i].id, i);
        EXPECT_EQ(plan.tasks[i].kind, TaskKind::Sleep);
        EXPECT_EQ(plan.tasks[i].params.seconds, 0.5);
    }
}

TEST(Plan, RandomDurationsStayInRangeAndRepeatWithTheSeed) {
    const Plan first = make_plan(sleeps(200, 1, 10, 42));
    const Plan again = make_plan(sleeps(200, 1, 10, 42));
    const Plan other = make_plan(sleeps(200, 1, 10, 43));
    std::size_t differ = 0;
    double lowest = 10;
    double highest = 1;
    for (std::size_t i = 0; i < first.tasks.size(); ++i) {
        const double seconds = first.tasks[i].params.seconds;
        EXPECT_GE(seconds, 1.0);
        EXPECT_LE(seconds, 10.0);
        EXPECT_EQ(seconds, again.tasks[i].params.seconds);
        differ += seconds != other.tasks[i].params.seconds;
        lowest = std::min(lowest, seconds);
        highest = std::max(highest, seconds);
    }
    EXPECT_GT(differ, 150u);
    EXPECT_LT(lowest, 2.0);  // 200 draws cover the range
    EXPECT_GT(highest, 9.0);
}

TEST(Plan, KnownSeedGivesKnownDurations) {
    // Pinned: a change of generator would silently change every published experiment.
    const Plan plan = make_plan(sleeps(3, 1, 10, 1));
    EXPECT_EQ(plan.tasks[0].params.seconds, 2.205);
    EXPECT_EQ(plan.tasks[1].params.seconds, 2.228);
    EXPECT_EQ(plan.tasks[2].params.seconds, 5.061);
}

}  // namespace
}  // namespace taskfarm
