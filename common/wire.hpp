#pragma once
// The only place that sets ZeroMQ socket options, plus send/receive helpers.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include <zmq.hpp>

namespace taskfarm::wire {

// LINGER 0 and the frame size limit; ROUTER sockets also get ROUTER_MANDATORY.
void configure(zmq::socket_t& socket, zmq::socket_type type);

// Sends one frame; false when it would block or the peer is gone (EHOSTUNREACH).
bool send(zmq::socket_t& socket, std::string_view frame);
// Sends [identity, frame] on a ROUTER; false when the peer is gone.
bool send_to(zmq::socket_t& router, std::string_view identity, std::string_view frame);

// Milliseconds to pass to zmq::poll: never negative, never "forever".
std::chrono::milliseconds poll_timeout(std::chrono::steady_clock::time_point deadline);

}  // namespace taskfarm::wire
