#include <sched.h>

#include <algorithm>
#include <stdexcept>
#include <system_error>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "affinity.hpp"

namespace taskfarm {
namespace {

TEST(CpuList, ReadsSinglesAndRangesInTheOrderWritten) {
    EXPECT_EQ(parse_cpu_list("0"), (std::vector<int>{0}));
    EXPECT_EQ(parse_cpu_list("0-3,6"), (std::vector<int>{0, 1, 2, 3, 6}));
    EXPECT_EQ(parse_cpu_list("5,1-2"), (std::vector<int>{5, 1, 2}));
    EXPECT_EQ(parse_cpu_list("7-7"), (std::vector<int>{7}));
}

std::string rejection(std::string_view text) {
    try {
        parse_cpu_list(text);
        return "accepted";
    } catch (const std::invalid_argument& e) {
        return e.what();
    }
}

TEST(CpuList, SaysWhatIsWrong) {
    EXPECT_EQ(rejection(""), "empty item in the CPU list");
    EXPECT_EQ(rejection("1,,2"), "empty item in the CPU list");
    EXPECT_EQ(rejection("1,"), "empty item in the CPU list");
    EXPECT_EQ(rejection("x"), "'x' is not a CPU number or a range like 0-3");
    EXPECT_EQ(rejection("-1"), "'-1' is not a CPU number or a range like 0-3");
    EXPECT_EQ(rejection("1-"), "'1-' is not a CPU number or a range like 0-3");
    EXPECT_EQ(rejection("1-2-3"), "'1-2-3' is not a CPU number or a range like 0-3");
    EXPECT_EQ(rejection(" 1"), "' 1' is not a CPU number or a range like 0-3");
    EXPECT_EQ(rejection("3-1"), "range '3-1' runs from high to low");
    EXPECT_EQ(rejection("0-3,2"), "CPU 2 is listed twice");
    EXPECT_EQ(rejection("100000"), fmt::format("CPU 100000 is beyond {}", CPU_SETSIZE - 1));
}

TEST(CpuList, FormatsRuns) {
    EXPECT_EQ(format_cpu_list({0, 1, 2, 3, 6}), "0-3,6");
    EXPECT_EQ(format_cpu_list({1}), "1");
    EXPECT_EQ(format_cpu_list({0, 2, 4, 5}), "0,2,4-5");
    EXPECT_EQ(format_cpu_list({}), "");
}

TEST(Affinity, PinsTheCallingThreadOnly) {
    const std::vector<int> allowed = allowed_cpus();
    ASSERT_FALSE(allowed.empty());
    const int target = allowed.back();
    std::jthread([&] {
        pin_this_thread(target);
        EXPECT_EQ(pinned_cpu(), target);
        EXPECT_EQ(allowed_cpus(), (std::vector<int>{target}));
    }).join();
    EXPECT_EQ(allowed_cpus(), allowed);  // this thread is untouched
}

TEST(Affinity, AScopedPinGivesBackTheCpusItTook) {
    const std::vector<int> allowed = allowed_cpus();
    std::jthread([&] {
        {
            const ScopedPin pin(allowed.front());
            EXPECT_EQ(pinned_cpu(), allowed.front());
        }
        EXPECT_EQ(allowed_cpus(), allowed);
        const ScopedPin none(-1);
        EXPECT_EQ(allowed_cpus(), allowed);
    }).join();
}

TEST(Affinity, PinningToACpuNotAllowedThrows) {
    const std::vector<int> allowed = allowed_cpus();
    int outside = 0;
    while (std::find(allowed.begin(), allowed.end(), outside) != allowed.end()) ++outside;
    std::jthread([&] { EXPECT_THROW(pin_this_thread(outside), std::system_error); }).join();
}

TEST(ResidentMemory, IsThisProcesssOwnAndFollowsWhatItTouches) {
    const std::uint64_t before = resident_bytes();
    EXPECT_GT(before, 0u);
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "resident memory under AddressSanitizer is not the program's own";
#endif
    std::vector<char> touched(std::size_t{64} << 20, 'x');
    EXPECT_GE(resident_bytes(), before + (std::uint64_t{48} << 20)) << "64 MiB touched";
    EXPECT_EQ(touched.back(), 'x');
}

}  // namespace
}  // namespace taskfarm
