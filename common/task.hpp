#pragma once
// What a task is (TaskSpec), what running it produced (TaskResult), and the one
// function every execution mode calls to run it (run_task).

#include <chrono>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>

#include <msgpack.hpp>
#include <nlohmann/json.hpp>

#include "msgpack_map.hpp"

namespace taskfarm {

class Gil;

using TaskId = std::uint64_t;
inline constexpr TaskId kNoId = ~TaskId{0};

// Fail and Crash are fault injection for tests and demos (plan files only): Fail returns an
// error, Crash aborts its worker process.
enum class TaskKind { Sleep, Cpu, Download, Fail, Crash };

std::string_view to_string(TaskKind kind);
std::optional<TaskKind> parse_task_kind(std::string_view name);

// Parameters of every kind in one flat struct: a kind reads only its own fields, and
// msgpack's map encoding lets old and new peers ignore fields they do not know.
struct TaskParams {
    double seconds = 0;     // sleep: how long
    std::uint64_t lo = 0;   // cpu: count the primes in [lo, hi)
    std::uint64_t hi = 0;   //      lo <= hi <= kMaxPrimeLimit
    std::string url{};      // download: an http:// or https:// URL (see url_problem() in download.hpp)
    std::string out_dir{};  //           the directory to save into (the coordinator's --out-dir/<mode>)
    std::uint64_t max_bytes = 0;  //     a larger body fails the task; 0: no limit
    std::uint32_t retries = 0;    //     further tries after a transient failure
    TASKFARM_MSGPACK_MAP(seconds, lo, hi, url, out_dir, max_bytes, retries)
};

// Largest cpu `hi`: the executor sieves with the primes up to sqrt(hi), a 1 MB table here.
inline constexpr std::uint64_t kMaxPrimeLimit = 1'000'000'000'000;

struct TaskSpec {
    TaskId id = kNoId;
    TaskKind kind = TaskKind::Sleep;
    TaskParams params;
    double timeout_s = 0;  // --task-timeout: fail the task when it runs longer; 0: no limit
};

// The parameters of `task` that matter for its kind, e.g. {"seconds":0.37} or {"lo":0,"hi":1000000}.
nlohmann::json params_json(const TaskSpec& task);

struct TaskResult {
    TaskId id = kNoId;
    std::uint32_t attempt = 1;  // 1 for the first try
    TaskKind kind = TaskKind::Sleep;
    bool ok = false;
    std::string error;   // one line, empty when ok
    std::string worker;  // who ran it: "seq", "t3", "w2"
    std::chrono::duration<double> run_time{0};  // measured where the task ran
    double start_s = 0;  // seconds since the start of the mode, set by the runner
    double end_s = 0;
    double slept_s = 0;  // sleep: seconds actually slept
    std::uint64_t primes = 0;  // cpu: primes in [lo, hi)
    // download: what was saved. http_status is also set when a task failed on an HTTP status.
    int http_status = 0;
    std::uint64_t bytes = 0;  // body bytes saved
    std::string sha256;       // of the body, 64 lowercase hex digits
    std::string final_url;    // after redirects
    std::string saved_path;   // the file it is in now
    std::uint32_t tries = 0;  // requests made, retries included
};

// The kind-specific answer of a result, e.g. {"slept_s":0.37} or {"primes":78498}; null when it failed.
nlohmann::json value_json(const TaskResult& result);

// The value in words for the console, e.g. "slept 0.370 s".
std::string describe_value(const TaskResult& result);

// Everything an executor may use besides the task itself. One per thread or worker.
struct ExecContext {
    std::string worker;    // goes into TaskResult::worker
    std::stop_token stop;  // a requested stop cancels the running task
    // gil-threads mode: the lock all threads share. Executors hold it while they compute
    // and never while they block (sleep, network), as CPython threads do. Null: no lock.
    Gil* gil = nullptr;
    // A worker process of its own (processes mode): a crash task may abort it. In the
    // coordinator's own threads a crash task fails instead.
    bool isolated = false;
    // When the task must be done by (run_task sets it from TaskSpec::timeout_s). An executor
    // that passes it fails with timed_out(); max(): no limit.
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();

    bool expired() const { return std::chrono::steady_clock::now() >= deadline; }
};

// The error of a task that ran past its timeout, e.g. "timed out after 2.5 s".
std::string timed_out(const TaskSpec& task);

// Runs one task to completion, failure or cancellation. Never throws: every error
// becomes TaskResult{ok = false, error}. The same function runs in every mode.
TaskResult run_task(const TaskSpec& task, const ExecContext& context);

}  // namespace taskfarm
