#include "parallel_cli.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <regex>

#include <fmt/format.h>

#include "affinity.hpp"
#include "journal_line.hpp"
#include "temp_dirs.hpp"
#include "parallel_output.hpp"
#include "text.hpp"

namespace taskfarm {

namespace parallel {

std::string quote(std::string_view text) {
    if (is_plain_shell_word(text)) return std::string(text);
    std::string quoted = "'";
    for (char c : text) {
        if (c == '\'')
            quoted += "'\"'\"'";
        else
            quoted += c;
    }
    return quoted + "'";
}

}  // namespace parallel

namespace {

// An option this parser does not know, or a bad value: exit 2 with the line.
struct Usage : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Source {
    std::vector<std::string> values;
    bool linked = false;  // :::+ or ::::+: goes with the source before it, value by value
};

enum class Multi { None, X, M };

struct Options {
    std::string jobs = "100%";
    bool keep_order = false, dry_run = false, tag = false, verbose = false, quote_words = false, null = false,
         link = false;
    std::optional<std::string> tagstring, colsep, header;
    std::size_t max_args = 0;  // -N; 0: one record a job
    Multi multi = Multi::None;
    ParallelHalt halt;
    std::string joblog, results;
    std::uint32_t retries = 0;  // total tries; 0: not given
    double timeout_s = 0;
    std::vector<std::string> arg_files;
    std::string replace = "{}";    // -I STR: what stands for the whole input
    bool no_run_if_empty = false;  // -r
    std::string trim = "n";        // --trim n|l|r|lr|rl
    std::string wd;                // --wd DIR
    bool pipe = false;             // --pipe: each job's stdin is a chunk of ours
    std::size_t block = 1024 * 1024;
    std::optional<std::string> recstart, recend;  // neither: a record ends with "\n"
};

constexpr char kHelp[] =
    "Usage: {0} parallel [OPTIONS] COMMAND [::: ARGS...] [:::: FILES...]\n"
    "GNU parallel's command line, run as command tasks on worker processes (alias parallel='{0} parallel').\n"
    "Inputs: ::: ARGS, :::: FILES, :::+ and ::::+ (linked to the source before), -a FILE, else standard input;\n"
    "several sources: every combination (--link: value by value). Every line is an input, byte for byte,\n"
    "nothing trimmed or skipped (unless --trim, -r); -0: NUL-separated.\n"
    "Replacement strings: {{}} {{.}} {{/}} {{//}} {{/.}} {{#}} {{%}}, positional {{1}} {{2.}} {{-1}}, --colsep REGEX,\n"
    "--header : (then {{NAME}}). A value is quoted only where the shell would change it, as parallel does: so\n"
    "\"{{}}\" in double quotes runs an input such as $(cmd) as code; write {{}} bare.\n"
    "Options: -j N|N%|+N|-N, -k, --dry-run, -v, -q, --tag, --tagstring STR, -N N, -n N, -X, -m, -0,\n"
    "-I STR, -r, --trim n|l|r|lr|rl, --wd DIR, --env VAR (every variable reaches a command here),\n"
    "--halt now|soon,fail|success|done=N|N%, --joblog FILE, --results DIR, --retries N (tries in all),\n"
    "--timeout S, --group, --link, -a FILE; --pipe with --block SIZE, --recstart STR, --recend STR, -N N\n"
    "(each job's standard input is a chunk of ours, cut after a record's end). A job's output comes whole\n"
    "when it ends, byte for byte, however long: --line-buffer, --ungroup, --delay and {{= perl =}} are\n"
    "refused.\n"
    "Any other option: exit 2 naming it. Exit status: the number of failed jobs (at most 101), a job whose\n"
    "output could not be written whole counted as failed; with --halt on failure, as parallel's.\n";

std::vector<std::string> split(const std::string& text, char separator) {
    std::vector<std::string> parts;
    std::size_t at = 0;
    while (at < text.size()) {
        const auto end = text.find(separator, at);
        if (end == std::string::npos) {
            parts.push_back(text.substr(at));
            break;
        }
        parts.push_back(text.substr(at, end - at));
        at = end + 1;
    }
    return parts;
}

std::string read_whole(const std::string& name) {
    if (name == "-") {
        std::string text;
        char buffer[65536];
        for (;;) {
            const ssize_t got = ::read(STDIN_FILENO, buffer, sizeof buffer);
            if (got < 0 && errno == EINTR) continue;
            if (got < 0) throw Usage(fmt::format("cannot read standard input: {}", std::strerror(errno)));
            if (got == 0) return text;
            text.append(buffer, static_cast<std::size_t>(got));
        }
    }
    std::FILE* file = std::fopen(name.c_str(), "re");  // close-on-exec
    if (!file) throw Usage(fmt::format("cannot open input file '{}': {}", printable(name), std::strerror(errno)));
    std::string text;
    char buffer[65536];
    for (std::size_t got; (got = std::fread(buffer, 1, sizeof buffer, file)) > 0;) text.append(buffer, got);
    const bool failed = std::ferror(file) != 0;
    std::fclose(file);
    if (failed) throw Usage(fmt::format("cannot read input file '{}'", printable(name)));
    return text;
}

std::size_t positive(std::string_view flag, const std::string& text) {
    std::size_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size() || value < 1 || value > 1'000'000)
        throw Usage(fmt::format("{}: '{}' is not a whole number from 1", flag, printable(text)));
    return value;
}

// --block SIZE as parallel reads it: K M G T (and Ki, Mi...) are powers of 1024, k m g t of 1000.
std::size_t block_size(const std::string& text) {
    std::size_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    std::string unit(end, text.data() + text.size());
    if (unit.size() == 2 && (unit[1] == 'i' || unit[1] == 'I'))
        unit = std::string(1, static_cast<char>(std::toupper(unit[0])));
    static const std::string kUnits = "KMGTkmgt";
    const auto found = unit.empty() ? std::string::npos : kUnits.find(unit);
    if (ec != std::errc{} || value == 0 || (!unit.empty() && (unit.size() != 1 || found == std::string::npos)))
        throw Usage(fmt::format("--block: '{}' is not a size such as 1M, 100k or 65536", printable(text)));
    for (std::size_t i = 0; i <= found % 4 && !unit.empty(); ++i) value *= found < 4 ? 1024 : 1000;
    if (value > (std::size_t{1} << 30)) throw Usage(fmt::format("--block: '{}' is over 1G", printable(text)));
    return value;
}

// -j N|N%|+N|-N; 0: as many as there are jobs.
int job_slots(const std::string& text, std::size_t jobs) {
    const int cpus = available_cpus();
    auto number = [&](std::string_view digits) {
        int value = 0;
        const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
        if (digits.empty() || ec != std::errc{} || end != digits.data() + digits.size() || value < 0)
            throw Usage(fmt::format("-j: '{}' is not N, N%, +N or -N", printable(text)));
        return value;
    };
    long slots = 0;
    if (!text.empty() && text.back() == '%')
        slots = static_cast<long>(cpus) * number(std::string_view(text).substr(0, text.size() - 1)) / 100;
    else if (!text.empty() && text[0] == '+')
        slots = cpus + number(std::string_view(text).substr(1));
    else if (!text.empty() && text[0] == '-')
        slots = cpus - number(std::string_view(text).substr(1));
    else if ((slots = number(text)) == 0)
        slots = static_cast<long>(jobs);
    slots = std::clamp<long>(slots, 1, 1024);
    return static_cast<int>(std::min<long>(slots, std::max<long>(1, static_cast<long>(jobs))));
}

ParallelHalt parse_halt(const std::string& text) {
    ParallelHalt halt;
    if (text == "0" || text == "never") return halt;
    if (text == "1") return {ParallelHalt::When::Soon, ParallelHalt::On::Fail, 1, false};
    if (text == "2") return {ParallelHalt::When::Now, ParallelHalt::On::Fail, 1, false};
    const auto comma = text.find(',');
    const std::string when = text.substr(0, comma);
    if (comma == std::string::npos || (when != "now" && when != "soon"))
        throw Usage(fmt::format("--halt: '{}' is not now|soon,fail|success|done=N|N%", printable(text)));
    halt.when = when == "now" ? ParallelHalt::When::Now : ParallelHalt::When::Soon;
    const std::string rest = text.substr(comma + 1);
    const auto equals = rest.find('=');
    const std::string on = rest.substr(0, equals);
    if (on == "fail")
        halt.on = ParallelHalt::On::Fail;
    else if (on == "success")
        halt.on = ParallelHalt::On::Success;
    else if (on == "done")
        halt.on = ParallelHalt::On::Completed;
    else
        throw Usage(fmt::format("--halt: '{}' is not now|soon,fail|success|done=N|N%", printable(text)));
    std::string count = equals == std::string::npos ? "1" : rest.substr(equals + 1);
    if (!count.empty() && count.back() == '%') {
        halt.percent = true;
        count.pop_back();
    }
    double value = 0;
    const auto [end, ec] = std::from_chars(count.data(), count.data() + count.size(), value);
    if (count.empty() || ec != std::errc{} || end != count.data() + count.size() || value <= 0)
        throw Usage(fmt::format("--halt: '{}' is not now|soon,fail|success|done=N|N%", printable(text)));
    halt.count = value;
    return halt;
}

// One replacement string of a template, or a piece of literal text.
struct Piece {
    enum class Kind { Text, All, Position, Sequence, Slot };
    Kind kind = Kind::Text;
    std::string text;      // Text: the text
    long position = 0;     // Position: from 1, or from the end when negative
    std::string modifier;  // "", ".", "/", "//", "/."
};

std::string modified(const std::string& value, const std::string& modifier) {
    const auto slash = value.rfind('/');
    const std::string base = slash == std::string::npos ? value : value.substr(slash + 1);
    // As parallel's {.}: the last dot of the base name and what follows go, a leading dot too
    // (".bashrc" becomes "").
    const auto strip = [](const std::string& path, const std::string& name) {
        const auto dot = name.rfind('.');
        if (dot == std::string::npos) return path;
        return path.substr(0, path.size() - name.size() + dot);
    };
    if (modifier.empty()) return value;
    if (modifier == ".") return strip(value, base);
    if (modifier == "/") return base;
    if (modifier == "/.") return strip(base, base);
    // "//": the directory, "." when there is none
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : value.substr(0, slash);
}

std::vector<Piece> pieces_of(const std::string& text, const std::map<std::string, long>& names,
                             const std::string& replace = "{}") {
    std::vector<Piece> pieces;
    Piece literal;
    for (std::size_t at = 0; at < text.size();) {
        // -I STR: STR is {}, and {} itself is text.
        if (replace != "{}" && text.compare(at, replace.size(), replace) == 0) {
            if (!literal.text.empty()) pieces.push_back(std::exchange(literal, Piece{}));
            pieces.push_back(Piece{Piece::Kind::All, {}, 0, {}});
            at += replace.size();
            continue;
        }
        if (text[at] == '{') {
            const auto close = text.find('}', at);
            if (close != std::string::npos) {
                const std::string inner = text.substr(at + 1, close - at - 1);
                std::optional<Piece> found;
                static const std::regex kPositional(R"((-?[0-9]+)(\.|/|//|/\.)?)");
                std::smatch match;
                if ((inner.empty() && replace == "{}") || inner == "." || inner == "/" || inner == "//" ||
                    inner == "/.")
                    found = Piece{Piece::Kind::All, {}, 0, inner};
                else if (inner == "#")
                    found = Piece{Piece::Kind::Sequence, {}, 0, {}};
                else if (inner == "%")
                    found = Piece{Piece::Kind::Slot, {}, 0, {}};
                else if (std::regex_match(inner, match, kPositional) && match[1].str() != "0" && match[1].str() != "-0")
                    found = Piece{Piece::Kind::Position, {}, std::stol(match[1].str()), match[2].str()};
                else if (const auto name = names.find(inner); name != names.end())
                    found = Piece{Piece::Kind::Position, {}, name->second, {}};
                if (found) {
                    if (!literal.text.empty()) pieces.push_back(std::exchange(literal, Piece{}));
                    pieces.push_back(*found);
                    at = close + 1;
                    continue;
                }
            }
        }
        literal.text += text[at++];
    }
    if (!literal.text.empty()) pieces.push_back(literal);
    return pieces;
}

bool replaces(const std::vector<Piece>& pieces) {
    return std::any_of(pieces.begin(), pieces.end(), [](const Piece& p) { return p.kind != Piece::Kind::Text; });
}

std::string join_quoted(const std::vector<std::string>& args, const std::string& modifier) {
    std::string joined;
    for (const std::string& arg : args) {
        if (!joined.empty()) joined += ' ';
        joined += parallel::quote(modified(arg, modifier));
    }
    return joined;
}

std::string expand(const std::vector<Piece>& pieces, const std::vector<std::string>& args, std::size_t sequence) {
    std::string command;
    for (const Piece& piece : pieces) {
        switch (piece.kind) {
            case Piece::Kind::Text: command += piece.text; break;
            case Piece::Kind::All: command += join_quoted(args, piece.modifier); break;
            case Piece::Kind::Sequence: command += std::to_string(sequence); break;
            // The worker's number, from 1 (TASKFARM_WORKER is w1, w2, ... in processes mode).
            case Piece::Kind::Slot: command += "${TASKFARM_WORKER#w}"; break;
            case Piece::Kind::Position: {
                const long count = static_cast<long>(args.size());
                const long index = piece.position > 0 ? piece.position - 1 : count + piece.position;
                if (index >= 0 && index < count)
                    command += parallel::quote(modified(args[static_cast<std::size_t>(index)], piece.modifier));
                break;
            }
        }
    }
    return command;
}

// -X: each word of the template with {} in it repeated for each argument; -m: {} is all of them.
std::string expand_context(const std::string& text, const std::map<std::string, long>& names,
                           const std::string& replace, const std::vector<std::string>& args, std::size_t sequence) {
    std::string command;
    std::size_t at = 0;
    while (at < text.size()) {
        const auto word_start = text.find_first_not_of(" \t", at);
        command.append(text, at, (word_start == std::string::npos ? text.size() : word_start) - at);
        if (word_start == std::string::npos) break;
        auto word_end = text.find_first_of(" \t", word_start);
        if (word_end == std::string::npos) word_end = text.size();
        const std::vector<Piece> pieces = pieces_of(text.substr(word_start, word_end - word_start), names, replace);
        const bool context =
            std::any_of(pieces.begin(), pieces.end(), [](const Piece& p) { return p.kind == Piece::Kind::All; });
        if (context) {
            for (std::size_t i = 0; i < args.size(); ++i) {
                if (i > 0) command += ' ';
                command += expand(pieces, {args[i]}, sequence);
            }
        } else {
            command += expand(pieces, args, sequence);
        }
        at = word_end;
    }
    return command;
}

// What results/ calls a value: '/' is written "\_" and '\' "\\", as parallel names them.
std::string results_name(const std::string& value) {
    std::string name;
    for (char c : value) {
        if (c == '/')
            name += "\\_";
        else if (c == '\\')
            name += "\\\\";
        else
            name += c;
    }
    return name.empty() ? std::string("\\0") : name;
}

// The plan: one {"kind":"command","shell":...} line per job, in a file with no name (O_TMPFILE)
// that the run reads through /proc/self/fd; close-on-exec, so no command inherits it.
std::filesystem::path write_plan(const std::vector<std::string>& commands, const std::string& wd,
                                 const std::vector<std::string>& stdins, int& fd_out) {
    std::error_code ec;
    std::filesystem::path dir = std::filesystem::temp_directory_path(ec);
    if (ec) dir = "/tmp";
    const int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0)
        throw Usage(fmt::format("cannot make the plan's temporary file in '{}': {}", printable(dir.string()),
                                std::strerror(errno)));
    std::string text;
    for (std::size_t job = 0; job < commands.size(); ++job) {
        Json line{{"kind", "command"}, {"shell", commands[job]}};
        if (!wd.empty()) line["cwd"] = wd;
        if (job < stdins.size()) line["stdin"] = stdins[job];
        // A command that is not UTF-8 (an input's bytes) is kept exactly, in "bytes".
        keep_exact_bytes(line);
        text += line.dump(-1, ' ', false, Json::error_handler_t::replace);
        text += '\n';
    }
    for (std::size_t at = 0; at < text.size();) {
        const ssize_t wrote = ::write(fd, text.data() + at, text.size() - at);
        if (wrote < 0 && errno == EINTR) continue;
        if (wrote < 0) {
            const int error = errno;
            ::close(fd);
            throw Usage(fmt::format("cannot write the plan's temporary file: {}", std::strerror(error)));
        }
        at += static_cast<std::size_t>(wrote);
    }
    fd_out = fd;
    return fmt::format("/proc/self/fd/{}", fd);
}

// What to use instead of an option of parallel's that users type often and that is not
// taken; "" for any other.
std::string refused(const std::string& name) {
    if (name == "line-buffer" || name == "lb" || name == "u" || name == "ungroup")
        return "a job's output comes whole when it ends, never mixed with another's (as --group); leave the "
               "option out, or have each job write a file of its own ('CMD > out.{#}') to watch it as it runs";
    if (name == "delay")
        return "jobs start as soon as a slot is free; to space them out, sleep in the command "
               "('sleep {#}; CMD' starts job N after N seconds) or lower -j";
    if (name == "pipepart" || name == "roundrobin" || name == "round-robin" || name == "cat" || name == "fifo")
        return "use --pipe (with --block SIZE) and read the chunk from standard input";
    if (name == "S" || name == "sshlogin" || name == "slf" || name == "sshloginfile" || name == "transfer" ||
        name == "return" || name == "cleanup" || name == "trc")
        return "jobs run on this machine; for other machines start workers there (taskfarm's --listen and "
               "`worker --connect`)";
    if (name == "resume" || name == "resume-failed")
        return "keep a journal with --results FILE and --resume FILE in the full command line (--command)";
    if (name == "bar" || name == "eta" || name == "progress")
        return "the full command line (--command) shows progress on stderr";
    if (name == "memfree" || name == "load" || name == "noswap") return "set -j to what the machine can take";
    return {};
}

// --trim: spaces and tabs off the left, the right, or both ends of a value.
std::string trimmed(std::string value, const std::string& trim) {
    if (trim.find('r') != std::string::npos) value.erase(value.find_last_not_of(" \t") + 1);
    if (trim.find('l') != std::string::npos) value.erase(0, std::min(value.size(), value.find_first_not_of(" \t")));
    return value;
}

// -r with --pipe: lines of white space alone go, as parallel's s/^\s*\n//gm.
void drop_blank_lines(std::string& text) {
    const auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; };
    std::string kept;
    kept.reserve(text.size());
    bool line_start = true;
    for (std::size_t at = 0; at < text.size();) {
        if (line_start) {
            std::size_t end = at;
            while (end < text.size() && space(text[end])) ++end;
            if (const auto newline = end > at ? text.rfind('\n', end - 1) : std::string::npos;
                newline != std::string::npos && newline >= at) {
                at = newline + 1;
                continue;
            }
        }
        line_start = text[at] == '\n';
        kept += text[at++];
    }
    text = std::move(kept);
}

// --pipe: standard input cut into chunks as parallel cuts it: read until a multiple of the
// block is held, then cut after the last record end that a record start follows; the rest
// goes with the next chunk; with -N N, after every Nth record instead. No such place: the
// block grows by 1.3 (said on stderr), as parallel's. Each chunk is a file of `dir`, written as it is read; returns
// their paths.
std::vector<std::string> write_chunks(const Options& options, const std::filesystem::path& dir) {
    std::vector<std::string> paths;
    // As parallel: only one of them given, the other is empty.
    const std::string recend = options.recend.value_or(options.recstart ? "" : "\n");
    const std::string separator = recend + options.recstart.value_or("");
    const auto write_chunk = [&](std::string_view bytes) {
        const std::string path = (dir / fmt::format("chunk-{}", paths.size() + 1)).string();
        std::FILE* file = std::fopen(path.c_str(), "wxe");
        const bool written = file && std::fwrite(bytes.data(), 1, bytes.size(), file) == bytes.size();
        if ((file && std::fclose(file) != 0) || !written)
            throw Usage(fmt::format("--pipe: cannot write '{}': {}", printable(path), std::strerror(errno)));
        paths.push_back(path);
    };
    // Where the Nth record end (as parallel counts them: from the second byte on) ends; npos: fewer.
    const auto nth_end = [&](const std::string& buffer) {
        std::size_t at = 0;
        for (std::size_t k = 0; k < options.max_args; ++k)
            if ((at = buffer.find(separator, at + 1)) == std::string::npos) return at;
        return at + recend.size();
    };
    std::string buffer;
    bool end = false;
    std::size_t block = options.block;
    while (!end) {
        const std::size_t want = block - buffer.size() % block;
        const std::size_t old = buffer.size();
        buffer.resize(old + want);
        std::size_t got = 0;
        while (got < want) {
            const ssize_t n = ::read(STDIN_FILENO, buffer.data() + old + got, want - got);
            if (n < 0 && errno == EINTR) continue;
            if (n < 0) throw Usage(fmt::format("--pipe: cannot read standard input: {}", std::strerror(errno)));
            if (n == 0) {
                end = true;
                break;
            }
            got += static_cast<std::size_t>(n);
        }
        buffer.resize(old + got);
        if (options.no_run_if_empty) {
            drop_blank_lines(buffer);
            if (buffer.empty()) continue;  // no chunk, and the block stays (or the input ended)
        }
        bool written = false;
        if (options.max_args > 0) {
            // -N N: a chunk at every Nth record end, the end of input too.
            for (std::size_t cut; !buffer.empty() && (cut = nth_end(buffer)) != std::string::npos;) {
                write_chunk(std::string_view(buffer).substr(0, cut));
                buffer.erase(0, cut);
                written = true;
            }
        } else if (!end) {
            const auto found = buffer.rfind(separator);
            if (const std::size_t cut = found == std::string::npos ? 0 : found + recend.size(); cut > 0) {
                write_chunk(std::string_view(buffer).substr(0, cut));
                buffer.erase(0, cut);
                written = true;
            }
        }
        if (end) break;
        if (!written) {
            const std::size_t grown = std::min<std::size_t>(
                static_cast<std::size_t>(std::ceil(static_cast<double>(block) * 1.3 + 1)), (std::size_t{1} << 31) - 1);
            fmt::print(stderr, "parallel: Warning: A record was longer than {}. Increasing to --blocksize {}.\n", block,
                       grown);
            block = grown;
        }
    }
    if (!buffer.empty()) write_chunk(buffer);
    return paths;
}

// A directory of our own for the workers' long streams and --pipe's chunks (removed at the
// end, also after a kill: common/temp_dirs).
std::filesystem::path make_spool_dir() {
    std::error_code ec;
    std::filesystem::path dir = std::filesystem::temp_directory_path(ec);
    if (ec) dir = "/tmp";
    try {
        return make_temp_dir(dir, "parallel");
    } catch (const std::system_error& e) {
        throw Usage(fmt::format("cannot make a temporary directory in '{}': {}", printable(dir.string()), e.what()));
    }
}

}  // namespace

ParsedCli parse_parallel(const ProgramInfo& program, int argc, const char* const* argv) {
    const std::string who = program.name + " parallel";
    try {
        Options options;
        int at = 1;
        const auto value_of = [&](std::string_view flag, std::optional<std::string> inline_value) -> std::string {
            if (inline_value) return *inline_value;
            if (at + 1 >= argc) throw Usage(fmt::format("{} needs a value", flag));
            return argv[++at];
        };
        // Returns false for an option it does not know.
        const auto apply = [&](const std::string& name, bool is_short, std::optional<std::string> inline_value,
                               bool& took_value) -> bool {
            const std::string flag = (is_short ? "-" : "--") + name;
            took_value = true;
            if (name == "j" || name == "P" || name == "jobs" || name == "max-procs")
                options.jobs = value_of(flag, inline_value);
            else if (name == "tagstring")
                options.tagstring = value_of(flag, inline_value);
            else if (name == "N" || name == "n" || name == "max-args")
                options.max_args = positive(flag, value_of(flag, inline_value));
            else if (name == "C" || name == "colsep")
                options.colsep = value_of(flag, inline_value);
            else if (name == "header") {
                options.header = value_of(flag, inline_value);
                if (*options.header != ":")
                    throw Usage(
                        fmt::format("--header: only ':' (the first value of each source names it) is "
                                    "supported, not '{}'",
                                    printable(*options.header)));
            } else if (name == "halt" || name == "halt-on-error")
                options.halt = parse_halt(value_of(flag, inline_value));
            else if (name == "joblog")
                options.joblog = value_of(flag, inline_value);
            else if (name == "results" || name == "res")
                options.results = value_of(flag, inline_value);
            else if (name == "retries")
                options.retries = static_cast<std::uint32_t>(positive(flag, value_of(flag, inline_value)));
            else if (name == "a" || name == "arg-file")
                options.arg_files.push_back(value_of(flag, inline_value));
            else if (name == "I") {
                options.replace = value_of(flag, inline_value);
                if (options.replace.empty()) throw Usage("-I: the replacement string is empty");
            } else if (name == "trim") {
                options.trim = value_of(flag, inline_value);
                if (options.trim != "n" && options.trim != "l" && options.trim != "r" && options.trim != "lr" &&
                    options.trim != "rl")
                    throw Usage(fmt::format("--trim: '{}' is not n, l, r, lr or rl", printable(options.trim)));
            } else if (name == "wd" || name == "workdir") {
                options.wd = value_of(flag, inline_value);
                if (options.wd == "..." || options.wd.empty())
                    throw Usage(fmt::format("{}: give a directory ('...', a new one per job, is not supported)", flag));
                std::error_code ec;
                if (!std::filesystem::is_directory(options.wd, ec))
                    throw Usage(fmt::format("{}: '{}' is not a directory", flag, printable(options.wd)));
                options.wd = std::filesystem::absolute(options.wd, ec).string();
            } else if (name == "env")
                value_of(flag, inline_value);  // every variable reaches a local command anyway
            else if (name == "block" || name == "block-size" || name == "blocksize")
                options.block = block_size(value_of(flag, inline_value));
            else if (name == "recstart")
                options.recstart = value_of(flag, inline_value);
            else if (name == "recend")
                options.recend = value_of(flag, inline_value);
            else if (name == "regexp")
                throw Usage("--regexp is not supported: --recstart and --recend are fixed strings here");
            else if (name == "timeout") {
                const std::string text = value_of(flag, inline_value);
                const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), options.timeout_s);
                if (ec != std::errc{} || end != text.data() + text.size() || options.timeout_s <= 0)
                    throw Usage(fmt::format("--timeout: '{}' is not a number of seconds", printable(text)));
            } else {
                took_value = false;
                if (inline_value) {
                    if (name == "k" || name == "keep-order" || name == "dry-run" || name == "tag")
                        throw Usage(fmt::format("{} takes no value", flag));
                }
                if (name == "k" || name == "keep-order")
                    options.keep_order = true;
                else if (name == "dry-run")
                    options.dry_run = true;
                else if (name == "tag")
                    options.tag = true;
                else if (name == "v" || name == "verbose")
                    options.verbose = true;
                else if (name == "q" || name == "quote")
                    options.quote_words = true;
                else if (name == "0" || name == "null")
                    options.null = true;
                else if (name == "link" || name == "xapply")
                    options.link = true;
                else if (name == "X")
                    options.multi = Multi::X;
                else if (name == "m")
                    options.multi = Multi::M;
                else if (name == "r" || name == "no-run-if-empty")
                    options.no_run_if_empty = true;
                else if (name == "pipe" || name == "spreadstdin")
                    options.pipe = true;
                else if (name == "group" || name == "no-notice" || name == "will-cite")
                    ;
                else if (const std::string why = refused(name); !why.empty())
                    throw Usage(fmt::format("option {} is not supported: {}", flag, why));
                else
                    return false;
            }
            return true;
        };
        for (; at < argc; ++at) {
            const std::string arg = argv[at];
            if (arg == "--") {
                ++at;
                break;
            }
            if (arg == "--help" || arg == "-h") {
                fmt::print(kHelp, program.name);
                return ExitCode::Ok;
            }
            if (arg == "--version" || arg == "-V") {
                fmt::print("{} parallel (taskfarm {}): GNU parallel's command line\n", program.name, version());
                return ExitCode::Ok;
            }
            bool took = false;
            if (arg.size() > 2 && arg.starts_with("--")) {
                const auto equals = arg.find('=');
                const std::string name = arg.substr(2, equals == std::string::npos ? std::string::npos : equals - 2);
                std::optional<std::string> inline_value;
                if (equals != std::string::npos) inline_value = arg.substr(equals + 1);
                if (!apply(name, false, inline_value, took))
                    throw Usage(
                        fmt::format("option --{} is not supported ({} parallel --help lists the options it takes)",
                                    printable(name), program.name));
                continue;
            }
            if (arg.size() > 1 && arg[0] == '-') {
                for (std::size_t k = 1; k < arg.size(); ++k) {
                    const std::string name(1, arg[k]);
                    // A value may follow the letter in the same word: -j2, -N2.
                    static const std::string kWithValue = "jPNnCaI";
                    std::optional<std::string> inline_value;
                    if (kWithValue.find(arg[k]) != std::string::npos && k + 1 < arg.size())
                        inline_value = arg.substr(k + 1);
                    if (!apply(name, true, inline_value, took))
                        throw Usage(
                            fmt::format("option -{} is not supported ({} parallel --help lists the options it "
                                        "takes)",
                                        printable(name), program.name));
                    if (took) break;
                }
                continue;
            }
            break;
        }
        // The command: its words up to the first input separator, joined by spaces (shell code).
        const auto separator = [](std::string_view word) {
            return word == ":::" || word == ":::+" || word == "::::" || word == "::::+";
        };
        std::vector<std::string> words;
        for (; at < argc && !separator(argv[at]); ++at) words.push_back(argv[at]);
        std::string command_template;
        for (const std::string& word : words) {
            if (!command_template.empty()) command_template += ' ';
            command_template += options.quote_words ? parallel::quote(word) : word;
        }
        if (const auto open = command_template.find("{=");
            open != std::string::npos && command_template.find("=}", open + 2) != std::string::npos)
            throw Usage(
                "{= perl expression =} is not supported (no perl here): use the shell in the command instead, "
                "e.g. \"$(echo {} | tr a-z A-Z)\" or ${x%.*} on a variable set from {}");
        if (options.pipe && (options.multi != Multi::None || !options.arg_files.empty() || at < argc))
            throw Usage(
                "--pipe: the jobs' input is standard input, cut by --block or -N (not -X, -m, -a nor ::: "
                "sources)");
        if (options.pipe && options.recend.value_or("x").empty() && options.recstart.value_or("").empty())
            throw Usage("--pipe: --recstart and --recend are both empty");
        auto output = std::make_shared<ParallelOutput>();
        output->spool_dir = make_spool_dir();
        const char separator_char = options.null ? '\0' : '\n';
        std::vector<Source> sources;
        for (const std::string& file : options.arg_files) sources.push_back({split(read_whole(file), separator_char)});
        std::vector<std::string> stdins;  // --pipe: each job's chunk
        if (options.pipe) {
            stdins = write_chunks(options, output->spool_dir);
            sources.push_back({std::vector<std::string>(stdins.size())});
        }
        while (at < argc) {
            const std::string kind = argv[at++];
            const bool files = kind.starts_with("::::");
            const bool linked = kind.back() == '+';
            if (linked && sources.empty())
                throw Usage(fmt::format("{} links to the input source before it, and there is none", kind));
            std::vector<std::string> values;
            for (; at < argc && !separator(argv[at]); ++at) values.push_back(argv[at]);
            if (files) {
                for (std::size_t i = 0; i < values.size(); ++i)
                    sources.push_back({split(read_whole(values[i]), separator_char), linked && i == 0});
            } else {
                sources.push_back({std::move(values), linked});
            }
        }
        if (sources.empty()) sources.push_back({split(read_whole("-"), separator_char)});
        // -r: a value of white space alone is no value, in every source.
        if (options.no_run_if_empty && !options.pipe)  // --pipe: in its chunks (drop_blank_lines)
            for (Source& source : sources)
                std::erase_if(source.values, [](const std::string& value) {
                    return value.find_first_not_of(" \t\n\r\v\f") == std::string::npos;
                });
        // As parallel: `:::` with no value is one empty value when another source has values.
        if (std::any_of(sources.begin(), sources.end(), [](const Source& s) { return !s.values.empty(); }))
            for (Source& source : sources)
                if (source.values.empty()) source.values.emplace_back();
        if (command_template.empty())
            throw Usage("no command: give COMMAND before ::: (running each input as a command is not supported)");

        // --colsep: each value split into columns; --header :: each source's first value names it.
        std::optional<std::regex> colsep;
        if (options.colsep) {
            try {
                colsep.emplace(*options.colsep);
            } catch (const std::regex_error& e) {
                throw Usage(fmt::format("--colsep: '{}' is not a regular expression: {}", printable(*options.colsep),
                                        e.what()));
            }
        }
        // --trim: of each column (of each value without --colsep).
        const auto columns = [&](const std::string& value) {
            if (!colsep) return std::vector<std::string>{trimmed(value, options.trim)};
            std::vector<std::string> parts;
            std::sregex_token_iterator part(value.begin(), value.end(), *colsep, -1), end;
            for (; part != end; ++part) parts.push_back(trimmed(part->str(), options.trim));
            if (parts.empty()) parts.push_back("");
            return parts;
        };
        std::map<std::string, long> names;
        if (options.header) {
            long position = 1;
            for (Source& source : sources) {
                if (source.values.empty()) continue;
                for (const std::string& name : columns(source.values.front())) names.emplace(name, position++);
                source.values.erase(source.values.begin());
            }
        }

        // Records: every combination of the sources (linked ones go value by value, the
        // shorter wrapping round); the first source changes slowest.
        std::vector<std::vector<std::size_t>> groups;
        for (std::size_t i = 0; i < sources.size(); ++i) {
            if (i > 0 && (sources[i].linked || options.link))
                groups.back().push_back(i);
            else
                groups.push_back({i});
        }
        std::vector<std::size_t> lengths;
        bool none = false;
        for (const auto& group : groups) {
            std::size_t longest = 0;
            for (std::size_t s : group) {
                longest = std::max(longest, sources[s].values.size());
                if (sources[s].values.empty()) none = true;
            }
            lengths.push_back(longest);
        }
        std::vector<std::vector<std::string>> records;  // each source's value
        if (!none) {
            std::vector<std::size_t> index(groups.size(), 0);
            for (;;) {
                std::vector<std::string> record(sources.size());
                for (std::size_t g = 0; g < groups.size(); ++g)
                    for (std::size_t s : groups[g]) record[s] = sources[s].values[index[g] % sources[s].values.size()];
                records.push_back(std::move(record));
                std::size_t g = groups.size();
                while (g > 0 && ++index[g - 1] == lengths[g - 1]) index[--g] = 0;
                if (g == 0) break;
            }
        }
        if (records.empty()) return ExitCode::Ok;  // parallel runs nothing for no input

        // Jobs: a record each, -N of them, or (-X, -m) the records spread over the job slots.
        std::size_t per_job = 1;
        if (options.pipe) {
            per_job = 1;  // a chunk each (-N N is N records a chunk)
        } else if (options.max_args > 0) {
            per_job = options.max_args;  // also with -X, -m: -n 2 -X is two a command
        } else if (options.multi != Multi::None) {
            const auto slots = static_cast<std::size_t>(job_slots(options.jobs, records.size()));
            per_job = (records.size() + slots - 1) / slots;
        }
        const std::vector<Piece> pieces = pieces_of(command_template, names, options.replace);
        const bool append = !replaces(pieces) && !options.pipe;
        const std::string full_template = append ? command_template + " " + options.replace : command_template;
        const std::vector<Piece> full_pieces = append ? pieces_of(full_template, names, options.replace) : pieces;
        const std::vector<Piece> tag_pieces =
            options.tagstring ? pieces_of(*options.tagstring, names, options.replace) : std::vector<Piece>{};
        for (std::size_t first = 0; first < records.size(); first += per_job) {
            const std::size_t sequence = first / per_job + 1;
            std::vector<std::string> args;
            std::vector<std::string> raw;
            for (std::size_t r = first; r < std::min(records.size(), first + per_job); ++r)
                for (const std::string& value : records[r]) {
                    raw.push_back(value);
                    for (std::string& column : columns(value)) args.push_back(std::move(column));
                }
            output->commands.push_back(options.multi == Multi::X
                                           ? expand_context(full_template, names, options.replace, args, sequence)
                                           : expand(full_pieces, args, sequence));
            if (options.tagstring) {
                // A tag is text, not shell code: the values go in as they are.
                std::string tag;
                for (const Piece& piece : tag_pieces) {
                    if (piece.kind == Piece::Kind::Text) {
                        tag += piece.text;
                    } else if (piece.kind == Piece::Kind::All) {
                        for (std::size_t i = 0; i < args.size(); ++i)
                            tag += (i > 0 ? " " : "") + modified(args[i], piece.modifier);
                    } else if (piece.kind == Piece::Kind::Sequence) {
                        tag += std::to_string(sequence);
                    } else if (piece.kind == Piece::Kind::Position) {
                        const long count = static_cast<long>(args.size());
                        const long index = piece.position > 0 ? piece.position - 1 : count + piece.position;
                        if (index >= 0 && index < count)
                            tag += modified(args[static_cast<std::size_t>(index)], piece.modifier);
                    }
                }
                output->tags.push_back(std::move(tag));
            } else if (options.tag) {
                std::string tag;
                for (std::size_t i = 0; i < args.size(); ++i) tag += (i > 0 ? " " : "") + args[i];
                output->tags.push_back(std::move(tag));
            }
            if (!options.results.empty()) {
                std::filesystem::path dir = options.results;
                for (std::size_t s = 0; s < sources.size() && s < raw.size(); ++s)
                    dir = dir / std::to_string(s + 1) / results_name(raw[s]);
                output->results_dirs.push_back(dir.string());
            }
        }
        if (options.dry_run) {
            for (const std::string& command : output->commands) fmt::print("{}\n", command);
            return ExitCode::Ok;
        }
        output->keep_order = options.keep_order;
        output->verbose = options.verbose;
        output->joblog = options.joblog;
        output->halt = options.halt;

        RunConfig config;
        config.worker_bin = program.worker.path;
        config.worker_prefix = program.worker.prefix;
        config.worker_command = program.worker.prefix.empty() ? std::string("worker") : program.name + " worker";
        config.command_line.assign(argv, argv + argc);
        config.command_line.insert(config.command_line.begin(), program.name);
        config.task = "command";
        if (!program.registry.find("command")) throw Usage(fmt::format("{} has no command task type", program.name));
        config.modes = {Mode::Processes};
        config.modes_given = true;
        config.workers = job_slots(options.jobs, output->commands.size());
        config.settings["max_output"] = 1536 * 1024;  // the most a result carries (the command type's --max-output)
        config.progress = ProgressMode::Never;
        config.log_level = "warn";
        if (options.retries > 0) config.retries = config.task_retries = options.retries - 1;
        config.task_timeout_s = options.timeout_s;
        // --halt: a worker holds one job at a time, so that no job starts after the one that halts.
        if (options.halt.when != ParallelHalt::When::Never) config.prefetch = 1;
        config.plan_path = write_plan(output->commands, options.wd, stdins, output->plan_fd);
        // A stream longer than a result holds comes whole through a file there.
        config.settings["spill_dir"] = output->spool_dir.string();
        config.parallel = std::move(output);
        return config;
    } catch (const Usage& e) {
        fmt::print(stderr, "{}: {}\n", who, e.what());
        return ExitCode::Usage;
    }
}

}  // namespace taskfarm
