#pragma once
// The fork server (decision 101): one single-threaded process per coordinator, exec'd once
// with the worker's code and libraries loaded, that forks each local worker on request.
// Its children are the coordinator's (CLONE_PARENT): the coordinator reaps them, sees their
// exits at once and counts their CPU time, as when it exec'd them itself.

#include <sys/types.h>

#include <optional>
#include <string>
#include <vector>

#include "fork_protocol.hpp"
#include "task.hpp"

namespace taskfarm {

// Serves requests on `channel` until the coordinator closes it (returns nullopt: the server
// exits). A request is "CPU\0ARG\0ARG\0...": the server forks a child whose parent is the
// coordinator (`coordinator`), pinned to CPU when it is >= 0, in a process group of its
// own, dying with the coordinator; the call returns in that child, with ARGs, for
// worker_main to run. Before serving, every type of `registry` named in `preload` (every
// type when it is null) preloads what its first task would load (TaskType::preload), so
// each worker starts with it; a type the run does not use adds nothing to each fork.
std::optional<std::vector<std::string>> serve_forks(const Registry& registry, int channel, pid_t coordinator,
                                                    const std::vector<std::string>* preload = nullptr);

}  // namespace taskfarm
