#pragma once
// What happens in a mode besides final results: worker lifecycle, requeues, task starts.

#include <cstdint>
#include <string>
#include <string_view>

#include "task.hpp"

namespace taskfarm {

// Something that happened in a mode besides a final result. Reported by whoever sees it
// (the dispatcher, for worker processes); times are seconds since the start of the mode.
struct RunEvent {
    enum class Kind {
        WorkerStarted,  // a worker process was spawned; detail: "pid 1234"
        WorkerExited,   // it exited or was killed; detail: why ("signal 9", "silent for 2.0 s")
        Requeued,       // an attempt was lost with its worker and the task queued again
        // A task began on `worker` (task, task_type, attempt set; started_s == at_s). Only
        // for sinks that ask (ResultSink::wants_task_starts, on_task_started: the live view).
        TaskStarted,
    };
    Kind kind = Kind::WorkerStarted;
    double at_s = 0;
    std::string worker;  // "w2"
    std::string detail;
    // WorkerExited only: it died or went silent while the run needed it (not a shutdown);
    // such exits, and every Requeued, are also journal lines (decision 93).
    bool lost = false;
    // Requeued only: the attempt that was lost, from when it was handed to the worker.
    TaskId task = kNoId;
    const TaskType* task_type = nullptr;
    std::uint32_t attempt = 0;
    double started_s = 0;
};

std::string_view to_string(RunEvent::Kind kind);  // "worker started", "worker exited", "requeue"

}  // namespace taskfarm
