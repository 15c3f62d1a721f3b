#pragma once
// A program of the user's own that farms out its own functions: register them by name,
// then App::run() is the whole coordinator (every flag, mode, the journal, resume, progress,
// pictures, pinning, remote workers), and `PROGRAM worker --connect ...` is its worker. The
// program spawns itself as its local workers. See docs/api.md.
//
//   int main(int argc, char** argv) {
//       taskfarm::App app{"wordcount"};
//       app.task("count", [](const taskfarm::Params& p, taskfarm::Context&) {   // --inputs FILE:
//           return taskfarm::Value{{"words", count_words(p.at("input").get<std::string>())}};  // a line each
//       });
//       return app.run(argc, argv);
//   }

#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "task_type.hpp"

namespace taskfarm {

class Registry;

// A function as a task type: `fn(params, context)` returns the task's value.
using TaskFunction = std::function<Value(const Params&, Context&)>;

namespace detail {
// Flushes std::cout, std::cerr and C's stdout after a function's task, returned or thrown,
// in every mode: what it wrote is out before its result is (docs/api.md, "Output").
struct FlushOutput {
    FlushOutput() = default;
    FlushOutput(const FlushOutput&) = delete;
    FlushOutput& operator=(const FlushOutput&) = delete;
    ~FlushOutput();
};
}  // namespace detail

struct TaskOptions {
    std::string summary;                       // one line for --help
    bool writes_files = false;                 // see TaskTraits::writes_files
    std::string out_dir{};                     // see TaskTraits::out_dir: --out-dir when not given
    std::vector<std::string> settings_read{};  // see TaskTraits::settings_read, e.g. {"max_bytes"}
    std::vector<Flag> flags{};                 // its own command-line flags: see TaskType::flags() and Flag
};

// Typed parameters: a struct with nlohmann's from_json/to_json (NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE
// does both) is read from a plan line (or a submit()) once, when the line is read: a missing
// field, a field of the wrong type and a field the struct does not have fail there, naming
// the field (the plan reader adds FILE:LINE), before any task runs.
//
//   struct Square { long x = 0; };
//   NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE(Square, x)
//   app.task<Square>("square", [](const Square& p, taskfarm::Context&) { return p.x * p.x; });
template <class P, class Fn>
class TypedFunctionType final : public TaskType {
public:
    TypedFunctionType(std::string name, Fn fn, TaskOptions options)
        : name_(std::move(name)), fn_(std::move(fn)), options_(std::move(options)) {}
    std::string name() const override { return name_; }
    std::string summary() const override { return options_.summary; }
    TaskTraits traits() const override {
        return {.settings_read = options_.settings_read,
                .writes_files = options_.writes_files,
                .out_dir = options_.out_dir};
    }
    std::vector<Flag> flags() const override { return options_.flags; }
    Params parse(const Params& fields) const override {
        if (!fields.is_object()) throw std::invalid_argument("parameters must be a JSON object");
        const Params normal = Params(read(fields));
        for (const auto& [key, value] : fields.items())
            if (!normal.contains(key)) throw std::invalid_argument("unknown field \"" + key + "\"");
        return normal;
    }
    Value run(const Params& params, Context& context) const override {
        const detail::FlushOutput flush;
        return Value(fn_(read(params), context));
    }

private:
    // `params` as a P; throws std::invalid_argument with nlohmann's reason, naming the field
    // when it is a missing one, or the first field whose value does not convert.
    static P read(const Params& params) {
        try {
            return params.template get<P>();
        } catch (const nlohmann::json::exception& e) {
            std::string why = e.what();
            if (const auto end = why.find("] "); why.starts_with("[json.exception.") && end != std::string::npos)
                why = why.substr(end + 2);
            // Which field: the first whose value, replaced by the struct's default, makes it read.
            P fallback{};
            const Params defaults = Params(fallback);
            for (const auto& [key, value] : params.items()) {
                if (!defaults.contains(key)) continue;
                Params fixed = params;
                fixed[key] = defaults[key];
                try {
                    static_cast<void>(fixed.template get<P>());
                    throw std::invalid_argument("field \"" + key + "\": " + why);
                } catch (const nlohmann::json::exception&) {
                }
            }
            throw std::invalid_argument(why);
        }
    }
    std::string name_;
    Fn fn_;
    TaskOptions options_;
};

// The built-in download type (docs/downloads.md): a task {"url": "http(s)://..."} fetches the
// URL into Context::out_dir() and its value says {"http_status", "bytes", "sha256", "path",
// ...}; its limits come from the settings (max_bytes, retries, min_speed, stall_s). Every
// Farm and every App{"NAME"} has it already; App{"NAME", false}.add(download_type()) takes
// it alone.
std::shared_ptr<const TaskType> download_type();

class App {
public:
    // `name` appears in --help, --version and logs. The built-in types (sleep, cpu,
    // download, fail, crash) are registered too unless `with_builtins` is false.
    explicit App(std::string name, bool with_builtins = true);
    ~App();
    App(const App&) = delete;
    App& operator=(const App&) = delete;

    // Registers `fn` as task type `name`. Throws std::invalid_argument for a name that is
    // taken or not made of letters, digits, '_' and '-'.
    App& task(const std::string& name, TaskFunction fn, TaskOptions options = {});
    // Registers `fn(const P&, Context&)`, whose result converts to JSON, with typed
    // parameters P (see TypedFunctionType); throws as task() does.
    template <class P, class Fn>
    App& task(const std::string& name, Fn fn, TaskOptions options = {}) {
        return add(std::make_shared<TypedFunctionType<P, Fn>>(name, std::move(fn), std::move(options)));
    }
    // Registers a type of the user's own making (see TaskType); throws as task() does.
    App& add(std::shared_ptr<const TaskType> type);

    // `PROGRAM worker ...` runs a worker; anything else runs the coordinator, whose --task
    // defaults to the first type the program registered itself. Returns the exit code for main().
    int run(int argc, char** argv);
    int run_coordinator(int argc, const char* const* argv);
    int run_worker(int argc, const char* const* argv);

    const Registry& registry() const { return *registry_; }

private:
    std::string name_;
    std::unique_ptr<Registry> registry_;
    std::size_t builtins_ = 0;  // the first types of registry_ are the built-ins
};

}  // namespace taskfarm
