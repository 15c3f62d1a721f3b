#include "wire.hpp"

#include <algorithm>

#include "protocol.hpp"

namespace taskfarm::wire {

void configure(zmq::socket_t& socket, zmq::socket_type type) {
    socket.set(zmq::sockopt::linger, 0);  // closing never waits on dead peers
    socket.set(zmq::sockopt::maxmsgsize, static_cast<std::int64_t>(proto::kMaxFrameBytes));
    if (type == zmq::socket_type::router)
        socket.set(zmq::sockopt::router_mandatory, true);  // unknown peer -> error, not silence
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
