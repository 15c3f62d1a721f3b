#include "running_board.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace taskfarm {
namespace {

constexpr std::size_t kSlots = 2;
constexpr std::size_t kBytes = kSlots * sizeof(std::uint64_t);

std::filesystem::path board_path(const std::filesystem::path& dir, pid_t pid) {
    return dir / fmt::format("{}.running", pid);
}

}  // namespace

std::unique_ptr<RunningBoard> RunningBoard::create(const std::filesystem::path& dir) {
    const std::filesystem::path path = board_path(dir, ::getpid());
    // O_NOFOLLOW and O_TRUNC: a file left by an earlier process of the same pid is started over.
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        spdlog::warn("cannot create '{}': {}; a crash here is charged to the oldest task without a result",
                     path.string(), std::strerror(errno));
        return nullptr;
    }
    void* map = MAP_FAILED;
    if (::ftruncate(fd, kBytes) == 0) map = ::mmap(nullptr, kBytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    const int error = errno;
    ::close(fd);
    if (map == MAP_FAILED) {
        spdlog::warn("cannot map '{}': {}; a crash here is charged to the oldest task without a result", path.string(),
                     std::strerror(error));
        return nullptr;
    }
    return std::unique_ptr<RunningBoard>(new RunningBoard(static_cast<std::uint64_t*>(map)));
}

RunningBoard::~RunningBoard() { ::munmap(slots_, kBytes); }

void RunningBoard::started(TaskId id, std::uint32_t attempt) {
    // The attempt before the id that says a task runs: a process that dies between the two
    // stores reads as idle, never as a task with another's attempt.
    std::atomic_ref(slots_[1]).store(attempt, std::memory_order_relaxed);
    std::atomic_ref(slots_[0]).store(id + 1, std::memory_order_release);
}

void RunningBoard::ended() { std::atomic_ref(slots_[0]).store(0, std::memory_order_release); }

LastRunning read_running_board(const std::filesystem::path& dir, pid_t pid) {
    const std::filesystem::path path = board_path(dir, pid);
    const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return {};
    std::uint64_t slots[kSlots] = {};
    const ssize_t got = ::pread(fd, slots, kBytes, 0);
    ::close(fd);
    ::unlink(path.c_str());
    if (got != static_cast<ssize_t>(kBytes)) return {};
    if (slots[0] == 0) return {.known = LastRunning::Known::Idle};
    return {.known = LastRunning::Known::Running, .id = slots[0] - 1, .attempt = static_cast<std::uint32_t>(slots[1])};
}

}  // namespace taskfarm
