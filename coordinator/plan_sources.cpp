#include "plan_sources.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>
#include <stdexcept>
#include <system_error>
#include <vector>

#include <fmt/format.h>

#include "errors.hpp"
#include "journal_line.hpp"
#include "line_reader.hpp"
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
                if (key.find('\0') != std::string::npos)
                    throw RefusedJson(fmt::format("a key holds a NUL byte: \"{}\"", printable(key, 100)));
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

// What each task of the plan asks for (docs/resources.md): its line's "resources", else
// --task-resources; a request the local workers can never meet is the line's problem.
struct TaskResources {
    ResourceRequest fallback;                  // --task-resources
    const RunConfig* config = nullptr;         // null: nothing checked (read_plan, for tests)
    std::shared_ptr<std::atomic<bool>> asked;  // set once a task asks for any
    std::shared_ptr<std::atomic<bool>> after;  // set once a task has an "after"

    void apply(TaskSpec& task, const Json* given) const {
        task.resources = given ? resources_from_json(*given) : fallback;
        if (task.resources.empty()) return;
        if (config)
            if (const std::string why = unmet_resources(*config, task.resources); !why.empty())
                throw std::invalid_argument(why);
        if (asked) asked->store(true, std::memory_order_relaxed);
    }
};

TaskResources task_resources(const RunConfig& config) {
    return {config.task_resources, &config, config.resources_asked, config.after_asked};
}

// A plan line's "after": ids of earlier tasks, each once. A task may wait only for tasks before
// it, so no chain of them can come back to itself (a cycle could never run).
std::vector<TaskId> dependencies(const Json& after, TaskId id) {
    if (!after.is_array())
        throw std::invalid_argument(
            fmt::format("\"after\": want a list of task ids such as [0, 2], not {}", printable(after.dump(), 100)));
    std::vector<TaskId> ids;
    for (const Json& item : after) {
        if (!item.is_number_unsigned())
            throw std::invalid_argument(
                fmt::format("\"after\": {} is not a task id (a whole number >= 0)", printable(item.dump(), 100)));
        const TaskId dependency = item.get<TaskId>();
        if (dependency >= id)
            throw std::invalid_argument(
                fmt::format("\"after\": task {} {}: a task may wait only for tasks before it in the plan, so that no "
                            "cycle can be written",
                            dependency, dependency == id ? "is this task itself" : "comes later"));
        if (std::find(ids.begin(), ids.end(), dependency) != ids.end())
            throw std::invalid_argument(fmt::format("\"after\": task {} given twice", dependency));
        ids.push_back(dependency);
    }
    return ids;
}

TaskSpec parse_line(const std::string& text, const Registry& registry, const TaskResources& resources, TaskId id) {
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
    if (!line.is_object())
        throw LineError(fmt::format("want a JSON object like {{\"kind\":TYPE, its parameters}}, not {}", line.dump()));
    // Bytes that are not UTF-8 (a file name's, say), kept as a journal line keeps them.
    try {
        put_back_exact_bytes(line);
    } catch (const std::invalid_argument& e) {
        throw LineError(e.what());
    }
    TaskSpec task;
    try {
        Fields fields(line);
        const auto kind = fields.text("kind");
        if (!kind) throw LineError("no \"kind\"");
        task.type = registry.find(*kind);
        if (!task.type) throw LineError(fmt::format("unknown kind \"{}\" (want {})", *kind, registry.names_text()));
        task.timeout_s = fields.seconds("timeout_s").value_or(kTimeoutNotGiven);
        const auto asked = line.find("resources");
        resources.apply(task, asked == line.end() ? nullptr : &*asked);
        Params own = line;  // the type's fields: all but those three
        own.erase("kind");
        own.erase("timeout_s");
        own.erase("resources");
        if (const auto after = line.find("after"); after != line.end()) {
            task.after = dependencies(*after, id);
            if (resources.after) resources.after->store(true, std::memory_order_relaxed);
        }
        own.erase("after");
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

// Lines of a file or of standard input, one at a time, each bounded as it is read.
using Got = StdinSpool::Got;
class LineSource {
public:
    virtual ~LineSource() = default;
    // The next line, without its '\n'; End at the end; with `wait` false, Later when it has
    // not come yet; TooLong for a line over kMaxLineBytes. Throws ConfigError if reading fails.
    virtual Got next(std::string& line, bool wait) = 0;
    virtual int ready_fd() const { return -1; }
};

// A stream held by the caller (read_plan, read_inputs: tests).
class StreamLines final : public LineSource {
public:
    StreamLines(std::istream& in, std::string name) : in_(in), name_(std::move(name)) {}
    Got next(std::string& line, bool) override {
        line.clear();
        std::streambuf& buffer = *in_.rdbuf();
        for (int c = buffer.sbumpc();; c = buffer.sbumpc()) {
            if (c == std::char_traits<char>::eof()) return line.empty() ? Got::End : (++number_, Got::Line);
            if (c == '\n') return ++number_, Got::Line;
            if (line.size() == kMaxLineBytes) return Got::TooLong;
            line.push_back(static_cast<char>(c));
        }
    }

private:
    std::istream& in_;
    std::string name_;
    std::size_t number_ = 0;
};

// A file of the run's, opened by us.
class FileLines final : public LineSource {
public:
    FileLines(int fd, std::string name) : fd_(fd), name_(std::move(name)), lines_(fd) {}
    ~FileLines() override { ::close(fd_); }
    FileLines(const FileLines&) = delete;
    FileLines& operator=(const FileLines&) = delete;
    Got next(std::string& line, bool) override {
        try {
            switch (lines_.next(line)) {
                case LineReader::Got::Line: return ++number_, Got::Line;
                case LineReader::Got::TooLong: return Got::TooLong;
                default: return Got::End;
            }
        } catch (const std::system_error& e) {
            throw ConfigError(
                fmt::format("{}:{}: cannot read further: {}", printable(name_), number_ + 1, e.code().message()));
        }
    }

private:
    int fd_;
    std::string name_;
    LineReader lines_;
    std::size_t number_ = 0;
};

}  // namespace

void keep_from_commands(const std::filesystem::path& path) {
    const std::string text = path.string();
    for (const std::string_view prefix : {"/dev/fd/", "/proc/self/fd/"}) {
        if (!text.starts_with(prefix)) continue;
        int fd = -1;
        const char* digits = text.data() + prefix.size();
        const auto [end, ec] = std::from_chars(digits, text.data() + text.size(), fd);
        if (ec == std::errc{} && end == text.data() + text.size() && fd > STDERR_FILENO) {
            const int flags = ::fcntl(fd, F_GETFD);
            if (flags >= 0) ::fcntl(fd, F_SETFD, flags | FD_CLOEXEC);
        }
    }
}

namespace {

std::unique_ptr<LineSource> open_file(const std::filesystem::path& path, const std::string& flag) {
    keep_from_commands(path);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        throw ConfigError(
            fmt::format("{}: cannot open '{}': {}", flag, printable(path.string()), std::strerror(errno)));
    return std::make_unique<FileLines>(fd, path.string());
}

// The task of one non-skipped line; throws what the line's problem is.
struct MakeTask {
    std::function<TaskSpec(const std::string& line, TaskId id)> make;
    // Every line is a task, as it is: none skipped, nothing trimmed (TaskTraits::verbatim_inputs:
    // a file named "#notes" or " x " is an input like any other, as for GNU parallel).
    bool verbatim = false;
};

// Tasks from the lines of `lines`, numbered from 0, with FILE:LINE in every error. With
// `expected`, the lines hold that many tasks (counted before the run): any other number
// means the file changed under the run, an error.
class LineCursor final : public TaskCursor {
public:
    LineCursor(std::unique_ptr<LineSource> lines, std::string name, std::string prefix, std::string empty,
               MakeTask make, double timeout_s, std::function<void(std::uint64_t)> at_end = nullptr,
               std::optional<std::uint64_t> expected = std::nullopt)
        : lines_(std::move(lines)),
          name_(printable(std::move(name))),
          prefix_(std::move(prefix)),
          empty_(std::move(empty)),
          make_(std::move(make)),
          timeout_s_(timeout_s),
          at_end_(std::move(at_end)),
          expected_(expected) {}

    bool next(TaskSpec& task) override { return step(task, true) == Take::Task; }
    Take take(TaskSpec& task) override { return step(task, false); }
    int ready_fd() const override { return lines_->ready_fd(); }

private:
    Take step(TaskSpec& task, bool wait) {
        while (true) {
            const Got got = lines_->next(line_, wait);
            if (got == Got::Later) return Take::Later;
            if (got == Got::End) break;
            ++number_;
            if (got == Got::TooLong)
                throw ConfigError(fmt::format("{}{}:{}: {}", prefix_, name_, number_, too_long_text()));
            if (!make_.verbatim && skipped(line_)) continue;
            if (expected_ && tasks_ >= *expected_)
                throw ConfigError(
                    fmt::format("{}{}:{}: more than the {} task(s) it held when it was checked before the "
                                "run: the file changed under the run",
                                prefix_, name_, number_, *expected_));
            try {
                task = make_.make(line_, tasks_);
            } catch (const std::exception& e) {
                throw ConfigError(fmt::format("{}{}:{}: {}", prefix_, name_, number_, printable(e.what())));
            }
            if (task.timeout_s == kTimeoutNotGiven) task.timeout_s = timeout_s_;
            ++tasks_;
            return Take::Task;
        }
        if (expected_ && tasks_ != *expected_)
            throw ConfigError(
                fmt::format("{}{}:{}: ends after {} task(s), but held {} when it was checked before the run: "
                            "the file changed under the run",
                            prefix_, name_, number_ + 1, tasks_, *expected_));
        if (tasks_ == 0) throw ConfigError(fmt::format("{}{}: {}", prefix_, name_, empty_));
        if (at_end_) at_end_(tasks_);
        return Take::End;
    }

    std::unique_ptr<LineSource> lines_;
    std::string name_;
    std::string prefix_;  // "--inputs: " or ""
    std::string empty_;   // what a list without tasks is called
    MakeTask make_;
    double timeout_s_;
    std::function<void(std::uint64_t)> at_end_;
    std::optional<std::uint64_t> expected_;
    std::string line_;
    std::size_t number_ = 0;
    std::uint64_t tasks_ = 0;
};

MakeTask plan_line_maker(const Registry& registry, TaskResources resources = {}) {
    return {[&registry, resources = std::move(resources)](const std::string& line, TaskId id) {
        TaskSpec task = parse_line(line, registry, resources, id);
        task.id = id;
        return task;
    }};
}

// Holds a copy of the settings: the plan may outlive the caller's.
MakeTask input_line_maker(const TaskType& type, const Json& run_settings, TaskResources resources = {}) {
    const bool verbatim = type.traits().verbatim_inputs;
    auto make = [&type, verbatim, settings = std::make_shared<const Json>(run_settings),
                 resources = std::move(resources)](const std::string& line, TaskId id) {
        const auto first = line.find_first_not_of(" \t\r");
        const std::string_view input =
            verbatim ? std::string_view(line)
                     : std::string_view(line).substr(first, line.find_last_not_of(" \t\r") - first + 1);
        // Checked as a plan line is: a type's parameters cannot come from its input line
        // (a number out of range, say) fail here, not in every task.
        const Input numbered{.line = input, .index = id, .settings = *settings};
        TaskSpec task{
            .id = id, .type = &type, .params = type.parse(type.from_input(numbered)), .timeout_s = kTimeoutNotGiven};
        resources.apply(task, nullptr);
        return task;
    };
    return {std::move(make), verbatim};
}

// --tasks tasks of --task, from --seed: every cursor draws from a generator of its own,
// seeded alike, so every mode gets the same tasks.
class GeneratedSource final : public PlanSource {
public:
    GeneratedSource(const TaskType& type, std::uint64_t count, std::uint64_t seed, const Json& settings,
                    double timeout_s)
        : type_(type), count_(count), seed_(seed), settings_(settings), timeout_s_(timeout_s) {}

    std::unique_ptr<TaskCursor> open() const override { return std::make_unique<Cursor>(*this, nullptr, false); }
    // Params packed where the type can make them so (decision 316): the same draws, the same bytes.
    std::unique_ptr<TaskCursor> open_packed() const override {
        const auto* packed = dynamic_cast<const PackedGenerate*>(&type_);
        return std::make_unique<Cursor>(*this, packed, packed && packed->same_for_every_task(settings_));
    }

private:
    class Cursor final : public TaskCursor {
    public:
        Cursor(const GeneratedSource& source, const PackedGenerate* packed, bool same)
            : source_(source), packed_(packed), same_(same), random_(source.seed_) {}
        bool next(TaskSpec& task) override {
            if (next_ >= source_.count_) return false;
            task.id = next_;
            task.type = &source_.type_;
            if (packed_) {
                task.params = Params();
                if (!same_) {
                    source_.make_packed(*packed_, next_, random_, task.packed_params.emplace());
                } else {  // made once, copied after
                    if (made_.empty()) source_.make_packed(*packed_, next_, random_, made_);
                    task.packed_params = made_;
                }
            } else {
                task.params = source_.make(next_, random_);
                task.packed_params.reset();
            }
            task.timeout_s = source_.timeout_s_;
            if (!source_.resources_.empty()) task.resources = source_.resources_;
            ++next_;
            return true;
        }

    private:
        const GeneratedSource& source_;
        const PackedGenerate* packed_;  // null: params as JSON
        const bool same_;               // every task's params are made_ (PackedGenerate::same_for_every_task)
        std::string made_;
        std::mt19937_64 random_;
        std::uint64_t next_ = 0;
    };

public:
    Params make(std::uint64_t index, std::mt19937_64& random) const {
        Generate args{.index = index, .count = count_, .random = random, .settings = settings_};
        try {
            return type_.generate(args);
        } catch (const std::exception& e) {
            throw cannot_make(index, e);
        }
    }
    void make_packed(const PackedGenerate& packed, std::uint64_t index, std::mt19937_64& random,
                     std::string& params) const {
        Generate args{.index = index, .count = count_, .random = random, .settings = settings_};
        try {
            packed.generate_packed(args, params);
        } catch (const std::exception& e) {
            throw cannot_make(index, e);
        }
    }

private:
    ConfigError cannot_make(std::uint64_t index, const std::exception& e) const {
        return ConfigError(
            fmt::format("--task {}: cannot make task {} of {}: {}", type_.name(), index, count_, e.what()));
    }

    const TaskType& type_;
    const std::uint64_t count_;
    const std::uint64_t seed_;
    const Json settings_;  // a copy: the plan may outlive the caller's
    const double timeout_s_;

public:
    ResourceRequest resources_;  // --task-resources, for every task
};

// A plan file: every cursor reads it again, from the first line.
class FileSource final : public PlanSource {
public:
    FileSource(std::filesystem::path path, std::string flag, std::string prefix, std::string empty, MakeTask make,
               double timeout_s)
        : path_(std::move(path)),
          flag_(std::move(flag)),
          prefix_(std::move(prefix)),
          empty_(std::move(empty)),
          make_(std::move(make)),
          timeout_s_(timeout_s) {}
    // The first cursor to reach the end counts the tasks (the check before the run); every
    // later one must find as many.
    std::unique_ptr<TaskCursor> open() const override {
        return std::make_unique<LineCursor>(
            open_file(path_, flag_), path_.string(), prefix_, empty_, make_, timeout_s_,
            [this](std::uint64_t tasks) {
                if (!counted_) counted_ = tasks;
            },
            counted_);
    }

private:
    std::filesystem::path path_;
    std::string flag_;    // for "cannot open"
    std::string prefix_;  // before FILE:LINE in errors
    std::string empty_;
    MakeTask make_;
    double timeout_s_;
    mutable std::optional<std::uint64_t> counted_;  // tasks found by the first full read
};

// Standard input through a StdinSpool: the first cursor reads it as the run goes.
class StdinSource final : public PlanSource {
public:
    StdinSource(std::shared_ptr<StdinSpool> spool, std::string prefix, std::string empty, MakeTask make,
                double timeout_s)
        : spool_(std::move(spool)),
          prefix_(std::move(prefix)),
          empty_(std::move(empty)),
          make_(std::move(make)),
          timeout_s_(timeout_s) {}
    std::unique_ptr<TaskCursor> open() const override {
        class Lines final : public LineSource {
        public:
            explicit Lines(StdinSpool::Reader reader) : reader_(std::move(reader)) {}
            Got next(std::string& line, bool wait) override { return reader_.next(line, wait); }
            int ready_fd() const override { return reader_.ready_fd(); }

        private:
            StdinSpool::Reader reader_;
        };
        return std::make_unique<LineCursor>(std::make_unique<Lines>(spool_->reader()), spool_->name(), prefix_, empty_,
                                            make_, timeout_s_, [this](std::uint64_t tasks) { counted_ = tasks; });
    }
    std::optional<std::uint64_t> counted() const override { return counted_; }

private:
    std::shared_ptr<StdinSpool> spool_;
    std::string prefix_;
    std::string empty_;
    MakeTask make_;
    double timeout_s_;
    mutable std::optional<std::uint64_t> counted_;  // set by a cursor at the end, read after the mode
};

}  // namespace

Json settings_json(const RunConfig& config) {
    Json settings = {{"seed", config.seed}, {"tasks", config.tasks}, {"workers", config.workers}};
    if (config.retries) settings["retries"] = *config.retries;
    for (const auto& [key, value] : config.settings.items()) settings[key] = value;
    return settings;
}

Plan read_plan(std::istream& in, const std::string& name, const Registry& registry) {
    LineCursor cursor(std::make_unique<StreamLines>(in, name), name, "", "no tasks in the plan",
                      plan_line_maker(registry), kTimeoutNotGiven);
    std::vector<TaskSpec> tasks;
    for (TaskSpec task; cursor.next(task);) tasks.push_back(std::move(task));
    return Plan::of(std::move(tasks));
}

Plan read_inputs(std::istream& in, const std::string& name, const TaskType& type, const Json& settings) {
    LineCursor cursor(std::make_unique<StreamLines>(in, name), name, "", "no inputs in the list",
                      input_line_maker(type, settings), kTimeoutNotGiven);
    std::vector<TaskSpec> tasks;
    for (TaskSpec task; cursor.next(task);) tasks.push_back(std::move(task));
    return Plan::of(std::move(tasks));
}

StdinSpool::StdinSpool(int fd, std::string name, bool owned) : in_fd_(fd), owned_fd_(owned), name_(printable(name)) {
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    stop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wake_fd_ < 0 || stop_fd_ < 0) {
        const int error = errno;
        if (wake_fd_ >= 0) ::close(wake_fd_);
        if (stop_fd_ >= 0) ::close(stop_fd_);
        if (owned_fd_) ::close(in_fd_);
        throw ConfigError(
            fmt::format("{}: cannot make the descriptors to read it with: {}", name_, std::strerror(error)));
    }
}

StdinSpool::~StdinSpool() {
    if (thread_.joinable()) {
        {
            std::lock_guard lock(mutex_);
            quit_ = true;
        }
        changed_.notify_all();
        const std::uint64_t one = 1;
        [[maybe_unused]] const auto written = ::write(stop_fd_, &one, sizeof one);
        thread_.join();
    }
    ::close(wake_fd_);
    ::close(stop_fd_);
    if (owned_fd_) ::close(in_fd_);
    if (out_) std::fclose(out_);
}

void StdinSpool::start() {
    if (thread_.joinable()) return;
    // The thread takes no signal: the process's are handled elsewhere (SignalWatcher), and a
    // stop signal it took would end the process unhandled.
    sigset_t all;
    sigset_t before;
    sigfillset(&all);
    for (int synchronous : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT}) sigdelset(&all, synchronous);
    ::pthread_sigmask(SIG_BLOCK, &all, &before);
    try {
        thread_ = std::thread([this] { read_lines(); });
    } catch (...) {
        ::pthread_sigmask(SIG_SETMASK, &before, nullptr);
        throw;
    }
    ::pthread_sigmask(SIG_SETMASK, &before, nullptr);
}

void StdinSpool::read_lines() {
    // Holds at most this many lines, and bytes, that no reader took yet (but always one).
    constexpr std::size_t kQueuedLines = 1024;
    constexpr std::size_t kQueuedBytes = 16 << 20;
    LineReader lines(in_fd_, kMaxLineBytes, stop_fd_);
    std::string line;
    std::uint64_t number = 0;
    const auto wake = [this] {  // with mutex_ held
        changed_.notify_all();
        if (!std::exchange(waiting_, false)) return;
        const std::uint64_t one = 1;
        [[maybe_unused]] const auto written = ::write(wake_fd_, &one, sizeof one);
    };
    while (true) {
        LineReader::Got got;
        std::optional<std::string> error;
        try {
            got = lines.next(line);
        } catch (const std::system_error& e) {
            got = LineReader::Got::End;
            error = fmt::format("{}:{}: cannot read further: {}", name_, number + 1, e.code().message());
        }
        std::unique_lock lock(mutex_);
        if (got == LineReader::Got::Stopped || quit_) return;
        if (got != LineReader::Got::Line) {
            ended_ = true;
            too_long_ = got == LineReader::Got::TooLong;
            error_ = std::move(error);
            wake();
            return;
        }
        ++number;
        changed_.wait(lock, [&] {
            return quit_ || queue_.empty() ||
                   (queue_.size() < kQueuedLines && queued_bytes_ + line.size() <= kQueuedBytes);
        });
        if (quit_) return;
        queued_bytes_ += line.size();
        queue_.push_back(std::move(line));
        line = std::string();
        wake();
    }
}

void StdinSpool::keep() {
    if (fd_ >= 0) return;
    if (readers_) throw ConfigError(fmt::format("{}: already read in part, so it cannot be read again", name_));
    std::string base = std::filesystem::temp_directory_path().string();
    std::string pattern = base + "/taskfarm-stdin-XXXXXX";
    fd_ = ::mkostemp(pattern.data(), O_CLOEXEC);  // no command may inherit it
    if (fd_ < 0)
        throw ConfigError(fmt::format("{}: cannot make a file in '{}' to keep the lines for the next mode: {}", name_,
                                      printable(base), std::strerror(errno)));
    ::unlink(pattern.c_str());  // private from now on, and gone with the process
    out_ = ::fdopen(fd_, "w");
    if (!out_) {
        ::close(fd_);
        fd_ = -1;
        throw ConfigError(
            fmt::format("{}: cannot write the file that keeps its lines: {}", name_, std::strerror(errno)));
    }
}

void StdinSpool::read_all() {
    keep();
    std::string line;
    while (true) {
        const Got got = read_more(line, true);
        if (got == Got::TooLong) throw ConfigError(fmt::format("{}:{}: {}", name_, read_ + 1, too_long_text()));
        if (got != Got::Line) break;
    }
}

StdinSpool::Got StdinSpool::read_more(std::string& line, bool wait) {
    start();
    if (!wait) {  // drained before the queue is looked at: a line that comes after that wakes it again
        std::uint64_t count = 0;
        [[maybe_unused]] const auto got = ::read(wake_fd_, &count, sizeof count);
    }
    {
        std::unique_lock lock(mutex_);
        while (queue_.empty() && !ended_) {
            if (!wait) {
                waiting_ = true;
                return Got::Later;
            }
            changed_.wait(lock);
        }
        if (queue_.empty()) {
            if (error_) throw ConfigError(*error_);
            return too_long_ ? Got::TooLong : Got::End;
        }
        line = std::move(queue_.front());
        queue_.pop_front();
        queued_bytes_ -= line.size();
    }
    changed_.notify_all();  // room for the next line
    ++read_;
    if (out_ && (std::fwrite(line.data(), 1, line.size(), out_) != line.size() || std::fputc('\n', out_) == EOF))
        throw ConfigError(
            fmt::format("{}:{}: cannot keep the line for the next mode: {}", name_, read_, std::strerror(errno)));
    if (!out_) flushed_ = read_;  // nothing to write through
    return Got::Line;
}

StdinSpool::Reader::Reader(StdinSpool& spool) : spool_(&spool) {
    if (spool.readers_ && spool.fd_ < 0)
        throw ConfigError(
            fmt::format("{}: it was read once already, and a list there can be read only once", spool.name_));
}

StdinSpool::Reader::Reader(Reader&& other) noexcept
    : spool_(other.spool_), line_(other.line_), kept_(std::exchange(other.kept_, nullptr)) {}

StdinSpool::Reader::~Reader() {
    if (kept_) std::fclose(kept_);
}

StdinSpool::Got StdinSpool::Reader::next(std::string& line, bool wait) {
    StdinSpool& spool = *spool_;
    spool.readers_ = true;
    if (line_ < spool.read_) {
        // Behind the first reader: from the file, through a handle of its own.
        if (spool.flushed_ < spool.read_) {
            if (std::fflush(spool.out_) != 0)
                throw ConfigError(fmt::format("{}: cannot write the file that keeps its lines: {}", spool.name_,
                                              std::strerror(errno)));
            spool.flushed_ = spool.read_;
        }
        if (!kept_) {
            kept_ = std::fopen(fmt::format("/proc/self/fd/{}", spool.fd_).c_str(), "re");
            if (!kept_)
                throw ConfigError(
                    fmt::format("{}: cannot read back its kept lines: {}", spool.name_, std::strerror(errno)));
        }
        char* text = nullptr;
        std::size_t capacity = 0;
        const ssize_t length = ::getline(&text, &capacity, kept_);
        if (length <= 0) {
            std::free(text);
            throw ConfigError(fmt::format("{}: cannot read back kept line {}", spool.name_, line_ + 1));
        }
        line.assign(text, static_cast<std::size_t>(length) - (text[length - 1] == '\n' ? 1 : 0));
        std::free(text);
        ++line_;
        return Got::Line;
    }
    const Got got = spool.read_more(line, wait);
    if (got != Got::Line) return got;
    ++line_;
    if (kept_) std::fseek(kept_, 0, SEEK_END);  // caught up: its handle stays at the end of the file
    return Got::Line;
}

namespace {

// A path that is not a regular file (a pipe, bash's `<(...)`, a FIFO, a device) can be read
// only once, like standard input: it is read as the run goes, through a spool of its own, not
// checked in a first pass and read again (decision 97).
bool read_once(const std::filesystem::path& path) {
    std::error_code ec;
    const auto status = std::filesystem::status(path, ec);
    return !ec && std::filesystem::exists(status) && !std::filesystem::is_regular_file(status) &&
           !std::filesystem::is_directory(status);
}

// Standard input for "-", else the file at `path`, opened now.
std::shared_ptr<StdinSpool> spool_for(const std::filesystem::path& path, const std::string& flag) {
    if (path == "-") return std::make_shared<StdinSpool>(STDIN_FILENO, "stdin", false);
    keep_from_commands(path);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        throw ConfigError(
            fmt::format("{}: cannot open '{}': {}", flag, printable(path.string()), std::strerror(errno)));
    return std::make_shared<StdinSpool>(fd, path.string(), true);
}

}  // namespace

std::string unmet_resources(const RunConfig& config, const ResourceRequest& request) {
    if (request.empty()) return {};
    if (config.workers == 0)
        return fmt::format("asks for {}, but resources are the local workers' and --workers is 0",
                           resources_text(request));
    return config.resources->unmet(request);
}

Plan make_plan(const RunConfig& config, const Registry& registry, Json& settings) {
    Plan plan;
    const double timeout_s = config.task_timeout_s;
    if (config.plan_source) {
        plan.source = config.plan_source;
        plan.count = config.plan_source->counted();
        plan.types = {&registry.at(config.task)};
    } else if (!config.plan_path.empty()) {
        if (config.plan_path == "-" || read_once(config.plan_path)) {
            plan.stdin_spool = spool_for(config.plan_path, "--plan");
            plan.stdin_spool->read_all();
            plan.source = std::make_shared<StdinSource>(plan.stdin_spool, "", "no tasks in the plan",
                                                        plan_line_maker(registry, task_resources(config)), timeout_s);
        } else {
            plan.source = std::make_shared<FileSource>(config.plan_path, "--plan", "", "no tasks in the plan",
                                                       plan_line_maker(registry, task_resources(config)), timeout_s);
        }
        count_tasks(plan);
    } else if (!config.inputs_path.empty()) {
        const TaskType& type = registry.at(config.task);
        const std::string prefix = config.inputs_flag + ": ";
        plan.types = {&type};
        if (config.inputs_path == "-" || read_once(config.inputs_path)) {
            plan.stdin_spool = spool_for(config.inputs_path, config.inputs_flag);
            plan.source =
                std::make_shared<StdinSource>(plan.stdin_spool, prefix, "no inputs in the list",
                                              input_line_maker(type, settings, task_resources(config)), timeout_s);
        } else {
            plan.source =
                std::make_shared<FileSource>(config.inputs_path, config.inputs_flag, prefix, "no inputs in the list",
                                             input_line_maker(type, settings, task_resources(config)), timeout_s);
            count_tasks(plan);
        }
    } else {
        const TaskType& type = registry.at(config.task);
        try {
            if (const RunHooks* hooks = run_hooks(type))
                if (auto service = hooks->prepare(settings)) plan.services.push_back(std::move(service));
        } catch (const std::exception& e) {
            throw ConfigError(fmt::format("--task {}: cannot prepare the run: {}", type.name(), e.what()));
        }
        const auto count = static_cast<std::uint64_t>(config.tasks);
        auto source = std::make_shared<GeneratedSource>(type, count, config.seed, settings, timeout_s);
        source->resources_ = config.task_resources;  // checked against the workers by parse_cli
        // A type that cannot make these tasks is found out now, not in the middle of the run:
        // its first task, and its last (with a generator of its own: the last is made again
        // in its turn), where an index too large for the type shows.
        std::mt19937_64 probe(config.seed);
        source->make(0, probe);
        if (count > 1) source->make(count - 1, probe);
        plan.source = std::move(source);
        plan.count = count;
        plan.types = {&type};
    }
    return plan;
}

}  // namespace taskfarm
