#include "command_groups.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <mutex>
#include <system_error>

namespace taskfarm::command_groups {
namespace {

constexpr double kDefaultGraceS = 2;
constexpr double kMostGraceS = 3600;

struct Registry {
    std::mutex mutex;
    std::vector<std::int64_t> groups;  // guarded by mutex
    std::atomic<int> fd{-1};
    std::once_flag made;
};

Registry& registry() {
    static Registry* const instance = new Registry;  // never destroyed: children may end during exit
    return *instance;
}

void changed() {
    const int fd = registry().fd.load();
    if (fd < 0) return;
    const std::uint64_t one = 1;
    while (::write(fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

}  // namespace

void add(pid_t group) {
    {
        std::lock_guard lock(registry().mutex);
        registry().groups.push_back(group);
    }
    changed();
}

void remove(pid_t group) {
    {
        std::lock_guard lock(registry().mutex);
        auto& groups = registry().groups;
        if (const auto found = std::find(groups.begin(), groups.end(), group); found != groups.end())
            groups.erase(found);
    }
    changed();
}

std::vector<std::int64_t> live() {
    std::lock_guard lock(registry().mutex);
    const auto& groups = registry().groups;
    return {groups.begin(), groups.begin() + static_cast<std::ptrdiff_t>(std::min(groups.size(), kMaxReported))};
}

int change_fd() {
    Registry& r = registry();
    std::call_once(r.made, [&r] {
        const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot make an eventfd");
        r.fd.store(fd);
    });
    return r.fd.load();
}

bool take_change() {
    const int fd = registry().fd.load();
    std::uint64_t count = 0;
    return fd >= 0 && ::read(fd, &count, sizeof count) == static_cast<ssize_t>(sizeof count) && count > 0;
}

std::string check_grace(const nlohmann::json& value) {
    if (value.is_number()) {
        const double seconds = value.get<double>();
        if (std::isfinite(seconds) && seconds >= 0 && seconds <= kMostGraceS) return "";
    }
    return "must be a number of seconds in [0, 3600]";
}

std::chrono::duration<double> grace(const nlohmann::json& settings) {
    const auto found = settings.find("command_grace_s");
    if (found == settings.end() || !check_grace(*found).empty()) return std::chrono::duration<double>(kDefaultGraceS);
    return std::chrono::duration<double>(found->get<double>());
}

}  // namespace taskfarm::command_groups
