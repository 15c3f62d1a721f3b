#include "events.hpp"

namespace taskfarm {

std::string_view to_string(RunEvent::Kind kind) {
    switch (kind) {
        case RunEvent::Kind::WorkerStarted: return "worker started";
        case RunEvent::Kind::WorkerExited: return "worker exited";
        case RunEvent::Kind::Requeued: return "requeue";
        case RunEvent::Kind::TaskStarted: return "task started";
    }
    return "unknown";
}

}  // namespace taskfarm
