#include "child.hpp"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <mutex>
#include <stdexcept>
#include <string>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

#include "child_signals.hpp"
#include "command_groups.hpp"
#include "unique_fd.hpp"
#include "process_title.hpp"
#include "this_pid.hpp"

namespace taskfarm::command {
namespace {

using Clock = std::chrono::steady_clock;

// Checks the stop token this often while nothing else wakes the wait.
constexpr auto kStopCheck = std::chrono::milliseconds(50);
// A command still running this long after its start has its group reported (command_groups:
// the worker sends it to its coordinator at once); one that ended before costs no report,
// no wake-up of the worker's loop and no message.
constexpr auto kReportAfter = std::chrono::milliseconds(1);

using Fd = UniqueFd;

// Close-on-exec, so that no other child (another thread's command, a worker) keeps an end
// open past its exec and hides an end of file from us.
std::pair<Fd, Fd> make_pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "cannot create a pipe");
    return {Fd(fds[0]), Fd(fds[1])};
}

void nap(long long ns) {
    timespec left{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    while (::nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

// The signals whose disposition is not SIG_DFL (ignored, or a handler), which the child sets
// back to default before it unblocks its signals (decision 285), and always the ones a
// command's life depends on (SIGPIPE, the stop signals, SIGCHLD: an ignored one would survive
// the exec). Read with sigaction queries at a process's first command and again at every
// kRereadEvery-th, so that another disposition a program changes while it runs is seen within
// that many commands; read afresh in a process forked from the one that read it. A worker and
// the coordinator change none after their start.
class SignalsToReset {
public:
    static constexpr std::uint32_t kRereadEvery = 256;

    sigset_t get() {
        std::lock_guard lock(mutex_);
        if (owner_ != this_pid() || uses_++ % kRereadEvery == 0) read();
        return set_;
    }

private:
    void read() {
        owner_ = this_pid();
        ::sigemptyset(&set_);
        for (int signal = 1; signal < NSIG; ++signal) {
            struct sigaction current {};
            // glibc refuses its own two (SIGCANCEL, SIGSETXID), as the resets it replaces did.
            if (signal == SIGKILL || signal == SIGSTOP || ::sigaction(signal, nullptr, &current) != 0) continue;
            if (current.sa_handler != SIG_DFL) ::sigaddset(&set_, signal);
        }
        for (const int signal : kStopSignals) ::sigaddset(&set_, signal);
        for (const int signal : {SIGPIPE, SIGCHLD}) ::sigaddset(&set_, signal);
    }

    std::mutex mutex_;
    pid_t owner_ = 0;
    std::uint32_t uses_ = 0;
    sigset_t set_{};
};

SignalsToReset& signals_to_reset() {
    static SignalsToReset* const signals = new SignalsToReset;  // never destroyed: commands may end during exit
    return *signals;
}

// Where a program's name was found in a PATH, per (PATH, name), as a shell's hash table keeps
// it (decision 286): the next command of that name execs the path at once, without a lookup
// per directory. A cached path that fails to exec is forgotten and the PATH searched afresh;
// a PATH with a relative directory (".", an empty entry) is searched every time, since the
// working directory may differ. A program put earlier in the PATH after the first lookup is
// not seen by this process while the cached one still runs, as in bash before `hash -r`.
class PathCache {
public:
    static constexpr std::size_t kMostEntries = 1024;

    static bool cacheable(std::string_view path) {
        for (std::size_t at = 0;;) {
            const std::size_t end = std::min(path.find(':', at), path.size());
            if (end == at || path[at] != '/') return false;
            if (end == path.size()) return true;
            at = end + 1;
        }
    }

    std::string find(const std::string& key) {
        std::lock_guard lock(mutex_);
        const auto found = found_.find(key);
        return found == found_.end() ? std::string() : found->second;
    }

    void keep(std::string key, std::string file) {
        std::lock_guard lock(mutex_);
        if (found_.size() >= kMostEntries) found_.clear();
        found_.insert_or_assign(std::move(key), std::move(file));
    }

    void forget(const std::string& key) {
        std::lock_guard lock(mutex_);
        found_.erase(key);
    }

private:
    std::mutex mutex_;
    std::unordered_map<std::string, std::string> found_;
};

PathCache& path_cache() {
    static PathCache* const cache = new PathCache;  // never destroyed, as the guard
    return *cache;
}

// The groups of the commands this process runs (command_groups::Table), in memory shared
// with its guardian (MAP_SHARED, made before the guardian is forked), and for a worker with
// its coordinator (a file of command_groups::use_table_dir()): the command writes its own
// group id into its slot before it execs, and the caller clears the slot once the group is
// killed, so the guardian and the coordinator know every live group without a message.
constexpr std::uint32_t kSlots = command_groups::kTableSlots;  // pages are touched as used
using GuardTable = command_groups::Table;

// The guardian outlives its caller to end the commands' groups if the caller dies (SIGKILL,
// a crash): PR_SET_PDEATHSIG reaches only each command's own process, not what it started.
// It waits for an end of file on a pipe whose only writer is the caller, then sends every
// group in the table SIGTERM, and SIGKILL after the grace. One per process that runs
// commands, started with its first command; it exits with its caller.
[[noreturn]] void guardian(int from_caller, const GuardTable* table, const ProcessTitle& title, pid_t caller) {
    title.apply(caller);  // "worker-guard 1234" in ps: the guardian of worker 1234's commands
    sigset_t all;
    ::sigfillset(&all);
    ::sigprocmask(SIG_SETMASK, &all, nullptr);  // Ctrl-C and the caller's signals are not for it
    // Out of the caller's group too: a coordinator kills a dead worker's whole group (decision 57).
    ::setpgid(0, 0);
    ::dup2(from_caller, 0);
    // The caller's sockets and pipes: holding them would hide its death from its peers.
    ::syscall(SYS_close_range, 3U, ~0U, 0U);
    char byte = 0;
    while (::read(0, &byte, 1) != 0) {  // the caller never writes: this returns at its death
        if (errno != EINTR) break;
    }
    pid_t groups[256];
    std::uint32_t count = 0;
    const std::uint32_t used = std::min(table->used.load(), kSlots);
    for (std::uint32_t at = 0; at < used; ++at) {
        const pid_t group = table->slots[at].load();
        if (group <= 1) continue;
        command_groups::kill_group(group, SIGTERM);
        if (count < std::size(groups)) groups[count++] = group;
    }
    if (count == 0) ::_exit(0);
    const auto any_left = [&] {
        for (std::uint32_t i = 0; i < count; ++i)
            if (command_groups::kill_group(groups[i], 0)) return true;
        return false;
    };
    constexpr long long kStep = 20'000'000;
    const long long grace_ns = table->grace_ns.load();
    for (long long waited = 0; waited < grace_ns && any_left(); waited += kStep) nap(kStep);
    for (std::uint32_t at = 0; at < used; ++at) command_groups::kill_group(table->slots[at].load(), SIGKILL);
    ::_exit(0);
}

// "worker-guard" for the guardian of a worker: its caller's name and what it is.
std::string guardian_title() {
    char name[17] = {};
    ::prctl(PR_GET_NAME, name);
    return fmt::format("{}-guard", name[0] ? name : "taskfarm");
}

// This process's guardian and the table it reads. A process forked from one that had a
// guardian (without exec) makes its own: the table and the pipe it inherited are its parent's.
class Guard {
public:
    static Guard& instance() {
        static Guard* const guard = new Guard;  // never destroyed: commands may end during exit
        return *guard;
    }

    // A free slot for a command, the guardian started (again) if it is not running.
    std::atomic<pid_t>* take(std::chrono::nanoseconds grace) {
        std::lock_guard lock(mutex_);
        if (owner_ != this_pid()) adopt();
        if (!table_) {
            void* memory = map_file();
            in_file_.store(memory != MAP_FAILED);
            if (memory == MAP_FAILED)
                memory = ::mmap(nullptr, sizeof(GuardTable), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
            if (memory == MAP_FAILED)
                throw std::system_error(errno, std::generic_category(), "cannot map a guardian's table");
            table_ = new (memory) GuardTable;
        }
        table_->grace_ns.store(grace.count());
        if (guardian_ <= 0) start();  // a killed one is found by the poll of a running command
        std::uint32_t slot = 0;
        if (!free_.empty()) {
            slot = free_.back();
            free_.pop_back();
        } else {
            slot = table_->used.load();
            if (slot == kSlots) throw std::runtime_error("cannot run more commands at once in one process");
            table_->used.store(slot + 1);
        }
        return &table_->slots[slot];
    }

    void give_back(std::atomic<pid_t>* slot) {
        slot->store(0);
        std::lock_guard lock(mutex_);
        if (!table_ || slot < table_->slots || slot >= table_->slots + kSlots) return;  // a parent's
        free_.push_back(static_cast<std::uint32_t>(slot - table_->slots));
    }

    // The caller's end of the guardian's pipe, to poll with no events: POLLERR once the
    // guardian is gone. -1 when there is none.
    int watch_fd() const { return watch_.load(); }
    pid_t pid() const { return guardian_pid_.load(); }
    // Whether the table is in command_groups::table_file(), where the coordinator reads it:
    // then a command's group needs no report (command_groups::add).
    bool in_file() const { return in_file_.load(); }

    // After a poll found the guardian's pipe without a reader: a new guardian, with the
    // same table, so the groups running now are guarded again.
    void restart_if_gone() {
        std::lock_guard lock(mutex_);
        if (owner_ == this_pid() && table_ && guardian_ > 0 && gone()) start();
    }

private:
    // The table in command_groups::table_file(), sized (sparse: pages are made as slots are
    // used); MAP_FAILED when this process has no such file or it cannot be made.
    static void* map_file() {
        const std::string path = command_groups::table_file();
        if (path.empty()) return MAP_FAILED;
        const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) return MAP_FAILED;
        void* memory = MAP_FAILED;
        if (::ftruncate(fd, sizeof(GuardTable)) == 0)
            memory = ::mmap(nullptr, sizeof(GuardTable), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        ::close(fd);
        if (memory == MAP_FAILED) ::unlink(path.c_str());
        return memory;
    }

    // Called with the lock held: forget what a parent process left us.
    void adopt() {
        if (table_) ::munmap(table_, sizeof(GuardTable));
        table_ = nullptr;
        in_file_.store(false);
        if (to_guardian_ >= 0) ::close(to_guardian_);
        to_guardian_ = -1;
        watch_.store(-1);
        guardian_ = -1;
        guardian_pid_.store(-1);
        free_.clear();
        owner_ = this_pid();
    }

    bool gone() const {
        pollfd polled{to_guardian_, 0, 0};
        return to_guardian_ < 0 || (::poll(&polled, 1, 0) == 1 && (polled.revents & (POLLERR | POLLHUP)) != 0);
    }

    void start() {
        if (guardian_ > 0) {  // dead: reaped, its pipe closed
            while (::waitpid(guardian_, nullptr, WNOHANG) < 0 && errno == EINTR) {
            }
            ::close(to_guardian_);
            to_guardian_ = -1;
            watch_.store(-1);
            guardian_ = -1;
        }
        auto [from_caller, to_guardian] = make_pipe();
        const std::string title_text = guardian_title();
        const ProcessTitle title(title_text, title_text);
        const pid_t caller = ::getpid();
        const pid_t pid = ::fork();
        if (pid < 0) throw std::system_error(errno, std::generic_category(), "cannot start a guardian process");
        if (pid == 0) guardian(from_caller.get(), table_, title, caller);
        guardian_ = pid;
        guardian_pid_.store(pid);
        to_guardian_ = to_guardian.release();
        watch_.store(to_guardian_);
    }

    std::mutex mutex_;
    pid_t owner_ = ::getpid();
    GuardTable* table_ = nullptr;
    std::vector<std::uint32_t> free_;
    pid_t guardian_ = -1;
    int to_guardian_ = -1;
    std::atomic<int> watch_{-1};
    std::atomic<pid_t> guardian_pid_{-1};
    std::atomic<bool> in_file_{false};
};

// A file's path as exec_in_path() builds it: a PATH entry, '/', a name.
constexpr std::size_t kTriedBytes = PATH_MAX + NAME_MAX + 2;

struct StartFailure {
    int stage = -1;  // -1: none; 0: chdir; 1: exec
    int error = 0;
};

// What the child needs, prepared by the caller: the child shares the caller's memory
// (CLONE_VM) and allocates nothing.
struct Launch {
    char* const* argv;
    char* const* envp;
    const char* path;       // where to look for argv[0] without '/': the PATH of envp
    const char* cached;     // where argv[0] was found before (PathCache), tried first; nullptr: none
    char* tried;            // the file of the exec under way, "" after one failed: kTriedBytes
    bool cached_failed;     // written by the child: `cached` did not exec
    const sigset_t* reset;  // the signals to set back to SIG_DFL (SignalsToReset)
    char* const* fallback;  // exec'd when argv cannot be (nullptr: none)
    char** script;          // {"/bin/sh", FILE, argv[1], ...}: for a file without a #! line
    const char* cwd;
    pid_t caller;
    pid_t guardian;
    int null;
    int out;
    int err;
    std::atomic<pid_t>* slot;
    StartFailure failure;  // written by the child when it cannot start
};

// execvp(), with the PATH of the command's environment rather than ours (which a child that
// shares our memory must not change): async-signal-safe, on the child's stack. Returns
// with errno set when it cannot exec.
void exec_in_path(Launch& launch) {
    const char* file = launch.argv[0];
    const auto exec = [&](const char* path) {
        if (path != launch.tried) {  // the caller's, to cache once this succeeds
            const std::size_t length = ::strlen(path);
            length < kTriedBytes ? static_cast<void>(::memcpy(launch.tried, path, length + 1))
                                 : static_cast<void>(launch.tried[0] = '\0');
        }
        ::execve(path, launch.argv, launch.envp);
        if (errno == ENOEXEC) {  // as execvp: a script without "#!" is run by /bin/sh
            launch.script[1] = const_cast<char*>(path);
            ::execve(launch.script[0], launch.script, launch.envp);
            errno = ENOEXEC;
        }
        launch.tried[0] = '\0';
    };
    if (::strchr(file, '/')) return exec(file);
    if (launch.cached) {
        exec(launch.cached);
        launch.cached_failed = true;  // gone, or no longer a program: searched afresh below
    }
    const std::size_t file_length = ::strlen(file);
    if (file_length > NAME_MAX) {
        errno = ENAMETOOLONG;
        return;
    }
    bool denied = false;
    char* const buffer = launch.tried;
    for (const char* at = launch.path;;) {
        const char* end = ::strchrnul(at, ':');
        std::size_t length = static_cast<std::size_t>(end - at);
        if (length < PATH_MAX) {
            ::memcpy(buffer, at, length);
            if (length > 0) buffer[length++] = '/';  // an empty entry is the working directory
            ::memcpy(buffer + length, file, file_length + 1);
            // A directory without the file is passed with a lookup: an execve copies in the
            // arguments and the environment before it looks (-X: 120 KiB, for each entry of
            // PATH before the program's).
            const bool absent = ::access(buffer, F_OK) != 0 && (errno == ENOENT || errno == ENOTDIR);
            if (!absent) exec(buffer);
            switch (errno) {
                case EACCES: denied = true; break;
                case ENOENT:
                case ENOTDIR:
                case ESTALE:
                case ENODEV:
                case ETIMEDOUT: break;
                default: return;
            }
        }
        if (*end == '\0') break;
        at = end + 1;
    }
    if (denied) errno = EACCES;
}

// Runs in the child, which shares the caller's memory and stack page until it execs (the
// caller waits, CLONE_VFORK): only async-signal-safe calls, nothing allocated, nothing of
// the caller's changed but `failure` and the slot.
int child(void* argument) {
    Launch& launch = *static_cast<Launch*>(argument);
    ::setpgid(0, 0);
    launch.slot->store(static_cast<pid_t>(::syscall(SYS_getpid)));  // guarded from here on
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != launch.caller) ::_exit(127);  // the caller died before the line above
    // A Ctrl-C or a drain's SIGTERM sent to the caller's group before the setpgid is not for
    // the command; a stop from the caller or the guardian is.
    drop_stop_signals_meant_for_the_parent(launch.caller, launch.guardian);
    // Ignored signals stay ignored across exec (the coordinator ignores SIGPIPE), and the
    // mask is inherited: give the program what a shell would. A handler of the caller's must
    // not run here either, in its memory: every signal is blocked until this is done. Only
    // the signals that are not at SIG_DFL are set (decision 285): the others already are.
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    for (int signal = 1; signal < NSIG; ++signal)
        if (::sigismember(launch.reset, signal) == 1) ::sigaction(signal, &default_action, nullptr);
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    // Never the caller's stdin: with --inputs - that is the list of inputs.
    // dup2 onto itself leaves close-on-exec set: cleared instead, so that the program has it.
    const auto give = [](int fd, int as) { fd == as ? ::fcntl(fd, F_SETFD, 0) : ::dup2(fd, as); };
    give(launch.null, 0);
    give(launch.out, 1);
    give(launch.err, 2);
    if (launch.cwd && ::chdir(launch.cwd) != 0) {
        launch.failure = {0, errno};
        ::_exit(127);
    }
    exec_in_path(launch);
    const int error = errno;
    launch.tried[0] = '\0';  // not found: nothing to cache, whatever the fallback runs
    if (launch.fallback) ::execve(launch.fallback[0], launch.fallback, launch.envp);
    launch.failure = {1, error};
    ::_exit(127);
}

// /dev/null, opened once (close-on-exec; dup2 in the child clears that for its stdin).
int dev_null() {
    static const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot open /dev/null");
    return fd;
}

std::vector<char*> c_strings(const std::vector<std::string>& strings) {
    std::vector<char*> pointers;
    pointers.reserve(strings.size() + 1);
    for (const std::string& text : strings) pointers.push_back(const_cast<char*>(text.c_str()));
    pointers.push_back(nullptr);
    return pointers;
}

// The value of PATH in `env`, or glibc's execvp() default when it has none.
const char* search_path(const std::vector<std::string>& env) {
    for (const std::string& entry : env)
        if (entry.starts_with("PATH=")) return entry.c_str() + 5;
    return "/bin:/usr/bin";
}

bool write_all(int fd, const char* data, std::size_t size) {
    while (size > 0) {
        const ssize_t wrote = ::write(fd, data, size);
        if (wrote < 0 && errno == EINTR) continue;
        if (wrote <= 0) return false;
        data += wrote;
        size -= static_cast<std::size_t>(wrote);
    }
    return true;
}

// Past the head: all of the stream into a file of Watch::spill_dir, the head first. A file
// that cannot be made or written is removed, and the stream is then cut (spill_error).
void spill(Captured& captured, const char* data, std::size_t size, const std::string& dir) {
    if (!captured.spill_error.empty()) return;
    if (captured.spill_fd < 0) {
        std::string path = dir + "/stream-XXXXXX";
        captured.spill_fd = ::mkostemp(path.data(), O_CLOEXEC);
        if (captured.spill_fd < 0) {
            captured.spill_error = fmt::format("cannot make a file in '{}': {}", dir, std::strerror(errno));
            return;
        }
        captured.file = path;
        if (!write_all(captured.spill_fd, captured.head.data(), captured.head.size())) size = 0;
    }
    if (size > 0 && write_all(captured.spill_fd, data, size)) return;
    captured.spill_error = fmt::format("cannot write '{}': {}", captured.file, std::strerror(errno ? errno : EIO));
    ::close(std::exchange(captured.spill_fd, -1));
    ::unlink(captured.file.c_str());
    captured.file.clear();
}

void keep(Captured& captured, const char* data, std::size_t size, const Watch& watch) {
    const std::size_t max = watch.max_output;
    captured.bytes += size;
    const std::size_t kept = captured.head.size() < max ? std::min(size, max - captured.head.size()) : 0;
    captured.head.append(data, kept);
    if (kept < size && !watch.spill_dir.empty()) spill(captured, data + kept, size - kept, watch.spill_dir);
    if (size >= kTailBytes) {
        captured.tail.assign(data + size - kTailBytes, kTailBytes);
    } else {
        captured.tail.append(data, size);
        if (captured.tail.size() > 2 * kTailBytes) captured.tail.erase(0, captured.tail.size() - kTailBytes);
    }
}

// Reads once from `fd`, which poll() found readable, into `captured`; closes it at end of file.
void drain(Fd& fd, Captured& captured, const Watch& watch) {
    char buffer[64 * 1024];
    while (fd.get() >= 0) {
        const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
        if (n > 0) {
            keep(captured, buffer, static_cast<std::size_t>(n), watch);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            fd.reset();
        }
        return;
    }
}

int poll_ms(Clock::time_point until) {
    const auto left = until - Clock::now();
    if (left <= Clock::duration::zero()) return 0;
    return static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(left).count());
}

// Owns the command until it is reaped, so that no path out of run_child(), an exception
// included, leaves it or its group behind, and gives its guardian's slot back.
class Child {
public:
    explicit Child(std::atomic<pid_t>* slot) : slot_(slot) {}
    ~Child() {
        if (pid_ > 0) {
            command_groups::kill_group(pid_, SIGKILL);
            reap();
        }
        if (slot_) Guard::instance().give_back(slot_);
    }
    Child(const Child&) = delete;
    Child& operator=(const Child&) = delete;

    void started(pid_t pid) { pid_ = pid; }
    // Puts the group in command_groups, once.
    void report() {
        if (reported_ || pid_ <= 0) return;
        command_groups::add(pid_);
        reported_ = true;
    }
    bool reported() const { return reported_; }
    pid_t pid() const { return pid_; }
    std::atomic<pid_t>* slot() const { return slot_; }
    // The child's wait status, and what it cost into `usage` when given. Its group id stays
    // ours until this reaps it: a pid is not reused while its process is a zombie, so
    // killing -pid before this is always safe. The guardian forgets the group first.
    int reap(rusage* usage = nullptr) {
        if (slot_) Guard::instance().give_back(std::exchange(slot_, nullptr));
        int status = 0;
        rusage ignored{};
        while (::wait4(pid_, &status, 0, usage ? usage : &ignored) < 0 && errno == EINTR) {
        }
        // Killed before it was reaped: nothing is left of it. Told with the task's result,
        // which follows (a worker's loop sends the change first), not with a wake-up of its own.
        if (reported_) command_groups::remove(pid_, /*wake=*/false);
        reported_ = false;
        pid_ = -1;
        return status;
    }

private:
    std::atomic<pid_t>* slot_;
    pid_t pid_ = -1;
    bool reported_ = false;
};

// Starts the child with clone(CLONE_VM | CLONE_VFORK): no copy of this (large) process's
// page tables, and the caller waits until the child has exec'd or failed. Every signal is
// blocked meanwhile, so that none of our handlers runs in the child. Returns the pid, and a
// pidfd for it in `pidfd` when the kernel gives one (Linux 5.2: CLONE_PIDFD).
pid_t spawn(Launch& launch, int& pidfd) {
    // The child's stack, while it runs: ours is not used meanwhile, below this frame.
    alignas(16) char stack[32 * 1024];
    sigset_t all;
    sigset_t old;
    ::sigfillset(&all);
    ::pthread_sigmask(SIG_SETMASK, &all, &old);
    pidfd = -1;
    pid_t pid = ::clone(child, stack + sizeof stack, CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &launch, &pidfd);
    if (pid < 0 && errno == EINVAL) {
        pidfd = -1;
        pid = ::clone(child, stack + sizeof stack, CLONE_VM | CLONE_VFORK | SIGCHLD, &launch);
    }
    // A kernel before 5.2 ignores CLONE_PIDFD; pidfd_open() is 5.3: polled without one.
    if (pid > 0 && pidfd < 0) pidfd = static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
    const int error = errno;
#if defined(__SANITIZE_ADDRESS__)
    // The child's frames poisoned parts of `stack` in the shadow memory we share, and never
    // returned to clear them: ours would read as overflows when the stack is used again.
    ASAN_UNPOISON_MEMORY_REGION(stack, sizeof stack);
#endif
    ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
    errno = error;
    return pid;
}

}  // namespace

std::string signal_name(int signal) {
    const char* abbreviation = ::sigabbrev_np(signal);
    return abbreviation ? fmt::format("SIG{}", abbreviation) : fmt::format("signal {}", signal);
}

Outcome run_child(const ChildSpec& spec, const Watch& watch) {
    if (spec.argv.empty()) throw std::invalid_argument("cannot run a command without a program");
    std::vector<char*> argv = c_strings(spec.argv);
    std::vector<char*> envp = c_strings(spec.env);
    std::vector<char*> fallback = c_strings(spec.fallback);
    std::vector<char*> script{const_cast<char*>("/bin/sh"), nullptr};
    script.insert(script.end(), argv.begin() + 1, argv.end());
    Fd input;
    if (!spec.stdin_path.empty()) {
        input.reset(::open(spec.stdin_path.c_str(), O_RDONLY | O_CLOEXEC));
        if (input.get() < 0)
            throw std::runtime_error(
                fmt::format("cannot open '{}' for the standard input: {}", spec.stdin_path, std::strerror(errno)));
    }
    auto [out_read, out_write] = make_pipe();
    auto [err_read, err_write] = make_pipe();

    const char* const path = search_path(spec.env);
    // (PATH, name) -> the file found there before; only for a name without '/' and a PATH of
    // absolute directories (PathCache).
    std::string cache_key;
    std::string cached;
    if (spec.argv[0].find('/') == std::string::npos && PathCache::cacheable(path)) {
        cache_key.reserve(std::strlen(path) + spec.argv[0].size() + 1);
        cache_key.append(path).append(1, '\0').append(spec.argv[0]);
        cached = path_cache().find(cache_key);
    }
    char tried[kTriedBytes];
    tried[0] = '\0';
    const sigset_t reset = signals_to_reset().get();

    Guard& guard = Guard::instance();
    Child child_process(guard.take(std::chrono::duration_cast<std::chrono::nanoseconds>(watch.grace)));
    Launch launch{.argv = argv.data(),
                  .envp = envp.data(),
                  .path = path,
                  .cached = cached.empty() ? nullptr : cached.c_str(),
                  .tried = tried,
                  .cached_failed = false,
                  .reset = &reset,
                  .fallback = spec.fallback.empty() ? nullptr : fallback.data(),
                  .script = script.data(),
                  .cwd = spec.cwd.empty() ? nullptr : spec.cwd.c_str(),
                  .caller = this_pid(),
                  .guardian = guard.pid(),
                  .null = input.get() >= 0 ? input.get() : dev_null(),
                  .out = out_write.get(),
                  .err = err_write.get(),
                  .slot = nullptr,
                  .failure = {}};
    int pidfd_number = -1;
    launch.slot = child_process.slot();  // the child writes its group into it
    const pid_t pid = spawn(launch, pidfd_number);
    const Fd pidfd(pidfd_number);
    if (pid < 0)
        throw std::system_error(errno, std::generic_category(), fmt::format("cannot start '{}'", spec.argv[0]));
    child_process.started(pid);
    out_write.reset();
    err_write.reset();
    if (!cache_key.empty()) {
        const bool found = launch.failure.stage < 0 && tried[0] != '\0';
        if (found && cached != tried) {
            path_cache().keep(std::move(cache_key), tried);
        } else if (!found && launch.cached_failed) {
            path_cache().forget(cache_key);  // found nowhere now (the shell's fallback ran, or nothing)
        }
    }
    if (launch.failure.stage >= 0) {
        child_process.reap();
        if (launch.failure.stage == 0)
            throw std::runtime_error(
                fmt::format("cannot change to directory '{}': {}", spec.cwd, std::strerror(launch.failure.error)));
        throw std::runtime_error(fmt::format("cannot run '{}': {}", spec.argv[0], std::strerror(launch.failure.error)));
    }

    const auto exited = [&] {
        siginfo_t info{};
        return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
    };
    Outcome outcome;
    const auto read_streams = [&](const pollfd* polled) {
        if (polled[0].revents) drain(out_read, outcome.out, watch);
        if (polled[1].revents) drain(err_read, outcome.err, watch);
    };
    bool ending = false;  // SIGTERM sent
    auto kill_at = Clock::time_point::max();
    // A worker's coordinator reads the groups in the table's file: no report then.
    const auto report_at = guard.in_file() ? Clock::time_point::max() : Clock::now() + kReportAfter;
    while (true) {
        const auto now = Clock::now();
        if (!child_process.reported() && now >= report_at) child_process.report();
        if (!ending && (watch.stop.stop_requested() || now >= watch.deadline)) {
            outcome.end = watch.stop.stop_requested() ? Outcome::End::Stopped : Outcome::End::TimedOut;
            command_groups::kill_group(pid, SIGTERM);
            ending = true;
            kill_at = now + watch.grace;
        } else if (now >= kill_at) {
            command_groups::kill_group(pid, SIGKILL);
            kill_at = Clock::time_point::max();
        }
        auto wake = std::min(now + kStopCheck, kill_at);
        if (!ending) wake = std::min(wake, watch.deadline);
        if (!child_process.reported()) wake = std::min(wake, report_at);
        if (pidfd.get() < 0) wake = std::min(wake, now + std::chrono::milliseconds(5));
        // The guardian's pipe, for no event: POLLERR says it is gone (killed), and a new one
        // takes over the groups running now.
        pollfd polled[] = {{out_read.get(), POLLIN, 0},
                           {err_read.get(), POLLIN, 0},
                           {pidfd.get(), POLLIN, 0},
                           {guard.watch_fd(), 0, 0}};
        if (::poll(polled, 4, poll_ms(wake)) < 0 && errno != EINTR)
            throw std::system_error(errno, std::generic_category(), "cannot wait for a command");
        read_streams(polled);
        if (polled[3].revents & (POLLERR | POLLHUP | POLLNVAL)) guard.restart_if_gone();
        if (pidfd.get() >= 0 ? (polled[2].revents & POLLIN) != 0 : exited()) break;
    }
    // The program is gone; whatever it started in its group ends with it, so that it never
    // outlives its task, nor keeps the pipes open.
    command_groups::kill_group(pid, SIGKILL);
    const auto give_up = Clock::now() + watch.grace;  // only a process that left the group still writes
    while ((out_read.get() >= 0 || err_read.get() >= 0) && Clock::now() < give_up) {
        pollfd polled[] = {{out_read.get(), POLLIN, 0}, {err_read.get(), POLLIN, 0}};
        if (::poll(polled, 2, poll_ms(give_up)) < 0 && errno != EINTR) break;
        read_streams(polled);
    }
    for (Captured* captured : {&outcome.out, &outcome.err})
        if (captured->spill_fd >= 0) ::close(std::exchange(captured->spill_fd, -1));
    rusage usage{};
    const int status = child_process.reap(&usage);
    const auto seconds = [](const timeval& tv) {
        return static_cast<double>(tv.tv_sec) + static_cast<double>(tv.tv_usec) / 1e6;
    };
    outcome.user_s = seconds(usage.ru_utime);
    outcome.sys_s = seconds(usage.ru_stime);
    outcome.max_rss_kb = usage.ru_maxrss;
    if (WIFEXITED(status)) {
        outcome.exit_code = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
        outcome.signal = WTERMSIG(status);
    }
    return outcome;
}

}  // namespace taskfarm::command
