// A user's program that submits no-op tasks from its own main() through taskfarm::Farm, built
// against the shared library as a user's would be: `noop_farm TASKS WORKERS` prints
// {"tasks": N, "ok": N, "wall_s": S} on stdout, S from the first submit to the last result
// taken (the workers' start included, as in a coordinator run's wall time). scripts/bench
// runs it against the built-in no-op.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <taskfarm/taskfarm.hpp>

namespace {

// 0, 1, ... TASKS-1 without holding them.
struct Count {
    long n;
    struct It {
        long i;
        long operator*() const { return i; }
        It& operator++() {
            ++i;
            return *this;
        }
        bool operator!=(const It& other) const { return i != other.i; }
    };
    It begin() const { return {0}; }
    It end() const { return {n}; }
};

}  // namespace

int main(int argc, char** argv) {
    const long tasks = argc > 1 && std::strcmp(argv[1], "worker") != 0 ? std::atol(argv[1]) : 0;
    const int workers = argc > 2 ? std::atoi(argv[2]) : 2;
    taskfarm::Farm farm{{.mode = taskfarm::FarmMode::Processes, .workers = workers}};
    farm.task("noop", [](const taskfarm::Params&, taskfarm::Context&) { return taskfarm::Value(); });
    if (farm.is_worker(argc, argv)) return farm.run_worker(argc, argv);
    const auto started = std::chrono::steady_clock::now();
    long ok = 0;
    farm.map(
        "noop", Count{tasks}, [](long) { return taskfarm::Params::object(); },
        [&](const taskfarm::Result<>& result) { ok += result.ok() ? 1 : 0; });
    const double wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::printf("{\"tasks\": %ld, \"ok\": %ld, \"wall_s\": %.6f}\n", tasks, ok, wall_s);
    return ok == tasks ? 0 : 1;
}
