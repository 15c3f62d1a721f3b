#include "step.hpp"

#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <wordexp.h>

#include <cstring>
#include <stdexcept>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "child_signals.hpp"
#include "errors.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

constexpr std::size_t kKeptLines = 8;  // of the launcher's stderr, for the reason it ended
constexpr auto kStepPollInterval = std::chrono::milliseconds(20);

std::string find_program(StepLauncher launcher) {
    const std::string name = program_of(launcher);
    if (auto found = find_in_path(name)) return *found;
    throw RunError(fmt::format("--launch {}: cannot start '{}': not found in PATH ({})", launch_name(launcher), name,
                               launcher == StepLauncher::Slurm
                                   ? "is this a Slurm client machine? Debian's package is slurm-client"
                                   : "Debian's packages are openmpi-bin and mpich"));
}

}  // namespace

std::optional<std::string> find_in_path(const std::string& name) {
    if (name.find('/') != std::string::npos) return name;
    const char* path = std::getenv("PATH");
    std::string_view dirs = path ? path : "/usr/bin:/bin";
    while (!dirs.empty()) {
        const auto colon = dirs.find(':');
        const std::string dir(dirs.substr(0, colon));
        const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
        if (colon == std::string_view::npos) break;
        dirs.remove_prefix(colon + 1);
    }
    return std::nullopt;
}

const char* program_of(StepLauncher launcher) { return launcher == StepLauncher::Slurm ? "srun" : "mpirun"; }
const char* step_noun(StepLauncher launcher) {
    return launcher == StepLauncher::Slurm ? "Slurm job step" : "mpirun job";
}
const char* launch_name(StepLauncher launcher) { return launcher == StepLauncher::Slurm ? "slurm" : "mpirun"; }

StepCommand step_command(const StepConfig& config) {
    StepCommand command;
    command.argv.push_back(find_program(config.launcher));
    if (config.launcher == StepLauncher::Slurm) {
        command.argv.insert(command.argv.end(), {fmt::format("--ntasks={}", config.tasks), "--cpus-per-task=1",
                                                 // A worker that dies is the coordinator's to handle
                                                 // (its tasks are requeued): the others go on.
                                                 "--kill-on-bad-exit=0", "--job-name=taskfarm-workers"});
        if (config.pin) command.argv.emplace_back("--cpu-bind=cores");
    } else {
        // -n and -bind-to are spelled the same by Open MPI and MPICH (hydra).
        command.argv.insert(command.argv.end(), {"-n", std::to_string(config.tasks)});
        if (config.pin) command.argv.insert(command.argv.end(), {"-bind-to", "core"});
        // Open MPI's defaults, through its environment (MPICH ignores these names): a worker
        // that dies must not abort the others (its tasks are requeued), and without --pin no
        // binding (Open MPI binds to cores when it starts two processes or fewer). A value the
        // user set wins.
        const auto unless_set = [&command](const char* name, const char* value) {
            if (!std::getenv(name)) command.env.push_back(fmt::format("{}={}", name, value));
        };
        unless_set("OMPI_MCA_orte_abort_on_non_zero_status", "0");
        if (!config.pin) unless_set("OMPI_MCA_hwloc_base_binding_policy", "none");
    }
    command.argv.insert(command.argv.end(), config.args.begin(), config.args.end());
    command.argv.insert(command.argv.end(), config.worker.begin(), config.worker.end());
    return command;
}

std::string first_non_loopback_address() {
    ifaddrs* list = nullptr;
    if (::getifaddrs(&list) != 0) return "127.0.0.1";
    std::string found = "127.0.0.1";
    for (const ifaddrs* entry = list; entry; entry = entry->ifa_next) {
        if (!entry->ifa_addr || entry->ifa_addr->sa_family != AF_INET) continue;
        if (!(entry->ifa_flags & IFF_UP) || (entry->ifa_flags & IFF_LOOPBACK)) continue;
        char text[INET_ADDRSTRLEN] = {};
        const auto* address = reinterpret_cast<const sockaddr_in*>(entry->ifa_addr);
        if (::inet_ntop(AF_INET, &address->sin_addr, text, sizeof text)) {
            found = text;
            break;
        }
    }
    ::freeifaddrs(list);
    return found;
}

std::vector<std::string> split_launcher_args(const std::string& text) {
    wordexp_t words{};
    const int error = ::wordexp(text.c_str(), &words, WRDE_NOCMD | WRDE_UNDEF);
    if (error != 0) {
        if (error == WRDE_NOSPACE) ::wordfree(&words);
        throw std::invalid_argument(error == WRDE_CMDSUB    ? "command substitution is not allowed"
                                    : error == WRDE_BADVAL  ? "it names an undefined variable"
                                    : error == WRDE_BADCHAR ? "it has a character the shell would treat specially "
                                                              "(| & ; < > ( ) { } or a newline) outside quotes"
                                    : error == WRDE_SYNTAX  ? "unbalanced quotes"
                                                            : "it cannot be split into words");
    }
    std::vector<std::string> args(words.we_wordv, words.we_wordv + words.we_wordc);
    ::wordfree(&words);
    return args;
}

RunKeys::RunKeys(const std::filesystem::path& parent) {
    std::string pattern = (std::filesystem::absolute(parent) / ".taskfarm-keys-XXXXXX").string();
    if (!::mkdtemp(pattern.data()))  // mode 0700: only this user can read the secrets
        throw RunError(fmt::format("--launch: cannot create a key directory in '{}': {}", printable(parent.string()),
                                   std::strerror(errno)));
    dir_ = pattern;
    try {
        curve::write_key_directory(dir_, {"coordinator", "worker"});
        server_ = curve::read_server_keys(dir_);
    } catch (const std::exception& e) {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
        throw RunError(fmt::format("--launch: cannot make keys for the run: {}", e.what()));
    }
}

RunKeys::~RunKeys() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    if (ec) spdlog::warn("cannot remove the run's key directory '{}': {}", dir_.string(), ec.message());
}

WorkerStep::WorkerStep(const StepConfig& config) : program_(program_of(config.launcher)) {
    StepCommand command = step_command(config);
    std::vector<char*> raw;
    for (std::string& arg : command.argv) raw.push_back(arg.data());
    raw.push_back(nullptr);
    // The environment is built before the fork: only async-signal-safe calls after it.
    std::vector<char*> env;
    for (char** entry = environ; *entry; ++entry) env.push_back(*entry);
    for (std::string& entry : command.env) env.push_back(entry.data());
    env.push_back(nullptr);

    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0)
        throw RunError(fmt::format("--launch {}: cannot make a pipe for {}: {}", launch_name(config.launcher), program_,
                                   std::strerror(errno)));
    sigset_t none;
    sigemptyset(&none);
    const pid_t parent = ::getpid();
    const pid_t pid = ::fork();
    if (pid == 0) {  // only async-signal-safe calls from here to exec
        // srun and mpirun end their workers when they get SIGTERM; the coordinator's death
        // must end them too.
        ::prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (::getppid() != parent) ::_exit(127);
        // A group of its own: a Ctrl-C on the terminal reaches only the coordinator, which
        // stops the launcher itself (srun's first SIGINT would only print the step's status).
        ::setpgid(0, 0);
        drop_stop_signals_meant_for_the_parent();    // sent to the coordinator's group before the line above
        ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the coordinator blocks its stop signals
        ::signal(SIGPIPE, SIG_DFL);
        // srun and mpirun pass their stdin to task 0: the plan may be on ours (--plan -), and
        // is not the workers' to read.
        if (const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC); null >= 0) ::dup2(null, STDIN_FILENO);
        // Both to the pipe: the coordinator's stdout holds results only. dup2 clears O_CLOEXEC.
        ::dup2(pipe_fds[1], STDOUT_FILENO);
        ::dup2(pipe_fds[1], STDERR_FILENO);
        ::execve(raw[0], raw.data(), env.data());
        const char message[] = "cannot run the launcher\n";
        [[maybe_unused]] const auto written = ::write(STDERR_FILENO, message, sizeof message - 1);
        ::_exit(127);
    }
    const int error = errno;
    ::close(pipe_fds[1]);
    if (pid < 0) {
        ::close(pipe_fds[0]);
        throw RunError(fmt::format("--launch {}: cannot start {}: {}", launch_name(config.launcher), program_,
                                   std::strerror(error)));
    }
    pid_ = pid;
    std::string shown;
    for (const std::string& entry : command.env) shown += entry + " ";
    for (std::size_t i = 0; i + 1 < raw.size(); ++i) shown += (i ? " " : "") + command.argv[i];
    spdlog::info("started {} worker(s) as a{} {}: {}", config.tasks, config.launcher == StepLauncher::Mpirun ? "n" : "",
                 step_noun(config.launcher), printable(shown));
    reader_ = std::jthread([this, fd = pipe_fds[0]] { copy_stderr(fd); });
}

WorkerStep::~WorkerStep() {
    if (pid_ > 0) stop(std::chrono::milliseconds(1000));
    // reader_ joins here: srun is gone, so its pipe is at its end.
}

void WorkerStep::copy_stderr(int fd) {
    std::string pending;
    char buffer[4096];
    for (;;) {
        const ssize_t got = ::read(fd, buffer, sizeof buffer);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) break;
        pending.append(buffer, static_cast<std::size_t>(got));
        std::size_t end;
        while ((end = pending.find('\n')) != std::string::npos) {
            const std::string line = pending.substr(0, end + 1);
            pending.erase(0, end + 1);
            // The workers' logs, and srun's: passed on as whole lines.
            [[maybe_unused]] const auto written = ::write(STDERR_FILENO, line.data(), line.size());
            std::lock_guard lock(mutex_);
            last_lines_.push_back(line.substr(0, line.size() - 1));
            if (last_lines_.size() > kKeptLines) last_lines_.erase(last_lines_.begin());
        }
    }
    if (!pending.empty()) {
        [[maybe_unused]] const auto written = ::write(STDERR_FILENO, pending.data(), pending.size());
        std::lock_guard lock(mutex_);
        last_lines_.push_back(pending);
    }
    ::close(fd);
}

std::optional<std::string> WorkerStep::ended() {
    if (pid_ > 0) {
        int status = 0;
        if (::waitpid(pid_, &status, WNOHANG) != pid_) return std::nullopt;
        status_ = status;
        pid_ = -1;
        // Its last lines may still be in the pipe: they are what says why.
        if (reader_.joinable()) reader_.join();
    }
    return describe();
}

bool WorkerStep::wait_until(std::chrono::steady_clock::time_point deadline) {
    while (!ended()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        std::this_thread::sleep_for(kStepPollInterval);
    }
    return true;
}

std::string WorkerStep::stop(std::chrono::milliseconds grace) {
    if (wait_until(std::chrono::steady_clock::now() + grace)) return describe();
    spdlog::info("{} (pid {}) still running {} ms after SHUTDOWN: SIGTERM ends its workers", program_, pid_,
                 grace.count());
    ::kill(pid_, SIGTERM);
    if (wait_until(std::chrono::steady_clock::now() + grace)) return describe();
    spdlog::warn("{} (pid {}) still running after SIGTERM: SIGKILL", program_, pid_);
    ::kill(pid_, SIGKILL);
    wait_until(std::chrono::steady_clock::now() + grace * 10);
    return pid_ > 0 ? program_ + " did not exit after SIGKILL" : describe();
}

std::string WorkerStep::describe(bool last_lines) const {
    std::string text = WIFEXITED(status_)     ? fmt::format("{} exited with status {}", program_, WEXITSTATUS(status_))
                       : WIFSIGNALED(status_) ? fmt::format("{} was killed by signal {} ({})", program_,
                                                            WTERMSIG(status_), ::strsignal(WTERMSIG(status_)))
                                              : fmt::format("{} ended with wait status {:#x}", program_, status_);
    std::lock_guard lock(mutex_);
    if (last_lines && !last_lines_.empty()) {
        // One line: the error printer escapes line breaks.
        text += "; its last lines on stderr: ";
        for (std::size_t i = 0; i < last_lines_.size(); ++i) text += (i ? " | " : "") + printable(last_lines_[i]);
    }
    return text;
}

}  // namespace taskfarm
