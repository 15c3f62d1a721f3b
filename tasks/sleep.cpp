// sleep: waits `seconds`, as the tutorial's time.sleep(); a sleep of 0 is the benchmarks' no-op.

#include <charconv>
#include <cmath>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string_view>

#include <fmt/format.h>

#include "builtin.hpp"
#include "protocol.hpp"

namespace taskfarm {
namespace {

std::optional<double> parse_seconds(std::string_view text) {
    double value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size() || !std::isfinite(value) || value < 0)
        return std::nullopt;
    return value;
}

// --duration: "0.5" -> [0.5, 0.5]; "1:10" -> [1, 10].
Json parse_duration(const std::string& text) {
    const auto colon = text.find(':');
    const auto lo = parse_seconds(std::string_view(text).substr(0, colon));
    const auto hi = colon == std::string::npos ? lo : parse_seconds(std::string_view(text).substr(colon + 1));
    if (!lo || !hi || *lo > *hi)
        throw std::invalid_argument(fmt::format("'{}' is not SECONDS or LO:HI with 0 <= LO <= HI", text));
    return Json::array({*lo, *hi});
}

// {"KEY": number}, built in place: an initializer list builds an array of arrays first and
// checks it (some 1,500 instructions and 4 allocations more per task, on the no-op's path).
Json number_object(const char* key, double number) {
    Json object(Json::value_t::object);
    object.emplace(key, number);
    return object;
}

double round_to_ms(double seconds) { return std::round(seconds * 1000.0) / 1000.0; }

// A uniform double in [0, 1) from the top 53 bits: std::uniform_real_distribution is not
// specified bit for bit, so it could give other plans on other standard libraries.
double unit_interval(std::mt19937_64& generator) { return static_cast<double>(generator() >> 11) * 0x1.0p-53; }

class SleepType final : public TaskType, public PackedRun, public PackedGenerate {
public:
    std::string name() const override { return "sleep"; }
    std::string summary() const override { return "waits --duration seconds (plan: \"seconds\")"; }
    TaskTraits traits() const override {
        return {.examples = {"{program} --workers 4 --task sleep --tasks 8 --duration 0.5"}};
    }

    Params parse(const Params& fields) const override {
        Fields read(fields);
        const auto seconds = read.seconds("seconds");
        if (!seconds) throw std::invalid_argument("sleep needs \"seconds\"");
        read.finish();
        return Params{{"seconds", *seconds}};
    }

    // A line of --inputs is its seconds: `yes 0 | head -n 100000 | coordinator --task sleep
    // --inputs -` is 100,000 no-ops read from standard input.
    Params from_input(const Input& input) const override {
        const std::string_view line = input.line;
        double seconds = 0;
        const auto [end, error] = std::from_chars(line.data(), line.data() + line.size(), seconds);
        if (error != std::errc{} || end != line.data() + line.size())
            throw std::invalid_argument(fmt::format("sleep takes a number of seconds per line, not '{}'", line));
        return Params{{"seconds", seconds}};
    }

    // --duration S or LO:HI (settings "duration_s": [lo, hi]): a range draws each sleep from
    // the seeded generator, to the millisecond.
    std::vector<Flag> flags() const override {
        Flag duration{.name = "-d,--duration",
                      .key = "duration_s",
                      .default_value = "1",
                      .help = "seconds per task, or LO:HI for a uniformly random duration per task (see --seed)",
                      .value_name = "SECONDS|LO:HI",
                      .generated_only = true,
                      .parse = parse_duration};
        return {duration};
    }

    Params generate(Generate& args) const override { return number_object("seconds", seconds(args)); }

    // The same params as msgpack, for the schedule of processes mode (decision 316): no JSON
    // made, packed and destroyed per task in the coordinator.
    void generate_packed(Generate& args, std::string& params) const override {
        params = proto::packed_object("seconds", seconds(args));
    }
    // A fixed --duration (not a range): every task sleeps as long, and nothing is drawn.
    bool same_for_every_task(const Json& settings) const override {
        const auto given = settings.find("duration_s");
        return given == settings.end() || given->at(0).get<double>() == given->at(1).get<double>();
    }

    // A task's seconds: --duration's, or one drawn from its range.
    static double seconds(Generate& args) {
        const auto given = args.settings.find("duration_s");  // absent: a program that reads no flags
        double lo = 1;
        double span = 0;
        if (given != args.settings.end()) {  // read in place: a copy of the range is an allocation per task
            lo = given->at(0).get<double>();
            span = given->at(1).get<double>() - lo;
        }
        return span > 0 ? round_to_ms(lo + span * unit_interval(args.random)) : lo;
    }

    Value run(const Params& params, Context& context) const override {
        const auto found = params.find("seconds");
        if (found == params.end() || !found->is_number()) throw std::invalid_argument("sleep needs \"seconds\"");
        const double seconds = found->get<double>();
        // Checked again here: a peer's task skips parse(), and NaN or 1e300 must fail, not hang.
        if (!(seconds >= 0) || seconds > kMaxSeconds)
            throw std::invalid_argument(
                fmt::format("sleep \"seconds\" must be from 0 to {:.0f}, not {}", kMaxSeconds, seconds));
        if (seconds == 0) {  // a no-op: no clock, no wait (the benchmarks' task)
            context.check();
            return number_object("slept_s", 0.0);
        }
        const auto waiting = context.waiting();  // time.sleep() frees the GIL
        const auto started = std::chrono::steady_clock::now();
        const auto wake =
            std::min(context.deadline(), started + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                       std::chrono::duration<double>(seconds)));
        // A condition variable that nobody notifies: wait_until() wakes early only for a stop request.
        std::mutex mutex;
        std::condition_variable_any never;
        std::unique_lock lock(mutex);
        static_cast<void>(never.wait_until(lock, context.stop_token(), wake, [] { return false; }));
        const double slept = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
        if (context.stop_requested()) throw TaskStopped("cancelled");
        if (wake == context.deadline()) throw TaskStopped(context.timed_out());
        return number_object("slept_s", slept);
    }

    // In a worker, a sleep of 0 (the no-op) from its packed params, with its value packed: no
    // JSON either way (decision 242). Any other sleep, or params that run() would refuse, go
    // to run(), which sleeps or says what is wrong.
    bool run_packed(std::string_view params, Context& context, std::string& value) const override {
        double seconds = -1;
        if (!proto::packed_number(params, "seconds", seconds) || seconds != 0) return false;
        context.check();
        static const std::string slept_nothing = proto::packed_object("slept_s", 0.0);
        value = slept_nothing;
        return true;
    }

    std::string describe(const Value& value) const override {
        return fmt::format("slept {:.3f} s", value.value("slept_s", 0.0));
    }
};

}  // namespace

std::shared_ptr<const TaskType> sleep_type() { return std::make_shared<SleepType>(); }

}  // namespace taskfarm
