#pragma once
// CPU lists and pinning: which CPUs this process may use, "0-3,6" lists, and pinning the
// calling thread; and this process's resident memory. Worker processes are pinned between fork and exec
// (process_pool.cpp).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace taskfarm {

// The CPUs the calling thread may run on (sched_getaffinity), ascending; never empty.
std::vector<int> allowed_cpus();

// How many CPUs this process may run on (sched_getaffinity), at least 1.
int available_cpus();

// The one CPU the calling thread may run on, or -1 when it may run on several.
int pinned_cpu();

// "0-3,6" -> {0, 1, 2, 3, 6}, in the order written. Throws std::invalid_argument saying
// what is wrong (an empty item, not a number, a range from high to low, a CPU listed
// twice, a CPU number the kernel's cpu_set_t cannot hold).
std::vector<int> parse_cpu_list(std::string_view text);

// {0, 1, 2, 3, 6} -> "0-3,6": the inverse of parse_cpu_list for ascending lists.
std::string format_cpu_list(const std::vector<int>& cpus);

// Pins the calling thread to `cpu`. Throws std::system_error when the kernel refuses.
void pin_this_thread(int cpu);

// Pins the calling thread to `cpu` (nothing when cpu < 0) for its lifetime, then gives it
// back the CPUs it had before. Never throws: when the kernel refuses, it logs a warning
// and the thread runs unpinned.
class ScopedPin {
public:
    explicit ScopedPin(int cpu);
    ~ScopedPin();
    ScopedPin(const ScopedPin&) = delete;
    ScopedPin& operator=(const ScopedPin&) = delete;

private:
    std::vector<int> before_;  // empty: nothing to restore
};

// This process's resident memory in bytes (/proc/self/statm); 0 when it cannot be read.
std::uint64_t resident_bytes();

}  // namespace taskfarm
