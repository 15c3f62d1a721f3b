#include "command_groups.hpp"

#include <fcntl.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <mutex>
#include <string_view>
#include <system_error>

#include <fmt/format.h>

namespace taskfarm::command_groups {
namespace {

struct GroupTable {
    std::mutex mutex;
    std::vector<std::int64_t> groups;  // guarded by mutex
    std::atomic<int> fd{-1};
    std::atomic<bool> changed{false};  // since the last take_change(), woken or not
    std::once_flag made;
};

std::mutex table_dir_mutex;
std::filesystem::path table_dir;  // guarded by table_dir_mutex

GroupTable& group_table() {
    static GroupTable* const instance = new GroupTable;  // never destroyed: children may end during exit
    return *instance;
}

void changed(bool wake) {
    group_table().changed.store(true);
    if (!wake) return;
    const int fd = group_table().fd.load();
    if (fd < 0) return;
    const std::uint64_t one = 1;
    while (::write(fd, &one, sizeof one) < 0 && errno == EINTR) {
    }
}

}  // namespace

void add(pid_t group) {
    {
        std::lock_guard lock(group_table().mutex);
        group_table().groups.push_back(group);
    }
    changed(true);
}

void remove(pid_t group, bool wake) {
    {
        std::lock_guard lock(group_table().mutex);
        auto& groups = group_table().groups;
        if (const auto found = std::find(groups.begin(), groups.end(), group); found != groups.end())
            groups.erase(found);
    }
    changed(wake);
}

std::vector<std::int64_t> live() {
    std::lock_guard lock(group_table().mutex);
    const auto& groups = group_table().groups;
    return {groups.begin(), groups.begin() + static_cast<std::ptrdiff_t>(std::min(groups.size(), kMaxReported))};
}

int change_fd() {
    GroupTable& r = group_table();
    std::call_once(r.made, [&r] {
        const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (fd < 0) throw std::system_error(errno, std::generic_category(), "cannot make an eventfd");
        r.fd.store(fd);
    });
    return r.fd.load();
}

bool take_change() {
    const int fd = group_table().fd.load();
    std::uint64_t count = 0;
    if (fd >= 0) (void)::read(fd, &count, sizeof count);  // emptied, so that a poll sleeps again
    return group_table().changed.exchange(false);
}

bool pending() { return group_table().changed.load(); }

void use_table_dir(const std::filesystem::path& dir) {
    std::lock_guard lock(table_dir_mutex);
    table_dir = dir;
}

std::filesystem::path table_path(const std::filesystem::path& dir, pid_t group, pid_t pid) {
    return dir / fmt::format("command-groups-{}", group) / std::to_string(pid);
}

std::string table_file() {
    std::lock_guard lock(table_dir_mutex);
    if (table_dir.empty()) return "";
    const std::filesystem::path path = table_path(table_dir, ::getpgrp(), ::getpid());
    // Made by the group's first process; another of the group may have made it already.
    if (::mkdir(path.parent_path().c_str(), 0700) != 0 && errno != EEXIST) return "";
    return path.string();
}

std::vector<pid_t> groups_in_table(const std::filesystem::path& file) {
    std::vector<pid_t> groups;
    const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return groups;
    // Shorter when its process died before it was sized: a read past its end would be SIGBUS.
    struct stat status {};
    void* memory = MAP_FAILED;
    if (::fstat(fd, &status) == 0 && static_cast<std::size_t>(status.st_size) >= sizeof(Table))
        memory = ::mmap(nullptr, sizeof(Table), PROT_READ, MAP_SHARED, fd, 0);
    ::close(fd);
    if (memory == MAP_FAILED) return groups;
    const Table& table = *static_cast<const Table*>(memory);
    const std::uint32_t used = std::min(table.used.load(), kTableSlots);
    for (std::uint32_t at = 0; at < used; ++at)
        if (const pid_t group = table.slots[at].load(); group > 1) groups.push_back(group);  // never kill(0), kill(-1)
    ::munmap(memory, sizeof(Table));
    return groups;
}

std::vector<pid_t> take_tables(const std::filesystem::path& dir, pid_t group) {
    std::vector<pid_t> groups;
    const std::filesystem::path group_dir = table_path(dir, group, 0).parent_path();
    std::error_code error;
    std::vector<std::filesystem::path> files;
    for (std::filesystem::directory_iterator at(group_dir, error), end; !error && at != end; at.increment(error))
        files.push_back(at->path());
    for (const auto& file : files) {
        for (const pid_t found : groups_in_table(file)) groups.push_back(found);
        std::filesystem::remove(file, error);
    }
    std::filesystem::remove(group_dir, error);  // gone already when the group ran no command
    return groups;
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
