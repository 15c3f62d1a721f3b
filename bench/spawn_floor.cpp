// spawn_floor: the least any tool can pay to run a program COUNT times, INFLIGHT at once: a bare
// loop of posix_spawn (glibc's: clone(CLONE_VM | CLONE_VFORK), then exec) and waitpid, nothing
// read, nothing written, no pipes, no process groups. scripts/bench times it from start to exit
// and takes the CPU of its tree from wait4, as it does for taskfarm, xargs and GNU parallel.
//
//   spawn_floor COUNT INFLIGHT PROGRAM [posix_spawn|vfork]      e.g. spawn_floor 10000 2 /bin/true
//
// Each run gets one argument, its number, as `xargs -n 1` gives it a line of its input.
// vfork: vfork() and execve() with nothing between them, without the signal dispositions that
// glibc's posix_spawn sets back in its child (122 rt_sigaction calls a spawn on glibc 2.36).

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

extern char** environ;

// The child only execs or exits: it returns from neither this function nor vfork's caller.
__attribute__((noinline)) pid_t vfork_exec(const char* program, char* const* argv) {
    const pid_t pid = ::vfork();
    if (pid == 0) {
        ::execve(program, argv, environ);
        ::_exit(127);
    }
    return pid;
}

int main(int argc, char** argv) {
    const std::string how = argc == 5 ? argv[4] : "posix_spawn";
    if ((argc != 4 && argc != 5) || (how != "posix_spawn" && how != "vfork")) {
        std::fprintf(stderr, "usage: spawn_floor COUNT INFLIGHT PROGRAM [posix_spawn|vfork]\n");
        return 2;
    }
    const long count = std::strtol(argv[1], nullptr, 10);
    const long inflight = std::strtol(argv[2], nullptr, 10);
    if (count < 1 || inflight < 1) {
        std::fprintf(stderr, "spawn_floor: COUNT and INFLIGHT must be at least 1\n");
        return 2;
    }
    const char* program = argv[3];
    long started = 0;
    long running = 0;
    int failed = 0;
    while (started < count || running > 0) {
        while (started < count && running < inflight) {
            std::string number = std::to_string(started);
            char* child_argv[] = {const_cast<char*>(program), number.data(), nullptr};
            pid_t pid = 0;
            int error = 0;
            if (how == "vfork") {
                pid = vfork_exec(program, child_argv);
                if (pid < 0) error = errno;
            } else {
                error = ::posix_spawn(&pid, program, nullptr, nullptr, child_argv, environ);
            }
            if (error != 0) {
                std::fprintf(stderr, "spawn_floor: cannot run '%s': %s\n", program, std::strerror(error));
                return 1;
            }
            ++started;
            ++running;
        }
        int status = 0;
        if (::waitpid(-1, &status, 0) < 0) {
            if (errno == EINTR) continue;
            std::perror("spawn_floor: waitpid");
            return 1;
        }
        --running;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
    }
    return failed == 0 ? 0 : 1;
}
