// The service's clients (submit, status, jobs, wait, cancel), its messages, and the choice of
// subcommand; the server is serve.cpp.

#include "service.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <stop_token>
#include <thread>
#include <string_view>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <msgpack.hpp>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "flag_checks.hpp"
#include "config.hpp"
#include "cli.hpp"
#include "curve.hpp"
#include "errors.hpp"
#include "journal_report.hpp"
#include "json_msgpack.hpp"
#include "log.hpp"
#include "modes.hpp"
#include "plan_sources.hpp"
#include "protocol.hpp"
#include "resources.hpp"
#include "serve.hpp"
#include "step.hpp"
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

std::string contradiction(const std::vector<std::uint64_t>& after_ok, const std::vector<std::uint64_t>& after_not_ok) {
    for (const std::uint64_t job : after_ok)
        if (std::find(after_not_ok.begin(), after_not_ok.end(), job) != after_not_ok.end())
            return fmt::format(
                "--afterok {0} and --afternotok {0}: job {0} cannot end both with every task ok and with one "
                "not ok, so this job could never run",
                job);
    return {};
}

}  // namespace service

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string dump(const json& value) { return value.dump(-1, ' ', false, json::error_handler_t::replace); }

// 0 when a server accepts a connection on the socket at `path`, else the errno of connect().
int connect_error(const fs::path& path) {
    sockaddr_un address{};
    address.sun_family = AF_UNIX;
    if (path.native().size() >= sizeof address.sun_path) return 0;  // ZeroMQ says what is wrong with it
    std::memcpy(address.sun_path, path.c_str(), path.native().size());
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return 0;
    int error = 0;
    if (::connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0) error = errno;
    ::close(fd);
    return error;
}

// Where a client finds the server: the local socket, or --connect tcp://HOST:PORT with
// --keys DIR (client.secret and coordinator.public, as `coordinator keygen` writes them).
struct ServerAddress {
    fs::path socket;
    std::string connect;
    fs::path keys;
};

// A client's connection: one request at a time, each with a number its reply carries back,
// so that a late reply to an earlier request (the server was slow, or restarted) is dropped.
class Client {
public:
    explicit Client(const ServerAddress& address) {
        if (!address.connect.empty()) {
            // Over tcp only with keys: the server admits no one else, and a client without
            // them would only wait for a handshake that never ends.
            if (address.keys.empty())
                throw ConfigError("--connect needs --keys DIR: the server admits only clients holding a key it knows");
            // A client's own key, never a worker's: the server admits client keys only.
            if (!fs::exists(address.keys / "client.secret"))
                throw ConfigError(fmt::format(
                    "--keys '{}': no client.secret: a client holds a key of its own, not a worker's (`coordinator "
                    "keygen DIR` writes one, `coordinator keygen --client-only DIR` one more, admitted by serve's "
                    "--authorized-clients)",
                    printable(address.keys.string())));
            try {
                keys_ = curve::read_client_keys(address.keys, "client");
            } catch (const std::runtime_error& e) {
                throw ConfigError(fmt::format("--keys: {}", e.what()));
            }
            keys_dir_ = address.keys;
            endpoint_ = address.connect;
            where_ = address.connect;
            connect();
            return;
        }
        const fs::path socket_path = fs::absolute(address.socket);
        endpoint_ = "ipc://" + socket_path.string();
        where_ = socket_path.string();
        const fs::path dir = socket_path.parent_path();
        // Only a directory of this user's, 0700: another user's could hold a server that
        // reads what we submit.
        if (const std::string why = service::untrusted(dir); !why.empty())
            throw ConfigError(fmt::format("--socket '{}': its directory {}", printable(socket_path.string()), why));
        struct stat info {};
        if (::lstat(socket_path.c_str(), &info) != 0 || !S_ISSOCK(info.st_mode))
            throw ConfigError(
                fmt::format("--socket '{}': no server there (start one with `coordinator serve "
                            "--socket {}`)",
                            printable(socket_path.string()), printable(socket_path.string())));
        // A socket left by a server that died: nobody listens, and ZeroMQ would wait for one
        // in silence. Asked once here, it is said at once, as for no socket at all.
        if (const int error = connect_error(socket_path); error != 0)
            throw ConfigError(
                fmt::format("--socket '{}': no server there ({}{}; start one with `coordinator serve --socket {}`)",
                            printable(socket_path.string()), std::strerror(error),
                            error == ECONNREFUSED ? ": the socket is left from a server that is gone" : "",
                            printable(socket_path.string())));
        connect();
    }

    // The reply, or nullopt when none came within kSilence.
    std::optional<json> ask(const json& request) { return reply_to(post(request)); }

    // Sends `request` without waiting for its reply: its number, for reply_to().
    std::uint64_t post(json request) {
        request["seq"] = ++seq_;
        if (!wire::send(*socket_, service::encode(request)))
            throw RunError(fmt::format("cannot send to the server at {}", where_));
        return seq_;
    }

    // The reply to request `seq`, or nullopt when none came within kSilence; replies to
    // requests before it are dropped (so collect several in the order they were posted).
    std::optional<json> reply_to(std::uint64_t seq) {
        const auto deadline = std::chrono::steady_clock::now() + service::kSilence;
        while (true) {
            zmq::pollitem_t items[] = {{socket_->handle(), 0, ZMQ_POLLIN, 0},
                                       {monitor_ ? monitor_->handle() : nullptr, 0, ZMQ_POLLIN, 0}};
            zmq::poll(items, monitor_ ? 2 : 1, wire::poll_timeout(deadline));
            if (monitor_ && (items[1].revents & ZMQ_POLLIN)) {
                handshake_events();  // throws when the server will not have this client
                continue;
            }
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
            if (!said) fmt::print(stderr, "the server at {} does not answer; asking again until it does\n", where_);
            said = true;
            connect();
        }
    }

    // Until destroyed, a thread of its own sends `request` every `period` on a connection of its
    // own (replies unread are dropped with it): so the server knows a submit is alive while
    // this thread makes its tasks, however long one takes (a slow --inputs -).
    std::jthread keep_alive(json request, std::chrono::duration<double> period) {
        request["seq"] = 0;
        return std::jthread([this, frame = service::encode(request), period](std::stop_token stop) {
            zmq::socket_t socket = open_socket();
            std::mutex mutex;
            std::condition_variable_any wake;
            std::unique_lock lock(mutex);
            while (true) {
                wake.wait_for(lock, stop, period, [] { return false; });
                if (stop.stop_requested()) return;
                wire::send(socket, frame);
                zmq::message_t reply;
                while (socket.recv(reply, zmq::recv_flags::dontwait)) {
                }
            }
        });
    }

    // ask(), or RunError when the server does not answer.
    json ask_once(const json& request) {
        auto reply = ask(request);
        if (!reply)
            throw RunError(fmt::format("the server at {} did not answer within {} s{}", where_,
                                       service::kSilence.count() / 1000,
                                       keys_ ? " (over tcp: a server that does not know this client's key "
                                               "never answers it; are --keys the server's?)"
                                             : ""));
        return *reply;
    }

private:
    zmq::socket_t open_socket() {
        zmq::socket_t socket(context_, zmq::socket_type::dealer);
        wire::configure(socket, zmq::socket_type::dealer);
        if (keys_) wire::configure_curve_client(socket, *keys_);
        socket.connect(endpoint_);
        return socket;
    }

    void connect() {
        monitor_.reset();
        socket_.reset();
        socket_.emplace(open_socket());
        if (!keys_) return;
        // Over tcp, the handshake's outcome, so that a key the server refuses is said at once
        // rather than after kSilence of nothing (a refused CURVE client hears no reply at all).
        const std::string endpoint = fmt::format("inproc://client-monitor-{}", ++monitors_);
        if (::zmq_socket_monitor(socket_->handle(), endpoint.c_str(),
                                 ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL |
                                     ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0)
            return;  // no monitor: a refusal is said after kSilence, as before
        monitor_.emplace(context_, zmq::socket_type::pair);
        wire::configure(*monitor_, zmq::socket_type::pair);
        monitor_->connect(endpoint);
        handshake_failures_ = 0;
    }

    // Reads the monitor's events; throws RunError once the server has refused this client's
    // key (ZAP), or closed the handshake kMaxHandshakeFailures times in a row (what a CURVE
    // server does with a client that has another server's public key).
    void handshake_events() {
        while (const auto event = wire::receive_monitor_event(*monitor_)) {
            switch (event->event) {
                case ZMQ_EVENT_HANDSHAKE_SUCCEEDED: handshake_failures_ = 0; break;
                case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH:
                    throw RunError(fmt::format(
                        "the server at {} refused this client (ZAP status {}): its key {} (of '{}') is not one it "
                        "admits; are --keys the server's? It admits client.public of its --keys and the keys "
                        "in its --authorized-clients, never a worker's",
                        where_, event->value, keys_->worker.public_key,
                        printable((keys_dir_ / "client.secret").string())));
                case ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL:
                case ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL:
                    if (++handshake_failures_ < kMaxHandshakeFailures) break;
                    throw RunError(fmt::format(
                        "the server at {} closed the connection during the CURVE handshake {} times; are --keys "
                        "the server's? Is '{}' the public key of the server listening there?",
                        where_, handshake_failures_, printable((keys_dir_ / "coordinator.public").string())));
                default: break;
            }
        }
    }

    std::string endpoint_;  // ipc://PATH or tcp://HOST:PORT
    std::string where_;     // for messages
    std::optional<curve::ClientKeys> keys_;
    zmq::context_t context_{1};
    std::optional<zmq::socket_t> socket_;
    std::uint64_t seq_ = 0;
    static constexpr int kMaxHandshakeFailures = 3;
    std::optional<zmq::socket_t> monitor_;  // over tcp: the handshake's events (after context_: closed first)
    int monitors_ = 0;
    int handshake_failures_ = 0;
    fs::path keys_dir_;
};

// A refusal from the server: exit 2 (a job that does not exist, a bad task), with its reason.
void check(const json& reply, const std::string& what) {
    if (!reply.value("ok", false))
        throw ConfigError(fmt::format("{}: {}", what, printable(reply.value("error", std::string("refused")))));
}

// A job id as submit printed it.
const CLI::Validator kJobId = whole_number("JOB");

// A path flag's value: an empty one names no file (refused naming the flag, not met later).
const CLI::Validator kPathGiven([](std::string& text) { return text.empty() ? "the path is empty" : ""; }, "");

// A client's --socket, and --connect with --keys for a server over tcp.
void add_address_options(CLI::App& app, ServerAddress& address);

void add_socket_option(CLI::App& app, fs::path& socket) {
    socket = service::default_socket();
    app.add_option("--socket", socket,
                   "the server's socket: $TASKFARM_SOCKET, else $XDG_RUNTIME_DIR/taskfarm/socket, else\n"
                   "/tmp/taskfarm-UID/socket. Its directory is the server's own (mode 0700): only its user may connect")
        ->capture_default_str()
        ->check(kPathGiven)
        ->type_name("PATH");
}

void add_address_options(CLI::App& app, ServerAddress& address) {
    add_socket_option(app, address.socket);
    auto* connect =
        app.add_option("--connect", address.connect,
                       "a server over tcp (serve --listen-clients), instead of --socket: tcp://HOST:PORT, with --keys")
            ->check(CLI::Validator(
                [](std::string& text) -> std::string {
                    return curve::parse_tcp_endpoint(text, /*wildcard_port=*/false)
                               ? ""
                               : fmt::format("'{}' is not tcp://HOST:PORT", printable(text, 100));
                },
                "ENDPOINT"))
            ->type_name("ENDPOINT");
    app.add_option("--keys", address.keys,
                   "with --connect: a key directory of `coordinator keygen` (client.secret, coordinator.public;\n"
                   "a worker's key is refused)")
        ->needs(connect)
        ->type_name("DIR");
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
        // Quiet: the server says only when the job is done, and reads no results for it.
        const json reply =
            client.ask_until_answered({{"op", "wait"}, {"job", job}, {"from", from}, {"results", !quiet}});
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

// A flag whose value `parse` reads (it throws std::invalid_argument saying what is wrong).
template <class Parse>
CLI::Validator resources_check(Parse parse) {
    return CLI::Validator(
        [parse](std::string& text) -> std::string {
            try {
                parse(text);
                return "";
            } catch (const std::invalid_argument& e) {
                return e.what();
            }
        },
        "LIST");
}

// The server's key pair and the client keys it admits over tcp: client.public of `keys` and
// each NAME.public of `authorized` (when given); never the workers' key (worker.public of
// `keys`), which every worker machine holds: a worker is not a client (decision 228).
curve::ServerKeys client_admission(const fs::path& keys, const std::string& authorized) {
    curve::ServerKeys admitted;
    try {
        admitted.server = curve::read_key_pair(keys, "coordinator");
        if (fs::exists(keys / "client.public"))
            admitted.workers.push_back({"client", curve::read_key(keys / "client.public")});
    } catch (const std::runtime_error& e) {
        throw ConfigError(fmt::format("--keys: {}", e.what()));
    }
    if (!authorized.empty()) {
        try {
            for (auto& key : curve::read_authorised_keys(authorized)) admitted.workers.push_back(std::move(key));
        } catch (const std::runtime_error& e) {
            throw ConfigError(fmt::format("--authorized-clients: {}", e.what()));
        }
    }
    if (admitted.workers.empty())
        throw ConfigError(fmt::format(
            "--keys '{}': no client.public and no --authorized-clients DIR: no client could be admitted (`coordinator "
            "keygen --client-only {}` adds a client key to a directory made before clients had their own)",
            printable(keys.string()), printable(keys.string())));
    if (fs::exists(keys / "worker.public")) {
        std::string worker;
        try {
            worker = curve::read_key(keys / "worker.public");
        } catch (const std::runtime_error& e) {
            throw ConfigError(fmt::format("--keys: {}", e.what()));
        }
        for (const curve::AuthorisedKey& key : admitted.workers)
            if (key.public_key == worker)
                throw ConfigError(
                    fmt::format("{} '{}': the key '{}' is the workers' (worker.public of --keys): every worker machine "
                                "holds its secret, so a worker could submit commands; give clients a key of their own "
                                "(`coordinator keygen --client-only DIR`)",
                                key.name == "client" ? "--keys" : "--authorized-clients",
                                printable(key.name == "client" ? keys.string() : authorized), key.name));
    }
    return admitted;
}

int serve_command(const ProgramInfo& program, int argc, const char* const* argv) {
    ServeConfig config;
    std::string state;
    CLI::App app{fmt::format(
        "{} serve: a farm that stays up. Owns --workers worker processes, and remote ones (--listen, --launch),\n"
        "and runs the jobs that `{} submit` hands it, several at once, taking their tasks in turn (round-robin\n"
        "between jobs with tasks waiting).\n"
        "Each job's tasks and journal are kept under --state, so a server killed and started again with the\n"
        "same --state goes on with every job: a task with a result in its journal never runs again.",
        program.name, program.name)};
    app.name(program.name + " serve");
    add_socket_option(app, config.socket);
    app.add_option("--state", state,
                   "directory of the jobs (made 0700): give the same one to a restarted server. Default: the\n"
                   "socket's directory")
        ->check(kPathGiven)
        ->type_name("DIR");
    auto* workers_option = app.add_option("-w,--workers", config.workers,
                                          "worker processes the jobs share, on this machine (with --launch: the\n"
                                          "job step's workers); 0 with --listen: remote workers only")
                               ->check(CLI::Range(0, 1024))
                               ->capture_default_str();
    std::uint32_t retries = 0;
    auto* retries_option =
        app.add_option("--retries", retries,
                       "a failed task runs up to N more times; a type that retries inside its tasks takes N for\n"
                       "its own tries instead. Default: 0, and such a type's own")
            ->check(CLI::Range(0, 100));
    app.add_option("--drain-timeout", config.drain_timeout_s,
                   "SIGTERM: seconds running tasks may take to finish (those cut short run again at the next start)")
        ->check(seconds_between(0, 86400))
        ->capture_default_str();
    app.add_option("--submit-timeout", config.submit_timeout_s,
                   "a job being submitted whose client says nothing for this long is dropped (the client was\n"
                   "killed or interrupted); a live client says so every quarter of it")
        ->check(seconds_between(0.1, 3600))
        ->capture_default_str();
    std::string keys;
    auto* listen = app.add_option("--listen-clients", config.listen_clients,
                                  "clients over tcp too (submit/status/... --connect), CURVE-encrypted, with --keys:\n"
                                  "tcp://ADDR:PORT (port * picks one, said on stderr)")
                       ->check(CLI::Validator(
                           [](std::string& text) -> std::string {
                               return curve::parse_tcp_endpoint(text, /*wildcard_port=*/true)
                                          ? ""
                                          : fmt::format("'{}' is not tcp://ADDR:PORT", printable(text, 100));
                           },
                           "ENDPOINT"))
                       ->type_name("ENDPOINT");
    // Remote workers, as a one-shot run takes them (docs/multihost.md): by hand, or a job step.
    auto* listen_workers =
        app.add_option("--listen", config.listen,
                       "also accept workers started by hand on other machines (`worker --connect ENDPOINT\n"
                       "--keys DIR`) on this tcp endpoint, CURVE-encrypted, with --keys (PORT * picks one, said\n"
                       "on stderr). A worker that dies has its tasks run elsewhere; none left: tasks wait")
            ->check(CLI::Validator([](std::string& text) { return check_listen_endpoint(text); }, ""))
            ->type_name("tcp://ADDR:PORT");
    std::string launch = "local";
    app.add_option("--launch", launch,
                   "how the worker processes start: local (forked here), slurm (one `srun` job step of\n"
                   "--workers tasks, default $SLURM_NTASKS, connecting back over tcp with keys made for the\n"
                   "server in its working directory) or mpirun (one `mpirun -n N` of --workers workers), as\n"
                   "a run's --launch. The server stops, exit 1, if the step ends")
        ->check(CLI::IsMember({"local", "slurm", "mpirun"}))
        ->capture_default_str();
    std::string slurm_args;
    auto* slurm_args_option =
        app.add_option("--slurm-args", slurm_args, "with --launch slurm: more srun options, split as the shell would")
            ->type_name("'ARGS'");
    std::string mpirun_args;
    auto* mpirun_args_option = app.add_option("--mpirun-args", mpirun_args,
                                              "with --launch mpirun: more mpirun options, split as the shell would")
                                   ->type_name("'ARGS'");
    auto* wait_option = app.add_option("--wait-workers", config.wait_workers_s,
                                       "with --launch: seconds the step's workers have to attach (exit 1 if they\n"
                                       "do not all come), and how long tasks wait once they are all gone")
                            ->check(seconds_between(0.1, 86'400))
                            ->capture_default_str();
    app.add_option("--keys", keys,
                   "with --listen-clients or --listen: a `coordinator keygen` directory; the server's key is\n"
                   "coordinator.secret; it admits the clients holding the secret of client.public (never a\n"
                   "worker's key: worker.secret is on every worker machine), and the workers holding the\n"
                   "secret of worker.public (never a client's)")
        ->type_name("DIR");
    std::string authorized;
    app.add_option("--authorized", authorized,
                   "with --listen: more worker keys admitted, a NAME.public file each (a worker.public of\n"
                   "`coordinator keygen --worker-only`, renamed)")
        ->needs(listen_workers)
        ->type_name("DIR");
    std::string authorized_clients;
    app.add_option("--authorized-clients", authorized_clients,
                   "with --listen-clients: more client keys admitted, a NAME.public file each (the client.public\n"
                   "of `coordinator keygen --client-only`, renamed)")
        ->needs(listen)
        ->type_name("DIR");
    std::string worker_resources;
    std::string gpus;
    app.add_option("--worker-resources", worker_resources,
                   "what the workers have, together: NAME=COUNT,... (slot=2,license=1); cpus and mem (MiB)\n"
                   "unless given. A task that asks for some starts when all of it is free")
        ->check(resources_check(parse_worker_resources));
    app.add_option("--gpus", gpus,
                   "GPU ids the workers share (0,1); default: CUDA_VISIBLE_DEVICES, else nvidia-smi -L. A task\n"
                   "holding some runs with CUDA_VISIBLE_DEVICES set to them")
        ->check(resources_check(parse_gpu_list));
    app.add_option("--ui", config.ui,
                   "serve a live view of the server on http://ADDR:PORT (as a run's --ui): a lane per worker with\n"
                   "a bar per task, every job's tasks in one count (done, running, queued), failures; the URL,\n"
                   "with its secret path, is printed on stderr")
        ->check(CLI::Validator([](std::string& text) { return check_ui_address(text); }, ""))
        ->type_name("[ADDR:]PORT");
    add_log_level_option(app, config.log_level, "spdlog level of the server and its workers");
    app.footer("See docs/service.md.");
    if (auto code = parse(app, argc, argv)) return *code;
    if (retries_option->count() > 0) config.retries = retries;
    if (!keys.empty() && config.listen_clients.empty() && config.listen.empty())
        throw ConfigError("--keys is for --listen-clients or --listen: without either, nobody connects over tcp");
    if (slurm_args_option->count() > 0 && launch != "slurm")
        throw ConfigError("--slurm-args goes to srun: it needs --launch slurm");
    if (mpirun_args_option->count() > 0 && launch != "mpirun")
        throw ConfigError("--mpirun-args goes to mpirun: it needs --launch mpirun");
    if (launch == "slurm" || launch == "mpirun") {
        // The one-shot run's step (launch/step.hpp): remote workers the server starts, with keys
        // of its own, made in its working directory.
        const StepLauncher launcher = launch == "slurm" ? StepLauncher::Slurm : StepLauncher::Mpirun;
        if (!config.listen.empty() || !authorized.empty())
            throw ConfigError(
                fmt::format("--listen cannot go with --launch {}, which makes keys for the server and "
                            "listens for the workers it starts",
                            launch));
        try {
            config.step =
                launch_step(launcher, workers_option->count() > 0 ? std::optional(config.workers) : std::nullopt,
                            launcher == StepLauncher::Slurm ? slurm_args : mpirun_args);
        } catch (const CLI::ValidationError& e) {
            throw ConfigError(e.what());  // "--workers: ..."
        }
        config.listen = fmt::format("tcp://{}:*", first_non_loopback_address());
        config.workers = 0;
    } else {
        if (wait_option->count() > 0)
            throw ConfigError(
                "--wait-workers is for the workers of --launch slurm|mpirun: workers that join by "
                "--listen may come at any time");
        if (config.workers == 0 && config.listen.empty())
            throw ConfigError("--workers 0 starts no worker: give --listen and start remote workers, or --launch");
        if (!config.listen.empty()) {
            // Never plaintext: a worker gets the jobs' tasks, commands with their inputs.
            if (keys.empty())
                throw ConfigError(
                    "--listen needs --keys DIR: remote workers are admitted by key only (`coordinator "
                    "keygen DIR`; each worker machine gets worker.secret and coordinator.public)");
            RunConfig admission;  // read as a run reads its --keys and --authorized
            admission.modes = {Mode::Processes};
            admission.keys_dir = keys;
            admission.authorized_dir = authorized;
            config.worker_keys = read_keys(admission, "--keys", "--authorized");
        }
    }
    if (!config.listen_clients.empty()) {
        // Never plaintext: a client may run any command as this user.
        if (keys.empty())
            throw ConfigError("--listen-clients needs --keys DIR: clients over tcp are admitted by key only");
        if (!curve::available()) throw ConfigError("--listen-clients: this libzmq was built without CURVE support");
        config.client_keys = client_admission(keys, authorized_clients);
    }
    std::optional<std::vector<std::string>> gpu_ids;
    if (!gpus.empty()) gpu_ids = parse_gpu_list(gpus);
    config.resources = std::make_shared<const LocalResources>(
        worker_resources.empty() ? ResourceRequest{} : parse_worker_resources(worker_resources), std::move(gpu_ids));
    config.socket = fs::absolute(config.socket);
    config.state = state.empty() ? config.socket.parent_path() : fs::absolute(state);
    return serve(program, config);
}

void send_tasks(Client& client, const Plan& plan, std::uint64_t job);

int submit_command(const ProgramInfo& program, int argc, const char* const* argv) {
    const Registry& registry = program.registry;
    ServerAddress address;
    RunConfig config;
    std::string task;
    std::string name;
    bool wait = false;
    bool quiet = false;
    int priority = 0;
    std::vector<std::uint64_t> after;
    std::vector<std::uint64_t> after_ok;
    std::vector<std::uint64_t> after_not_ok;
    std::string task_resources;
    CLI::App app{
        fmt::format("{} submit: hands a job to the server and prints its id. The tasks are what a run takes: --tasks\n"
                    "tasks of --task, a --plan file, a task of --task per line of --inputs, or what a type's flag\n"
                    "below makes. Task types: {}.",
                    program.name, registry.names_text())};
    app.name(program.name + " submit");
    add_address_options(app, address);
    auto* task_option = app.add_option("-t,--task", task, "the tasks' type")->type_name("NAME");
    auto* tasks_option = app.add_option("-n,--tasks", config.tasks, "how many tasks of --task")
                             ->check(CLI::Range(1, 100'000'000))
                             ->capture_default_str();
    auto* plan_option =
        app.add_option("--plan", config.plan_path, "JSON Lines, a task per line: {\"kind\":TYPE, its parameters}")
            ->check(kPathGiven)
            ->type_name("FILE");
    auto* inputs_option =
        app.add_option("--inputs", config.inputs_path,
                       "a task of --task per line of FILE (- : stdin); without --task, of the type whose flag makes\n"
                       "a task per --inputs line (see below), its flag not given")
            ->check(kPathGiven)
            ->type_name("FILE");
    // The types' flags that pick the tasks, as a run has them.
    const std::vector<TypeFlag> type_flags =
        add_type_flags(app, registry, plan_option, tasks_option, inputs_option, /*picking_only=*/true);
    app.add_option("--task-timeout", config.task_timeout_s, "a task running longer fails; 0: no limit")
        ->check(seconds_between(0, 1e9))
        ->capture_default_str();
    app.add_option("--seed", config.seed, "seed of the generated tasks")->check(kUnsigned)->capture_default_str();
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
    app.add_option("--task-resources", task_resources,
                   "what each task asks for (gpu=1,slot=2,mem=2G) unless its plan line's \"resources\" says:\n"
                   "it starts when the server's workers have that much free (serve --worker-resources, --gpus)")
        ->check(resources_check(parse_resources));
    app.add_flag("--wait", wait, "then wait for it, as `wait JOB` does");
    app.add_flag("-q,--quiet", quiet, "with --wait: no result lines, only the exit status");
    plan_option->excludes(inputs_option);
    plan_option->excludes(task_option);
    app.footer(fmt::format("Example: {0} submit --task {1} --tasks 8 --wait. See docs/service.md.", program.name,
                           program.default_task));
    if (auto code = parse(app, argc, argv)) return *code;
    try {
        decide_type_flags(type_flags, task_option->count() > 0, task, config);
    } catch (const CLI::ParseError& e) {
        return app.exit(e) == 0 ? static_cast<int>(ExitCode::Ok) : static_cast<int>(ExitCode::Usage);
    }
    // --inputs alone: a task per line of the first type with a flag that makes one per --inputs
    // line (Flag::Picks::PerInput), made from the line alone; else of --task's default (decision 258).
    if (task.empty() && !config.inputs_path.empty())
        for (const TypeFlag& flag : type_flags)
            if (flag.declared.picks == Flag::Picks::PerInput) {
                task = flag.type;
                break;
            }
    if (task.empty()) task = program.default_task;
    if (!registry.find(task))
        throw ConfigError(
            fmt::format("--task: unknown task type '{}' (want {})", printable(task), registry.names_text()));
    config.task = task;
    config.modes = {Mode::Processes};
    // A job that could never run is refused here, as the server would refuse it.
    if (const std::string why = service::contradiction(after_ok, after_not_ok); !why.empty()) throw ConfigError(why);

    // The tasks' resources are checked, each at its line, against what the server's workers
    // have, as a run checks them against its own (docs/resources.md).
    Client client(address);
    const json server = client.ask_once({{"op", "status"}, {"jobs", false}});
    check(server, "status");
    {
        ResourceRequest have;
        const json counts = server.value("resources", json::object());
        for (const auto& [resource, amount] : counts.items())
            if (resource != kGpuResource && amount.is_number_unsigned() && amount.get<std::uint64_t>() > 0)
                have.push_back({resource, amount.get<std::uint64_t>()});
        std::sort(have.begin(), have.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
        config.workers = server.value("workers", 1);
        config.resources =
            std::make_shared<const LocalResources>(std::move(have), server.value("gpus", std::vector<std::string>()));
    }
    if (!task_resources.empty()) {
        config.task_resources = parse_resources(task_resources);
        if (const std::string why = unmet_resources(config, config.task_resources); !why.empty())
            throw ConfigError(fmt::format("--task-resources: {} (the server's workers)", why));
    }

    Json settings = settings_json(config);
    Plan plan = make_plan(config, registry, settings);
    if (!plan.services.empty())
        throw ConfigError(
            fmt::format("--task {}: its tasks need a service of this process, which ends before they "
                        "run (give download --inputs of URLs)",
                        task));
    json dependencies = json::array();
    for (const auto& [list, when] : {std::pair{&after, "after"}, {&after_ok, "afterok"}, {&after_not_ok, "afternotok"}})
        for (const std::uint64_t job : *list) dependencies.push_back({{"job", job}, {"if", when}});
    json created =
        client.ask_once({{"op", "create"}, {"name", name}, {"priority", priority}, {"after", std::move(dependencies)}});
    check(created, "submit");
    const auto job = created.at("job").get<std::uint64_t>();
    try {
        // A submit that goes silent (killed, interrupted) is dropped by the server: this says
        // it is alive however long the tasks take to make.
        const std::jthread alive = client.keep_alive({{"op", "touch"}, {"job", job}},
                                                     std::chrono::duration<double>(created.value("touch_s", 2.5)));
        send_tasks(client, plan, job);
    } catch (...) {
        // A bad line after some were sent, or the server refused: the job goes at once.
        client.ask({{"op", "drop"}, {"job", job}});
        throw;
    }
    const json committed = client.ask_once({{"op", "commit"}, {"job", job}});
    check(committed, "submit");
    fmt::print("{}\n", job);
    std::fflush(stdout);
    if (!wait) return static_cast<int>(ExitCode::Ok);
    return wait_job(client, job, quiet);
}

// Makes the plan's tasks and sends them to job `job`, in chunks, a few ahead of the replies.
void send_tasks(Client& client, const Plan& plan, std::uint64_t job) {
    const std::string cwd = fs::current_path().string();
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
    const TaskType* type = nullptr;
    std::string dir_param;  // type's TaskTraits::dir_param
    while (cursor->next(spec)) {
        json params = spec.params;
        // A task whose type says where it runs runs where it was submitted, not where the server was started.
        if (spec.type != type) dir_param = (type = spec.type)->traits().dir_param;
        if (!dir_param.empty() && params.is_object() && !params.contains(dir_param)) params[dir_param] = cwd;
        const std::size_t size = 64 + dump(params).size();
        if (!chunk.empty() && (chunk.size() >= service::kChunkTasks || bytes + size > service::kReplyBytes)) send();
        json line = {{"kind", spec.type->name()}, {"params", std::move(params)}, {"timeout_s", spec.timeout_s}};
        if (!spec.after.empty()) line["after"] = spec.after;  // earlier tasks of the job (decision 220)
        if (!spec.resources.empty()) {
            json& resources = line["resources"] = json::object();
            for (const auto& [resource, amount] : spec.resources) resources[resource] = amount;
        }
        chunk.push_back(std::move(line));
        bytes += size;
    }
    send();
    while (!posted.empty()) answered();
}

void print_jobs(const json& jobs) {
    fmt::print("{:>5}  {:<10} {:>7} {:>7} {:>7} {:>7} {:>7}  {}\n", "JOB", "STATE", "TASKS", "OK", "FAILED", "RUNNING",
               "WAITING", "NAME");
    for (const json& job : jobs)
        fmt::print("{:>5}  {:<10} {:>7} {:>7} {:>7} {:>7} {:>7}  {}\n", job.value("job", 0),
                   job.value("state", std::string()), job.value("tasks", 0), job.value("ok", 0), job.value("failed", 0),
                   job.value("running", 0), job.value("waiting", 0), printable(job.value("name", std::string())));
}

// A client subcommand that asks about a job: its --socket and its JOB argument (required, or
// optional for status), parsed one way for each of status, wait, cancel, explain and logs.
struct JobCommand {
    CLI::App app;
    ServerAddress address;
    std::optional<std::uint64_t> job;

    JobCommand(const ProgramInfo& program, const char* name, std::string description, bool job_required)
        : app(std::move(description)) {
        app.name(program.name + " " + name);
        add_address_options(app, address);
        auto* option = app.add_option("JOB", job, "the job's id, as submit printed it")->check(kJobId);
        if (job_required) option->required();
    }
    // After parse(): the server's connection.
    Client connect() const { return Client(address); }
};

// `status [JOB]` (the server and its jobs, or one job and why its tasks wait) and `jobs`.
int status_command(const ProgramInfo& program, int argc, const char* const* argv, bool jobs_only) {
    JobCommand command(program, jobs_only ? "jobs" : "status",
                       jobs_only ? fmt::format("{} jobs: the server's jobs, a line each (state, tasks ok, failed, "
                                               "running, waiting)",
                                               program.name)
                                 : fmt::format("{} status [JOB]: the server (pid, workers, their resources, state "
                                               "directory) and its jobs, or one job and why its tasks wait",
                                               program.name),
                       false);
    if (jobs_only) command.app.remove_option(command.app.get_option("JOB"));
    bool as_json = false;
    command.app.add_flag("--json", as_json, "the server's answer as one JSON object");
    if (auto code = parse(command.app, argc, argv)) return *code;
    Client client = command.connect();
    json request = {{"op", "status"}};
    if (command.job) request["job"] = *command.job;
    const json reply = client.ask_once(request);
    check(reply, command.job ? fmt::format("status {}", *command.job) : std::string("status"));
    if (as_json) {
        json out = reply;
        out.erase("seq");
        out.erase("ok");
        fmt::print("{}\n", dump(out));
        return static_cast<int>(ExitCode::Ok);
    }
    if (!jobs_only && !command.job) {
        std::vector<std::string> have;
        const json counts = reply.value("resources", json::object());
        for (const auto& [name, amount] : counts.items())
            if (amount.is_number_unsigned() && (name != kGpuResource || amount.get<std::uint64_t>() > 0))
                have.push_back(fmt::format("{}={}", name, amount.get<std::uint64_t>()));
        const json remote = reply.value("remote_workers", json(nullptr));
        fmt::print(
            "server pid {}, {} workers ({}){}, state in {}{}\n", reply.value("pid", 0), reply.value("workers", 0),
            printable(fmt::format("{}", fmt::join(have, ","))),
            remote.is_string() ? fmt::format(", remote workers at {}", printable(remote.get<std::string>())) : "",
            printable(reply.value("state", std::string())), reply.value("stopping", false) ? " (stopping)" : "");
    }
    print_jobs(reply.at("jobs"));
    // Why a job does not run: held by a dependency, or skipped because of one.
    for (const json& one : reply.at("jobs"))
        if (const std::string why = one.value("why", std::string()); !why.empty())
            fmt::print("job {}: {}\n", one.value("job", 0), printable(why));
    // One job: why its tasks wait.
    if (reply.contains("explain") && reply.at("explain").is_array())
        for (const json& line : reply.at("explain")) fmt::print("  {}\n", printable(line.get<std::string>()));
    return static_cast<int>(ExitCode::Ok);
}

int explain_command(const ProgramInfo& program, int argc, const char* const* argv) {
    JobCommand command(program, "explain",
                       fmt::format("{} explain JOB [TASK]: why the job's tasks, or that task, are not running: "
                                   "a dependency,\nthe resources it asks for, a job of higher priority, the other "
                                   "jobs' turns, a worker's prefetch",
                                   program.name),
                       true);
    std::optional<std::uint64_t> task;
    command.app.add_option("TASK", task, "a task of the job: its id (its line in the plan, from 0)")->check(kUnsigned);
    if (auto code = parse(command.app, argc, argv)) return *code;
    Client client = command.connect();
    json request = {{"op", "explain"}, {"job", *command.job}};
    if (task) request["task"] = *task;
    const json reply = client.ask_once(request);
    check(reply, fmt::format("explain {}", *command.job));
    for (const json& line : reply.at("why")) fmt::print("{}\n", printable(line.get<std::string>()));
    return static_cast<int>(ExitCode::Ok);
}

int logs_command(const ProgramInfo& program, int argc, const char* const* argv) {
    JobCommand command(program, "logs",
                       fmt::format("{0} logs JOB: what the job's journal says, as `{0} report JOURNAL` prints it "
                                   "(counts,\nfailures by reason, retries, the slowest tasks, the workers, what "
                                   "would run again), read by the server",
                                   program.name),
                       true);
    std::optional<std::uint64_t> task;
    bool as_json = false;
    int slowest = 5;
    command.app.add_option("--task", task, "that task's whole story only")->check(kUnsigned)->type_name("ID");
    command.app.add_option("--slowest", slowest, "how many of the slowest tasks to list")
        ->check(CLI::Range(0, 1000))
        ->capture_default_str();
    command.app.add_flag("--json", as_json, "the report as one JSON document");
    if (auto code = parse(command.app, argc, argv)) return *code;
    Client client = command.connect();
    json request = {{"op", "report"}, {"job", *command.job}, {"slowest", slowest}};
    if (task) request["task"] = *task;
    const json reply = client.ask_once(request);
    check(reply, fmt::format("logs {}", *command.job));
    if (as_json)
        fmt::print("{}\n", dump(reply.at("report")));
    else
        fmt::print("{}", journal_report_text(reply.at("report")));
    return static_cast<int>(ExitCode::Ok);
}

int wait_command(const ProgramInfo& program, int argc, const char* const* argv) {
    JobCommand command(
        program, "wait",
        fmt::format(
            "{} wait JOB: prints the job's results as they complete, a JSON line each (from its first, so a\n"
            "second wait, or one after the server restarted, sees them all), until the job is done. Exit status:\n"
            "0 every task ok, 1 some failed or were cancelled, 2 no such job. A server that stops answering is\n"
            "asked again until it does (a restarted one goes on where it was).",
            program.name),
        true);
    bool quiet = false;
    command.app.add_flag("-q,--quiet", quiet, "no result lines, only the exit status and the summary on stderr");
    if (auto code = parse(command.app, argc, argv)) return *code;
    Client client = command.connect();
    return wait_job(client, *command.job, quiet);
}

int cancel_command(const ProgramInfo& program, int argc, const char* const* argv) {
    JobCommand command(
        program, "cancel",
        fmt::format("{0} cancel JOB: cancels a job of the server: its waiting tasks never run, its running ones are\n"
                    "stopped; each is recorded as cancelled. (`{0} cancel --run DIR_OR_PID ID...` cancels tasks of a\n"
                    "one-shot run instead: `{0} cancel --run 1 0 --help`.)",
                    program.name),
        true);
    if (auto code = parse(command.app, argc, argv)) return *code;
    Client client = command.connect();
    const json reply = client.ask_once({{"op", "cancel"}, {"job", *command.job}});
    check(reply, fmt::format("cancel {}", *command.job));
    fmt::print("job {}: {} waiting task(s) cancelled, {} running task(s) stopped\n", *command.job,
               reply.value("queued", 0), reply.value("running", 0));
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
    if (command == "explain") run = explain_command;
    if (command == "logs") run = logs_command;
    if (command == "status")
        run = [](const ProgramInfo& p, int c, const char* const* v) { return status_command(p, c, v, false); };
    if (command == "jobs")
        run = [](const ProgramInfo& p, int c, const char* const* v) { return status_command(p, c, v, true); };
    if (!run) return std::nullopt;
    return run(program, argc - 1, argv + 1);  // coordinator_main() turns what it throws into an exit code
}

}  // namespace taskfarm
