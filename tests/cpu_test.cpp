// The cpu executor's answers, its cancellation, and the GIL it computes under.

#include <atomic>
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "gil.hpp"
#include "support.hpp"
#include "task.hpp"

namespace taskfarm {
namespace {

constexpr std::uint64_t kMaxPrimeLimit = 1'000'000'000'000;  // the cpu type's largest hi

TaskResult count(std::uint64_t lo, std::uint64_t hi, std::stop_token stop = {}, Gil* gil = nullptr) {
    return run_task(testing::task_of("cpu", {{"lo", lo}, {"hi", hi}}), 1,
                    RunEnv{.worker = "test", .stop = stop, .gil = gil});
}

std::uint64_t primes(std::uint64_t lo, std::uint64_t hi) {
    const TaskResult result = count(lo, hi);
    EXPECT_TRUE(result.ok) << result.error;
    return result.value.at("primes").get<std::uint64_t>();
}

// below[n] = primes below n, from a plain (unsegmented) sieve: the simplest correct answer.
std::vector<std::uint64_t> reference_counts(std::uint64_t limit) {
    std::vector<bool> composite(limit, false);
    std::vector<std::uint64_t> below(limit + 1, 0);
    for (std::uint64_t n = 0; n < limit; ++n) {
        const bool prime = n >= 2 && !composite[n];
        if (prime)
            for (std::uint64_t multiple = n * n; multiple < limit; multiple += n) composite[multiple] = true;
        below[n + 1] = below[n] + (prime ? 1 : 0);
    }
    return below;
}

TEST(Cpu, CountsThePrimesBelowPowersOfTen) {
    EXPECT_EQ(primes(0, 10), 4u);
    EXPECT_EQ(primes(0, 100), 25u);
    EXPECT_EQ(primes(0, 1000), 168u);
    EXPECT_EQ(primes(0, 1'000'000), 78'498u);
    EXPECT_EQ(primes(0, 10'000'000), 664'579u);
    EXPECT_EQ(primes(0, 100'000'000), 5'761'455u);
}

TEST(Cpu, CountsSmallRangesWithTheirEndsExcluded) {
    EXPECT_EQ(primes(0, 0), 0u);
    EXPECT_EQ(primes(0, 2), 0u);
    EXPECT_EQ(primes(0, 3), 1u);  // 2
    EXPECT_EQ(primes(2, 3), 1u);
    EXPECT_EQ(primes(3, 3), 0u);
    EXPECT_EQ(primes(1, 2), 0u);    // 1 is not prime
    EXPECT_EQ(primes(2, 4), 2u);    // 2, 3
    EXPECT_EQ(primes(10, 20), 4u);  // 11, 13, 17, 19
    EXPECT_EQ(primes(11, 19), 3u);  // 11, 13, 17
    EXPECT_EQ(primes(24, 29), 0u);
    EXPECT_EQ(primes(100, 200), 21u);
    EXPECT_EQ(primes(1'000'000'000, 1'000'000'100), 7u);  // 1000000007, 009, 021, 033, 087, 093, 097
}

TEST(Cpu, AgreesWithAPlainSieveOnRandomRanges) {
    // Random ends, short ranges and ones spanning several segments catch off-by-one errors.
    constexpr std::uint64_t kLimit = 4'000'000;
    const std::vector<std::uint64_t> below = reference_counts(kLimit);
    std::mt19937_64 random(11);
    for (int round = 0; round < 500; ++round) {
        const std::uint64_t lo = random() % kLimit;
        const std::uint64_t span = round % 2 == 0 ? random() % 100 : random() % 1'000'000;
        const std::uint64_t hi = std::min(kLimit, lo + span);
        EXPECT_EQ(primes(lo, hi), below[hi] - below[lo]) << "[" << lo << ", " << hi << ")";
    }
}

TEST(Cpu, AdjacentRangesAddUp) {
    // Task i of a --cpu-n 1000000 plan counts [i*10^6, (i+1)*10^6): ten of them make pi(10^7).
    std::uint64_t total = 0;
    for (std::uint64_t i = 0; i < 10; ++i) total += primes(i * 1'000'000, (i + 1) * 1'000'000);
    EXPECT_EQ(total, 664'579u);
}

TEST(Cpu, RejectsAReversedRangeAndOneBeyondTheLimit) {
    const TaskResult reversed = count(10, 5);
    EXPECT_FALSE(reversed.ok);
    EXPECT_EQ(reversed.error, "cpu \"lo\" 10 is above \"hi\" 5");
    const TaskResult huge = count(0, kMaxPrimeLimit + 1);
    EXPECT_FALSE(huge.ok);
    EXPECT_EQ(huge.error, fmt::format("cpu range end {} is above the limit {}", kMaxPrimeLimit + 1, kMaxPrimeLimit));
}

TEST(Cpu, AStopRequestedBeforehandCancelsAtOnce) {
    std::stop_source stop;
    stop.request_stop();
    const TaskResult result = count(0, kMaxPrimeLimit, stop.get_token());
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.error, "cancelled");
}

TEST(Cpu, AStopRequestedWhileComputingCancelsTheTask) {
    // [0, 10^12) would take many minutes; the test ends only if the stop is noticed.
    std::stop_source stop;
    std::jthread stopper([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        stop.request_stop();
    });
    const TaskResult result = count(0, kMaxPrimeLimit, stop.get_token());
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(result.error, "cancelled");
}

TEST(Cpu, GivesTheSameAnswerUnderTheGil) {
    Gil gil;
    EXPECT_EQ(count(0, 10'000'000, {}, &gil).value.at("primes"), 664'579u);
    EXPECT_EQ(gil.contenders(), 0u);  // released at the end
}

TEST(Gil, NeverLetsTwoThreadsHoldIt) {
    Gil gil(Gil::Clock::duration::zero());  // switch at every switch point
    std::atomic<int> inside{0};
    std::atomic<bool> overlapped{false};
    std::vector<std::jthread> threads;
    for (int t = 0; t < 4; ++t)
        threads.emplace_back([&] {
            Gil::Hold hold(&gil);
            for (int i = 0; i < 2000; ++i) {
                if (++inside > 1) overlapped = true;
                --inside;
                hold.switch_point();
            }
        });
    threads.clear();  // joins
    EXPECT_FALSE(overlapped);
    EXPECT_EQ(gil.contenders(), 0u);
}

TEST(Gil, HandsItToAWaitingThreadAtTheNextSwitchPoint) {
    Gil gil(Gil::Clock::duration::zero());
    std::atomic<bool> waiter_ran{false};
    Gil::Hold hold(&gil);
    std::jthread waiter([&] {
        const Gil::Hold mine(&gil);
        waiter_ran = true;
    });
    while (gil.contenders() < 2) std::this_thread::yield();  // the waiter queued
    EXPECT_FALSE(waiter_ran);
    hold.switch_point();  // first come, first served: we get it back only after the waiter
    EXPECT_TRUE(waiter_ran);
}

TEST(Gil, KeepsItWhenNobodyWaits) {
    Gil gil(Gil::Clock::duration::zero());
    Gil::Hold hold(&gil);
    hold.switch_point();
    EXPECT_EQ(gil.contenders(), 1u);
}

TEST(Gil, ATaskThatSaysItWaitsLetsAnotherThreadHaveTheLock) {
    Gil gil;
    std::atomic<bool> other_ran{false};
    Gil::Hold hold(&gil);
    const Context context(detail::ContextSetup{.worker = "t1", .gil_hold = &hold});
    {
        const auto waiting = context.waiting();
        std::jthread other([&] {
            const Gil::Hold mine(&gil);
            other_ran = true;
        });
    }  // joined while this thread waited: the other one had the lock
    EXPECT_TRUE(other_ran);
    EXPECT_EQ(gil.contenders(), 1u);  // and this one has it back
}

// Decision 280: no deadline, no clock read; a deadline still expires when it has passed.
TEST(Context, ExpiresOnlyPastADeadlineItHas) {
    const Context none(detail::ContextSetup{.worker = "t1"});
    EXPECT_EQ(none.deadline(), std::chrono::steady_clock::time_point::max());
    EXPECT_FALSE(none.expired());
    EXPECT_NO_THROW(none.check());
    const auto now = std::chrono::steady_clock::now();
    const Context past(
        detail::ContextSetup{.worker = "t1", .deadline = now - std::chrono::milliseconds(1), .timeout_s = 0.5});
    EXPECT_TRUE(past.expired());
    EXPECT_THROW(past.check(), TaskStopped);
    const Context later(
        detail::ContextSetup{.worker = "t1", .deadline = now + std::chrono::hours(1), .timeout_s = 3600});
    EXPECT_FALSE(later.expired());
}

TEST(Gil, ANullGilHoldsNothing) {
    Gil::Hold hold(nullptr);
    hold.switch_point();  // must simply not crash
}

}  // namespace
}  // namespace taskfarm
