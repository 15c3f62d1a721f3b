#include "sinks.hpp"

#include <algorithm>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/compile.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "errors.hpp"
#include "journal_line.hpp"
#include "protocol.hpp"
#include "text.hpp"

namespace taskfarm {

namespace {

// `out` is the null device: the same character device as /dev/null.
bool is_dev_null(std::FILE* out) {
    struct stat mine {};
    struct stat null {};
    return ::fstat(::fileno(out), &mine) == 0 && S_ISCHR(mine.st_mode) && ::stat("/dev/null", &null) == 0 &&
           S_ISCHR(null.st_mode) && mine.st_rdev == null.st_rdev;
}

}  // namespace

ConsoleSink::ConsoleSink(std::FILE* out, OutputBlocks blocks)
    : out_(out), blocks_(blocks), line_by_line_(::isatty(::fileno(out)) == 1), discarded_(is_dev_null(out)) {}

namespace {

// The type's output block for the console, printable line by line and ending in a newline;
// "" when there is none.
std::string output_block(const TaskResult& result, OutputBlocks blocks) {
    if (blocks == OutputBlocks::None || blocks == OutputBlocks::Plain || !result.type || result.value.is_null())
        return {};
    std::string block;
    try {
        block = result.type->output(result.value);
    } catch (const std::exception& e) {
        block = fmt::format("(cannot show the output: {})", e.what());
    }
    if (block.empty()) return {};
    if (block.back() != '\n') block += '\n';
    block = printable_lines(block, std::string::npos);
    if (blocks != OutputBlocks::Tag) return block;
    const std::string tag = fmt::format("task {}", result.id);
    std::string tagged;
    for (std::size_t at = 0; at < block.size();) {
        const std::size_t end = block.find('\n', at) + 1;  // every line ends in one
        tagged += tag;
        tagged.append(block, at, end - at);
        at = end;
    }
    return tagged;
}

}  // namespace

template <typename... Args>
void ConsoleSink::print(fmt::format_string<Args...> format, Args&&... args) {
    if (closed_) return;
    line_.clear();
    fmt::format_to(std::back_inserter(line_), format, std::forward<Args>(args)...);
    if (std::fwrite(line_.data(), 1, line_.size(), out_) != line_.size()) failed(errno);
}

void ConsoleSink::failed(int error) {
    if (closed_) return;
    if (error == EPIPE) {
        closed_ = true;
        spdlog::warn("stdout is closed (its reader has gone): stopping");
        if (on_closed_) on_closed_();
    } else if (!error_logged_) {
        error_logged_ = true;
        spdlog::error("cannot write results to stdout: {}", std::strerror(error));
    }
}

void ConsoleSink::begin_mode_(const std::string& mode, std::size_t tasks) {
    // 0: not known yet, a list read as the run goes (an empty plan never runs).
    if (tasks == 0)
        print("== {}: tasks as the list is read\n", mode);
    else
        print("== {}: {} tasks\n", mode, tasks);
    flush_();
}

void ConsoleSink::sink_it_(const TaskSpec&, const TaskResult& result) {
    // --output plain: stdout is the commands' own; only what failed is told, on stderr.
    if (discarded_ || (blocks_ == OutputBlocks::Plain && result.ok)) return;
    if (closed_) return;
    // The worker's name, error and value come from another process: one task, one line. Text
    // that is printable already is used as it is (no copy); the format is compiled (decision 203).
    const std::string described = result.ok         ? describe_value(result)
                                  : result.retrying ? "FAILED, runs again (--retries): " + result.error
                                                    : "FAILED: " + result.error;
    const auto shown = [](const std::string& text, std::string& scratch) -> std::string_view {
        if (is_printable(text)) return text;
        scratch = printable(text);
        return scratch;
    };
    std::string outcome_scratch;
    std::string worker_scratch;
    const std::string_view outcome = shown(described, outcome_scratch);
    const std::string_view worker = shown(result.worker, worker_scratch);
    if (!in_block_) line_.clear();
    fmt::format_to(std::back_inserter(line_),
                   FMT_COMPILE("{:<10} task {:>4} on {:<6} done at {:>7.3f} s, ran {:.3f} s: {}"), mode_, result.id,
                   worker, result.end_s, result.run_time.count(), outcome);
    if (result.attempt > 1) fmt::format_to(std::back_inserter(line_), FMT_COMPILE(" (attempt {})"), result.attempt);
    line_.push_back('\n');
    if (blocks_ != OutputBlocks::None && blocks_ != OutputBlocks::Plain && result.type && !result.value.is_null()) {
        const std::string block = output_block(result, blocks_);
        line_.append(block.data(), block.data() + block.size());
    }
    if (in_block_) return;  // written with the rest of the block
    if (std::fwrite(line_.data(), 1, line_.size(), out_) != line_.size()) failed(errno);
    if (line_by_line_) flush_();
}

void ConsoleSink::sink_all_(std::span<const Finished> batch) {
    // A slice of a thread's results (decision 149): formatted into one buffer and written
    // with one fwrite, one flush on a terminal: a lock of stdout per block, not per line.
    if (discarded_ || closed_) return;
    line_.clear();
    in_block_ = true;
    // Whatever escapes the lines, in_block_ goes back: a later single result is written.
    struct EndBlock {
        bool& in_block;
        ~EndBlock() { in_block = false; }
    } end_block{in_block_};
    ResultSink::sink_all_(batch);
    in_block_ = false;
    if (closed_ || line_.size() == 0) return;
    if (std::fwrite(line_.data(), 1, line_.size(), out_) != line_.size()) failed(errno);
    if (line_by_line_) flush_();
}

void ConsoleSink::flush_() {
    if (!closed_ && std::fflush(out_) != 0) failed(errno);
}

JournalSink::JournalSink(const std::filesystem::path& path, bool create) : path_(path) {
    // Close-on-exec: a worker must not inherit the descriptor, and with it the lock.
    const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | (create ? O_CREAT : 0), 0666);
    if (fd < 0)
        throw ConfigError(
            fmt::format("cannot open '{}' to append to it: {}", printable(path.string()), std::strerror(errno)));
    // Held until the file is closed: lines of two runs appended at once would interleave, and
    // a resume would then count tasks twice. flock, not fcntl, because fcntl's locks belong
    // to the process and any close of the file by it drops them.
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
        const int error = errno;
        ::close(fd);
        throw ConfigError(fmt::format("cannot lock '{}': {}", printable(path.string()),
                                      error == EWOULDBLOCK ? "another run is writing to it" : std::strerror(error)));
    }
    file_ = ::fdopen(fd, "a");
    if (!file_) {
        const int error = errno;
        ::close(fd);
        throw ConfigError(
            fmt::format("cannot open '{}' to append to it: {}", printable(path.string()), std::strerror(error)));
    }
}

JournalSink::~JournalSink() {
    if (std::fclose(file_) != 0 && lost_ == 0)
        spdlog::error("cannot write results file '{}': {}", path_.string(), std::strerror(errno));
}

namespace {

nlohmann::json cost_json(const TaskCost& cost) {
    if (cost.scope == TaskCost::Scope::None) return nullptr;
    return {
        {"scope", to_string(cost.scope)},
        {"user_s", cost.user_s},
        {"sys_s", cost.sys_s},
        {"max_rss_kb", cost.max_rss_kb >= 0 ? nlohmann::json(cost.max_rss_kb) : nlohmann::json(nullptr)},
    };
}

}  // namespace

void JournalSink::sink_it_(const TaskSpec& task, const TaskResult& result) {
    const bool measured = result.cost.scope != TaskCost::Scope::None;
    // Member by member, not from an initializer list, whose elements nlohmann::json copies once
    // more (the params and the value among them): a line's making was most of its cost.
    nlohmann::json line(nlohmann::json::value_t::object);
    auto& members = line.get_ref<nlohmann::json::object_t&>();
    members.emplace("mode", mode_);
    members.emplace("id", result.id);
    members.emplace("attempt", result.attempt);
    members.emplace("kind", kind_name(result));
    members.emplace("ok", result.ok);
    members.emplace("worker", result.worker);
    members.emplace("start_s", result.start_s);
    members.emplace("end_s", result.end_s);
    members.emplace("params", proto::params_of(task));  // packed in processes mode (decision 316)
    members.emplace("value", result.value);  // a failed task's too, when it has one (TaskFailed)
    members.emplace("error", result.ok ? nlohmann::json(nullptr) : nlohmann::json(result.error));
    members.emplace("host", measured ? nlohmann::json(result.cost.host) : nlohmann::json(nullptr));
    members.emplace("cost", cost_json(result.cost));
    if (result.retrying) members.emplace("retrying", true);  // a failed attempt, not the task's final result
    if (result.cancelled) members.emplace("cancelled", true);
    write_line(std::move(line));
}

void JournalSink::event_it_(const RunEvent& event) {
    if (event.kind == RunEvent::Kind::Requeued) {
        write_line({
            {"event", "requeue"},
            {"mode", mode_},
            {"id", event.task},
            {"attempt", event.attempt},
            {"kind", event.task_type ? nlohmann::json(event.task_type->name()) : nlohmann::json(nullptr)},
            {"worker", event.worker},
            {"start_s", event.started_s},
            {"at_s", event.at_s},
            {"reason", event.detail},
        });
    } else if (event.kind == RunEvent::Kind::WorkerExited && event.lost) {
        write_line({{"event", "worker lost"},
                    {"mode", mode_},
                    {"worker", event.worker},
                    {"at_s", event.at_s},
                    {"reason", event.detail}});
    }
}

void JournalSink::note_settings(const std::string& mode, const nlohmann::json& settings) {
    write_line({{"event", "settings"}, {"mode", mode}, {"settings", settings}});
}

void JournalSink::note_rerun(const std::string& mode, const nlohmann::json& ranges) {
    write_line({{"event", "rerun"}, {"mode", mode}, {"ids", ranges}});
}

void JournalSink::write_line(nlohmann::json line) {
    if (lost_ > 0) {  // after a failed write, nothing more: the file stays a journal --resume can read
        ++lost_;
        return;
    }
    // Never throws on bytes that are not UTF-8 (a value or error may hold anything): a line
    // the journal lost would be a task --resume runs again. Their exact bytes go in
    // "bytes", and a line over the readers' limit is shortened (journal_line.hpp).
    std::string text = journal_line_text(std::move(line));  // moved: a copy of the line was ~12k instructions
    text += '\n';
    if (std::fwrite(text.data(), 1, text.size(), file_) != text.size() || std::fflush(file_) != 0) {
        if (lost_++ == 0) {
            error_ = std::strerror(errno);
            spdlog::error("cannot write results file '{}': {}; the run goes on without it", path_.string(), error_);
        }
    }
}

void RecordingSink::begin_mode_(const std::string& mode, std::size_t tasks) {
    modes_.push_back({mode, std::nullopt, {}, {}});
    modes_.back().results.reserve(std::min(tasks, max_results_ - kept_));
}

void RecordingSink::sink_it_(const TaskSpec&, const TaskResult& result) {
    if (kept_ >= max_results_) {
        ++dropped_;
        return;
    }
    ++kept_;
    modes_.back().results.push_back(result);
}

void RecordingSink::event_it_(const RunEvent& event) {
    if (event.kind != RunEvent::Kind::TaskStarted) modes_.back().events.push_back(event);
}

}  // namespace taskfarm
