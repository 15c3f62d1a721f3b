#pragma once
// The only place that sets ZeroMQ socket options, plus send/receive helpers.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <zmq.hpp>

#include "curve.hpp"

namespace taskfarm::wire {

// The ZAP domain of the coordinator's tcp endpoint, and where libzmq asks ZAP (RFC 27).
inline constexpr const char* kZapDomain = "taskfarm";
inline constexpr const char* kZapEndpoint = "inproc://zeromq.zap.01";
// How long closing a ROUTER with a tcp endpoint waits for queued frames (SHUTDOWN to remote
// workers) to leave; a dead peer costs at most this at exit.
inline constexpr std::chrono::milliseconds kListenerLinger{1000};

// LINGER 0 and the frame size limit; ROUTER sockets also get ROUTER_MANDATORY.
void configure(zmq::socket_t& socket, zmq::socket_type type);

// Before binding `router` on a tcp:// endpoint: kListenerLinger, the ZAP domain (so every
// connection on it goes through the ZAP handler), and with `server` the CURVE server role.
// Options apply to the endpoints bound after this call only: an ipc:// endpoint bound
// before it stays plaintext.
void configure_listener(zmq::socket_t& router, const curve::KeyPair* server);

// Before connecting: CURVE client with the worker's pair and the coordinator's public key.
void configure_curve_client(zmq::socket_t& socket, const curve::ClientKeys& keys);

// A metadata property of a received frame ("User-Id", "Peer-Address"); nullopt when absent.
std::optional<std::string> property(const zmq::message_t& frame, const char* name);

// One event from a zmq_socket_monitor PAIR socket, or nullopt when none is waiting.
struct MonitorEvent {
    std::uint16_t event = 0;  // ZMQ_EVENT_*
    std::uint32_t value = 0;  // errno, ZMQ_PROTOCOL_ERROR_* or ZAP status, by event
    std::string endpoint;
};
std::optional<MonitorEvent> receive_monitor_event(zmq::socket_t& monitor);

// Sends one frame; false when it would block or the peer is gone (EHOSTUNREACH).
bool send(zmq::socket_t& socket, std::string_view frame);
// Sends [identity, frame] on a ROUTER; false when the peer is gone.
bool send_to(zmq::socket_t& router, std::string_view identity, std::string_view frame);

// Milliseconds to pass to zmq::poll: never negative, never "forever".
std::chrono::milliseconds poll_timeout(std::chrono::steady_clock::time_point deadline);

}  // namespace taskfarm::wire
