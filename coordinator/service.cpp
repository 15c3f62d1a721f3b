// The service's clients (submit, status, jobs, wait, cancel), its messages, and the choice of
// subcommand; the server is serve.cpp.

#include "service.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <string_view>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <msgpack.hpp>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "checks.hpp"
#include "config.hpp"
#include "errors.hpp"
#include "json_msgpack.hpp"
#include "log.hpp"
#include "plan_sources.hpp"
#include "protocol.hpp"
#include "serve.hpp"
#include "text.hpp"
#include "wire.hpp"

namespace taskfarm {
namespace service {

using nlohmann::json;

std::string encode(const json& message) {
    msgpack::sbuffer buffer;
    msgpack::pack(buffer, message);
    return {buffer.data(), buffer.size()};
}

std::optional<json> decode(std::string_view frame, std::string& error) {
    if (frame.size() > proto::kMaxFrameBytes) {
        error = fmt::format("a message of {} bytes is over the limit of {}", frame.size(), proto::kMaxFrameBytes);
        return std::nullopt;
    }
    // As the protocol's decode(): the defaults would let one bad frame ask for gigabytes.
    const msgpack::unpack_limit limits(/*array=*/proto::kMaxBatch, /*map=*/proto::kMaxBatch,
                                       /*str=*/proto::kMaxFrameBytes, /*bin=*/proto::kMaxFrameBytes, /*ext=*/0,
                                       /*depth=*/32);
    try {
        std::size_t offset = 0;
        const msgpack::object_handle handle =
            msgpack::unpack(frame.data(), frame.size(), offset, nullptr, nullptr, limits);
        if (offset != frame.size()) {
            error = "trailing bytes after the message";
            return std::nullopt;
        }
        if (handle.get().type != msgpack::type::MAP) {
            error = "a message is a map";
            return std::nullopt;
        }
        return handle.get().as<json>();
    } catch (const std::exception& e) {
        error = fmt::format("malformed message: {}", e.what());
        return std::nullopt;
    }
}

std::filesystem::path default_socket() {
    if (const char* given = std::getenv("TASKFARM_SOCKET"); given && *given) return given;
    if (const char* runtime = std::getenv("XDG_RUNTIME_DIR"); runtime && *runtime)
        return std::filesystem::path(runtime) / "taskfarm" / "socket";
    return std::filesystem::path(fmt::format("/tmp/taskfarm-{}", ::getuid())) / "socket";
}

std::string untrusted(const std::filesystem::path& dir) {
    struct stat info {};
    if (::lstat(dir.c_str(), &info) != 0) return std::strerror(errno);
    if (S_ISLNK(info.st_mode)) return "a symbolic link, not a directory";
    if (!S_ISDIR(info.st_mode)) return "not a directory";
    if (info.st_uid != ::getuid())
        return fmt::format("owned by uid {}, not by this user (uid {})", info.st_uid, ::getuid());
    if ((info.st_mode & 077) != 0) return fmt::format("mode {:04o}, not 0700", info.st_mode & 07777);
    return {};
}

}  // namespace service

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string dump(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

// A client's connection: one request at a time, each with a number its reply carries back,
// so that a late reply to an earlier request (the server was slow, or restarted) is dropped.
class Client {
public:
    explicit Client(fs::path socket) : socket_path_(std::move(socket)) {
        const fs::path dir = socket_path_.parent_path();
        // Only a directory of this user's, 0700: another user's could hold a server that
        // reads what we submit.
        if (const std::string why = service::untrusted(dir); !why.empty())
            throw ConfigError(fmt::format("--socket '{}': its directory {}", printable(socket_path_.string()), why));
        struct stat info {};
        if (::lstat(socket_path_.c_str(), &info) != 0 || !S_ISSOCK(info.st_mode))
            throw ConfigError(
                fmt::format("--socket '{}': no server there (start one with `coordinator serve "
                            "--socket {}`)",
                            printable(socket_path_.string()), printable(socket_path_.string())));
        connect();
    }

    // The reply, or nullopt when none came within kSilence.
    std::optional<json> ask(const json& request) { return reply_to(post(request)); }

    // Sends `request` without waiting for its reply: its number, for reply_to().
    std::uint64_t post(json request) {
        request["seq"] = ++seq_;
        if (!wire::send(*socket_, service::encode(request)))
            throw RunError(fmt::format("cannot send to the server at {}", socket_path_.string()));
        return seq_;
    }

    // The reply to request `seq`, or nullopt when none came within kSilence; replies to
    // requests before it are dropped (so collect several in the order they were posted).
    std::optional<json> reply_to(std::uint64_t seq) {
        const auto deadline = std::chrono::steady_clock::now() + service::kSilence;
        while (true) {
            zmq::pollitem_t items[] = {{socket_->handle(), 0, ZMQ_POLLIN, 0}};
            zmq::poll(items, 1, wire::poll_timeout(deadline));
            if (!(items[0].revents & ZMQ_POLLIN)) return std::nullopt;
            zmq::message_t frame;
            if (!socket_->recv(frame, zmq::recv_flags::dontwait)) continue;
            std::string error;
            auto reply = service::decode(frame.to_string_view(), error);
            if (!reply) throw RunError(fmt::format("the server's reply: {}", error));
            if (reply->value("seq", std::uint64_t{0}) == seq) return reply;
        }
    }

    // As ask(), but an unanswered request is asked again on a new connection (a server that
    // restarted lost it), for as long as it takes.
    json ask_until_answered(const json& request) {
        bool said = false;
        while (true) {
            if (auto reply = ask(request)) {
                if (said) fmt::print(stderr, "the server answers again\n");
                return *reply;
            }
            if (!said)
                fmt::print(stderr, "the server at {} does not answer; asking again until it does\n",
                           socket_path_.string());
            said = true;
            connect();
        }
    }

    // ask(), or RunError when the server does not answer.
    json ask_once(const json& request) {
        auto reply = ask(request);
        if (!reply)
            throw RunError(fmt::format("the server at {} did not answer within {} s", socket_path_.string(),
                                       service::kSilence.count() / 1000));
        return *reply;
    }

private:
    void connect() {
        socket_.reset();
        socket_.emplace(context_, zmq::socket_type::dealer);
        wire::configure(*socket_, zmq::socket_type::dealer);
        socket_->connect("ipc://" + socket_path_.string());
    }

    fs::path socket_path_;
    zmq::context_t context_{1};
    std::optional<zmq::socket_t> socket_;
    std::uint64_t seq_ = 0;
};

// A refusal from the server: exit 2 (a job that does not exist, a bad task), with its reason.
void check(const json& reply, const std::string& what) {
    if (!reply.value("ok", false))
        throw ConfigError(fmt::format("{}: {}", what, printable(reply.value("error", std::string("refused")))));
}

// A job id as submit printed it: a whole number (CLI11 would read -1 as 2^64-1, and "1,,2" as 1, 2).
const CLI::Validator kJobId([](std::string& text) { return check_unsigned(text); }, "JOB");

void add_socket_option(CLI::App& app, fs::path& socket) {
    socket = service::default_socket();
    app.add_option("--socket", socket,
                   "the server's socket: $TASKFARM_SOCKET, else $XDG_RUNTIME_DIR/taskfarm/socket, else\n"
                   "/tmp/taskfarm-UID/socket. Its directory is the server's own (mode 0700): only its user may connect")
        ->capture_default_str()
        ->check(CLI::Validator([](std::string& text) { return text.empty() ? "the path is empty" : ""; }, ""))
        ->type_name("PATH");
}

// Parses argv with `app`; an exit code for --help or a bad flag, nullopt to go on.
std::optional<int> parse(CLI::App& app, int argc, const char* const* argv) {
    app.get_formatter()->column_width(30);
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? static_cast<int>(ExitCode::Ok) : static_cast<int>(ExitCode::Usage);
    }
    return std::nullopt;
}

// Prints each result as it comes, from `from` on, until the job is done; exit 0 when every
// task is ok, 1 otherwise.
int wait_job(Client& client, std::uint64_t job, bool quiet) {
    std::size_t from = 0;
    while (true) {
        const json reply = client.ask_until_answered({{"op", "wait"}, {"job", job}, {"from", from}});
        check(reply, fmt::format("wait {}", job));
        for (const json& result : reply.at("results")) {
            if (!quiet) fmt::print("{}\n", dump(result));
            ++from;
        }
        std::fflush(stdout);
        if (reply.value("done", false)) {
            const json& summary = reply.at("summary");
            const auto failed = summary.value("failed", std::uint64_t{0});
            const std::string why = summary.value("why", std::string());
            fmt::print(stderr, "job {}: {}: {} ok, {} failed of {}{}\n", job, summary.value("state", std::string()),
                       summary.value("ok", std::uint64_t{0}), failed, summary.value("tasks", std::uint64_t{0}),
                       why.empty() ? std::string() : "; " + printable(why));
            return failed == 0 ? static_cast<int>(ExitCode::Ok) : static_cast<int>(ExitCode::TasksFailed);
        }
    }
}

int serve_command(const ProgramInfo& program, int argc, const char* const* argv) {
    ServeConfig config;
    std::string state;
    CLI::App app{fmt::format(
        "{} serve: a farm that stays up. Owns --workers worker processes and runs the jobs that `{} submit`\n"
        "hands it, several at once, taking their tasks in turn (round-robin between jobs with tasks waiting).\n"
        "Each job's tasks and journal are kept under --state, so a server killed and started again with the\n"
        "same --state goes on with every job: a task with a result in its journal never runs again.",
        program.name, program.name)};
    app.name(program.name + " serve");
    add_socket_option(app, config.socket);
    app.add_option("--state", state,
                   "directory of the jobs (made 0700): give the same one to a restarted server. Default: the\n"
                   "socket's directory")
        ->type_name("DIR");
    app.add_option("-w,--workers", config.workers, "worker processes the jobs share")
        ->check(CLI::Range(1, 1024))
        ->capture_default_str();
    app.add_option("--retries", config.retries, "a failed task runs up to N more times")
        ->check(CLI::Range(0, 100))
        ->capture_default_str();
    app.add_option("--drain-timeout", config.drain_timeout_s,
                   "SIGTERM: seconds running tasks may take to finish (those cut short run again at the next start)")
        ->check(CLI::Validator([](std::string& text) { return check_seconds(text, 0, 86400); }, "SECONDS"))
        ->capture_default_str();
    app.add_option("--log-level", config.log_level, "spdlog level of the server and its workers");
    app.footer("See docs/service.md.");
    if (auto code = parse(app, argc, argv)) return *code;
    config.socket = fs::absolute(config.socket);
    config.state = state.empty() ? config.socket.parent_path() : fs::absolute(state);
    return serve(program, config);
}

int submit_command(const ProgramInfo& program, int argc, const char* const* argv) {
    const Registry& registry = program.registry;
    fs::path socket;
    RunConfig config;
    std::string task;
    std::string name;
    bool wait = false;
    bool quiet = false;
    int priority = 0;
    std::vector<std::uint64_t> after;
    std::vector<std::uint64_t> after_ok;
    std::vector<std::uint64_t> after_not_ok;
    CLI::App app{
        fmt::format("{} submit: hands a job to the server and prints its id. The tasks are what a run takes: --tasks\n"
                    "tasks of --task, a --plan file, or a task of --task per line of --inputs (--command TEMPLATE: a\n"
                    "command per line, in this directory). Task types: {}.",
                    program.name, registry.names_text())};
    app.name(program.name + " submit");
    add_socket_option(app, socket);
    auto* task_option = app.add_option("-t,--task", task, "the tasks' type")->type_name("NAME");
    app.add_option("-n,--tasks", config.tasks, "how many tasks of --task")
        ->check(CLI::Range(1, 100'000'000))
        ->capture_default_str();
    auto* plan_option =
        app.add_option("--plan", config.plan_path, "JSON Lines, a task per line: {\"kind\":TYPE, its parameters}")
            ->type_name("FILE");
    auto* inputs_option =
        app.add_option("--inputs", config.inputs_path, "a task of --task per line of FILE (- : stdin)")
            ->type_name("FILE");
    std::string command;
    app.add_option("--command", command,
                   "a command per --inputs line, {} standing for the line (as `coordinator --command`); it runs\n"
                   "in this directory")
        ->type_name("TEMPLATE");
    app.add_option("--task-timeout", config.task_timeout_s, "a task running longer fails; 0: no limit")
        ->check(CLI::Validator([](std::string& text) { return check_seconds(text, 0, 1e9); }, "SECONDS"))
        ->capture_default_str();
    app.add_option("--seed", config.seed, "seed of the generated tasks")
        ->check(CLI::Validator([](std::string& text) { return check_unsigned(text); }, "UINT"))
        ->capture_default_str();
    app.add_option("--name", name, "a name for the job, shown by status and jobs");
    app.add_option("--after", after, "start once these jobs are done, however they ended (JOB,JOB...)")
        ->check(kJobId)
        ->delimiter(',')
        ->type_name("JOB");
    app.add_option("--afterok", after_ok,
                   "start once these jobs are done with every task ok; if one is not, this job's tasks are\n"
                   "recorded as not run, with the reason")
        ->check(kJobId)
        ->delimiter(',')
        ->type_name("JOB");
    app.add_option("--afternotok", after_not_ok,
                   "start once these jobs are done, only if one of them has a task not ok (else not run)")
        ->check(kJobId)
        ->delimiter(',')
        ->type_name("JOB");
    app.add_option("--priority", priority,
                   "a job of higher priority takes the workers' turns before jobs of lower priority;\n"
                   "jobs of one priority take turns")
        ->check(CLI::Range(-1000, 1000))
        ->capture_default_str();
    app.add_flag("--wait", wait, "then wait for it, as `wait JOB` does");
    app.add_flag("-q,--quiet", quiet, "with --wait: no result lines, only the exit status");
    plan_option->excludes(inputs_option);
    plan_option->excludes(task_option);
    app.footer(
        fmt::format("Example: {0} submit --task sleep --tasks 8; {0} submit --command 'gzip -k {{}}' --inputs "
                    "files.txt --wait. See docs/service.md.",
                    program.name));
    if (auto code = parse(app, argc, argv)) return *code;
    if (!command.empty()) config.settings["command"] = command;  // the command type's flag (decision 162)
    if (!command.empty() && config.inputs_path.empty())
        throw ConfigError("--command needs --inputs FILE: a command per line of it");
    if (task.empty()) task = !config.inputs_path.empty() ? "command" : program.default_task;
    if (!registry.find(task))
        throw ConfigError(
            fmt::format("--task: unknown task type '{}' (want {})", printable(task), registry.names_text()));
    if (!command.empty() && task != "command") throw ConfigError("--command runs commands: it takes no --task");
    config.task = task;
    config.modes = {Mode::Processes};

    Json settings = settings_json(config);
    Plan plan = make_plan(config, registry, settings);
    if (!plan.services.empty())
        throw ConfigError(
            fmt::format("--task {}: its tasks need a service of this process, which ends before they "
                        "run (give download --inputs of URLs)",
                        task));
    const std::string cwd = fs::current_path().string();
    Client client(fs::absolute(socket));
    json dependencies = json::array();
    for (const auto& [list, when] : {std::pair{&after, "after"}, {&after_ok, "afterok"}, {&after_not_ok, "afternotok"}})
        for (const std::uint64_t job : *list) dependencies.push_back({{"job", job}, {"if", when}});
    json created =
        client.ask_once({{"op", "create"}, {"name", name}, {"priority", priority}, {"after", std::move(dependencies)}});
    check(created, "submit");
    const auto job = created.at("job").get<std::uint64_t>();
    json chunk = json::array();
    std::size_t bytes = 0;
    // Chunks go out a few ahead of their replies, so that the server reads one while the
    // next is made.
    std::deque<std::uint64_t> posted;
    const auto answered = [&] {
        const auto reply = client.reply_to(posted.front());
        if (!reply) throw RunError("the server did not answer within 5 s");
        check(*reply, "submit");
        posted.pop_front();
    };
    const auto send = [&] {
        if (chunk.empty()) return;
        posted.push_back(client.post({{"op", "add"}, {"job", job}, {"tasks", chunk}}));
        if (posted.size() >= service::kChunksAhead) answered();
        chunk = json::array();
        bytes = 0;
    };
    auto cursor = plan.open();
    TaskSpec spec;
    while (cursor->next(spec)) {
        // Refused, not dropped: the server does not order or hold them yet (docs/service.md).
        if (!spec.after.empty() || !spec.resources.empty())
            throw ConfigError(
                fmt::format("task {}: a plan line's \"{}\" is for a one-shot run; the server does not "
                            "{} yet (docs/service.md)",
                            spec.id, spec.after.empty() ? "resources" : "after",
                            spec.after.empty() ? "hand out resources" : "order tasks within a job"));
        json params = spec.params;
        // A command runs where it was submitted, not where the server was started.
        if (spec.type->name() == "command" && params.is_object() && !params.contains("cwd")) params["cwd"] = cwd;
        const std::size_t size = 64 + dump(params).size();
        if (!chunk.empty() && (chunk.size() >= service::kChunkTasks || bytes + size > service::kReplyBytes)) send();
        chunk.push_back({{"kind", spec.type->name()}, {"params", std::move(params)}, {"timeout_s", spec.timeout_s}});
        bytes += size;
    }
    send();
    while (!posted.empty()) answered();
    const json committed = client.ask_once({{"op", "commit"}, {"job", job}});
    check(committed, "submit");
    fmt::print("{}\n", job);
    std::fflush(stdout);
    if (!wait) return static_cast<int>(ExitCode::Ok);
    return wait_job(client, job, quiet);
}

void print_jobs(const json& jobs) {
    fmt::print("{:>5}  {:<10} {:>7} {:>7} {:>7} {:>7} {:>7}  {}\n", "JOB", "STATE", "TASKS", "OK", "FAILED", "RUNNING",
               "WAITING", "NAME");
    for (const json& job : jobs)
        fmt::print("{:>5}  {:<10} {:>7} {:>7} {:>7} {:>7} {:>7}  {}\n", job.value("job", 0),
                   job.value("state", std::string()), job.value("tasks", 0), job.value("ok", 0), job.value("failed", 0),
                   job.value("running", 0), job.value("waiting", 0), printable(job.value("name", std::string())));
}

// `status [JOB]` (the server and its jobs, or one job) and `jobs` (the jobs).
int status_command(const ProgramInfo& program, int argc, const char* const* argv, bool jobs_only) {
    fs::path socket;
    std::optional<std::uint64_t> job;
    bool as_json = false;
    CLI::App app{jobs_only ? fmt::format("{} jobs: the server's jobs, a line each (state, tasks ok, failed, running, "
                                         "waiting)",
                                         program.name)
                           : fmt::format("{} status [JOB]: the server (pid, workers, state directory) and its jobs, or "
                                         "one job",
                                         program.name)};
    app.name(program.name + (jobs_only ? " jobs" : " status"));
    add_socket_option(app, socket);
    if (!jobs_only) app.add_option("JOB", job, "a job id, as submit printed it")->check(kJobId);
    app.add_flag("--json", as_json, "the server's answer as one JSON object");
    if (auto code = parse(app, argc, argv)) return *code;
    Client client(fs::absolute(socket));
    json request = {{"op", "status"}};
    if (job) request["job"] = *job;
    const json reply = client.ask_once(request);
    check(reply, job ? fmt::format("status {}", *job) : std::string("status"));
    if (as_json) {
        json out = reply;
        out.erase("seq");
        out.erase("ok");
        fmt::print("{}\n", dump(out));
        return static_cast<int>(ExitCode::Ok);
    }
    if (!jobs_only && !job)
        fmt::print("server pid {}, {} workers, state in {}{}\n", reply.value("pid", 0), reply.value("workers", 0),
                   printable(reply.value("state", std::string())), reply.value("stopping", false) ? " (stopping)" : "");
    print_jobs(reply.at("jobs"));
    // Why a job does not run: held by a dependency, or skipped because of one.
    for (const json& one : reply.at("jobs"))
        if (const std::string why = one.value("why", std::string()); !why.empty())
            fmt::print("job {}: {}\n", one.value("job", 0), printable(why));
    return static_cast<int>(ExitCode::Ok);
}

int wait_command(const ProgramInfo& program, int argc, const char* const* argv) {
    fs::path socket;
    std::uint64_t job = 0;
    bool quiet = false;
    CLI::App app{fmt::format(
        "{} wait JOB: prints the job's results as they complete, a JSON line each (from its first, so a\n"
        "second wait, or one after the server restarted, sees them all), until the job is done. Exit status:\n"
        "0 every task ok, 1 some failed or were cancelled, 2 no such job. A server that stops answering is\n"
        "asked again until it does (a restarted one goes on where it was).",
        program.name)};
    app.name(program.name + " wait");
    add_socket_option(app, socket);
    app.add_option("JOB", job, "the job's id, as submit printed it")->check(kJobId)->required();
    app.add_flag("-q,--quiet", quiet, "no result lines, only the exit status and the summary on stderr");
    if (auto code = parse(app, argc, argv)) return *code;
    Client client(fs::absolute(socket));
    return wait_job(client, job, quiet);
}

int cancel_command(const ProgramInfo& program, int argc, const char* const* argv) {
    fs::path socket;
    std::uint64_t job = 0;
    CLI::App app{
        fmt::format("{0} cancel JOB: cancels a job of the server: its waiting tasks never run, its running ones are\n"
                    "stopped; each is recorded as cancelled. (`{0} cancel --run DIR_OR_PID ID...` cancels tasks of a\n"
                    "one-shot run instead: `{0} cancel --run 1 0 --help`.)",
                    program.name)};
    app.name(program.name + " cancel");
    add_socket_option(app, socket);
    app.add_option("JOB", job, "the job's id, as submit printed it")->check(kJobId)->required();
    if (auto code = parse(app, argc, argv)) return *code;
    Client client(fs::absolute(socket));
    const json reply = client.ask_once({{"op", "cancel"}, {"job", job}});
    check(reply, fmt::format("cancel {}", job));
    fmt::print("job {}: {} waiting task(s) cancelled, {} running task(s) stopped\n", job, reply.value("queued", 0),
               reply.value("running", 0));
    return static_cast<int>(ExitCode::Ok);
}

}  // namespace

std::optional<int> service_main(const ProgramInfo& program, int argc, const char* const* argv) {
    if (argc < 2) return std::nullopt;
    const std::string_view command = argv[1];
    if (command == "cancel")  // the one-shot run's `cancel --run DIR_OR_PID ID...` is cli.cpp's
        for (int i = 2; i < argc; ++i)
            if (std::string_view(argv[i]) == "--run" || std::string_view(argv[i]).starts_with("--run="))
                return std::nullopt;
    using Command = int (*)(const ProgramInfo&, int, const char* const*);
    Command run = nullptr;
    if (command == "serve") run = serve_command;
    if (command == "submit") run = submit_command;
    if (command == "wait") run = wait_command;
    if (command == "cancel") run = cancel_command;
    if (command == "status")
        run = [](const ProgramInfo& p, int c, const char* const* v) { return status_command(p, c, v, false); };
    if (command == "jobs")
        run = [](const ProgramInfo& p, int c, const char* const* v) { return status_command(p, c, v, true); };
    if (!run) return std::nullopt;
    try {
        return run(program, argc - 1, argv + 1);
    } catch (const ConfigError& e) {
        spdlog::error("{}", e.what());
        return static_cast<int>(ExitCode::Usage);
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
        return static_cast<int>(ExitCode::TasksFailed);
    }
}

}  // namespace taskfarm
