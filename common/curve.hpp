#pragma once
// CurveZMQ keys for remote workers, kept as Z85 text files (40 characters and a newline),
// and the rules about tcp endpoints that both binaries share. Key pairs come from libzmq's
// zmq_curve_keypair; nothing here does cryptography of its own.
//
// A key directory written by `coordinator keygen DIR`:
//   coordinator.secret  the coordinator's secret key (mode 0600): stays on its machine
//   coordinator.public  its public key: every worker needs it to know whom it talks to
//   worker.secret       a worker secret key (mode 0600): copied to each worker machine
//   worker.public       its public key: the coordinator admits workers holding the secret
//   client.secret       a client key (mode 0600): for `submit`, `status`... over tcp to a server
//   client.public       its public key: `serve --listen-clients` admits clients holding the
//                       secret, and never a worker key (a worker machine is not a client)

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace taskfarm::curve {

inline constexpr std::size_t kZ85KeyChars = 40;  // 32 bytes in Z85

struct KeyPair {
    std::string public_key;  // Z85
    std::string secret_key;  // Z85
};

struct AuthorisedKey {
    std::string name;        // the file it came from, without ".public": "worker", "hostb"
    std::string public_key;  // Z85
};

// What a coordinator listening with --keys needs.
struct ServerKeys {
    KeyPair server;
    std::vector<AuthorisedKey> workers;  // the coordinator refuses to listen while this is empty
};

// What a worker (or a service client) connecting with --keys needs.
struct ClientKeys {
    KeyPair worker;                 // its own pair: worker.secret, or client.secret for a client
    std::string server_public_key;  // Z85: the coordinator's
};

// The key pairs `coordinator keygen DIR` writes, by name (DIR/NAME.secret, DIR/NAME.public).
inline const std::vector<std::string> kAllKeyPairs{"coordinator", "worker", "client"};

// Whether this libzmq can do CURVE (it was built with libsodium or tweetnacl).
bool available();

// A fresh key pair from zmq_curve_keypair. Throws std::runtime_error.
KeyPair generate();

// Writes DIR/NAME.secret and DIR/NAME.public for each of `names` (kAllKeyPairs, or "worker"
// alone for another worker machine...), creating DIR (mode 0700) if needed. Secret files get
// mode 0600. Writes nothing and throws std::runtime_error naming the file when any of them
// already exists. Returns the paths written.
std::vector<std::filesystem::path> write_key_directory(const std::filesystem::path& dir,
                                                       const std::vector<std::string>& names);

// Reads one Z85 key file. Throws std::runtime_error "cannot read key 'PATH': reason" when
// the file is missing or does not hold exactly one Z85 key.
std::string read_key(const std::filesystem::path& path);

// DIR/NAME.secret, with its public key computed from it (zmq_curve_public); when DIR/NAME.public
// exists too, it must match. Warns when the secret file is readable by other users.
KeyPair read_key_pair(const std::filesystem::path& dir, std::string_view name);

// The coordinator's pair from `keys_dir` (coordinator.secret), and the worker key it
// authorises (worker.public) when that file is there. Throws std::runtime_error.
ServerKeys read_server_keys(const std::filesystem::path& keys_dir);

// Every NAME.public file in `dir`, by name. Throws std::runtime_error when one is bad or
// there is none.
std::vector<AuthorisedKey> read_authorised_keys(const std::filesystem::path& dir);

// A worker's keys from `dir`: worker.secret and coordinator.public; `name` "client": a
// service client's, client.secret and coordinator.public.
ClientKeys read_client_keys(const std::filesystem::path& dir, std::string_view name = "worker");

// The 32 raw bytes of a Z85 key (for comparing with what ZAP hands over).
std::string decode(std::string_view z85);
// Z85 of 32 raw bytes.
std::string encode(std::string_view raw);

// tcp://HOST:PORT split up; nullopt unless `endpoint` has that form (PORT 1-65535, or "*"
// for "any free port" when `wildcard_port`). HOST may be an IPv4 address, [IPv6], a name or "*".
struct TcpEndpoint {
    std::string host;
    std::string port;
};
std::optional<TcpEndpoint> parse_tcp_endpoint(std::string_view endpoint, bool wildcard_port);

}  // namespace taskfarm::curve
