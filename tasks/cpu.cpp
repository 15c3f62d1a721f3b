// cpu: counts the primes in [lo, hi) with a segmented sieve: a CPU-bound task with a
// checkable answer.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "builtin.hpp"

namespace taskfarm {
namespace {

// Largest `hi`: the sieve needs the primes up to sqrt(hi), a 1 MB table here.
constexpr std::uint64_t kMaxPrimeLimit = 1'000'000'000'000;
constexpr std::uint64_t kDefaultN = 750'000'000;  // --cpu-n: about 0.5 s of CPU per task

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

// The primes in [lo, hi), passing a switch point and checking for a stop after each segment.
std::uint64_t count_primes(std::uint64_t lo, std::uint64_t hi, Context& context) {
    std::uint64_t primes = lo <= 2 && 2 < hi ? 1 : 0;
    // A segmented sieve of Eratosthenes over the odd numbers of [max(lo, 3), hi): one
    // segment at a time, crossing off the multiples of each odd prime up to sqrt(hi).
    const std::vector<std::uint64_t> sieving = odd_primes_up_to(hi > 0 ? isqrt(hi - 1) : 0);
    std::vector<char> is_prime(kSegmentOdds);
    for (std::uint64_t first = std::max<std::uint64_t>(lo, 3) | 1; first < hi; first += 2 * kSegmentOdds) {
        context.check();
        context.switch_point();
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
    return primes;
}

void check_range(std::uint64_t lo, std::uint64_t hi) {
    if (lo > hi) throw std::invalid_argument(fmt::format("cpu \"lo\" {} is above \"hi\" {}", lo, hi));
    if (hi > kMaxPrimeLimit)
        throw std::invalid_argument(fmt::format("cpu range end {} is above the limit {}", hi, kMaxPrimeLimit));
}

class CpuType final : public TaskType {
public:
    std::string name() const override { return "cpu"; }
    std::string summary() const override {
        return "counts the primes in [i*N, (i+1)*N), N from --cpu-n (plan: \"n\", or \"lo\" and \"hi\")";
    }
    TaskTraits traits() const override {
        return {.examples = {"{program} --workers 2 --task cpu --tasks 8 --mode all --pin"}};
    }

    // {"n":N} is [0, N); {"lo":L,"hi":H} is [L, H). The journal holds the second form.
    Params parse(const Params& fields) const override {
        Fields read(fields);
        if (read.has("n") && (read.has("lo") || read.has("hi")))
            throw std::invalid_argument("cpu takes \"n\" or \"lo\" and \"hi\", not both");
        std::uint64_t lo = 0;
        std::uint64_t hi = 0;
        if (const auto n = read.count("n")) {
            hi = *n;
        } else {
            const auto l = read.count("lo");
            const auto h = read.count("hi");
            if (!l || !h) throw std::invalid_argument("cpu needs \"n\", or \"lo\" and \"hi\"");
            lo = *l;
            hi = *h;
        }
        read.finish();
        check_range(lo, hi);
        return Params{{"lo", lo}, {"hi", hi}};
    }

    std::vector<Flag> flags() const override {
        Flag cpu_n{.name = "--cpu-n",
                   .key = "cpu_n",
                   .type = Flag::Type::Count,
                   .default_value = std::to_string(kDefaultN),
                   .help =
                       "numbers per task; task i counts the primes in [i*N, (i+1)*N). The default takes\n"
                       "about 0.5 s of CPU per task on a current x86 core",
                   .value_name = "N",
                   .least = 1,
                   .most = static_cast<double>(kMaxPrimeLimit),
                   .generated_only = true};
        return {cpu_n};
    }

    // Task i of --cpu-n N counts the primes in [i*N, (i+1)*N).
    Params generate(Generate& args) const override {
        const std::uint64_t n = args.settings.value("cpu_n", kDefaultN);
        if (n > 0 && args.index + 1 > kMaxPrimeLimit / n)
            throw std::invalid_argument(
                fmt::format("cpu task {} would end at {} x --cpu-n {}, above the limit {}; "
                            "lower --cpu-n or --tasks",
                            args.index, args.index + 1, n, kMaxPrimeLimit));
        return Params{{"lo", args.index * n}, {"hi", (args.index + 1) * n}};
    }

    Value run(const Params& params, Context& context) const override {
        Fields read(params);
        const auto lo = read.count("lo");
        const auto hi = read.count("hi");
        if (!lo || !hi) throw std::invalid_argument("cpu needs \"lo\" and \"hi\"");
        check_range(*lo, *hi);
        return Value{{"primes", count_primes(*lo, *hi, context)}};
    }

    std::string describe(const Value& value) const override {
        return fmt::format("{} primes", value.value("primes", std::uint64_t{0}));
    }
};

}  // namespace

std::shared_ptr<const TaskType> cpu_type() { return std::make_shared<CpuType>(); }

}  // namespace taskfarm
