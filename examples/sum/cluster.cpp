// The sum of examples/sum/sum.cpp on workers of other machines, this same program started
// there (docs/api.md, "Remote workers", "A Slurm step", "An mpirun job", "Slurm allocations"),
// with progress on stderr:
//
//   cluster TASKS listen ENDPOINT KEYS N   workers started by hand connect to ENDPOINT
//                                          (tcp://*:5555) with the keys of KEYS (`coordinator
//                                          keygen KEYS`); waits for N of them
//   cluster TASKS slurm [N]                a Slurm step of N workers (in an sbatch job, N
//                                          defaults to $SLURM_NTASKS)
//   cluster TASKS mpirun N [ARGS]          one `mpirun -n N ARGS` of workers
//   cluster TASKS alloc MINUTES N          Slurm allocations of N workers each, submitted
//                                          while tasks wait, at most 2 at once
//   cluster worker --connect ENDPOINT --keys KEYS    a worker, on any machine
#include <cstdio>
#include <cstdlib>
#include <string>

#include <taskfarm/taskfarm.hpp>

int main(int argc, char** argv) {
    taskfarm::FarmOptions options{.workers = 0, .progress = taskfarm::FarmProgress::Auto};
    const bool worker = taskfarm::Farm::is_worker(argc, argv);
    const std::string how = argc > 2 && !worker ? argv[2] : "";
    if (how == "listen" && argc == 6) {
        options.listen = argv[3];
        options.keys = argv[4];
        options.expect_workers = std::atoi(argv[5]);
    } else if (how == "slurm" && argc <= 4) {
        options.slurm = taskfarm::SlurmStep{.tasks = argc == 4 ? std::atoi(argv[3]) : 0};
    } else if (how == "mpirun" && (argc == 4 || argc == 5)) {
        options.mpirun = taskfarm::MpirunStep{.tasks = std::atoi(argv[3]), .args = argc == 5 ? argv[4] : ""};
    } else if (how == "alloc" && argc == 5) {
        options.alloc = taskfarm::SlurmAllocations{.time = argv[3], .workers = std::atoi(argv[4]), .max_allocs = 2};
    } else if (!worker) {
        std::fprintf(stderr,
                     "usage: cluster TASKS listen ENDPOINT KEYS N | cluster TASKS slurm [N] | cluster TASKS mpirun N "
                     "[ARGS] | cluster TASKS alloc MINUTES N\n");
        return 2;
    }
    taskfarm::Farm farm{options};
    farm.task("square", [](const taskfarm::Params& p, taskfarm::Context&) {
        const long x = p.at("x").get<long>();
        return taskfarm::Value(x * x);
    });
    if (worker) return farm.run_worker(argc, argv);

    const long tasks = std::atol(argv[1]);
    for (long x = 0; x < tasks; ++x) farm.submit("square", {{"x", x}});
    if (how == "listen")  // the port, when ENDPOINT's is *
        std::fprintf(stderr, "start workers: %s worker --connect %s --keys %s\n", argv[0], farm.endpoint().c_str(),
                     argv[4]);
    long sum = 0;
    for (const auto& result : farm.as_completed<long>()) sum += result.value();
    std::printf("%ld\n", sum);
}
