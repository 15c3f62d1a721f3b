#include "alloc.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "errors.hpp"
#include "step.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kTick = std::chrono::milliseconds(250);      // how often squeue is asked, and the demand read
constexpr auto kIdle = std::chrono::seconds(2);             // idle this long, an allocation is cancelled
constexpr auto kFirstBackoff = std::chrono::seconds(1);     // after the first failed sbatch, doubling
constexpr auto kMaxBackoff = std::chrono::seconds(60);      // ... up to this
constexpr auto kCommandTimeout = std::chrono::seconds(60);  // sbatch, squeue, scancel: killed after
constexpr auto kGoneTimeout = std::chrono::seconds(30);     // after scancel, until squeue shows none
constexpr auto kStopPoll = std::chrono::milliseconds(100);
constexpr std::size_t kMaxDecisions = 200;  // kept for the report; the log has them all

struct Ran {
    bool started = false;
    int status = -1;  // the wait status
    std::string out;
    std::string err;
};

// "sbatch exited with status 1", for messages.
std::string describe_status(const std::string& program, int status) {
    if (WIFEXITED(status)) return fmt::format("{} exited with status {}", program, WEXITSTATUS(status));
    if (WIFSIGNALED(status)) return fmt::format("{} was killed by signal {}", program, WTERMSIG(status));
    return fmt::format("{} ended with wait status {:#x}", program, status);
}

// Runs `argv` (program first, found in PATH) to its end, or kCommandTimeout and then SIGKILL,
// with its stdin on /dev/null; returns what it wrote.
Ran run_command(std::vector<std::string> argv) {
    Ran ran;
    const auto program = find_in_path(argv.front());
    if (!program) {
        ran.err = fmt::format(
            "'{}' is not in PATH (is this a Slurm client machine? Debian's package is "
            "slurm-client)",
            argv.front());
        return ran;
    }
    argv.front() = *program;
    std::vector<char*> raw;
    for (std::string& arg : argv) raw.push_back(arg.data());
    raw.push_back(nullptr);
    int out[2];
    int err[2];
    if (::pipe2(out, O_CLOEXEC) != 0) {
        ran.err = fmt::format("cannot make a pipe: {}", std::strerror(errno));
        return ran;
    }
    if (::pipe2(err, O_CLOEXEC) != 0) {
        ran.err = fmt::format("cannot make a pipe: {}", std::strerror(errno));
        ::close(out[0]);
        ::close(out[1]);
        return ran;
    }
    sigset_t none;
    sigemptyset(&none);
    const pid_t pid = ::fork();
    if (pid == 0) {       // only async-signal-safe calls from here to exec
        ::setpgid(0, 0);  // a Ctrl-C on the terminal is the coordinator's to handle
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::signal(SIGPIPE, SIG_DFL);
        if (const int null = ::open("/dev/null", O_RDONLY | O_CLOEXEC); null >= 0) ::dup2(null, STDIN_FILENO);
        ::dup2(out[1], STDOUT_FILENO);
        ::dup2(err[1], STDERR_FILENO);
        ::execv(raw[0], raw.data());
        ::_exit(127);
    }
    const int error = errno;
    ::close(out[1]);
    ::close(err[1]);
    if (pid < 0) {
        ::close(out[0]);
        ::close(err[0]);
        ran.err = fmt::format("cannot start {}: {}", argv.front(), std::strerror(error));
        return ran;
    }
    ran.started = true;
    const auto deadline = Clock::now() + kCommandTimeout;
    pollfd fds[] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    std::string* into[] = {&ran.out, &ran.err};
    int open_fds = 2;
    bool killed = false;
    while (open_fds > 0) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
        if (left <= 0 && !killed) {
            ::kill(pid, SIGKILL);
            killed = true;
        }
        const int ready = ::poll(fds, 2, left > 0 ? static_cast<int>(left) : 1000);
        if (ready < 0 && errno != EINTR) break;
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            char buffer[4096];
            const ssize_t got = ::read(fds[i].fd, buffer, sizeof buffer);
            if (got > 0) {
                into[i]->append(buffer, static_cast<std::size_t>(got));
            } else if (got == 0 || errno != EINTR) {
                ::close(fds[i].fd);
                fds[i].fd = -1;
                --open_fds;
            }
        }
        if (killed && ready == 0) break;  // a grandchild holds the pipes: give up on them
    }
    for (const pollfd& fd : fds)
        if (fd.fd >= 0) ::close(fd.fd);
    while (::waitpid(pid, &ran.status, 0) < 0 && errno == EINTR) {
    }
    if (killed) ran.err += fmt::format(" (killed after {} s)", kCommandTimeout.count());
    return ran;
}

// Its lines joined by " | ", printable: one line for the log and the error.
std::string one_line(const std::string& text) {
    std::string line;
    std::size_t at = 0;
    while (at < text.size()) {
        auto end = text.find('\n', at);
        if (end == std::string::npos) end = text.size();
        if (end > at) line += (line.empty() ? "" : " | ") + text.substr(at, end - at);
        at = end + 1;
    }
    return printable(line);
}

// `word` as /bin/sh reads it back unchanged.
std::string shell_quote(const std::string& word) {
    if (is_plain_shell_word(word)) return word;
    std::string quoted = "'";
    for (const char c : word) quoted += c == '\'' ? std::string("'\"'\"'") : std::string(1, c);
    return quoted + "'";
}

std::string seconds_of(Clock::duration duration) {
    return fmt::format("{:.1f} s", std::chrono::duration<double>(duration).count());
}

// One or more decimal digits: a Slurm job id (as sbatch --parsable prints it and a worker's
// name carries it), or a field of a time limit.
bool all_digits(std::string_view text) {
    return !text.empty() && text.find_first_not_of("0123456789") == std::string_view::npos;
}

}  // namespace

// D+(:D+){0,2} or D+-D+(:D+){0,2}, scanned (std::regex recurses once a character).
bool is_slurm_time(const std::string& text) {
    std::string_view rest = text;
    if (const auto dash = rest.find('-'); dash != std::string_view::npos) {
        if (!all_digits(rest.substr(0, dash))) return false;
        rest.remove_prefix(dash + 1);
    }
    for (int parts = 0; parts < 3; ++parts) {
        const auto colon = rest.find(':');
        if (!all_digits(rest.substr(0, colon))) return false;
        if (colon == std::string_view::npos) return true;
        rest.remove_prefix(colon + 1);
    }
    return false;
}

std::string alloc_job_of(const std::string& name) {
    const auto dash = name.rfind('-');
    if (dash == std::string::npos) return "";
    const auto dot = name.find('.', dash);
    if (dot == std::string::npos || dot == dash + 1) return "";
    const std::string job = name.substr(dash + 1, dot - dash - 1);
    return all_digits(job) ? job : "";
}

Allocator::Allocator(AllocConfig config, std::vector<std::string> worker, std::filesystem::path dir)
    : config_(std::move(config)),
      worker_(std::move(worker)),
      dir_(std::move(dir)),
      job_name_(fmt::format("taskfarm-alloc-{}", ::getpid())) {
    spdlog::info("--alloc slurm: up to {} allocation(s) of {} worker(s) each, --time={}, while tasks wait",
                 config_.max_allocs, config_.workers, config_.time_limit);
    thread_ = std::jthread([this](std::stop_token stop) { loop(stop); });
}

Allocator::~Allocator() {
    try {
        if (!stopped_) spdlog::info("{}", stop(std::chrono::milliseconds(0)));
    } catch (const std::exception& e) {
        spdlog::error("cannot end the run's allocations: {}", e.what());
    }
}

std::string Allocator::worker_script() const {
    // Each worker names itself NODE-JOBID.RANK: the allocator tells by the job id which
    // allocation's workers are busy, and the name still starts with the node.
    std::string script =
        "exec srun --kill-on-bad-exit=0 --job-name=taskfarm-workers sh -c "
        "'exec \"$@\" --name \"$SLURMD_NODENAME-$SLURM_JOB_ID.$SLURM_PROCID\"' taskfarm-worker";
    for (const std::string& word : worker_) {
        script += ' ';
        script += shell_quote(word);
    }
    return script;
}

void Allocator::update(AllocDemand demand) {
    std::lock_guard lock(mutex_);
    demand_ = std::move(demand);
    told_ = true;
}

std::optional<std::string> Allocator::gave_up() const {
    std::lock_guard lock(mutex_);
    return gave_up_;
}

void Allocator::loop(std::stop_token stop) {
    while (!stop.stop_requested()) {
        try {
            tick(Clock::now());
        } catch (const std::exception& e) {
            spdlog::error("--alloc: {}", e.what());
        }
        std::mutex wait;
        std::unique_lock lock(wait);
        std::condition_variable_any sleep;
        sleep.wait_for(lock, stop, kTick, [] { return false; });
    }
}

void Allocator::say(const std::string& why) {
    if (why == said_) return;
    said_ = why;
    spdlog::info("--alloc: {}", why);
    remember(why);
}

void Allocator::remember(std::string what) {
    if (decisions_.size() >= kMaxDecisions) {
        ++decisions_left_out_;
        return;
    }
    decisions_.push_back(
        {{"at_s", std::chrono::duration<double>(Clock::now() - began_).count()}, {"what", std::move(what)}});
}

nlohmann::json Allocator::report() const {
    std::lock_guard lock(mutex_);
    nlohmann::json left = nlohmann::json::array();
    for (const auto& [job, allocation] : live_) left.push_back(job);
    return {{"scheduler", "slurm"},
            {"submitted", submitted_},
            {"most_at_once", most_at_once_},
            {"sbatch_failures", failures_},
            {"last_error", last_error_.empty() ? nlohmann::json(nullptr) : nlohmann::json(last_error_)},
            {"gave_up", gave_up_ ? nlohmann::json(*gave_up_) : nlohmann::json(nullptr)},
            {"left_in_queue", left},
            {"decisions", decisions_},
            {"decisions_not_listed", decisions_left_out_}};
}

bool Allocator::poll_queue(Clock::time_point now) {
    if (live_.empty()) return true;
    const Ran ran = run_command({"squeue", "--noheader", "--me", "--format=%i %t"});
    if (!ran.started || ran.status != 0) {
        spdlog::warn("--alloc: cannot read the queue: {}: {}",
                     ran.started ? describe_status("squeue", ran.status) : "squeue did not start", one_line(ran.err));
        return false;
    }
    std::set<std::string> listed;
    std::size_t at = 0;
    while (at < ran.out.size()) {
        auto end = ran.out.find('\n', at);
        if (end == std::string::npos) end = ran.out.size();
        const std::string line = ran.out.substr(at, end - at);
        listed.insert(line.substr(0, line.find(' ')));
        at = end + 1;
    }
    for (auto job = live_.begin(); job != live_.end();) {
        if (listed.contains(job->first)) {
            ++job;
            continue;
        }
        const Allocation& gone = job->second;
        if (!gone.connected && !gone.cancelled && !stopped_) {
            // Its batch script or its srun step failed: as a failed sbatch, it backs off.
            failed(now, fmt::format("allocation {} ended after {} before any of its workers connected{}", job->first,
                                    seconds_of(now - gone.submitted), output_tail(job->first)));
            spdlog::error("--alloc: {}", last_error_);
            remember(last_error_);
        } else {
            spdlog::info("--alloc: allocation {} left the queue after {}{}", job->first,
                         seconds_of(now - gone.submitted), gone.cancelled ? " (cancelled)" : "");
        }
        job = live_.erase(job);
    }
    return true;
}

Allocator::Clock::duration Allocator::failed(Clock::time_point now, std::string error) {
    last_error_ = std::move(error);
    if (failures_++ == 0) failing_since_ = now;
    const auto backoff =
        std::min<Clock::duration>(kMaxBackoff, kFirstBackoff * (1 << std::min<std::size_t>(failures_ - 1, 10)));
    next_try_ = now + backoff;
    return backoff;
}

std::string Allocator::output_tail(const std::string& job) const {
    std::ifstream file(dir_ / fmt::format("alloc-{}.out", job));
    std::vector<std::string> lines;
    for (std::string line; std::getline(file, line);) {
        lines.push_back(line);
        if (lines.size() > 4) lines.erase(lines.begin());
    }
    if (lines.empty()) return "";
    std::string text;
    for (const std::string& line : lines) text += line + "\n";
    return "; its last lines of output: " + one_line(text);
}

void Allocator::tick(Clock::time_point now) {
    AllocDemand demand;
    {
        std::lock_guard lock(mutex_);
        if (!told_) return;
        demand = demand_;
    }
    if (!poll_queue(now)) return;
    std::map<std::string, std::size_t> held;  // by job id: tasks its workers hold
    for (const auto& [name, tasks] : demand.workers) {
        const std::string job = alloc_job_of(name);
        if (const auto found = live_.find(job); found != live_.end()) {
            found->second.connected = true;
            held[job] += tasks;
        }
    }
    std::vector<std::string> idle;
    for (auto& [job, allocation] : live_) {
        if (allocation.cancelled) continue;
        if (demand.waiting > 0 || held[job] > 0) {
            allocation.idle_since = {};
        } else if (allocation.idle_since == Clock::time_point{}) {
            allocation.idle_since = now;
        } else if (now - allocation.idle_since >= kIdle) {
            idle.push_back(job);
        }
    }
    if (!idle.empty())
        cancel(idle, fmt::format("no task waits and its workers have held none for {} s", kIdle.count()));
    if (failures_ > 0) {
        // Given up only while nothing runs: a failure with allocations at work can wait.
        const bool nothing_runs = live_.empty() && demand.workers.empty();
        if (nothing_runs && now - failing_since_ >= config_.give_up && demand.waiting > 0) {
            std::lock_guard lock(mutex_);
            if (!gave_up_) {
                gave_up_ = fmt::format(
                    "cannot get an allocation: sbatch failed {} time(s) over {} (--wait-workers "
                    "{:g} s) with no allocation left; the last time: {}",
                    failures_, seconds_of(now - failing_since_), std::chrono::duration<double>(config_.give_up).count(),
                    last_error_);
                spdlog::error("--alloc: {}", *gave_up_);
                remember(*gave_up_);
            }
            return;
        }
    }
    // Cancelled ones too: squeue shows them until they are gone.
    const std::size_t active = live_.size();
    const auto starting = std::find_if(live_.begin(), live_.end(), [](const auto& entry) {
        return !entry.second.cancelled && !entry.second.connected;
    });
    if (demand.waiting == 0) return say("not allocating: no task waits for a worker");
    if (active >= static_cast<std::size_t>(config_.max_allocs))
        return say(fmt::format("not allocating: tasks wait, but {} allocation(s) exist (--max-allocs {})", active,
                               config_.max_allocs));
    if (starting != live_.end())
        return say(
            fmt::format("not allocating another: tasks wait, but allocation {} has not started yet (one "
                        "waits in the queue at a time)",
                        starting->first));
    if (now < next_try_) return say(fmt::format("not allocating: backing off after {} failed sbatch(es)", failures_));
    submit(now, demand);
}

void Allocator::submit(Clock::time_point now, const AllocDemand& demand) {
    std::vector<std::string> argv{"sbatch",
                                  "--parsable",
                                  "--job-name=" + job_name_,
                                  "--time=" + config_.time_limit,
                                  fmt::format("--ntasks={}", config_.workers),
                                  "--output=" + (dir_ / "alloc-%j.out").string()};
    argv.insert(argv.end(), config_.args.begin(), config_.args.end());
    argv.push_back("--wrap=" + worker_script());
    const Ran ran = run_command(argv);
    const std::string job = ran.out.substr(0, ran.out.find_first_of(";\n"));
    const bool ok = ran.started && ran.status == 0 && all_digits(job);
    std::string shown;
    for (std::size_t i = 0; i + 1 < argv.size(); ++i) {
        if (i > 0) shown += ' ';
        shown += shell_quote(argv[i]);
    }
    if (!ok) {
        const auto backoff = failed(
            now, fmt::format("{}: {}", ran.started ? describe_status("sbatch", ran.status) : "sbatch did not start",
                             one_line(ran.err.empty() ? ran.out : ran.err)));
        spdlog::error("--alloc: cannot submit an allocation ({}): {}; trying again in {}", printable(shown),
                      last_error_, seconds_of(backoff));
        remember(fmt::format("cannot submit an allocation: {}; trying again in {}", last_error_, seconds_of(backoff)));
        said_.clear();
        return;
    }
    failures_ = 0;
    live_[job].submitted = now;
    ++submitted_;
    most_at_once_ = std::max(most_at_once_, live_.size());
    said_.clear();
    // A plan without a count (a Farm's) says no number, as the drain's log does (decision 235).
    const std::string why =
        fmt::format("allocating: {} and {} allocation(s) exist (--max-allocs {}): submitted job {}",
                    demand.counted ? fmt::format("{} task(s) wait", demand.waiting) : std::string("tasks wait"),
                    live_.size() - 1, config_.max_allocs, job);
    spdlog::info("--alloc: {}: {} --wrap=...", why, printable(shown));
    remember(why);
}

void Allocator::cancel(const std::vector<std::string>& jobs, const std::string& why) {
    std::vector<std::string> argv{"scancel"};
    argv.insert(argv.end(), jobs.begin(), jobs.end());
    const Ran ran = run_command(argv);
    std::string list;
    for (const std::string& job : jobs) list += (list.empty() ? "" : " ") + job;
    if (!ran.started || ran.status != 0)
        spdlog::warn("--alloc: cannot cancel {}: {}: {}", list,
                     ran.started ? describe_status("scancel", ran.status) : "scancel did not start", one_line(ran.err));
    else
        spdlog::info("--alloc: cancelled allocation(s) {}: {}", list, why);
    remember(fmt::format("cancelled allocation(s) {}: {}", list, why));
    for (const std::string& job : jobs)
        if (const auto found = live_.find(job); found != live_.end()) found->second.cancelled = true;
}

std::string Allocator::stop(std::chrono::milliseconds grace) {
    stopped_ = true;
    thread_.request_stop();
    if (thread_.joinable()) thread_.join();
    // The workers were told to shut down: their steps end, then their batch scripts.
    const auto waited = Clock::now() + grace;
    while (!live_.empty() && Clock::now() < waited &&
           std::any_of(live_.begin(), live_.end(), [](const auto& entry) { return entry.second.connected; })) {
        std::this_thread::sleep_for(kStopPoll);
        poll_queue(Clock::now());
    }
    if (!live_.empty()) {
        std::vector<std::string> left;
        for (const auto& [job, allocation] : live_) left.push_back(job);
        cancel(left, "the run is over");
    }
    const auto deadline = Clock::now() + kGoneTimeout;
    while (!live_.empty() && Clock::now() < deadline) {
        std::this_thread::sleep_for(kStopPoll);
        poll_queue(Clock::now());
    }
    std::string summary =
        fmt::format("--alloc: {} allocation(s) submitted, at most {} at once", submitted_, most_at_once_);
    if (failures_ > 0) summary += fmt::format("; sbatch failed the last {} time(s): {}", failures_, last_error_);
    if (live_.empty()) return summary + "; none is left in the queue";
    std::string left;
    for (const auto& [job, allocation] : live_) left += (left.empty() ? "" : " ") + job;
    spdlog::error("--alloc: job(s) {} still in the queue {} s after scancel", left, kGoneTimeout.count());
    return summary + "; still in the queue: " + left;
}

}  // namespace taskfarm
