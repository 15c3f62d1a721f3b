#include "plan.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>
#include <stdexcept>

#include <fmt/format.h>

#include "errors.hpp"

namespace taskfarm {
namespace {

// What is wrong with one plan line; read_plan() adds the file name and line number.
struct LineError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

TaskSpec parse_line(const std::string& text, const Registry& registry) {
    Json line;
    try {
        line = Json::parse(text);
    } catch (const Json::parse_error& e) {
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
        task.timeout_s = fields.seconds("timeout_s").value_or(0);
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

std::ifstream open_input(const std::filesystem::path& path, const std::string& flag) {
    std::ifstream in(path);
    if (!in) throw ConfigError(fmt::format("{}: cannot open '{}': {}", flag, path.string(), std::strerror(errno)));
    return in;
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
            plan.tasks.push_back(TaskSpec{.id = i, .type = &type, .params = type.generate(args)});
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
        {"file_size", config.file_size},
        {"latency_s", config.latency_s},
        {"bandwidth", config.bandwidth},
        {"seed", config.seed},
        {"tasks", config.tasks},
        {"workers", config.workers},
    };
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
            throw ConfigError(fmt::format("{}:{}: {}", name, number, e.what()));
        }
    }
    if (in.bad()) throw ConfigError(fmt::format("{}:{}: cannot read further", name, number + 1));
    if (plan.tasks.empty()) throw ConfigError(fmt::format("{}: no tasks in the plan", name));
    return plan;
}

Plan read_inputs(std::istream& in, const std::string& name, const TaskType& type) {
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
            plan.tasks.push_back(TaskSpec{.id = plan.tasks.size(), .type = &type, .params = type.parse(type.from_input(input))});
        } catch (const std::exception& e) {
            throw ConfigError(fmt::format("{}:{}: {}", name, number, e.what()));
        }
    }
    if (in.bad()) throw ConfigError(fmt::format("{}:{}: cannot read further", name, number + 1));
    if (plan.tasks.empty()) throw ConfigError(fmt::format("{}: no inputs in the list", name));
    return plan;
}

Plan make_plan(const RunConfig& config, const Registry& registry, Json& settings) {
    Plan plan;
    if (!config.plan_path.empty()) {
        std::ifstream in = open_input(config.plan_path, "--plan");
        plan = read_plan(in, config.plan_path.string(), registry);
    } else if (!config.inputs_path.empty()) {
        std::ifstream in = open_input(config.inputs_path, config.inputs_flag);
        try {
            plan = read_inputs(in, config.inputs_path.string(), registry.at(config.task));
        } catch (const ConfigError& e) {
            throw ConfigError(fmt::format("{}: {}", config.inputs_flag, e.what()));
        }
    } else {
        plan = generate_plan(config, registry.at(config.task), settings);
    }
    // --task-timeout is the default; a plan line's own "timeout_s" wins.
    for (TaskSpec& task : plan.tasks)
        if (task.timeout_s == 0) task.timeout_s = config.task_timeout_s;
    return plan;
}

}  // namespace taskfarm
