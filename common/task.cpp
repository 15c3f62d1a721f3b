#include "task.hpp"

#include <array>
#include <exception>
#include <filesystem>
#include <utility>

#include <fmt/format.h>

#include "executors/executors.hpp"

namespace taskfarm {
namespace {

constexpr std::array<std::pair<TaskKind, std::string_view>, 5> kKindNames{{
    {TaskKind::Sleep, "sleep"},
    {TaskKind::Cpu, "cpu"},
    {TaskKind::Download, "download"},
    {TaskKind::Fail, "fail"},
    {TaskKind::Crash, "crash"},
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
        // Only the URL: the directory differs per mode and the limits per run, not the task.
        case TaskKind::Download: return {{"url", task.params.url}};
        case TaskKind::Fail:
        case TaskKind::Crash: break;
    }
    return nlohmann::json::object();
}

nlohmann::json value_json(const TaskResult& result) {
    if (!result.ok) return nullptr;
    switch (result.kind) {
        case TaskKind::Sleep: return {{"slept_s", result.slept_s}};
        case TaskKind::Cpu: return {{"primes", result.primes}};
        case TaskKind::Download:
            return {{"http_status", result.http_status}, {"bytes", result.bytes},   {"sha256", result.sha256},
                    {"final_url", result.final_url},     {"path", result.saved_path}, {"tries", result.tries},
                    {"elapsed_s", result.run_time.count()}};
        case TaskKind::Fail:
        case TaskKind::Crash: break;
    }
    return nullptr;
}

namespace {

// `path` relative to the working directory when it lies inside it: shorter console lines.
std::string display_path(const std::string& path) {
    std::error_code ec;
    const std::filesystem::path cwd = std::filesystem::current_path(ec);
    if (ec) return path;
    const std::filesystem::path relative = std::filesystem::path(path).lexically_relative(cwd);
    return relative.empty() || *relative.begin() == ".." ? path : relative.string();
}

}  // namespace

std::string describe_value(const TaskResult& result) {
    switch (result.kind) {
        case TaskKind::Sleep: return fmt::format("slept {:.3f} s", result.slept_s);
        case TaskKind::Cpu: return fmt::format("{} primes", result.primes);
        case TaskKind::Download:
            return fmt::format("HTTP {}, {} bytes, sha256 {:.12} -> {}{}", result.http_status, result.bytes,
                               result.sha256, display_path(result.saved_path),
                               result.tries > 1 ? fmt::format(" ({} tries)", result.tries) : "");
        case TaskKind::Fail:
        case TaskKind::Crash: break;
    }
    return {};
}

std::string timed_out(const TaskSpec& task) { return fmt::format("timed out after {:g} s", task.timeout_s); }

TaskResult run_task(const TaskSpec& task, const ExecContext& context) {
    TaskResult result;
    result.id = task.id;
    result.kind = task.kind;
    result.worker = context.worker;
    const auto started = std::chrono::steady_clock::now();
    // A copy only when there is a deadline to set: copying the context costs a string and a
    // stop_token (an atomic count) per task.
    std::optional<ExecContext> with_deadline;
    if (task.timeout_s > 0) {
        with_deadline.emplace(context);
        with_deadline->deadline = started + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                std::chrono::duration<double>(task.timeout_s));
    }
    const ExecContext& bounded = with_deadline ? *with_deadline : context;
    try {
        switch (task.kind) {
            case TaskKind::Sleep: executors::run_sleep(task, bounded, result); break;
            case TaskKind::Cpu: executors::run_cpu(task, bounded, result); break;
            case TaskKind::Download: executors::run_download(task, bounded, result); break;
            case TaskKind::Fail: executors::run_fail(task, bounded, result); break;
            case TaskKind::Crash: executors::run_crash(task, bounded, result); break;
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
