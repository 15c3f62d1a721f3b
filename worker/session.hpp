#pragma once
// The worker's session with its coordinator: connect, handshake, take the run's setup, hand
// tasks to the executor and results back, heartbeat both ways, until a shutdown.

#include <filesystem>
#include <optional>
#include <string>

#include "curve.hpp"
#include "task.hpp"

namespace taskfarm {

// The worker's options (options.cpp reads them from its command line).
struct WorkerConfig {
    std::string connect;
    std::string name;
    long parent_pid = 0;
    double heartbeat_interval_s = 0.2;
    double heartbeat_timeout_s = 2.0;
    double connect_timeout_s = 60.0;  // until the coordinator's first frame
    std::string log_level;            // empty: SPDLOG_LEVEL or info
    std::filesystem::path keys_dir;   // CURVE keys; empty: plaintext
    std::optional<curve::ClientKeys> keys;
    const Registry* registry = nullptr;
    bool insecure = false;
    int pin = -1;  // the one CPU to run on; -1: any
    // Where tasks save files (Context::out_dir()): the worker's own, never the coordinator's
    // say, so a coordinator cannot make it write elsewhere.
    // Empty until worker_main decides: --out-dir, else default_out_dir() of its registry.
    std::filesystem::path out_dir{};
    std::filesystem::path scratch_dir;  // where tasks' scratch directories go; empty: TMPDIR
    std::filesystem::path state_dir;    // where its RunningBoard goes (a coordinator's own workers); empty: none
};

// Connects a DEALER to config.connect and serves the coordinator until it says SHUTDOWN (0),
// falls silent or refuses this worker (1). Returns the exit code.
int run_session(const WorkerConfig& config);

}  // namespace taskfarm
