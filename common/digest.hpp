#pragma once
// SHA-256 by OpenSSL's EVP interface (libcrypto, loaded at the first digest); the only file
// that includes OpenSSL.

#include <memory>
#include <string>
#include <string_view>

namespace taskfarm {

// Feed bytes with update(), then read hex() once. Throws std::runtime_error if OpenSSL fails.
class Sha256 {
public:
    Sha256();
    ~Sha256();
    Sha256(const Sha256&) = delete;
    Sha256& operator=(const Sha256&) = delete;

    void update(std::string_view bytes);
    // The digest of everything fed since construction or reset(), as 64 lowercase hex digits.
    std::string hex();
    void reset();  // start over, as if new

private:
    struct Context;
    std::unique_ptr<Context> context_;
};

// The SHA-256 of `bytes` as 64 lowercase hex digits.
std::string sha256_hex(std::string_view bytes);

}  // namespace taskfarm
