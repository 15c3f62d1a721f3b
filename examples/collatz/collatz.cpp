// collatz: the longest Collatz chain that starts in [lo, hi). CPU-bound: it speeds up with
// cores (processes, threads), not with more threads than cores, and not at all under the
// emulated GIL (gil-threads).

#include <cstdint>
#include <stdexcept>

#include <taskfarm/taskfarm.hpp>

namespace {

// Steps from n to 1 by n -> n/2 (even) or 3n+1 (odd).
std::uint64_t chain_length(std::uint64_t n) {
    std::uint64_t steps = 0;
    for (; n != 1; ++steps) n = n % 2 == 0 ? n / 2 : 3 * n + 1;
    return steps;
}

taskfarm::Value longest_chain(const taskfarm::Params& params, taskfarm::Context& context) {
    const std::uint64_t lo = params.at("lo").get<std::uint64_t>();
    const std::uint64_t hi = params.at("hi").get<std::uint64_t>();
    if (lo < 1 || lo > hi) throw std::invalid_argument("want 1 <= lo <= hi");
    std::uint64_t best = lo;
    std::uint64_t best_steps = 0;
    for (std::uint64_t n = lo; n < hi; ++n) {
        if (n % 65536 == 0) {
            context.check();         // cancelled (Ctrl-C) or past --task-timeout: stop here
            context.switch_point();  // gil-threads: let the other threads have their turn
        }
        if (const std::uint64_t steps = chain_length(n); steps > best_steps) {
            best = n;
            best_steps = steps;
        }
    }
    return {{"start", best}, {"steps", best_steps}};
}

// `--task longest --tasks N --set span=S`: task i covers [1 + i*S, 1 + (i+1)*S).
class Longest final : public taskfarm::TaskType {
public:
    std::string name() const override { return "longest"; }
    std::string summary() const override {
        return "longest Collatz chain in [lo, hi); --set span=N per generated task";
    }
    taskfarm::Params generate(taskfarm::Generate& args) const override {
        const std::uint64_t span = args.settings.value("span", std::uint64_t{2'000'000});
        return {{"lo", 1 + args.index * span}, {"hi", 1 + (args.index + 1) * span}};
    }
    taskfarm::Params parse(const taskfarm::Params& fields) const override {
        taskfarm::Fields read(fields);
        const auto lo = read.count("lo");
        const auto hi = read.count("hi");
        if (!lo || !hi || *lo < 1 || *lo > *hi)
            throw std::invalid_argument("longest needs \"lo\" and \"hi\", 1 <= lo <= hi");
        read.finish();
        return {{"lo", *lo}, {"hi", *hi}};
    }
    taskfarm::Value run(const taskfarm::Params& params, taskfarm::Context& context) const override {
        return longest_chain(params, context);
    }
    std::string describe(const taskfarm::Value& value) const override {
        return "from " + value.at("start").dump() + ", " + value.at("steps").dump() + " steps";
    }
};

}  // namespace

int main(int argc, char** argv) {
    taskfarm::App app{"collatz"};
    app.add(std::make_shared<Longest>());
    return app.run(argc, argv);
}
