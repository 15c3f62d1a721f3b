#include "parallel_output.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cmath>
#include <cstring>
#include <charconv>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "errors.hpp"
#include "temp_dirs.hpp"
#include "text.hpp"
#include "unique_fd.hpp"

namespace taskfarm {
namespace {

std::string text_field(const Value& value, const char* key) {
    if (!value.is_object()) return {};
    const auto found = value.find(key);
    return found != value.end() && found->is_string() ? found->get<std::string>() : std::string();
}

// "SIGKILL" -> 9; 0 for none or an unknown name.
int signal_number(const Value& value) {
    const std::string name = text_field(value, "signal");
    if (name.size() <= 3) return 0;
    for (int signal = 1; signal < NSIG; ++signal)
        if (const char* abbrev = ::sigabbrev_np(signal); abbrev && name.substr(3) == abbrev) return signal;
    return 0;
}

// Every line of `text` starting with `tag` and a tab, as parallel's --tag writes them.
std::string tagged(const std::string& text, const std::string& tag) {
    std::string lines;
    for (std::size_t at = 0; at < text.size();) {
        const auto end = text.find('\n', at);
        const std::size_t stop = end == std::string::npos ? text.size() : end + 1;
        lines += tag;
        lines += '\t';
        lines.append(text, at, stop - at);
        at = stop;
    }
    return lines;
}

// A stream of a job: all of its bytes, from its spill file when it had one (removed once
// read), else the head the result holds. Sets `cut` when that is not all of them.
std::string stream(const TaskResult& result, const std::string& key, std::string& cut) {
    if (!result.value.is_object()) return {};
    std::string text = text_field(result.value, key.c_str());
    const std::string file = text_field(result.value, (key + "_file").c_str());
    if (!file.empty()) {
        std::FILE* in = std::fopen(file.c_str(), "re");
        std::string whole;
        char buffer[65536];
        for (std::size_t got; in && (got = std::fread(buffer, 1, sizeof buffer, in)) > 0;) whole.append(buffer, got);
        if (in && !std::ferror(in))
            text = std::move(whole);
        else
            cut = fmt::format("cannot read '{}': {}", printable(file), std::strerror(errno));
        if (in) std::fclose(in);
        ::unlink(file.c_str());
    }
    const std::uint64_t bytes = result.value.value(key + "_bytes", std::uint64_t{0});
    if (text.size() < bytes && cut.empty()) {
        cut = text_field(result.value, (key + "_cut").c_str());
        if (cut.empty()) cut = "--max-output";
    }
    if (!cut.empty()) cut = fmt::format("its {} was cut to {} of {} bytes ({})", key, text.size(), bytes, cut);
    return text;
}

// The spill files of a result that is not shown.
void remove_files(const TaskResult& result) {
    for (const char* key : {"stdout_file", "stderr_file"})
        if (const std::string file = text_field(result.value, key); !file.empty()) ::unlink(file.c_str());
}

void write_results_file(const std::filesystem::path& path, const std::string& text) {
    std::FILE* file = std::fopen(path.c_str(), "we");  // close-on-exec, as every file of ours
    const bool written = file && std::fwrite(text.data(), 1, text.size(), file) == text.size();
    if ((file && std::fclose(file) != 0) || !written)
        spdlog::error("--results: cannot write '{}': {}", printable(path.string()), std::strerror(errno));
}

}  // namespace

// --line-buffer, --ungroup: a thread watches the spool directory (inotify) and copies what
// each job adds to its files to stdout and stderr as it comes: whole lines (each with its
// tag), or with --ungroup any bytes; finish() copies the rest when the job has ended.
class ParallelSink::Live {
public:
    Live(const ParallelOutput& output, std::FILE* out) : output_(output), out_(out) {
        inotify_fd_.reset(::inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
        stop_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (inotify_fd_.get() < 0 || stop_fd_.get() < 0 ||
            ::inotify_add_watch(inotify_fd_.get(), output_.spool_dir.c_str(), IN_MODIFY | IN_CLOSE_WRITE) < 0) {
            const int error = errno;
            throw ConfigError(fmt::format("--line-buffer: cannot watch '{}': {}", printable(output_.spool_dir.string()),
                                          std::strerror(error)));
        }
        // The thread takes no signal: the process's are handled elsewhere (SignalWatcher).
        sigset_t all;
        sigset_t before;
        sigfillset(&all);
        for (int synchronous : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT}) sigdelset(&all, synchronous);
        ::pthread_sigmask(SIG_BLOCK, &all, &before);
        thread_ = std::thread([this] { watch(); });
        ::pthread_sigmask(SIG_SETMASK, &before, nullptr);
    }
    ~Live() {
        const std::uint64_t one = 1;
        [[maybe_unused]] const auto written = ::write(stop_fd_.get(), &one, sizeof one);
        thread_.join();
        for (auto& [id, job] : jobs_)
            for (Stream& stream : job.streams)
                if (stream.fd >= 0) ::close(stream.fd);
    }
    Live(const Live&) = delete;
    Live& operator=(const Live&) = delete;

    // The job of task `id` ended: the rest of its output, then its files go.
    void finish(std::uint64_t id, const ParallelJob& job) {
        std::lock_guard lock(mutex_);
        for (int s = 0; s < 2; ++s) copy(id, s, &job);
        const auto found = jobs_.find(id);
        if (found != jobs_.end()) {
            for (Stream& stream : found->second.streams)
                if (stream.fd >= 0) ::close(stream.fd);
            jobs_.erase(found);
        }
        for (const char* name : {"out", "err"}) ::unlink(output_.live_path(id, name).c_str());
    }

private:
    struct Stream {
        int fd = -1;
        std::string pending;  // --line-buffer: a line not ended yet
    };
    struct Job {
        Stream streams[2];  // stdout, stderr
        bool announced = false;
    };

    void watch() {
        alignas(inotify_event) char events[16384];
        while (true) {
            pollfd fds[] = {{inotify_fd_.get(), POLLIN, 0}, {stop_fd_.get(), POLLIN, 0}};
            if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
            if (fds[1].revents != 0) return;
            const ssize_t got = ::read(inotify_fd_.get(), events, sizeof events);
            for (ssize_t at = 0; at < got;) {
                const auto* event = reinterpret_cast<const inotify_event*>(events + at);
                at += static_cast<ssize_t>(sizeof(inotify_event) + event->len);
                if (event->len == 0) continue;
                const std::string_view name(event->name);
                if (!name.starts_with("live-") || (!name.ends_with(".out") && !name.ends_with(".err"))) continue;
                const auto digits = name.substr(5, name.size() - 9);
                std::uint64_t id = 0;
                if (std::from_chars(digits.data(), digits.data() + digits.size(), id).ec != std::errc{}) continue;
                std::lock_guard lock(mutex_);
                if (!finished_.contains(id)) copy(id, name.ends_with(".out") ? 0 : 1, nullptr);
            }
        }
    }

    // What stream `s` of task `id` has that was not copied yet: at its job's end (`ended`)
    // all of it, else whole lines only with --line-buffer. With mutex_ held.
    void copy(std::uint64_t id, int s, const ParallelJob* ended) {
        if (ended) finished_.insert(id);
        Job& job = jobs_[id];
        Stream& stream = job.streams[s];
        if (stream.fd < 0)
            stream.fd = ::open(output_.live_path(id, s == 0 ? "out" : "err").c_str(), O_RDONLY | O_CLOEXEC);
        char buffer[65536];
        for (ssize_t got; stream.fd >= 0 && (got = ::read(stream.fd, buffer, sizeof buffer)) > 0;)
            stream.pending.append(buffer, static_cast<std::size_t>(got));
        std::size_t whole = stream.pending.size();
        if (!ended && output_.live == ParallelOutput::Live::Lines) {
            const auto newline = stream.pending.rfind('\n');
            whole = newline == std::string::npos ? 0 : newline + 1;
        }
        const bool announce = output_.verbose && !job.announced && (whole > 0 || (ended && s == 1));
        if (whole == 0 && !announce) return;
        const ParallelJob info = ended ? *ended : output_.job(id, false);
        if (announce) {  // -v: the command before the job's first output
            job.announced = true;
            const std::string line = info.command + "\n";
            std::fwrite(line.data(), 1, line.size(), out_);
        }
        std::string text = stream.pending.substr(0, whole);
        stream.pending.erase(0, whole);
        if (output_.tagged) {
            // A job's slot ({%}) is known at its end: lines out before it have none.
            std::string tag = info.tag;
            std::erase(tag, kSlotInTag);
            text = tagged(text, tag);
        }
        std::FILE* to = s == 0 ? out_ : stderr;
        if (s == 1) std::fflush(out_);
        std::fwrite(text.data(), 1, text.size(), to);
        std::fflush(to);
    }

    const ParallelOutput& output_;
    std::FILE* out_;
    UniqueFd inotify_fd_;
    UniqueFd stop_fd_;
    std::mutex mutex_;
    std::unordered_map<std::uint64_t, Job> jobs_;
    std::unordered_set<std::uint64_t> finished_;  // ended: no copy after finish()
    std::thread thread_;
};

ParallelOutput::~ParallelOutput() {
    std::error_code ec;
    if (spool_dir.empty()) return;
    std::filesystem::remove_all(spool_dir, ec);
    forget_temp_dir(spool_dir);
}

void ParallelOutput::add(std::uint64_t id, ParallelJob job) const {
    std::lock_guard lock(mutex_);
    jobs_.insert_or_assign(id, std::move(job));
}

ParallelJob ParallelOutput::job(std::uint64_t id, bool last) const {
    std::lock_guard lock(mutex_);
    const auto found = jobs_.find(id);
    if (found == jobs_.end()) {
        ParallelJob none;
        none.seq = id + 1;
        return none;
    }
    if (!last) return found->second;
    ParallelJob job = std::move(found->second);
    jobs_.erase(found);
    return job;
}

ParallelSink::ParallelSink(const ParallelOutput& output, std::FILE* out) : output_(output), out_(out) {
    if (output_.joblog == "-") {
        joblog_ = out_;  // `-` is stdout, as everywhere (and as parallel's --joblog -)
    } else if (!output_.joblog.empty()) {
        joblog_ = std::fopen(output_.joblog.c_str(), output_.joblog_append ? "ae" : "we");  // close-on-exec
        if (!joblog_)
            throw ConfigError(fmt::format("--joblog: cannot write '{}': {}", printable(output_.joblog.string()),
                                          std::strerror(errno)));
    }
    if (joblog_ && !output_.joblog_append) {
        std::fputs("Seq\tHost\tStarttime\tJobRuntime\tSend\tReceive\tExitval\tSignal\tCommand\n", joblog_);
        std::fflush(joblog_);
    }
}

ParallelSink::~ParallelSink() {
    if (joblog_ && joblog_ != out_) std::fclose(joblog_);
}

void ParallelSink::begin_mode_(const std::string&, std::size_t) {
    began_ = std::chrono::system_clock::now();
    // After the signal watcher: the thread starts here, not before it.
    if (output_.live != ParallelOutput::Live::No && !live_) live_ = std::make_unique<Live>(output_, out_);
}

void ParallelSink::write(const Finished& finished) {
    // A job's stdout, then its stderr, as parallel writes them; --joblog in the same order.
    if (!finished.out.empty() && !closed_ &&
        std::fwrite(finished.out.data(), 1, finished.out.size(), out_) != finished.out.size())
        failed();
    if (!finished.err.empty()) {
        if (!closed_ && std::fflush(out_) != 0) failed();
        std::fwrite(finished.err.data(), 1, finished.err.size(), stderr);
        std::fflush(stderr);
    }
    if (joblog_ && !finished.joblog.empty()) {
        std::fputs(finished.joblog.c_str(), joblog_);
        std::fflush(joblog_);
    }
}

void ParallelSink::failed() {
    if (errno != EPIPE) {
        spdlog::error("cannot write the output: {}", std::strerror(errno));
        return;
    }
    closed_ = true;
    if (on_closed_) on_closed_();
}

void ParallelSink::sink_it_(const TaskSpec&, const TaskResult& result) {
    ParallelJob job = output_.job(result.id, !result.retrying);
    // {%} in --tagstring: the job's slot, the number of the worker that ran it (w2: 2), as
    // the command's {%} is.
    if (job.tag.find(kSlotInTag) != std::string::npos) {
        const std::string slot = result.worker.starts_with('w') ? result.worker.substr(1) : result.worker;
        std::string resolved;
        for (const char c : job.tag) c == kSlotInTag ? resolved += slot : resolved += c;
        job.tag = std::move(resolved);
    }
    // --pipe: a job's chunk is not needed once it has its last try.
    if (!result.retrying && !job.stdin_path.empty()) ::unlink(job.stdin_path.c_str());
    // After --halt now the running jobs were killed: parallel shows none of them. After --halt
    // soon they finish, and their output, joblog lines and results are kept as any job's.
    const bool halted_before = halted_;
    if (live_) live_->finish(result.id, job);  // what it wrote that is not out yet, first
    if (result.retrying || (halted_ && output_.halt.when == ParallelHalt::When::Now)) return remove_files(result);
    const std::string& command = job.command;
    Finished finished;
    std::string out_cut, err_cut;
    finished.out = stream(result, "stdout", out_cut);
    finished.err = stream(result, "stderr", err_cut);
    const std::string results_out = job.results_dir.empty() ? std::string() : finished.out;
    const std::string results_err = job.results_dir.empty() ? std::string() : finished.err;
    // Never silent: a cut stream is said on stderr after the job's own, and fails the run.
    for (const std::string* cut : {&out_cut, &err_cut})
        if (!cut->empty()) {
            finished.err += output_.named_jobs ? fmt::format("parallel: job {}: {}\n", job.seq, *cut)
                                               : fmt::format("taskfarm: task {}: {}\n", result.id, *cut);
            ++cut_;
        }
    if (result.error.starts_with("timed out"))
        finished.err += fmt::format(
            "parallel: Warning: This job was killed because it timed out:\n"
            "parallel: Warning: {}\n",
            command);
    // No command ran (a worker died, say): `coordinator parallel` says so; --output plain
    // has the result line on stderr for it.
    if (!result.ok && finished.err.empty() && !result.value.is_object() && output_.named_jobs)
        finished.err = fmt::format("parallel: job {} failed: {}\n", job.seq, result.error);
    if (output_.tagged) {
        finished.out = tagged(finished.out, job.tag);
        finished.err = tagged(finished.err, job.tag);
    }
    if (output_.verbose && !live_) finished.out = command + "\n" + finished.out;
    const int signal = signal_number(result.value);
    int status = 0;
    if (result.ok)
        status = 0;
    else if (result.value.is_object() && result.value.value("exit_code", Json()).is_number_integer())
        status = result.value["exit_code"].get<int>();
    else
        status = signal > 0 ? 128 + signal : 1;
    ++done_;
    if (!result.ok) ++failed_;
    if (joblog_) {
        const double start = std::chrono::duration<double>(began_.time_since_epoch()).count() + result.start_s;
        finished.joblog =
            fmt::format("{}\t:\t{:.3f}\t{:10.3f}\t0\t{}\t{}\t{}\t{}\n", job.seq, start, result.run_time.count(),
                        result.value.is_object() ? result.value.value("stdout_bytes", 0) : 0, signal > 0 ? 0 : status,
                        signal, command);
    }
    if (!job.results_dir.empty()) {
        const std::filesystem::path dir = job.results_dir;
        std::error_code ec;
        std::filesystem::create_directories(dir, ec);
        write_results_file(dir / "seq", std::to_string(job.seq));
        write_results_file(dir / "stdout", results_out);
        write_results_file(dir / "stderr", results_err);
    }
    if (output_.keep_order) {
        waiting_.emplace(result.id, std::move(finished));
        for (auto next = waiting_.find(next_); next != waiting_.end(); next = waiting_.find(next_)) {
            write(next->second);
            waiting_.erase(next);
            ++next_;
        }
    } else {
        write(finished);
    }
    // As parallel: with --halt, each job that counts towards it is named on stderr, halting or not.
    const ParallelHalt::On on = output_.halt.on;
    if (output_.halt.when != ParallelHalt::When::Never &&
        (on == ParallelHalt::On::Completed || (on == ParallelHalt::On::Fail) != result.ok)) {
        std::fflush(out_);
        fmt::print(stderr, "parallel: This job {}:\n{}\n",
                   on == ParallelHalt::On::Completed ? "finished"
                   : result.ok                       ? "succeeded"
                                                     : "failed",
                   command);
    }
    if (!halted_before) check_halt(result, status);
}

void ParallelSink::check_halt(const TaskResult& result, int status) {
    const ParallelHalt& halt = output_.halt;
    if (halt.when == ParallelHalt::When::Never) return;
    const std::size_t counted = halt.on == ParallelHalt::On::Fail      ? failed_
                                : halt.on == ParallelHalt::On::Success ? done_ - failed_
                                                                       : done_;
    const bool relevant = halt.on == ParallelHalt::On::Completed || (halt.on == ParallelHalt::On::Fail) != result.ok;
    if (!relevant) return;
    // As parallel: N% of the jobs is a number of jobs, not rounded.
    const double needed =
        halt.percent ? halt.count / 100.0 * static_cast<double>(output_.total.value_or(done_)) : halt.count;
    if (static_cast<double>(counted) < needed) return;
    halted_ = true;
    // As parallel: the job's own status when one job was needed (fail=1, or N% of the jobs
    // is one), the share of failed jobs in percent (rounded up) for fail=N%, the number
    // failed for fail=N; done=... as fail=...; 0 after success=...
    if (halt.on == ParallelHalt::On::Success || needed == 0)
        halt_status_ = 0;
    else if (needed == 1)
        halt_status_ = status;
    else if (halt.percent)
        halt_status_ = static_cast<int>(
            std::ceil(static_cast<double>(failed_) * 100.0 / static_cast<double>(output_.total.value_or(done_))));
    else
        halt_status_ = static_cast<int>(std::min<std::size_t>(failed_, 101));
    if (on_halt_) on_halt_(halt.when == ParallelHalt::When::Now);
}

void ParallelSink::flush_() {
    if (!closed_ && std::fflush(out_) != 0) failed();
}

int ParallelSink::exit_status() const {
    if (halted_) return halt_status_ != 0 || cut_ == 0 ? halt_status_ : 1;
    // As parallel: --halt ...=0 or =0% that never halted exits 0.
    if (output_.halt.when != ParallelHalt::When::Never && output_.halt.count == 0) return cut_ > 0 ? 1 : 0;
    // As parallel: with --halt ...=N% that never halted, the share of failed jobs in percent.
    if (output_.halt.when != ParallelHalt::When::Never && output_.halt.percent && done_ > 0 && failed_ + cut_ > 0)
        return static_cast<int>(std::ceil(static_cast<double>(failed_ + cut_) * 100.0 / static_cast<double>(done_)));
    return static_cast<int>(std::min<std::size_t>(failed_ + cut_, 101));
}

}  // namespace taskfarm
