#include "lazy_library.hpp"

#include <dlfcn.h>

#include <stdexcept>

#include <fmt/format.h>

namespace taskfarm::lazy {

void* open(const char* soname) {
    // RTLD_NOW: a missing symbol fails here, once, not in the middle of a task.
    void* handle = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
        const char* why = dlerror();
        throw std::runtime_error(fmt::format("cannot load {}: {}", soname, why ? why : "unknown error"));
    }
    return handle;
}

void* symbol(void* library, const char* soname, const char* name) {
    dlerror();  // clear a stale error
    void* address = dlsym(library, name);
    if (!address) {
        const char* why = dlerror();
        throw std::runtime_error(fmt::format("cannot find {} in {}: {}", name, soname, why ? why : "null symbol"));
    }
    return address;
}

}  // namespace taskfarm::lazy
