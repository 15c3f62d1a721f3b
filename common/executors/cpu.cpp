#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "../gil.hpp"
#include "executors.hpp"

namespace taskfarm::executors {
namespace {

// Odd numbers per sieve segment: 32 KiB of flags stay in the L1 cache, and a segment takes
// tens of microseconds, so stop requests and GIL switches are noticed quickly.
constexpr std::uint64_t kSegmentOdds = 128 * 1024;

std::uint64_t isqrt(std::uint64_t n) {
    auto root = static_cast<std::uint64_t>(std::sqrt(static_cast<double>(n)));
    while (root * root > n) --root;  // the double may round up or down by one
    while ((root + 1) * (root + 1) <= n) ++root;
    return root;
}

// The odd primes up to `limit`, by a plain sieve; limit is at most sqrt(kMaxPrimeLimit).
std::vector<std::uint64_t> odd_primes_up_to(std::uint64_t limit) {
    std::vector<bool> composite(limit + 1);
    std::vector<std::uint64_t> primes;
    for (std::uint64_t n = 3; n <= limit; n += 2) {
        if (composite[n]) continue;
        primes.push_back(n);
        for (std::uint64_t multiple = n * n; multiple <= limit; multiple += 2 * n) composite[multiple] = true;
    }
    return primes;
}

}  // namespace

void run_cpu(const TaskSpec& task, const ExecContext& context, TaskResult& result) {
    const std::uint64_t lo = task.params.lo;
    const std::uint64_t hi = task.params.hi;
    if (lo > hi) throw std::invalid_argument(fmt::format("cpu range [{}, {}) has lo > hi", lo, hi));
    if (hi > kMaxPrimeLimit)
        throw std::invalid_argument(fmt::format("cpu range end {} is above the limit {}", hi, kMaxPrimeLimit));

    Gil::Hold hold(context.gil);
    std::uint64_t primes = lo <= 2 && 2 < hi ? 1 : 0;
    // A segmented sieve of Eratosthenes over the odd numbers of [max(lo, 3), hi): one
    // segment at a time, crossing off the multiples of each odd prime up to sqrt(hi).
    const std::vector<std::uint64_t> sieving = odd_primes_up_to(hi > 0 ? isqrt(hi - 1) : 0);
    std::vector<char> is_prime(kSegmentOdds);
    for (std::uint64_t first = std::max<std::uint64_t>(lo, 3) | 1; first < hi; first += 2 * kSegmentOdds) {
        if (context.stop.stop_requested()) {
            result.error = "cancelled";
            return;
        }
        if (context.expired()) {
            result.error = timed_out(task);
            return;
        }
        hold.switch_point();
        const std::uint64_t end = std::min(hi, first + 2 * kSegmentOdds);  // is_prime[i] is first + 2i
        const std::uint64_t odds = (end - first + 1) / 2;
        std::fill_n(is_prime.begin(), odds, 1);
        for (const std::uint64_t p : sieving) {
            if (p * p >= end) break;
            std::uint64_t multiple = std::max(p * p, (first + p - 1) / p * p);
            if (multiple % 2 == 0) multiple += p;  // only odd multiples are in the segment
            for (std::uint64_t i = (multiple - first) / 2; i < odds; i += p) is_prime[i] = 0;
        }
        for (std::uint64_t i = 0; i < odds; ++i) primes += static_cast<std::uint64_t>(is_prime[i]);
    }
    result.primes = primes;
    result.ok = true;
}

}  // namespace taskfarm::executors
