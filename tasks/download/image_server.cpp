#include "image_server.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <limits>
#include <map>
#include <mutex>
#include <stop_token>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <httplib.h>

#include <spdlog/spdlog.h>

namespace taskfarm {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::size_t kChunkBytes = 64 * 1024;
constexpr std::uint64_t kWidth = 256;    // pixels per row, narrower only for tiny images
constexpr std::uint64_t kDimsRoom = 32;  // "\n<width> <height>\n255\n" and at least one padding byte

std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9e3779b97f4a7c15;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9;
    x = (x ^ (x >> 27)) * 0x94d049bb133111eb;
    return x ^ (x >> 31);
}

}  // namespace

// Gives each request a deadline: from the moment its connection is first seen, or the previous
// response on it ends, the whole request (line and headers) must arrive within
// kRequestDeadline, or the connection is shut down. cpp-httplib's own read timeout applies to
// each read, so a client trickling a header byte every few seconds would hold a thread for
// ever, and the run's downloads wait for threads. cpp-httplib never shows us a connection's
// socket before its request is in, so the watchdog finds them in /proc/self/fd: the sockets
// whose local port is the server's and that have a peer.
class ImageServer::Server : public httplib::Server {
public:
    std::atomic<std::uint64_t> requests{0};

    Server() {
        set_pre_routing_handler([this](const httplib::Request& request, httplib::Response&) {
            set_deadline(peer_key(request.remote_addr, request.remote_port), Clock::time_point::max());  // being served
            return HandlerResponse::Unhandled;
        });
        set_logger([this](const httplib::Request& request, const httplib::Response&) {
            set_deadline(peer_key(request.remote_addr, request.remote_port), Clock::now() + kRequestDeadline);
        });
    }

    // Starts the thread that shuts down connections past their deadline.
    void watch(int port) {
        watchdog_ = std::jthread([this, port](std::stop_token stop) {
            std::mutex sleep_mutex;
            std::condition_variable_any tick;
            std::unique_lock sleep_lock(sleep_mutex);
            while (!stop.stop_requested()) {
                static_cast<void>(tick.wait_for(sleep_lock, stop, kWatchInterval, [] { return false; }));
                if (!stop.stop_requested()) enforce(port);
            }
        });
    }

private:
    static constexpr std::chrono::seconds kRequestDeadline{5};
    static constexpr std::chrono::milliseconds kWatchInterval{200};

    static std::string peer_key(const std::string& address, int port) { return fmt::format("{}:{}", address, port); }

    // The peer of `fd` when it is a connection accepted on `port`, else "".
    static std::string server_peer(int fd, int port) {
        sockaddr_storage local{};
        sockaddr_storage remote{};
        socklen_t local_size = sizeof local;
        socklen_t remote_size = sizeof remote;
        if (::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_size) != 0 || local.ss_family != AF_INET ||
            ntohs(reinterpret_cast<sockaddr_in*>(&local)->sin_port) != port ||
            ::getpeername(fd, reinterpret_cast<sockaddr*>(&remote), &remote_size) != 0 || remote.ss_family != AF_INET)
            return "";
        char host[INET_ADDRSTRLEN] = {};
        const auto* peer = reinterpret_cast<sockaddr_in*>(&remote);
        ::inet_ntop(AF_INET, &peer->sin_addr, host, sizeof host);
        return peer_key(host, ntohs(peer->sin_port));
    }

    void set_deadline(const std::string& peer, Clock::time_point deadline) {
        std::lock_guard lock(mutex_);
        deadlines_[peer] = deadline;
    }

    void enforce(int port) {
        std::map<std::string, int> open;  // peer -> fd, this round
        std::error_code ec;
        for (const auto& entry : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
            int fd = -1;
            const std::string name = entry.path().filename().string();
            if (std::from_chars(name.data(), name.data() + name.size(), fd).ec != std::errc{}) continue;
            if (std::string peer = server_peer(fd, port); !peer.empty()) open.emplace(std::move(peer), fd);
        }
        const auto now = Clock::now();
        std::lock_guard lock(mutex_);
        std::erase_if(deadlines_, [&open](const auto& entry) { return !open.contains(entry.first); });  // closed
        for (const auto& [peer, fd] : open) {
            const auto [found, added] = deadlines_.emplace(peer, now + kRequestDeadline);  // new: its first request
            if (found->second == Clock::time_point::max()) continue;                       // being served
            // Bytes nobody has read: it waits in the queue for a thread, which it does not hold;
            // its time starts when a thread takes it (a trickler's bytes are read as they come).
            if (int unread = 0; ::ioctl(fd, FIONREAD, &unread) == 0 && unread > 0) {
                found->second = now + kRequestDeadline;
                continue;
            }
            // Checked again just before: the number may have been closed and reused since the scan.
            if (!added && found->second < now && server_peer(fd, port) == peer) {
                ::shutdown(fd, SHUT_RDWR);  // its thread's next read fails and the thread is free
                found->second = Clock::time_point::max();
            }
        }
    }

    std::mutex mutex_;
    std::map<std::string, Clock::time_point> deadlines_;  // by the peer's address:port; max: being served
    std::jthread watchdog_;                               // last: stopped and joined first
};

ImageServer::ImageServer(ImageServerOptions options) : options_(options), server_(std::make_unique<Server>()) {
    const int threads = std::max(1, options_.threads);
    server_->new_task_queue = [threads] { return new httplib::ThreadPool(static_cast<std::size_t>(threads)); };
    server_->set_tcp_nodelay(true);              // headers and body are separate writes: no Nagle delay
    server_->set_keep_alive_max_count(100'000);  // a client's connection serves all its downloads
    // A thread waits on each idle kept-alive connection until it closes or this passes, and
    // stopping the server waits for those threads; so idle connections are closed soon.
    server_->set_keep_alive_timeout(1);
    server_->Get(R"(/photo-(\d+)\.ppm)", [this](const httplib::Request& request, httplib::Response& response) {
        ++server_->requests;
        const std::string number = request.matches[1];
        int image = -1;
        const auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), image);
        if (ec != std::errc{} || end != number.data() + number.size() || image < 0 || image >= options_.images) {
            response.status = 404;
            return;
        }
        if (!sleep_until(Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                            std::chrono::duration<double>(options_.latency_s)))) {
            response.status = 503;
            return;
        }
        if (options_.file_size == 0) {
            response.set_content("", "image/x-portable-pixmap");
            return;
        }
        auto body_started = std::make_shared<Clock::time_point>(Clock::now());
        response.set_content_provider(
            options_.file_size, "image/x-portable-pixmap",
            [this, image, body_started](std::size_t offset, std::size_t length, httplib::DataSink& sink) {
                const std::size_t chunk = std::min(length, kChunkBytes);
                if (options_.bandwidth > 0) {
                    const auto due =
                        *body_started +
                        std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                            static_cast<double>(offset + chunk) / static_cast<double>(options_.bandwidth)));
                    if (!sleep_until(due)) return false;
                }
                std::string bytes;
                image_bytes(image, offset, chunk, bytes);
                return sink.write(bytes.data(), bytes.size());
            });
    });
    server_->set_error_handler([](const httplib::Request&, httplib::Response& response) {
        response.set_content(fmt::format("{}\n", response.status), "text/plain");
    });
    // cpp-httplib listens with a backlog of 5 (compiled into Debian's libcpp-httplib). A SYN
    // that finds the accept queue full is dropped and sent again by TCP only a second later,
    // so 8 workers connecting at once waited 1 s; listen() again on the socket raises it.
    socket_t listener = INVALID_SOCKET;
    server_->set_socket_options([&listener](socket_t socket) {
        httplib::default_socket_options(socket);
        listener = socket;
    });
    port_ = server_->bind_to_any_port("127.0.0.1");
    server_->set_socket_options(httplib::default_socket_options);
    if (port_ <= 0) throw std::runtime_error("cannot bind the built-in HTTP server to 127.0.0.1");
    if (::listen(listener, SOMAXCONN) != 0)
        throw std::runtime_error(fmt::format("cannot listen on 127.0.0.1:{}: {}", port_, std::strerror(errno)));
}

ImageServer::~ImageServer() {
    {
        std::lock_guard lock(mutex_);
        stopping_ = true;
    }
    wake_.notify_all();
    if (thread_.joinable()) {
        server_->stop();  // start() waited for is_running(), so this reaches the accept loop
        thread_.join();   // the loop joins the server's threads before it returns
    }
}

void ImageServer::start() {
    // A client that hangs up mid-body makes the next write raise SIGPIPE, which would end the
    // process: the server's threads (started by this one) keep it blocked, so writes fail with EPIPE.
    sigset_t pipe;
    sigemptyset(&pipe);
    sigaddset(&pipe, SIGPIPE);
    sigset_t old;
    pthread_sigmask(SIG_BLOCK, &pipe, &old);
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    server_->watch(port_);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    while (!server_->is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    spdlog::info("serving {} synthetic images of {} bytes on {}, {:g} s latency{}", options_.images, options_.file_size,
                 base_url(), options_.latency_s,
                 options_.bandwidth ? fmt::format(", {} bytes/s per response", options_.bandwidth) : "");
}

std::unique_ptr<RunService> serve_images(Json& settings) {
    auto server = std::make_unique<ImageServer>(ImageServerOptions::from(settings));
    settings["served_urls"] = server->urls();
    return server;
}

ImageServerOptions ImageServerOptions::from(const Json& settings) {
    return {.images = settings.value("tasks", 15),
            .file_size = settings.value("file_size", std::uint64_t{200 * 1024}),
            .latency_s = settings.value("latency_s", 0.2),
            .bandwidth = settings.value("bandwidth", std::uint64_t{0}),
            // A thread per kept-alive connection: one per worker or thread, the sequential
            // mode's, and spares for connections closing while new ones open.
            .threads = settings.value("workers", 4) + 4,
            .seed = settings.value("seed", std::uint64_t{1})};
}

bool ImageServer::sleep_until(Clock::time_point when) {
    std::unique_lock lock(mutex_);
    return !wake_.wait_until(lock, when, [this] { return stopping_; });
}

std::string ImageServer::base_url() const { return fmt::format("http://127.0.0.1:{}", port_); }

std::string ImageServer::name(int image) const { return fmt::format("photo-{}.ppm", image); }

std::vector<std::string> ImageServer::urls() const {
    std::vector<std::string> urls;
    for (int i = 0; i < options_.images; ++i) urls.push_back(base_url() + "/" + name(i));
    return urls;
}

std::string ImageServer::image(int image) const {
    std::string bytes;
    image_bytes(image, 0, options_.file_size, bytes);
    return bytes;
}

std::string ImageServer::piece(int image, std::uint64_t offset, std::size_t size) const {
    std::string bytes;
    image_bytes(image, offset, size, bytes);
    return bytes;
}

std::uint64_t ImageServer::requests() const { return server_->requests; }

// "P6\n# taskfarm synthetic image 3<spaces>\n256 200\n255\n": a binary PPM header whose
// comment is padded so that header and pixels come to exactly file_size bytes; empty when
// file_size is too small for one pixel.
std::string ImageServer::header(int image) const {
    const std::uint64_t size = options_.file_size;
    const std::string comment = fmt::format("P6\n# taskfarm synthetic image {}", image);
    const std::uint64_t room = size > comment.size() + kDimsRoom ? size - comment.size() - kDimsRoom : 0;
    std::uint64_t width = kWidth;
    std::uint64_t height = room / (3 * width);
    if (height == 0) {
        width = room / 3;
        height = width > 0 ? 1 : 0;
    }
    if (height == 0) return {};
    const std::string dims = fmt::format("\n{} {}\n255\n", width, height);
    const std::uint64_t padding = size - 3 * width * height - comment.size() - dims.size();
    return comment + std::string(padding, ' ') + dims;
}

void ImageServer::image_bytes(int image, std::uint64_t offset, std::size_t size, std::string& out) const {
    const std::string head = header(image);
    out.resize(size);
    const std::uint64_t stream = splitmix64(options_.seed * 0x100000001b3 + static_cast<std::uint64_t>(image));
    std::size_t i = 0;
    for (; i < size && offset + i < head.size(); ++i) out[i] = head[offset + i];
    // Pixel byte b is byte b % 8 (the lowest first) of splitmix64(stream ^ b / 8): made a word
    // at a time, not a byte at a time (decision 264), while 8 responses on 2 cores compete
    // with the downloads for the CPU.
    const auto pixel = [&](std::size_t at) { return offset + at - head.size(); };
    const auto byte_at = [&](std::uint64_t b) {
        return static_cast<char>(splitmix64(stream ^ (b / 8)) >> (8 * (b % 8)));
    };
    for (; i < size && pixel(i) % 8 != 0; ++i) out[i] = byte_at(pixel(i));
    for (; i + 8 <= size; i += 8) {
        std::uint64_t word = splitmix64(stream ^ (pixel(i) / 8));
        if constexpr (std::endian::native == std::endian::big) word = __builtin_bswap64(word);
        std::memcpy(out.data() + i, &word, sizeof word);
    }
    for (; i < size; ++i) out[i] = byte_at(pixel(i));
}

}  // namespace taskfarm
