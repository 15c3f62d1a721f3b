#pragma once
// `coordinator serve` (coordinator/serve.cpp): see service.hpp and docs/service.md.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "coordinator.hpp"
#include "curve.hpp"
#include "resources.hpp"
#include "step.hpp"

namespace taskfarm {

struct ServeConfig {
    std::filesystem::path socket;  // the socket; its directory is made 0700
    std::filesystem::path state;   // jobs/ and the lock; default: the socket's directory
    int workers = 4;
    std::optional<std::uint32_t> retries{};  // --retries: a failed task runs up to this many more times
    double drain_timeout_s = 25;             // SIGTERM: how long running tasks may take to finish
    double submit_timeout_s = 10;            // a job being submitted whose client is silent this long is dropped
    std::string log_level;
    // What the workers have, together (--worker-resources, --gpus): a task's "resources" are
    // taken from it while it runs (docs/resources.md).
    std::shared_ptr<const LocalResources> resources = std::make_shared<const LocalResources>();
    // --listen-clients tcp://ADDR:PORT with --keys DIR: clients over tcp, CURVE, each holding a
    // client key authorised (client.public of DIR, --authorized-clients), never a worker's. Empty: none.
    std::string listen_clients;
    // --ui [ADDR:]PORT: the live view of the server's workers and their tasks. Empty: none.
    std::string ui;
    std::optional<curve::ServerKeys> client_keys;
    // Remote workers besides the `workers` local ones (decision 247), as a one-shot run's:
    // --listen tcp://ADDR:PORT for workers started by hand (`worker --connect`), admitted by
    // worker_keys (coordinator.secret and worker.public of --keys, --authorized); or --launch
    // slurm|mpirun: one job step of step->tasks workers (workers is then 0), with keys made
    // for the server, which they have wait_workers_s to attach with. Empty/none: local only.
    std::string listen;
    std::optional<curve::ServerKeys> worker_keys;
    std::optional<StepConfig> step;
    double wait_workers_s = 60;
};

// Runs the server until SIGINT/SIGTERM/SIGHUP; its exit code. Throws ConfigError for a bad
// socket or state directory, or one another server holds.
int serve(const ProgramInfo& program, const ServeConfig& config);

}  // namespace taskfarm
