#include "plan.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "errors.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

// What is wrong with one plan line; read_plan() adds the file name and line number. The
// text may quote the line, so it is made printable here, before what() could cut it at a NUL.
struct LineError : std::runtime_error {
    explicit LineError(const std::string& what) : std::runtime_error(printable(what)) {}
};

// Valid JSON that a plan line may not hold (see parse_strict).
struct RefusedJson : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Parses one plan line, refusing what JSON allows but no task can mean: a key given twice in
// one object, and a NUL in any string or key (it would cut a path, URL or kind short).
Json parse_strict(const std::string& text) {
    std::vector<std::vector<std::string>> keys;  // the keys seen so far in each open object
    const auto check = [&keys](int, Json::parse_event_t event, Json& parsed) {
        switch (event) {
            case Json::parse_event_t::object_start: keys.emplace_back(); break;
            case Json::parse_event_t::object_end: keys.pop_back(); break;
            case Json::parse_event_t::key: {
                const auto& key = parsed.get_ref<const std::string&>();
                if (key.find('\0') != std::string::npos) throw RefusedJson(fmt::format("a key holds a NUL byte: \"{}\"", printable(key, 100)));
                if (std::find(keys.back().begin(), keys.back().end(), key) != keys.back().end())
                    throw RefusedJson(fmt::format("key \"{}\" given twice in one object", printable(key, 100)));
                keys.back().push_back(key);
                break;
            }
            case Json::parse_event_t::value:
                if (parsed.is_string() && parsed.get_ref<const std::string&>().find('\0') != std::string::npos)
                    throw RefusedJson(fmt::format("a string holds a NUL byte: {}", printable(parsed.dump(), 100)));
                break;
            default: break;
        }
        return true;
    };
    return Json::parse(text, check);
}

TaskSpec parse_line(const std::string& text, const Registry& registry) {
    Json line;
    try {
        line = parse_strict(text);
    } catch (const RefusedJson& e) {
        throw LineError(e.what());
    } catch (const Json::exception& e) {
        // parse_error (syntax) or out_of_range (a number such as 1e400 that no double holds).
        // e.what() starts with "[json.exception.parse_error.101] ", which helps nobody here.
        const std::string what = e.what();
        throw LineError(fmt::format("not JSON: {}", what.substr(what.find("] ") + 2)));
    }
    if (!line.is_object()) throw LineError(fmt::format("want a JSON object like {{\"kind\":\"sleep\",\"seconds\":1}}, not {}", line.dump()));
    TaskSpec task;
    try {
        Fields fields(line);
        const auto kind = fields.text("kind");
        if (!kind) throw LineError("no \"kind\"");
        task.type = registry.find(*kind);
        if (!task.type) throw LineError(fmt::format("unknown kind \"{}\" (want {})", *kind, registry.names_text()));
        task.timeout_s = fields.seconds("timeout_s").value_or(kTimeoutNotGiven);
        Params own = line;  // the type's fields: all but those two
        own.erase("kind");
        own.erase("timeout_s");
        task.params = task.type->parse(own);
    } catch (const std::invalid_argument& e) {
        throw LineError(e.what());
    }
    return task;
}

bool skipped(const std::string& line) {
    const auto first = line.find_first_not_of(" \t\r");
    return first == std::string::npos || line[first] == '#';
}

// Reads `path` with `read(stream, name)`; `-` is standard input, named "stdin" in messages.
template <typename Read>
Plan read_input_file(const std::filesystem::path& path, const std::string& flag, Read read) {
    if (path == "-") return read(std::cin, std::string("stdin"));
    std::ifstream in(path);
    if (!in) throw ConfigError(fmt::format("{}: cannot open '{}': {}", flag, printable(path.string()), std::strerror(errno)));
    return read(in, path.string());
}

// --tasks tasks of --task, from --seed.
Plan generate_plan(const RunConfig& config, const TaskType& type, Json& settings) {
    Plan plan;
    try {
        if (auto service = type.prepare(settings)) plan.services.push_back(std::move(service));
    } catch (const std::exception& e) {
        throw ConfigError(fmt::format("--task {}: cannot prepare the run: {}", type.name(), e.what()));
    }
    const auto count = static_cast<std::uint64_t>(config.tasks);
    plan.tasks.reserve(count);
    std::mt19937_64 random(config.seed);
    for (std::uint64_t i = 0; i < count; ++i) {
        Generate args{.index = i, .count = count, .random = random, .settings = settings};
        try {
            plan.tasks.push_back(TaskSpec{.id = i, .type = &type, .params = type.generate(args), .timeout_s = kTimeoutNotGiven});
        } catch (const std::exception& e) {
            throw ConfigError(fmt::format("--task {}: cannot make task {} of {}: {}", type.name(), i, count, e.what()));
        }
    }
    return plan;
}

}  // namespace

Json settings_json(const RunConfig& config) {
    Json settings = {
        {"duration_s", {config.duration_lo_s, config.duration_hi_s}},
        {"cpu_n", config.cpu_n},
        {"max_bytes", config.max_bytes},
        {"retries", config.retries},
        {"min_speed", config.min_speed},
        {"stall_s", config.stall_s},
        {"file_size", config.file_size},
        {"latency_s", config.latency_s},
        {"bandwidth", config.bandwidth},
        {"seed", config.seed},
        {"tasks", config.tasks},
        {"workers", config.workers},
        {"max_output", config.max_output},
    };
    if (!config.command.empty()) settings["command"] = config.command;
    for (const auto& [key, value] : config.settings.items()) settings[key] = value;
    return settings;
}

Plan read_plan(std::istream& in, const std::string& name, const Registry& registry) {
    Plan plan;
    std::size_t number = 0;
    for (std::string line; std::getline(in, line);) {
        ++number;
        if (skipped(line)) continue;
        try {
            TaskSpec task = parse_line(line, registry);
            task.id = static_cast<TaskId>(plan.tasks.size());
            plan.tasks.push_back(std::move(task));
        } catch (const LineError& e) {
            throw ConfigError(fmt::format("{}:{}: {}", printable(name), number, e.what()));
        }
    }
    if (in.bad()) throw ConfigError(fmt::format("{}:{}: cannot read further", printable(name), number + 1));
    if (plan.tasks.empty()) throw ConfigError(fmt::format("{}: no tasks in the plan", printable(name)));
    return plan;
}

Plan read_inputs(std::istream& in, const std::string& name, const TaskType& type, const Json& settings) {
    Plan plan;
    std::size_t number = 0;
    for (std::string line; std::getline(in, line);) {
        ++number;
        if (skipped(line)) continue;
        const auto first = line.find_first_not_of(" \t\r");
        const std::string input = line.substr(first, line.find_last_not_of(" \t\r") - first + 1);
        try {
            // Checked as a plan line is: a type's parameters cannot come from its input line
            // (sleep's, say) fail here, not in every task.
            const Input numbered{.line = input, .index = plan.tasks.size(), .settings = settings};
            plan.tasks.push_back(TaskSpec{.id = plan.tasks.size(),
                                          .type = &type,
                                          .params = type.parse(type.from_numbered_input(numbered)),
                                          .timeout_s = kTimeoutNotGiven});
        } catch (const std::exception& e) {
            throw ConfigError(fmt::format("{}:{}: {}", printable(name), number, printable(e.what())));
        }
    }
    if (in.bad()) throw ConfigError(fmt::format("{}:{}: cannot read further", printable(name), number + 1));
    if (plan.tasks.empty()) throw ConfigError(fmt::format("{}: no inputs in the list", printable(name)));
    return plan;
}

Plan make_plan(const RunConfig& config, const Registry& registry, Json& settings) {
    Plan plan;
    if (!config.plan_path.empty()) {
        plan = read_input_file(config.plan_path, "--plan", [&](std::istream& in, const std::string& name) {
            return read_plan(in, name, registry);
        });
    } else if (!config.inputs_path.empty()) {
        const TaskType& type = registry.at(config.task);
        try {
            plan = read_input_file(config.inputs_path, config.inputs_flag, [&](std::istream& in, const std::string& name) {
                return read_inputs(in, name, type, settings);
            });
        } catch (const ConfigError& e) {
            const std::string what = e.what();
            throw what.starts_with(config.inputs_flag + ":") ? e : ConfigError(fmt::format("{}: {}", config.inputs_flag, what));
        }
    } else {
        plan = generate_plan(config, registry.at(config.task), settings);
    }
    // --task-timeout is the default; a plan line's own "timeout_s" wins, 0 (no limit) included.
    for (TaskSpec& task : plan.tasks)
        if (task.timeout_s == kTimeoutNotGiven) task.timeout_s = config.task_timeout_s;
    return plan;
}

}  // namespace taskfarm
