#pragma once
// A farm that stays up (docs/service.md): `coordinator serve` owns the workers and runs the
// jobs that `submit` hands it, several at once; `status`, `jobs`, `wait` and `cancel` ask it
// about them. Server and clients talk over ZeroMQ (ipc://) in a directory only its owner may
// enter (0700): one request, one reply, each a msgpack map bounded as the rest of the wire.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "coordinator.hpp"

namespace taskfarm {

// The service's subcommands, when argv[1] names one (serve, submit, status, jobs, wait, and
// cancel without --run, which is the one-shot run's): its exit code. nullopt otherwise. Throws
// ConfigError (exit 2) or another exception (exit 1), as the one-shot run does.
std::optional<int> service_main(const ProgramInfo& program, int argc, const char* const* argv);

namespace service {

// A request or a reply: {"op": ..., ...} as a msgpack map, at most proto::kMaxFrameBytes,
// nesting and element counts bounded as the protocol's decode() bounds them.
std::string encode(const nlohmann::json& message);
// nullopt, with `error` set, for a frame that is not such a map.
std::optional<nlohmann::json> decode(std::string_view frame, std::string& error);

// --socket's default: $TASKFARM_SOCKET, else $XDG_RUNTIME_DIR/taskfarm/socket, else
// /tmp/taskfarm-UID/socket.
std::filesystem::path default_socket();

// Why `dir` may not hold the service's socket or state: not a directory of this user's with
// mode 0700 (a symlink is not one); empty when it may.
std::string untrusted(const std::filesystem::path& dir);

// Why a job waiting for `after_ok` (--afterok) and `after_not_ok` (--afternotok) could never
// run: one job in both (it cannot end both ways). Empty when it could.
std::string contradiction(const std::vector<std::uint64_t>& after_ok, const std::vector<std::uint64_t>& after_not_ok);

// A wait reply holds results up to about this many bytes (one larger result alone is sent).
inline constexpr std::size_t kReplyBytes = std::size_t{3} << 20;
// A submit sends its tasks in chunks of at most this many (and kReplyBytes), up to
// kChunksAhead of them before their replies.
inline constexpr std::size_t kChunkTasks = 1000;
inline constexpr std::size_t kChunksAhead = 4;
// The server answers a wait within this long even when nothing new came, so that a client
// knows it is alive; a client that hears nothing for kSilence connects again (the server
// restarted) and asks again from where it was.
inline constexpr std::chrono::milliseconds kWaitPoll{1000};
inline constexpr std::chrono::milliseconds kSilence{5000};

}  // namespace service
}  // namespace taskfarm
