#include "digest.hpp"

#include <stdexcept>

#include <fmt/format.h>
#include <openssl/evp.h>

#include "lazy_library.hpp"

namespace taskfarm {
namespace {

// The libcrypto functions this file calls, loaded at the first digest (decision 55): only
// downloads take one, so the build passes libcrypto's soname and links only its headers.
struct CryptoApi {
    decltype(&EVP_MD_CTX_new) md_ctx_new;
    decltype(&EVP_MD_CTX_free) md_ctx_free;
    decltype(&EVP_sha256) sha256;
    decltype(&EVP_DigestInit_ex) digest_init;
    decltype(&EVP_DigestUpdate) digest_update;
    decltype(&EVP_DigestFinal_ex) digest_final;
};

const CryptoApi& libcrypto() {
    static const CryptoApi api = [] {
        void* library = lazy::open(TASKFARM_CRYPTO_SONAME);
#define TASKFARM_CRYPTO(name) TASKFARM_LAZY_FUNCTION(library, TASKFARM_CRYPTO_SONAME, name)
        return CryptoApi{TASKFARM_CRYPTO(EVP_MD_CTX_new),   TASKFARM_CRYPTO(EVP_MD_CTX_free),
                         TASKFARM_CRYPTO(EVP_sha256),       TASKFARM_CRYPTO(EVP_DigestInit_ex),
                         TASKFARM_CRYPTO(EVP_DigestUpdate), TASKFARM_CRYPTO(EVP_DigestFinal_ex)};
#undef TASKFARM_CRYPTO
    }();
    return api;
}

}  // namespace

struct Sha256::Context {
    EVP_MD_CTX* md = nullptr;
    ~Context() {
        if (md) libcrypto().md_ctx_free(md);
    }
};

Sha256::Sha256() : context_(std::make_unique<Context>()) {
    context_->md = libcrypto().md_ctx_new();
    if (!context_->md) throw std::runtime_error("cannot allocate a SHA-256 context");
    reset();
}

Sha256::~Sha256() = default;

void Sha256::reset() {
    if (libcrypto().digest_init(context_->md, libcrypto().sha256(), nullptr) != 1)
        throw std::runtime_error("cannot start a SHA-256 digest");
}

void Sha256::update(std::string_view bytes) {
    if (libcrypto().digest_update(context_->md, bytes.data(), bytes.size()) != 1)
        throw std::runtime_error("cannot update a SHA-256 digest");
}

std::string Sha256::hex() {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    if (libcrypto().digest_final(context_->md, digest, &length) != 1)
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
