#include "child.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <stdexcept>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "child_signals.hpp"
#include "command_groups.hpp"
#include "process_title.hpp"

extern char** environ;

namespace taskfarm::command {
namespace {

using Clock = std::chrono::steady_clock;

// Checks the stop token this often while nothing else wakes the wait.
constexpr auto kStopCheck = std::chrono::milliseconds(50);

class Fd {
public:
    Fd() = default;
    explicit Fd(int fd) : fd_(fd) {}
    Fd(Fd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    Fd& operator=(Fd&& other) noexcept {
        reset(std::exchange(other.fd_, -1));
        return *this;
    }
    ~Fd() { reset(); }
    int get() const { return fd_; }
    void reset(int fd = -1) {
        if (fd_ >= 0) ::close(fd_);
        fd_ = fd;
    }

private:
    int fd_ = -1;
};

// Close-on-exec, so that no other child (another thread's command, a worker) keeps an end
// open past its exec and hides an end of file from us.
std::pair<Fd, Fd> make_pipe() {
    int fds[2];
    if (::pipe2(fds, O_CLOEXEC) != 0) throw std::system_error(errno, std::generic_category(), "cannot create a pipe");
    return {Fd(fds[0]), Fd(fds[1])};
}

// Between fork() and exec in a process with threads only async-signal-safe calls are
// allowed; the helpers the children use keep to them (no allocation, no locks).
void write_all(int fd, const void* data, std::size_t size) {
    const char* at = static_cast<const char*>(data);
    while (size > 0) {
        const ssize_t n = ::write(fd, at, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        at += n;
        size -= static_cast<std::size_t>(n);
    }
}

bool read_all(int fd, void* data, std::size_t size) {
    char* at = static_cast<char*>(data);
    while (size > 0) {
        const ssize_t n = ::read(fd, at, size);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        at += n;
        size -= static_cast<std::size_t>(n);
    }
    return true;
}

void nap(long long ns) {
    timespec left{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
    while (::nanosleep(&left, &left) != 0 && errno == EINTR) {
    }
}

// The guardian outlives the caller to end the command's group if the caller dies (SIGKILL,
// a crash): PR_SET_PDEATHSIG reaches only the command's own process, not what it started.
// The caller sends the group id, then one byte once the group is gone and the command
// reaped; an end of file before that byte means the caller died.
[[noreturn]] void guardian(int from_caller, long long grace_ns, const ProcessTitle& title) {
    title.apply();  // "worker-guard" in ps, not a second "worker"
    sigset_t all;
    ::sigfillset(&all);
    ::sigprocmask(SIG_SETMASK, &all, nullptr);  // Ctrl-C and the caller's signals are not for it
    // Out of the caller's group too: a coordinator kills a dead worker's whole group (decision 57).
    ::setpgid(0, 0);
    ::dup2(from_caller, 0);
    // The caller's sockets and pipes: holding them would hide its death from its peers.
    ::syscall(SYS_close_range, 3U, ~0U, 0U);
    pid_t group = 0;
    char done = 0;
    if (!read_all(0, &group, sizeof group)) ::_exit(0);
    title.apply(group);  // "worker-guard 1234": the group it guards
    if (read_all(0, &done, 1)) ::_exit(0);
    ::kill(-group, SIGTERM);
    constexpr long long kStep = 20'000'000;
    for (long long waited = 0; waited < grace_ns && ::kill(-group, 0) == 0; waited += kStep) nap(kStep);
    ::kill(-group, SIGKILL);
    ::_exit(0);
}

// "worker-guard" for a guardian forked by a worker: its caller's name and what it is.
std::string guardian_title() {
    char name[17] = {};
    ::prctl(PR_GET_NAME, name);
    return fmt::format("{}-guard", name[0] ? name : "taskfarm");
}

struct StartFailure {
    int stage;  // 0: chdir, 1: exec
    int error;
};

[[noreturn]] void child(char* const* argv, char** envp, const char* cwd, pid_t caller, pid_t guardian, int out, int err,
                        int report) {
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != caller) ::_exit(127);  // the caller died before the line above
    // A Ctrl-C or a drain's SIGTERM sent to the caller's group before the setpgid is not for
    // the command; a stop from the caller or the guardian is.
    drop_stop_signals_meant_for_the_parent(caller, guardian);
    // Ignored signals stay ignored across exec (the coordinator ignores SIGPIPE), and the
    // mask is inherited: give the program what a shell would.
    struct sigaction default_action {};
    default_action.sa_handler = SIG_DFL;
    for (int signal = 1; signal < NSIG; ++signal) ::sigaction(signal, &default_action, nullptr);
    sigset_t none;
    ::sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    // Never the caller's stdin: with --inputs - that is the list of inputs.
    const int null = ::open("/dev/null", O_RDONLY);
    if (null >= 0 && null != 0) ::dup2(null, 0);
    ::dup2(out, 1);
    ::dup2(err, 2);
    if (cwd && ::chdir(cwd) != 0) {
        const StartFailure failure{0, errno};
        write_all(report, &failure, sizeof failure);
        ::_exit(127);
    }
    environ = envp;  // execvp() searches the PATH of the command's own environment
    ::execvp(argv[0], argv);
    const StartFailure failure{1, errno};
    write_all(report, &failure, sizeof failure);
    ::_exit(127);
}

std::vector<char*> c_strings(const std::vector<std::string>& strings) {
    std::vector<char*> pointers;
    pointers.reserve(strings.size() + 1);
    for (const std::string& text : strings) pointers.push_back(const_cast<char*>(text.c_str()));
    pointers.push_back(nullptr);
    return pointers;
}

void keep(Captured& captured, const char* data, std::size_t size, std::size_t max) {
    captured.bytes += size;
    if (captured.head.size() < max) captured.head.append(data, std::min(size, max - captured.head.size()));
    if (size >= kTailBytes) {
        captured.tail.assign(data + size - kTailBytes, kTailBytes);
    } else {
        captured.tail.append(data, size);
        if (captured.tail.size() > 2 * kTailBytes) captured.tail.erase(0, captured.tail.size() - kTailBytes);
    }
}

// Reads what `fd` has now into `captured`; closes it at end of file.
void drain(Fd& fd, Captured& captured, std::size_t max) {
    char buffer[64 * 1024];
    while (fd.get() >= 0) {
        const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
        if (n > 0) {
            keep(captured, buffer, static_cast<std::size_t>(n), max);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            if (n == 0 || errno != EAGAIN) fd.reset();
            return;
        }
    }
}

int poll_ms(Clock::time_point until) {
    const auto left = until - Clock::now();
    if (left <= Clock::duration::zero()) return 0;
    return static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(left).count());
}

// Owns the two processes until they are reaped, so that no path out of run_child(), an
// exception included, leaves either behind.
class Children {
public:
    Children(pid_t guardian, Fd to_guardian) : guardian_(guardian), to_guardian_(std::move(to_guardian)) {}
    ~Children() {
        if (child_ > 0) {
            ::kill(-child_, SIGKILL);
            reap_child();
        }
        release_guardian();
    }
    Children(const Children&) = delete;
    Children& operator=(const Children&) = delete;

    void started(pid_t child) {
        child_ = child;
        write_all(to_guardian_.get(), &child_, sizeof child_);
        command_groups::add(child_);
    }
    pid_t child() const { return child_; }
    // The child's wait status, and what it cost into `usage` when given. Its group id stays
    // ours until this reaps it: a pid is not reused while its process is a zombie, so
    // killing -child before this is always safe.
    int reap_child(rusage* usage = nullptr) {
        int status = 0;
        rusage ignored{};
        while (::wait4(child_, &status, 0, usage ? usage : &ignored) < 0 && errno == EINTR) {
        }
        command_groups::remove(child_);  // killed before it was reaped: nothing is left of it
        child_ = -1;
        return status;
    }
    void release_guardian() {
        if (guardian_ <= 0) return;
        const char done = 'd';
        write_all(to_guardian_.get(), &done, 1);
        to_guardian_.reset();
        while (::waitpid(guardian_, nullptr, 0) < 0 && errno == EINTR) {
        }
        guardian_ = -1;
    }

private:
    pid_t guardian_;
    Fd to_guardian_;
    pid_t child_ = -1;
};

}  // namespace

std::string signal_name(int signal) {
    const char* abbreviation = ::sigabbrev_np(signal);
    return abbreviation ? fmt::format("SIG{}", abbreviation) : fmt::format("signal {}", signal);
}

Outcome run_child(const ChildSpec& spec, const Watch& watch) {
    if (spec.argv.empty()) throw std::invalid_argument("cannot run a command without a program");
    std::vector<char*> argv = c_strings(spec.argv);
    std::vector<char*> envp = c_strings(spec.env);
    const char* cwd = spec.cwd.empty() ? nullptr : spec.cwd.c_str();
    auto [guard_read, guard_write] = make_pipe();
    auto [out_read, out_write] = make_pipe();
    auto [err_read, err_write] = make_pipe();
    auto [report_read, report_write] = make_pipe();
    const pid_t caller = ::getpid();
    const std::string title_text = guardian_title();
    const ProcessTitle title(title_text, title_text);

    const pid_t guardian_pid = ::fork();
    if (guardian_pid < 0) throw std::system_error(errno, std::generic_category(), "cannot start a guardian process");
    if (guardian_pid == 0)
        guardian(guard_read.get(), std::chrono::duration_cast<std::chrono::nanoseconds>(watch.grace).count(), title);
    guard_read.reset();
    Children children(guardian_pid, std::move(guard_write));
    const pid_t pid = ::fork();
    if (pid < 0)
        throw std::system_error(errno, std::generic_category(), fmt::format("cannot start '{}'", spec.argv[0]));
    if (pid == 0)
        child(argv.data(), envp.data(), cwd, caller, guardian_pid, out_write.get(), err_write.get(),
              report_write.get());
    ::setpgid(pid, pid);  // as the child does: whichever runs first, the group exists before a kill (EACCES after exec)
    children.started(pid);
    out_write.reset();
    err_write.reset();
    report_write.reset();
    if (StartFailure failure{}; read_all(report_read.get(), &failure, sizeof failure)) {
        children.reap_child();
        if (failure.stage == 0)
            throw std::runtime_error(
                fmt::format("cannot change to directory '{}': {}", spec.cwd, std::strerror(failure.error)));
        throw std::runtime_error(fmt::format("cannot run '{}': {}", spec.argv[0], std::strerror(failure.error)));
    }

    for (const Fd* fd : {&out_read, &err_read}) ::fcntl(fd->get(), F_SETFL, ::fcntl(fd->get(), F_GETFL) | O_NONBLOCK);
    const Fd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));  // -1 on kernels before 5.3: polled below
    const auto exited = [&] {
        siginfo_t info{};
        return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
    };
    Outcome outcome;
    const auto read_streams = [&](const pollfd* polled) {
        if (polled[0].revents) drain(out_read, outcome.out, watch.max_output);
        if (polled[1].revents) drain(err_read, outcome.err, watch.max_output);
    };
    bool ending = false;  // SIGTERM sent
    auto kill_at = Clock::time_point::max();
    while (true) {
        const auto now = Clock::now();
        if (!ending && (watch.stop.stop_requested() || now >= watch.deadline)) {
            outcome.end = watch.stop.stop_requested() ? Outcome::End::Stopped : Outcome::End::TimedOut;
            ::kill(-pid, SIGTERM);
            ending = true;
            kill_at = now + watch.grace;
        } else if (now >= kill_at) {
            ::kill(-pid, SIGKILL);
            kill_at = Clock::time_point::max();
        }
        auto wake = std::min(now + kStopCheck, kill_at);
        if (!ending) wake = std::min(wake, watch.deadline);
        if (pidfd.get() < 0) wake = std::min(wake, now + std::chrono::milliseconds(5));
        pollfd polled[] = {{out_read.get(), POLLIN, 0}, {err_read.get(), POLLIN, 0}, {pidfd.get(), POLLIN, 0}};
        if (::poll(polled, 3, poll_ms(wake)) < 0 && errno != EINTR)
            throw std::system_error(errno, std::generic_category(), "cannot wait for a command");
        read_streams(polled);
        if (pidfd.get() >= 0 ? (polled[2].revents & POLLIN) != 0 : exited()) break;
    }
    // The program is gone; whatever it started in its group ends with it, so that it never
    // outlives its task, nor keeps the pipes open.
    ::kill(-pid, SIGKILL);
    const auto give_up = Clock::now() + watch.grace;  // only a process that left the group still writes
    while ((out_read.get() >= 0 || err_read.get() >= 0) && Clock::now() < give_up) {
        pollfd polled[] = {{out_read.get(), POLLIN, 0}, {err_read.get(), POLLIN, 0}};
        if (::poll(polled, 2, poll_ms(give_up)) < 0 && errno != EINTR) break;
        read_streams(polled);
    }
    rusage usage{};
    const int status = children.reap_child(&usage);
    children.release_guardian();
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
