// The farm: a plan that the program feeds as it goes (a PlanSource whose cursor says Later
// while nothing is queued, as standard input's does), one mode's runner on a thread of its
// own, and a sink that hands each final result to the program. No engine of its own: the
// runners, the dispatcher and the schedule are the coordinator's (decision 126).

#include <taskfarm/farm.hpp>

#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <mutex>
#include <set>
#include <span>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "alloc.hpp"
#include "checks.hpp"
#include "config.hpp"
#include "control.hpp"
#include "curve.hpp"
#include "errors.hpp"
#include "function_type.hpp"
#include "id_set.hpp"
#include "journal.hpp"
#include "journal_line.hpp"
#include "live_view.hpp"
#include "log.hpp"
#include "modes.hpp"
#include "plan_sources.hpp"
#include "progress.hpp"
#include "run_session.hpp"
#include "sinks.hpp"
#include "signals.hpp"
#include "step.hpp"
#include "task.hpp"
#include "text.hpp"
#include "worker.hpp"

namespace taskfarm {

TaskError::TaskError(TaskId id, std::string type, const std::string& reason, std::uint32_t attempts, bool cancelled,
                     Value value)
    : std::runtime_error(fmt::format("task {} ({}): {}", id, type, reason)),
      id_(id),
      type_(std::move(type)),
      reason_(reason),
      attempts_(attempts),
      cancelled_(cancelled),
      value_(std::move(value)) {}

std::optional<int> TaskError::exit() const {
    if (value_.is_object()) {
        const auto found = value_.find("exit_code");
        if (found != value_.end() && found->is_number_integer()) return found->get<int>();
    }
    return std::nullopt;
}

void detail::Outcome::raise() const { throw TaskError(id, type, error, attempts, cancelled, value); }

namespace {

// The stop signals' names (SignalWatcher's), for the farm's error.
std::string stop_signal_name(int signal) {
    switch (signal) {
        case SIGINT: return "SIGINT";
        case SIGTERM: return "SIGTERM";
        case SIGHUP: return "SIGHUP";
        case SIGQUIT: return "SIGQUIT";
        default: return fmt::format("signal {}", signal);
    }
}

ProgressMode progress_mode(FarmProgress progress) {
    switch (progress) {
        case FarmProgress::Auto: return ProgressMode::Auto;
        case FarmProgress::Always: return ProgressMode::Always;
        case FarmProgress::Never: break;
    }
    return ProgressMode::Never;
}

Mode engine_mode(FarmMode mode) {
    switch (mode) {
        case FarmMode::Threads: return Mode::Threads;
        case FarmMode::Sequential: return Mode::Sequential;
        case FarmMode::Processes: break;
    }
    return Mode::Processes;
}

// What a resumed journal's ok results are matched by: the type and the parameters as parse()
// made them (the journal holds those).
std::string resume_key(const std::string& type, const Params& params) { return type + '\n' + params.dump(); }

// FarmOptions' heartbeats and remote workers, checked as the coordinator's decide() checks --listen,
// --keys and --launch slurm, into `config`: std::invalid_argument naming the option.
void worker_options(const FarmOptions& options, RunConfig& config) {
    const auto refuse = [](const std::string& option, const std::string& why) {
        throw std::invalid_argument(fmt::format("FarmOptions::{}: {}", option, why));
    };
    // Who starts the remote workers: at most one of slurm, mpirun and alloc.
    const char* starter = options.slurm ? "slurm" : options.mpirun ? "mpirun" : options.alloc ? "alloc" : nullptr;
    if (int(options.slurm.has_value()) + int(options.mpirun.has_value()) + int(options.alloc.has_value()) > 1)
        refuse(options.alloc ? "alloc" : "mpirun", "give one of slurm, mpirun and alloc: each starts the workers");
    if ((!options.listen.empty() || starter) && options.mode != FarmMode::Processes)
        refuse(starter ? starter : "listen", "remote workers are worker processes: it needs FarmMode::Processes");
    if (!options.listen.empty() && !curve::parse_tcp_endpoint(options.listen, /*wildcard_port=*/true))
        refuse("listen",
               fmt::format("'{}' is not tcp://HOST:PORT (PORT * picks a free one)", printable(options.listen)));
    if (!(options.heartbeat_interval_s >= 0.001 && options.heartbeat_interval_s <= 3600))
        refuse("heartbeat_interval_s",
               fmt::format("{:g} is not from 0.001 to 3600 seconds", options.heartbeat_interval_s));
    if (!(options.heartbeat_timeout_s >= kMinHeartbeatTimeout && options.heartbeat_timeout_s <= 86'400))
        refuse("heartbeat_timeout_s", fmt::format("{:g} is not from {:g} to 86400 seconds", options.heartbeat_timeout_s,
                                                  kMinHeartbeatTimeout));
    if (options.heartbeat_interval_s * 2 > options.heartbeat_timeout_s)
        refuse("heartbeat_interval_s",
               fmt::format("{:g} must be at most half of heartbeat_timeout_s {:g}: a worker is lost when silent for "
                           "the timeout, so two heartbeats must fit in it",
                           options.heartbeat_interval_s, options.heartbeat_timeout_s));
    config.heartbeat_interval_s = options.heartbeat_interval_s;
    config.heartbeat_timeout_s = options.heartbeat_timeout_s;
    config.listen = options.listen;
    config.wait_workers_s = options.wait_workers_s;
    if (!(options.wait_workers_s > 0)) refuse("wait_workers_s", "must be a number of seconds above 0");
    if (starter && (!options.keys.empty() || options.insecure || options.expect_workers > 0))
        refuse(!options.keys.empty() ? "keys"
               : options.insecure    ? "insecure"
                                     : "expect_workers",
               fmt::format("cannot go with {}, which make{} keys for the run and wait{} for the workers {} start{}",
                           options.slurm    ? "a Slurm step"
                           : options.mpirun ? "an mpirun job"
                                            : "Slurm allocations",
                           options.alloc ? "" : "s", options.alloc ? "" : "s", options.alloc ? "they" : "it",
                           options.alloc ? "" : "s"));
    if (options.alloc) {
        const SlurmAllocations& given = *options.alloc;
        if (!is_slurm_time(given.time))
            refuse("alloc", fmt::format("time '{}' is not a time limit of sbatch --time: MINUTES, MM:SS, "
                                        "HH:MM:SS, DAYS-HOURS, DAYS-HH:MM or DAYS-HH:MM:SS",
                                        printable(given.time)));
        if (given.workers < 1) refuse("alloc", fmt::format("workers must be at least 1, not {}", given.workers));
        if (given.max_allocs < 1)
            refuse("alloc", fmt::format("max_allocs must be at least 1, not {}", given.max_allocs));
        AllocConfig alloc;
        alloc.max_allocs = given.max_allocs;
        alloc.workers = given.workers;
        alloc.time_limit = given.time;
        try {
            alloc.args = split_launcher_args(given.args);
        } catch (const std::invalid_argument& e) {
            refuse("alloc", fmt::format("cannot split args '{}': {}", printable(given.args), e.what()));
        }
        alloc.give_up = std::chrono::milliseconds(static_cast<std::int64_t>(options.wait_workers_s * 1000));
        if (config.listen.empty()) config.listen = fmt::format("tcp://{}:*", first_non_loopback_address());
        config.workers = 0;
        config.alloc = std::move(alloc);
        return;
    }
    if (options.mpirun) {
        const MpirunStep& given = *options.mpirun;
        if (given.tasks < 1)
            refuse("mpirun", fmt::format("tasks must be at least 1 (the slots of the job), not {}", given.tasks));
        StepConfig step{.launcher = StepLauncher::Mpirun, .tasks = given.tasks, .pin = given.pin};
        try {
            step.args = split_launcher_args(given.args);
        } catch (const std::invalid_argument& e) {
            refuse("mpirun", fmt::format("cannot split args '{}': {}", printable(given.args), e.what()));
        }
        if (config.listen.empty()) config.listen = fmt::format("tcp://{}:*", first_non_loopback_address());
        config.expect_workers = given.tasks;
        config.workers = 0;
        config.step = std::move(step);
        return;
    }
    if (options.slurm) {
        int tasks = options.slurm->tasks;
        if (tasks == 0) {
            const char* ntasks = std::getenv("SLURM_NTASKS");
            const std::string_view text = ntasks ? ntasks : "";
            const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), tasks);
            if (!ntasks || ec != std::errc{} || end != text.data() + text.size() || tasks < 1)
                refuse("slurm", fmt::format("tasks 0 means $SLURM_NTASKS, which is {}: give SlurmStep::tasks outside "
                                            "an allocation",
                                            ntasks ? fmt::format("'{}'", printable(ntasks)) : "not set"));
        }
        if (tasks < 1) refuse("slurm", fmt::format("tasks must be at least 1, not {}", tasks));
        StepConfig step{.launcher = StepLauncher::Slurm, .tasks = tasks, .pin = options.slurm->pin};
        try {
            step.args = split_launcher_args(options.slurm->args);
        } catch (const std::invalid_argument& e) {
            refuse("slurm", fmt::format("cannot split args '{}': {}", printable(options.slurm->args), e.what()));
        }
        if (config.listen.empty()) config.listen = fmt::format("tcp://{}:*", first_non_loopback_address());
        config.expect_workers = tasks;
        config.workers = 0;
        config.step = std::move(step);
        return;
    }
    if (options.expect_workers < 0) refuse("expect_workers", "must be 0 or more");
    if (!options.listen.empty()) {
        if (options.keys.empty() && !options.insecure)
            refuse("listen", fmt::format("'{}' without keys would hand tasks and results, unencrypted, to any peer "
                                         "that connects: give FarmOptions::keys (a `coordinator keygen` directory), "
                                         "or insecure = true where you trust them",
                                         printable(options.listen)));
        if (!options.keys.empty() && options.insecure) refuse("insecure", "cannot go with keys");
        config.expect_workers = options.expect_workers;
        config.keys_dir = options.keys;
        config.authorized_dir = options.authorized;
        try {
            config.server_keys = read_keys(config, "FarmOptions::keys", "FarmOptions::authorized");
        } catch (const ConfigError& e) {
            throw std::invalid_argument(e.what());
        }
    } else {
        for (const auto& [given, name] : {std::pair{!options.keys.empty(), "keys"},
                                          {!options.authorized.empty(), "authorized"},
                                          {options.insecure, "insecure"},
                                          {options.expect_workers > 0, "expect_workers"}})
            if (given) refuse(name, "is for remote workers: it needs FarmOptions::listen");
    }
    if (options.workers < 0) refuse("workers", "must be 0 or more");
    if (options.workers == 0 && config.listen.empty())
        refuse("workers", "0 starts no worker: 0 local workers needs FarmOptions::listen and remote workers");
    if (options.workers == 0 && config.expect_workers == 0)
        refuse("expect_workers",
               "workers = 0 starts no local worker: give expect_workers M (M >= 1), the remote workers to wait for");
}

}  // namespace

class Farm::Impl {
public:
    explicit Impl(FarmOptions options) : options_(std::move(options)) {
        // The engine's log lines as the coordinator writes them, on stderr (spdlog's own
        // default writes to stdout, which is the program's).
        std::string name = "farm";
        try {
            name = this_program().filename().string();
        } catch (const std::exception&) {
        }
        init_logging(name);
        add_builtin_types(registry_);
    }

    ~Impl() {
        close();
        if (wake_fd_ >= 0) ::close(wake_fd_);
    }

    Registry registry_;
    FarmOptions options_;
    std::vector<const TaskType*> as_given_;  // registered functions, whose params submit() moves, not parses

    bool as_given(const TaskType* type) const {
        return std::find(as_given_.begin(), as_given_.end(), type) != as_given_.end();
    }

    TaskHandle submit(const std::string& type_name, Params params, double timeout_s) {
        const TaskType& type = registry_.at(type_name);  // throws std::invalid_argument naming the known types
        // A function's parse() returns its params as they are: they are moved, not copied.
        if (!as_given(&type)) params = type.parse(params);
        std::unique_lock lock(mutex_);
        if (closed_) throw std::logic_error("Farm::submit: the farm is closed");
        if (!started_) start(lock, type);
        if (queue_.size() >= std::max<std::size_t>(options_.max_queued, 1)) {
            // Full: wait until the engine has taken half, not for each task it takes, so that a
            // program submitting faster than the workers run is woken once per half a queue.
            ++submitters_waiting_;
            space_.wait(lock, [&] { return queue_.size() <= low_water() || closed_ || failed(); });
            --submitters_waiting_;
        }
        if (failed()) throw std::runtime_error(fmt::format("the farm stopped: {}", engine_error_));
        if (closed_) throw std::logic_error("Farm::submit: the farm is closed");
        if (const auto found = resumed_.empty() ? resumed_.end() : resumed_.find(resume_key(type_name, params));
            found != resumed_.end()) {
            // Ok in the journal already: its result, not a run (decision 168).
            auto outcome = std::make_shared<detail::Outcome>(std::move(found->second.front()));
            found->second.pop_front();
            if (found->second.empty()) resumed_.erase(found);
            const TaskId id = outcome->id;
            completed_.insert(id);
            done_.push_back(std::move(outcome));
            ++outstanding_;
            done_cv_.notify_all();
            return {id};
        }
        const TaskId id = next_id_++;
        ++queued_total_;
        if (progress_) progress_->set_total(queued_total_);
        if (live_) live_->state().set_tasks(queued_total_);
        const bool was_empty = queue_.empty();
        queue_.emplace_back(id, &type, std::move(params), timeout_s < 0 ? options_.timeout_s : timeout_s);
        ++outstanding_;
        // Only an empty queue can have a cursor waiting on it (its Later read the wake-up
        // away under this lock): one write per burst, not per task.
        if (was_empty) wake();
        return {id};
    }

    std::optional<Result<>> next(bool wait) {
        std::unique_lock lock(mutex_);
        if (wait) await_done(lock, [&] { return !done_.empty() || outstanding_ == 0 || failed(); });
        if (done_.empty()) {
            if (failed() && outstanding_ > 0)
                throw std::runtime_error(fmt::format("the farm stopped: {}", engine_error_));
            return std::nullopt;
        }
        Result<> result(std::move(done_.front()));
        done_.pop_front();
        --outstanding_;
        return result;
    }

    void wait_all() {
        std::unique_lock lock(mutex_);
        await_done(lock, [&] { return done_.size() == outstanding_ || failed(); });
        if (failed() && done_.size() < outstanding_)
            throw std::runtime_error(fmt::format("the farm stopped: {}", engine_error_));
    }

    bool cancel(TaskId id) {
        {
            std::lock_guard lock(mutex_);
            if (!started_ || closed_ || id >= next_id_ || completed_.contains(id)) return false;
        }
        const auto outcomes = session_->cancels().request({id});
        return !outcomes.empty() && outcomes.front().cancelled;
    }

    std::uint64_t outstanding() const {
        std::lock_guard lock(mutex_);
        return outstanding_;
    }

    std::string endpoint() const {
        std::unique_lock lock(mutex_);
        if (!started_ || config_.listen.empty()) return "";
        await_done(lock, [&] { return !endpoint_.empty() || failed() || closed_; });
        if (endpoint_.empty() && failed()) throw std::runtime_error(fmt::format("the farm stopped: {}", engine_error_));
        return endpoint_;
    }

    void close() {
        {
            std::lock_guard lock(mutex_);
            if (closed_) return;
            closed_ = true;
            wake();
        }
        space_.notify_all();
        if (engine_.joinable()) engine_.join();
        // The bar erased; the page shows the run as over (and stays up until destruction).
        if (session_) {
            session_->finish(engine_error_.empty() ? std::vector<RunReport>{report_} : std::vector<RunReport>{});
            // FarmOptions::signals: the handlers go, what was there before comes back (any thread).
            std::lock_guard lock(mutex_);  // signal() reads it
            session_->end_signals();
        }
        done_cv_.notify_all();
    }

    int signal() const {
        std::lock_guard lock(mutex_);
        return session_ ? session_->signal() : 0;
    }

    std::string ui_url() const {
        std::lock_guard lock(mutex_);
        return live_ ? live_->url() : "";
    }

private:
    // The plan the farm feeds: one cursor, over the queue submit() fills.
    class Source final : public PlanSource {
    public:
        explicit Source(Impl& farm) : farm_(farm) {}
        std::unique_ptr<TaskCursor> open() const override { return std::make_unique<Cursor>(farm_); }
        std::optional<std::uint64_t> counted() const override {
            std::lock_guard lock(farm_.mutex_);
            if (!farm_.closed_ || !farm_.queue_.empty()) return std::nullopt;
            return farm_.queued_total_;
        }

    private:
        Impl& farm_;
    };

    class Cursor final : public TaskCursor {
    public:
        explicit Cursor(Impl& farm) : farm_(farm) {}
        bool next(TaskSpec& task) override {
            std::unique_lock lock(farm_.mutex_);
            farm_.queued_cv_.wait(lock, [&] { return !farm_.queue_.empty() || farm_.closed_; });
            return farm_.pop(task);
        }
        Take take(TaskSpec& task) override {
            std::lock_guard lock(farm_.mutex_);
            if (farm_.pop(task)) return Take::Task;
            if (farm_.closed_) return Take::End;
            // Nothing queued: the wake-up is consumed under the lock submit() writes it under,
            // so none is lost.
            std::uint64_t count = 0;
            while (::read(farm_.wake_fd_, &count, sizeof count) < 0 && errno == EINTR) {
            }
            return Take::Later;
        }
        int ready_fd() const override { return farm_.wake_fd_; }

    private:
        Impl& farm_;
    };

    // The final result of each task to the program; failed attempts that run again are not.
    // A result that cannot be made into the program's (a type's name() that throws, no memory)
    // is handed over as failed, saying why: a sink never stops the run (decision 240), and the
    // program waits for every task it submitted (decision 292).
    class Sink final : public ResultSink {
    public:
        explicit Sink(Impl& farm) : farm_(farm) {}

    protected:
        void begin_mode_(const std::string&, std::size_t) override {}
        void sink_it_(const TaskSpec& task, const TaskResult& result) override {
            if (result.retrying) return;
            auto outcome = outcome_or_error(task, result);
            farm_.deliver({&outcome, 1});
        }
        // Threads mode hands over a slice of a thread's results at once: one lock, one wake.
        void sink_all_(std::span<const Finished> batch) override {
            outcomes_.clear();
            for (const Finished& done : batch)
                if (!done.result.retrying) outcomes_.push_back(outcome_or_error(done.task, done.result));
            farm_.deliver(outcomes_);
            outcomes_.clear();
        }

    private:
        std::shared_ptr<const detail::Outcome> outcome_or_error(const TaskSpec& task, const TaskResult& result) {
            try {
                return outcome_of(task, result);
            } catch (const std::exception& e) {
                return failure(task, result, e.what());
            } catch (...) {
                return failure(task, result, "an unknown error");
            }
        }

        static std::shared_ptr<const detail::Outcome> failure(const TaskSpec& task, const TaskResult& result,
                                                              const std::string& why) {
            spdlog::error("cannot hand over the result of task {}: {}", task.id, why);
            auto outcome = std::make_shared<detail::Outcome>();
            outcome->id = task.id;
            outcome->attempts = result.attempt;
            outcome->error = "cannot hand over its result: " + why;
            return outcome;
        }

        // Under the sink's lock.
        std::shared_ptr<const detail::Outcome> outcome_of(const TaskSpec& task, const TaskResult& result) {
            auto outcome = std::make_shared<detail::Outcome>();
            outcome->id = task.id;
            if (task.type != named_) {  // name() makes a string: once per type, not per result
                name_ = task.type ? task.type->name() : std::string();
                named_ = task.type;  // after name(), which may throw
            }
            outcome->type = task.type ? name_ : kind_name(result);
            outcome->ok = result.ok;
            outcome->attempts = result.attempt;
            outcome->cancelled = result.cancelled;
            outcome->error = result.error;
            outcome->value = result.value;
            return outcome;
        }

        Impl& farm_;
        const TaskType* named_ = nullptr;
        std::string name_;
        std::vector<std::shared_ptr<const detail::Outcome>> outcomes_;
    };

    // With the lock held.
    bool pop(TaskSpec& task) {
        if (queue_.empty()) return false;
        task = std::move(queue_.front());
        queue_.pop_front();
        if (submitters_waiting_ > 0 && queue_.size() <= low_water()) space_.notify_all();
        return true;
    }

    // done_cv_.wait(), counted, so that a result wakes only a thread that waits for one.
    template <class Predicate>
    void await_done(std::unique_lock<std::mutex>& lock, Predicate ready) const {
        ++done_waiters_;
        done_cv_.wait(lock, ready);
        --done_waiters_;
    }

    void wake() {
        const std::uint64_t one = 1;
        while (::write(wake_fd_, &one, sizeof one) < 0 && errno == EINTR) {
        }
        queued_cv_.notify_one();
    }

    bool failed() const { return !engine_error_.empty(); }
    std::size_t low_water() const { return options_.max_queued / 2; }

    void deliver(std::span<std::shared_ptr<const detail::Outcome>> outcomes) {
        if (outcomes.empty()) return;
        bool waiters = false;
        {
            std::lock_guard lock(mutex_);
            for (auto& outcome : outcomes) {
                completed_.insert(outcome->id);
                done_.push_back(std::move(outcome));
            }
            waiters = done_waiters_ > 0;
        }
        if (waiters) done_cv_.notify_all();
    }

    // With the lock held, at the first submit: the fork server first (while this process may
    // still have no thread), then the engine's thread.
    void start(std::unique_lock<std::mutex>& lock, const TaskType& first) {
        // The options and the journal first: bad ones, or a journal that cannot be opened or
        // resumed, throw before anything starts.
        config_.modes = {engine_mode(options_.mode)};
        config_.workers = options_.workers;
        worker_options(options_, config_);
        std::unique_ptr<JournalSink> journal = open_journal();
        if (!(options_.progress_interval_s > 0 && options_.progress_interval_s <= 86'400))
            throw std::invalid_argument(fmt::format(
                "FarmOptions::progress_interval_s: {:g} is not from 0 to 86400 seconds", options_.progress_interval_s));
        if (!(options_.drain_timeout_s >= 0 && options_.drain_timeout_s <= 86'400))
            throw std::invalid_argument(fmt::format("FarmOptions::drain_timeout_s: {:g} is not from 0 to 86400 seconds",
                                                    options_.drain_timeout_s));
        if (!options_.ui.empty() && !parse_ui_address(options_.ui))
            throw std::invalid_argument(fmt::format(
                "FarmOptions::ui: '{}' is not [ADDRESS:]PORT (e.g. \"127.0.0.1:0\")", printable(options_.ui)));
        if (wake_fd_ < 0) wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);  // kept by a start that threw
        if (wake_fd_ < 0) throw std::runtime_error(fmt::format("eventfd: {}", std::strerror(errno)));
        if (!config_.listen.empty())
            config_.on_listening = [this](const std::string& endpoint) {
                {
                    std::lock_guard guard(mutex_);
                    endpoint_ = endpoint;
                }
                done_cv_.notify_all();
            };
        if (options_.retries) set_retries(config_, *options_.retries);  // else download keeps its own default
        config_.max_tasks_per_worker = options_.max_tasks_per_worker;
        config_.max_worker_memory = options_.max_worker_memory;
        config_.max_attempts = options_.max_attempts;
        config_.log_level = options_.log_level;
        config_.out_dir = options_.out_dir.empty() ? default_out_dir(registry_) : options_.out_dir;
        config_.worker_bin = this_program();
        config_.worker_prefix = {"worker"};
        config_.worker_command = config_.worker_bin.filename().string() + " worker";
        config_.settings = options_.settings.is_object() ? options_.settings : Json::object();
        settings_ = settings_json(config_);
        if (!options_.log_level.empty()) set_log_level(options_.log_level);
        // The coordinator's session (decision 290): the fork server, then the live view's port
        // (a port in use throws from this submit, naming the option, and nothing has started).
        // The server preloads the program's own types and the first task's, not every built-in
        // one: libcurl in the server is in every worker forked from it (decision 293).
        std::vector<const TaskType*> types;
        for (const auto& type : registry_.types())
            if (!registry_.builtin(type.get()) || type.get() == &first) types.push_back(type.get());
        auto session = std::make_unique<RunSession>(config_, registry_, settings_, types);
        try {
            session->open_live_view({options_.ui, config_.worker_bin.filename().string(), "FarmOptions::ui"});
        } catch (const ConfigError& e) {
            throw std::invalid_argument(e.what());
        }
        session_ = std::move(session);
        started_ = true;
        plan_.source = std::make_shared<Source>(*this);
        for (const auto& type : registry_.types()) plan_.types.push_back(type.get());
        session_->add_journal(std::move(journal));
        // No result lines to print under the bar: the program has the results.
        progress_ =
            session_->add_progress(progress_mode(options_.progress),
                                   ProgressOptions{.log_interval = std::chrono::milliseconds(
                                                       static_cast<std::int64_t>(options_.progress_interval_s * 1000)),
                                                   .lines_share_terminal = false},
                                   nullptr);
        session_->add(std::make_unique<Sink>(*this));
        // The stop signals, when the farm takes them: through handlers, so that no thread of
        // the program's has its mask changed (decision 313); the farm's own threads (the
        // watcher's, the live view's, the engine's and those it starts) are made with them
        // blocked, so none is interrupted, and this thread gets its mask back when start() returns.
        std::optional<StopSignalsBlocked> own_threads;
        if (options_.signals) own_threads.emplace();
        session_->start(options_.signals
                            ? std::optional<SignalSetup>(SignalSetup{
                                  std::chrono::milliseconds(static_cast<std::int64_t>(options_.drain_timeout_s * 1000)),
                                  "FarmOptions::drain_timeout_s", /*handlers=*/true})
                            : std::nullopt);
        live_ = session_->live();
        runner_ = session_->runner(config_.modes.front());
        lock.unlock();  // the runner's threads may take tasks as soon as they start
        engine_ = std::thread([this] {
            try {
                report_ = session_->run(*runner_, plan_);
            } catch (const std::exception& e) {
                // The processes mode names the coordinator's flag for an endpoint it cannot
                // bind; the program set FarmOptions::listen.
                std::string why = e.what();
                if (why.starts_with("--listen: ")) why = "FarmOptions::listen: " + why.substr(10);
                spdlog::error("{}", why);
                std::lock_guard guard(mutex_);
                engine_error_ = why;
            }
            {
                std::lock_guard guard(mutex_);
                const int signal = session_->signal();
                if (engine_error_.empty() && signal != 0)
                    engine_error_ = fmt::format("{} (FarmOptions::signals): {}", stop_signal_name(signal),
                                                session_->stop_token().stop_requested()
                                                    ? "the running tasks were cancelled"
                                                    : "the running tasks finished, no other started");
                if (engine_error_.empty() && done_.size() < outstanding_ && !closed_)
                    engine_error_ = "the engine ended with tasks not done";
            }
            done_cv_.notify_all();
            space_.notify_all();
        });
        lock.lock();
    }

    // The journal, locked; with resume, its settings compared with the farm's and what it holds
    // as ok read into resumed_. The settings that change results (result_settings(), as the
    // coordinator's --resume has them) are noted in it.
    std::unique_ptr<JournalSink> open_journal() {
        if (options_.journal.empty()) return nullptr;
        const bool resuming = options_.resume && std::filesystem::exists(options_.journal);
        std::vector<const TaskType*> types;
        for (const auto& type : registry_.types()) types.push_back(type.get());
        RunConfig given;
        given.settings = options_.settings.is_object() ? options_.settings : Json::object();
        const Json identity = result_settings(given, registry_, types);
        std::unique_ptr<JournalSink> sink;
        try {
            sink = std::make_unique<JournalSink>(options_.journal, /*create=*/true);
            if (resuming) read_journal(identity);
        } catch (const ConfigError& e) {
            throw std::invalid_argument(fmt::format("FarmOptions::journal: {}", e.what()));
        }
        if (!identity.empty()) sink->note_settings(std::string(to_string(engine_mode(options_.mode))), identity);
        return sink;
    }

    // Refuses settings other than those the journal's last run recorded, then reads its ok
    // results into resumed_ (the ids of new tasks start after its largest).
    void read_journal(const Json& identity) {
        const std::string flag = "FarmOptions::resume";
        const auto& path = options_.journal;
        const std::uintmax_t length = cut_torn_line(path, flag);
        if (const auto changed = changed_setting(path, identity, flag)) {
            const auto shown = [](const Json& value) {
                return value.is_null() ? std::string("not given") : value.dump();
            };
            throw ConfigError(fmt::format(
                "{}: setting \"{}\" is {} now, but the journal's results were made with {} ({}): resume with "
                "the same settings, or write a new journal",
                flag, printable(changed->key), printable(shown(changed->now)), printable(shown(changed->then)),
                changed->where));
        }
        std::ifstream in(path, std::ios::binary);
        JournalLineReader reader(in, flag, path.string(), length);
        for (std::string text; reader.next(text);) {
            const std::string at = reader.where();
            const Json entry = parse_journal_line(text, at);
            check_journal_line(entry, at);
            if (entry.contains("event")) continue;
            const TaskId id = entry.at("id").get<TaskId>();
            next_id_ = std::max(next_id_, id + 1);
            // A failed task, a failed attempt, or a line whose value was left out (over the
            // journal's limit): runs again.
            if (!entry.at("ok").get<bool>() || entry.value("retrying", false) || entry.contains("cut")) continue;
            const auto kind = entry.find("kind");
            const auto params = entry.find("params");
            if (kind == entry.end() || !kind->is_string() || params == entry.end()) continue;
            detail::Outcome outcome;
            outcome.id = id;
            outcome.type = kind->get<std::string>();
            outcome.ok = true;
            outcome.attempts = entry.value("attempt", std::uint32_t{1});
            outcome.value = entry.value("value", Value());
            resumed_[resume_key(outcome.type, *params)].push_back(std::move(outcome));
        }
    }

    mutable std::mutex mutex_;
    std::condition_variable space_;            // the queue has room
    std::condition_variable queued_cv_;        // a task was queued, or the farm closed
    mutable std::condition_variable done_cv_;  // a result came, the engine ended, or it listens
    mutable int done_waiters_ = 0;             // threads in await_done()
    std::deque<TaskSpec> queue_;
    std::deque<std::shared_ptr<const detail::Outcome>> done_;
    IdSet completed_;  // ids whose result came: ranges, so it stays small as results come in order
    TaskId next_id_ = 0;
    std::uint64_t queued_total_ = 0;
    int submitters_waiting_ =
        0;  // submit() calls waiting for room in the queue  // tasks handed to the engine (a resumed one is not)
    // A resumed journal's ok results not yet claimed by a submit, by resume_key().
    std::unordered_map<std::string, std::deque<detail::Outcome>> resumed_;
    std::uint64_t outstanding_ = 0;  // submitted, result not taken
    bool started_ = false;
    bool closed_ = false;
    std::string engine_error_;
    std::string endpoint_;  // where remote workers connect, once bound
    int wake_fd_ = -1;

    RunConfig config_;
    Json settings_;
    Plan plan_;
    std::unique_ptr<RunSession> session_;  // the fork server, the sinks, the signals, the cancel board
    LiveView* live_ = nullptr;             // the session's
    ProgressSink* progress_ = nullptr;     // the session's
    std::unique_ptr<Runner> runner_;       // after the session: refers to its tokens and fork server
    RunReport report_;
    std::thread engine_;
};

Farm::Farm(FarmOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {}

Farm::~Farm() = default;

Farm& Farm::task(const std::string& name, TaskFunction fn, TaskOptions options) {
    if (!fn) throw std::invalid_argument(fmt::format("cannot register task type '{}': no function", name));
    auto type = make_function_type(name, std::move(fn), std::move(options));
    const TaskType* added = type.get();
    add(std::move(type));
    impl_->as_given_.push_back(added);  // its parse() is TaskType's: the params as they are
    return *this;
}

Farm& Farm::add(std::shared_ptr<const TaskType> type) {
    impl_->registry_.add(std::move(type));
    return *this;
}

bool Farm::is_worker(int argc, const char* const* argv) { return argc > 1 && std::strcmp(argv[1], "worker") == 0; }

int Farm::run_worker(int argc, const char* const* argv) {
    std::string name = argc > 0 ? std::filesystem::path(argv[0]).filename().string() : "farm";
    return worker_main(name + " worker", impl_->registry_, argc - 1, argv + 1);
}

TaskHandle Farm::submit(const std::string& type, Params params, double timeout_s) {
    return impl_->submit(type, std::move(params), timeout_s);
}

std::optional<Result<>> Farm::next() { return impl_->next(true); }
std::optional<Result<>> Farm::try_next() { return impl_->next(false); }
void Farm::wait() { impl_->wait_all(); }
bool Farm::cancel(TaskHandle task) { return impl_->cancel(task.id); }
std::uint64_t Farm::outstanding() const { return impl_->outstanding(); }
std::string Farm::endpoint() const { return impl_->endpoint(); }
std::string Farm::ui_url() const { return impl_->ui_url(); }
int Farm::signal() const { return impl_->signal(); }
void Farm::close() { impl_->close(); }

}  // namespace taskfarm
