#include "wire.hpp"

#include <algorithm>
#include <cstring>

#include "protocol.hpp"

namespace taskfarm::wire {

void configure(zmq::socket_t& socket, zmq::socket_type type) {
    socket.set(zmq::sockopt::linger, 0);  // closing never waits on dead peers
    socket.set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(proto::kMaxFrameBytes));
    if (type == zmq::socket_type::router)
        socket.set(zmq::sockopt::router_mandatory, true);  // unknown peer -> error, not silence
}

void configure_listener(zmq::socket_t& router, const curve::KeyPair* server) {
    router.set(zmq::sockopt::linger, static_cast<int>(kListenerLinger.count()));
    router.set(zmq::sockopt::zap_domain, kZapDomain);
    if (server) {
        router.set(zmq::sockopt::curve_server, true);
        router.set(zmq::sockopt::curve_secretkey, server->secret_key);
    }
}

void configure_curve_client(zmq::socket_t& socket, const curve::ClientKeys& keys) {
    socket.set(zmq::sockopt::curve_serverkey, keys.server_public_key);
    socket.set(zmq::sockopt::curve_publickey, keys.worker.public_key);
    socket.set(zmq::sockopt::curve_secretkey, keys.worker.secret_key);
}

std::optional<std::string> property(const zmq::message_t& frame, const char* name) {
    // zmq_msg_gets takes a non-const message but only reads it.
    const char* value = ::zmq_msg_gets(const_cast<zmq::message_t&>(frame).handle(), name);
    if (!value) return std::nullopt;
    return std::string(value);
}

std::optional<MonitorEvent> receive_monitor_event(zmq::socket_t& monitor) {
    // Two frames: 6 bytes (uint16 event, uint32 value, native byte order), then the endpoint.
    zmq::message_t head;
    if (!monitor.recv(head, zmq::recv_flags::dontwait)) return std::nullopt;
    MonitorEvent event;
    if (head.size() >= 6) {
        std::memcpy(&event.event, head.data(), sizeof event.event);
        std::memcpy(&event.value, static_cast<const char*>(head.data()) + 2, sizeof event.value);
    }
    if (head.more()) {
        zmq::message_t address;
        if (monitor.recv(address, zmq::recv_flags::none)) event.endpoint = address.to_string();
    }
    return event;
}

bool send(zmq::socket_t& socket, std::string_view frame) {
    try {
        return socket.send(zmq::buffer(frame.data(), frame.size()), zmq::send_flags::dontwait).has_value();
    } catch (const zmq::error_t& e) {
        if (e.num() == EHOSTUNREACH) return false;
        throw;
    }
}

bool send_to(zmq::socket_t& router, std::string_view identity, std::string_view frame) {
    try {
        if (!router.send(zmq::buffer(identity.data(), identity.size()),
                         zmq::send_flags::sndmore | zmq::send_flags::dontwait))
            return false;
        return router.send(zmq::buffer(frame.data(), frame.size()), zmq::send_flags::dontwait).has_value();
    } catch (const zmq::error_t& e) {
        if (e.num() == EHOSTUNREACH) return false;  // a departed worker, not a crash
        throw;
    }
}

std::chrono::milliseconds poll_timeout(std::chrono::steady_clock::time_point deadline) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    return std::max(left, std::chrono::milliseconds(0));
}

}  // namespace taskfarm::wire
