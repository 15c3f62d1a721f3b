#include "task.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <system_error>

#include <fmt/format.h>

#include "gil.hpp"
#include "protocol.hpp"
#include "temp_dirs.hpp"

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

double seconds(const timeval& tv) { return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6; }

rusage usage_now(bool process) {
    rusage usage{};
    ::getrusage(process ? RUSAGE_SELF : RUSAGE_THREAD, &usage);
    return usage;
}

// getrusage() costs about a microsecond, as much as a no-op task. A thread that runs tasks
// back to back measures each from the end of the one before, when that was at most
// kChainWithin ago: one call per task instead of two, and the bookkeeping in between (a few
// microseconds) counts as the next task's. See decision 92.
constexpr auto kChainWithin = std::chrono::milliseconds(1);

struct LastUsage {
    bool process = false;
    std::chrono::steady_clock::time_point at{};
    rusage usage{};
};
thread_local LastUsage last_usage;

rusage usage_at_start(bool process, std::chrono::steady_clock::time_point now) {
    if (last_usage.process == process && last_usage.at != std::chrono::steady_clock::time_point{} &&
        now - last_usage.at <= kChainWithin)
        return last_usage.usage;
    return usage_now(process);
}

rusage usage_at_end(bool process) {
    last_usage = {process, std::chrono::steady_clock::now(), usage_now(process)};
    return last_usage.usage;
}

// The peak resident memory of this process during one task: Linux keeps a high-water mark
// (VmHWM) that writing "5" to /proc/self/clear_refs resets to the present size (since 4.0).
// ru_maxrss will not do: it also counts the process this one was forked from, before its
// exec (the coordinator, whose size says nothing about a task). Used only in a worker
// process, which runs one task at a time. See decision 92.
class PeakMemory {
public:
    static PeakMemory& instance() {
        static PeakMemory* const peak = new PeakMemory;  // never destroyed: a task may still run at exit
        return *peak;
    }
    // Before a task: resets the mark if a measured task (or nothing) came before.
    void before() {
        std::lock_guard lock(mutex_);  // one task at a time in a worker: never contended there
        if (!pending_reset_) return;
        pending_reset_ = false;
        own();
        works_ = clear_fd_ >= 0 && ::pwrite(clear_fd_, "5", 1, 0) == 1;
    }
    // After a task that ran `ran`: its peak in KiB, or -1 when not measured.
    std::int64_t after(std::chrono::steady_clock::duration ran) {
        std::lock_guard lock(mutex_);
        if (!works_ || ran < kPeakMinRun) return -1;
        pending_reset_ = true;
        own();
        char text[4096];
        const ssize_t size = status_fd_ < 0 ? -1 : ::pread(status_fd_, text, sizeof text - 1, 0);
        if (size <= 0) return -1;
        text[size] = '\0';
        const char* line = std::strstr(text, "\nVmHWM:");
        if (!line) return -1;
        return std::strtoll(line + 7, nullptr, 10);
    }

private:
    // The files of this process: a process forked after they were opened (a fork server's
    // worker) would otherwise read and reset its parent's.
    void own() {
        const pid_t pid = ::getpid();
        if (pid == pid_) return;
        for (const int fd : {clear_fd_, status_fd_})
            if (fd >= 0) ::close(fd);
        clear_fd_ = ::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
        status_fd_ = ::open("/proc/self/status", O_RDONLY | O_CLOEXEC);
        pid_ = pid;
    }
    // Open for the life of the process: reopening costs more than reading.
    std::mutex mutex_;
    pid_t pid_ = 0;
    int clear_fd_ = -1;
    int status_fd_ = -1;
    bool pending_reset_ = true;
    bool works_ = false;
};

}  // namespace

std::string_view to_string(TaskCost::Scope scope) {
    switch (scope) {
        case TaskCost::Scope::Thread: return "thread";
        case TaskCost::Scope::Process: return "process";
        case TaskCost::Scope::Tree: return "tree";
        case TaskCost::Scope::None: break;
    }
    return "";
}

TaskCost::Scope cost_scope(std::string_view name) {
    if (name == "thread") return TaskCost::Scope::Thread;
    if (name == "process") return TaskCost::Scope::Process;
    if (name == "tree") return TaskCost::Scope::Tree;
    return TaskCost::Scope::None;
}

const std::string& this_host() {
    static const std::string host = [] {
        char name[256] = {};
        if (::gethostname(name, sizeof name - 1) != 0) return std::string("?");
        return std::string(name);
    }();
    return host;
}

const std::string& this_node() {
    static const std::string node = [] {
        const char* slurm = std::getenv("SLURMD_NODENAME");
        return slurm != nullptr && *slurm != '\0' ? std::string(slurm) : this_host();
    }();
    return node;
}

const char* version() { return TASKFARM_VERSION; }

// --- Context ---

Context::Context(const detail::ContextSetup& setup)
    : worker_(setup.worker),
      mode_(setup.mode),
      id_(setup.id),
      attempt_(setup.attempt),
      stop_(setup.stop),
      deadline_(setup.deadline),
      timeout_s_(setup.timeout_s),
      settings_(setup.settings),
      out_dir_(setup.out_dir),
      scratch_base_(setup.scratch_base),
      isolated_(setup.isolated),
      gil_hold_(setup.gil_hold) {}

Context::~Context() {
    if (!scratch_) return;
    std::error_code ec;
    std::filesystem::remove_all(*scratch_, ec);  // a destructor reports nothing; the OS tmp cleaner has the rest
    forget_temp_dir(*scratch_);
}

void Context::check() const {
    if (stop_requested()) throw TaskStopped("cancelled");
    if (expired()) throw TaskStopped(timed_out());
}

std::string Context::timed_out() const { return fmt::format("timed out after {:g} s", timeout_s_); }

const Json& Context::settings() const { return settings_ ? *settings_ : empty_object(); }

std::filesystem::path Context::out_dir() const {
    return out_dir_ && !out_dir_->empty() ? *out_dir_ : std::filesystem::path(".");
}

const std::filesystem::path& Context::scratch_dir() {
    if (!scratch_) {
        std::error_code ec;
        std::filesystem::path base =
            scratch_base_ && !scratch_base_->empty() ? *scratch_base_ : std::filesystem::temp_directory_path(ec);
        if (ec) base = "/tmp";
        // Named with our pid, and removed at exit() too, or by the next run if we are killed.
        try {
            scratch_ = make_temp_dir(base, "task");
        } catch (const std::system_error& e) {
            throw std::system_error(e.code(), fmt::format("cannot create a scratch directory in '{}'", base.string()));
        }
    }
    return *scratch_;
}

Context::Waiting::Waiting(void* hold) : hold_(hold) {
    if (hold_) static_cast<Gil::Hold*>(hold_)->release();
}

Context::Waiting::~Waiting() {
    if (hold_) static_cast<Gil::Hold*>(hold_)->reacquire();
}

void Context::add_child_usage(const ChildUsage& usage) {
    if (!child_usage_) {
        child_usage_ = usage;
        return;
    }
    child_usage_->user_s += usage.user_s;
    child_usage_->sys_s += usage.sys_s;
    child_usage_->max_rss_kb = std::max(child_usage_->max_rss_kb, usage.max_rss_kb);
}

void Context::switch_point() const {
    if (gil_hold_) static_cast<Gil::Hold*>(gil_hold_)->switch_point();
}

// --- TaskType defaults ---

// Both built in place: a JSON initializer list copies every node it names, ~1,000 instructions
// a task more in the coordinator of a user's no-op function (decision 282).
Params TaskType::generate(Generate& args) const {
    Params params(Json::value_t::object);
    params.emplace("index", args.index);
    return params;
}

Params TaskType::from_input(const Input& input) const {
    Params params(Json::value_t::object);
    params.emplace("input", std::string(input.line));
    return params;
}

std::string TaskType::describe(const Value& value) const {
    std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
    constexpr std::size_t kMax = 200;
    if (text.size() > kMax) text = text.substr(0, kMax) + "...";
    return text;
}

// --- Registry ---

void Registry::add(std::shared_ptr<const TaskType> type, bool builtin) {
    if (!type) throw std::invalid_argument("cannot register a null task type");
    const std::string name = type->name();
    if (!valid_type_name(name))
        throw std::invalid_argument(
            fmt::format("cannot register task type '{}': a name is 1 to 64 letters, digits, '_' or '-'", name));
    if (by_name_.contains(name))
        throw std::invalid_argument(fmt::format("cannot register task type '{}': the name is taken", name));
    by_name_.emplace(name, type.get());
    if (const auto* packed = dynamic_cast<const PackedRun*>(type.get())) packed_.emplace_back(type.get(), packed);
    if (builtin) builtins_.push_back(type.get());
    types_.push_back(std::move(type));
}

bool Registry::builtin(const TaskType* type) const {
    return std::find(builtins_.begin(), builtins_.end(), type) != builtins_.end();
}

const TaskType* Registry::find(std::string_view name) const {
    const auto found = by_name_.find(name);
    return found == by_name_.end() ? nullptr : found->second;
}

const PackedRun* Registry::packed_run(const TaskType* type) const {
    for (const auto& [with, packed] : packed_)
        if (with == type) return packed;
    return nullptr;
}

const TaskType& Registry::at(std::string_view name) const {
    if (const TaskType* type = find(name)) return *type;
    throw std::invalid_argument(fmt::format("unknown task type \"{}\" (want {})", name, names_text()));
}

std::filesystem::path default_out_dir(const std::vector<const TaskType*>& types) {
    for (const TaskType* type : types) {
        const TaskTraits traits = type->traits();
        if (traits.writes_files && !traits.out_dir.empty()) return traits.out_dir;
    }
    return ".";
}

std::filesystem::path default_out_dir(const Registry& registry) {
    std::vector<const TaskType*> types;
    for (const auto& type : registry.types()) types.push_back(type.get());
    return default_out_dir(types);
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
            if (const RunHooks* hooks = run_hooks(*type)) hooks->thread_done();
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
    if (task.packed_params) {  // made packed (decision 316): run as JSON here, its value as JSON
        TaskSpec unpacked = task;
        unpacked.params = proto::params_of(task);
        unpacked.packed_params.reset();
        return run_task(unpacked, attempt, env);
    }
    std::string no_value;
    return run_task(task, attempt, env, {}, no_value);
}

TaskResult run_task(const TaskSpec& task, std::uint32_t attempt, const RunEnv& env, std::string_view packed_params,
                    std::string& packed_value, std::chrono::steady_clock::time_point started) {
    TaskResult result;
    result.id = task.id;
    result.attempt = attempt;
    result.type = task.type;
    result.worker = env.worker;
    if (started == std::chrono::steady_clock::time_point{}) started = std::chrono::steady_clock::now();
    detail::ContextSetup setup{.worker = env.worker,
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
    // A worker process runs one task at a time, so its own usage is the task's, helper
    // threads of the task included; a thread of the coordinator has only its own.
    if (env.isolated) PeakMemory::instance().before();
    const bool measure = !env.cost_per_slice;
    const rusage usage_before = measure ? usage_at_start(env.isolated, started) : rusage{};
    std::optional<Context::ChildUsage> children;
    try {
        if (!task.type) throw std::logic_error("task without a type");
        Gil::Hold hold(env.gil);  // released inside wherever the task says it waits
        setup.gil_hold = env.gil ? &hold : nullptr;
        Context context(setup);
        struct TakeChildUsage {  // also when run() throws
            const Context& context;
            std::optional<Context::ChildUsage>& out;
            ~TakeChildUsage() { out = context.child_usage(); }
        } take_child_usage{context, children};
        const RunningTask running(task.id);  // an exit() from the function is said (temp_dirs.hpp)
        const PackedRun* packed = packed_params.empty() ? nullptr
                                  : env.registry        ? env.registry->packed_run(task.type)
                                                        : dynamic_cast<const PackedRun*>(task.type);
        if (packed == nullptr || !packed->run_packed(packed_params, context, packed_value))
            result.value = packed_params.empty() ? task.type->run(task.params, context)
                                                 : task.type->run(proto::params_from_packed(packed_params), context);
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
    const rusage usage_after = measure ? usage_at_end(env.isolated) : rusage{};
    const auto ran = std::chrono::steady_clock::now() - started;
    result.run_time = ran;
    TaskCost& cost = result.cost;
    if (!env.isolated) cost.host = this_node();  // a worker's results take their host from its hello
    if (children) {
        cost.scope = TaskCost::Scope::Tree;
        cost.user_s = children->user_s;
        cost.sys_s = children->sys_s;
        cost.max_rss_kb = children->max_rss_kb;
    } else if (measure) {
        cost.scope = env.isolated ? TaskCost::Scope::Process : TaskCost::Scope::Thread;
        cost.user_s = std::max(0.0, seconds(usage_after.ru_utime) - seconds(usage_before.ru_utime));
        cost.sys_s = std::max(0.0, seconds(usage_after.ru_stime) - seconds(usage_before.ru_stime));
    }
    if (env.isolated && !children) cost.max_rss_kb = PeakMemory::instance().after(ran);
    return result;
}

}  // namespace taskfarm
