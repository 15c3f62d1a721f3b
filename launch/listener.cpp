#include "listener.hpp"

#include <cstring>
#include <map>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "errors.hpp"
#include "wire.hpp"

namespace taskfarm {
namespace {

constexpr const char* kMonitorEndpoint = "inproc://taskfarm-listener-monitor";
constexpr int kMonitorEvents = ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL;
constexpr auto kPollInterval = std::chrono::milliseconds(100);  // how soon the thread sees a stop
constexpr auto kLogInterval = std::chrono::seconds(1);

// At most one line a second per key (a peer address, a kind of failure), with a count of
// the ones left out: a refused worker that keeps retrying must not flood the log.
class RateLimitedLog {
public:
    template <typename... Args>
    void warn(const std::string& key, fmt::format_string<Args...> format, Args&&... args) {
        Entry& entry = entries_[key];
        const auto now = std::chrono::steady_clock::now();
        if (entry.logged && now - entry.last < kLogInterval) {
            ++entry.suppressed;
            return;
        }
        const std::string text = fmt::format(format, std::forward<Args>(args)...);
        if (entry.suppressed > 0)
            spdlog::warn("{} ({} more like it since the last report)", text, entry.suppressed);
        else
            spdlog::warn("{}", text);
        entry = Entry{now, 0, true};
    }

private:
    struct Entry {
        std::chrono::steady_clock::time_point last;
        std::size_t suppressed = 0;
        bool logged = false;
    };
    std::map<std::string, Entry> entries_;
};

struct ZapReply {
    std::string status;  // "200" admits, "400" refuses, "500" for a request we cannot read
    std::string text;
    std::string user_id;  // becomes the "User-Id" of every frame from that peer
};

void send_reply(zmq::socket_t& zap, const std::string& request_id, const ZapReply& reply) {
    const std::string frames[] = {"1.0", request_id, reply.status, reply.text, reply.user_id, ""};
    for (std::size_t i = 0; i < std::size(frames); ++i)
        zap.send(zmq::buffer(frames[i]), i + 1 < std::size(frames) ? zmq::send_flags::sndmore : zmq::send_flags::none);
}

}  // namespace

Listener::Listener(zmq::context_t& context, zmq::socket_t& router, ListenConfig config)
    : router_(router), config_(std::move(config)) {
    if (::zmq_socket_monitor(router_.handle(), kMonitorEndpoint, kMonitorEvents) != 0) throw zmq::error_t();
    std::promise<void> ready;
    auto started = ready.get_future();
    thread_ = std::jthread([this, &context, &ready](std::stop_token stop) { serve(stop, context, ready); });
    try {
        started.get();  // the handler is bound before the endpoint exists
        wire::configure_listener(router_, config_.keys ? &config_.keys->server : nullptr);
        router_.bind(config_.endpoint);
        endpoint_ = router_.get(zmq::sockopt::last_endpoint);
    } catch (const std::exception& e) {
        ::zmq_socket_monitor(router_.handle(), nullptr, 0);
        thread_.request_stop();
        throw ConfigError(fmt::format("--listen: cannot listen on '{}': {}", config_.endpoint, e.what()));
    }
}

Listener::~Listener() {
    try {
        router_.unbind(endpoint_);
    } catch (const zmq::error_t& e) {
        spdlog::warn("cannot stop listening on '{}': {}", endpoint_, e.what());
    }
    ::zmq_socket_monitor(router_.handle(), nullptr, 0);
    thread_.request_stop();  // joined by the jthread's destructor
}

std::string Listener::describe() const {
    if (!config_.keys) return fmt::format("{} (plaintext, no authentication)", endpoint_);
    std::string names;
    for (const curve::AuthorisedKey& key : config_.keys->workers) names += (names.empty() ? "" : ", ") + key.name;
    return fmt::format("{} (CURVE; {} keys authorised: {})", endpoint_, config_.peer, names);
}

void Listener::serve(std::stop_token stop, zmq::context_t& context, std::promise<void>& ready) {
    zmq::socket_t zap(context, zmq::socket_type::rep);
    zmq::socket_t monitor(context, zmq::socket_type::pair);
    try {
        wire::configure(zap, zmq::socket_type::rep);
        wire::configure(monitor, zmq::socket_type::pair);
        zap.bind(wire::kZapEndpoint);
        monitor.connect(kMonitorEndpoint);
        ready.set_value();
    } catch (...) {
        ready.set_exception(std::current_exception());
        return;
    }
    std::map<std::string, std::string> authorised;  // raw 32-byte key -> name
    if (config_.keys)
        for (const curve::AuthorisedKey& key : config_.keys->workers)
            authorised[curve::decode(key.public_key)] = key.name;
    RateLimitedLog log;

    const auto answer = [&](std::vector<zmq::message_t>& request) -> std::pair<std::string, ZapReply> {
        // RFC 27: version, request id, domain, address, routing id, mechanism, credentials...
        if (request.size() < 6 || request[0].to_string_view() != "1.0")
            return {request.size() > 1 ? request[1].to_string() : "", {"500", "malformed ZAP request", ""}};
        const std::string address = request[3].to_string();
        const std::string mechanism = request[5].to_string();
        if (!config_.keys && mechanism == "NULL") return {request[1].to_string(), {"200", "OK", "plaintext"}};
        if (config_.keys && mechanism == "CURVE" && request.size() >= 7) {
            const std::string key = request[6].to_string();
            if (const auto found = authorised.find(key); found != authorised.end())
                return {request[1].to_string(), {"200", "OK", "CURVE key '" + found->second + "'"}};
            log.warn(address, "refused a {} from {}: its public key {} is not authorised (to admit it, {})",
                     config_.peer, address, curve::encode(key), config_.admit_hint);
            return {request[1].to_string(), {"400", "key not authorised", ""}};
        }
        log.warn(address, "refused a connection from {}: mechanism {} on a {} endpoint", address, mechanism,
                 config_.keys ? "CURVE" : "plaintext");
        return {request[1].to_string(), {"400", "mechanism not allowed", ""}};
    };

    while (!stop.stop_requested()) {
        zmq::pollitem_t items[] = {{zap.handle(), 0, ZMQ_POLLIN, 0}, {monitor.handle(), 0, ZMQ_POLLIN, 0}};
        try {
            zmq::poll(items, 2, kPollInterval);
            if (items[0].revents & ZMQ_POLLIN) {
                std::vector<zmq::message_t> request;
                do {
                    request.emplace_back();
                    if (!zap.recv(request.back(), zmq::recv_flags::none)) break;
                } while (request.back().more());  // frames from libzmq itself, not from the peer
                const auto [id, reply] = answer(request);
                send_reply(zap, id, reply);
            }
            while (const auto event = wire::receive_monitor_event(monitor)) {
                if (!event->endpoint.starts_with("tcp://")) continue;
                if (event->event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL) {
                    if (event->value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC)
                        log.warn("crypto",
                                 "refused a connection on {}: its CURVE handshake could not be decrypted "
                                 "(a worker whose coordinator.public is another coordinator's key?)",
                                 event->endpoint);
                    else if (event->value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
                        log.warn("mechanism", "refused a connection on {}: {}", event->endpoint,
                                 config_.keys ? "the peer does not use CURVE (a worker started without --keys?)"
                                              : "the peer uses CURVE, this coordinator listens in plaintext "
                                                "(a worker started with --keys?)");
                    else
                        log.warn("protocol",
                                 "refused a connection on {}: ZMTP handshake error {:#x} (not a taskfarm "
                                 "worker?)",
                                 event->endpoint, event->value);
                } else {
                    spdlog::debug("a handshake on {} failed: {}", event->endpoint,
                                  std::strerror(static_cast<int>(event->value)));
                }
            }
        } catch (const zmq::error_t& e) {
            if (e.num() == ETERM) return;
            spdlog::error("remote worker gate: {}", e.what());
        }
    }
}

}  // namespace taskfarm
