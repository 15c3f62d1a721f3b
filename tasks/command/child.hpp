#pragma once
// Runs one program as the command type's child: in a process group of its own, its stdout
// and stderr read through pipes, and the whole group ended with the task (on a timeout, a
// stop, or the death of the process that started it). Linux only (pidfd, PR_SET_PDEATHSIG).

#include <chrono>
#include <cstdint>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

namespace taskfarm::command {

struct ChildSpec {
    std::vector<std::string> argv;  // argv[0] is looked up in the PATH of `env` when it has no '/'
    std::vector<std::string> env;   // the whole environment, "KEY=VALUE" each
    std::string cwd;                // empty: the caller's working directory
    std::string stdin_path;         // the file its standard input reads; empty: /dev/null
    // exec'd instead when argv cannot be (not found, not executable): /bin/sh -c COMMAND for
    // a shell command run without its shell, so that the shell says why, as it would have.
    std::vector<std::string> fallback;
};

struct Watch {
    std::stop_token stop;
    std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
    std::chrono::steady_clock::duration grace = std::chrono::seconds(2);  // SIGTERM to SIGKILL
    std::size_t max_output = 256 * 1024;                                  // bytes of each stream kept
    // Not empty: a stream longer than max_output goes whole into a file of its own made in
    // this directory (Captured::file), so that nothing of it is lost.
    std::string spill_dir{};
};

struct Captured {
    std::string head;         // the first Watch::max_output bytes, as they came
    std::string tail;         // the last kTailBytes of them (the last line, for a failure's reason)
    std::uint64_t bytes = 0;  // all of them
    // With Watch::spill_dir, once the stream outgrew head: the file holding all of its bytes
    // (the caller's to remove), or empty with `spill_error` saying why it could not be written.
    std::string file;
    std::string spill_error;
    int spill_fd = -1;  // open while the stream is read
};
inline constexpr std::size_t kTailBytes = 4096;

struct Outcome {
    enum class End { Exited, TimedOut, Stopped };
    End end = End::Exited;
    std::optional<int> exit_code;  // set when the program exited
    int signal = 0;                // what killed it, when it did not exit
    Captured out;
    Captured err;
    // What the program and the descendants it waited for cost, from wait4(): CPU seconds and
    // the peak resident memory of the largest of them. What it left running in its group and
    // that was killed at the end is not in it (nobody waited for those).
    double user_s = 0;
    double sys_s = 0;
    std::int64_t max_rss_kb = -1;
};

// Starts spec.argv[0] and waits for it, holding no lock, reading both pipes as they fill.
// Its standard input is /dev/null, or ChildSpec::stdin_path. When it ends, whatever it left in its process group is
// killed; on a timeout or a stop the group gets SIGTERM, then SIGKILL after Watch::grace.
// The calling process's guardian (one per process, started with its first command, shown
// as "worker-guard PID" in ps) does the same for every group it runs if the process dies
// first. For a process that outlives both (the coordinator of a worker) to end it, the group
// is in the file of command_groups::table_file() from before the program runs, when the
// process has one (a worker its coordinator started), else in command_groups::live() once
// the command has run 1 ms. The program is started without a
// copy of this process (clone with CLONE_VM | CLONE_VFORK) and with no other process. Throws
// std::runtime_error ("cannot run 'prog': No such file or directory") when it cannot start.
Outcome run_child(const ChildSpec& spec, const Watch& watch);

// "SIGSEGV" for SIGSEGV; "signal 77" for one without a name.
std::string signal_name(int signal);

}  // namespace taskfarm::command
