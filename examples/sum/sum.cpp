// Submits 1,000 tasks to worker processes and sums their values in code: the program of
// docs/api.md's first page. `sum [TASKS [WORKERS]]`; `sum worker ...` is its worker.
#include <cstdio>
#include <cstdlib>

#include <taskfarm/taskfarm.hpp>

int main(int argc, char** argv) {
    const long tasks = argc > 1 && !taskfarm::Farm::is_worker(argc, argv) ? std::atol(argv[1]) : 1000;
    const int workers = argc > 2 && !taskfarm::Farm::is_worker(argc, argv) ? std::atoi(argv[2]) : 4;
    taskfarm::Farm farm{{.mode = taskfarm::FarmMode::Processes, .workers = workers}};
    farm.task("square", [](const taskfarm::Params& p, taskfarm::Context&) {
        const long x = p.at("x").get<long>();
        return taskfarm::Value(x * x);
    });
    if (farm.is_worker(argc, argv)) return farm.run_worker(argc, argv);

    for (long x = 0; x < tasks; ++x) farm.submit("square", {{"x", x}});
    long sum = 0;
    for (const auto& result : farm.as_completed<long>()) sum += result.value();
    std::printf("%ld\n", sum);
}
