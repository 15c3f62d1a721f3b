#pragma once
// Shared libraries opened at their first use instead of at start-up (decision 55). libcurl
// and libcrypto bring 28 libraries with them, which cost a worker ~4 ms of its ~8 ms start;
// a worker that runs sleep or CPU tasks never needs them.

#include <string>

namespace taskfarm::lazy {

// The library `soname` (e.g. "libcurl.so.4"), never closed; opening it again returns the
// same handle (dlopen counts the opens). Throws std::runtime_error naming the library when it cannot be loaded.
void* open(const char* soname);

// The address of `name` in `library` (a handle from open()). Throws std::runtime_error naming
// the symbol when it is missing.
void* symbol(void* library, const char* soname, const char* name);

// symbol() as a pointer to a function of the type F, e.g. lazy::function<decltype(curl_easy_init)>.
template <typename F>
F* function(void* library, const char* soname, const char* name) {
    return reinterpret_cast<F*>(symbol(library, soname, name));
}

}  // namespace taskfarm::lazy

// One member of an API table: `name`'s pointer from `library`, typed as `name` is declared.
#define TASKFARM_LAZY_FUNCTION(library, soname, name) ::taskfarm::lazy::function<decltype(name)>(library, soname, #name)
