#pragma once
// `coordinator parallel`: what a run started with GNU parallel's command line prints and
// writes as it goes (ParallelSink), and its exit status, as GNU parallel's.

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "sink.hpp"

namespace taskfarm {

// --halt WHEN,fail=N|success=N|done=N (N may be a percentage of the jobs).
struct ParallelHalt {
    enum class When { Never, Soon, Now };
    enum class On { Fail, Success, Completed };  // done=N: any job
    When when = When::Never;
    On on = On::Fail;
    double count = 1;      // jobs, or percent when `percent`; 0: the first that counts halts, status 0
    bool percent = false;  // count is a percentage of all jobs
};

// Stands for {%} in a job's --tagstring until its slot is known (at its result): no value
// holds a NUL (not argv, nor a line: -0's values are cut at it).
inline constexpr char kSlotInTag = '\0';

// One job of `coordinator parallel`, as its inputs made it.
struct ParallelJob {
    std::string command;      // its shell command
    std::string tag;          // --tag/--tagstring: its tag, kSlotInTag where {%} goes
    std::string results_dir;  // --results DIR: its directory; empty: none
    std::string stdin_path;   // --pipe: its chunk; empty: none
    std::uint64_t seq = 0;    // {#}, and the joblog's Seq (from 1; --resume skips some)
};

// What parse_parallel() decided about output. A job is the task with the same id: the plan
// puts each job here as it makes its task (add), and the sink takes it at its last result
// (take), so only the jobs under way are held, however long the input.
struct ParallelOutput {
    bool named_jobs = false;  // `coordinator parallel`: messages say "parallel: job N" (else --output plain's)
    bool tagged = false;      // --tag/--tagstring
    bool keep_order = false;  // -k
    // --line-buffer (whole lines) or --ungroup (bytes as they come): each job's stdout and
    // stderr go to files of spool_dir (live_path) that the sink copies out as they grow.
    enum class Live { No, Lines, Bytes };
    Live live = Live::No;
    bool verbose = false;                // -v: the command before its output
    std::filesystem::path joblog;        // --joblog FILE; empty: none
    bool joblog_append = false;          // --joblog +FILE, or --resume of a joblog: no header, appended
    std::optional<std::uint64_t> total;  // the number of jobs, when known before the run (--halt N% needs it)
    ParallelHalt halt;
    // Where workers put the streams longer than a result holds (spill_dir), and --pipe's
    // chunks: removed, with what is left in it, with this.
    std::filesystem::path spool_dir;
    ParallelOutput() = default;
    ~ParallelOutput();
    ParallelOutput(const ParallelOutput&) = delete;
    ParallelOutput& operator=(const ParallelOutput&) = delete;

    // --line-buffer, --ungroup: where the job of task `id` writes stream `name` ("out", "err").
    std::filesystem::path live_path(std::uint64_t id, const char* name) const {
        return spool_dir / ("live-" + std::to_string(id) + "." + name);
    }

    void add(std::uint64_t id, ParallelJob job) const;
    // The job of task `id` (an empty one for a task that is no job: --output plain); with
    // `last`, forgotten.
    ParallelJob job(std::uint64_t id, bool last) const;

private:
    mutable std::mutex mutex_;
    mutable std::unordered_map<std::uint64_t, ParallelJob> jobs_;
};

// Writes each finished job's stdout to `out` and its stderr to stderr, whole and in one
// write each (parallel's --group), in job order with keep_order; --joblog and --results as
// GNU parallel writes them. A failed attempt that runs again (--retries) is not shown. A
// stream comes whole, as its bytes came, from its spill file when it outgrew the result; one
// that was cut all the same is said on stderr and counts as a failure.
class ParallelSink final : public ResultSink {
public:
    ParallelSink(const ParallelOutput& output, std::FILE* out);
    ~ParallelSink() override;
    ParallelSink(const ParallelSink&) = delete;
    ParallelSink& operator=(const ParallelSink&) = delete;
    // --halt met: called once, with true for `now` (cancel the running jobs), false for `soon`.
    void on_halt(std::function<void(bool now)> callback) { on_halt_ = std::move(callback); }
    // Nobody reads `out` any more (EPIPE, as with | head): called once, and nothing more is written.
    void on_closed(std::function<void()> callback) { on_closed_ = std::move(callback); }
    // GNU parallel's exit status: the halting job's status after a --halt on failure, 0 after
    // one on success or done, else the number of failed jobs (at most 101).
    int exit_status() const;
    // Jobs whose stdout or stderr could not be written whole (said on stderr for each).
    std::size_t cut() const { return cut_; }

protected:
    void begin_mode_(const std::string& mode, std::size_t tasks) override;
    void sink_it_(const TaskSpec& task, const TaskResult& result) override;
    void flush_() override;

private:
    struct Finished {
        std::string out, err, joblog;
    };
    class Live;
    std::unique_ptr<Live> live_;  // --line-buffer, --ungroup: copies the jobs' files out as they grow
    void write(const Finished& finished);
    void failed();  // a write to `out` failed: errno says why
    void check_halt(const TaskResult& result, int status);

    const ParallelOutput& output_;
    std::FILE* out_;
    std::FILE* joblog_ = nullptr;
    std::chrono::system_clock::time_point began_{};
    std::map<std::uint64_t, Finished> waiting_;  // -k: finished, behind one that has not
    std::uint64_t next_ = 0;                     // -k: the next job to write
    std::size_t done_ = 0, failed_ = 0, cut_ = 0;
    bool halted_ = false;
    int halt_status_ = 0;
    std::function<void(bool)> on_halt_;
    std::function<void()> on_closed_;
    bool closed_ = false;
};

}  // namespace taskfarm
