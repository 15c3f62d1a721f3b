#pragma once
// --ui's front door: the listening socket and every connection until its request is known
// to carry the page's secret. Anyone on the machine can connect to the port, so what a
// connection may cost is bounded before it proves anything:
// - one thread polls every connection that is still sending its request head; there are at
//   most kMaxPending of them, each for at most kHeadDeadline. Connections from our own user
//   on this machine (the owner's browser, or an ssh tunnel: the kernel says whose socket the
//   other end is) have kMaxPendingOurs of these slots, everyone else the rest, and a
//   newcomer evicts the oldest unproven connection of its own kind: other users, however
//   many connections they open or hold, cannot keep the owner out;
// - a request is checked byte by byte against "GET /TOKEN/": the first byte that differs
//   gets a 404 and the connection is closed, without waiting for the rest;
// - a request that carries the token is handed to a thread of its own, at most kMaxServing
//   at once, kServingOurs of them kept for our own user (503 past that);
// - a connection that would take one of the last descriptors the process may open (its
//   RLIMIT_NOFILE, less a reserve) is closed at once, and accept() failing for want of
//   descriptors pauses accepting: the run's own sockets and pipes come first;
// - stop() closes the door and shuts every connection down, and waits for the handlers for
//   at most kStopWait: the run's exit never waits on a client.

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <thread>

namespace taskfarm {

class UiDoor {
public:
    static constexpr std::size_t kMaxPending = 64;
    static constexpr std::size_t kMaxPendingOurs = 16;
    static constexpr std::size_t kMaxServing = 16;
    static constexpr std::size_t kServingOurs = 4;
    static constexpr std::size_t kMaxHead = 8192;  // bytes of request line and headers
    static constexpr auto kHeadDeadline = std::chrono::seconds(2);
    static constexpr auto kStopWait = std::chrono::seconds(1);

    // A request that carries the token: its socket (non-blocking; the door closes it after
    // the handler returns), its head as read so far (at least the whole request line and
    // headers), and when it was accepted.
    struct Request {
        int fd = -1;
        std::string head;
        std::chrono::steady_clock::time_point accepted;
        bool ours = false;  // from our own user on this machine
    };
    using Handler = std::function<void(Request&)>;

    // Binds `host` (an IPv4 address, 0.0.0.0 for all) and `port` (0: a free one); throws
    // std::system_error with the errno of what failed.
    UiDoor(const std::string& host, int port);
    ~UiDoor();
    UiDoor(const UiDoor&) = delete;
    UiDoor& operator=(const UiDoor&) = delete;

    int port() const { return port_; }
    int listening_fd() const { return listener_; }
    // Starts the door's thread: requests beginning with `prefix` go to `handler`, each on a
    // thread of its own. Call once, after the SignalWatcher (threads inherit its mask).
    void start(std::string prefix, Handler handler);
    // Idempotent; returns within about kStopWait whatever the clients do.
    void stop();

    // Connections closed without being served, for the log: tokenless, late, evicted, over a limit.
    std::size_t refused() const;

private:
    struct Shared;
    void run();
    void hand_over(Request request);

    int listener_ = -1;
    int wake_ = -1;  // eventfd: stop() wakes the door's poll
    int port_ = 0;
    std::string prefix_;
    std::shared_ptr<Shared> shared_;  // also held by each handler thread
    std::thread thread_;
    bool stopped_ = false;
};

}  // namespace taskfarm
