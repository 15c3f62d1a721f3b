#include "process_pool.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <thread>

#include <boost/process/args.hpp>
#include <boost/process/child.hpp>
#include <boost/process/exe.hpp>
#include <boost/process/extend.hpp>
#include <boost/process/io.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "child_signals.hpp"
#include "command_groups.hpp"
#include "fork_protocol.hpp"
#include "stop_wake.hpp"

namespace bp = boost::process;

namespace taskfarm {

struct ProcessPool::Child {
    std::string name;
    pid_t pid =
        -1;  // ours until reaped (detached from Boost.Process, or forked by the server); -1 until the server answers
    pid_t id = -1;  // what spawn() returned: the pid, or a number of the pool's for a worker asked of the fork server
    // While the fork server has not answered: how to exec it instead, and since when it waits.
    int cpu = -1;
    std::vector<std::string> args{};
    std::chrono::steady_clock::time_point asked{};
    bool killed = false;  // kill() came before the answer: killed as it comes
};

struct ForkServer::Process {
    bp::child child;
};

namespace {

// Runs in the child between fork and exec: only async-signal-safe calls here.
struct DieWithParent {
    template <typename Executor>
    void operator()(Executor&) const {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);
        // A group of its own, whose id is the worker's pid: whatever the worker starts (a
        // --worker-bin wrapper's other children, say) is in it, and ends with it (kill_group).
        // A Ctrl-C on the terminal reaches only the coordinator, which stops the workers itself.
        ::setpgid(0, 0);
        drop_stop_signals_meant_for_the_parent();  // sent to the coordinator's group before the line above
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);  // the coordinator blocks its stop signals
        ::signal(SIGPIPE, SIG_DFL);                  // and ignores SIGPIPE; exec keeps an ignored signal ignored
    }
};

// SIGKILL to the worker's process group (see DieWithParent). Call it before the worker is
// reaped: until then its pid, which is the group's id, cannot be reused.
void kill_group(pid_t pid) {
    if (pid > 0) ::kill(-pid, SIGKILL);
}

// Whether the child has exited, without reaping it, so that its group can still be killed.
bool has_exited(pid_t pid) {
    siginfo_t info{};
    return ::waitid(P_PID, static_cast<id_t>(pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 && info.si_pid == pid;
}

// Runs in the child between fork and exec, so the pin holds before the worker's first
// instruction. The set is built in the parent: the child only makes the system call.
struct PinToCpu {
    bool pin = false;
    cpu_set_t set{};
    explicit PinToCpu(int cpu) : pin(cpu >= 0) {
        CPU_ZERO(&set);
        if (pin) CPU_SET(cpu, &set);
    }
    template <typename Executor>
    void operator()(Executor&) const {
        if (pin) ::sched_setaffinity(0, sizeof set, &set);  // a failure shows as cpu -1 in HELLO
    }
};

// Runs in the fork server between fork and exec: its end of the socket becomes descriptor 3
// (dup2 clears close-on-exec; a descriptor already 3 keeps it, so clear it by hand).
struct HandOverChannel {
    int fd = -1;
    template <typename Executor>
    void operator()(Executor&) const {
        if (fd == 3)
            ::fcntl(fd, F_SETFD, 0);
        else
            ::dup2(fd, 3);
    }
};

// Runs in the child between fork and exec: stdin becomes /dev/null, which the parent opened
// close-on-exec, so that no other copy of it outlives the exec. (Boost.Process's bp::null
// leaves the descriptor it opened in the worker, and so in every command it runs.) stdout and
// stderr stay the program's (decision 167).
struct NullStdin {
    int fd = -1;
    template <typename Executor>
    void operator()(Executor&) const {
        if (fd == STDIN_FILENO)
            ::fcntl(fd, F_SETFD, 0);
        else if (fd >= 0)
            ::dup2(fd, STDIN_FILENO);
    }
};

// /dev/null for NullStdin, opened once, close-on-exec. -1 if it cannot be (the child then
// keeps the parent's stdin).
int null_device() {
    static const int fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
    return fd;
}

constexpr auto kForkServerGrace = std::chrono::milliseconds(1000);
// The ids of workers asked of the fork server start above any pid (Linux's PID_MAX_LIMIT is
// 2^22), so an id never names another process.
constexpr pid_t kFirstForkedId = pid_t{1} << 24;

std::string describe_status(int status) {
    if (WIFSIGNALED(status)) return fmt::format("signal {}", WTERMSIG(status));
    if (WIFEXITED(status)) return fmt::format("exit code {}", WEXITSTATUS(status));
    return fmt::format("status {}", status);
}

}  // namespace

std::filesystem::path default_worker_binary() {
    std::error_code ec;
    const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    return ec ? std::filesystem::path("worker") : self.parent_path() / "worker";
}

ForkServer::ForkServer(const std::filesystem::path& binary, const std::vector<std::string>& prefix,
                       const std::string& log_level, const std::vector<std::string>& preload) {
    int ends[2];
    if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, ends) != 0)
        throw std::system_error(errno, std::generic_category(), "cannot make the fork server's socket");
    std::vector<std::string> args = prefix;
    args.insert(args.end(), {"--fork-server", "--parent-pid", std::to_string(::getpid())});
    if (!log_level.empty()) args.insert(args.end(), {"--log-level", log_level});
    std::string types;
    for (const std::string& type : preload) types += (types.empty() ? "" : ",") + type;
    args.insert(args.end(), {"--preload", types});
    try {
        process_ = std::make_unique<Process>(Process{bp::child(
            bp::exe = binary.string(), bp::args = args, bp::extend::on_exec_setup = NullStdin{null_device()},
            bp::extend::on_exec_setup = DieWithParent{}, bp::extend::on_exec_setup = HandOverChannel{ends[1]})});
    } catch (...) {
        ::close(ends[0]);
        ::close(ends[1]);
        throw;
    }
    ::close(ends[1]);
    channel_ = ends[0];
    spdlog::debug("started the fork server (pid {})", process_->child.id());
}

ForkServer::~ForkServer() {
    if (channel_ >= 0) ::close(channel_);  // its end of file: it exits
    std::error_code ec;
    // Polled, not Boost.Process's wait_for(): that waits for a SIGCHLD, which another thread
    // of ours may take, and then sits out the whole grace after the server has exited.
    const auto deadline = std::chrono::steady_clock::now() + kForkServerGrace;
    while (process_->child.running(ec) && !ec && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (process_->child.running(ec) && !ec) {
        process_->child.terminate(ec);
        if (ec) spdlog::warn("cannot kill the fork server (pid {}): {}", process_->child.id(), ec.message());
    }
}

pid_t ForkServer::pid() const { return process_->child.id(); }

bool ForkServer::request(const std::vector<std::string>& args, int cpu) {
    if (channel_ < 0) return false;
    std::string request = std::to_string(cpu);
    for (const std::string& arg : args) {
        request += '\0';
        request += arg;
    }
    queued_.push_back(std::move(request));
    send_queued();
    return channel_ >= 0;
}

void ForkServer::send_queued() {
    while (channel_ >= 0 && !queued_.empty()) {
        const std::string& request = queued_.front();
        if (::send(channel_, request.data(), request.size(), MSG_NOSIGNAL | MSG_DONTWAIT) ==
            static_cast<ssize_t>(request.size())) {
            queued_.pop_front();
            continue;
        }
        // The socket's buffer is full of requests the server has not read yet: each reply to
        // come makes room (it answers them in order), so the rest wait for take_reply().
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || errno == EINTR) return;
        give_up(fmt::format("cannot be asked for a worker ({})", std::strerror(errno)));
    }
}

int ForkServer::receive(ForkReply& reply, bool until_ready) {
    while (channel_ >= 0) {
        const ssize_t got = ::recv(channel_, &reply, sizeof reply, MSG_DONTWAIT);
        if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return 0;
        if (got == 0) {
            give_up("is gone");
        } else if (got != static_cast<ssize_t>(sizeof reply) || (reply.pid == kForkServerReady.pid && ready_)) {
            give_up("sent a reply that is not one");
        } else if (reply.pid == kForkServerReady.pid) {
            ready_ = true;  // no fork answers pid 0: the server's word that it can fork, sent once, first
            if (until_ready) return 0;
        } else if (!ready_) {
            give_up("sent a reply before it was ready");
        } else {
            return 1;
        }
    }
    return -1;
}

bool ForkServer::wait_ready(std::chrono::milliseconds timeout, const std::stop_token& stop,
                            const std::stop_token& drain) {
    if (ready_ || channel_ < 0) return ready_;
    // A SIGINT or SIGTERM meanwhile ends the wait at once (the run starts nothing more).
    const StopWake woken(stop, drain);
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    ForkReply packet;
    while (channel_ >= 0 && !ready_ && !stop.stop_requested() && !drain.stop_requested()) {
        const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
        if (left.count() <= 0) break;
        pollfd polled[] = {{channel_, POLLIN, 0}, {woken.fd(), POLLIN, 0}};
        if (::poll(polled, woken.fd() >= 0 ? 2 : 1, static_cast<int>(left.count())) < 0 && errno != EINTR) break;
        receive(packet, /*until_ready=*/true);
    }
    return ready_;
}

std::optional<ForkReply> ForkServer::take_reply() {
    ForkReply reply;
    const int got = receive(reply);
    send_queued();  // a reply read is room for a request
    if (got == 1) return reply;
    return std::nullopt;
}

void ForkServer::give_up(const std::string& why) {
    if (channel_ < 0) return;
    queued_.clear();  // their workers are exec'd by the pool
    spdlog::warn("the fork server (pid {}) {}; workers are exec'd from now on", pid(), why);
    ::close(channel_);
    channel_ = -1;
}

ProcessPool::ProcessPool(WorkerLaunch launch) : launch_(std::move(launch)), next_id_(kFirstForkedId) {}

ProcessPool::~ProcessPool() {
    try {
        stop_all(std::chrono::milliseconds(0));
    } catch (const std::exception& e) {
        spdlog::error("cannot stop worker processes: {}", e.what());
    }
}

pid_t ProcessPool::spawn(const std::string& name, int cpu) {
    std::vector<std::string> args = launch_.prefix;
    args.insert(args.end(), {
                                "--connect",
                                launch_.endpoint,
                                "--name",
                                name,
                                "--parent-pid",
                                std::to_string(::getpid()),
                                "--heartbeat-interval",
                                fmt::format("{}", launch_.heartbeat_interval_s),
                                "--heartbeat-timeout",
                                fmt::format("{}", launch_.heartbeat_timeout_s),
                                "--out-dir",
                                launch_.out_dir.string(),
                            });
    if (!launch_.log_level.empty()) args.insert(args.end(), {"--log-level", launch_.log_level});
    if (!launch_.scratch_dir.empty()) args.insert(args.end(), {"--scratch-dir", launch_.scratch_dir.string()});
    if (!launch_.state_dir.empty()) args.insert(args.end(), {"--state-dir", launch_.state_dir.string()});
    // The fork server is already the program run with the prefix: it gets the rest. Its
    // answer is taken when it comes (take_fork_replies()).
    if (launch_.fork_server && launch_.fork_server->alive()) {
        std::vector<std::string> rest(args.begin() + static_cast<std::ptrdiff_t>(launch_.prefix.size()), args.end());
        if (launch_.fork_server->request(rest, cpu)) {
            const pid_t id = next_id_++;
            spdlog::debug("asked the fork server for worker {} (id {}, cpu {})", name, id, cpu);
            children_.push_back(
                std::make_unique<Child>(Child{name, -1, id, cpu, std::move(args), std::chrono::steady_clock::now()}));
            ++unanswered_;
            return id;
        }
    }
    const pid_t pid = exec_worker(args, cpu);
    spdlog::debug("started worker {} (pid {}, cpu {})", name, pid, cpu);
    children_.push_back(std::make_unique<Child>(Child{name, pid, pid}));
    return pid;
}

pid_t ProcessPool::exec_worker(const std::vector<std::string>& args, int cpu) {
    // Its stdout and stderr are the program's, as a task's on the program's own threads
    // (decision 167); the worker itself writes nothing to stdout.
    bp::child process(bp::exe = launch_.binary.string(), bp::args = args,
                      bp::extend::on_exec_setup = NullStdin{null_device()}, bp::extend::on_exec_setup = DieWithParent{},
                      bp::extend::on_exec_setup = PinToCpu(cpu));
    const pid_t pid = process.id();
    process.detach();  // reaped here, by pid (waitpid), like a forked one
    return pid;
}

void ProcessPool::take_fork_replies() {
    ForkServer* server = launch_.fork_server;
    if (!server) return;
    // The oldest worker that waits for its answer; O(1) when none does (every reap asks).
    const auto waiting = [this] {
        if (unanswered_ == 0) return children_.end();
        return std::find_if(children_.begin(), children_.end(), [](const auto& child) { return child->pid < 0; });
    };
    // Answers come in the order asked: each is the oldest waiting worker's.
    while (server->alive()) {
        const auto reply = server->take_reply();
        if (!reply) break;
        last_fork_reply_ = std::chrono::steady_clock::now();
        const auto child = waiting();
        if (child == children_.end()) {  // asked by nobody: not ours to keep
            if (reply->pid > 0) {
                kill_group(reply->pid);
                ::kill(reply->pid, SIGKILL);
                ::waitpid(reply->pid, nullptr, 0);
            }
            continue;
        }
        Child& asked = **child;
        --unanswered_;
        if (reply->pid < 0) {
            failed_.push_back(
                {asked.id, asked.name, fmt::format("the fork server cannot fork it: {}", std::strerror(reply->error))});
            children_.erase(child);
            continue;
        }
        asked.pid = reply->pid;
        asked.args.clear();
        spdlog::debug("forked worker {} (pid {}, id {})", asked.name, asked.pid, asked.id);
        if (asked.killed) {
            kill_and_reap(asked);
            children_.erase(child);
        }
    }
    // Stuck: a worker asked for has waited kForkReplyTimeout, and no answer came meanwhile (a
    // worker far down a queue of hundreds waits for those before it, not for a stuck server).
    if (const auto oldest = waiting();
        oldest != children_.end() && server->alive() &&
        std::chrono::steady_clock::now() - std::max((*oldest)->asked, last_fork_reply_) > kForkReplyTimeout)
        server->give_up(fmt::format("did not answer within {} s (stopped or stuck?)",
                                    std::chrono::duration_cast<std::chrono::seconds>(kForkReplyTimeout).count()));
    if (server->alive() || unanswered_ == 0) return;
    // Given up: what it was asked for is exec'd instead (or, killed meanwhile, forgotten).
    for (auto child = children_.begin(); child != children_.end();) {
        Child& asked = **child;
        if (asked.pid >= 0) {
            ++child;
            continue;
        }
        --unanswered_;
        if (!asked.killed) {
            try {
                asked.pid = exec_worker(asked.args, asked.cpu);
                asked.args.clear();
                spdlog::debug("started worker {} (pid {}, id {}) instead of the fork server", asked.name, asked.pid,
                              asked.id);
                ++child;
                continue;
            } catch (const std::exception& e) {
                failed_.push_back({asked.id, asked.name, fmt::format("cannot start it: {}", e.what())});
            }
        }
        child = children_.erase(child);
    }
}

int ProcessPool::fork_reply_fd() const {
    // Asked at every pass of the dispatcher's loop: a count, not a walk of up to 1,024 workers.
    if (!launch_.fork_server || unanswered_ == 0) return -1;
    return launch_.fork_server->channel();
}

pid_t ProcessPool::id_of(pid_t pid) {
    const auto find = [&] {
        return std::find_if(children_.begin(), children_.end(), [pid](const auto& child) { return child->pid == pid; });
    };
    auto child = find();
    if (child == children_.end()) {  // its answer may have come after its HELLO was sent
        take_fork_replies();
        child = find();
    }
    return child == children_.end() ? pid : (*child)->id;
}

pid_t ProcessPool::pid_of(pid_t id) const {
    const auto found =
        std::find_if(children_.begin(), children_.end(), [id](const auto& child) { return child->id == id; });
    return found == children_.end() || (*found)->pid < 0 ? id : (*found)->pid;
}

std::vector<WorkerExit> ProcessPool::reap_exited() {
    take_fork_replies();
    std::vector<WorkerExit> exits = std::move(failed_);
    failed_.clear();
    std::erase_if(children_, [&](const std::unique_ptr<Child>& child) {
        if (child->pid < 0 || !has_exited(child->pid)) return false;
        kill_group(child->pid);  // what it left running dies with it
        end_commands_of(child->pid);
        int status = 0;
        if (::waitpid(child->pid, &status, WNOHANG) != child->pid) return false;
        exits.push_back({child->id, child->name, describe_status(status)});
        ended_[child->id] = child->pid;
        return true;
    });
    return exits;
}

LastRunning ProcessPool::last_running(pid_t id) {
    if (launch_.state_dir.empty()) return {};
    // The board is named by the worker's own pid; a forked worker's id is not its pid.
    const auto ended = ended_.find(id);
    const pid_t pid = ended != ended_.end() ? ended->second : pid_of(id);
    if (ended != ended_.end()) ended_.erase(ended);
    return read_running_board(launch_.state_dir, pid);
}

void ProcessPool::kill(pid_t id) {
    std::erase_if(children_, [&](const std::unique_ptr<Child>& child) {
        if (child->id != id) return false;
        if (child->pid < 0) {  // not forked yet: killed when the answer comes
            child->killed = true;
            return false;
        }
        kill_and_reap(*child);
        ended_[child->id] = child->pid;
        return true;
    });
}

void ProcessPool::end_commands_of(pid_t pid) const {
    if (launch_.state_dir.empty() || pid <= 0) return;
    for (const pid_t group : command_groups::take_tables(launch_.state_dir, pid)) {
        spdlog::debug("ending process group {} of a command of the worker with pid {}", group, pid);
        command_groups::kill_group(group, SIGKILL);
    }
}

void ProcessPool::kill_and_reap(const Child& child) const {
    if (child.pid < 0) return;
    kill_group(child.pid);
    ::kill(child.pid, SIGKILL);
    // Dead, not reaped: the table of its commands is final, and their groups still ours.
    siginfo_t info{};
    while (::waitid(P_PID, static_cast<id_t>(child.pid), &info, WEXITED | WNOWAIT) < 0 && errno == EINTR) {
    }
    end_commands_of(child.pid);
    while (::waitpid(child.pid, nullptr, 0) < 0 && errno == EINTR) {
    }
}

std::vector<WorkerExit> ProcessPool::stop_all(std::chrono::milliseconds grace) {
    std::vector<WorkerExit> exits;
    const auto deadline = std::chrono::steady_clock::now() + grace;
    while (true) {
        for (WorkerExit& exit : reap_exited()) {
            spdlog::debug("worker {} (pid {}) exited: {}", exit.name, exit.pid, exit.reason);
            exits.push_back(std::move(exit));
        }
        if (children_.empty() || std::chrono::steady_clock::now() >= deadline) break;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // a worker exits within ms of SHUTDOWN
    }
    // A worker the fork server never forked is not asked for any more: the server is given
    // up, so one it forks now is killed by it.
    if (launch_.fork_server && unanswered_ > 0) launch_.fork_server->give_up("had not answered by the end of the mode");
    for (const auto& child : children_) {
        if (child->pid < 0) {
            exits.push_back({child->id, child->name, "never started: the fork server did not answer"});
            continue;
        }
        spdlog::debug("killing worker {} (pid {})", child->name, child->pid);
        kill_and_reap(*child);
        exits.push_back({child->id, child->name, "killed after the shutdown grace period"});
    }
    children_.clear();
    unanswered_ = 0;
    return exits;
}

std::size_t ProcessPool::alive() const { return children_.size(); }

}  // namespace taskfarm
