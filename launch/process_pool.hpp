#pragma once
// Spawns, watches and reaps worker processes. Whoever starts a process reaps it: the
// destructor waits a short grace period for exits, then kills and reaps what is left.
// Only pids this pool spawned and has not reaped are ever signalled.

#include <sys/types.h>

#include <chrono>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "fork_protocol.hpp"
#include "launcher.hpp"

namespace taskfarm {

// The program's own fork server (decision 101): `binary PREFIX... --fork-server`, started
// through Boost.Process while this process has no thread and no ZeroMQ context, with the
// worker code and libraries loaded; it forks each local worker on request, as a child of
// this process (so the pool reaps it and sees its exit as it would an exec'd one). Its
// protocol is one SOCK_SEQPACKET socket: "CPU\0ARG\0..." -> {pid, errno}, answered in the
// order asked. Nothing here waits for it: a request is sent and its reply taken when it
// comes (a stopped or slow server holds up only the workers it was asked for).
class ForkServer {
public:
    // Throws when it cannot start. It preloads what the task types named in `preload` need
    // (worker --preload), so that a type the run does not use makes no fork dearer.
    ForkServer(const std::filesystem::path& binary, const std::vector<std::string>& prefix,
               const std::string& log_level, const std::vector<std::string>& preload);
    ~ForkServer();  // closes its socket (it exits), waits a moment, kills and reaps it
    ForkServer(const ForkServer&) = delete;
    ForkServer& operator=(const ForkServer&) = delete;

    // Asks for a worker running the program with `args` (after PREFIX), pinned to `cpu` when
    // >= 0, without waiting; false when the server is gone (then it is given up: not asked
    // again). A request the socket cannot take now (a full buffer: hundreds asked at once)
    // waits here, in order, and is sent as replies make room (take_reply(); decision 265).
    bool request(const std::vector<std::string>& args, int cpu);
    // Waits until the server has preloaded its types and can fork (its first packet,
    // kForkServerReady), at most `timeout`, and no longer than `stop` or `drain` (the run's
    // SIGINT and SIGTERM) is requested; true once it has. Nothing else is waited for.
    bool wait_ready(std::chrono::milliseconds timeout, const std::stop_token& stop = {},
                    const std::stop_token& drain = {});
    // The next reply, if one came (it never waits); nullopt if none yet. A server that
    // closed its end is given up (alive() false).
    std::optional<ForkReply> take_reply();
    // Asks nothing more of it: its socket is closed, so a worker it forks after this is
    // killed by it (it cannot send the reply), and the rest are exec'd.
    void give_up(const std::string& why);
    // Readable when a reply (or the server's end) came; -1 once it is given up.
    int channel() const { return channel_; }
    pid_t pid() const;
    bool alive() const { return channel_ >= 0; }

private:
    struct Process;
    // Reads one packet into `reply` without waiting: 1 when one came, 0 when none did, -1 when
    // the server is given up. kForkServerReady is taken here, never returned: it must come
    // first, and once. `until_ready` (wait_ready()): 0 once it came, before reading on, so that
    // a request's reply after it is not taken (and lost) there but by take_reply().
    int receive(ForkReply& reply, bool until_ready = false);
    // Sends the requests that waited for room, in order, while the socket takes them.
    void send_queued();
    std::deque<std::string> queued_;  // requests not sent yet
    std::unique_ptr<Process> process_;
    int channel_ = -1;    // our end of the socket; -1 once the server is gone
    bool ready_ = false;  // kForkServerReady came
};

struct WorkerLaunch {
    std::filesystem::path binary{};
    std::vector<std::string> prefix{};    // arguments before the worker's own (an App's "worker")
    std::filesystem::path out_dir{};      // passed as --out-dir: where its tasks save files
    std::filesystem::path scratch_dir{};  // passed as --scratch-dir when set
    std::filesystem::path state_dir{};    // passed as --state-dir when set: where each keeps its RunningBoard
    std::string endpoint{};
    double heartbeat_interval_s = 0.2;
    double heartbeat_timeout_s = 2.0;
    std::string log_level = {};  // passed as --log-level; empty: the worker's default (SPDLOG_LEVEL)
    // Forks the workers when set and alive; else (--worker-bin, or a dead server) they are exec'd.
    ForkServer* fork_server = nullptr;
};

class ProcessPool final : public WorkerLauncher {
public:
    explicit ProcessPool(WorkerLaunch launch);
    ~ProcessPool();  // noexcept: logs, never throws
    ProcessPool(const ProcessPool&) = delete;
    ProcessPool& operator=(const ProcessPool&) = delete;

    // Starts `worker --connect ENDPOINT --name NAME`, forked by the fork server or exec'd;
    // it dies with this process (PR_SET_PDEATHSIG, set before it runs worker code) and is in
    // a process group of its own. With cpu >= 0 it runs only on that CPU from its first
    // instruction of worker code; if the kernel refuses, it runs unpinned and says so in its
    // HELLO. Throws when it cannot start. Never waits on the fork server: a forked worker's
    // pid is not known until the server answers, so the id returned stands for it (its
    // pid for an exec'd worker, else a number above any pid: see id_of()) in every call and
    // exit until it ends. A server that answers nothing for kForkReplyTimeout is given
    // up and the worker exec'd instead.
    pid_t spawn(const std::string& name, int cpu = -1) override;

    // Takes the fork server's replies that came, without waiting (also done by reap_exited()).
    void take_fork_replies() override;
    // Readable when the fork server answered a request; -1 while none is waiting.
    int fork_reply_fd() const override;
    // The id spawn() returned for the worker whose pid is `pid` (the pid a HELLO carries);
    // `pid` itself for a process the pool does not know.
    pid_t id_of(pid_t pid) override;
    // The pid of the worker spawn() called `id`, once known; `id` itself otherwise.
    pid_t pid_of(pid_t id) const override;

    // Reaps the workers that exited since the last call, without blocking; a worker that
    // could not be forked or exec'd is among them.
    std::vector<WorkerExit> reap_exited() override;

    // SIGKILLs a live worker of ours and reaps it; no-op for an unknown id. A worker the fork
    // server has not forked yet is killed when it answers.
    void kill(pid_t id) override;

    // Waits until every worker has exited or `grace` passed, then kills the rest.
    // Returns how each one ended.
    std::vector<WorkerExit> stop_all(std::chrono::milliseconds grace);

    std::size_t alive() const;

    // How long a fork request may wait for its reply, with no other reply meanwhile, before
    // the server is given up. Well
    // within the time a worker has to say hello (--start-timeout, 10 s by default), so the
    // worker exec'd instead still makes it.
    static constexpr auto kForkReplyTimeout = std::chrono::seconds(2);

    // What the board of worker `id`, which has ended (reaped by reap_exited() or kill()),
    // says it was running; Known::No without a state_dir.
    LastRunning last_running(pid_t id) override;

private:
    struct Child;
    void kill_and_reap(const Child& child) const;
    // SIGKILL to the groups of the commands a dead worker (`pid`, its group's id) ran, from
    // the tables its processes kept in state_dir (command_groups::take_tables, decision 206):
    // its guardian may have died with it. Called before the worker is reaped.
    void end_commands_of(pid_t pid) const;
    pid_t exec_worker(const std::vector<std::string>& args, int cpu);
    void give_up_fork_server(const std::string& why);
    WorkerLaunch launch_;
    std::vector<std::unique_ptr<Child>> children_;
    std::map<pid_t, pid_t> ended_;  // id -> pid of workers reaped whose board was not read yet  // live ones only, and
                                    // those asked of the fork server
    std::vector<WorkerExit> failed_;                           // could not start: reported by the next reap_exited()
    pid_t next_id_;                                            // for the next worker asked of the fork server
    std::size_t unanswered_ = 0;  // of children_, those asked of the fork server with no answer yet (pid < 0)
    std::chrono::steady_clock::time_point last_fork_reply_{};  // when the fork server last answered
};

// Where the worker binary is when --worker-bin is not given: next to this executable.
std::filesystem::path default_worker_binary();

}  // namespace taskfarm
