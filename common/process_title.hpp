#pragma once
// What ps shows for a process that was forked, not exec'd (a worker forked by the fork
// server, a command's guardian): its command line, /proc/PID/cmdline, is the memory that
// held the arguments it was exec'd with, and its name, /proc/PID/comm, the forking thread's.
// A title overwrites both, so that ps names the process as what it is.

#include <cstddef>
#include <string_view>

namespace taskfarm {

class ProcessTitle {
public:
    // Prepares `title` for the command line (cut to the space the arguments had) and `name`
    // (cut to 15 bytes; empty: the name stays): reads where the arguments lie, so call it
    // before fork() in a process with threads.
    ProcessTitle(std::string_view title, std::string_view name);
    // Writes the title, then " NUMBER" when `number` >= 0 (in the command line only), and the name.
    // Async-signal-safe: fine between fork() and exec or _exit.
    void apply(long number = -1) const noexcept;

private:
    char* args_ = nullptr;  // the arguments' block; null when it could not be found
    std::size_t size_ = 0;
    char text_[256] = {};  // the title, NUL-padded
    char name_[16] = {};
};

}  // namespace taskfarm
