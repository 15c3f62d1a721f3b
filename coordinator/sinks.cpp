#include "sinks.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "errors.hpp"

namespace taskfarm {

void ResultSink::begin_mode(const std::string& mode, std::size_t tasks) {
    std::lock_guard lock(mutex_);
    mode_ = mode;
    begin_mode_(mode, tasks);
}

void ResultSink::on_result(const TaskSpec& task, const TaskResult& result) {
    std::lock_guard lock(mutex_);
    try {
        sink_it_(task, result);
    } catch (const std::exception& e) {  // a sink never stops the run
        spdlog::error("cannot record result of task {}: {}", result.id, e.what());
    }
}

void ResultSink::on_event(const RunEvent& event) {
    std::lock_guard lock(mutex_);
    try {
        event_it_(event);
    } catch (const std::exception& e) {  // a sink never stops the run
        spdlog::error("cannot record {} event of worker {}: {}", to_string(event.kind), event.worker, e.what());
    }
}

void ResultSink::flush() {
    std::lock_guard lock(mutex_);
    try {
        flush_();
    } catch (const std::exception& e) {  // a sink never stops the run
        spdlog::error("cannot flush results: {}", e.what());
    }
}

void FanOutSink::begin_mode_(const std::string& mode, std::size_t tasks) {
    for (auto& sink : sinks_) sink->begin_mode(mode, tasks);
}

void FanOutSink::sink_it_(const TaskSpec& task, const TaskResult& result) {
    for (auto& sink : sinks_) sink->on_result(task, result);
}

void FanOutSink::event_it_(const RunEvent& event) {
    for (auto& sink : sinks_) sink->on_event(event);
}

void FanOutSink::flush_() {
    for (auto& sink : sinks_) sink->flush();
}

ConsoleSink::ConsoleSink(std::FILE* out) : out_(out), line_by_line_(::isatty(::fileno(out)) == 1) {}

void ConsoleSink::begin_mode_(const std::string& mode, std::size_t tasks) {
    fmt::print(out_, "== {}: {} tasks\n", mode, tasks);
    std::fflush(out_);
}

void ConsoleSink::sink_it_(const TaskSpec&, const TaskResult& result) {
    const std::string outcome = result.ok ? describe_value(result) : "FAILED: " + result.error;
    const std::string attempt = result.attempt > 1 ? fmt::format(" (attempt {})", result.attempt) : "";
    fmt::print(out_, "{:<10} task {:>4} on {:<6} done at {:>7.3f} s, ran {:.3f} s: {}{}\n", mode_, result.id,
               result.worker, result.end_s, result.run_time.count(), outcome, attempt);
    if (line_by_line_) std::fflush(out_);
}

void ConsoleSink::flush_() { std::fflush(out_); }

JournalSink::JournalSink(const std::filesystem::path& path) : path_(path), file_(std::fopen(path.c_str(), "a")) {
    if (!file_) throw ConfigError(fmt::format("cannot open '{}' to append to it: {}", path.string(), std::strerror(errno)));
}

JournalSink::~JournalSink() {
    if (std::fclose(file_) != 0 && lost_ == 0)
        spdlog::error("cannot write results file '{}': {}", path_.string(), std::strerror(errno));
}

void JournalSink::sink_it_(const TaskSpec& task, const TaskResult& result) {
    const nlohmann::json line = {
        {"mode", mode_},
        {"id", result.id},
        {"attempt", result.attempt},
        {"kind", kind_name(result)},
        {"ok", result.ok},
        {"worker", result.worker},
        {"start_s", result.start_s},
        {"end_s", result.end_s},
        {"params", task.params},
        {"value", result.ok ? result.value : nlohmann::json(nullptr)},
        {"error", result.ok ? nlohmann::json(nullptr) : nlohmann::json(result.error)},
    };
    if (lost_ > 0) {  // after a failed write, nothing more: the file stays a journal --resume can read
        ++lost_;
        return;
    }
    // Replace, not throw, on bytes that are not UTF-8 (a value or error may hold anything):
    // a line the journal lost would be a task --resume runs again.
    const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    if (std::fwrite(text.data(), 1, text.size(), file_) != text.size() || std::fflush(file_) != 0) {
        if (lost_++ == 0) {
            error_ = std::strerror(errno);
            spdlog::error("cannot write results file '{}': {}; the run goes on without it", path_.string(), error_);
        }
    }
}

void RecordingSink::begin_mode_(const std::string& mode, std::size_t tasks) {
    modes_.push_back({mode, std::nullopt, {}, {}});
    modes_.back().results.reserve(tasks);
}

void RecordingSink::sink_it_(const TaskSpec&, const TaskResult& result) { modes_.back().results.push_back(result); }

void RecordingSink::event_it_(const RunEvent& event) { modes_.back().events.push_back(event); }

}  // namespace taskfarm
