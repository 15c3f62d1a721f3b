#pragma once
// One function per task kind. Each fills `result` (ok, error and its kind's value
// fields) and may throw; run_task() turns exceptions into failed results.

#include "../task.hpp"

namespace taskfarm::executors {

// Every executor returns early, not ok, with "cancelled" when context.stop fires and with
// timed_out(task) when context.deadline passes.

// Sleeps task.params.seconds.
void run_sleep(const TaskSpec& task, const ExecContext& context, TaskResult& result);

// Counts the primes in [task.params.lo, task.params.hi) into result.primes. Holds
// context.gil (if any) while it computes, passing a switch point after each sieve segment
// (tens of microseconds); checks context.stop as often and returns early (not ok, "cancelled") when it fires.
// Throws std::invalid_argument when lo > hi or hi > kMaxPrimeLimit.
void run_cpu(const TaskSpec& task, const ExecContext& context, TaskResult& result);

// Downloads task.params.url into a file in task.params.out_dir with libcurl: see download.hpp
// and docs/downloads.md. Never takes context.gil (CPython releases it around I/O). A failed,
// cancelled or timed-out download leaves no file behind; the error reads
// "cannot download 'URL': REASON" ("cancelled" and timed_out(task) as everywhere).
void run_download(const TaskSpec& task, const ExecContext& context, TaskResult& result);

// Closes the connections that the calling thread's download handle keeps open for the next
// task (a thread's handle is closed anyway when the thread ends); the next download opens
// new ones. For a long-lived thread done with downloads, so servers see the hang-up now.
void close_connections();

// Fault injection. run_fail fails with "failed on purpose". run_crash aborts the process
// (SIGABRT) when context.isolated, as a crashing worker would; elsewhere it fails, since
// aborting would take the coordinator with it.
void run_fail(const TaskSpec& task, const ExecContext& context, TaskResult& result);
void run_crash(const TaskSpec& task, const ExecContext& context, TaskResult& result);

}  // namespace taskfarm::executors
