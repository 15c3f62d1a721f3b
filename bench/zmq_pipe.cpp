// The limit taskfarm's processes mode is measured against: a bare ZeroMQ ROUTER/DEALER pipe
// with one msgpack map per task and per result, and nothing else (no heartbeats, no
// journal, no checks beyond reading the id back). Its workers are this same program,
// started with posix_spawn.
//
//   zmq_pipe throughput [--workers 2] [--inflight 8] [--tasks 200000]
//       keeps --inflight tasks in flight per worker; prints round trips per second
//   zmq_pipe startup [--workers 8]
//       posix_spawn of --workers processes until every one said HELLO; prints seconds
//
// Output: one JSON object on stdout.

#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <msgpack.hpp>
#include <zmq.hpp>

extern char** environ;

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
    std::string command;
    int workers = 2;
    int inflight = 8;
    long tasks = 200'000;
    std::string endpoint;  // --worker: connect here
};

Options parse(int argc, char** argv) {
    Options options;
    if (argc < 2)
        throw std::invalid_argument("usage: zmq_pipe throughput|startup [--workers N] [--inflight K] [--tasks N]");
    options.command = argv[1];
    for (int i = 2; i + 1 < argc; i += 2) {
        const std::string_view flag = argv[i];
        if (flag == "--workers")
            options.workers = std::stoi(argv[i + 1]);
        else if (flag == "--inflight")
            options.inflight = std::stoi(argv[i + 1]);
        else if (flag == "--tasks")
            options.tasks = std::stol(argv[i + 1]);
        else if (flag == "--connect")
            options.endpoint = argv[i + 1];
        else
            throw std::invalid_argument("unknown flag " + std::string(flag));
    }
    return options;
}

// The id field of a msgpack map, or -1: what the coordinator must read back from a result.
std::int64_t read_id(const msgpack::object& object) {
    if (object.type != msgpack::type::MAP) return -1;
    for (std::uint32_t i = 0; i < object.via.map.size; ++i) {
        const auto& entry = object.via.map.ptr[i];
        if (entry.key.type == msgpack::type::STR &&
            std::string_view(entry.key.via.str.ptr, entry.key.via.str.size) == "id")
            return entry.val.as<std::int64_t>();
    }
    return -1;
}

void pack_task(msgpack::sbuffer& buffer, std::int64_t id) {
    buffer.clear();
    msgpack::packer<msgpack::sbuffer> pack(buffer);
    pack.pack_map(7);
    pack.pack("type"), pack.pack("task");
    pack.pack("v"), pack.pack(1);
    pack.pack("id"), pack.pack(id);
    pack.pack("attempt"), pack.pack(1);
    pack.pack("kind"), pack.pack("sleep");
    pack.pack("params"), pack.pack_map(1), pack.pack("seconds"), pack.pack(0.0);
    pack.pack("timeout_s"), pack.pack(0.0);
}

void pack_result(msgpack::sbuffer& buffer, std::int64_t id) {
    buffer.clear();
    msgpack::packer<msgpack::sbuffer> pack(buffer);
    pack.pack_map(8);
    pack.pack("type"), pack.pack("result");
    pack.pack("v"), pack.pack(1);
    pack.pack("id"), pack.pack(id);
    pack.pack("attempt"), pack.pack(1);
    pack.pack("kind"), pack.pack("sleep");
    pack.pack("ok"), pack.pack(true);
    pack.pack("run_s"), pack.pack(0.0);
    pack.pack("slept_s"), pack.pack(0.0);
}

int worker(const Options& options) {
    zmq::context_t context(1);
    zmq::socket_t dealer(context, zmq::socket_type::dealer);
    dealer.set(zmq::sockopt::linger, 0);
    dealer.connect(options.endpoint);
    msgpack::sbuffer buffer;
    {
        msgpack::packer<msgpack::sbuffer> pack(buffer);
        pack.pack_map(3);
        pack.pack("type"), pack.pack("hello");
        pack.pack("v"), pack.pack(1);
        pack.pack("pid"), pack.pack(static_cast<std::int64_t>(::getpid()));
    }
    dealer.send(zmq::buffer(buffer.data(), buffer.size()), zmq::send_flags::none);
    zmq::message_t frame;
    while (dealer.recv(frame, zmq::recv_flags::none)) {
        const msgpack::object_handle handle = msgpack::unpack(static_cast<const char*>(frame.data()), frame.size());
        const std::int64_t id = read_id(handle.get());
        if (id < 0) return 0;  // shutdown
        pack_result(buffer, id);
        dealer.send(zmq::buffer(buffer.data(), buffer.size()), zmq::send_flags::none);
    }
    return 0;
}

struct Pipe {
    std::filesystem::path dir;
    zmq::context_t context{1};
    zmq::socket_t router{context, zmq::socket_type::router};
    std::string endpoint;
    std::vector<pid_t> children;
    std::vector<std::string> identities;  // in HELLO order

    Pipe() {
        std::string pattern = "/tmp/zmq-pipe-XXXXXX";
        if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
        dir = pattern;
        router.set(zmq::sockopt::linger, 0);
        endpoint = "ipc://" + (dir / "s").string();
        router.bind(endpoint);
    }
    ~Pipe() {
        msgpack::sbuffer buffer;
        msgpack::packer<msgpack::sbuffer>(buffer).pack_map(0);
        for (const std::string& identity : identities) {
            router.send(zmq::buffer(identity), zmq::send_flags::sndmore);
            router.send(zmq::buffer(buffer.data(), buffer.size()), zmq::send_flags::none);
        }
        for (pid_t pid : children) ::waitpid(pid, nullptr, 0);
        std::filesystem::remove_all(dir);
    }

    void spawn(int workers, const char* self) {
        for (int i = 0; i < workers; ++i) {
            std::string arg0 = self;
            std::string command = "worker", flag = "--connect";
            char* argv[] = {arg0.data(), command.data(), flag.data(), endpoint.data(), nullptr};
            pid_t pid = 0;
            if (::posix_spawn(&pid, self, nullptr, nullptr, argv, environ) != 0)
                throw std::runtime_error("posix_spawn failed");
            children.push_back(pid);
        }
    }

    void await_hellos(int workers) {
        while (static_cast<int>(identities.size()) < workers) {
            zmq::message_t identity, frame;
            static_cast<void>(router.recv(identity, zmq::recv_flags::none));
            static_cast<void>(router.recv(frame, zmq::recv_flags::none));
            identities.push_back(identity.to_string());
        }
    }
};

int throughput(const Options& options, const char* self) {
    Pipe pipe;
    pipe.spawn(options.workers, self);
    pipe.await_hellos(options.workers);
    msgpack::sbuffer buffer;
    std::int64_t next = 0;
    long received = 0;
    const auto started = Clock::now();
    for (const std::string& identity : pipe.identities)
        for (int k = 0; k < options.inflight && next < options.tasks; ++k) {
            pack_task(buffer, next++);
            pipe.router.send(zmq::buffer(identity), zmq::send_flags::sndmore);
            pipe.router.send(zmq::buffer(buffer.data(), buffer.size()), zmq::send_flags::none);
        }
    zmq::message_t identity, frame;
    while (received < options.tasks) {
        static_cast<void>(pipe.router.recv(identity, zmq::recv_flags::none));
        static_cast<void>(pipe.router.recv(frame, zmq::recv_flags::none));
        const msgpack::object_handle handle = msgpack::unpack(static_cast<const char*>(frame.data()), frame.size());
        if (read_id(handle.get()) < 0) throw std::runtime_error("result without an id");
        ++received;
        if (next < options.tasks) {
            pack_task(buffer, next++);
            pipe.router.send(identity, zmq::send_flags::sndmore);
            pipe.router.send(zmq::buffer(buffer.data(), buffer.size()), zmq::send_flags::none);
        }
    }
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    std::printf("{\"workers\": %d, \"inflight\": %d, \"tasks\": %ld, \"seconds\": %.6f, \"per_s\": %.1f}\n",
                options.workers, options.inflight, options.tasks, seconds,
                static_cast<double>(options.tasks) / seconds);
    return 0;
}

int startup(const Options& options, const char* self) {
    Pipe pipe;
    const auto started = Clock::now();
    pipe.spawn(options.workers, self);
    pipe.await_hellos(options.workers);
    const double seconds = std::chrono::duration<double>(Clock::now() - started).count();
    std::printf("{\"workers\": %d, \"seconds\": %.6f}\n", options.workers, seconds);
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        const Options options = parse(argc, argv);
        const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
        if (options.command == "worker") return worker(options);
        if (options.command == "throughput") return throughput(options, self.c_str());
        if (options.command == "startup") return startup(options, self.c_str());
        throw std::invalid_argument("unknown command " + options.command);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "zmq_pipe: %s\n", e.what());
        return 2;
    }
}
