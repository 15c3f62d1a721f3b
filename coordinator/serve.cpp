// `coordinator serve`: one processes-mode runner that never ends while the server is up, fed
// by a plan whose cursor hands out the tasks of every job, one job after another in turn
// (round-robin between jobs with waiting tasks), and says Later while none waits, as the
// farm's does (app/farm.cpp). Each job is a directory of the state directory: its tasks
// (tasks.jsonl, written before the job is accepted) and its journal (results.jsonl, the
// --results format, a line written before the result is shown to anyone). A restart reads
// them back: a task with a final result in the journal never runs again, every other one
// does (decisions 177-180).

#include "serve.hpp"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <fstream>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <stop_token>
#include <thread>
#include <tuple>
#include <unordered_map>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "control.hpp"
#include "checks.hpp"
#include "errors.hpp"
#include "journal.hpp"
#include "journal_line.hpp"
#include "journal_report.hpp"
#include "listener.hpp"
#include "live_view.hpp"
#include "run_session.hpp"
#include "log.hpp"
#include "modes.hpp"
#include "plan_sources.hpp"
#include "process_pool.hpp"
#include "service.hpp"
#include "signals.hpp"
#include "sinks.hpp"
#include "text.hpp"
#include "wire.hpp"

namespace taskfarm {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The workers' memory, in MiB: what a task's peak RSS is counted against (decision 230).
constexpr std::string_view kMem = "mem";

double unix_now() { return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

// A directory the service may use: made 0700 when missing (its parent must exist), else it
// must be this user's, 0700, and not a symlink. Throws ConfigError naming `flag`.
void private_dir(const fs::path& dir, const std::string& flag) {
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST)
        throw ConfigError(fmt::format("{} '{}': cannot create the directory: {}", flag, printable(dir.string()),
                                      std::strerror(errno)));
    if (const std::string why = service::untrusted(dir); !why.empty())
        throw ConfigError(fmt::format("{} '{}': {}", flag, printable(dir.string()), why));
}

// Writes `text` to `path` whole or throws: through a temporary file renamed over it.
void write_file_whole(const fs::path& path, const std::string& text) {
    const fs::path temporary = path.string() + ".tmp";
    {
        std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
        out << text;
        out.flush();
        if (!out) throw std::runtime_error(fmt::format("cannot write '{}'", temporary.string()));
    }
    fs::rename(temporary, path);
}

// A job that waits for another (submit --after, --afterok, --afternotok).
struct Dependency {
    enum class If { Any, Ok, NotOk };
    std::uint64_t job = 0;
    If when = If::Any;
};

const char* if_name(Dependency::If when) {
    switch (when) {
        case Dependency::If::Ok: return "afterok";
        case Dependency::If::NotOk: return "afternotok";
        case Dependency::If::Any: break;
    }
    return "after";
}

std::optional<Dependency::If> if_of(std::string_view name) {
    if (name == "after") return Dependency::If::Any;
    if (name == "afterok") return Dependency::If::Ok;
    if (name == "afternotok") return Dependency::If::NotOk;
    return std::nullopt;
}

// Why a job with these dependencies could never run; empty when it could.
std::string contradiction(const std::vector<Dependency>& after) {
    std::vector<std::uint64_t> ok;
    std::vector<std::uint64_t> not_ok;
    for (const Dependency& dependency : after)
        if (dependency.when != Dependency::If::Any)
            (dependency.when == Dependency::If::Ok ? ok : not_ok).push_back(dependency.job);
    return service::contradiction(ok, not_ok);
}

// A final result as recorded, made into what a client sees (client_result()) only when a
// wait asks for it, on the server's loop: not on the engine's thread, which would then hand
// out tasks more slowly, and never for a job no `wait` without -q reads.
struct Fresh {
    TaskId id = 0;
    std::string kind;
    bool ok = false;
    bool cancelled = false;
    std::uint32_t attempt = 0;
    std::string worker;
    json value;
    std::string error;
};

struct Job {
    std::uint64_t id = 0;
    std::string name;
    int priority = 0;               // a job of higher priority takes its turns first
    std::vector<Dependency> after;  // its tasks wait until these jobs are done
    bool released = true;           // its dependencies are done (or it has none)
    std::string skipped;            // why it did not run (a dependency's outcome); empty: it ran
    fs::path dir;
    double submitted = 0;
    std::vector<TaskSpec> tasks;      // their ids are their index in the job
    std::deque<std::uint32_t> todo;   // not handed to the engine yet, in order, none waiting for another
    std::vector<std::uint8_t> final;  // its final result is in the journal: 1 ok, 2 not ok; 0 not yet
    // A plan line's "after" (tasks of the same job, each before it): a task waits here, out of
    // `todo`, until each of them is ok; it fails, not run, once one is not (decision 220).
    std::unordered_map<std::uint32_t, std::uint32_t> blocked;                  // task -> how many not done
    std::unordered_map<std::uint32_t, std::vector<std::uint32_t>> dependents;  // task -> those waiting for it
    std::vector<json> results;       // the final results, in journal order, as clients see them
    std::vector<std::size_t> sizes;  // each one's size in a reply, near enough
    std::vector<Fresh> fresh;        // results after those, not made into `results` yet
    std::uint64_t ok = 0;
    std::uint64_t failed = 0;
    std::uint64_t handed = 0;   // handed to the engine, no final result yet
    std::uint64_t started = 0;  // of those, begun on a worker (the others wait in a worker's prefetch)
    // The most memory one of its tasks took (its results' cost.max_rss_kb, in MiB, rounded up):
    // each next task that asks for no "mem" holds this much of the workers' (decision 230).
    std::uint64_t peak_mib = 0;
    bool committed = false;
    bool cancelled = false;
    // While it is being submitted: when its client last said anything about it (create, add,
    // touch). A submit silent for --submit-timeout is dropped: its client is gone.
    std::chrono::steady_clock::time_point touched;
    std::unique_ptr<JournalSink> journal;  // open while the job is not done
    std::ofstream task_file;               // tasks.jsonl while the job is being submitted

    // Once done, a job keeps only its counts in memory: its tasks and results are on disk
    // (a wait reads them back from its journal).
    std::size_t total = 0;     // its tasks, once committed
    std::size_t finished = 0;  // of those, with a final result
    bool unloaded = false;

    bool done() const { return committed && finished == total; }
    std::string state() const {
        if (!committed) return "submitting";
        if (done()) return !skipped.empty() ? "skipped" : cancelled ? "cancelled" : failed > 0 ? "failed" : "ok";
        if (cancelled) return "cancelling";
        if (!released) return "held";
        return started > 0 ? "running" : "waiting";
    }
    json after_json() const {
        json out = json::array();
        for (const Dependency& dependency : after)
            out.push_back({{"job", dependency.job}, {"if", if_name(dependency.when)}});
        return out;
    }
    json summary() const {
        return {{"job", id},
                {"name", name},
                {"state", state()},
                {"priority", priority},
                {"after", after_json()},
                {"why", skipped},
                {"tasks", total},
                {"ok", ok},
                {"failed", failed},
                {"running", started},
                {"waiting", todo.size() + blocked.size() + handed - started},
                {"peak_mem_mib", peak_mib},
                {"submitted", submitted}};
    }
};

// What a client sees of a result: the journal line's fields that say what came of the task.
json client_result(std::uint64_t job, const json& line) {
    json out = {{"job", job},
                {"id", line.value("id", TaskId{0})},
                {"kind", line.value("kind", std::string("?"))},
                {"ok", line.value("ok", false)},
                {"attempt", line.value("attempt", 1)},
                {"worker", line.value("worker", std::string())}};
    out["value"] = line.contains("value") ? line.at("value") : json(nullptr);
    if (!out["ok"].get<bool>()) out["error"] = line.value("error", std::string());
    if (line.value("cancelled", false)) out["cancelled"] = true;
    return out;
}

class Server {
public:
    Server(const ProgramInfo& program, ServeConfig config) : program_(program), config_(std::move(config)) {}

    ~Server() {
        if (wake_fd_ >= 0) ::close(wake_fd_);
        if (loop_fd_ >= 0) ::close(loop_fd_);
        if (lock_fd_ >= 0) ::close(lock_fd_);
        if (socket_lock_fd_ >= 0) ::close(socket_lock_fd_);
    }

    int run() {
        private_dir(config_.socket.parent_path(), "--socket");
        private_dir(config_.state, "--state");
        take_locks();
        // Each unfinished job holds its journal open: at most half the descriptors this
        // process may open, so that workers, clients and respawns always have theirs.
        if (struct rlimit limit{}; ::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY)
            max_unfinished_ = std::max<std::size_t>(16, limit.rlim_cur / 2 > 64 ? limit.rlim_cur / 2 - 64 : 0);
        private_dir(config_.state / "jobs", "--state");
        load_jobs();
        wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        loop_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (wake_fd_ < 0 || loop_fd_ < 0) throw RunError(fmt::format("eventfd: {}", std::strerror(errno)));

        RunConfig run;
        run.modes = {Mode::Processes};
        run.workers = config_.workers;
        if (config_.retries) set_retries(run, *config_.retries);  // else a type that retries itself keeps its default
        run.log_level = config_.log_level;
        run.worker_bin = program_.worker.path;
        run.worker_prefix = program_.worker.prefix;
        run.worker_command = program_.worker.path.filename().string();
        run.tasks = 0;
        run.out_dir = default_out_dir(program_.registry);  // any registered type may be submitted
        // A server that stays up replaces every worker that dies, for as long as it runs: a
        // run's limit (100) would leave it with no workers after enough crashing tasks, each of
        // which is charged to its task (--max-attempts) all the same.
        run.max_respawns = std::numeric_limits<int>::max();
        run.resources = config_.resources;
        // Remote workers (decision 247): the one-shot run's listener and job step, in the engine.
        run.listen = config_.listen;
        run.server_keys = config_.worker_keys;
        if (config_.step) {
            run.step = config_.step;
            run.expect_workers = config_.step->tasks;
            run.wait_workers_s = config_.wait_workers_s;
        } else if (!config_.listen.empty()) {
            // Workers started by hand come and go: with none left, the tasks wait for the next.
            run.workers_any_time = true;
        }
        run.on_listening = [this](const std::string& endpoint) {
            std::lock_guard lock(mutex_);
            workers_endpoint_ = endpoint;
            if (config_.step) return;
            fmt::print(stderr, "workers over tcp at {}: {} --connect {} --keys DIR\n", endpoint,
                       program_.worker.path.filename().string(), endpoint);
            std::fflush(stderr);
        };
        settings_ = settings_json(run);
        // What a one-shot run sets up before its threads, through the same session (decision 307):
        // the fork server (while this process has no thread and no ZeroMQ context; every
        // registered type preloaded, since any may be submitted), --ui's port (a port in use: exit
        // 2 naming --ui), the sinks, then the stop signals and the live view's thread.
        std::vector<const TaskType*> types;
        for (const auto& type : program_.registry.types()) types.push_back(type.get());
        RunSession session(run, program_.registry, settings_, types);
        session.open_live_view({config_.ui, fmt::format("{} serve", program_.name)});
        view_ = session.live();
        cancels_ = &session.cancels();
        session.add(std::make_unique<ServerSink>(*this));
        session.start(SignalSetup{std::chrono::milliseconds(static_cast<std::int64_t>(config_.drain_timeout_s * 1000)),
                                  "--drain-timeout"});
        SignalWatcher& signals = *session.signals();

        zmq::context_t context(1);
        zmq::socket_t router(context, zmq::socket_type::router);
        wire::configure(router, zmq::socket_type::router);
        const std::string endpoint = "ipc://" + config_.socket.string();
        try {
            router.bind(endpoint);
        } catch (const zmq::error_t& e) {
            throw ConfigError(
                fmt::format("--socket '{}': cannot bind: {}", printable(config_.socket.string()), e.what()));
        }
        ::chmod(config_.socket.c_str(), 0600);
        // Clients over tcp: CURVE, and only keys the ZAP handler knows; the ipc endpoint bound
        // above stays plaintext, for this user only.
        std::optional<Listener> tcp;
        if (!config_.listen_clients.empty()) {
            try {
                tcp.emplace(context, router,
                            ListenConfig{config_.listen_clients, config_.client_keys, "client",
                                         "put it in a NAME.public file in serve's --authorized-clients directory"});
            } catch (const ConfigError& e) {
                throw ConfigError(fmt::format("--listen-clients: {}", e.what()));
            }
        }

        Plan plan;
        plan.source = std::make_shared<Source>(*this);
        plan.types = types;
        auto runner = session.runner(Mode::Processes);
        std::atomic<bool> engine_over{false};
        std::string engine_error;
        // `logs`: journals summed up off the loop (decision 231).
        std::jthread reporter([this](std::stop_token stop) { report_journals(stop); });
        std::thread engine([&] {
            try {
                session.run(*runner, plan);
            } catch (const std::exception& e) {
                engine_error = e.what();
            }
            engine_over = true;
            poke(loop_fd_);
        });
        {
            std::lock_guard lock(mutex_);
            fmt::print(stderr, "serving {} with {}; state in {} ({} job(s) from it)\n", config_.socket.string(),
                       workers_text(), config_.state.string(), jobs_.size());
            if (tcp) fmt::print(stderr, "clients over tcp at {}\n", tcp->describe());
            if (view_) fmt::print(stderr, "live view: {}\n", view_->url());
        }
        std::fflush(stderr);

        bool stopping = false;
        auto next_expiry = std::chrono::steady_clock::now();
        while (!engine_over) {
            if (!stopping && signals.drain_token().stop_requested()) {
                stopping = true;
                std::lock_guard lock(mutex_);
                shutting_down_ = true;  // results of tasks cut short now are not final: they run again
                poke(wake_fd_);
                queued_cv_.notify_all();
            }
            zmq::pollitem_t items[] = {{router.handle(), 0, ZMQ_POLLIN, 0}, {nullptr, loop_fd_, ZMQ_POLLIN, 0}};
            zmq::poll(items, 2, std::chrono::milliseconds(200));
            if (items[1].revents & ZMQ_POLLIN) {
                std::uint64_t count = 0;
                while (::read(loop_fd_, &count, sizeof count) < 0 && errno == EINTR) {
                }
                std::lock_guard lock(mutex_);
                loop_poked_ = false;  // before answer_waits() looks: a result after this pokes again
            }
            for (int i = 0; i < 256 && (items[0].revents & ZMQ_POLLIN); ++i) {
                zmq::message_t identity;
                if (!router.recv(identity, zmq::recv_flags::dontwait)) break;
                std::vector<zmq::message_t> body;
                for (bool more = identity.more(); more;) {
                    zmq::message_t part;
                    if (!router.recv(part, zmq::recv_flags::none)) break;
                    more = part.more();
                    body.push_back(std::move(part));
                }
                std::string error;
                std::optional<json> request;
                if (body.size() != 1)
                    error = "a request is one frame";
                else
                    request = service::decode(body.front().to_string_view(), error);
                if (!request) {
                    wire::send_to(router, identity.to_string_view(),
                                  service::encode({{"ok", false}, {"error", error}}));
                    continue;
                }
                if (auto reply = handle(*request, identity.to_string(), stopping))
                    wire::send_to(router, identity.to_string_view(), service::encode(*reply));
            }
            answer_waits(router, stopping);
            send_reported(router);
            if (const auto now = std::chrono::steady_clock::now(); now >= next_expiry) {
                std::vector<std::vector<TaskSpec>> dead;
                {
                    std::lock_guard lock(mutex_);
                    dead.swap(retired_);
                }
                dead.clear();  // without the lock
                drop_silent_submits();
                if (view_) view_->state().set_jobs(live_jobs());
                next_expiry = now + std::chrono::milliseconds(200);
            }
        }
        engine.join();
        runner.reset();
        session.finish({});  // the page shows the server as over
        answer_waits(router, true);
        reporter.request_stop();
        reports_cv_.notify_all();
        reporter.join();
        send_reported(router);
        ::unlink(config_.socket.c_str());  // a client then says "no server there" at once
        if (!engine_error.empty()) {
            spdlog::error("the engine stopped: {}", engine_error);
            return static_cast<int>(ExitCode::TasksFailed);
        }
        fmt::print(stderr, "server stopped; jobs not done go on when it starts again with --state {}\n",
                   config_.state.string());
        return signals.signal() == SIGINT ? static_cast<int>(ExitCode::Interrupted) : static_cast<int>(ExitCode::Ok);
    }

private:
    // The plan the runner reads: every job's tasks in turn.
    class Source final : public PlanSource {
    public:
        explicit Source(Server& server) : server_(server) {}
        std::unique_ptr<TaskCursor> open() const override { return std::make_unique<Cursor>(server_); }

    private:
        Server& server_;
    };

    class Cursor final : public TaskCursor {
    public:
        explicit Cursor(Server& server) : server_(server) {}
        bool next(TaskSpec& task) override {
            std::unique_lock lock(server_.mutex_);
            while (true) {
                server_.queued_cv_.wait(lock, [&] { return server_.has_ready() || server_.shutting_down_; });
                if (server_.shutting_down_) return false;
                if (server_.pop(task)) return true;
                // Only tasks whose resources are taken: a result frees some and notifies.
                server_.queued_cv_.wait_for(lock, std::chrono::milliseconds(100));
            }
        }
        Take take(TaskSpec& task) override {
            std::lock_guard lock(server_.mutex_);
            if (server_.shutting_down_) return Take::End;
            if (server_.pop(task)) return Take::Task;
            // The wake-up is read under the lock that commit() writes it under: none is lost.
            std::uint64_t count = 0;
            while (::read(server_.wake_fd_, &count, sizeof count) < 0 && errno == EINTR) {
            }
            return Take::Later;
        }
        int ready_fd() const override { return server_.wake_fd_; }

    private:
        Server& server_;
    };

    class ServerSink final : public ResultSink {
    public:
        explicit ServerSink(Server& server) : server_(server) {}

        bool wants_task_starts() const override { return true; }
        void on_task_started(const RunEvent& event) override {
            if (event.kind == RunEvent::Kind::TaskStarted) server_.task_started(event);
        }

    protected:
        // The live view's one mode counts every job's tasks not done when the engine starts,
        // then each job's as it is committed (LiveState::add_tasks()); this sink comes before
        // the view's, whose begin_mode() takes the count (set_tasks()).
        void begin_mode_(const std::string&, std::size_t) override { server_.count_for_view(); }
        void sink_it_(const TaskSpec& task, const TaskResult& result) override { server_.result(task, result); }

    private:
        Server& server_;
    };

    static void poke(int fd) {
        const std::uint64_t one = 1;
        while (::write(fd, &one, sizeof one) < 0 && errno == EINTR) {
        }
    }

    // The state directory and the socket are each one server's: a second one is refused
    // rather than left to take over the first's socket or append to its journals.
    void take_locks() {
        lock_fd_ = lock(config_.state / "lock", "--state", config_.state);
        socket_lock_fd_ = lock(config_.socket.string() + ".lock", "--socket", config_.socket);
    }

    static int lock(const fs::path& path, const char* flag, const fs::path& what) {
        const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
            throw ConfigError(
                fmt::format("{} '{}': cannot open its lock: {}", flag, printable(what.string()), std::strerror(errno)));
        if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
            ::close(fd);
            throw ConfigError(fmt::format("{} '{}': another server uses it", flag, printable(what.string())));
        }
        return fd;
    }

    // "4 workers", "2 workers and remote ones (--listen tcp://...)", "4 workers in one Slurm job step".
    std::string workers_text() const {
        if (config_.step)
            return fmt::format("{} workers in one {}", config_.step->tasks, step_noun(config_.step->launcher));
        const std::string local = fmt::format("{} workers", config_.workers);
        return config_.listen.empty() ? local : fmt::format("{} and remote ones (--listen {})", local, config_.listen);
    }

    // Under mutex_.
    bool has_ready() const {
        for (const std::uint64_t id : ready_) {
            const Job& job = jobs_.at(id);
            if (!job.todo.empty() && !job.cancelled && fits(admitted(job, job.todo.front()))) return true;
        }
        return false;
    }

    // What the workers have, {"cpus": 2, "mem": 7936, "slot": 2, "gpu": 2}, and (in "in_use")
    // how much of it the running tasks hold.
    json resources_json() const {
        json have = json::object();
        for (const auto& [name, amount] : config_.resources->counts()) have[name] = amount;
        have[std::string(kGpuResource)] = config_.resources->gpus().size();
        return have;
    }

    // Under mutex_: what task `index` of `job` holds while it runs: what it asks for, and, when
    // it asks for no "mem" and the workers have some, as much as the job's tasks took at
    // most so far (their peak RSS; none before one of them ended), at most all of it, so that
    // it always fits alone (decision 230).
    ResourceRequest admitted(const Job& job, std::uint32_t index) const {
        ResourceRequest request = job.tasks[index].resources;
        if (job.peak_mib == 0) return request;
        const std::uint64_t mem = config_.resources->amount(kMem);
        if (mem == 0) return request;
        for (const auto& [name, amount] : request)
            if (name == kMem) return request;
        const auto at = std::lower_bound(request.begin(), request.end(), kMem,
                                         [](const ResourceAmount& a, std::string_view name) { return a.name < name; });
        request.insert(at, {std::string(kMem), std::min(job.peak_mib, mem)});
        return request;
    }

    // For explain: where a "mem" the task did not ask for comes from.
    std::string mem_note(const Job& job, std::uint32_t index) const {
        if (admitted(job, index).size() == job.tasks[index].resources.size()) return "";
        return fmt::format(" (mem: the peak memory of this job's tasks so far, {} MiB)", job.peak_mib);
    }

    // For the live page (every 200 ms): the jobs not done and the last kLiveDoneJobs done, newest
    // first, and what the workers have and the running tasks hold.
    json live_jobs() {
        constexpr std::size_t kLiveDoneJobs = 20;
        std::lock_guard lock(mutex_);
        json jobs = json::array();
        std::size_t done = 0;
        for (auto it = jobs_.rbegin(); it != jobs_.rend(); ++it) {
            const Job& job = it->second;
            if (!job.committed || (job.done() && ++done > kLiveDoneJobs)) continue;
            json summary = job.summary();
            // What `explain JOB` says, for a job not done: why its tasks wait.
            std::string why;
            if (!job.done())
                for (const json& line : explain(job, std::nullopt))
                    why += (why.empty() ? "" : "; ") + line.get<std::string>();
            jobs.push_back({{"job", summary["job"]},
                            {"name", summary["name"]},
                            {"state", summary["state"]},
                            {"tasks", summary["tasks"]},
                            {"ok", summary["ok"]},
                            {"failed", summary["failed"]},
                            {"running", summary["running"]},
                            {"waiting", summary["waiting"]},
                            {"why", std::move(why)}});
        }
        return {{"jobs", std::move(jobs)}, {"resources", resources_json()}, {"in_use", in_use_}};
    }

    // The live view's count: the tasks of committed jobs without a final result, under the
    // lock that commits (and their add_tasks()) take, so that none is counted twice or lost.
    void count_for_view() {
        if (!view_) return;
        std::lock_guard lock(mutex_);
        std::size_t count = 0;
        for (const auto& [id, job] : jobs_)
            if (job.committed) count += job.total - job.finished;
        view_->state().set_tasks(count);
    }

    // Under mutex_: whether the resources `request` asks for are free now (among the server's
    // workers, less what the tasks handed out hold).
    bool fits(const ResourceRequest& request) const {
        for (const auto& [name, amount] : request) {
            const auto used = in_use_.find(name);
            if ((used == in_use_.end() ? 0 : used->second) + amount > config_.resources->amount(name)) return false;
        }
        return true;
    }

    // Under mutex_: the next task of the job whose turn it is, with an id of the server's own.
    // A job whose next task's resources are taken lets the next job have the turn.
    bool pop(TaskSpec& task) {
        // Jobs whose next task does not fit now, put back in the ring as they were found.
        std::vector<std::uint64_t> passed;
        bool found = false;
        while (!ready_.empty()) {
            // The first job of the highest priority among those waiting; the ring keeps turns
            // within a priority.
            auto at = ready_.begin();
            for (auto it = ready_.begin(); it != ready_.end(); ++it)
                if (jobs_.at(*it).priority > jobs_.at(*at).priority) at = it;
            const std::uint64_t id = *at;
            ready_.erase(at);
            Job& job = jobs_.at(id);
            if (job.todo.empty() || job.cancelled) continue;
            const std::uint32_t index = job.todo.front();
            ResourceRequest holds = admitted(job, index);
            if (!fits(holds)) {
                passed.push_back(id);
                continue;
            }
            job.todo.pop_front();
            if (!job.todo.empty()) ready_.push_back(id);  // its next task waits for the other jobs' turns
            task = job.tasks[index];
            task.after.clear();  // the server held it until they were ok: the engine's ids are others
            task.id = next_task_++;
            for (const auto& [name, amount] : holds) in_use_[name] += amount;
            live_.emplace(task.id, Live{id, index, false, std::move(holds)});
            ++job.handed;
            found = true;
            break;
        }
        ready_.insert(ready_.begin(), passed.begin(), passed.end());
        return found;
    }

    // A result from the engine (any thread).
    void result(const TaskSpec& task, const TaskResult& result) {
        std::lock_guard lock(mutex_);
        const auto found = live_.find(task.id);
        if (found == live_.end()) return;
        const auto job_id = found->second.job;
        const auto index = found->second.index;
        Job& job = jobs_.at(job_id);
        if (found->second.started) {  // a retry begins again (a start of its own); a final result ends it
            found->second.started = false;
            --job.started;
        }
        if (result.cost.max_rss_kb > 0)
            job.peak_mib = std::max<std::uint64_t>(job.peak_mib,
                                                   (static_cast<std::uint64_t>(result.cost.max_rss_kb) + 1023) / 1024);
        if (!result.retrying) {
            const ResourceRequest held = std::move(found->second.holds);
            live_.erase(found);
            --job.handed;
            if (!held.empty()) {
                for (const auto& [name, amount] : held) in_use_[name] -= amount;
                poke(wake_fd_);  // a task that waits for them may fit now
                queued_cv_.notify_all();
            }
            // Stopping: a task cut short is not done; the journal does not say it is, so it
            // runs again when the server starts again.
            if (shutting_down_ && !result.ok && !job.cancelled) return;
        }
        if (!job.journal || job.final[index]) return;
        TaskSpec local = task;
        local.id = index;
        TaskResult mine = result;
        mine.id = index;
        job.journal->on_result(local, mine);
        if (!result.retrying) record(job, local, mine);
    }

    // A task began on a worker (any thread): until then it is one a worker holds ahead.
    void task_started(const RunEvent& event) {
        std::lock_guard lock(mutex_);
        const auto found = live_.find(event.task);
        if (found == live_.end() || found->second.started) return;
        found->second.started = true;
        ++jobs_.at(found->second.job).started;
    }

    // Under mutex_: `result` is in the job's journal; now clients may see it.
    void record(Job& job, const TaskSpec& task, const TaskResult& result) {
        job.final[task.id] = result.ok ? 1 : 2;
        ++job.finished;
        (result.ok ? job.ok : job.failed) += 1;
        job.fresh.push_back({task.id, kind_name(result), result.ok, result.cancelled, result.attempt, result.worker,
                             result.value, result.error});
        // Its dependents, which may finish the job (and unload it) themselves.
        if (!job.dependents.empty() && !job.done()) settle(job, static_cast<std::uint32_t>(task.id));
        if (job.done() && !job.unloaded) {
            job.journal.reset();
            unload(job);
            release_dependents();
        }
        // Only a parked wait that takes this result (not a `wait -q`, which wants the end
        // only) needs the loop now, and one wake-up serves every result until the loop has
        // read it: not a system call and a context switch per result.
        if (!loop_poked_ && !waits_.empty() && std::any_of(waits_.begin(), waits_.end(), [&](const Wait& wait) {
                return wait.job == job.id && (wait.results || job.done());
            })) {
            loop_poked_ = true;
            poke(loop_fd_);
        }
    }

    // Under mutex_: task `index` of `job` has its final result: each task waiting for it is
    // ready once none of its dependencies is left, or fails, not run, when this one failed
    // (and so on down the chain, without recursion: a chain may be a job long).
    void settle(Job& job, std::uint32_t index) {
        std::vector<std::uint32_t> done{index};
        while (!done.empty() && !job.unloaded) {
            const std::uint32_t before = done.back();
            done.pop_back();
            const auto waiting = job.dependents.find(before);
            if (waiting == job.dependents.end()) continue;
            const std::vector<std::uint32_t> after = std::move(waiting->second);
            job.dependents.erase(waiting);
            const bool ok = job.final[before] == 1;
            for (const std::uint32_t task : after) {
                const auto count = job.blocked.find(task);
                if (count == job.blocked.end()) continue;  // failed already, by another dependency
                if (ok && --count->second > 0) continue;
                job.blocked.erase(count);
                if (ok) {
                    if (job.todo.empty() && job.released && !job.cancelled) {
                        ready_.push_back(job.id);
                        if (wake_fd_ >= 0) poke(wake_fd_);
                        queued_cv_.notify_all();
                    }
                    job.todo.push_back(task);
                    continue;
                }
                record_not_run(job, task, fmt::format("not run: dependency {} failed", before), false);
                done.push_back(task);
            }
        }
    }

    // Under mutex_: task `index`, never handed out, is recorded as not run (failed), or as
    // cancelled, with `why`.
    void record_not_run(Job& job, std::uint32_t index, const std::string& why, bool as_cancelled) {
        TaskSpec task = job.tasks[index];
        task.id = index;
        TaskResult result;
        result.id = index;
        result.type = task.type;
        result.attempt = 0;
        if (as_cancelled) result = cancelled(std::move(result));
        if (!why.empty()) result.error = why;
        if (job.journal) job.journal->on_result(task, result);
        if (view_ && wake_fd_ >= 0) view_->state().add_tasks(-1);  // it never reaches a worker: not in the count
        // Not record()'s settle(): the caller goes down the chain itself.
        auto dependents = std::exchange(job.dependents, {});
        record(job, task, result);
        if (!job.unloaded) job.dependents = std::move(dependents);
    }

    // Under mutex_: each task of a committed job whose result is not final goes to `todo`, or
    // waits for its dependencies (`blocked`), or, one of them not ok, fails, not run.
    void arrange(Job& job) {
        job.todo.clear();
        job.blocked.clear();
        job.dependents.clear();
        for (std::uint32_t i = 0; i < job.total && !job.unloaded; ++i) {
            if (job.final[i]) continue;
            std::uint32_t waits = 0;
            std::optional<TaskId> failed;
            for (const TaskId before : job.tasks[i].after) {
                if (job.final[before] == 2) failed = before;
                if (job.final[before] == 0) {
                    ++waits;
                    job.dependents[static_cast<std::uint32_t>(before)].push_back(i);
                }
            }
            if (failed) {
                // Undo what this task put in `dependents`: it is done now.
                for (const TaskId before : job.tasks[i].after)
                    if (auto at = job.dependents.find(static_cast<std::uint32_t>(before)); at != job.dependents.end())
                        std::erase(at->second, i);
                record_not_run(job, i, fmt::format("not run: dependency {} failed", *failed), false);
            } else if (waits > 0) {
                job.blocked.emplace(i, waits);
            } else {
                job.todo.push_back(i);
            }
        }
    }

    // Under mutex_: each held job whose dependencies are all done now runs, or, when one
    // ended otherwise than it asked (afterok of a job with failures, afternotok of one
    // without), has its tasks recorded as not run, with the reason.
    void release_dependents() {
        for (auto& [id, job] : jobs_) release(job);
    }

    void release(Job& job) {
        if (job.released || !job.committed) return;
        std::string why;
        for (const Dependency& dependency : job.after) {
            const auto found = jobs_.find(dependency.job);
            if (found == jobs_.end()) {
                why = fmt::format("not run: job {} is gone (--{} {})", dependency.job, if_name(dependency.when),
                                  dependency.job);
                break;
            }
            const Job& before = found->second;
            if (!before.done()) return;  // still held
            if (dependency.when == Dependency::If::Ok && before.failed > 0)
                why = fmt::format("not run: job {} had {} task(s) not ok (--afterok {})", before.id, before.failed,
                                  before.id);
            if (dependency.when == Dependency::If::NotOk && before.failed == 0)
                why = fmt::format("not run: job {} had every task ok (--afternotok {})", before.id, before.id);
            if (!why.empty()) break;
        }
        job.released = true;
        if (why.empty()) {
            if (!job.todo.empty() && !job.cancelled) {
                ready_.push_back(job.id);
                if (wake_fd_ >= 0) poke(wake_fd_);
                queued_cv_.notify_all();
            }
            return;
        }
        spdlog::info("job {}: {}", job.id, why);
        job.skipped = why;
        cancel_waiting(job, why);
    }

    // The fresh results made into what clients see, after `results`.
    static void materialize(std::uint64_t job, std::vector<Fresh>& fresh, std::vector<json>& results,
                            std::vector<std::size_t>& sizes) {
        for (Fresh& one : fresh) {
            json line = {{"id", one.id},
                         {"kind", std::move(one.kind)},
                         {"ok", one.ok},
                         {"attempt", one.attempt},
                         {"worker", std::move(one.worker)},
                         {"value", std::move(one.value)},
                         {"error", std::move(one.error)}};
            if (one.cancelled) line["cancelled"] = true;
            add_result(results, sizes, client_result(job, line));
        }
        fresh.clear();
    }

    static void add_result(std::vector<json>& results, std::vector<std::size_t>& sizes, json result) {
        // The size it takes in a reply, near enough (strings counted whole, as msgpack holds them).
        const std::size_t size = 64 + result["value"].dump(-1, ' ', false, json::error_handler_t::replace).size() +
                                 result.value("error", std::string()).size();
        results.push_back(std::move(result));
        sizes.push_back(size);
    }

    // Under mutex_: the job's tasks not handed out yet are cancelled, recorded as such.
    std::size_t cancel_waiting(Job& job, const std::string& why = {}) {
        std::vector<std::uint32_t> waiting(job.todo.begin(), job.todo.end());
        for (const auto& [index, count] : job.blocked) waiting.push_back(index);
        std::sort(waiting.begin(), waiting.end());
        job.todo.clear();
        job.blocked.clear();
        job.dependents.clear();  // none of them runs: none waits for another any more
        for (const std::uint32_t index : waiting)
            if (!job.unloaded) record_not_run(job, index, why, true);
        return waiting.size();
    }

    // Reads every job of the state directory back (at start, before any thread).
    void load_jobs() {
        std::error_code ec;
        // In id order: a job waits only for older ones, which are then read back first.
        std::map<std::uint64_t, fs::path> found;
        for (const auto& entry : fs::directory_iterator(config_.state / "jobs", ec)) {
            const std::string name = entry.path().filename().string();
            if (name.empty() || name.size() > 18 || name.find_first_not_of("0123456789") != std::string::npos) continue;
            if (const auto id = parse_whole<std::uint64_t>(name)) found.emplace(*id, entry.path());
        }
        for (const auto& [id, dir] : found) {
            next_job_ = std::max(next_job_, id + 1);
            if (!fs::exists(dir / "committed")) {
                // Its submit never finished: nobody was told its id.
                fs::remove_all(dir, ec);
                continue;
            }
            try {
                load_job(id, dir);
            } catch (const std::exception& e) {
                spdlog::error("job {}: cannot read it back, so it is left out: {}", id, e.what());
                jobs_.erase(id);
            }
        }
        for (auto& [id, job] : jobs_)
            if (!job.todo.empty() && job.released && !job.cancelled) ready_.push_back(id);
        release_dependents();
    }

    void load_job(std::uint64_t id, const fs::path& dir) {
        Job& job = jobs_[id];
        job.id = id;
        job.dir = dir;
        job.committed = true;
        job.cancelled = fs::exists(dir / "cancelled");
        {
            std::ifstream in(dir / "job.json");
            const json head = json::parse(in, nullptr, false);
            if (head.is_object()) {
                job.name = head.value("name", std::string());
                job.submitted = head.value("submitted", 0.0);
                job.priority = head.value("priority", 0);
                job.after = dependencies(head.value("after", json::array()));
                job.released = job.after.empty();
            }
        }
        {
            const fs::path path = dir / "tasks.jsonl";
            std::ifstream in(path, std::ios::binary);
            JournalLineReader reader(in, "serve", path.string());
            std::string text;
            while (reader.next(text)) {
                const json line = parse_journal_line(text, reader.where());
                job.tasks.push_back(task_of(line, job.tasks.size()));
            }
        }
        job.total = job.tasks.size();
        job.final.assign(job.total, 0);
        const fs::path journal = dir / "results.jsonl";
        if (fs::exists(journal)) {
            // A line torn by a kill is cut off, so that appending goes on from a clean line end.
            cut_torn_line(journal, "serve");
            read_results(job, job.results, job.sizes);
        }
        if (!job.done()) open_journal(job);
        arrange(job);  // a dependency that failed before the restart fails its dependents now
        if (job.cancelled && !job.unloaded) cancel_waiting(job);
        if (job.done() && !job.unloaded) unload(job);
    }

    // The final results in the job's journal, in its order, as clients see them; while the job
    // is loaded, its counts too.
    void read_results(Job& job, std::vector<json>& results, std::vector<std::size_t>& sizes) {
        const fs::path journal = job.dir / "results.jsonl";
        std::ifstream in(journal, std::ios::binary);
        JournalLineReader reader(in, "serve", journal.string(), complete_length(journal, "serve"));
        std::vector<std::uint8_t> seen(job.total, 0);
        std::string text;
        while (reader.next(text)) {
            const json line = parse_journal_line(text, reader.where());
            check_journal_line(line, reader.where());
            if (line.contains("event") || line.value("retrying", false)) continue;
            const auto index = line.at("id").get<std::uint64_t>();
            if (index >= job.total || seen[index]) continue;
            seen[index] = 1;
            if (!job.unloaded) {
                if (const auto cost = line.find("cost"); cost != line.end() && cost->is_object())
                    if (const auto rss = cost->find("max_rss_kb"); rss != cost->end() && rss->is_number_unsigned())
                        job.peak_mib = std::max<std::uint64_t>(job.peak_mib, (rss->get<std::uint64_t>() + 1023) / 1024);
                job.final[index] = line.value("ok", false) ? 1 : 2;
                ++job.finished;
                (line.value("ok", false) ? job.ok : job.failed) += 1;
            }
            add_result(results, sizes, client_result(job.id, line));
        }
    }

    // A job that is done: its tasks and results leave memory. Its results become the one
    // job's kept for waits (results_of()): a wait that is behind, as most are when a job of
    // short tasks ends, then does not read them back from the journal (it cost a fifth of
    // the server's time on 20,000 no-op tasks).
    void unload(Job& job) {
        job.unloaded = true;
        if (job.journal == nullptr && job.results.size() + job.fresh.size() == job.total) {
            cached_results_ = std::move(job.results);
            cached_sizes_ = std::move(job.sizes);
            cached_fresh_ = std::move(job.fresh);
            cached_job_ = job.id;
        }
        // Freed by the loop, not here on the engine's thread (20,000 tasks take a while).
        retired_.push_back(std::move(job.tasks));
        std::vector<Fresh>().swap(job.fresh);
        std::vector<TaskSpec>().swap(job.tasks);
        std::vector<std::uint8_t>().swap(job.final);
        job.todo.clear();
        job.blocked.clear();
        job.dependents.clear();
        std::vector<json>().swap(job.results);
        std::vector<std::size_t>().swap(job.sizes);
    }

    // Under mutex_: the results a wait reads, from memory or, for a job that is done, from its
    // journal (the last one read is kept, as a wait reads a job's results chunk by chunk).
    std::pair<const std::vector<json>*, const std::vector<std::size_t>*> results_of(Job& job) {
        if (!job.unloaded) {
            materialize(job.id, job.fresh, job.results, job.sizes);
            return {&job.results, &job.sizes};
        }
        if (cached_job_ != job.id) {
            cached_results_.clear();
            cached_sizes_.clear();
            cached_fresh_.clear();
            cached_job_ = 0;
            read_results(job, cached_results_, cached_sizes_);
            cached_job_ = job.id;
        }
        materialize(job.id, cached_fresh_, cached_results_, cached_sizes_);
        return {&cached_results_, &cached_sizes_};
    }

    void open_journal(Job& job) {
        job.journal = std::make_unique<JournalSink>(job.dir / "results.jsonl", /*create=*/true);
        job.journal->begin_mode(std::string(to_string(Mode::Processes)), job.tasks.size());
    }

    // A task of a submit or of tasks.jsonl: {"kind": TYPE, "params": {...}, "timeout_s": S}.
    TaskSpec task_of(const json& line, std::size_t index) const {
        if (!line.is_object() || !line.contains("kind") || !line.at("kind").is_string())
            throw std::invalid_argument(fmt::format("task {}: no \"kind\"", index));
        const TaskType* type = program_.registry.find(line.at("kind").get<std::string>());
        if (!type)
            throw std::invalid_argument(fmt::format("task {}: this server knows no type '{}' (it knows {})", index,
                                                    printable(line.at("kind").get<std::string>()),
                                                    program_.registry.names_text()));
        TaskSpec task;
        task.type = type;
        task.id = index;
        // As the client's make_plan() made them (a plan line parsed, a generated task as its
        // type made it): not parsed again here, as a run does not parse a generated task; a
        // task whose parameters its type refuses fails when it runs, as one from the wire does.
        task.params = line.contains("params") ? line.at("params") : json::object();
        if (!task.params.is_object())
            throw std::invalid_argument(fmt::format("task {}: \"params\" must be an object", index));
        const json timeout = line.contains("timeout_s") ? line.at("timeout_s") : json(0);
        if (!timeout.is_number() || timeout.get<double>() < 0)
            throw std::invalid_argument(fmt::format("task {}: \"timeout_s\" must be a number >= 0", index));
        task.timeout_s = timeout.get<double>();
        // "after": earlier tasks of the job, each once (so never a cycle); "resources": counts
        // the server's workers have (docs/resources.md).
        if (line.contains("after")) {
            const json& after = line.at("after");
            if (!after.is_array()) throw std::invalid_argument(fmt::format("task {}: \"after\" must be a list", index));
            for (const json& before : after) {
                if (!before.is_number_unsigned() || before.get<std::uint64_t>() >= index)
                    throw std::invalid_argument(
                        fmt::format("task {}: \"after\": {} is not a task before it", index, before.dump()));
                if (std::find(task.after.begin(), task.after.end(), before.get<TaskId>()) != task.after.end())
                    throw std::invalid_argument(
                        fmt::format("task {}: \"after\": {} given twice", index, before.dump()));
                task.after.push_back(before.get<TaskId>());
            }
        }
        if (line.contains("resources")) {
            try {
                task.resources = resources_from_json(line.at("resources"));
            } catch (const std::invalid_argument& e) {
                throw std::invalid_argument(fmt::format("task {}: {}", index, e.what()));
            }
            if (const std::string why = config_.resources->unmet(task.resources); !why.empty())
                throw std::invalid_argument(fmt::format("task {}: {}", index, why));
        }
        return task;
    }

    // A task as tasks.jsonl holds it and a submit sends it.
    static json task_line(const TaskSpec& task) {
        json line = {{"kind", task.type->name()}, {"params", task.params}, {"timeout_s", task.timeout_s}};
        if (!task.after.empty()) line["after"] = task.after;
        if (!task.resources.empty()) {
            json resources = json::object();
            for (const auto& [name, amount] : task.resources) resources[name] = amount;
            line["resources"] = std::move(resources);
        }
        return line;
    }

    // [{"job": N, "if": "after|afterok|afternotok"}, ...]; throws std::invalid_argument.
    static std::vector<Dependency> dependencies(const json& list) {
        std::vector<Dependency> out;
        if (!list.is_array()) throw std::invalid_argument("\"after\" must be a list");
        for (const json& entry : list) {
            const auto when = entry.is_object() ? if_of(entry.value("if", std::string())) : std::nullopt;
            if (!when || !entry.contains("job") || !entry.at("job").is_number_unsigned())
                throw std::invalid_argument("a dependency is {\"job\": N, \"if\": \"after|afterok|afternotok\"}");
            out.push_back({entry.at("job").get<std::uint64_t>(), *when});
        }
        if (const std::string why = contradiction(out); !why.empty()) throw std::invalid_argument(why);
        return out;
    }

    // Under mutex_: the job's summary, with why it waits when it is held by a dependency.
    json summary_of(const Job& job) const {
        json out = job.summary();
        if (job.released || !job.committed) return out;
        std::string why;
        for (const Dependency& dependency : job.after) {
            const auto found = jobs_.find(dependency.job);
            if (found != jobs_.end() && found->second.done()) continue;
            why += fmt::format("{}job {} is not done (--{} {})", why.empty() ? "held: " : "; ", dependency.job,
                               if_name(dependency.when), dependency.job);
        }
        out["why"] = why;
        return out;
    }

    // Under mutex_: why the job's tasks (or task `one`) are not running, a line each, as
    // `hq task explain` says it: its dependencies, the resources it asks for, the priority or
    // the turns of other jobs, a worker's prefetch.
    json explain(const Job& job, std::optional<std::uint32_t> one) const {
        json lines = json::array();
        if (job.unloaded || job.done()) {
            lines.push_back(fmt::format("job {} is done: {}{}", job.id, job.state(),
                                        job.skipped.empty() ? std::string() : ": " + job.skipped));
            return lines;
        }
        std::map<std::uint32_t, bool> handed;  // task -> started
        for (const auto& [id, live] : live_)
            if (live.job == job.id) handed[live.index] = live.started;
        const auto wait_for = [&](std::uint32_t task) {
            std::vector<std::string> open;
            for (const TaskId before : job.tasks[task].after)
                if (!job.final[before]) open.push_back(std::to_string(before));
            return fmt::format("waits for task(s) {} of this job to end ok (its \"after\")", fmt::join(open, ", "));
        };
        // Why the job's next waiting task does not start now.
        const auto next_why = [&](std::uint32_t task) -> std::string {
            if (job.cancelled) return "its job is cancelled";
            if (!job.released) return summary_of(job).value("why", std::string("held by a dependency"));
            const ResourceRequest asks = admitted(job, task);
            if (!fits(asks)) {
                std::vector<std::string> taken;
                for (const auto& [name, amount] : asks) {
                    const auto used = in_use_.find(name);
                    taken.push_back(fmt::format("{} {} of {} held", name, used == in_use_.end() ? 0 : used->second,
                                                config_.resources->amount(name)));
                }
                return fmt::format("asks for {}, which is not free ({}): it starts when running tasks give it back{}",
                                   resources_text(asks), fmt::join(taken, ", "), mem_note(job, task));
            }
            for (const std::uint64_t other : ready_) {
                const Job& before = jobs_.at(other);
                if (before.priority > job.priority && !before.todo.empty())
                    return fmt::format("job {} has priority {}, above this job's {}: its tasks go first", other,
                                       before.priority, job.priority);
            }
            if (!asks.empty())
                return fmt::format("asks for {}, which is free: it goes to the next worker that holds no task{}",
                                   resources_text(asks), mem_note(job, task));
            return "its turn comes: the jobs with tasks waiting take turns, a task each, as workers ask";
        };
        if (one) {
            const std::uint32_t task = *one;
            std::string why;
            if (job.final[task])
                why = job.final[task] == 1 ? "done, ok" : "done, not ok";
            else if (const auto at = handed.find(task); at != handed.end())
                why = at->second ? "running on a worker"
                                 : "held by a worker, ahead of the task it runs (prefetch): it starts after that one";
            else if (job.blocked.contains(task))
                why = wait_for(task);
            else if (!job.todo.empty() && job.todo.front() == task)
                why = next_why(task);
            else
                why = fmt::format("{} task(s) of this job go before it; the next of them: {}",
                                  std::find(job.todo.begin(), job.todo.end(), task) - job.todo.begin(),
                                  job.todo.empty() ? std::string("-") : next_why(job.todo.front()));
            lines.push_back(fmt::format("task {}: {}", task, why));
            return lines;
        }
        std::size_t running = 0;
        for (const auto& [task, started] : handed) running += started ? 1 : 0;
        if (running > 0) lines.push_back(fmt::format("{} task(s) running", running));
        if (handed.size() > running)
            lines.push_back(fmt::format("{} task(s) held by workers ahead of the ones they run (prefetch)",
                                        handed.size() - running));
        if (!job.blocked.empty()) {
            const std::uint32_t first = std::min_element(job.blocked.begin(), job.blocked.end())->first;
            lines.push_back(fmt::format("{} task(s) wait for other tasks of this job; task {} {}", job.blocked.size(),
                                        first, wait_for(first)));
        }
        if (!job.todo.empty())
            lines.push_back(fmt::format("{} task(s) wait; the next, task {}: {}", job.todo.size(), job.todo.front(),
                                        next_why(job.todo.front())));
        return lines;
    }

    Job* find_job(const json& request, std::string& error) {
        if (!request.contains("job") || !request.at("job").is_number_unsigned()) {
            error = "no job id";
            return nullptr;
        }
        const auto found = jobs_.find(request.at("job").get<std::uint64_t>());
        if (found == jobs_.end() || !found->second.committed) {
            error = fmt::format("no job {}", request.at("job").get<std::uint64_t>());
            return nullptr;
        }
        return &found->second;
    }

    static json refuse(std::string error) { return {{"ok", false}, {"error", std::move(error)}}; }

    // One request; nullopt for a wait that is answered later.
    std::optional<json> handle(const json& request, const std::string& identity, bool stopping) {
        json reply;
        try {
            // Inside the try: an "op" that is not a string throws, and is refused like any bad request.
            const std::string op = request.value("op", std::string());
            reply = dispatch(op, request, identity, stopping);
        } catch (const std::exception& e) {
            reply = refuse(e.what());
        }
        if (reply.is_null()) return std::nullopt;
        if (request.contains("seq")) reply["seq"] = request.at("seq");
        return reply;
    }

    json dispatch(const std::string& op, const json& request, const std::string& identity, bool stopping) {
        std::unique_lock lock(mutex_);
        std::string error;
        if (op == "create") {
            if (stopping) return refuse("the server is stopping");
            const auto unfinished = static_cast<std::size_t>(
                std::count_if(jobs_.begin(), jobs_.end(), [](const auto& entry) { return !entry.second.done(); }));
            if (unfinished >= max_unfinished_)
                return refuse(
                    fmt::format("the server holds {} unfinished jobs, its most (half of `ulimit -n`, "
                                "less 64): submit again once some are done",
                                unfinished));
            // Only jobs submitted already: a job waits only for older ones, so there is no cycle.
            const std::vector<Dependency> after = dependencies(request.value("after", json::array()));
            for (const Dependency& dependency : after) {
                const auto found = jobs_.find(dependency.job);
                if (found == jobs_.end() || !found->second.committed)
                    return refuse(fmt::format("--{} {}: no such job", if_name(dependency.when), dependency.job));
            }
            const json priority = request.value("priority", json(0));
            if (!priority.is_number_integer() || priority.get<std::int64_t>() < -1000 ||
                priority.get<std::int64_t>() > 1000)
                return refuse("--priority must be a whole number from -1000 to 1000");
            Job& job = jobs_[next_job_];
            job.id = next_job_++;
            job.name = request.value("name", std::string());
            job.submitted = unix_now();
            job.priority = priority.get<int>();
            job.after = after;
            job.released = after.empty();
            job.dir = config_.state / "jobs" / std::to_string(job.id);
            fs::create_directory(job.dir);
            write_file_whole(job.dir / "job.json", json{{"name", job.name},
                                                        {"submitted", job.submitted},
                                                        {"priority", job.priority},
                                                        {"after", job.after_json()}}
                                                       .dump(-1, ' ', false, json::error_handler_t::replace));
            job.task_file.open(job.dir / "tasks.jsonl", std::ios::binary | std::ios::trunc);
            job.touched = std::chrono::steady_clock::now();
            // The client says it is alive at least this often while it makes and sends the tasks.
            return {{"ok", true}, {"job", job.id}, {"touch_s", config_.submit_timeout_s / 4}};
        }
        if (op == "add" || op == "commit" || op == "touch" || op == "drop") {
            if (!request.contains("job") || !request.at("job").is_number_unsigned()) return refuse("no job id");
            const auto found = jobs_.find(request.at("job").get<std::uint64_t>());
            if (found == jobs_.end() || found->second.committed)
                return refuse(fmt::format("no job being submitted with that id (one silent for {} s is dropped)",
                                          config_.submit_timeout_s));
            Job& job = found->second;
            job.touched = std::chrono::steady_clock::now();
            if (op == "touch") return {{"ok", true}};
            if (op == "drop") {  // the client gave up (a bad plan line after some were sent)
                drop_submitting(found);
                return {{"ok", true}};
            }
            try {
                if (op == "add") {
                    const json& tasks = request.contains("tasks") ? request.at("tasks") : json();
                    if (!tasks.is_array()) throw std::invalid_argument("no \"tasks\" array");
                    for (const json& line : tasks) {
                        TaskSpec task = task_of(line, job.tasks.size());
                        job.task_file << journal_line_text(task_line(task)) << '\n';
                        job.tasks.push_back(std::move(task));
                    }
                    job.task_file.flush();
                    if (!job.task_file) throw std::runtime_error("cannot write the job's tasks.jsonl");
                    return {{"ok", true}, {"tasks", job.tasks.size()}};
                }
                if (stopping) throw std::runtime_error("the server is stopping");
                if (job.tasks.empty()) throw std::invalid_argument("a job needs at least one task");
                job.task_file.close();
                if (!job.task_file) throw std::runtime_error("cannot write the job's tasks.jsonl");
                open_journal(job);
                write_file_whole(job.dir / "committed", "");
            } catch (const std::exception& e) {
                drop_submitting(found);  // the submit fails whole: nothing of it stays
                return refuse(e.what());
            }
            job.committed = true;
            job.total = job.tasks.size();
            job.final.assign(job.total, 0);
            // Counted before arrange() and release() may record some as not run (and uncount them).
            if (view_) view_->state().add_tasks(static_cast<std::int64_t>(job.total));
            arrange(job);
            if (job.released) {
                ready_.push_back(job.id);
                poke(wake_fd_);
                queued_cv_.notify_all();
            } else {
                release(job);  // its dependencies may be done already
            }
            spdlog::info("job {}: {} task(s) submitted", job.id, job.tasks.size());
            return {{"ok", true}, {"job", job.id}, {"tasks", job.tasks.size()}};
        }
        if (op == "report") {  // `logs JOB`: the job's journal, summed up as `coordinator report` does
            Job* job = find_job(request, error);
            if (!job) return refuse(error);
            ReportConfig report;
            report.journal = job->dir / "results.jsonl";
            if (request.contains("task")) {
                if (!request.at("task").is_number_unsigned()) return refuse("\"task\" must be a whole number");
                report.task = request.at("task").get<TaskId>();
            }
            const json slowest = request.value("slowest", json(5));
            if (!slowest.is_number_unsigned() || slowest.get<std::uint64_t>() > 1000)
                return refuse("\"slowest\" must be a whole number from 0 to 1000");
            report.slowest = slowest.get<int>();
            // Read on the reporter's thread, not here: a journal of a million lines would hold
            // every other client (and the waits) for a second or more. Its reply comes back
            // to the loop through `reported_`.
            reports_.push_back({identity, request.value("seq", json(nullptr)), job->id, std::move(report)});
            reports_cv_.notify_one();
            return nullptr;
        }
        if (op == "explain") {
            Job* job = find_job(request, error);
            if (!job) return refuse(error);
            std::optional<std::uint32_t> task;
            if (request.contains("task")) {
                const json& given = request.at("task");
                if (!given.is_number_unsigned() || given.get<std::uint64_t>() >= job->total)
                    return refuse(fmt::format("job {} has no task {} (it has {}: 0 to {})", job->id, given.dump(),
                                              job->total, job->total == 0 ? 0 : job->total - 1));
                task = given.get<std::uint32_t>();
            }
            return {{"ok", true}, {"job", job->id}, {"why", explain(*job, task)}};
        }
        if (op == "status") {
            json jobs = json::array();
            json why;
            if (request.contains("job")) {
                Job* job = find_job(request, error);
                if (!job) return refuse(error);
                jobs.push_back(summary_of(*job));
                why = explain(*job, std::nullopt);
            } else if (request.value("jobs", true)) {
                for (const auto& [id, job] : jobs_)
                    if (job.committed) jobs.push_back(summary_of(job));
            }
            return {{"ok", true},
                    {"pid", ::getpid()},
                    {"workers", config_.workers},
                    {"remote_workers", workers_endpoint_.empty() ? json(nullptr) : json(workers_endpoint_)},
                    {"state", config_.state.string()},
                    {"stopping", stopping},
                    {"resources", resources_json()},
                    {"in_use", in_use_},
                    {"explain", std::move(why)},
                    {"gpus", config_.resources->gpus()},
                    {"jobs", std::move(jobs)}};
        }
        if (op == "cancel") {
            Job* job = find_job(request, error);
            if (!job) return refuse(error);
            if (job->done())
                return {{"ok", true}, {"job", job->id}, {"queued", 0}, {"running", 0}, {"state", job->state()}};
            if (!job->cancelled) {
                write_file_whole(job->dir / "cancelled", "");
                job->cancelled = true;
            }
            std::size_t queued = cancel_waiting(*job);
            // Those handed to the engine: running on a worker, or held by one ahead of its
            // current task (prefetch), which never ran and count with the waiting ones.
            std::vector<TaskId> handed;
            std::set<TaskId> began;
            for (const auto& [task, live] : live_)
                if (live.job == job->id) {
                    handed.push_back(task);
                    if (live.started) began.insert(task);
                }
            const std::uint64_t id = job->id;
            lock.unlock();
            std::size_t stopped = 0;
            if (!handed.empty())
                for (const CancelOutcome& outcome : cancels_->request(handed, std::chrono::milliseconds(2000)))
                    if (outcome.cancelled) (began.contains(outcome.id) ? stopped : queued) += 1;
            return {{"ok", true}, {"job", id}, {"queued", queued}, {"running", stopped}};
        }
        if (op == "wait") {
            Job* job = find_job(request, error);
            if (!job) return refuse(error);
            const json from = request.value("from", json(0));
            if (!from.is_number_unsigned()) return refuse("\"from\" must be a whole number");
            const json results = request.value("results", json(true));
            if (!results.is_boolean()) return refuse("\"results\" must be true or false");
            waits_.push_back({identity, job->id, from.get<std::size_t>(), results.get<bool>(),
                              request.value("seq", json(nullptr)),
                              std::chrono::steady_clock::now() + service::kWaitPoll});
            poke(loop_fd_);
            return nullptr;
        }
        return refuse(fmt::format("unknown request '{}'", printable(op)));
    }

    // The reporter's thread: each `logs` request's journal summed up, as `coordinator report`
    // does, without the lock (results go on being written), the reply handed to the loop.
    void report_journals(std::stop_token stop) {
        std::unique_lock lock(mutex_);
        while (true) {
            reports_cv_.wait(lock, stop, [&] { return !reports_.empty(); });
            if (reports_.empty()) return;  // stopped
            Report request = std::move(reports_.front());
            reports_.pop_front();
            lock.unlock();
            json reply;
            try {
                reply = {{"ok", true}, {"job", request.job}, {"report", journal_report_json(request.config)}};
            } catch (const std::exception& e) {
                reply = {{"ok", false}, {"error", e.what()}};
            }
            if (!request.seq.is_null()) reply["seq"] = request.seq;
            std::string frame = service::encode(reply);
            lock.lock();
            reported_.emplace_back(std::move(request.identity), std::move(frame));
            poke(loop_fd_);
        }
    }

    // The loop: the reporter's replies, sent.
    void send_reported(zmq::socket_t& router) {
        std::vector<std::pair<std::string, std::string>> replies;
        {
            std::lock_guard lock(mutex_);
            replies.swap(reported_);
        }
        for (const auto& [identity, frame] : replies) wire::send_to(router, identity, frame);
    }

    // Under mutex_: a job whose submit did not finish leaves no trace (its client was told no id).
    void drop_submitting(std::map<std::uint64_t, Job>::iterator job) {
        job->second.task_file.close();
        std::error_code ec;
        fs::remove_all(job->second.dir, ec);
        jobs_.erase(job);
    }

    // Drops each job being submitted whose client said nothing for --submit-timeout: it was
    // killed or interrupted, and would otherwise hold its tasks and a descriptor until a restart.
    void drop_silent_submits() {
        std::lock_guard lock(mutex_);
        const auto limit = std::chrono::duration_cast<std::chrono::steady_clock::duration>(
            std::chrono::duration<double>(config_.submit_timeout_s));
        const auto now = std::chrono::steady_clock::now();
        for (auto job = jobs_.begin(); job != jobs_.end();) {
            const auto next = std::next(job);
            if (!job->second.committed && now - job->second.touched > limit) {
                spdlog::warn("job {}: its submit said nothing for {} s: dropped ({} task(s) sent)", job->first,
                             config_.submit_timeout_s, job->second.tasks.size());
                drop_submitting(job);
            }
            job = next;
        }
    }

    struct Wait {
        std::string identity;
        std::uint64_t job;
        std::size_t from;
        bool results;  // false (wait -q): only the end and the summary
        json seq;
        std::chrono::steady_clock::time_point deadline;
    };

    // Answers each wait that has something new, whose job is done, or that waited kWaitPoll.
    void answer_waits(zmq::socket_t& router, bool now) {
        std::vector<std::pair<std::string, std::string>> replies;
        {
            std::lock_guard lock(mutex_);
            const auto clock = std::chrono::steady_clock::now();
            for (auto wait = waits_.begin(); wait != waits_.end();) {
                Job& job = jobs_.at(wait->job);
                if (!job.done() && (!wait->results || job.results.size() + job.fresh.size() <= wait->from) && !now &&
                    clock < wait->deadline) {
                    ++wait;
                    continue;
                }
                if (!wait->results) {  // no results to read, from memory or the journal
                    json reply = {{"ok", true},         {"job", job.id},
                                  {"from", wait->from}, {"results", json::array()},
                                  {"done", job.done()}, {"summary", summary_of(job)}};
                    if (!wait->seq.is_null()) reply["seq"] = wait->seq;
                    replies.emplace_back(wait->identity, service::encode(reply));
                    wait = waits_.erase(wait);
                    continue;
                }
                const std::vector<json>* all = nullptr;
                const std::vector<std::size_t>* sizes = nullptr;
                try {
                    std::tie(all, sizes) = results_of(job);
                } catch (const std::exception& e) {
                    replies.emplace_back(wait->identity,
                                         service::encode({{"ok", false}, {"error", e.what()}, {"seq", wait->seq}}));
                    wait = waits_.erase(wait);
                    continue;
                }
                json results = json::array();
                std::size_t bytes = 0;
                std::size_t at = wait->from;
                for (; at < all->size(); ++at) {
                    if (!results.empty() &&
                        (bytes + (*sizes)[at] > service::kReplyBytes || results.size() >= service::kChunkTasks))
                        break;
                    bytes += (*sizes)[at];
                    results.push_back((*all)[at]);
                }
                json reply = {{"ok", true},
                              {"job", job.id},
                              {"from", wait->from},
                              {"results", std::move(results)},
                              {"done", job.done() && at >= all->size()},
                              {"summary", summary_of(job)}};
                if (!wait->seq.is_null()) reply["seq"] = wait->seq;
                replies.emplace_back(wait->identity, service::encode(reply));
                wait = waits_.erase(wait);
            }
        }
        for (const auto& [identity, frame] : replies) wire::send_to(router, identity, frame);
    }

    const ProgramInfo& program_;
    ServeConfig config_;
    std::string workers_endpoint_;  // where remote workers connect (--listen, --launch); empty: none
    Json settings_;
    int lock_fd_ = -1;
    std::size_t max_unfinished_ = 100'000;  // jobs not done at once (each holds its journal open)
    int socket_lock_fd_ = -1;
    int wake_fd_ = -1;  // the cursor's: a task may be ready
    int loop_fd_ = -1;  // the main loop's: a result came, or the engine ended

    std::mutex mutex_;
    std::condition_variable queued_cv_;
    std::map<std::uint64_t, Job> jobs_;
    std::uint64_t next_job_ = 1;
    std::deque<std::uint64_t> ready_;  // jobs with waiting tasks, in turn
    struct Live {
        std::uint64_t job;
        std::uint32_t index;
        bool started;           // begun on a worker (not only held ahead by one)
        ResourceRequest holds;  // what it holds until its final result (admitted())
    };
    std::unordered_map<TaskId, Live> live_;        // server id -> job, index
    std::map<std::string, std::uint64_t> in_use_;  // resources the tasks handed out hold
    TaskId next_task_ = 0;
    bool shutting_down_ = false;
    std::vector<Wait> waits_;       // parked waits, under mutex_
    bool loop_poked_ = false;       // loop_fd_ was written and the loop has not read it yet
    std::uint64_t cached_job_ = 0;  // whose results below are read back from its journal; 0: none
    std::vector<json> cached_results_;
    std::vector<std::size_t> cached_sizes_;
    std::vector<Fresh> cached_fresh_;
    std::vector<std::vector<TaskSpec>> retired_;  // tasks of jobs done, for the loop to free
    struct Report {                               // a `logs` request, for the reporter's thread
        std::string identity;
        json seq;
        std::uint64_t job;
        ReportConfig config;
    };
    std::deque<Report> reports_;                                 // under mutex_
    std::condition_variable_any reports_cv_;                     // a report to make, or stop
    std::vector<std::pair<std::string, std::string>> reported_;  // replies for the loop, under mutex_
    CancelBoard* cancels_ = nullptr;                             // the session's, while run() runs
    LiveView* view_ = nullptr;                                   // --ui: the session's, while run() runs
};

}  // namespace

int serve(const ProgramInfo& program, const ServeConfig& config) {
    if (!config.log_level.empty()) set_log_level(config.log_level);
    Server server(program, config);
    return server.run();
}

}  // namespace taskfarm
