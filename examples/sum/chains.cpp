// Results fed back as new tasks: each task is one step of a Collatz sequence, and each result
// that is not 1 is submitted as the next step, while the other sequences run. Prints each
// start's number of steps. `chains [LAST]`; `chains worker ...` is its worker.
#include <cstdio>
#include <cstdlib>
#include <map>

#include <taskfarm/taskfarm.hpp>

int main(int argc, char** argv) {
    taskfarm::Farm farm{{.workers = 2}};
    farm.task("step", [](const taskfarm::Params& p, taskfarm::Context&) {
        const long n = p.at("n").get<long>();
        return taskfarm::Value(n % 2 == 0 ? n / 2 : 3 * n + 1);
    });
    if (farm.is_worker(argc, argv)) return farm.run_worker(argc, argv);

    const long last = argc > 1 ? std::atol(argv[1]) : 30;
    std::map<taskfarm::TaskId, long> start_of;  // a task's id -> the start of its sequence
    std::map<long, int> steps;
    for (long n = 2; n <= last; ++n) start_of[farm.submit("step", {{"n", n}}).id] = n;
    for (const auto& result : farm.as_completed<long>()) {
        const long start = start_of.at(result.id());
        start_of.erase(result.id());
        ++steps[start];
        if (result.value() != 1) start_of[farm.submit("step", {{"n", result.value()}}).id] = start;
    }
    for (const auto& [start, count] : steps) std::printf("%ld %d\n", start, count);
}
