#pragma once
// --alloc slurm: allocations on demand. While tasks wait for a worker and fewer than
// --max-allocs allocations of the run exist, the coordinator submits one more with `sbatch`:
// a batch script that runs one `srun` step of --alloc-workers workers, which connect back over
// tcp with the run's CurveZMQ keys (the remote-worker machinery does the rest: a lost
// worker's tasks are requeued). One allocation waits to start at a time. An allocation whose
// workers hold no task while none waits is cancelled; the run's end, a signal or an error
// cancels every one left and waits until squeue shows none of them. A failing sbatch is
// retried with exponential backoff; once it has failed for `give_up` with no allocation and
// no worker left, the run gives up with sbatch's own words. See docs/cluster.md.

#include <chrono>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

namespace taskfarm {

struct AllocConfig {
    int max_allocs = 1;                        // --max-allocs: allocations of the run at once, queued ones included
    int workers = 1;                           // --alloc-workers: sbatch --ntasks, one worker each
    std::string time_limit;                    // --alloc-time: sbatch --time, in Slurm's format
    std::vector<std::string> args;             // --alloc-args: more sbatch options, after ours (theirs win)
    std::chrono::milliseconds give_up{60000};  // --wait-workers: how long sbatch may fail with nothing running
};

// Whether `text` is a time limit in one of sbatch --time's forms: MINUTES, MINUTES:SECONDS,
// HOURS:MINUTES:SECONDS, DAYS-HOURS, DAYS-HOURS:MINUTES, DAYS-HOURS:MINUTES:SECONDS.
bool is_slurm_time(const std::string& text);

// What the run asks of the allocator, from the dispatcher's schedule (Schedule::RemoteLoad).
struct AllocDemand {
    std::size_t waiting = 0;                                   // tasks no worker holds yet
    bool counted = true;  // false: `waiting` stands for an unknown number (Schedule::RemoteLoad::counted)
    std::vector<std::pair<std::string, std::size_t>> workers;  // connected remote workers: name, tasks held
};

// The name a worker of an allocation gives itself: NODE-JOBID.RANK (see worker_script()).
// The job id in it, or "" when `name` is not one of those.
std::string alloc_job_of(const std::string& name);

class Allocator {
public:
    // `worker` is the workers' command line, binary first; `dir` a directory of the run on a
    // filesystem the nodes share (the key directory), for the allocations' output. Starts the
    // allocator's thread.
    Allocator(AllocConfig config, std::vector<std::string> worker, std::filesystem::path dir);
    // stop(), if it was not called.
    ~Allocator();
    Allocator(const Allocator&) = delete;
    Allocator& operator=(const Allocator&) = delete;

    // The demand now; called from the dispatcher's thread, never waits on Slurm.
    void update(AllocDemand demand);
    // Why no worker will come any more (sbatch kept failing), once the allocator has given up.
    std::optional<std::string> gave_up() const;
    // The run is over (its workers were told to shut down): waits up to `grace` for the
    // allocations to end by themselves, cancels those left, and waits until squeue shows
    // none of them. Returns a summary for the log.
    std::string stop(std::chrono::milliseconds grace);

    // For the run's report (after stop()): what was submitted, what is left, and each
    // decision with its reason and time, as logged.
    nlohmann::json report() const;

    // The batch script of an allocation: one srun step of the workers.
    std::string worker_script() const;

private:
    using Clock = std::chrono::steady_clock;
    struct Allocation {
        Clock::time_point submitted;
        bool connected = false;        // a worker of it has attached
        Clock::time_point idle_since;  // unset while a worker of it holds a task or tasks wait
        bool cancelled = false;        // scancel sent
    };

    void loop(std::stop_token stop);
    void tick(Clock::time_point now);
    bool poll_queue(Clock::time_point now);  // false: squeue failed, nothing learnt
    void submit(Clock::time_point now, const AllocDemand& demand);
    // A failed sbatch, or an allocation that ended before a worker of it connected: counts
    // it and sets the backoff, which it returns.
    Clock::duration failed(Clock::time_point now, std::string error);
    void cancel(const std::vector<std::string>& jobs, const std::string& why);
    void say(const std::string& why);  // logs `why` when it differs from the last
    void remember(std::string what);   // a decision, for report()
    std::string output_tail(const std::string& job) const;

    const AllocConfig config_;
    const std::vector<std::string> worker_;
    const std::filesystem::path dir_;
    const std::string job_name_;  // taskfarm-alloc-PID: how a person tells the run's jobs in squeue

    mutable std::mutex mutex_;  // guards demand_ and gave_up_, shared with the dispatcher's thread
    AllocDemand demand_;
    bool told_ = false;  // update() was called: demand_ is the run's, not a default
    std::optional<std::string> gave_up_;

    // The allocator's thread only (and stop() after joining it):
    std::map<std::string, Allocation> live_;  // by job id: submitted, still in squeue
    std::size_t submitted_ = 0;
    std::size_t most_at_once_ = 0;
    std::size_t failures_ = 0;           // sbatch failures in a row
    Clock::time_point failing_since_{};  // the first of them
    Clock::time_point next_try_{};       // backoff: no sbatch before this
    std::string last_error_;             // sbatch's stderr, last failure
    std::string said_;                   // the last reason logged
    bool stopped_ = false;
    const Clock::time_point began_ = Clock::now();
    nlohmann::json decisions_ = nlohmann::json::array();  // {at_s, what}, the first kMaxDecisions
    std::size_t decisions_left_out_ = 0;
    std::jthread thread_;  // last: it uses everything above
};

}  // namespace taskfarm
