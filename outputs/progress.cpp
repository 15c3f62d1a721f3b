#include "progress.hpp"

#include <signal.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string_view>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace taskfarm {
namespace {

constexpr auto kRedrawInterval = std::chrono::milliseconds(100);  // at most ~10 redraws a second
constexpr std::size_t kDefaultWidth = 80;                         // when the terminal does not say
constexpr std::size_t kMaxBarCells = 30;
constexpr std::size_t kMinBarCells = 10;        // below this the bar is left out, the numbers stay
constexpr const char* kEraseLine = "\r\x1b[K";  // back to column 0, clear to the end of the line

std::size_t terminal_width(std::FILE* out) {
    winsize size{};
    if (::ioctl(::fileno(out), TIOCGWINSZ, &size) == 0 && size.ws_col > 0) return size.ws_col;
    return kDefaultWidth;
}

// "4.2s", "3m07s", "2h05m".
std::string duration_text(double seconds) {
    if (seconds < 60) return fmt::format("{:.1f}s", seconds);
    const auto whole = static_cast<long long>(seconds);
    if (seconds < 3600) return fmt::format("{}m{:02}s", whole / 60, whole % 60);
    return fmt::format("{}h{:02}m", whole / 3600, whole / 60 % 60);
}

double rate_of(const ProgressSnapshot& s) { return s.elapsed_s > 0 ? static_cast<double>(s.done) / s.elapsed_s : 0.0; }

// The total, or "?" while it is not known (a list read from standard input as the run goes).
std::string total_text(const ProgressSnapshot& s) { return s.total > 0 ? fmt::format("{}", s.total) : "?"; }

std::string eta_text(const ProgressSnapshot& s) {
    if (s.total == 0) return "?";
    if (s.done >= s.total) return duration_text(0);
    if (s.done == 0) return "?";
    return duration_text(static_cast<double>(s.total - s.done) / rate_of(s));
}

}  // namespace

std::optional<ProgressStyle> progress_style(ProgressMode mode, int fd) {
    switch (mode) {
        case ProgressMode::Never: return std::nullopt;
        case ProgressMode::Always: return ProgressStyle::Bar;
        case ProgressMode::Auto: break;
    }
    const char* term = std::getenv("TERM");
    const bool smart = ::isatty(fd) == 1 && term && std::string_view(term) != "dumb";
    return smart ? ProgressStyle::Bar : ProgressStyle::Log;
}

std::string progress_bar(const ProgressSnapshot& s, std::size_t width) {
    const std::string head = fmt::format("{:<10} ", s.mode);
    std::string tail = fmt::format(" {}/{}", s.done, total_text(s));
    if (s.failed > 0) tail += fmt::format("  {} failed", s.failed);
    tail += fmt::format("  {:.1f} tasks/s  {}  ETA {}", rate_of(s), duration_text(s.elapsed_s), eta_text(s));
    const std::size_t room = width > head.size() + tail.size() + 3 ? width - 1 - head.size() - tail.size() - 2 : 0;
    std::string line = head;
    if (const std::size_t cells = std::min(room, kMaxBarCells); cells >= kMinBarCells) {
        const std::size_t filled = s.total > 0 ? cells * std::min(s.done, s.total) / s.total : 0;
        line += fmt::format("[{:#<{}}{:-<{}}]", "", filled, "", cells - filled);
    }
    line += tail;
    if (width > 0 && line.size() > width - 1) line.resize(width - 1);
    return line;
}

std::string progress_summary(const ProgressSnapshot& s) {
    return fmt::format("{}: {}/{} tasks done, {} failed, {:.1f} tasks/s, {} elapsed, ETA {}", s.mode, s.done,
                       total_text(s), s.failed, rate_of(s), duration_text(s.elapsed_s), eta_text(s));
}

void StatusLine::show(std::string text) {
    std::lock_guard lock(mutex_);
    const std::size_t width = terminal_width(out_);
    if (width > 0 && text.size() > width - 1) text.resize(width - 1);
    text_ = std::move(text);
    // Drawn over the old text, then the rest of the line cleared: no blank flash in between.
    if (depth_ == 0) put(fmt::format("\r{}\x1b[K", text_));
}

void StatusLine::clear() {
    std::lock_guard lock(mutex_);
    if (depth_ == 0 && !text_.empty()) put(kEraseLine);
    text_.clear();
}

void StatusLine::above(const std::function<void()>& write) {
    std::lock_guard lock(mutex_);
    if (depth_++ == 0 && !text_.empty()) put(kEraseLine);
    try {
        write();
    } catch (...) {
        --depth_;
        throw;
    }
    if (--depth_ == 0 && !text_.empty()) put(fmt::format("\r{}\x1b[K", text_));
}

void StatusLine::put(const std::string& bytes) {
    std::fwrite(bytes.data(), 1, bytes.size(), out_);
    std::fflush(out_);
}

void AboveStatusLogSink::log(const spdlog::details::log_msg& message) {
    status_.above([&] {
        for (const auto& inner : inner_)
            if (inner->should_log(message.level)) inner->log(message);
    });
}

void AboveStatusLogSink::flush() {
    for (const auto& inner : inner_) inner->flush();
}

void AboveStatusLogSink::set_pattern(const std::string& pattern) {
    for (const auto& inner : inner_) inner->set_pattern(pattern);
}

void AboveStatusLogSink::set_formatter(std::unique_ptr<spdlog::formatter> formatter) {
    for (const auto& inner : inner_) inner->set_formatter(formatter->clone());
}

ProgressSink::ProgressSink(ProgressOptions options, std::unique_ptr<ResultSink> printed)
    : options_(options), printed_(std::move(printed)) {
    if (options_.style == ProgressStyle::Bar) {
        status_ = std::make_unique<StatusLine>(options_.terminal);
        auto& log_sinks = spdlog::default_logger()->sinks();
        saved_log_sinks_ = log_sinks;
        log_sinks = {std::make_shared<AboveStatusLogSink>(*status_, saved_log_sinks_)};
    }
    // The timer thread starts with every signal blocked: SIGINT and SIGTERM are for the
    // SignalWatcher, and this sink may well be made before it blocks them for the process.
    sigset_t all;
    sigset_t previous;
    sigfillset(&all);
    ::pthread_sigmask(SIG_BLOCK, &all, &previous);
    timer_ = std::jthread([this](std::stop_token stop) { tick(std::move(stop)); });
    ::pthread_sigmask(SIG_SETMASK, &previous, nullptr);
}

ProgressSink::~ProgressSink() {
    close();
    if (!saved_log_sinks_.empty()) spdlog::default_logger()->sinks() = saved_log_sinks_;
}

void ProgressSink::close() {
    timer_.request_stop();
    if (timer_.joinable()) timer_.join();
    {
        std::lock_guard lock(state_mutex_);
        closed_ = true;
        running_ = false;
    }
    if (status_) status_->clear();
}

void ProgressSink::set_total(std::size_t total) {
    std::lock_guard lock(state_mutex_);
    given_total_ = total;
    if (mode_name_.empty() || closed_) return;  // begin_mode_ takes it
    total_ = total;
    if (done_ >= total_) return;
    // More tasks after all of them were done: the mode runs on.
    finished_.reset();
    running_ = true;
}

void ProgressSink::begin_mode_(const std::string& mode, std::size_t tasks) {
    print([&] { printed_->begin_mode(mode, tasks); });
    {
        std::lock_guard lock(state_mutex_);
        mode_name_ = mode;
        total_ = tasks > 0 ? tasks : given_total_;
        done_ = 0;
        failed_ = 0;
        started_ = Clock::now();
        finished_.reset();
        running_ = true;  // tasks 0: not known yet (standard input), not none
        last_update_ = started_;
    }
    update(true);
}

void ProgressSink::sink_it_(const TaskSpec& task, const TaskResult& result) {
    if (options_.lines_share_terminal)
        print([&] { printed_->on_result(task, result); });
    else
        printed_->on_result(task, result);
    if (result.retrying) return;  // the task is not done: it runs again
    bool complete = false;
    {
        std::lock_guard lock(state_mutex_);
        ++done_;
        if (!result.ok) ++failed_;
        if (total_ > 0 && done_ >= total_) {
            finished_ = Clock::now();
            running_ = false;
            complete = true;
        }
    }
    update(complete);  // the final count is always drawn
}

void ProgressSink::event_it_(const RunEvent& event) {
    printed_->on_event(event);  // not print(): the console prints no events, so no redraw for them
}

void ProgressSink::flush_() { printed_->flush(); }

void ProgressSink::print(const std::function<void()>& write) {
    if (status_)
        status_->above(write);
    else
        write();
}

ProgressSnapshot ProgressSink::snapshot(Clock::time_point now) const {
    const auto end = finished_.value_or(now);
    return {mode_name_, total_, done_, failed_, std::chrono::duration<double>(end - started_).count()};
}

void ProgressSink::update(bool force) {
    std::unique_lock lock(state_mutex_);
    if (closed_ || mode_name_.empty()) return;
    const auto now = Clock::now();
    if (options_.style == ProgressStyle::Bar) {
        if (!force && now - last_update_ < kRedrawInterval) return;  // the timer catches up
        last_update_ = now;
        const std::string text = progress_bar(snapshot(now), terminal_width(options_.terminal));
        lock.unlock();  // never hold the state while waiting for the terminal
        status_->show(text);
        return;
    }
    // A line at a time, only while a mode runs: the report says how it ended.
    if (!running_ || now - last_update_ < options_.log_interval) return;
    last_update_ = now;
    const std::string text = progress_summary(snapshot(now));
    lock.unlock();
    spdlog::info("{}", text);
}

void ProgressSink::tick(std::stop_token stop) {
    while (!stop.stop_requested()) {
        {
            std::unique_lock lock(state_mutex_);
            wake_.wait_for(lock, stop, kRedrawInterval, [] { return false; });
        }
        if (!stop.stop_requested()) update(false);
    }
}

}  // namespace taskfarm
