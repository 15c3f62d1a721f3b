#include <taskfarm/app.hpp>

#include <stdio_ext.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <streambuf>
#include <stdexcept>
#include <utility>

#include <fmt/format.h>

#include "coordinator.hpp"
#include "function_type.hpp"
#include "protocol.hpp"
#include "task.hpp"
#include "worker.hpp"

namespace taskfarm {
namespace {

// A user's function as a task type: parameters as the plan gives them, the value as it returns.
// Its tasks of --task NAME --tasks N get the default params ({"index": i}),
// which it also makes as msgpack for the schedule of processes mode (decision 321): a user's
// no-op costs the coordinator no JSON a task, as the built-in one does not (decision 316).
class FunctionType final : public TaskType, public PackedGenerate {
public:
    FunctionType(std::string name, TaskFunction fn, TaskOptions options)
        : name_(std::move(name)), fn_(std::move(fn)), options_(std::move(options)) {}

    std::string name() const override { return name_; }
    std::string summary() const override { return options_.summary; }
    TaskTraits traits() const override {
        return {.settings_read = options_.settings_read,
                .writes_files = options_.writes_files,
                .out_dir = options_.out_dir};
    }
    std::vector<Flag> flags() const override { return options_.flags; }
    Value run(const Params& params, Context& context) const override {
        const detail::FlushOutput flush;
        return fn_(params, context);
    }
    void generate_packed(Generate& args, std::string& params) const override {
        params = proto::packed_object("index", args.index);
    }

private:
    std::string name_;
    TaskFunction fn_;
    TaskOptions options_;
};

}  // namespace

namespace {

// Whether a stream buffer holds output it has not handed on: its put area is not empty. A
// buffer with none (std::cout's while it is synced with C's stdio, as by default, which
// writes straight into stdout's FILE) holds nothing of its own.
struct PutArea : std::streambuf {
    static bool pending(std::streambuf* buffer) {
        constexpr auto base = &PutArea::pbase;  // a member of std::streambuf, reachable from here
        constexpr auto next = &PutArea::pptr;
        return buffer != nullptr && (buffer->*next)() != (buffer->*base)();
    }
};

// The buffers std::cout and std::cerr started with (<iostream>'s are made before this file's
// statics): one the program put in their place is flushed every time, as it may keep output
// where the put area does not show it.
std::streambuf* const kCoutBuffer = std::cout.rdbuf();
std::streambuf* const kCerrBuffer = std::cerr.rdbuf();

void flush_if_held(std::ostream& stream, const std::streambuf* original) {
    std::streambuf* buffer = stream.rdbuf();
    if (buffer != original || PutArea::pending(buffer)) stream.flush();
}

}  // namespace

// Flushes only what holds output (a flush of each stream per task was ~500 instructions of a
// no-op function's ~8,900 in a worker: decision 267); what is flushed, and when, is as before.
detail::FlushOutput::~FlushOutput() {
    flush_if_held(std::cout, kCoutBuffer);
    flush_if_held(std::cerr, kCerrBuffer);
    if (__fpending(stdout) > 0) std::fflush(stdout);
}

std::filesystem::path this_program() {
    std::error_code ec;
    std::filesystem::path path = std::filesystem::read_symlink("/proc/self/exe", ec);
    if (ec)
        throw std::runtime_error(fmt::format("cannot find this program's path in /proc/self/exe: {}", ec.message()));
    return path;
}

std::shared_ptr<const TaskType> make_function_type(const std::string& name, TaskFunction fn, TaskOptions options) {
    return std::make_shared<FunctionType>(name, std::move(fn), std::move(options));
}

App::App(std::string name, bool with_builtins) : name_(std::move(name)), registry_(std::make_unique<Registry>()) {
    if (with_builtins) add_builtin_types(*registry_);
    builtins_ = registry_->types().size();
}

App::~App() = default;

App& App::task(const std::string& name, TaskFunction fn, TaskOptions options) {
    if (!fn) throw std::invalid_argument(fmt::format("cannot register task type '{}': no function", name));
    return add(make_function_type(name, std::move(fn), std::move(options)));
}

App& App::add(std::shared_ptr<const TaskType> type) {
    const auto& types = registry_->types();
    for (std::size_t i = 0; type && i < builtins_; ++i)
        if (types[i]->name() == type->name())
            throw std::invalid_argument(
                fmt::format("cannot register task type '{}': a built-in type has that name "
                            "(App{{\"{}\", false}} leaves the built-ins out)",
                            type->name(), name_));
    registry_->add(std::move(type));
    return *this;
}

int App::run(int argc, char** argv) {
    if (argc > 1 && std::strcmp(argv[1], "worker") == 0) return run_worker(argc - 1, argv + 1);
    return run_coordinator(argc, argv);
}

int App::run_coordinator(int argc, const char* const* argv) {
    // --task defaults to the program's own first type: what it is for.
    const auto& types = registry_->types();
    const std::string default_task = types.size() > builtins_ ? types[builtins_]->name()
                                     : types.empty()          ? ""
                                                              : types.front()->name();
    return coordinator_main({name_, *registry_, {this_program(), {"worker"}}, default_task}, argc, argv);
}

int App::run_worker(int argc, const char* const* argv) {
    return worker_main(name_ + " worker", *registry_, argc, argv);
}

}  // namespace taskfarm
