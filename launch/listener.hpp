#pragma once
// The way in for remote workers: binds the coordinator's ROUTER on a tcp:// endpoint too.
// With keys it is a CURVE server, and a ZAP handler (RFC 27) admits only workers whose
// public key is authorised; without, it is plaintext (loopback, or --insecure). Every
// connection on it goes through the handler, which names the peer in the "User-Id"
// metadata of its frames: that is how the dispatcher tells remote workers from local ones.
// Refused keys and failed handshakes are logged.
//
// A thread of its own answers ZAP requests and reads the ROUTER's monitor; the ROUTER
// itself stays on the thread that owns it, which must construct and destroy the Listener.

#include <future>
#include <optional>
#include <string>
#include <thread>

#include <zmq.hpp>

#include "curve.hpp"

namespace taskfarm {

struct ListenConfig {
    std::string endpoint;                   // tcp://ADDR:PORT; port * picks a free one
    std::optional<curve::ServerKeys> keys;  // CURVE when set, plaintext otherwise
    // Whom it admits, for its log lines: "worker" (the coordinator's --listen), "client"
    // (serve --listen-clients), and how to admit another key.
    std::string peer = "worker";
    std::string admit_hint = "put it in a NAME.public file in the --authorized directory";
};

class Listener {
public:
    // Starts the ZAP handler, then binds `router` on config.endpoint (after any ipc://
    // endpoint it already has, which stays plaintext). Throws ConfigError naming --listen
    // when the endpoint cannot be bound.
    Listener(zmq::context_t& context, zmq::socket_t& router, ListenConfig config);
    // Unbinds the endpoint, then stops the handler: libzmq admits every CURVE client when no
    // ZAP handler answers, so the handler must outlive the endpoint.
    ~Listener();
    Listener(const Listener&) = delete;
    Listener& operator=(const Listener&) = delete;

    // What was bound, with the real port: "tcp://127.0.0.1:40123".
    const std::string& endpoint() const { return endpoint_; }
    // "tcp://127.0.0.1:40123 (CURVE, 2 worker keys authorised)" or "... (plaintext)".
    std::string describe() const;

private:
    void serve(std::stop_token stop, zmq::context_t& context, std::promise<void>& ready);

    zmq::socket_t& router_;
    const ListenConfig config_;
    std::string endpoint_;
    std::jthread thread_;
};

}  // namespace taskfarm
