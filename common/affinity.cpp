#include "affinity.hpp"

#include <pthread.h>
#include <sched.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <stdexcept>
#include <system_error>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace taskfarm {
namespace {

int parse_cpu(std::string_view text, std::string_view item) {
    int cpu = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), cpu);
    if (text.empty() || ec != std::errc{} || end != text.data() + text.size() || cpu < 0)
        throw std::invalid_argument(fmt::format("'{}' is not a CPU number or a range like 0-3", item));
    if (cpu >= CPU_SETSIZE) throw std::invalid_argument(fmt::format("CPU {} is beyond {}", cpu, CPU_SETSIZE - 1));
    return cpu;
}

void set_affinity(const std::vector<int>& cpus) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int cpu : cpus) CPU_SET(cpu, &set);
    if (const int error = ::pthread_setaffinity_np(::pthread_self(), sizeof set, &set); error != 0)
        throw std::system_error(error, std::generic_category(),
                                fmt::format("cannot pin thread to CPU(s) {}", format_cpu_list(cpus)));
}

}  // namespace

std::vector<int> allowed_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) != 0)
        throw std::system_error(errno, std::generic_category(), "cannot read the CPU affinity");
    std::vector<int> cpus;
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
        if (CPU_ISSET(cpu, &set)) cpus.push_back(cpu);
    return cpus;
}

int available_cpus() {
    cpu_set_t set;
    CPU_ZERO(&set);
    if (::sched_getaffinity(0, sizeof set, &set) != 0) return 1;
    return std::max(1, CPU_COUNT(&set));
}

int pinned_cpu() {
    const std::vector<int> cpus = allowed_cpus();
    return cpus.size() == 1 ? cpus.front() : -1;
}

std::vector<int> parse_cpu_list(std::string_view text) {
    std::vector<int> cpus;
    for (std::size_t start = 0; start <= text.size();) {
        const std::size_t comma = std::min(text.find(',', start), text.size());
        const std::string_view item = text.substr(start, comma - start);
        if (item.empty()) throw std::invalid_argument("empty item in the CPU list");
        const std::size_t dash = item.find('-');
        const int first = parse_cpu(item.substr(0, dash), item);
        const int last = dash == std::string_view::npos ? first : parse_cpu(item.substr(dash + 1), item);
        if (last < first) throw std::invalid_argument(fmt::format("range '{}' runs from high to low", item));
        for (int cpu = first; cpu <= last; ++cpu) {
            if (std::find(cpus.begin(), cpus.end(), cpu) != cpus.end())
                throw std::invalid_argument(fmt::format("CPU {} is listed twice", cpu));
            cpus.push_back(cpu);
        }
        start = comma + 1;
    }
    return cpus;
}

std::string format_cpu_list(const std::vector<int>& cpus) {
    std::string out;
    for (std::size_t i = 0; i < cpus.size();) {
        std::size_t j = i;
        while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
        if (!out.empty()) out += ',';
        out += j == i ? fmt::format("{}", cpus[i]) : fmt::format("{}-{}", cpus[i], cpus[j]);
        i = j + 1;
    }
    return out;
}

void pin_this_thread(int cpu) { set_affinity({cpu}); }

ScopedPin::ScopedPin(int cpu) {
    if (cpu < 0) return;
    try {
        std::vector<int> before = allowed_cpus();
        pin_this_thread(cpu);
        before_ = std::move(before);
    } catch (const std::exception& e) {
        spdlog::warn("{}; running unpinned", e.what());
    }
}

ScopedPin::~ScopedPin() {
    if (before_.empty()) return;
    try {
        set_affinity(before_);
    } catch (const std::exception& e) {
        spdlog::error("{}", e.what());
    }
}

std::uint64_t resident_bytes() {
    // Opened once per thread and process, and read with pread: one system call a read, cheap
    // enough for every results frame of a worker. After a fork the file would still be the
    // parent's ("self" is resolved at open), so a new pid opens it again.
    struct Statm {
        pid_t pid = -1;
        int fd = -1;
    };
    thread_local Statm statm;
    if (const pid_t pid = ::getpid(); statm.pid != pid) {
        if (statm.fd >= 0) ::close(statm.fd);
        statm = {pid, ::open("/proc/self/statm", O_RDONLY | O_CLOEXEC)};
    }
    static const long page = ::sysconf(_SC_PAGESIZE);
    if (statm.fd < 0 || page <= 0) return 0;
    char text[128];
    const ssize_t size = ::pread(statm.fd, text, sizeof text - 1, 0);
    if (size <= 0) return 0;
    text[size] = '\0';
    unsigned long long total = 0;
    unsigned long long resident = 0;
    if (std::sscanf(text, "%llu %llu", &total, &resident) != 2) return 0;
    return resident * static_cast<std::uint64_t>(page);
}

}  // namespace taskfarm
