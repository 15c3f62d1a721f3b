#pragma once
// Where a run's tasks come from: generators for --task, readers over --plan, --inputs
// and a type's flag that is --inputs, standard input read as the run goes; and the settings every task sees.

#include <condition_variable>
#include <cstdio>
#include <deque>
#include <istream>
#include <memory>
#include <mutex>
#include <optional>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "config.hpp"
#include "plan.hpp"
#include "task.hpp"

namespace taskfarm {

// Standard input, read once for every cursor. A thread of its own reads it, line by line,
// each line bounded as it is read (kMaxLineBytes), into a bounded queue, so a reader is
// never held by a slow producer unless it asks to wait (StdinSpool::Reader::next). The
// first reader takes the lines as it asks for them; with keep(), every line taken is also
// written to a private temporary file (made in TMPDIR and unlinked at once, so nothing
// is left behind), which later readers read before they go on from the queue. Memory
// stays flat either way.
class StdinSpool {
public:
    // Reads descriptor `fd`, named `name` in messages ("stdin:LINE: ..."); closes it at the
    // end when `owned` (a pipe, `<(...)`, a FIFO, a device opened for the run).
    StdinSpool(int fd, std::string name, bool owned);
    const std::string& name() const { return name_; }
    ~StdinSpool();  // stops its thread, even while it waits for input
    StdinSpool(const StdinSpool&) = delete;
    StdinSpool& operator=(const StdinSpool&) = delete;
    // From now on every line read is kept for later readers: call it before the first read
    // when standard input will be read more than once. Throws ConfigError if it cannot
    // make the file.
    void keep();
    // Keeps and reads standard input to its end now.
    void read_all();

    enum class Got { Line, Later, End, TooLong };
    // Every line of standard input from the first. Throws ConfigError for a second reader
    // without keep(), and when reading or the file fails.
    class Reader {
    public:
        explicit Reader(StdinSpool& spool);
        ~Reader();
        Reader(Reader&& other) noexcept;
        Reader& operator=(Reader&&) = delete;
        // The next line; with `wait` false, Later when it has not come yet. TooLong: the
        // next line is over kMaxLineBytes (and nothing after it is read).
        Got next(std::string& line, bool wait);
        int ready_fd() const { return spool_->wake_fd_; }

    private:
        StdinSpool* spool_;
        std::uint64_t line_ = 0;     // lines this reader has read
        std::FILE* kept_ = nullptr;  // its own handle on the file, opened at its first kept line
    };
    Reader reader() { return Reader(*this); }

private:
    Got read_more(std::string& line, bool wait);  // the next line of standard input, kept if keeping
    void start();                                 // the reading thread, at the first read
    void read_lines();                            // the reading thread's work

    int in_fd_;
    bool owned_fd_;
    std::string name_ = "stdin";  // in messages: "stdin:LINE: ..."
    int fd_ = -1;                 // the kept lines' file, unlinked; -1: not keeping
    std::FILE* out_ = nullptr;    // appends to it
    std::uint64_t read_ = 0;      // lines read from standard input so far
    std::uint64_t flushed_ = 0;   // of those, written through to the file
    bool readers_ = false;        // a reader has read a line

    // Between the reading thread and the readers.
    std::mutex mutex_;
    std::condition_variable changed_;  // a line came, the input ended, or room was made
    std::deque<std::string> queue_;
    std::size_t queued_bytes_ = 0;
    bool ended_ = false;                // no line comes after the queued ones
    bool too_long_ = false;             // ...because the next one was over kMaxLineBytes
    std::optional<std::string> error_;  // ...because reading failed: why
    bool waiting_ = false;              // a reader got Later: wake_fd_ is to be signalled
    bool quit_ = false;                 // the spool is going: the thread stops
    int wake_fd_ = -1;                  // eventfd: readable when a line came for a reader that got Later
    int stop_fd_ = -1;                  // eventfd: readable when the thread is to stop
    std::thread thread_;
};

// The settings every task sees (Context::settings()): the coordinator's flag that tasks read
// (retries, only when --retries is given) and the run's seed, tasks and workers, then
// config.settings on top (the types' own flags and --set KEY=VALUE).
Json settings_json(const RunConfig& config);
// The settings keys the run gives itself, with the flag each comes from: settings_json() fills
// the first four, and --output plain a spill directory for a task's streams longer than a
// result holds (a type with TaskTraits::plain_output reads it). --set may not replace them (nor
// a type's flag, nor what a type's prepare() makes: TaskTraits::settings_made; parse_cli), and
// they are not what a task produces (result_settings).
inline constexpr std::pair<std::string_view, std::string_view> kFlagSettings[] = {{"retries", "--retries"},
                                                                                  {"seed", "--seed"},
                                                                                  {"tasks", "--tasks"},
                                                                                  {"workers", "--workers"},
                                                                                  {"spill_dir", "--output plain"}};

// A list named by a descriptor of ours (`--inputs <(...)` is /dev/fd/63): close-on-exec from
// now on, so that no command of the run inherits it (the descriptor we read is our own).
void keep_from_commands(const std::filesystem::path& path);

// Deterministic: the same config (seed included) gives the same plan on every machine.
// With config.plan_path the tasks come from that file (read_plan); with config.inputs_path,
// a task of --task per line of it (read_inputs); else --tasks tasks of --task, each from
// TaskType::generate() (after TaskType::prepare(), which may add to `settings`), made
// again in the same order with the same seed by every cursor. Every task gets
// --task-timeout unless its plan line has its own.
// A file is read once here to check every line and count the tasks (nothing is kept), then
// again by each cursor. `--plan -` is kept whole (StdinSpool::read_all) and then checked
// alike, since its lines decide which modes run; `--inputs -` is read as the run goes and
// checked line by line as it comes (plan.stdin_spool: the caller calls keep() when it
// will be read again). Throws ConfigError for a plan or input file it cannot read or
// accept, and for a type that cannot generate the tasks (its first and last task are made
// here to find out).
Plan make_plan(const RunConfig& config, const Registry& registry, Json& settings);

// Reads a list of inputs, one per line, into tasks of `type` (TaskType::from_input
// with the run's `settings`, then TaskType::parse, as for a plan line), all held in memory
// (for tests; make_plan() reads lazily). Blank
// lines and lines whose first non-blank character is '#' are skipped, as is blank space
// around an input. A line the type refuses throws ConfigError("NAME:LINE: problem"); so does
// a list without inputs.
Plan read_inputs(std::istream& in, const std::string& name, const TaskType& type, const Json& settings);

// Reads a JSON Lines plan, one task per line: {"kind":TYPE, "timeout_s":S (optional), the
// type's parameters...}, e.g. of a type "square" whose parameter is "x":
//   {"kind":"square","x":3}
//   {"kind":"square","x":4,"timeout_s":2.5}
// Blank lines and lines whose first non-blank character is '#' are skipped. The first bad
// line throws ConfigError("NAME:LINE: problem"); so does a plan without tasks. A line's
// "timeout_s" is its task's (0: no limit); without one the task gets kTimeoutNotGiven,
// which make_plan() replaces with --task-timeout. All held in memory (for tests).
Plan read_plan(std::istream& in, const std::string& name, const Registry& registry);
inline constexpr double kTimeoutNotGiven = -1;

}  // namespace taskfarm
