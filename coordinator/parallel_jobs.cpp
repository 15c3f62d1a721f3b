#include "parallel_jobs.hpp"

#include <signal.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "errors.hpp"
#include "parallel_cli.hpp"
#include "task.hpp"

namespace taskfarm {
namespace {

// Holds at most this many tasks made ahead of the runner.
constexpr std::size_t kQueued = 64;

void signal_fd(int fd) {
    const std::uint64_t one = 1;
    [[maybe_unused]] const auto written = ::write(fd, &one, sizeof one);
}

void drain_fd(int fd) {
    std::uint64_t count = 0;
    [[maybe_unused]] const auto got = ::read(fd, &count, sizeof count);
}

}  // namespace

class ParallelJobs::Cursor final : public TaskCursor {
public:
    explicit Cursor(ParallelJobs& jobs) : jobs_(jobs) {
        if (jobs_.delay_s_ > 0) {
            timer_fd_.reset(::timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK));
            if (timer_fd_.get() < 0)
                throw ConfigError(fmt::format("--delay: cannot make a timer: {}", std::strerror(errno)));
        }
    }
    ~Cursor() override = default;
    Cursor(const Cursor&) = delete;
    Cursor& operator=(const Cursor&) = delete;

    bool next(TaskSpec& task) override { return step(task, true) == Take::Task; }
    Take take(TaskSpec& task) override { return step(task, false); }
    int ready_fd() const override { return delaying_ ? timer_fd_.get() : jobs_.wake_fd_.get(); }

private:
    using Clock = std::chrono::steady_clock;

    Take step(TaskSpec& task, bool wait) {
        // --delay: not before `next_at_`; a runner that cannot wait polls the timer meanwhile.
        // A runner asks for the next task once it has handed out the one before (it holds
        // one task at a time), so that is when the one before starts: the delay counts from
        // there, not from when it was taken (before the workers were up, for the first).
        if (timer_fd_.get() >= 0) {
            const auto now = Clock::now();
            if (std::exchange(handed_, false))
                next_at_ =
                    now + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(jobs_.delay_s_));
            if (now < next_at_ && wait) std::this_thread::sleep_until(next_at_);
            if (now < next_at_ && !wait) {
                const auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(next_at_ - now).count();
                itimerspec when{};
                when.it_value.tv_sec = static_cast<time_t>(left / 1'000'000'000);
                when.it_value.tv_nsec = static_cast<long>(left % 1'000'000'000);
                ::timerfd_settime(timer_fd_.get(), 0, &when, nullptr);
                delaying_ = true;
                return Take::Later;
            }
            if (std::exchange(delaying_, false)) drain_fd(timer_fd_.get());
        }
        jobs_.start();
        if (!wait)
            drain_fd(jobs_.wake_fd_.get());  // before the queue is looked at: a task that comes after wakes it again
        {
            std::unique_lock lock(jobs_.mutex_);
            while (jobs_.queue_.empty() && !jobs_.ended_) {
                if (!wait) {
                    jobs_.waiting_ = true;
                    return Take::Later;
                }
                jobs_.changed_.wait(lock);
            }
            if (jobs_.queue_.empty()) {
                if (jobs_.error_) throw ConfigError(*jobs_.error_);
                jobs_.counted_ = jobs_.made_;
                return Take::End;
            }
            task = std::move(jobs_.queue_.front());
            jobs_.queue_.pop_front();
        }
        jobs_.changed_.notify_all();  // room for the next task
        handed_ = timer_fd_.get() >= 0;
        return Take::Task;
    }

    ParallelJobs& jobs_;
    UniqueFd timer_fd_;  // --delay: readable at next_at_
    bool delaying_ = false;
    bool handed_ = false;  // a task was handed out, and no take came since
    Clock::time_point next_at_{};
};

ParallelJobs::ParallelJobs(std::deque<ParallelJob> first, std::unique_ptr<JobMaker> maker, const TaskType& type,
                           std::string cwd, double timeout_s, double delay_s,
                           std::shared_ptr<const ParallelOutput> output)
    : maker_(std::move(maker)),
      type_(type),
      cwd_(std::move(cwd)),
      timeout_s_(timeout_s),
      delay_s_(delay_s),
      output_(std::move(output)) {
    wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (wake_fd_.get() < 0) throw ConfigError(fmt::format("cannot make an eventfd: {}", std::strerror(errno)));
    for (ParallelJob& job : first) queue_.push_back(task_of(std::move(job)));
    if (!maker_) {
        ended_ = true;
        counted_ = made_;
    }
}

ParallelJobs::~ParallelJobs() {
    if (thread_.joinable()) {
        {
            std::lock_guard lock(mutex_);
            quit_ = true;
        }
        changed_.notify_all();
        maker_->stop();
        thread_.join();
    }
}

std::unique_ptr<TaskCursor> ParallelJobs::open() const {
    if (std::exchange(opened_, true)) throw ConfigError("the jobs' input was read once already");
    return std::make_unique<Cursor>(const_cast<ParallelJobs&>(*this));
}

std::optional<std::uint64_t> ParallelJobs::counted() const {
    std::lock_guard lock(mutex_);
    return counted_;
}

TaskSpec ParallelJobs::task_of(ParallelJob job) {
    Json params{{"shell", job.command}};
    // --line-buffer, --ungroup: the job writes to files that the sink copies out as they grow.
    if (output_->live != ParallelOutput::Live::No)
        params["shell"] =
            fmt::format("{{ {}\n}} >{} 2>{}", job.command, parallel::quote(output_->live_path(made_, "out").string()),
                        parallel::quote(output_->live_path(made_, "err").string()));
    if (!cwd_.empty()) params["cwd"] = cwd_;
    if (!job.stdin_path.empty()) params["stdin"] = job.stdin_path;
    TaskSpec task;
    task.id = made_++;
    task.type = &type_;
    try {
        task.params = type_.parse(params);
    } catch (const std::exception& e) {
        throw ConfigError(fmt::format("job {}: {}", job.seq, e.what()));
    }
    task.timeout_s = timeout_s_;
    output_->add(task.id, std::move(job));
    return task;
}

void ParallelJobs::start() {
    if (!maker_ || thread_.joinable()) return;
    // The thread takes no signal: the process's are handled elsewhere (SignalWatcher).
    sigset_t all;
    sigset_t before;
    sigfillset(&all);
    for (int synchronous : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT}) sigdelset(&all, synchronous);
    ::pthread_sigmask(SIG_BLOCK, &all, &before);
    try {
        thread_ = std::thread([this] { make(); });
    } catch (...) {
        ::pthread_sigmask(SIG_SETMASK, &before, nullptr);
        throw;
    }
    ::pthread_sigmask(SIG_SETMASK, &before, nullptr);
}

void ParallelJobs::make() {
    const auto wake = [this] {  // with mutex_ held
        changed_.notify_all();
        if (std::exchange(waiting_, false)) signal_fd(wake_fd_.get());
    };
    std::optional<std::string> error;
    try {
        for (ParallelJob job; maker_->next(job); job = ParallelJob{}) {
            TaskSpec task = task_of(std::move(job));
            std::unique_lock lock(mutex_);
            changed_.wait(lock, [this] { return quit_ || queue_.size() < kQueued; });
            if (quit_) return;
            queue_.push_back(std::move(task));
            wake();
        }
    } catch (const std::exception& e) {
        error = e.what();
    }
    std::lock_guard lock(mutex_);
    ended_ = true;
    error_ = std::move(error);
    wake();
}

}  // namespace taskfarm
