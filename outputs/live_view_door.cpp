#include "live_view_door.hpp"

#include <arpa/inet.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <mutex>
#include <set>
#include <string_view>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace taskfarm {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::string_view kMethod = "GET /";  // what every page request starts with
constexpr int kBacklog = 128;
constexpr int kAcceptBatch = 16;  // per round: a burst cannot evict a connection before it is read
constexpr auto kAcceptPause = std::chrono::milliseconds(100);  // after running short of descriptors

// The descriptor numbers the door leaves to the run: a connection accepted at or above this
// one is closed at once. Descriptors are numbered lowest free first, so a number this high
// means nearly all below it are in use.
int descriptor_ceiling() {
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY || limit.rlim_cur > (1u << 30))
        return 1 << 30;
    const auto soft = static_cast<long>(limit.rlim_cur);
    const long reserve = std::max(64L, soft / 8);
    return static_cast<int>(std::max(0L, soft - reserve));
}

void close_fd(int fd) {
    if (fd >= 0) ::close(fd);
}

// A short answer to a connection the door will not serve, without waiting for the client to
// read it, then the connection closed.
void refuse(int fd, int status, std::string_view why) {
    const char* reason = status == 404   ? "Not Found"
                         : status == 431 ? "Request Header Fields Too Large"
                                         : "Service Unavailable";
    const std::string body = fmt::format("{}: {}\n", status, why);
    const std::string response = fmt::format(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n"
        "Cache-Control: no-store\r\n\r\n{}",
        status, reason, body.size(), body);
    (void)!::send(fd, response.data(), response.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::close(fd);
}

bool hex_digit(char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); }

// Whether the other end of a connection accepted here is a socket of this machine owned by
// the user we run as: asked of the kernel through sock_diag, as `ss -e` does. No, for
// another user's, another machine's, or when it cannot tell.
class SameUser {
public:
    SameUser() : netlink_(::socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG)) {}
    ~SameUser() { close_fd(netlink_); }
    SameUser(const SameUser&) = delete;
    SameUser& operator=(const SameUser&) = delete;

    bool operator()(int fd, const sockaddr_in& peer) const {
        sockaddr_in local{};
        socklen_t length = sizeof local;
        if (netlink_ < 0 || peer.sin_family != AF_INET ||
            ::getsockname(fd, reinterpret_cast<sockaddr*>(&local), &length) != 0)
            return false;
        struct {
            nlmsghdr header;
            inet_diag_req_v2 request;
        } ask{};
        ask.header.nlmsg_len = sizeof ask;
        ask.header.nlmsg_type = SOCK_DIAG_BY_FAMILY;
        ask.header.nlmsg_flags = NLM_F_REQUEST;  // one socket, looked up exactly: no dump
        ask.request.sdiag_family = AF_INET;
        ask.request.sdiag_protocol = IPPROTO_TCP;
        ask.request.idiag_states = ~0u;
        // The client's socket: its local end is our peer, its remote end is us.
        ask.request.id.idiag_sport = peer.sin_port;
        ask.request.id.idiag_dport = local.sin_port;
        ask.request.id.idiag_src[0] = peer.sin_addr.s_addr;
        ask.request.id.idiag_dst[0] = local.sin_addr.s_addr;
        ask.request.id.idiag_cookie[0] = INET_DIAG_NOCOOKIE;
        ask.request.id.idiag_cookie[1] = INET_DIAG_NOCOOKIE;
        sockaddr_nl kernel{};
        kernel.nl_family = AF_NETLINK;
        if (::sendto(netlink_, &ask, sizeof ask, 0, reinterpret_cast<const sockaddr*>(&kernel), sizeof kernel) < 0)
            return false;
        alignas(nlmsghdr) char answer[1024];
        // The kernel answers while sendto() runs: the reply is there already.
        const ssize_t got = ::recv(netlink_, answer, sizeof answer, MSG_DONTWAIT);
        const auto* header = reinterpret_cast<const nlmsghdr*>(answer);
        if (got < static_cast<ssize_t>(NLMSG_LENGTH(sizeof(inet_diag_msg))) ||
            header->nlmsg_type != SOCK_DIAG_BY_FAMILY)
            return false;  // NLMSG_ERROR: no such socket here (another machine's), or not allowed
        const auto* found = static_cast<const inet_diag_msg*>(NLMSG_DATA(header));
        return found->idiag_uid == ::geteuid();
    }

private:
    const int netlink_;
};

}  // namespace

struct UiDoor::Shared {
    std::mutex mutex;
    std::condition_variable idle;  // serving fell to 0
    std::set<int> serving_fds;     // shut down by stop(); closed, under the mutex, when served
    std::size_t serving = 0;
    bool stopping = false;
    Handler handler;
    std::atomic<std::size_t> refused{0};
};

UiDoor::UiDoor(const std::string& host, int port) : shared_(std::make_shared<Shared>()) {
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(static_cast<std::uint16_t>(port));
    if (::inet_pton(AF_INET, host.c_str(), &address.sin_addr) != 1)
        throw std::system_error(EINVAL, std::generic_category(), "not an IPv4 address");
    listener_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (listener_ < 0) throw std::system_error(errno, std::generic_category(), "socket");
    // SO_REUSEADDR (a port in TIME_WAIT can be had again), never SO_REUSEPORT: a port another
    // program holds must be refused.
    const int yes = 1;
    ::setsockopt(listener_, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    socklen_t length = sizeof address;
    if (::bind(listener_, reinterpret_cast<const sockaddr*>(&address), sizeof address) != 0 ||
        ::listen(listener_, kBacklog) != 0 ||
        ::getsockname(listener_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
        const int error = errno;
        ::close(listener_);
        throw std::system_error(error, std::generic_category(), "bind");
    }
    port_ = ntohs(address.sin_port);
    wake_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_ < 0) {
        const int error = errno;
        ::close(listener_);
        throw std::system_error(error, std::generic_category(), "eventfd");
    }
}

UiDoor::~UiDoor() {
    stop();
    close_fd(listener_);
    close_fd(wake_);
}

std::size_t UiDoor::refused() const { return shared_->refused.load(); }

void UiDoor::start(std::string token, Handler handler) {
    prefix_ = fmt::format("{}{}/", kMethod, token);
    shared_->handler = std::move(handler);
    thread_ = std::thread([this] { run(); });
}

void UiDoor::stop() {
    if (stopped_) return;
    stopped_ = true;
    {
        std::lock_guard lock(shared_->mutex);
        shared_->stopping = true;
    }
    if (thread_.joinable()) {
        const std::uint64_t one = 1;
        (void)!::write(wake_, &one, sizeof one);
        thread_.join();  // it only polls: it sees the wake at once
    }
    close_fd(listener_);
    listener_ = -1;
    std::unique_lock lock(shared_->mutex);
    // Every handler blocks only on its socket (or on a page's queue, which its owner wakes
    // at stop): shut down, the socket fails their next wait.
    for (int fd : shared_->serving_fds) ::shutdown(fd, SHUT_RDWR);
    if (!shared_->idle.wait_for(lock, kStopWait, [&] { return shared_->serving == 0; }))
        spdlog::debug("live view: {} connection(s) still closing; not waiting for them", shared_->serving);
}

void UiDoor::hand_over(Request request) {
    {
        std::lock_guard lock(shared_->mutex);
        const std::size_t limit = request.ours ? kMaxServing : kMaxServing - kServingOurs;
        if (shared_->stopping || shared_->serving >= limit) {
            ++shared_->refused;
            refuse(request.fd, 503,
                   fmt::format("{} requests for this page are being served already; try again", kMaxServing));
            return;
        }
        ++shared_->serving;
        shared_->serving_fds.insert(request.fd);
    }
    const auto done = [](Shared& shared, int fd) {
        {
            std::lock_guard lock(shared.mutex);
            shared.serving_fds.erase(fd);
            ::close(fd);
            --shared.serving;
        }
        shared.idle.notify_all();
    };
    const int fd = request.fd;
    try {
        // Detached: stop() waits for these a bounded time only; each holds what it uses.
        std::thread([shared = shared_, request = std::move(request), done]() mutable {
            try {
                shared->handler(request);
            } catch (const std::exception& e) {
                spdlog::debug("live view: a request failed: {}", e.what());
            }
            done(*shared, request.fd);
        }).detach();
    } catch (const std::system_error&) {  // no thread to be had: this request is not served
        done(*shared_, fd);
    }
}

void UiDoor::run() {
    struct Pending {
        int fd = -1;
        std::string head;
        Clock::time_point accepted;
        bool ours = false;    // from a socket of our own user on this machine
        bool proven = false;  // carries the token: never evicted for a newcomer
    };
    const SameUser same_user;
    std::deque<Pending> pending;  // oldest first
    const int ceiling = descriptor_ceiling();
    Clock::time_point paused_until{};
    std::vector<pollfd> polled;
    const auto drop = [&](std::size_t i) {
        ++shared_->refused;
        ::close(pending[i].fd);
        pending[i].fd = -1;
    };
    // -1: not the page's request (refused at once); 0: cannot tell yet; 1: it is. Only the
    // public parts ("GET /", hex digits, the final "/") are judged byte by byte; the token
    // itself only once all of it is there, in constant time, so that how soon a connection
    // is closed tells nothing about it.
    const auto judge = [&](const std::string& head) {
        const std::size_t n = std::min(head.size(), prefix_.size());
        for (std::size_t i = 0; i < n; ++i) {
            const bool fixed = i < kMethod.size() || i + 1 == prefix_.size();
            if (fixed ? head[i] != prefix_[i] : !hex_digit(head[i])) return -1;
        }
        if (head.size() < prefix_.size()) return 0;
        unsigned char differ = 0;
        for (std::size_t i = kMethod.size(); i < prefix_.size(); ++i)
            differ |= static_cast<unsigned char>(head[i] ^ prefix_[i]);
        return differ == 0 ? 1 : -1;
    };
    while (true) {
        Clock::time_point now = Clock::now();
        for (std::size_t i = 0; i < pending.size(); ++i)
            if (now - pending[i].accepted >= kHeadDeadline) drop(i);
        std::erase_if(pending, [](const Pending& p) { return p.fd < 0; });

        polled.clear();
        polled.push_back({wake_, POLLIN, 0});
        const bool accepting = now >= paused_until;
        polled.push_back({accepting ? listener_ : -1, POLLIN, 0});
        for (const Pending& p : pending) polled.push_back({p.fd, POLLIN, 0});
        auto wait = Clock::duration::max();
        if (!accepting) wait = paused_until - now;
        if (!pending.empty()) wait = std::min(wait, pending.front().accepted + kHeadDeadline - now);
        const int timeout_ms = wait == Clock::duration::max()
                                   ? -1
                                   : static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(wait).count()) + 1;
        if (::poll(polled.data(), polled.size(), timeout_ms) < 0) {
            if (errno == EINTR) continue;
            spdlog::error("live view: poll failed: {}; the page is no longer served", std::strerror(errno));
            break;
        }
        if (polled[0].revents != 0) break;  // stop()

        // Requests first: what has arrived is judged before newcomers can evict it.
        for (std::size_t i = 0; i < pending.size(); ++i) {
            if (polled[i + 2].revents == 0) continue;
            Pending& p = pending[i];
            char buffer[2048];
            const std::size_t room = std::min(sizeof buffer, kMaxHead - p.head.size());
            const ssize_t got = ::recv(p.fd, buffer, room, 0);
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) continue;
            if (got <= 0) {
                drop(i);
                continue;
            }
            p.head.append(buffer, static_cast<std::size_t>(got));
            const int verdict = judge(p.head);
            if (verdict < 0) {
                ++shared_->refused;
                refuse(p.fd, 404, "the page is at the address the coordinator printed");
                p.fd = -1;
                continue;
            }
            p.proven = verdict > 0;
            if (p.proven &&
                (p.head.find("\r\n\r\n") != std::string::npos || p.head.find("\n\n") != std::string::npos)) {
                hand_over({p.fd, std::move(p.head), p.accepted, p.ours});
                p.fd = -1;
            } else if (p.head.size() >= kMaxHead) {
                ++shared_->refused;
                refuse(p.fd, 431, fmt::format("a request head is at most {} bytes", kMaxHead));
                p.fd = -1;
            }
        }
        std::erase_if(pending, [](const Pending& p) { return p.fd < 0; });

        if (!accepting || (polled[1].revents & POLLIN) == 0) continue;
        now = Clock::now();
        for (int i = 0; i < kAcceptBatch; ++i) {
            sockaddr_in peer{};
            socklen_t peer_length = sizeof peer;
            const int fd =
                ::accept4(listener_, reinterpret_cast<sockaddr*>(&peer), &peer_length, SOCK_NONBLOCK | SOCK_CLOEXEC);
            if (fd < 0) {
                if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO) continue;
                if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM)
                    paused_until = now + kAcceptPause;
                break;  // EAGAIN: none left
            }
            if (fd >= ceiling) {  // the run's descriptors come first
                ++shared_->refused;
                ::close(fd);
                paused_until = now + kAcceptPause;
                break;
            }
            // Our user's connections and everyone else's have slots of their own: a newcomer
            // evicts the oldest unproven one of its own kind only, so other users, however many
            // connections they open, never take the owner's.
            const bool ours = same_user(fd, peer);
            const std::size_t limit = ours ? kMaxPendingOurs : kMaxPending - kMaxPendingOurs;
            if (static_cast<std::size_t>(std::count_if(pending.begin(), pending.end(),
                                                       [&](const Pending& p) { return p.ours == ours; })) >= limit) {
                const auto oldest = std::find_if(pending.begin(), pending.end(),
                                                 [&](const Pending& p) { return p.ours == ours && !p.proven; });
                ++shared_->refused;
                if (oldest == pending.end()) {
                    ::close(fd);
                    continue;
                }
                ::close(oldest->fd);
                pending.erase(oldest);
            }
            pending.push_back({fd, {}, now, ours, false});
        }
    }
    for (const Pending& p : pending) ::close(p.fd);
}

}  // namespace taskfarm
