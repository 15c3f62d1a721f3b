// The stock worker's serve_images(): a worker never prepares a run (only a coordinator does),
// and linking the real one would load cpp-httplib, libssl and libcrypto into every worker.

#include <stdexcept>

#include "image_server.hpp"

namespace taskfarm {

std::unique_ptr<RunService> serve_images(Json&) {
    throw std::logic_error("a worker serves no images: only a coordinator prepares a run");
}

}  // namespace taskfarm
