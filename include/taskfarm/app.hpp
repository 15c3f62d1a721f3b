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
#include <string>
#include <vector>

#include "task_type.hpp"

namespace taskfarm {

class Registry;

// A function as a task type: `fn(params, context)` returns the task's value.
using TaskFunction = std::function<Value(const Params&, Context&)>;

struct TaskOptions {
    std::string summary;                     // one line for --help
    bool writes_files = false;               // see TaskType::writes_files()
    std::vector<std::string> settings_read{};  // see TaskType::settings_read(), e.g. {"max_bytes"}
    std::vector<Flag> flags{};               // its own command-line flags: see TaskType::flags() and Flag
};

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
