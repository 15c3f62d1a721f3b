#include "task.hpp"

#include <array>
#include <exception>
#include <utility>

#include <fmt/format.h>

#include "executors/executors.hpp"

namespace taskfarm {
namespace {

constexpr std::array<std::pair<TaskKind, std::string_view>, 2> kKindNames{{
    {TaskKind::Sleep, "sleep"},
    {TaskKind::Cpu, "cpu"},
}};

}  // namespace

std::string_view to_string(TaskKind kind) {
    for (const auto& [k, name] : kKindNames)
        if (k == kind) return name;
    return "unknown";
}

std::optional<TaskKind> parse_task_kind(std::string_view name) {
    for (const auto& [kind, n] : kKindNames)
        if (n == name) return kind;
    return std::nullopt;
}

nlohmann::json params_json(const TaskSpec& task) {
    switch (task.kind) {
        case TaskKind::Sleep: return {{"seconds", task.params.seconds}};
        case TaskKind::Cpu: return {{"lo", task.params.lo}, {"hi", task.params.hi}};
    }
    return nlohmann::json::object();
}

nlohmann::json value_json(const TaskResult& result) {
    if (!result.ok) return nullptr;
    switch (result.kind) {
        case TaskKind::Sleep: return {{"slept_s", result.slept_s}};
        case TaskKind::Cpu: return {{"primes", result.primes}};
    }
    return nullptr;
}

std::string describe_value(const TaskResult& result) {
    switch (result.kind) {
        case TaskKind::Sleep: return fmt::format("slept {:.3f} s", result.slept_s);
        case TaskKind::Cpu: return fmt::format("{} primes", result.primes);
    }
    return {};
}

TaskResult run_task(const TaskSpec& task, const ExecContext& context) {
    TaskResult result;
    result.id = task.id;
    result.kind = task.kind;
    result.worker = context.worker;
    const auto started = std::chrono::steady_clock::now();
    try {
        switch (task.kind) {
            case TaskKind::Sleep: executors::run_sleep(task, context, result); break;
            case TaskKind::Cpu: executors::run_cpu(task, context, result); break;
        }
    } catch (const std::exception& e) {
        result.ok = false;
        result.error = e.what();
    } catch (...) {
        result.ok = false;
        result.error = "unknown exception";
    }
    result.run_time = std::chrono::steady_clock::now() - started;
    return result;
}

}  // namespace taskfarm
