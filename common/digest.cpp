#include "digest.hpp"

#include <stdexcept>

#include <fmt/format.h>
#include <openssl/evp.h>

namespace taskfarm {

struct Sha256::Context {
    EVP_MD_CTX* md = nullptr;
    ~Context() { EVP_MD_CTX_free(md); }
};

Sha256::Sha256() : context_(std::make_unique<Context>()) {
    context_->md = EVP_MD_CTX_new();
    if (!context_->md) throw std::runtime_error("cannot allocate a SHA-256 context");
    reset();
}

Sha256::~Sha256() = default;

void Sha256::reset() {
    if (EVP_DigestInit_ex(context_->md, EVP_sha256(), nullptr) != 1)
        throw std::runtime_error("cannot start a SHA-256 digest");
}

void Sha256::update(std::string_view bytes) {
    if (EVP_DigestUpdate(context_->md, bytes.data(), bytes.size()) != 1)
        throw std::runtime_error("cannot update a SHA-256 digest");
}

std::string Sha256::hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (EVP_DigestFinal_ex(context_->md, digest, &length) != 1)
        throw std::runtime_error("cannot finish a SHA-256 digest");
    std::string text;
    text.reserve(2 * length);
    for (unsigned int i = 0; i < length; ++i) fmt::format_to(std::back_inserter(text), "{:02x}", digest[i]);
    return text;
}

std::string sha256_hex(std::string_view bytes) {
    Sha256 digest;
    digest.update(bytes);
    return digest.hex();
}

}  // namespace taskfarm
