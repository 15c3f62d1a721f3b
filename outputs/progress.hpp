#pragma once
// Progress of the running mode on stderr: done/total, failures, tasks/s, elapsed time, ETA.
// On a terminal: a bar redrawn in place at most 10 times a second (a timer redraws it even
// while no result arrives) and kept below every line printed meanwhile. Anywhere else: an
// info log line every few seconds, and no control characters at all.

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/sinks/sink.h>

#include "console_modes.hpp"
#include "sinks.hpp"

namespace taskfarm {

enum class ProgressStyle {
    Bar,  // redrawn in place with control characters: for a terminal
    Log,  // a plain log line every few seconds: for a pipe or a file
};

// What --progress asks for, given file descriptor `fd` (stderr): auto gives Bar on a terminal
// whose TERM is set and not "dumb" (like ninja), Log elsewhere. nullopt: no progress at all.
std::optional<ProgressStyle> progress_style(ProgressMode mode, int fd);

// Where one mode stands.
struct ProgressSnapshot {
    std::string mode;
    std::size_t total = 0;
    std::size_t done = 0;  // final results, failures included
    std::size_t failed = 0;
    double elapsed_s = 0;
};

// "threads    [#####-----]  4/8  1 failed  2.0 tasks/s  2.0s  ETA 2.0s", cut to width - 1
// columns so that it never wraps (a wrapped line cannot be redrawn in place).
std::string progress_bar(const ProgressSnapshot& snapshot, std::size_t width);

// "threads: 4/8 tasks done, 1 failed, 2.0 tasks/s, 2.0s elapsed, ETA 2.0s"
std::string progress_summary(const ProgressSnapshot& snapshot);

// The last line of a terminal, kept below everything else written there: above() erases
// it, lets the caller write, and draws it again. Thread-safe; above() may nest.
class StatusLine {
public:
    explicit StatusLine(std::FILE* out) : out_(out) {}
    void show(std::string text);  // replaces the line in place
    void clear();                 // erases it until the next show()
    void above(const std::function<void()>& write);

private:
    void put(const std::string& bytes);

    // Recursive: a write inside above() may log, and the log goes through above() too.
    std::recursive_mutex mutex_;
    std::FILE* out_;
    std::string text_;  // on screen now; empty: nothing is
    int depth_ = 0;     // nested above() calls: only the outermost erases and redraws
};

// Lets log lines through above a StatusLine: installed in place of a logger's sinks, it
// forwards each message to them inside StatusLine::above().
class AboveStatusLogSink final : public spdlog::sinks::sink {
public:
    AboveStatusLogSink(StatusLine& status, std::vector<spdlog::sink_ptr> inner)
        : status_(status), inner_(std::move(inner)) {}
    void log(const spdlog::details::log_msg& message) override;
    void flush() override;
    void set_pattern(const std::string& pattern) override;
    void set_formatter(std::unique_ptr<spdlog::formatter> formatter) override;

private:
    StatusLine& status_;
    std::vector<spdlog::sink_ptr> inner_;  // each has its own lock; this sink needs none
};

struct ProgressOptions {
    ProgressStyle style = ProgressStyle::Log;
    std::FILE* terminal = stderr;                  // Bar: where it is drawn
    std::chrono::milliseconds log_interval{5000};  // Log: between two lines
    // Bar: the printed lines go to the terminal the bar is on, so the bar is erased while
    // each is written. False (stdout redirected): the lines go elsewhere, and erasing and
    // redrawing the bar for each would cost two terminal writes per result for nothing.
    bool lines_share_terminal = true;
};

// Shows the progress of each mode as its results arrive. Every call is forwarded to
// `printed`, the sink that prints results (ConsoleSink): with the Bar style the bar is
// erased while it writes, so its lines scroll above the bar instead of through it.
class ProgressSink final : public ResultSink {
public:
    // With the Bar style it also routes the default logger's output above the bar, until
    // it is destroyed: construct and destroy it while no other thread logs.
    ProgressSink(ProgressOptions options, std::unique_ptr<ResultSink> printed);
    ~ProgressSink() override;
    ProgressSink(const ProgressSink&) = delete;
    ProgressSink& operator=(const ProgressSink&) = delete;

    // Stops the timer and erases the bar; call before printing the report. Idempotent.
    void close();
    // The number of tasks, for a plan that grows as the run goes (a Farm's submits): the bar's
    // N/TOTAL and ETA, where begin_mode() was told 0 (not known). Thread-safe.
    void set_total(std::size_t total);
    // The bar reads no value; the sink it prints through may.
    bool wants_values() const override { return printed_ && printed_->wants_values(); }

protected:
    void begin_mode_(const std::string& mode, std::size_t tasks) override;
    void sink_it_(const TaskSpec& task, const TaskResult& result) override;
    void event_it_(const RunEvent& event) override;
    void flush_() override;

private:
    using Clock = std::chrono::steady_clock;

    void print(const std::function<void()>& write);          // above the bar, if there is one
    ProgressSnapshot snapshot(Clock::time_point now) const;  // call with state_mutex_ held
    void update(bool force);                                 // redraws the bar, or logs a line if one is due
    void tick(std::stop_token stop);

    const ProgressOptions options_;
    const std::unique_ptr<ResultSink> printed_;
    std::unique_ptr<StatusLine> status_;             // Bar only
    std::vector<spdlog::sink_ptr> saved_log_sinks_;  // Bar: the default logger's own, put back at the end

    // Shared with the timer thread, so guarded by a lock of its own.
    mutable std::mutex state_mutex_;
    std::string mode_name_;
    std::size_t total_ = 0;
    std::size_t given_total_ = 0;  // set_total()'s, for a mode begun with 0
    std::size_t done_ = 0;
    std::size_t failed_ = 0;
    bool running_ = false;  // a mode began and is not complete
    bool closed_ = false;
    Clock::time_point started_{};
    std::optional<Clock::time_point> finished_;  // when the last result came in
    Clock::time_point last_update_{};            // last redraw (Bar) or line (Log)
    std::condition_variable_any wake_;
    std::jthread timer_;  // last: starts after everything it uses
};

}  // namespace taskfarm
