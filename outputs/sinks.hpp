#pragma once
// The sinks that write results out: the console, the journal, the recording for pictures.

#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "console_modes.hpp"
#include "pictures.hpp"
#include "sink.hpp"
#include "task.hpp"

namespace taskfarm {

// One human-readable line per result on `out` (stdout), like Python's as_completed. On a
// terminal each line is flushed as it is written; elsewhere (a file, a pipe) lines are
// buffered until flush(), which costs a line a few milliseconds and saves a system call
// per result.
// A write that fails with EPIPE (the reader of a pipe has gone, as with `| head`) calls
// `on_closed` once, and nothing more is written.
// A type's output block (TaskType::output, e.g. a program's stdout and stderr) follows its
// task's line in the same write, so two tasks' blocks never interleave (see OutputBlocks).
// When `out` is /dev/null (scripts/bench, `> /dev/null`) no result line is formatted at all:
// per task, only the work the run asked for.
class ConsoleSink final : public ResultSink {
public:
    explicit ConsoleSink(std::FILE* out, OutputBlocks blocks = OutputBlocks::Group);
    // Set before the first result arrives; called at most once, with the sink's lock held.
    void on_closed(std::function<void()> callback) { on_closed_ = std::move(callback); }
    // A line describes its value (TaskType::describe) unless nothing reads the lines.
    bool wants_values() const override { return !discarded_; }

protected:
    void begin_mode_(const std::string& mode, std::size_t tasks) override;
    void sink_it_(const TaskSpec& task, const TaskResult& result) override;
    void sink_all_(std::span<const Finished> batch) override;
    void flush_() override;

private:
    template <typename... Args>
    void print(fmt::format_string<Args...> format, Args&&... args);
    void failed(int error);

    std::FILE* out_;
    OutputBlocks blocks_;
    bool line_by_line_;    // out_ is a terminal
    bool discarded_;       // out_ is /dev/null: nothing reads the lines, so none is formatted
    bool closed_ = false;  // a write failed with EPIPE: nobody reads any more
    bool error_logged_ = false;
    fmt::memory_buffer line_;  // each line is formatted here: no allocation per result once it is grown
    bool in_block_ = false;    // sink_all_() gathers a block of lines in line_, written at its end
    std::function<void()> on_closed_;
};

// One JSON line per result, appended to a file and flushed as it arrives. The file is
// locked (flock, exclusive) from construction to destruction: a journal another run holds
// is refused, so two runs never interleave their lines.
class JournalSink final : public ResultSink {
public:
    // Creates the file if missing and `create`; throws ConfigError if it cannot be opened or
    // another process holds its lock.
    JournalSink(const std::filesystem::path& path, bool create);
    ~JournalSink() override;
    JournalSink(const JournalSink&) = delete;
    JournalSink& operator=(const JournalSink&) = delete;
    // Writes `{"event":"settings","mode":MODE,"settings":SETTINGS}`: what the run's results
    // depend on besides its tasks, which --resume compares (journal_settings()).
    void note_settings(const std::string& mode, const nlohmann::json& settings);
    // Writes `{"event":"rerun","mode":MODE,"ids":[[FIRST,LAST],...]}`: tasks ok above that this
    // run runs again (a task they wait for runs again), so that their next ok line is not
    // taken for a second run's by --resume.
    void note_rerun(const std::string& mode, const nlohmann::json& ranges);
    // Lines that could not be written (a full disk, say), and why the first one failed.
    std::size_t lost() const { return lost_; }
    const std::string& error() const { return error_; }

protected:
    void begin_mode_(const std::string&, std::size_t) override {}
    void sink_it_(const TaskSpec& task, const TaskResult& result) override;
    // A lost attempt or a worker lost mid-run, as an "event" line (decision 93); --resume
    // skips them.
    void event_it_(const RunEvent& event) override;

private:
    void write_line(nlohmann::json line);

    std::filesystem::path path_;
    std::FILE* file_ = nullptr;
    std::size_t lost_ = 0;  // lines not written: the first failure is logged, no line after it is written
    std::string error_;
};

// Keeps every result and event of every mode in memory, for --trace and --timeline, up to
// `max_results` results in all: past it (a plan read from standard input, whose size was not
// known before the run) the rest are counted, not kept, and dropped() says how many.
class RecordingSink final : public ResultSink {
public:
    explicit RecordingSink(std::size_t max_results = static_cast<std::size_t>(-1)) : max_results_(max_results) {}
    std::size_t dropped() const { return dropped_; }
    // What was recorded, one entry per begin_mode(); the report is left for the caller to
    // fill in. Call it once no runner is running.
    std::vector<ModeRecording> take() { return std::move(modes_); }

protected:
    void begin_mode_(const std::string& mode, std::size_t tasks) override;
    void sink_it_(const TaskSpec& task, const TaskResult& result) override;
    void event_it_(const RunEvent& event) override;

private:
    std::vector<ModeRecording> modes_;
    std::size_t max_results_;
    std::size_t kept_ = 0;
    std::size_t dropped_ = 0;
};

}  // namespace taskfarm
