#include "plan.hpp"

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <random>
#include <set>
#include <stdexcept>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "download.hpp"
#include "errors.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

// A uniform double in [0, 1) from the top 53 bits: std::uniform_real_distribution is not
// specified bit for bit, so it could give other plans on other standard libraries.
double unit_interval(std::mt19937_64& generator) { return static_cast<double>(generator() >> 11) * 0x1.0p-53; }

double round_to_ms(double seconds) { return std::round(seconds * 1000.0) / 1000.0; }

// What is wrong with one plan line; read_plan() adds the file name and line number. The
// text may quote the line, so it is made printable here, before what() could cut it at a NUL.
struct LineError : std::runtime_error {
    explicit LineError(const std::string& what) : std::runtime_error(printable(what)) {}
};

// The fields of one plan line. Each getter checks the type of its field and remembers that
// it was read, so that finish() can reject a field nobody reads (a typo, most likely).
class Fields {
public:
    explicit Fields(const nlohmann::json& line) : line_(line) {}

    bool has(const char* key) const { return line_.contains(key); }

    std::optional<double> seconds(const char* key) {
        const nlohmann::json* value = take(key);
        if (!value) return std::nullopt;
        if (!value->is_number() || !std::isfinite(value->get<double>()) || value->get<double>() < 0)
            throw LineError(fmt::format("\"{}\" must be a number of seconds >= 0, not {}", key, value->dump()));
        return value->get<double>();
    }

    std::optional<std::uint64_t> count(const char* key) {
        const nlohmann::json* value = take(key);
        if (!value) return std::nullopt;
        if (!value->is_number_unsigned())
            throw LineError(fmt::format("\"{}\" must be a whole number >= 0, not {}", key, value->dump()));
        return value->get<std::uint64_t>();
    }

    std::optional<std::string> text(const char* key) {
        const nlohmann::json* value = take(key);
        if (!value) return std::nullopt;
        if (!value->is_string()) throw LineError(fmt::format("\"{}\" must be a string, not {}", key, value->dump()));
        return value->get<std::string>();
    }

    void finish() const {
        for (const auto& [key, value] : line_.items())
            if (!read_.contains(key)) throw LineError(fmt::format("unknown field \"{}\"", key));
    }

private:
    const nlohmann::json* take(const char* key) {
        read_.insert(key);
        const auto found = line_.find(key);
        return found == line_.end() ? nullptr : &*found;
    }

    const nlohmann::json& line_;
    std::set<std::string> read_;
};

TaskParams sleep_params(Fields& fields) {
    const auto seconds = fields.seconds("seconds");
    if (!seconds) throw LineError("sleep needs \"seconds\"");
    return TaskParams{.seconds = *seconds};
}

TaskParams cpu_params(Fields& fields) {
    if (fields.has("n") && (fields.has("lo") || fields.has("hi")))
        throw LineError("cpu takes \"n\" or \"lo\" and \"hi\", not both");
    TaskParams params;
    if (const auto n = fields.count("n")) {
        params.hi = *n;
    } else {
        const auto lo = fields.count("lo");
        const auto hi = fields.count("hi");
        if (!lo || !hi) throw LineError("cpu needs \"n\", or \"lo\" and \"hi\"");
        if (*lo > *hi) throw LineError(fmt::format("cpu \"lo\" {} is above \"hi\" {}", *lo, *hi));
        params.lo = *lo;
        params.hi = *hi;
    }
    if (params.hi > kMaxPrimeLimit)
        throw LineError(fmt::format("cpu range end {} is above the limit {}", params.hi, kMaxPrimeLimit));
    return params;
}

TaskParams download_params(Fields& fields) {
    const auto url = fields.text("url");
    if (!url) throw LineError("download needs \"url\"");
    if (const std::string problem = url_problem(*url); !problem.empty())
        throw LineError(fmt::format("\"url\" {} is not an http:// or https:// URL: {}", nlohmann::json(*url).dump(), problem));
    return TaskParams{.url = *url};
}

// One branch per task kind: a new kind adds its case and its *_params function.
TaskSpec parse_line(const std::string& text) {
    nlohmann::json line;
    try {
        line = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
        // e.what() starts with "[json.exception.parse_error.101] ", which helps nobody here.
        const std::string what = e.what();
        throw LineError(fmt::format("not JSON: {}", what.substr(what.find("] ") + 2)));
    }
    if (!line.is_object()) throw LineError(fmt::format("want a JSON object like {{\"kind\":\"sleep\",\"seconds\":1}}, not {}", line.dump()));
    Fields fields(line);
    const auto kind_name = fields.text("kind");
    if (!kind_name) throw LineError("no \"kind\"");
    const auto kind = parse_task_kind(*kind_name);
    if (!kind)
        throw LineError(fmt::format("unknown kind \"{}\" (want sleep, cpu, download, fail or crash)", *kind_name));
    TaskSpec task;
    task.kind = *kind;
    switch (*kind) {
        case TaskKind::Sleep: task.params = sleep_params(fields); break;
        case TaskKind::Cpu: task.params = cpu_params(fields); break;
        case TaskKind::Download: task.params = download_params(fields); break;
        case TaskKind::Fail:
        case TaskKind::Crash: break;  // no parameters
    }
    task.timeout_s = fields.seconds("timeout_s").value_or(kTimeoutNotGiven);
    fields.finish();
    return task;
}

bool skipped(const std::string& line) {
    const auto first = line.find_first_not_of(" \t\r");
    return first == std::string::npos || line[first] == '#';
}

}  // namespace

Plan read_plan(std::istream& in, const std::string& name) {
    Plan plan;
    std::size_t number = 0;
    for (std::string line; std::getline(in, line);) {
        ++number;
        if (skipped(line)) continue;
        try {
            TaskSpec task = parse_line(line);
            task.id = static_cast<TaskId>(plan.tasks.size());
            plan.tasks.push_back(task);
        } catch (const LineError& e) {
            throw ConfigError(fmt::format("{}:{}: {}", printable(name), number, e.what()));
        }
    }
    if (in.bad()) throw ConfigError(fmt::format("{}:{}: cannot read further", printable(name), number + 1));
    if (plan.tasks.empty()) throw ConfigError(fmt::format("{}: no tasks in the plan", printable(name)));
    return plan;
}

namespace {

// `-` is standard input, named "stdin" in messages.
Plan read_plan_file(const std::filesystem::path& path) {
    if (path == "-") return read_plan(std::cin, "stdin");
    std::ifstream in(path);
    if (!in) throw ConfigError(fmt::format("--plan: cannot open '{}': {}", path.string(), std::strerror(errno)));
    return read_plan(in, path.string());
}

Plan download_plan(const std::vector<std::string>& urls) {
    Plan plan;
    for (const std::string& url : urls)
        plan.tasks.push_back(TaskSpec{.id = plan.tasks.size(), .kind = TaskKind::Download, .params = {.url = url}});
    return plan;
}

Plan read_url_file(const std::filesystem::path& path) {
    std::ifstream file;
    if (path != "-") {
        file.open(path);
        if (!file) throw ConfigError(fmt::format("--urls: cannot open '{}': {}", path.string(), std::strerror(errno)));
    }
    try {
        return download_plan(path == "-" ? read_url_list(std::cin, "stdin") : read_url_list(file, path.string()));
    } catch (const ConfigError& e) {
        throw ConfigError(fmt::format("--urls: {}", e.what()));
    }
}

// --tasks tasks of --task, from --seed.
Plan generate_plan(const RunConfig& config, const std::vector<std::string>& served_urls) {
    Plan plan;
    plan.tasks.reserve(static_cast<std::size_t>(config.tasks));
    std::mt19937_64 generator(config.seed);
    for (int i = 0; i < config.tasks; ++i) {
        TaskSpec task;
        task.id = static_cast<TaskId>(i);
        task.kind = config.task;
        switch (config.task) {
            case TaskKind::Sleep: {
                const double span = config.duration_hi_s - config.duration_lo_s;
                task.params.seconds =
                    span > 0 ? round_to_ms(config.duration_lo_s + span * unit_interval(generator)) : config.duration_lo_s;
                break;
            }
            case TaskKind::Cpu:
                task.params.lo = task.id * config.cpu_n;
                task.params.hi = (task.id + 1) * config.cpu_n;
                break;
            case TaskKind::Download:
                if (static_cast<std::size_t>(i) >= served_urls.size())
                    throw std::logic_error("a download plan needs --urls or the built-in server's URLs");
                task.params.url = served_urls[static_cast<std::size_t>(i)];
                break;
            case TaskKind::Fail:
            case TaskKind::Crash: break;  // only in plan files; the CLI does not offer them
        }
        plan.tasks.push_back(task);
    }
    return plan;
}

}  // namespace

std::vector<std::string> read_url_list(std::istream& in, const std::string& name) {
    std::vector<std::string> urls;
    std::size_t number = 0;
    for (std::string line; std::getline(in, line);) {
        ++number;
        if (skipped(line)) continue;
        const auto first = line.find_first_not_of(" \t\r");
        const std::string url = line.substr(first, line.find_last_not_of(" \t\r") - first + 1);
        if (const std::string problem = url_problem(url); !problem.empty())
            throw ConfigError(fmt::format("{}:{}: '{}' is not an http:// or https:// URL: {}", printable(name), number,
                                          printable(url, 200), printable(problem)));
        urls.push_back(url);
    }
    if (in.bad()) throw ConfigError(fmt::format("{}:{}: cannot read further", printable(name), number + 1));
    if (urls.empty()) throw ConfigError(fmt::format("{}: no URLs in the list", printable(name)));
    return urls;
}

Plan make_plan(const RunConfig& config, const std::vector<std::string>& served_urls) {
    Plan plan = !config.plan_path.empty()   ? read_plan_file(config.plan_path)
                : !config.urls_path.empty() ? read_url_file(config.urls_path)
                                            : generate_plan(config, served_urls);
    for (TaskSpec& task : plan.tasks) {
        // --task-timeout is the default; a plan line's own "timeout_s" wins, 0 (no limit) included.
        if (task.timeout_s == kTimeoutNotGiven || config.plan_path.empty()) task.timeout_s = config.task_timeout_s;
        if (task.kind == TaskKind::Download) {
            task.params.max_bytes = config.max_bytes;
            task.params.retries = config.retries;
        }
    }
    return plan;
}

Plan for_mode(Plan plan, Mode mode, const RunConfig& config) {
    const std::string dir = (std::filesystem::absolute(config.out_dir) / to_string(mode)).lexically_normal().string();
    for (TaskSpec& task : plan.tasks)
        if (task.kind == TaskKind::Download) task.params.out_dir = dir;
    return plan;
}

}  // namespace taskfarm
