#pragma once
// A task type: a name and one object that owns everything about its tasks (reading their
// parameters, running one, describing its value). The engine (plans, the protocol, the
// journal, resume, --trace, --timeline, every mode) knows task types only through this
// interface; the built-in ones (sleep, cpu, download, fail, crash) implement it exactly as a
// user's own does. Parameters and values are JSON objects: msgpack on the wire, JSON in
// the journal. See docs/api.md.

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace taskfarm {

using Json = nlohmann::json;
using Params = nlohmann::json;  // a task's parameters: a JSON object, as its plan line gives them
using Value = nlohmann::json;   // what a task produced: any JSON, an object by convention

// The version of the library, e.g. "0.2.0".
const char* version();

using TaskId = std::uint64_t;
inline constexpr TaskId kNoId = ~TaskId{0};

class Gil;

// Thrown by Context::check() (and by the built-in types) when a task must stop early; the
// task fails with what() ("cancelled", "timed out after 2.5 s"). Any other exception from
// TaskType::run() fails the task with its what() as well: this type only names the reason.
struct TaskStopped : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Thrown by TaskType::run() to fail a task that still has a value worth keeping (a
// command's exit status and output): the task fails with what() as its error, and `value`
// becomes its value in the journal and on the console, as an ok task's would. Any other
// exception leaves a failed task's value null.
struct TaskFailed : std::runtime_error {
    TaskFailed(const std::string& what, Value failed_value)
        : std::runtime_error(what), value(std::move(failed_value)) {}
    Value value;
};

namespace detail {
struct ContextSetup;  // the engine's, not the API's
}  // namespace detail

// What a running task may ask of the engine. One per task, made by the engine; valid while
// run() runs.
class Context {
public:
    explicit Context(const detail::ContextSetup& setup);
    ~Context();  // removes the scratch directory, if one was made
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    const std::string& worker() const { return worker_; }
    const std::string& mode() const { return mode_; }
    TaskId id() const { return id_; }
    std::uint32_t attempt() const { return attempt_; }

    // Cancellation: a run that stops (Ctrl-C, a worker told to shut down) requests a stop;
    // a task with a timeout has a deadline. A long task checks one of these often and
    // returns or throws soon after; check() throws TaskStopped for either.
    const std::stop_token& stop_token() const { return stop_; }
    bool stop_requested() const { return stop_.stop_requested(); }
    std::chrono::steady_clock::time_point deadline() const { return deadline_; }
    // A task without a timeout reads no clock here (decision 280).
    bool expired() const {
        return deadline_ != std::chrono::steady_clock::time_point::max() &&
               std::chrono::steady_clock::now() >= deadline_;
    }
    void check() const;
    // The error of a task that ran past its deadline: "timed out after 2.5 s".
    std::string timed_out() const;

    // The run's settings, the same for every task: the flags of the program's types (each
    // type's flags(): --duration, --cpu-n, a user's own), the coordinator's own (--max-bytes,
    // --retries, ...) and --set KEY=VALUE. An object, maybe empty.
    const Json& settings() const;
    // Where a task may save files it produces: --out-dir/<mode> in the coordinator, the
    // worker's own --out-dir in a worker process (not given: the TaskTraits::out_dir of the
    // run's first type that writes files and names one). Made before the run for types whose
    // writes_files() says so.
    std::filesystem::path out_dir() const;
    // A new empty directory of this task's own, made at the first call and removed with
    // everything in it when the task ends. In a worker process it lies in the run's private
    // directory, which the coordinator removes after the mode, so a killed worker's goes too.
    const std::filesystem::path& scratch_dir();
    // True in a worker process of its own (processes mode): a crash there costs only that
    // worker. False on the coordinator's threads, where a crash would end the whole run.
    bool isolated() const { return isolated_; }

    // What processes a task started and waited for cost, for a type that runs programs (the
    // built-in command): their CPU seconds and the peak resident memory of the largest, as
    // wait4() reports them for a child and the descendants it waited for. Each call adds to
    // what earlier ones said (CPU summed, memory the largest). The task's cost is then theirs,
    // scope "tree", instead of the thread's or the worker process's (docs/reliability.md).
    struct ChildUsage {
        double user_s = 0;
        double sys_s = 0;
        std::int64_t max_rss_kb = -1;  // -1: unknown
    };
    void add_child_usage(const ChildUsage& usage);
    const std::optional<ChildUsage>& child_usage() const { return child_usage_; }

    // gil-threads mode emulates CPython's global interpreter lock: run() starts holding it,
    // so a function that computes keeps the other threads waiting, as Python code does.
    // Hold a Waiting while the task blocks (sleeps, waits for the network or a child):
    // the lock is free meanwhile, as CPython frees it around blocking calls. Outside
    // gil-threads mode both do nothing.
    class Waiting {
    public:
        ~Waiting();
        Waiting(const Waiting&) = delete;
        Waiting& operator=(const Waiting&) = delete;

    private:
        friend class Context;
        explicit Waiting(void* hold);
        void* hold_;
    };
    [[nodiscard]] Waiting waiting() const { return Waiting(gil_hold_); }
    // Call often while computing: after the switch interval (5 ms) another waiting thread
    // gets the lock, as CPython switches threads. Cheap when nobody waits.
    void switch_point() const;

private:
    std::string worker_;
    std::string mode_;
    TaskId id_;
    std::uint32_t attempt_;
    std::stop_token stop_;
    std::chrono::steady_clock::time_point deadline_;
    double timeout_s_;
    const Json* settings_;
    const std::filesystem::path* out_dir_;
    const std::filesystem::path* scratch_base_;
    bool isolated_;
    void* gil_hold_;  // a Gil::Hold, or null
    std::optional<std::filesystem::path> scratch_;
    std::optional<ChildUsage> child_usage_;
};

// What `--inputs FILE` gives a type to make the task of one line from.
struct Input {
    std::string_view line;    // without the blank space around it
    std::uint64_t index = 0;  // the task's id: 0 for the first input
    const Json& settings;     // Context::settings()
};

// What `--task NAME --tasks N` gives a type to make task `index` of N from.
struct Generate {
    std::uint64_t index = 0;
    std::uint64_t count = 0;
    std::mt19937_64& random;  // seeded by --seed; tasks draw from it in order, 0 to N-1
    const Json& settings;     // Context::settings() (the built-in download adds its server's URLs)
};

// A command-line flag that a task type declares (TaskType::flags()): whatever program
// registers the type (the coordinator, a user's App) lists it in --help under the type,
// reads it, and puts its value into the run's settings under `key`, given or not (the
// default then; a flag that `picks` the tasks only when given), where the type's tasks and
// generate() read it. A bad value stops the run with exit 2 and a message that names the flag.
struct Flag {
    enum class Type {
        Text,    // the text as it is, a JSON string
        Count,   // a whole number from `least` to `most`, a JSON unsigned integer
        Number,  // a finite number from `least` to `most`, a JSON number
        Size,    // bytes, K, M or G x1024 ("1.5M"), from `least` to `most`, a JSON unsigned integer
    };
    std::string name{};  // "--cpu-n"; "-d,--duration" adds a short name
    std::string key{};   // its setting in Context::settings(), e.g. "cpu_n"
    Type type = Type::Text;
    std::string default_value{};  // as written on the command line: read as a given value is, shown in --help
    std::string help{};
    std::string value_name{};  // in --help, e.g. "SECONDS"; empty: TEXT, COUNT or NUMBER
    double least = 0;
    double most = std::numeric_limits<double>::max();
    // Whether the value changes what tasks produce (--cpu-n: yes; a limit on output kept: no).
    bool changes_results = true;
    // Only for tasks the type generates (--task NAME --tasks N): refused with --plan and with
    // a flag that picks the tasks (`picks`), which bring their own tasks.
    bool generated_only = false;
    // What giving the flag does besides its setting. Nothing: only the setting. PerInput: the
    // run's tasks are of this type, one per line of --inputs FILE, which it needs (the
    // command type's --command TEMPLATE). InputsFile: the same, the value being that FILE
    // (the download type's --urls FILE is --task download --inputs FILE); its messages name
    // the flag, and `key` may be empty (no setting). Either one is --task NAME as well (another
    // --task is refused) and goes with no --plan, no --tasks and no other such flag; it makes
    // its setting only when given, so `default_value` may be empty.
    enum class Picks { Nothing, PerInput, InputsFile };
    Picks picks = Picks::Nothing;
    // Optional: reads the text into the setting instead of `type`; throws std::invalid_argument
    // saying why the text is bad (the program adds the flag's name).
    std::function<Json(const std::string& text)> parse{};

    // The setting of `text`, by `parse` or `type`; throws std::invalid_argument saying why not.
    Json read(const std::string& text) const;
};

// What the engine needs to know of a type besides its hooks: a value (TaskType::traits()).
struct TaskTraits {
    // The keys of Context::settings() its tasks (or generate()) read besides its flags': the
    // coordinator warns (and still runs) when a flag is given that no type of the plan reads
    // (--retries for sleeps).
    std::vector<std::string> settings_read{};
    // Its tasks save files into Context::out_dir(): the coordinator then makes
    // --out-dir/<mode> before the run, so a bad --out-dir fails at once (exit 2).
    bool writes_files = false;
    // The directory --out-dir is when not given, for a run whose first type that writes files
    // names one (the built-in download: "downloads"). Empty: none of its own; a run of types
    // that name none saves into the working directory (./<mode>/).
    std::string out_dir{};
    // Its tasks act on the world beyond Context::out_dir() (a user's command may delete or
    // send anything): a plan with such tasks runs in one mode, processes, unless --mode names
    // others, and a warning says when several modes will each run every task.
    bool side_effects = false;
    // How many tasks `--task NAME` makes when --tasks is not given; 0: the run's default (10).
    std::uint64_t default_count = 0;
    // Each line of --inputs FILE is one task as it is: no line skipped (blank, or starting
    // with #), nothing trimmed (a command's inputs: a file named " x " is an input too).
    bool verbatim_inputs = false;
    // Its tasks' output() is what the user ran it for (a command's stdout): a run of this
    // --task shows the output alone on stdout (--output plain) unless --output says otherwise.
    // With --output plain and local workers the setting "spill_dir" names a directory where a
    // task may leave a stream longer than a result holds, to reach stdout whole.
    bool plain_output = false;
    // Each task starts a process of its own (a user's command), which costs a millisecond or
    // two: a worker then holds about 20 ms of its tasks rather than 2 ms, so that results
    // travel in batches (decision 237).
    bool starts_processes = false;
    // The parameter of its tasks that names the directory they run in (a command's working
    // directory): a job handed to a server (`submit`) sets it, where a task does not, to the
    // directory submit ran in, so that the task runs where it was submitted rather than where
    // the server was started. Empty: none.
    std::string dir_param{};
    // Command lines for the Examples of --help, "{program}" standing for the program's name.
    std::vector<std::string> examples{};
    // The keys of the settings its prepare() (RunHooks) adds (the built-in download's server's
    // URLs): the run gives them, so `--set KEY=...` of one is refused (exit 2).
    std::vector<std::string> settings_made{};
};

// A type's hooks: name() and run() are all a type must have; the rest have defaults.
class TaskType {
public:
    virtual ~TaskType() = default;

    // The name in --task, plan lines {"kind":NAME}, the journal and the pictures: letters,
    // digits, '_' and '-'.
    virtual std::string name() const = 0;
    // One line for --help.
    virtual std::string summary() const { return {}; }

    // Runs one task. Returns its value (the journal's "value", the console's line via
    // describe()); throws to fail the task with what() as its error. Called on any thread of
    // the coordinator or of a worker, maybe several at once: it must be thread-safe. Params
    // may come from the wire: check them (Fields) rather than trust them.
    virtual Value run(const Params& params, Context& context) const = 0;

    // A plan line's fields (all but "kind" and "timeout_s") as this type's parameters:
    // checked, defaults filled in, normalised. Throws std::invalid_argument naming the field
    // (the plan reader adds FILE:LINE). The default takes any object as it is.
    virtual Params parse(const Params& fields) const { return fields; }
    // Task `args.index` of `--task NAME --tasks N`. The default: {"index": i}.
    virtual Params generate(Generate& args) const;
    // The task for one line of --inputs FILE (`input.line`; its number and the run's settings
    // are there too: the built-in command expands --command TEMPLATE with them). The
    // default: {"input": line}.
    virtual Params from_input(const Input& input) const;
    // Its own command-line flags, each a setting its tasks read (see Flag). Two types may
    // declare the same flag with the same key: the first registered one's declaration is used.
    virtual std::vector<Flag> flags() const { return {}; }
    // What the engine needs to know of it (see TaskTraits). The default: nothing special.
    virtual TaskTraits traits() const { return {}; }

    // The value in words for the console, e.g. "slept 0.370 s". The default: compact JSON.
    virtual std::string describe(const Value& value) const;
    // Text to print under the task's console line, as one block that no other task's output
    // interleaves (a command's stdout and stderr); called for failed tasks too when their
    // value is not null (TaskFailed). The console makes it printable. The default: none.
    virtual std::string output(const Value& /*value*/) const { return {}; }
};

// The longest duration a task field may give (a year): a longer one would overflow the
// clocks' nanosecond counts, and no task means it.
inline constexpr double kMaxSeconds = 31'536'000;

// Reads a parameters object field by field with errors that name the field, and remembers
// what it read so that finish() can reject a field nobody reads (most likely a typo).
// Throws std::invalid_argument.
class Fields {
public:
    explicit Fields(const Params& params);  // throws unless params is an object
    bool has(std::string_view key) const;
    std::optional<double> seconds(std::string_view key);       // a number from 0 to kMaxSeconds
    std::optional<std::uint64_t> count(std::string_view key);  // a whole number >= 0
    std::optional<std::string> text(std::string_view key);     // a string
    const Json* any(std::string_view key);                     // any value, unchecked
    void finish() const;

private:
    const Json* take(std::string_view key);
    const Params& params_;
    std::vector<std::string> read_;  // keys looked up so far, present or not
};

}  // namespace taskfarm
