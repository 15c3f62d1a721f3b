#pragma once
// The fork server's protocol with its coordinator (decision 101): one SOCK_SEQPACKET socket,
// descriptor 3 in the server, one request or reply per packet. Request: "CPU\0ARG\0ARG..."
// (the worker's arguments after the program and its prefix); reply: a ForkReply. The server's
// first packet, once it has preloaded its types, is kForkServerReady (decision 262).

#include <cstddef>
#include <cstdint>

namespace taskfarm {

inline constexpr int kForkServerChannel = 3;
inline constexpr std::size_t kMaxForkRequest = 64 * 1024;
// The server's name in /proc/PID/comm (ps): its workers have the program's.
inline constexpr const char* kForkServerName = "fork-server";

// The new worker's pid, or -1 and the errno of the failed fork.
struct ForkReply {
    std::int32_t pid = -1;
    std::int32_t error = 0;
};

// The server is ready to fork (its preload done): a reply with pid 0, which no fork answers.
inline constexpr ForkReply kForkServerReady{.pid = 0, .error = 0};

}  // namespace taskfarm
