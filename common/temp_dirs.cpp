#include "temp_dirs.hpp"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <mutex>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "checks.hpp"

namespace taskfarm {
namespace {

constexpr std::uint64_t kNoTask = ~std::uint64_t{0};
thread_local std::uint64_t running_task = kNoTask;

struct TempDirTable {
    std::mutex mutex;
    std::vector<std::pair<pid_t, std::string>> paths;  // the pid that made each
};

void at_exit();

TempDirTable& temp_dir_table() {
    static TempDirTable* const made = [] {
        auto* table = new TempDirTable;  // never destroyed: at_exit() may run after statics go
        std::atexit(at_exit);
        return table;
    }();
    return *made;
}

void write_stderr(const std::string& text) {
    for (std::size_t at = 0; at < text.size();) {
        const ssize_t n = ::write(STDERR_FILENO, text.data() + at, text.size() - at);
        if (n <= 0 && errno != EINTR) return;
        if (n > 0) at += static_cast<std::size_t>(n);
    }
}

void at_exit() {
    if (running_task != kNoTask)
        write_stderr(
            fmt::format("taskfarm: task {} called exit() from its function (process {}): a task function returns "
                        "a value or throws; the process ends here with the status it gave, without the rest of "
                        "the run\n",
                        running_task, ::getpid()));
    remove_temp_dirs();
}

std::string pattern_for(const std::filesystem::path& base, std::string_view what) {
    return (base / fmt::format("taskfarm-{}-{}-XXXXXX", what, ::getpid())).string();
}

// The pid in taskfarm-WHAT-PID-XXXXXX, or 0.
pid_t pid_in(const std::string& name) {
    if (!name.starts_with("taskfarm-") || name.size() < 9 + 1 + 1 + 1 + 1 + 6) return 0;
    const std::size_t last = name.size() - 7;  // the '-' before XXXXXX
    if (name[last] != '-') return 0;
    const std::size_t before = name.rfind('-', last - 1);
    if (before == std::string::npos || before <= 9) return 0;
    const std::string what = name.substr(9, before - 9);
    const std::string digits = name.substr(before + 1, last - before - 1);
    if (what.empty() || !std::all_of(what.begin(), what.end(), [](char c) { return c >= 'a' && c <= 'z'; })) return 0;
    if (digits.empty() || digits.size() > 9 || digits.find_first_not_of("0123456789") != std::string::npos) return 0;
    return parse_whole<pid_t>(digits).value_or(0);
}

}  // namespace

std::filesystem::path make_temp_dir(const std::filesystem::path& base, std::string_view what) {
    TempDirTable& all = temp_dir_table();
    std::string pattern = pattern_for(base, what);
    if (!::mkdtemp(pattern.data()))
        throw std::system_error(errno, std::generic_category(),
                                fmt::format("cannot create a directory in '{}'", base.string()));
    std::lock_guard lock(all.mutex);
    all.paths.emplace_back(::getpid(), pattern);
    return pattern;
}

int make_temp_file(const std::filesystem::path& base, std::string_view what, std::filesystem::path& path) {
    TempDirTable& all = temp_dir_table();
    std::string pattern = pattern_for(base, what);
    const int fd = ::mkostemp(pattern.data(), O_CLOEXEC);  // no command may inherit it
    if (fd < 0) return fd;
    std::lock_guard lock(all.mutex);
    all.paths.emplace_back(::getpid(), pattern);
    path = pattern;
    return fd;
}

void keep_track_of(const std::filesystem::path& path) {
    TempDirTable& all = temp_dir_table();
    std::lock_guard lock(all.mutex);
    all.paths.emplace_back(::getpid(), path.string());
}

void forget_temp_dir(const std::filesystem::path& path) {
    TempDirTable& all = temp_dir_table();
    std::lock_guard lock(all.mutex);
    std::erase_if(all.paths, [&](const auto& entry) { return entry.second == path.string(); });
}

void remove_temp_dirs() {
    TempDirTable& all = temp_dir_table();
    std::vector<std::pair<pid_t, std::string>> paths;
    {
        std::lock_guard lock(all.mutex);
        paths.swap(all.paths);
    }
    for (const auto& [pid, path] : paths) {
        if (pid != ::getpid()) continue;  // a parent's, inherited by fork
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
}

std::size_t sweep_stale_temp_dirs() {
    std::vector<std::filesystem::path> bases{"/tmp"};
    std::error_code ec;
    if (const auto tmp = std::filesystem::temp_directory_path(ec); !ec && tmp != "/tmp") bases.push_back(tmp);
    std::size_t removed = 0;
    for (const auto& base : bases) {
        for (const auto& entry : std::filesystem::directory_iterator(base, ec)) {
            const pid_t pid = pid_in(entry.path().filename().string());
            if (pid <= 0) continue;
            struct stat st {};
            if (::lstat(entry.path().c_str(), &st) != 0 || st.st_uid != ::getuid()) continue;
            if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) continue;
            if (::kill(pid, 0) == 0 || errno != ESRCH) continue;  // alive, or not ours to ask about
            std::error_code removing;
            std::filesystem::remove_all(entry.path(), removing);
            if (!removing) ++removed;
        }
    }
    return removed;
}

RunningTask::RunningTask(std::uint64_t id) : previous_(running_task) {
    temp_dir_table();  // the exit handler is in place before the function runs
    running_task = id;
}

RunningTask::~RunningTask() { running_task = previous_; }

}  // namespace taskfarm
