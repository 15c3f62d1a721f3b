#include "sink.hpp"

#include <algorithm>
#include <exception>
#include <thread>

#include <spdlog/spdlog.h>

namespace taskfarm {

StartSlot::Seen StartSlot::get() const {
    while (true) {
        const std::uint64_t before = sequence_.load(std::memory_order_acquire);
        if (before % 2 != 0) {  // a start is being written: a few stores away
            std::this_thread::yield();
            continue;
        }
        const Seen seen{before / 2, task_.load(std::memory_order_relaxed), at_s_.load(std::memory_order_relaxed)};
        std::atomic_thread_fence(std::memory_order_acquire);  // the fields read before the count again
        if (sequence_.load(std::memory_order_relaxed) == before) return seen;
    }
}

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
    } catch (...) {
        spdlog::error("cannot record result of task {}: an unknown error", result.id);
    }
}

void ResultSink::on_results(std::span<const Finished> batch) {
    if (batch.empty()) return;
    std::lock_guard lock(mutex_);
    try {
        sink_all_(batch);
    } catch (const std::exception& e) {  // a sink never stops the run
        spdlog::error("cannot record results of tasks {} to {}: {}", batch.front().result.id, batch.back().result.id,
                      e.what());
    } catch (...) {
        spdlog::error("cannot record results of tasks {} to {}: an unknown error", batch.front().result.id,
                      batch.back().result.id);
    }
}

void ResultSink::sink_all_(std::span<const Finished> batch) {
    for (const Finished& done : batch) {
        try {
            sink_it_(done.task, done.result);
        } catch (const std::exception& e) {  // a sink never stops the run
            spdlog::error("cannot record result of task {}: {}", done.result.id, e.what());
        } catch (...) {
            spdlog::error("cannot record result of task {}: an unknown error", done.result.id);
        }
    }
}

void ResultSink::on_event(const RunEvent& event) {
    std::lock_guard lock(mutex_);
    try {
        event_it_(event);
    } catch (const std::exception& e) {  // a sink never stops the run
        spdlog::error("cannot record {} event of worker {}: {}", to_string(event.kind), event.worker, e.what());
    } catch (...) {
        spdlog::error("cannot record {} event of worker {}: an unknown error", to_string(event.kind), event.worker);
    }
}

void ResultSink::flush() {
    std::lock_guard lock(mutex_);
    try {
        flush_();
    } catch (const std::exception& e) {  // a sink never stops the run
        spdlog::error("cannot flush results: {}", e.what());
    } catch (...) {
        spdlog::error("cannot flush results: an unknown error");
    }
}

void FanOutSink::begin_mode_(const std::string& mode, std::size_t tasks) {
    for (auto& sink : sinks_) sink->begin_mode(mode, tasks);
}

void FanOutSink::sink_it_(const TaskSpec& task, const TaskResult& result) {
    for (auto& sink : sinks_) sink->on_result(task, result);
}

void FanOutSink::sink_all_(std::span<const Finished> batch) {
    for (auto& sink : sinks_) sink->on_results(batch);
}

bool FanOutSink::wants_task_starts() const {
    return std::any_of(sinks_.begin(), sinks_.end(), [](const auto& sink) { return sink->wants_task_starts(); });
}

bool FanOutSink::wants_values() const {
    return std::any_of(sinks_.begin(), sinks_.end(), [](const auto& sink) { return sink->wants_values(); });
}

void FanOutSink::on_task_started(const RunEvent& event) {
    for (auto& sink : sinks_)
        if (sink->wants_task_starts()) sink->on_task_started(event);
}

StartSlot* FanOutSink::start_slot(const std::string& worker) {
    ResultSink* wanting = nullptr;
    for (auto& sink : sinks_) {
        if (!sink->wants_task_starts()) continue;
        if (wanting) return nullptr;
        wanting = sink.get();
    }
    return wanting ? wanting->start_slot(worker) : nullptr;
}

void FanOutSink::event_it_(const RunEvent& event) {
    for (auto& sink : sinks_) sink->on_event(event);
}

void FanOutSink::flush_() {
    for (auto& sink : sinks_) sink->flush();
}

}  // namespace taskfarm
