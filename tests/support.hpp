#pragma once
// Helpers for tests that run the real binaries: temp dirs, running a command and
// collecting its exit code and output, reading JSON files, finding child processes.

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "builtin.hpp"
#include "coordinator.hpp"
#include "modes.hpp"
#include "plan_sources.hpp"
#include "task.hpp"

namespace taskfarm::testing {

// The stock coordinator: the built-in types, `worker` from the build.
const ProgramInfo& stock_program();
// A built-in task type by name ("sleep", "cpu", ...).
const TaskType* type(std::string_view name);
// make_plan() with the built-in types and the settings `config` gives.
Plan plan_for(const RunConfig& config);
// make_runner() with the built-in types and settings_json(config), which it keeps.
std::unique_ptr<Runner> runner_for(Mode mode, const RunConfig& config, std::stop_token stop);

// The non-empty lines of the file at `path`.
std::vector<std::string> lines_of(const std::filesystem::path& path);
class TempDir;
// dir/inputs.txt holding the numbers 0 .. count-1, one per line.
std::filesystem::path numbers(const TempDir& dir, int count);

// Keeps what reaches it, in arrival order: every result with its task (`recorded`), the
// results alone, and a log of its calls ("begin MODE", "result ID", "event WORKER") in
// `calls`, or in `*log` for a sink handed to another that owns it.
class CollectingSink final : public ResultSink {
public:
    struct Recorded {
        TaskSpec task;
        TaskResult result;
    };
    CollectingSink() = default;
    explicit CollectingSink(std::vector<std::string>* log) : log_(log) {}
    std::vector<Recorded> recorded;
    std::vector<TaskResult> results;
    std::vector<std::string> calls;

protected:
    void begin_mode_(const std::string& mode, std::size_t) override { log_->push_back("begin " + mode); }
    void sink_it_(const TaskSpec& task, const TaskResult& result) override {
        recorded.push_back({task, result});
        results.push_back(result);
        log_->push_back("result " + std::to_string(result.id));
    }
    void event_it_(const RunEvent& event) override { log_->push_back("event " + event.worker); }

private:
    std::vector<std::string>* log_ = &calls;
};
// A task of a built-in type.
TaskSpec task_of(std::string_view kind, Params params, TaskId id = 0, double timeout_s = 0);

// A fresh directory, removed with its contents at the end of the test.
class TempDir {
public:
    TempDir();
    ~TempDir();
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    const std::filesystem::path& path() const { return path_; }
    std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

private:
    std::filesystem::path path_;
};

std::filesystem::path bin(const std::string& name);  // build/bin/<name>

struct Output {
    int exit_code = -1;
    std::string out;
    std::string err;
};

// Runs build/bin/<program> (or `program` itself when it is an absolute path) with `args` to
// completion; stdout and stderr are captured.
Output run_binary(const std::string& program, const std::vector<std::string>& args);

// A running build/bin/<program> (or absolute `program`), killed and reaped at the end of the
// test if still there.
class Running {
public:
    // `program`: a name in build/bin, or a path (one with a '/').
    Running(const std::string& program, const std::vector<std::string>& args);
    ~Running();
    Running(const Running&) = delete;
    Running& operator=(const Running&) = delete;
    pid_t pid() const { return pid_; }
    void signal(int signo) const;
    // Waits for the exit (killing it after `limit`) and returns exit code and output.
    Output wait(std::chrono::seconds limit = std::chrono::seconds(60));
    std::string out() const;  // what it printed to stdout so far
    std::string err() const;

private:
    TempDir dir_;
    pid_t pid_ = -1;
};

std::string read_file(const std::filesystem::path& path);
nlohmann::json read_json(const std::filesystem::path& path);
std::vector<nlohmann::json> read_json_lines(const std::filesystem::path& path);
// A --results journal's result lines: its "event" lines (lost attempts and workers) left out.
std::vector<nlohmann::json> read_result_lines(const std::filesystem::path& path);

// Pids whose parent is `parent`, from /proc.
std::vector<pid_t> children_of(pid_t parent);
// The coordinator's worker processes: its children but its fork server (decision 101), which
// forks them as children of the coordinator.
std::vector<pid_t> workers_of(pid_t coordinator);
// Its fork server, or -1 when it has none (--worker-bin, or not started yet).
pid_t fork_server_of(pid_t coordinator);
bool process_exists(pid_t pid);  // alive and not a zombie
// Whether `pid` has exec'd build/bin/<program>: a child shows in /proc from its fork on,
// before it runs anything of its own.
bool runs_program(pid_t pid, const std::string& program);
// Polls `condition` every 10 ms until it holds or `limit` passes; returns its last value.
bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds limit);

}  // namespace taskfarm::testing
