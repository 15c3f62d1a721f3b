#pragma once
// The temporary directories (and files) of a process, so that none outlives its run
// (docs/reliability.md, decision 121). Each is named taskfarm-WHAT-PID-XXXXXX, PID the
// process that made it, and is:
// - removed by its owner as before (a destructor), which then forgets it;
// - removed at exit() by this process, whatever called exit() (a task's function too);
// - removed by remove_temp_dirs() before a quick exit (a second Ctrl-C's _Exit);
// - and, when its process was killed (SIGKILL), removed by the next coordinator of the same
//   user that starts: sweep_stale_temp_dirs() takes those whose PID is gone.
// A process forked from one that made some never removes its parent's.

#include <cstdint>
#include <filesystem>
#include <string_view>

namespace taskfarm {

// Makes base/taskfarm-WHAT-PID-XXXXXX, mode 0700. Throws std::system_error.
std::filesystem::path make_temp_dir(const std::filesystem::path& base, std::string_view what);
// A file base/taskfarm-WHAT-PID-XXXXXX, mode 0600, open on the returned descriptor (-1
// with errno set on failure), its path in `path`.
int make_temp_file(const std::filesystem::path& base, std::string_view what, std::filesystem::path& path);
// Registers a directory made otherwise, named as above.
void keep_track_of(const std::filesystem::path& path);
// Its owner removed it (or is about to): no longer ours to remove.
void forget_temp_dir(const std::filesystem::path& path);
// Removes this process's registered ones now.
void remove_temp_dirs();
// Removes taskfarm-WHAT-PID-XXXXXX entries of this user in $TMPDIR and /tmp whose process
// is gone; returns how many.
std::size_t sweep_stale_temp_dirs();

// While one lives on a thread, that thread runs task `id`'s function: an exit() from there
// is said on stderr ("task N called exit(): ...") before the process ends.
class RunningTask {
public:
    explicit RunningTask(std::uint64_t id);
    ~RunningTask();
    RunningTask(const RunningTask&) = delete;
    RunningTask& operator=(const RunningTask&) = delete;

private:
    std::uint64_t previous_;
};

}  // namespace taskfarm
