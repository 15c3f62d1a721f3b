// command: runs the user's own program, with /bin/sh ("shell") or without ("argv"), in a
// process group that ends with its task. See docs/commands.md.

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <map>
#include <mutex>

#include <fmt/format.h>

#include "builtin.hpp"
#include "child.hpp"
#include "command_groups.hpp"
#include "template.hpp"
#include "text.hpp"
#include "words.hpp"

extern char** environ;

namespace taskfarm {
namespace {

// Bytes of each stream a task keeps (--max-output): both streams of one result must fit
// in one message of the protocol (4 MiB) with room to spare.
constexpr std::uint64_t kDefaultMaxOutput = 1024 * 1024;
constexpr std::uint64_t kMostOutput = 1536 * 1024;

bool has_nul(std::string_view text) { return text.find('\0') != std::string_view::npos; }

// "exited with status 3: grep: f: No such file or directory": the last line of stderr, as
// it came, also when the stream was cut to --max-output (its end is kept for this).
std::string failure_text(const std::string& reason, const command::Captured& err) {
    std::string_view text = err.tail;
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
    const auto newline = text.rfind('\n');
    if (newline != std::string_view::npos) text.remove_prefix(newline + 1);
    return text.empty() ? reason : fmt::format("{}: {}", reason, printable(text, 200));
}

std::vector<std::string> environment(const Params& params, const Context& context) {
    std::map<std::string, std::string, std::less<>> variables;
    for (char** entry = environ; entry && *entry; ++entry) {
        const std::string_view text = *entry;
        variables[std::string(text.substr(0, text.find('=')))] = text;
    }
    const auto set = [&](const std::string& key, const std::string& value) { variables[key] = key + "=" + value; };
    if (const auto env = params.find("env"); env != params.end())
        for (const auto& [key, value] : env->items()) set(key, value.get<std::string>());
    // Last, so that they always tell the truth.
    set("TASKFARM_TASK_ID", std::to_string(context.id()));
    set("TASKFARM_ATTEMPT", std::to_string(context.attempt()));
    set("TASKFARM_WORKER", context.worker());
    set("TASKFARM_MODE", context.mode());
    std::vector<std::string> entries;
    entries.reserve(variables.size());
    for (auto& [key, entry] : variables) entries.push_back(std::move(entry));
    return entries;
}

bool shell_name(std::string_view name) {
    if (name.empty() || (name[0] >= '0' && name[0] <= '9')) return false;
    return std::all_of(name.begin(), name.end(), [](char c) {
        return c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    });
}

// What /bin/sh (dash) makes PWD for the programs it runs: the inherited value when it is an
// absolute path without . or .. that names the working directory, else the physical path.
std::string shell_pwd(const std::string& inherited) {
    static std::mutex mutex;
    static std::string last_inherited;
    static std::string last_pwd;
    std::lock_guard lock(mutex);
    if (!last_pwd.empty() && inherited == last_inherited) return last_pwd;  // the working directory stays
    std::string pwd;
    struct stat named {};
    struct stat here {};
    const bool dots = inherited.find("/./") != std::string::npos || inherited.find("/../") != std::string::npos ||
                      inherited.ends_with("/.") || inherited.ends_with("/..");
    if (inherited.starts_with('/') && !dots && ::stat(inherited.c_str(), &named) == 0 && ::stat(".", &here) == 0 &&
        named.st_dev == here.st_dev && named.st_ino == here.st_ino) {
        pwd = inherited;
    } else {
        char buffer[PATH_MAX];
        if (::getcwd(buffer, sizeof buffer) == nullptr) return {};
        pwd = buffer;
    }
    last_inherited = inherited;
    last_pwd = pwd;
    return pwd;
}

// The environment /bin/sh would pass on to the program of a shell command that is run
// without it: only variables with a shell name, and PWD as the shell sets it. Empty when
// that cannot be made (no working directory): the shell runs it then.
std::vector<std::string> as_the_shell_passes_it(const std::vector<std::string>& env) {
    std::vector<std::string> passed;
    passed.reserve(env.size() + 1);
    std::string inherited_pwd;
    for (const std::string& entry : env) {
        const std::string_view name = std::string_view(entry).substr(0, entry.find('='));
        if (name == "PWD") {
            inherited_pwd = entry.substr(4);
        } else if (shell_name(name)) {
            passed.push_back(entry);
        }
    }
    const std::string pwd = shell_pwd(inherited_pwd);
    if (pwd.empty()) return {};
    passed.push_back("PWD=" + pwd);
    return passed;
}

std::string prefixed_lines(std::string_view text, std::string_view prefix) {
    std::string block;
    while (!text.empty()) {
        const auto end = text.find('\n');
        block += prefix;
        block += text.substr(0, end);
        block += '\n';
        if (end == std::string_view::npos) break;
        text.remove_prefix(end + 1);
    }
    return block;
}

class CommandType final : public TaskType {
public:
    std::string name() const override { return "command"; }
    std::string summary() const override {
        return "runs a program: --command TEMPLATE per --inputs line (plan: \"argv\" or \"shell\")";
    }

    Params parse(const Params& fields) const override {
        Fields read(fields);
        Params params = Params::object();
        const Json* argv = read.any("argv");
        const auto shell = read.text("shell");
        if ((argv != nullptr) == shell.has_value())
            throw std::invalid_argument(
                "command needs either \"argv\" (an array of strings, no shell) or \"shell\" (a "
                "string for /bin/sh -c)");
        if (argv) {
            if (!argv->is_array() || argv->empty())
                throw std::invalid_argument("\"argv\" must be a non-empty array of strings");
            for (std::size_t i = 0; i < argv->size(); ++i) {
                const Json& arg = (*argv)[i];
                if (!arg.is_string())
                    throw std::invalid_argument(fmt::format("\"argv\"[{}] must be a string, not {}", i, arg.dump()));
                if (has_nul(arg.get_ref<const std::string&>()))
                    throw std::invalid_argument(fmt::format("\"argv\"[{}] holds a NUL byte", i));
            }
            if ((*argv)[0].get_ref<const std::string&>().empty()) throw std::invalid_argument("\"argv\"[0] is empty");
            params["argv"] = *argv;
        } else {
            if (shell->empty()) throw std::invalid_argument("\"shell\" is empty");
            if (has_nul(*shell)) throw std::invalid_argument("\"shell\" holds a NUL byte");
            params["shell"] = *shell;
        }
        if (const auto cwd = read.text("cwd")) {
            if (cwd->empty() || has_nul(*cwd)) throw std::invalid_argument("\"cwd\" must be a directory's path");
            params["cwd"] = *cwd;
        }
        if (const auto in = read.text("stdin")) {
            if (in->empty() || has_nul(*in)) throw std::invalid_argument("\"stdin\" must be a file's path");
            params["stdin"] = *in;
        }
        if (const Json* env = read.any("env")) {
            if (!env->is_object())
                throw std::invalid_argument("\"env\" must be an object of strings, like {\"LANG\":\"C\"}");
            for (const auto& [key, value] : env->items()) {
                if (key.empty() || key.find('=') != std::string::npos || has_nul(key))
                    throw std::invalid_argument(fmt::format("\"env\": '{}' is not a variable name", key));
                if (!value.is_string() || has_nul(value.get_ref<const std::string&>()))
                    throw std::invalid_argument(fmt::format("\"env\": {} must be a string without NUL bytes", key));
            }
            params["env"] = *env;
        }
        read.finish();
        return params;
    }

    // --command TEMPLATE is the setting "command"; without it each line is a shell command
    // of its own, as GNU parallel runs a list of commands.
    Params from_input(const Input& input) const override {
        const auto found = input.settings.find("command");
        if (found == input.settings.end() || !found->is_string()) return Params{{"shell", std::string(input.line)}};
        return Params{{"shell", command::expand(found->get_ref<const std::string&>(), input.line, input.index + 1)}};
    }

    Params generate(Generate&) const override {
        throw std::invalid_argument(
            "makes no tasks by itself: give --command TEMPLATE with --inputs FILE, or a --plan of "
            "{\"kind\":\"command\",...} lines");
    }

    TaskTraits traits() const override {
        return {.settings_read = {"max_output", "spill_dir"},
                .side_effects = true,
                .verbatim_inputs = true,
                .plain_output = true,
                .starts_processes = true,
                .dir_param = "cwd",
                .examples = {"ls *.txt | {program} --command 'gzip -k {}' --inputs -",
                             "{program} parallel -j 4 -k gzip -k ::: *.txt      (GNU parallel's command line)"}};
    }

    // --command picks the run's tasks (one per --inputs line); --max-output and --command-grace are
    // every command's.
    std::vector<Flag> flags() const override {
        return {
            Flag{.name = "--command",
                 .key = "command",
                 .help = "run /bin/sh -c TEMPLATE once per line of --inputs (- : standard input, read as the tasks\n"
                         "go out; every line an input, as it is, # and blank lines too), with GNU parallel's\n"
                         "replacement strings, quoted where the shell would change them: {} the line, {.} without\n"
                         "extension, {/} base name, {//} directory, {/.} base name without extension, {#} task\n"
                         "number from 1; no replacement string: the line is appended. Write {} bare: '{}' ends\n"
                         "the quoting, and \"{}\" RUNS THE INPUT AS CODE (as in GNU parallel). stdout: the\n"
                         "commands' output alone (--output). Runs only\n"
                         "the processes mode unless --mode says otherwise. GNU parallel's own command line:\n"
                         "`coordinator parallel --help`. See docs/commands.md",
                 .value_name = "TEMPLATE",
                 .changes_results = true,  // in the tasks' params, which --resume checks
                 .picks = Flag::Picks::PerInput,
                 .parse =
                     [](const std::string& text) {
                         if (text.empty()) throw std::invalid_argument("the template is empty");
                         return Json(text);
                     }},
            Flag{.name = "--max-output",
                 .key = "max_output",
                 .type = Flag::Type::Size,
                 .default_value = "1M",
                 .help = fmt::format("bytes of each task's stdout and of its stderr kept in the journal (the\n"
                                     "byte counts are of the whole); at most {}K, so that a result fits in one\n"
                                     "message. With --output plain and local workers a longer stream still\n"
                                     "reaches stdout whole, through a temporary file; elsewhere the cut is said\n"
                                     "on stderr and fails the run",
                                     kMostOutput / 1024),
                 .value_name = "SIZE",
                 .changes_results = false,
                 .parse =
                     [](const std::string& text) {
                         const auto bytes = parse_size(text);
                         if (!bytes)
                             throw std::invalid_argument(
                                 fmt::format("'{}' is not a size like 1000, 200K, 1.5M or 2G", printable(text, 100)));
                         if (*bytes > kMostOutput)
                             throw std::invalid_argument(
                                 fmt::format("'{}' is over {}K: a task's stdout and stderr "
                                             "must fit in one message of the protocol",
                                             printable(text, 100), kMostOutput / 1024));
                         return Json(*bytes);
                     }},
            Flag{.name = "--command-grace",
                 .key = "command_grace_s",
                 .type = Flag::Type::Number,
                 .default_value = fmt::format("{:g}", command_groups::kDefaultGraceS),
                 .help = "seconds a command's process group gets between SIGTERM and SIGKILL when its task is\n"
                         "cancelled or timed out; the coordinator waits for it too before it calls the worker stuck",
                 .value_name = "SECONDS",
                 .most = command_groups::kMostGraceS,
                 .changes_results = false},
        };
    }

    Value run(const Params& params, Context& context) const override {
        const Params checked = parse(params);  // they may come from the wire
        command::ChildSpec spec;
        spec.env = environment(checked, context);
        spec.cwd = checked.value("cwd", "");
        spec.stdin_path = checked.value("stdin", "");
        if (const auto shell = checked.find("shell"); shell != checked.end()) {
            const std::string& text = shell->get_ref<const std::string&>();
            spec.argv = {"/bin/sh", "-c", text};
            // Plain words need no shell: exec'd as xargs does, with what the shell would pass
            // on, and the shell after all if they cannot be (it says why, as before). Not with
            // "cwd" (the shell's PWD there is its own) nor without a PATH (the shell's default
            // differs from execvp's).
            const bool has_path = std::any_of(spec.env.begin(), spec.env.end(),
                                              [](const std::string& entry) { return entry.starts_with("PATH="); });
            if (auto words = command::plain_words(text); words && spec.cwd.empty() && has_path) {
                if (std::vector<std::string> env = as_the_shell_passes_it(spec.env); !env.empty()) {
                    spec.fallback = std::move(spec.argv);
                    spec.argv = std::move(*words);
                    spec.env = std::move(env);
                }
            }
        } else {
            spec.argv = checked.at("argv").get<std::vector<std::string>>();
        }
        const Json& settings = context.settings();
        command::Watch watch{.stop = context.stop_token(), .deadline = context.deadline()};
        const std::uint64_t max_output = std::min(settings.value("max_output", kDefaultMaxOutput), kMostOutput);
        watch.max_output = max_output;
        if (const auto dir = settings.find("spill_dir"); dir != settings.end() && dir->is_string())
            watch.spill_dir = dir->get<std::string>();
        // --command-grace S; the coordinator waits it out too before it calls a worker stuck.
        watch.grace = std::chrono::duration_cast<std::chrono::steady_clock::duration>(command_groups::grace(settings));
        command::Outcome outcome;
        {
            const auto waiting = context.waiting();  // a child runs on its own, as CPython's subprocess frees the GIL
            outcome = command::run_child(spec, watch);
        }
        context.add_child_usage({.user_s = outcome.user_s, .sys_s = outcome.sys_s, .max_rss_kb = outcome.max_rss_kb});
        // Each stream's bytes as they came (UTF-8 or not: the journal keeps them exactly), its
        // first --max-output of them; "stdout_bytes" counts them all, and "stdout_file", with a
        // spill_dir, holds them all when there were more.
        Value value{
            {"exit_code", outcome.exit_code ? Json(*outcome.exit_code) : Json(nullptr)},
            {"signal", outcome.exit_code ? Json(nullptr) : Json(command::signal_name(outcome.signal))},
            {"stdout", std::move(outcome.out.head)},
            {"stderr", std::move(outcome.err.head)},
            {"stdout_bytes", outcome.out.bytes},
            {"stderr_bytes", outcome.err.bytes},
        };
        for (const auto& [key, captured] : {std::pair{"stdout", &outcome.out}, std::pair{"stderr", &outcome.err}}) {
            if (!captured->file.empty()) value[fmt::format("{}_file", key)] = captured->file;
            if (!captured->spill_error.empty()) value[fmt::format("{}_cut", key)] = captured->spill_error;
        }
        if (outcome.end == command::Outcome::End::TimedOut) throw TaskFailed(context.timed_out(), std::move(value));
        if (outcome.end == command::Outcome::End::Stopped) throw TaskFailed("cancelled", std::move(value));
        if (outcome.exit_code == 0) return value;
        const std::string reason = outcome.exit_code
                                       ? fmt::format("exited with status {}", *outcome.exit_code)
                                       : fmt::format("killed by {}", command::signal_name(outcome.signal));
        throw TaskFailed(failure_text(reason, outcome.err), std::move(value));
    }

    std::string describe(const Value& value) const override {
        return fmt::format("exit 0, {} bytes of stdout, {} of stderr", value.value("stdout_bytes", 0),
                           value.value("stderr_bytes", 0));
    }

    // GNU parallel's --group: a task's output together, after its line; "  | " marks stdout
    // and "  ! " stderr, so that a reader of our stdout tells them from result lines.
    std::string output(const Value& value) const override {
        return prefixed_lines(shown(value, "stdout"), "  | ") + prefixed_lines(shown(value, "stderr"), "  ! ");
    }

private:
    // A stream's kept head, and a last line that says how much of it is not shown.
    static std::string shown(const Value& value, const std::string& key) {
        std::string text = value.value(key, "");
        const std::uint64_t bytes = value.value(key + "_bytes", std::uint64_t{0});
        if (bytes > text.size())
            text += fmt::format("{}... ({} more bytes)\n", text.empty() || text.back() == '\n' ? "" : "\n",
                                bytes - text.size());
        return text;
    }
};

}  // namespace

std::shared_ptr<const TaskType> command_type() { return std::make_shared<CommandType>(); }

}  // namespace taskfarm
