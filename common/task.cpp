#include "task.hpp"

#include <stdlib.h>

#include <algorithm>
#include <exception>
#include <optional>
#include <stdexcept>
#include <system_error>

#include <fmt/format.h>

#include "gil.hpp"

namespace taskfarm {
namespace {

bool valid_type_name(std::string_view name) {
    return !name.empty() && name.size() <= 64 && std::all_of(name.begin(), name.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    });
}

const Json& empty_object() {
    static const Json empty = Json::object();
    return empty;
}

}  // namespace

const char* version() { return TASKFARM_VERSION; }

// --- Context ---

Context::Context(const Setup& setup, void* gil_hold)
    : setup_(setup), worker_(setup.worker), mode_(setup.mode), gil_hold_(gil_hold) {}

Context::~Context() {
    if (!scratch_) return;
    std::error_code ec;
    std::filesystem::remove_all(*scratch_, ec);  // a destructor reports nothing; the OS tmp cleaner has the rest
}

void Context::check() const {
    if (stop_requested()) throw TaskStopped("cancelled");
    if (expired()) throw TaskStopped(timed_out());
}

std::string Context::timed_out() const { return fmt::format("timed out after {:g} s", setup_.timeout_s); }

const Json& Context::settings() const { return setup_.settings ? *setup_.settings : empty_object(); }

std::filesystem::path Context::out_dir() const {
    return setup_.out_dir && !setup_.out_dir->empty() ? *setup_.out_dir : std::filesystem::path(".");
}

const std::filesystem::path& Context::scratch_dir() {
    if (!scratch_) {
        std::error_code ec;
        std::filesystem::path base = setup_.scratch_base && !setup_.scratch_base->empty()
                                         ? *setup_.scratch_base
                                         : std::filesystem::temp_directory_path(ec);
        if (ec) base = "/tmp";
        std::string pattern = (base / "taskfarm-task-XXXXXX").string();
        if (!::mkdtemp(pattern.data()))
            throw std::system_error(errno, std::generic_category(),
                                    fmt::format("cannot create a scratch directory in '{}'", base.string()));
        scratch_ = pattern;
    }
    return *scratch_;
}

Context::Waiting::Waiting(void* hold) : hold_(hold) {
    if (hold_) static_cast<Gil::Hold*>(hold_)->release();
}

Context::Waiting::~Waiting() {
    if (hold_) static_cast<Gil::Hold*>(hold_)->reacquire();
}

void Context::switch_point() const {
    if (gil_hold_) static_cast<Gil::Hold*>(gil_hold_)->switch_point();
}

// --- TaskType defaults ---

Params TaskType::generate(Generate& args) const { return Params{{"index", args.index}}; }

Params TaskType::from_input(std::string_view line) const { return Params{{"input", std::string(line)}}; }

std::string TaskType::describe(const Value& value) const {
    std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
    constexpr std::size_t kMax = 200;
    if (text.size() > kMax) text = text.substr(0, kMax) + "...";
    return text;
}

// --- Registry ---

void Registry::add(std::shared_ptr<const TaskType> type) {
    if (!type) throw std::invalid_argument("cannot register a null task type");
    const std::string name = type->name();
    if (!valid_type_name(name))
        throw std::invalid_argument(fmt::format("cannot register task type '{}': a name is 1 to 64 letters, digits, '_' or '-'", name));
    if (by_name_.contains(name))
        throw std::invalid_argument(fmt::format("cannot register task type '{}': the name is taken", name));
    by_name_.emplace(name, type.get());
    types_.push_back(std::move(type));
}

const TaskType* Registry::find(std::string_view name) const {
    const auto found = by_name_.find(name);
    return found == by_name_.end() ? nullptr : found->second;
}

const TaskType& Registry::at(std::string_view name) const {
    if (const TaskType* type = find(name)) return *type;
    throw std::invalid_argument(fmt::format("unknown task type \"{}\" (want {})", name, names_text()));
}

std::string Registry::names_text() const {
    std::string text;
    for (std::size_t i = 0; i < types_.size(); ++i) {
        if (i > 0) text += i + 1 == types_.size() ? " or " : ", ";
        text += types_[i]->name();
    }
    return text;
}

void Registry::thread_done() const noexcept {
    for (const auto& type : types_) {
        try {
            type->thread_done();
        } catch (...) {  // clean-up is best effort; the thread is ending anyway
        }
    }
}

// --- running ---

std::string kind_name(const TaskResult& result) { return result.type ? result.type->name() : "?"; }

std::string describe_value(const TaskResult& result) {
    if (!result.ok || !result.type) return {};
    try {
        return result.type->describe(result.value);
    } catch (const std::exception& e) {
        return fmt::format("(cannot describe the value: {})", e.what());
    }
}

TaskResult run_task(const TaskSpec& task, std::uint32_t attempt, const RunEnv& env) {
    TaskResult result;
    result.id = task.id;
    result.attempt = attempt;
    result.type = task.type;
    result.worker = env.worker;
    const auto started = std::chrono::steady_clock::now();
    Context::Setup setup{.worker = env.worker,
                         .mode = env.mode,
                         .id = task.id,
                         .attempt = attempt,
                         .stop = env.stop,
                         .timeout_s = task.timeout_s,
                         .settings = env.settings,
                         .out_dir = &env.out_dir,
                         .scratch_base = &env.scratch_base,
                         .isolated = env.isolated};
    if (task.timeout_s > 0)
        setup.deadline = started + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                       std::chrono::duration<double>(task.timeout_s));
    try {
        if (!task.type) throw std::logic_error("task without a type");
        Gil::Hold hold(env.gil);  // released inside wherever the task says it waits
        Context context(setup, env.gil ? &hold : nullptr);
        result.value = task.type->run(task.params, context);
        // Past its deadline is a timeout in every mode, whether or not the task noticed: a
        // thread cannot be killed, but its late result must not count where a worker's would not.
        if (context.expired()) throw TaskStopped(context.timed_out());
        result.ok = true;
    } catch (const TaskFailed& e) {
        result.error = e.what();
        result.value = e.value;
    } catch (const std::exception& e) {
        result.error = e.what();
    } catch (...) {
        result.error = "threw something that is not a std::exception";
    }
    if (!result.ok) {
        if (result.error.empty()) result.error = "failed without a reason";
    }
    result.run_time = std::chrono::steady_clock::now() - started;
    return result;
}

}  // namespace taskfarm
