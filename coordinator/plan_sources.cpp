#include "plan_sources.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>
#include <stdexcept>
#include <vector>

#include <fmt/format.h>

#include "errors.hpp"
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
                if (key.find('\0') != std::string::npos) throw RefusedJson(fmt::format("a key holds a NUL byte: \"{}\"", printable(key, 100)));
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

TaskSpec parse_line(const std::string& text, const Registry& registry) {
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
    if (!line.is_object()) throw LineError(fmt::format("want a JSON object like {{\"kind\":\"sleep\",\"seconds\":1}}, not {}", line.dump()));
    TaskSpec task;
    try {
        Fields fields(line);
        const auto kind = fields.text("kind");
        if (!kind) throw LineError("no \"kind\"");
        task.type = registry.find(*kind);
        if (!task.type) throw LineError(fmt::format("unknown kind \"{}\" (want {})", *kind, registry.names_text()));
        task.timeout_s = fields.seconds("timeout_s").value_or(kTimeoutNotGiven);
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

// Lines of a file or of standard input, one at a time.
class LineSource {
public:
    virtual ~LineSource() = default;
    // The next line, without its '\n'; false at the end. Throws ConfigError if reading fails.
    virtual bool next(std::string& line) = 0;
};

class StreamLines final : public LineSource {
public:
    StreamLines(std::unique_ptr<std::istream> owned, std::istream& in, std::string name)
        : owned_(std::move(owned)), in_(in), name_(std::move(name)) {}
    bool next(std::string& line) override {
        if (std::getline(in_, line)) return ++number_, true;
        if (in_.bad()) throw ConfigError(fmt::format("{}:{}: cannot read further", printable(name_), number_ + 1));
        return false;
    }

private:
    std::unique_ptr<std::istream> owned_;
    std::istream& in_;
    std::string name_;
    std::size_t number_ = 0;
};

std::unique_ptr<LineSource> open_file(const std::filesystem::path& path, const std::string& flag) {
    auto in = std::make_unique<std::ifstream>(path);
    if (!*in) throw ConfigError(fmt::format("{}: cannot open '{}': {}", flag, printable(path.string()), std::strerror(errno)));
    std::istream& stream = *in;
    return std::make_unique<StreamLines>(std::move(in), stream, path.string());
}

// The task of one non-skipped line; throws what the line's problem is.
using MakeTask = std::function<TaskSpec(const std::string& line, TaskId id)>;

// Tasks from the lines of `lines`, numbered from 0, with FILE:LINE in every error.
class LineCursor final : public TaskCursor {
public:
    LineCursor(std::unique_ptr<LineSource> lines, std::string name, std::string prefix, std::string empty, MakeTask make,
               double timeout_s, std::function<void(std::uint64_t)> at_end = nullptr)
        : lines_(std::move(lines)),
          name_(printable(std::move(name))),
          prefix_(std::move(prefix)),
          empty_(std::move(empty)),
          make_(std::move(make)),
          timeout_s_(timeout_s),
          at_end_(std::move(at_end)) {}

    bool next(TaskSpec& task) override {
        while (lines_->next(line_)) {
            ++number_;
            if (skipped(line_)) continue;
            try {
                task = make_(line_, tasks_);
            } catch (const std::exception& e) {
                throw ConfigError(fmt::format("{}{}:{}: {}", prefix_, name_, number_, printable(e.what())));
            }
            if (task.timeout_s == kTimeoutNotGiven) task.timeout_s = timeout_s_;
            ++tasks_;
            return true;
        }
        if (tasks_ == 0) throw ConfigError(fmt::format("{}{}: {}", prefix_, name_, empty_));
        if (at_end_) at_end_(tasks_);
        return false;
    }

private:
    std::unique_ptr<LineSource> lines_;
    std::string name_;
    std::string prefix_;  // "--inputs: " or ""
    std::string empty_;   // what a list without tasks is called
    MakeTask make_;
    double timeout_s_;
    std::function<void(std::uint64_t)> at_end_;
    std::string line_;
    std::size_t number_ = 0;
    std::uint64_t tasks_ = 0;
};

MakeTask plan_line_maker(const Registry& registry) {
    return [&registry](const std::string& line, TaskId id) {
        TaskSpec task = parse_line(line, registry);
        task.id = id;
        return task;
    };
}

// Holds a copy of the settings: the plan may outlive the caller's.
MakeTask input_line_maker(const TaskType& type, const Json& run_settings) {
    return [&type, settings = std::make_shared<const Json>(run_settings)](const std::string& line, TaskId id) {
        const auto first = line.find_first_not_of(" \t\r");
        const std::string_view input = std::string_view(line).substr(first, line.find_last_not_of(" \t\r") - first + 1);
        // Checked as a plan line is: a type's parameters cannot come from its input line
        // (sleep's, say) fail here, not in every task.
        const Input numbered{.line = input, .index = id, .settings = *settings};
        return TaskSpec{.id = id, .type = &type, .params = type.parse(type.from_numbered_input(numbered)),
                        .timeout_s = kTimeoutNotGiven};
    };
}

// --tasks tasks of --task, from --seed: every cursor draws from a generator of its own,
// seeded alike, so every mode gets the same tasks.
class GeneratedSource final : public PlanSource {
public:
    GeneratedSource(const TaskType& type, std::uint64_t count, std::uint64_t seed, const Json& settings, double timeout_s)
        : type_(type), count_(count), seed_(seed), settings_(settings), timeout_s_(timeout_s) {}

    std::unique_ptr<TaskCursor> open() const override {
        class Cursor final : public TaskCursor {
        public:
            explicit Cursor(const GeneratedSource& source) : source_(source), random_(source.seed_) {}
            bool next(TaskSpec& task) override {
                if (next_ >= source_.count_) return false;
                task.id = next_;
                task.type = &source_.type_;
                task.params = source_.make(next_, random_);
                task.timeout_s = source_.timeout_s_;
                ++next_;
                return true;
            }

        private:
            const GeneratedSource& source_;
            std::mt19937_64 random_;
            std::uint64_t next_ = 0;
        };
        return std::make_unique<Cursor>(*this);
    }

    Params make(std::uint64_t index, std::mt19937_64& random) const {
        Generate args{.index = index, .count = count_, .random = random, .settings = settings_};
        try {
            return type_.generate(args);
        } catch (const std::exception& e) {
            throw ConfigError(fmt::format("--task {}: cannot make task {} of {}: {}", type_.name(), index, count_, e.what()));
        }
    }

private:
    const TaskType& type_;
    const std::uint64_t count_;
    const std::uint64_t seed_;
    const Json settings_;  // a copy: the plan may outlive the caller's
    const double timeout_s_;
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
    std::unique_ptr<TaskCursor> open() const override {
        return std::make_unique<LineCursor>(open_file(path_, flag_), path_.string(), prefix_, empty_, make_, timeout_s_);
    }

private:
    std::filesystem::path path_;
    std::string flag_;    // for "cannot open"
    std::string prefix_;  // before FILE:LINE in errors
    std::string empty_;
    MakeTask make_;
    double timeout_s_;
};

// Standard input through a StdinSpool: the first cursor reads it as the run goes.
class StdinSource final : public PlanSource {
public:
    StdinSource(std::shared_ptr<StdinSpool> spool, std::string prefix, std::string empty, MakeTask make, double timeout_s)
        : spool_(std::move(spool)),
          prefix_(std::move(prefix)),
          empty_(std::move(empty)),
          make_(std::move(make)),
          timeout_s_(timeout_s) {}
    std::unique_ptr<TaskCursor> open() const override {
        class Lines final : public LineSource {
        public:
            explicit Lines(StdinSpool::Reader reader) : reader_(std::move(reader)) {}
            bool next(std::string& line) override { return reader_.next(line); }

        private:
            StdinSpool::Reader reader_;
        };
        return std::make_unique<LineCursor>(std::make_unique<Lines>(spool_->reader()), spool_->name(), prefix_, empty_, make_,
                                            timeout_s_, [this](std::uint64_t tasks) { counted_ = tasks; });
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
    Json settings = {
        {"duration_s", {config.duration_lo_s, config.duration_hi_s}},
        {"cpu_n", config.cpu_n},
        {"max_bytes", config.max_bytes},
        {"retries", config.retries},
        {"min_speed", config.min_speed},
        {"stall_s", config.stall_s},
        {"file_size", config.file_size},
        {"latency_s", config.latency_s},
        {"bandwidth", config.bandwidth},
        {"seed", config.seed},
        {"tasks", config.tasks},
        {"workers", config.workers},
        {"max_output", config.max_output},
    };
    if (!config.command.empty()) settings["command"] = config.command;
    for (const auto& [key, value] : config.settings.items()) settings[key] = value;
    return settings;
}

Plan read_plan(std::istream& in, const std::string& name, const Registry& registry) {
    LineCursor cursor(std::make_unique<StreamLines>(nullptr, in, name), name, "", "no tasks in the plan",
                      plan_line_maker(registry), kTimeoutNotGiven);
    std::vector<TaskSpec> tasks;
    for (TaskSpec task; cursor.next(task);) tasks.push_back(std::move(task));
    return Plan::of(std::move(tasks));
}

Plan read_inputs(std::istream& in, const std::string& name, const TaskType& type, const Json& settings) {
    LineCursor cursor(std::make_unique<StreamLines>(nullptr, in, name), name, "", "no inputs in the list",
                      input_line_maker(type, settings), kTimeoutNotGiven);
    std::vector<TaskSpec> tasks;
    for (TaskSpec task; cursor.next(task);) tasks.push_back(std::move(task));
    return Plan::of(std::move(tasks));
}

StdinSpool::StdinSpool(std::istream& in) : in_(in) {}

StdinSpool::StdinSpool(std::unique_ptr<std::istream> in, std::string name)
    : owned_(std::move(in)), in_(*owned_), name_(printable(name)) {}

StdinSpool::~StdinSpool() {
    if (out_) std::fclose(out_);
}

void StdinSpool::keep() {
    if (fd_ >= 0) return;
    if (readers_) throw ConfigError(fmt::format("{}: already read in part, so it cannot be read again", name_));
    std::string base = std::filesystem::temp_directory_path().string();
    std::string pattern = base + "/taskfarm-stdin-XXXXXX";
    fd_ = ::mkstemp(pattern.data());
    if (fd_ < 0)
        throw ConfigError(fmt::format("{}: cannot make a file in '{}' to keep the lines for the next mode: {}",
                                      name_, printable(base), std::strerror(errno)));
    ::unlink(pattern.c_str());  // private from now on, and gone with the process
    out_ = ::fdopen(fd_, "w");
    if (!out_) {
        ::close(fd_);
        fd_ = -1;
        throw ConfigError(fmt::format("{}: cannot write the file that keeps its lines: {}", name_, std::strerror(errno)));
    }
}

void StdinSpool::read_all() {
    keep();
    std::string line;
    while (read_more(line)) {}
}

bool StdinSpool::read_more(std::string& line) {
    if (!std::getline(in_, line)) {
        if (in_.bad()) throw ConfigError(fmt::format("{}:{}: cannot read further", name_, read_ + 1));
        return false;
    }
    ++read_;
    if (out_ && (std::fwrite(line.data(), 1, line.size(), out_) != line.size() || std::fputc('\n', out_) == EOF))
        throw ConfigError(fmt::format("{}:{}: cannot keep the line for the next mode: {}", name_, read_, std::strerror(errno)));
    if (!out_) flushed_ = read_;  // nothing to write through
    return true;
}

StdinSpool::Reader::Reader(StdinSpool& spool) : spool_(&spool) {
    if (spool.readers_ && spool.fd_ < 0)
        throw ConfigError(fmt::format("{}: it was read once already, and a list there can be read only once", spool.name_));
}

StdinSpool::Reader::Reader(Reader&& other) noexcept
    : spool_(other.spool_), line_(other.line_), kept_(std::exchange(other.kept_, nullptr)) {}

StdinSpool::Reader::~Reader() {
    if (kept_) std::fclose(kept_);
}

bool StdinSpool::Reader::next(std::string& line) {
    StdinSpool& spool = *spool_;
    spool.readers_ = true;
    if (line_ < spool.read_) {
        // Behind the first reader: from the file, through a handle of its own.
        if (spool.flushed_ < spool.read_) {
            if (std::fflush(spool.out_) != 0)
                throw ConfigError(fmt::format("{}: cannot write the file that keeps its lines: {}", spool.name_, std::strerror(errno)));
            spool.flushed_ = spool.read_;
        }
        if (!kept_) {
            kept_ = std::fopen(fmt::format("/proc/self/fd/{}", spool.fd_).c_str(), "r");
            if (!kept_) throw ConfigError(fmt::format("{}: cannot read back its kept lines: {}", spool.name_, std::strerror(errno)));
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
        return true;
    }
    if (!spool.read_more(line)) return false;
    ++line_;
    if (kept_) std::fseek(kept_, 0, SEEK_END);  // caught up: its handle stays at the end of the file
    return true;
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
    if (path == "-") return std::make_shared<StdinSpool>(std::cin);
    auto in = std::make_unique<std::ifstream>(path, std::ios::binary);
    if (!*in)
        throw ConfigError(fmt::format("{}: cannot open '{}': {}", flag, printable(path.string()), std::strerror(errno)));
    return std::make_shared<StdinSpool>(std::move(in), path.string());
}

}  // namespace

Plan make_plan(const RunConfig& config, const Registry& registry, Json& settings) {
    Plan plan;
    const double timeout_s = config.task_timeout_s;
    if (!config.plan_path.empty()) {
        if (config.plan_path == "-" || read_once(config.plan_path)) {
            plan.stdin_spool = spool_for(config.plan_path, "--plan");
            plan.stdin_spool->read_all();
            plan.source = std::make_shared<StdinSource>(plan.stdin_spool, "", "no tasks in the plan",
                                                        plan_line_maker(registry), timeout_s);
        } else {
            plan.source = std::make_shared<FileSource>(config.plan_path, "--plan", "", "no tasks in the plan",
                                                       plan_line_maker(registry), timeout_s);
        }
        count_tasks(plan);
    } else if (!config.inputs_path.empty()) {
        const TaskType& type = registry.at(config.task);
        const std::string prefix = config.inputs_flag + ": ";
        plan.types = {&type};
        if (config.inputs_path == "-" || read_once(config.inputs_path)) {
            plan.stdin_spool = spool_for(config.inputs_path, config.inputs_flag);
            plan.source = std::make_shared<StdinSource>(plan.stdin_spool, prefix, "no inputs in the list",
                                                        input_line_maker(type, settings), timeout_s);
        } else {
            plan.source = std::make_shared<FileSource>(config.inputs_path, config.inputs_flag, prefix,
                                                       "no inputs in the list", input_line_maker(type, settings), timeout_s);
            count_tasks(plan);
        }
    } else {
        const TaskType& type = registry.at(config.task);
        try {
            if (auto service = type.prepare(settings)) plan.services.push_back(std::move(service));
        } catch (const std::exception& e) {
            throw ConfigError(fmt::format("--task {}: cannot prepare the run: {}", type.name(), e.what()));
        }
        const auto count = static_cast<std::uint64_t>(config.tasks);
        auto source = std::make_shared<GeneratedSource>(type, count, config.seed, settings, timeout_s);
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
