#include "curve.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <zmq.h>

namespace taskfarm::curve {
namespace {

constexpr std::size_t kKeyBytes = 32;

std::string errno_text() { return std::strerror(errno); }

// Creates `path` (it must not exist) with `mode` exactly, whatever the umask, and writes `text`.
void write_new_file(const std::filesystem::path& path, const std::string& text, mode_t mode) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0) throw std::runtime_error(fmt::format("cannot create '{}': {}", path.string(), errno_text()));
    bool ok = ::fchmod(fd, mode) == 0;
    for (std::size_t done = 0; ok && done < text.size();) {
        const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
        if (n < 0 && errno == EINTR) continue;
        ok = n > 0;
        if (ok) done += static_cast<std::size_t>(n);
    }
    ok = ok && ::fsync(fd) == 0;
    const std::string reason = ok ? "" : errno_text();
    ::close(fd);
    if (!ok) throw std::runtime_error(fmt::format("cannot write '{}': {}", path.string(), reason));
}

bool is_z85_key(std::string_view text) {
    if (text.size() != kZ85KeyChars) return false;
    std::uint8_t raw[kKeyBytes];
    const std::string copy(text);
    return ::zmq_z85_decode(raw, copy.c_str()) != nullptr;
}

std::string public_of(const std::string& secret, const std::filesystem::path& path) {
    char public_key[kZ85KeyChars + 1] = {};
    if (::zmq_curve_public(public_key, secret.c_str()) != 0)
        throw std::runtime_error(
            fmt::format("cannot derive the public key of '{}': {}", path.string(), ::zmq_strerror(::zmq_errno())));
    return public_key;
}

}  // namespace

bool available() { return ::zmq_has("curve") == 1; }

KeyPair generate() {
    char public_key[kZ85KeyChars + 1] = {};
    char secret_key[kZ85KeyChars + 1] = {};
    if (::zmq_curve_keypair(public_key, secret_key) != 0)
        throw std::runtime_error(fmt::format("cannot make a CURVE key pair: {}", ::zmq_strerror(::zmq_errno())));
    return {public_key, secret_key};
}

std::vector<std::filesystem::path> write_key_directory(const std::filesystem::path& dir,
                                                       const std::vector<std::string>& names) {
    std::vector<std::filesystem::path> paths;
    for (const std::string& name : names)
        for (const char* suffix : {".secret", ".public"}) paths.push_back(dir / (name + suffix));
    for (const auto& path : paths) {
        std::error_code ec;
        if (std::filesystem::symlink_status(path, ec).type() != std::filesystem::file_type::not_found)
            throw std::runtime_error(
                fmt::format("refusing to overwrite '{}': remove it first, or choose another directory", path.string()));
    }
    if (!std::filesystem::exists(dir)) {
        std::error_code ec;
        std::filesystem::create_directories(dir, ec);
        if (ec) throw std::runtime_error(fmt::format("cannot create directory '{}': {}", dir.string(), ec.message()));
        std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);
    }
    std::vector<std::filesystem::path> written;
    for (const std::string& name : names) {
        const KeyPair pair = generate();
        written.push_back(dir / (name + ".secret"));
        write_new_file(written.back(), pair.secret_key + "\n", 0600);
        written.push_back(dir / (name + ".public"));
        write_new_file(written.back(), pair.public_key + "\n", 0644);
    }
    return written;
}

std::string read_key(const std::filesystem::path& path) {
    std::ifstream in(path);
    if (!in) throw std::runtime_error(fmt::format("cannot read key '{}': {}", path.string(), errno_text()));
    std::stringstream buffer;
    buffer << in.rdbuf();
    std::string text = buffer.str();
    const auto last = text.find_last_not_of(" \t\r\n");
    text.erase(last == std::string::npos ? 0 : last + 1);
    if (!is_z85_key(text))
        throw std::runtime_error(fmt::format(
            "cannot read key '{}': it does not hold one CURVE key ({} Z85 characters, as `coordinator keygen` writes)",
            path.string(), kZ85KeyChars));
    return text;
}

KeyPair read_key_pair(const std::filesystem::path& dir, std::string_view name) {
    const std::filesystem::path secret_path = dir / (std::string(name) + ".secret");
    KeyPair pair;
    pair.secret_key = read_key(secret_path);
    pair.public_key = public_of(pair.secret_key, secret_path);
    struct stat info {};
    if (::stat(secret_path.c_str(), &info) == 0 && (info.st_mode & 0077) != 0)
        spdlog::warn("'{}' may be read by other users (mode {:o}): chmod 600 it", secret_path.string(),
                     info.st_mode & 0777);
    const std::filesystem::path public_path = dir / (std::string(name) + ".public");
    if (std::filesystem::exists(public_path) && read_key(public_path) != pair.public_key)
        throw std::runtime_error(
            fmt::format("'{}' is not the public key of '{}'", public_path.string(), secret_path.string()));
    return pair;
}

ServerKeys read_server_keys(const std::filesystem::path& keys_dir) {
    ServerKeys keys;
    keys.server = read_key_pair(keys_dir, "coordinator");
    if (const auto own = keys_dir / "worker.public"; std::filesystem::exists(own))
        keys.workers.push_back({"worker", read_key(own)});
    return keys;
}

std::vector<AuthorisedKey> read_authorised_keys(const std::filesystem::path& dir) {
    std::error_code ec;
    std::vector<std::filesystem::path> files;
    for (const auto& entry : std::filesystem::directory_iterator(dir, ec))
        if (entry.path().extension() == ".public") files.push_back(entry.path());
    if (ec) throw std::runtime_error(fmt::format("cannot read directory '{}': {}", dir.string(), ec.message()));
    if (files.empty()) throw std::runtime_error(fmt::format("'{}' holds no NAME.public key file", dir.string()));
    std::sort(files.begin(), files.end());
    std::vector<AuthorisedKey> keys;
    for (const auto& file : files) keys.push_back({file.stem().string(), read_key(file)});
    return keys;
}

ClientKeys read_client_keys(const std::filesystem::path& dir, std::string_view name) {
    return {read_key_pair(dir, name), read_key(dir / "coordinator.public")};
}

std::string decode(std::string_view z85) {
    std::string raw(kKeyBytes, '\0');
    const std::string copy(z85);
    if (copy.size() != kZ85KeyChars || !::zmq_z85_decode(reinterpret_cast<std::uint8_t*>(raw.data()), copy.c_str()))
        throw std::invalid_argument("not a Z85 key");
    return raw;
}

std::string encode(std::string_view raw) {
    if (raw.size() != kKeyBytes) return "(not a 32-byte key)";
    char z85[kZ85KeyChars + 1] = {};
    ::zmq_z85_encode(z85, reinterpret_cast<const std::uint8_t*>(raw.data()), raw.size());
    return z85;
}

std::optional<TcpEndpoint> parse_tcp_endpoint(std::string_view endpoint, bool wildcard_port) {
    constexpr std::string_view scheme = "tcp://";
    if (!endpoint.starts_with(scheme)) return std::nullopt;
    const std::string_view rest = endpoint.substr(scheme.size());
    const auto colon = rest.rfind(':');
    if (colon == std::string_view::npos || colon == 0) return std::nullopt;
    const std::string_view host = rest.substr(0, colon);
    const std::string_view port = rest.substr(colon + 1);
    if (host.find_first_of("/;@ ") != std::string_view::npos) return std::nullopt;
    if (host.front() == '[' && host.back() != ']') return std::nullopt;
    if (!(wildcard_port && port == "*")) {
        unsigned number = 0;
        const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), number);
        if (ec != std::errc{} || end != port.data() + port.size() || number < 1 || number > 65535) return std::nullopt;
    }
    return TcpEndpoint{std::string(host), std::string(port)};
}

}  // namespace taskfarm::curve
