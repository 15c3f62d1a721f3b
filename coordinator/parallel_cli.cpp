#include "parallel_cli.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <unordered_set>

#include <fmt/format.h>

#include "affinity.hpp"
#include "column_split.hpp"
#include "errors.hpp"
#include "parallel_jobs.hpp"
#include "parallel_output.hpp"
#include "plan_sources.hpp"
#include "temp_dirs.hpp"
#include "text.hpp"
#include "unique_fd.hpp"

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

// The length of parallel::quote(text), without making it.
std::size_t quoted_size(std::string_view text) {
    if (is_plain_shell_word(text)) return text.size();
    return text.size() + 2 + 4 * static_cast<std::size_t>(std::count(text.begin(), text.end(), '\''));
}

// An option this parser does not know, or a bad value: exit 2 with the line (or `status`,
// where GNU parallel takes the value and then fails with its own status).
struct Usage : std::runtime_error {
    explicit Usage(const std::string& what, int exit_status = 2) : std::runtime_error(what), status(exit_status) {}
    int status;
};

struct Source {
    std::vector<std::string> values;
    bool linked = false;  // :::+ or ::::+: goes with the source before it, value by value
    std::string file;     // a :::: or -a source not yet read ("-": standard input); values then empty
};

enum class Multi { None, X, M };

struct Options {
    std::string jobs = "100%";
    bool keep_order = false, dry_run = false, tag = false, verbose = false, quote_words = false, null = false,
         link = false;
    std::optional<std::string> tagstring, colsep, header;
    std::optional<std::size_t> max_args;  // -N; 0: one record a job, none of it inserted
    Multi multi = Multi::None;
    ParallelHalt halt;
    std::string joblog, results;
    std::uint32_t retries = 0;  // total tries; 0: not given (one)
    double timeout_s = 0;       // 0: none
    double delay_s = 0;         // --delay: between the starts of jobs
    bool resume = false, resume_failed = false;
    std::vector<std::string> arg_files;
    std::string replace = "{}";                            // -I STR: what stands for the whole input
    bool no_run_if_empty = false;                          // -r
    std::string trim;                                      // --trim n|l|r|lr|rl; not given: lr with --colsep
    std::string wd;                                        // --wd DIR
    bool pipe = false;                                     // --pipe: each job's stdin is a chunk of ours
    ParallelOutput::Live live = ParallelOutput::Live::No;  // --line-buffer, --ungroup
    std::size_t block = 1024 * 1024;
    std::optional<std::string> recstart, recend;  // neither: a record ends with "\n"
};

constexpr char kHelp[] =
    "Usage: {0} parallel [OPTIONS] COMMAND [::: ARGS...] [:::: FILES...]\n"
    "GNU parallel's command line, run as command tasks on worker processes (alias parallel='{0} parallel').\n"
    "Inputs: ::: ARGS, :::: FILES, :::+ and ::::+ (linked to the source before), -a FILE, else standard input;\n"
    "several sources: every combination (--link: value by value). Every line is an input, byte for byte,\n"
    "nothing trimmed or skipped (unless --trim, -r); -0: NUL-separated. Jobs start as the first source\n"
    "(standard input, a file) comes, as parallel's: `tail -f queue | {0} parallel` runs each line as it is\n"
    "added (-X and -m without -N read ahead until each slot has a full command, and spread the values over\n"
    "the slots if the input ends first; all of it is read first for --halt N% or a linked first source).\n"
    "Replacement strings: {{}} {{.}} {{/}} {{//}} {{/.}} {{#}} {{%}}, positional {{1}} {{2.}} {{-1}}, --colsep REGEX\n"
    "(Perl's syntax and split, as parallel's: columns trimmed unless --trim; a match that backtracks past a\n"
    "limit, or matching past 2 s and 2 us a byte split, is exit 2), --header : (then {{NAME}}). A value is\n"
    "quoted only where the shell would change it, as parallel does: so \"{{}}\" in double quotes runs an\n"
    "input such as $(cmd) as code; write {{}} bare.\n"
    "Options: -j N|N%|+N|-N|0 (0: a slot per job, up to 1024; while the input comes, a worker starts when a\n"
    "job waits for one), -k, --dry-run, -v, -q, --tag, --tagstring STR, -N N (0: no argument\n"
    "inserted), -n N, -X, -m, -0, -I STR, -r, --trim n|l|r|lr|rl, --wd DIR, --env VAR (every variable reaches\n"
    "a command here), --halt 0|1|2|-1|-2|N%|never|now|soon,fail|success|done=N|N%, --joblog [+]FILE,\n"
    "--resume and --resume-failed (with --joblog: skip the jobs it has, or has as succeeded; the others run\n"
    "with the command as now given), --results DIR, --retries N (tries in all), --timeout S (also 1m30s;\n"
    "0: none), --delay S (between job starts), --group, --link, -a FILE; --pipe with --block SIZE (1.5M,\n"
    "100k, 1Mi; 0: 1M), --recstart STR, --recend STR, -N N (each job's standard input is a chunk of ours,\n"
    "cut after a record's end). A job's output comes whole when it ends (--group), byte for byte, however\n"
    "long; --line-buffer: line by line as it comes, lines of jobs mixed; --ungroup (-u): as it comes (with\n"
    "-k both are --group). {{= perl =}} is refused.\n"
    "Any other option: exit 2 naming it. Exit status: the number of failed jobs (at most 101), a job whose\n"
    "output could not be written whole counted as failed; with --halt on failure, as parallel's; 255 where\n"
    "parallel takes a value and then fails with 255 (--block -1).\n";

// A whole number from 0 (-N, --retries).
std::size_t whole_number(std::string_view flag, const std::string& text) {
    std::size_t value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size() || value > 1'000'000)
        throw Usage(fmt::format("{}: '{}' is not a whole number from 0", flag, printable(text)));
    return value;
}

// Values are read by scanning, never with std::regex (whose matcher recurses once a character:
// a long value overflows the stack) nor std::sto* (which throw past the type's range).
// How many digits `text` starts with.
std::size_t leading_digits(std::string_view text) {
    std::size_t count = 0;
    while (count < text.size() && text[count] >= '0' && text[count] <= '9') ++count;
    return count;
}

// The number D+ or D+.D+ that `text` starts with, and its `length`; nullopt when there is
// none or it is past a double's range.
std::optional<double> leading_decimal(std::string_view text, std::size_t& length) {
    length = leading_digits(text);
    if (length == 0) return std::nullopt;
    if (length < text.size() && text[length] == '.') {
        const std::size_t fraction = leading_digits(text.substr(length + 1));
        if (fraction == 0) return std::nullopt;
        length += 1 + fraction;
    }
    double value = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + length, value);
    if (ec != std::errc{} || end != text.data() + length || !std::isfinite(value)) return std::nullopt;
    return value;
}

// `text` in full as D+ or D+.D+.
std::optional<double> decimal(std::string_view text) {
    std::size_t length = 0;
    const auto value = leading_decimal(text, length);
    if (!value || length != text.size()) return std::nullopt;
    return value;
}

// -X, -m: the most bytes the arguments of one command add to it. A shell command is one
// argument of `sh -c`, which Linux caps at 128 KiB (MAX_ARG_STRLEN): near that, fewer
// commands than parallel's (which cuts at about 64 KiB less the environment) or xargs'.
constexpr std::size_t kMostCommandBytes = 120 * 1024;

// Seconds as parallel writes them (--timeout, --delay): 2.5, or with units s m h d as in 1m30s.
double seconds(std::string_view flag, const std::string& text) {
    const auto bad = [&](std::string_view why) {
        return Usage(fmt::format("{}: '{}' {}", flag, printable(text), why));
    };
    if (text.ends_with('%')) throw bad("is a percentage of the median run time, which is not supported: give seconds");
    if (text.ends_with("auto")) throw bad("(a delay that adapts) is not supported: give seconds");
    if (const auto plain = decimal(text)) return *plain;
    double total = 0;
    std::string_view rest = text;
    do {
        std::size_t length = 0;
        const auto value = leading_decimal(rest, length);
        if (!value || length == rest.size()) throw bad("is not seconds, such as 2.5 or 1m30s");
        const char unit = static_cast<char>(std::tolower(static_cast<unsigned char>(rest[length])));
        if (unit != 'd' && unit != 'h' && unit != 'm' && unit != 's') throw bad("is not seconds, such as 2.5 or 1m30s");
        total += *value * (unit == 'd' ? 86400 : unit == 'h' ? 3600 : unit == 'm' ? 60 : 1);
        rest.remove_prefix(length + 1);
    } while (!rest.empty());
    if (!std::isfinite(total)) throw bad("is not seconds, such as 2.5 or 1m30s");
    return total;
}

// --block SIZE as parallel reads it: a number (1.5 too) and a unit; K M G T P E (and Ki, Mi...,
// any case) are powers of 1024, k m g t p e of 1000; 0 or nothing: 1M. What parallel takes and
// then fails on (a negative size, one under a byte) exits 255, as its does.
std::size_t block_size(const std::string& text) {
    if (text.empty() || text == "0") return 1024 * 1024;
    // [-](D+[.D*] | .D+)[unit[i]]
    const auto bad = [&] {
        return Usage(fmt::format("--block: '{}' is not a size such as 1M, 1.5M, 100k or 65536", printable(text)));
    };
    std::string_view rest = text;
    const bool negative = rest.starts_with('-');
    if (negative) rest.remove_prefix(1);
    std::size_t length = leading_digits(rest);
    if (length < rest.size() && rest[length] == '.') {
        const std::size_t fraction = leading_digits(rest.substr(length + 1));
        if (length == 0 && fraction == 0) throw bad();
        length += 1 + fraction;
    }
    if (length == 0) throw bad();
    double value = 0;
    if (const auto [end, ec] = std::from_chars(rest.data(), rest.data() + length, value);
        ec != std::errc{} || end != rest.data() + length || !std::isfinite(value))
        throw bad();
    rest.remove_prefix(length);
    if (!rest.empty()) {
        const char unit = rest[0];
        const auto power =
            std::string_view("kmgtpe").find(static_cast<char>(std::tolower(static_cast<unsigned char>(unit))));
        if (power == std::string_view::npos || rest.size() > 2 || (rest.size() == 2 && std::tolower(rest[1]) != 'i'))
            throw bad();
        const bool binary = std::isupper(static_cast<unsigned char>(unit)) || rest.size() == 2;
        for (std::size_t i = 0; i <= power; ++i) value *= binary ? 1024 : 1000;
    }
    if (negative)
        throw Usage(fmt::format("--block: '{}' is negative (GNU parallel takes it with --pipe and dies: exit 255 "
                                "as it does; -N jobs per slot is --pipepart's, which is not supported)",
                                printable(text)),
                    255);
    if (value < 1)
        throw Usage(fmt::format("--block: '{}' is under one byte (GNU parallel takes it and dies: exit 255 as it "
                                "does)",
                                printable(text)),
                    255);
    if (value > static_cast<double>(std::size_t{1} << 30))
        throw Usage(fmt::format("--block: '{}' is over 1G (a block is held in memory here)", printable(text)));
    return static_cast<std::size_t>(value);
}

// The most job slots, whatever -j says (-j 0: one per job, up to this).
constexpr long kMostSlots = 1024;

// -j N|N%|+N|-N; 0: as many as there are jobs (`jobs`; nullopt: not known yet, as with input
// read as it comes: then kMostSlots, whose workers start as jobs wait for one).
int job_slots(const std::string& text, std::optional<std::size_t> jobs) {
    const int cpus = available_cpus();
    const auto bad = [&] { return Usage(fmt::format("-j: '{}' is not N, N%, +N, -N or 0", printable(text))); };
    auto number = [&](std::string_view digits) {
        int value = 0;
        const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
        if (digits.empty() || ec != std::errc{} || end != digits.data() + digits.size() || value < 0) throw bad();
        return value;
    };
    long slots = 0;
    if (!text.empty() && text.back() == '%') {
        // As parallel: a fraction of a percent is taken, and a share under one slot is one.
        const auto given = decimal(std::string_view(text).substr(0, text.size() - 1));
        if (!given) throw bad();
        const double percent = *given;
        if (percent == 0) throw Usage(fmt::format("-j: '{}' is no job slot at all", printable(text)));
        slots = std::max(1L, static_cast<long>(cpus * percent / 100));
    } else if (!text.empty() && text[0] == '+') {
        slots = cpus + number(std::string_view(text).substr(1));
    } else if (!text.empty() && text[0] == '-') {
        slots = cpus - number(std::string_view(text).substr(1));
    } else if (std::filesystem::is_regular_file(text)) {
        throw Usage(
            fmt::format("-j {}: a file of job slots (read again as jobs run) is not supported: give the "
                        "number, -j \"$(cat {})\"",
                        printable(text), printable(text)));
    } else if ((slots = number(text)) == 0) {
        slots = jobs ? static_cast<long>(*jobs) : kMostSlots;
    }
    slots = std::clamp<long>(slots, 1, kMostSlots);
    if (!jobs) return static_cast<int>(slots);
    return static_cast<int>(std::min<long>(slots, std::max<long>(1, static_cast<long>(*jobs))));
}

// --halt as parallel reads it: 0 1 2 -1 -2 are never, soon,fail=1, now,fail=1, soon,success=1
// and now,success=1; N% is soon,fail=N%; else WHEN[,WHY=N|N%] split at commas and equals signs.
ParallelHalt parse_halt(const std::string& given) {
    static const std::map<std::string, std::string> kShort = {
        {"0", "never"}, {"1", "soon,fail=1"}, {"2", "now,fail=1"}, {"-1", "soon,success=1"}, {"-2", "now,success=1"}};
    std::string text = kShort.contains(given) ? kShort.at(given) : given;
    if (text.size() > 1 && text.back() == '%' && leading_digits(text) == text.size() - 1) text = "soon,fail=" + text;
    std::vector<std::string> parts;
    for (std::size_t at = 0;;) {
        const std::size_t separator = text.find_first_of(",=", at);
        parts.push_back(text.substr(at, separator - at));
        if (separator == std::string::npos) break;
        at = separator + 1;
    }
    const auto bad = [&](std::string_view why) {
        return Usage(fmt::format("--halt: '{}' {} (0|1|2|-1|-2|N%|never|now|soon,fail|success|done=N|N%)",
                                 printable(given), why));
    };
    ParallelHalt halt;
    if (parts.empty() || (parts[0] != "never" && parts[0] != "soon" && parts[0] != "now"))
        throw bad("does not start with never, soon or now");
    if (parts[0] == "never") return halt;
    halt.when = parts[0] == "now" ? ParallelHalt::When::Now : ParallelHalt::When::Soon;
    const std::string on = parts.size() > 1 ? parts[1] : "";
    if (on == "fail")
        halt.on = ParallelHalt::On::Fail;
    else if (on == "success")
        halt.on = ParallelHalt::On::Success;
    else if (on == "done")
        halt.on = ParallelHalt::On::Completed;
    else
        throw bad(fmt::format("has no fail, success or done after {}", parts[0]));
    std::string count = parts.size() > 2 ? parts[2] : "";
    if (count.ends_with('%')) {
        halt.percent = true;
        count.pop_back();
    }
    const auto number = decimal(count);
    if (!number || leading_digits(count) != count.size())
        throw bad(fmt::format("has no whole number N or N% after {}", on));
    halt.count = *number;
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
                // -?D+ and a modifier; not 0 nor -0
                const std::size_t sign = inner.starts_with('-') ? 1 : 0;
                const std::size_t digits = leading_digits(std::string_view(inner).substr(sign));
                const std::string modifier = inner.substr(sign + digits);
                long position = 0;
                const bool positional = digits > 0 && (modifier.empty() || modifier == "." || modifier == "/" ||
                                                       modifier == "//" || modifier == "/.");
                if (positional) {
                    const auto [end, ec] = std::from_chars(inner.data(), inner.data() + sign + digits, position);
                    if (ec != std::errc{})
                        throw Usage(
                            fmt::format("'{{{}}}': no input has that many columns or sources", printable(inner, 100)));
                }
                if ((inner.empty() && replace == "{}") || inner == "." || inner == "/" || inner == "//" ||
                    inner == "/.")
                    found = Piece{Piece::Kind::All, {}, 0, inner};
                else if (inner == "#")
                    found = Piece{Piece::Kind::Sequence, {}, 0, {}};
                else if (inner == "%")
                    found = Piece{Piece::Kind::Slot, {}, 0, {}};
                else if (positional && position != 0)
                    found = Piece{Piece::Kind::Position, {}, position, modifier};
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

// -X, -m: whether each value makes the command longer, so that the length limit cuts a
// job (the command has {}, or gets it appended); not with positional {1} alone.
bool replaces_every_value(const std::string& command_template, const std::string& replace) {
    const std::vector<Piece> pieces = pieces_of(command_template, {}, replace);
    const bool any =
        std::any_of(pieces.begin(), pieces.end(), [](const Piece& p) { return p.kind != Piece::Kind::Text; });
    return !any || std::any_of(pieces.begin(), pieces.end(), [](const Piece& p) { return p.kind == Piece::Kind::All; });
}

bool replaces(const std::vector<Piece>& pieces) {
    return std::any_of(pieces.begin(), pieces.end(), [](const Piece& p) { return p.kind != Piece::Kind::Text; });
}

// parallel::quote(text), appended to `out` (-X puts tens of thousands of values in one
// command: one copy each, no string of its own).
void append_quoted(std::string& out, std::string_view text) {
    if (is_plain_shell_word(text)) {
        out += text;
        return;
    }
    out += '\'';
    for (char c : text) {
        if (c == '\'')
            out += "'\"'\"'";
        else
            out += c;
    }
    out += '\'';
}

void append_modified(std::string& out, const std::string& value, const std::string& modifier) {
    if (modifier.empty())
        append_quoted(out, value);
    else
        append_quoted(out, modified(value, modifier));
}

// The command of `pieces` with `count` arguments from `args`, appended to `command`.
void expand_into(std::string& command, const std::vector<Piece>& pieces, const std::string* args, std::size_t count,
                 std::size_t sequence) {
    for (const Piece& piece : pieces) {
        switch (piece.kind) {
            case Piece::Kind::Text: command += piece.text; break;
            case Piece::Kind::All:
                for (std::size_t i = 0; i < count; ++i) {
                    if (i > 0) command += ' ';
                    append_modified(command, args[i], piece.modifier);
                }
                break;
            case Piece::Kind::Sequence: command += std::to_string(sequence); break;
            // The worker's number, from 1 (TASKFARM_WORKER is w1, w2, ... in processes mode).
            case Piece::Kind::Slot: command += "${TASKFARM_WORKER#w}"; break;
            case Piece::Kind::Position: {
                const long index = piece.position > 0 ? piece.position - 1 : static_cast<long>(count) + piece.position;
                if (index >= 0 && index < static_cast<long>(count))
                    append_modified(command, args[static_cast<std::size_t>(index)], piece.modifier);
                break;
            }
        }
    }
}

std::string expand(const std::vector<Piece>& pieces, const std::vector<std::string>& args, std::size_t sequence) {
    std::string command;
    expand_into(command, pieces, args.data(), args.size(), sequence);
    return command;
}

// -X: each word of the template with {} in it repeated for each argument; -m: {} is all of them.
// -N0: `args` is empty, and the word is there once for each of `records` with nothing in it.
std::string expand_context(const std::string& text, const std::map<std::string, long>& names,
                           const std::string& replace, const std::vector<std::string>& args, std::size_t sequence,
                           std::size_t records = 1) {
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
            const std::size_t times = args.empty() ? std::max<std::size_t>(1, records) : args.size();
            for (std::size_t i = 0; i < times; ++i) {
                if (i > 0) command += ' ';
                expand_into(command, pieces, args.empty() ? nullptr : &args[i], args.empty() ? 0 : 1, sequence);
            }
        } else {
            expand_into(command, pieces, args.data(), args.size(), sequence);
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

// What to use instead of an option of parallel's that users type often and that is not
// taken; "" for any other.
std::string refused(const std::string& name) {
    if (name == "pipepart" || name == "roundrobin" || name == "round-robin" || name == "cat" || name == "fifo")
        return "use --pipe (with --block SIZE) and read the chunk from standard input";
    if (name == "S" || name == "sshlogin" || name == "slf" || name == "sshloginfile" || name == "transfer" ||
        name == "return" || name == "cleanup" || name == "trc")
        return "jobs run on this machine; for other machines start workers there (taskfarm's --listen and "
               "`worker --connect`)";
    if (name == "retry-failed")
        return "give the command again with --resume-failed and the same --joblog: the failed jobs run again";
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

// A descriptor that a job maker reads, on a thread that another may stop: every wait for
// input also watches `stop_fd` (an eventfd of the maker's).
class Input {
public:
    Input(int fd, bool owned, std::string name, int stop_fd)
        : fd_(fd), owned_(owned), name_(std::move(name)), stop_fd_(stop_fd) {}
    ~Input() {
        if (owned_) ::close(fd_);
    }
    Input(const Input&) = delete;
    Input& operator=(const Input&) = delete;

    // Standard input for "-", else the file at `path`, opened now (close-on-exec, as is a
    // descriptor of ours that names it: `:::: <(cmd)`).
    static std::unique_ptr<Input> open(const std::string& path, int stop_fd) {
        if (path == "-") return std::make_unique<Input>(STDIN_FILENO, false, "standard input", stop_fd);
        keep_from_commands(path);
        const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) throw Usage(fmt::format("cannot open input file '{}': {}", printable(path), std::strerror(errno)));
        return std::make_unique<Input>(fd, true, fmt::format("input file '{}'", printable(path)), stop_fd);
    }

    // Up to `size` bytes; 0 at the end, or once stopped (stopped() then says so).
    std::size_t read(char* buffer, std::size_t size) {
        while (!stopped_) {
            pollfd fds[] = {{fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
            if (::poll(fds, 2, -1) < 0 && errno != EINTR)
                throw ConfigError(fmt::format("cannot wait for {}: {}", name_, std::strerror(errno)));
            if (fds[1].revents != 0) {
                stopped_ = true;
                break;
            }
            if (fds[0].revents == 0) continue;
            const ssize_t got = ::read(fd_, buffer, size);
            if (got < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (got < 0) throw ConfigError(fmt::format("cannot read {}: {}", name_, std::strerror(errno)));
            return static_cast<std::size_t>(got);
        }
        return 0;
    }
    // Whether read() would not wait.
    bool ready() const {
        pollfd fd{fd_, POLLIN, 0};
        return ::poll(&fd, 1, 0) > 0;
    }
    bool stopped() const { return stopped_; }

private:
    int fd_;
    bool owned_;
    std::string name_;
    int stop_fd_;
    bool stopped_ = false;
};

// The values of an input, each ended by `separator` ('\n', or NUL with -0), the last one
// also by the end of input; read as they are asked for.
class ValueReader {
public:
    ValueReader(std::unique_ptr<Input> in, char separator) : in_(std::move(in)), separator_(separator) {}
    // The next value; false at the end.
    bool next(std::string& value) {
        while (true) {
            if (const auto end = buffer_.find(separator_, scanned_); end != std::string::npos) {
                value.assign(buffer_, start_, end - start_);
                start_ = scanned_ = end + 1;
                return true;
            }
            scanned_ = buffer_.size();
            if (ended_) {
                if (start_ == buffer_.size()) return false;
                value.assign(buffer_, start_);
                start_ = scanned_ = buffer_.size();
                return true;
            }
            buffer_.erase(0, start_);  // what was handed out goes: memory holds one value and a read
            scanned_ -= start_;
            start_ = 0;
            char chunk[65536];
            const std::size_t got = in_->read(chunk, sizeof chunk);
            if (got == 0) ended_ = true;
            buffer_.append(chunk, got);
        }
    }
    // Whether next() has a value without waiting: what has come is read (one read that does
    // not wait), and must hold a whole value.
    bool ready() {
        if (ended_ || buffer_.find(separator_, scanned_) != std::string::npos) return true;
        if (!in_->ready()) return false;
        char chunk[65536];
        const std::size_t got = in_->read(chunk, sizeof chunk);
        if (got == 0) ended_ = true;
        buffer_.append(chunk, got);
        return ended_ || buffer_.find(separator_, scanned_) != std::string::npos;
    }
    bool stopped() const { return in_->stopped(); }

private:
    std::unique_ptr<Input> in_;
    char separator_;
    std::string buffer_;
    std::size_t start_ = 0;    // the next value starts here
    std::size_t scanned_ = 0;  // no separator before here
    bool ended_ = false;
};

// --pipe: standard input cut into chunks as parallel cuts it: read until a multiple of the
// block is held, then cut after the last record end that a record start follows; the rest
// goes with the next chunk; with -N N, after every Nth record instead. No such place: the
// block grows by 1.3 (said on stderr), as parallel's. Each chunk is a file of `dir`, written
// as it is read, a block at a time, so memory holds a block or two however long the input.
class ChunkReader {
public:
    ChunkReader(const Options& options, std::filesystem::path dir, std::unique_ptr<Input> in)
        : recend_(options.recend.value_or(options.recstart ? "" : "\n")),  // as parallel: one given, the other is empty
          separator_(recend_ + options.recstart.value_or("")),
          records_(options.max_args.value_or(0)),
          drop_blank_(options.no_run_if_empty),
          block_(options.block),
          dir_(std::move(dir)),
          in_(std::move(in)) {}

    // The next chunk's file; false at the end.
    bool next(std::string& path) {
        while (chunks_.empty() && !done_) fill();
        if (chunks_.empty() || in_->stopped()) return false;
        path = std::move(chunks_.front());
        chunks_.pop_front();
        return true;
    }
    // Whether next() has a chunk without waiting (a block is read whole, so only one cut already).
    bool ready() const { return !chunks_.empty() || done_; }

private:
    void write_chunk(std::string_view bytes) {
        const std::string path = (dir_ / fmt::format("chunk-{}", ++written_)).string();
        std::FILE* file = std::fopen(path.c_str(), "wxe");
        const bool written = file && std::fwrite(bytes.data(), 1, bytes.size(), file) == bytes.size();
        if ((file && std::fclose(file) != 0) || !written)
            throw ConfigError(fmt::format("--pipe: cannot write '{}': {}", printable(path), std::strerror(errno)));
        chunks_.push_back(path);
    }
    // Where the Nth record end (as parallel counts them: from the second byte on) ends; npos: fewer.
    std::size_t nth_end() const {
        std::size_t at = 0;
        for (std::size_t k = 0; k < records_; ++k)
            if ((at = buffer_.find(separator_, at + 1)) == std::string::npos) return at;
        return at + recend_.size();
    }
    // Reads up to the next multiple of the block, and cuts what it can.
    void fill() {
        const std::size_t want = block_ - buffer_.size() % block_;
        const std::size_t old = buffer_.size();
        buffer_.resize(old + want);
        std::size_t got = 0;
        bool end = false;
        while (got < want) {
            const std::size_t n = in_->read(buffer_.data() + old + got, want - got);
            if (n == 0) {
                end = true;
                break;
            }
            got += n;
        }
        buffer_.resize(old + got);
        if (drop_blank_) drop_blank_lines(buffer_);
        bool written = false;
        if (!buffer_.empty() && records_ > 0) {
            // -N N: a chunk at every Nth record end, the end of input too.
            for (std::size_t cut; !buffer_.empty() && (cut = nth_end()) != std::string::npos;) {
                write_chunk(std::string_view(buffer_).substr(0, cut));
                buffer_.erase(0, cut);
                written = true;
            }
        } else if (!buffer_.empty() && !end) {
            const auto found = buffer_.rfind(separator_);
            if (const std::size_t cut = found == std::string::npos ? 0 : found + recend_.size(); cut > 0) {
                write_chunk(std::string_view(buffer_).substr(0, cut));
                buffer_.erase(0, cut);
                written = true;
            }
        }
        if (end) {
            if (!buffer_.empty() && !in_->stopped()) write_chunk(buffer_);
            buffer_.clear();
            done_ = true;
        } else if (!written && !buffer_.empty()) {
            const std::size_t grown = std::min<std::size_t>(
                static_cast<std::size_t>(std::ceil(static_cast<double>(block_) * 1.3 + 1)), (std::size_t{1} << 31) - 1);
            fmt::print(stderr, "parallel: Warning: A record was longer than {}. Increasing to --blocksize {}.\n",
                       block_, grown);
            block_ = grown;
        }
    }

    const std::string recend_, separator_;
    const std::size_t records_;  // -N; 0: by the block
    const bool drop_blank_;      // -r
    std::size_t block_;
    const std::filesystem::path dir_;
    std::unique_ptr<Input> in_;
    std::string buffer_;
    std::deque<std::string> chunks_;  // written, not yet handed out
    std::size_t written_ = 0;
    bool done_ = false;
};

bool blank(const std::string& value) { return value.find_first_not_of(" \t\n\r\v\f") == std::string::npos; }

// The jobs of a run, made one at a time from its sources: every combination of them (linked
// ones go value by value: with --link the shorter wraps round, with :::+ the shortest ends
// them; the first source changes slowest), -N
// records a job, or (-X, -m) the records spread over the job slots. The first source, when
// it is read from a file or standard input, is read as the jobs are made, unless all of it
// must be known first (it is linked, or -X/-m spread the records); the others are read whole.
// With --pipe a record is a chunk of standard input.
class Jobs final : public JobMaker {
public:
    Jobs(const Options& options, std::vector<Source> sources, std::string command_template,
         const std::filesystem::path& spool_dir, std::unordered_set<std::uint64_t> skip)
        : options_(options), sources_(std::move(sources)), skip_(std::move(skip)) {
        stop_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
        if (stop_fd_.get() < 0) throw Usage(fmt::format("cannot make an eventfd: {}", std::strerror(errno)));
        if (options_.pipe) {
            chunks_.emplace(options_, spool_dir, Input::open("-", stop_fd_.get()));
            sources_ = {Source{{""}, false, {}}};
        }
        const char separator = options_.null ? '\0' : '\n';
        // -X, -m without -N (or with -N0, as parallel): the records spread over the job slots.
        const bool spread = options_.multi != Multi::None && options_.max_args.value_or(0) == 0;
        const bool first_linked = sources_.size() > 1 && (options_.link || sources_[1].linked);
        // -X, -m of one source read from a file or standard input: as parallel, values fill each
        // command to its length limit as they come, and are spread over the slots only when the
        // input ends before every slot has a full command. So values are read ahead until they
        // would fill a command for each slot (then the rest streams) or the input ends.
        const bool fill = spread && sources_.size() == 1 && !options_.header && !options_.pipe &&
                          replaces_every_value(command_template, options_.replace);
        for (std::size_t s = 0; s < sources_.size(); ++s) {
            if (sources_[s].file.empty()) continue;
            ValueReader reader(Input::open(sources_[s].file, stop_fd_.get()), separator);
            if (s == 0 && !spread && !first_linked) {
                stream_.emplace(std::move(reader));
                continue;
            }
            if (fill) {
                const std::size_t enough =
                    static_cast<std::size_t>(job_slots(options_.jobs, std::size_t{1} << 30)) * kMostCommandBytes;
                std::size_t bytes = 0;
                std::string value;
                while (bytes <= enough && reader.next(value)) {
                    bytes += value.size() + 1;
                    ahead_.push_back(std::move(value));
                }
                if (bytes > enough) {  // more than the slots' commands hold: fill them as values come
                    stream_.emplace(std::move(reader));
                    filling_ = true;
                    continue;
                }
                sources_[s].values.assign(std::make_move_iterator(ahead_.begin()),
                                          std::make_move_iterator(ahead_.end()));
                ahead_.clear();
                continue;
            }
            for (std::string value; reader.next(value);) sources_[s].values.push_back(std::move(value));
        }
        // -r: a value of white space alone is no value, in every source (--pipe: in its chunks).
        if (options_.no_run_if_empty && !options_.pipe)
            for (Source& source : sources_) std::erase_if(source.values, blank);
        plain_values_ = !options_.colsep && options_.trim == "n";
        if (options_.colsep) {
            try {
                colsep_.emplace(*options_.colsep);
            } catch (const std::invalid_argument& e) {
                throw Usage(fmt::format("--colsep: '{}' is not a regular expression: {}", printable(*options_.colsep),
                                        e.what()));
            }
        }
        // --header :: each source's first value names it.
        if (options_.header) {
            long position = 1;
            for (std::size_t s = 0; s < sources_.size(); ++s) {
                std::string first;
                if (s == 0 && stream_) {
                    if (!stream_value(first)) continue;
                } else if (sources_[s].values.empty()) {
                    continue;
                } else {
                    first = sources_[s].values.front();
                    sources_[s].values.erase(sources_[s].values.begin());
                }
                // As parallel: the names are the header's columns untrimmed ("n , m" names "n " and " m").
                const std::vector<std::string> names = colsep_ ? split(first, true) : columns(first);
                for (const std::string& name : names) names_.emplace(name, position++);
            }
        }
        if (stream_) {
            std::string first;
            if (stream_value(first))
                pending_ = std::move(first);
            else
                stream_.reset();  // no value: as an empty source of ::: (below)
        }
        // As parallel: `:::` with no value is one empty value when another source has values.
        const bool any = pending_ || std::any_of(sources_.begin(), sources_.end(),
                                                 [](const Source& source) { return !source.values.empty(); });
        if (any)
            for (std::size_t s = 0; s < sources_.size(); ++s)
                if (sources_[s].values.empty() && !(s == 0 && stream_)) sources_[s].values.emplace_back();
        for (std::size_t s = 0; s < sources_.size(); ++s) {
            if (s > 0 && (sources_[s].linked || options_.link))
                groups_.back().push_back(s);
            else
                groups_.push_back({s});
        }
        // As parallel: --link goes to the end of the longest source, the shorter wrapping
        // round; :::+ and ::::+ stop at the end of the shortest.
        for (const auto& group : groups_) {
            std::size_t length = sources_[group.front()].values.size();
            for (std::size_t s : group)
                length = options_.link ? std::max(length, sources_[s].values.size())
                                       : std::min(length, sources_[s].values.size());
            if (length == 0 && !(stream_ && group.front() == 0)) none_ = true;
            lengths_.push_back(length);
        }
        index_.assign(groups_.size(), 0);
        // Jobs: a record each, -N of them, or (-X, -m) the records spread over the job slots.
        if (options_.pipe) {
            per_job_ = 1;  // a chunk each (-N N is N records a chunk)
        } else if (options_.max_args.value_or(0) > 0) {
            per_job_ = *options_.max_args;  // also with -X, -m: -n 2 -X is two a command
        } else if (filling_) {
            per_job_ = std::numeric_limits<std::size_t>::max();  // cut at the length limit alone
        } else if (spread && !none_) {
            std::size_t records = 1;
            for (std::size_t length : lengths_) records *= length;
            const auto slots = static_cast<std::size_t>(job_slots(options_.jobs, records));
            per_job_ = (records + slots - 1) / slots;
        }
        const std::vector<Piece> pieces = pieces_of(command_template, names_, options_.replace);
        const bool append = !replaces(pieces) && !options_.pipe;
        template_ = append ? command_template + " " + options_.replace : command_template;
        pieces_ = append ? pieces_of(template_, names_, options_.replace) : pieces;
        if (options_.tagstring) tag_pieces_ = pieces_of(*options_.tagstring, names_, options_.replace);
        if (options_.multi != Multi::None && !options_.pipe) {
            for (std::size_t at = 0; at < template_.size();) {
                const auto start = template_.find_first_not_of(" \t", at);
                if (start == std::string::npos) break;
                auto end = template_.find_first_of(" \t", start);
                if (end == std::string::npos) end = template_.size();
                const std::vector<Piece> word =
                    pieces_of(template_.substr(start, end - start), names_, options_.replace);
                const auto all = static_cast<std::size_t>(
                    std::count_if(word.begin(), word.end(), [](const Piece& p) { return p.kind == Piece::Kind::All; }));
                per_arg_.words += all;
                const std::size_t replaced = all * options_.replace.size();  // {} itself is not repeated
                if (all > 0 && options_.multi == Multi::X && end - start > replaced)
                    per_arg_.text += end - start - replaced;
                at = end;
            }
            per_arg_.budget = kMostCommandBytes > template_.size() ? kMostCommandBytes - template_.size() : 0;
        }
    }
    ~Jobs() override = default;
    Jobs(const Jobs&) = delete;
    Jobs& operator=(const Jobs&) = delete;

    bool next(ParallelJob& job) override {
        std::vector<std::string> more;
        while (true) {
            std::vector<std::string> args, raw, record;
            std::size_t taken = 0;
            std::string chunk;
            std::size_t bytes = 0;  // -X, -m: what the arguments add to the command, at most
            for (; taken < per_job_; ++taken) {
                if (held_) {
                    record = std::move(*held_);
                    held_.reset();
                } else if (!next_record(record, chunk)) {
                    break;
                }
                // A value is its one column unless --colsep or --trim change it (-X: tens of
                // thousands of values a job, each copied once).
                more.clear();
                if (!plain_values_)
                    for (const std::string& value : record)
                        for (std::string& column : columns(value)) more.push_back(std::move(column));
                std::vector<std::string>& these = plain_values_ ? record : more;
                if (per_arg_.words > 0) {
                    // As parallel: a command line of many arguments is cut at its length limit.
                    std::size_t cost = 0;
                    for (const std::string& arg : these)
                        cost += per_arg_.words * (quoted_size(arg) + 1) + per_arg_.text;
                    if (taken > 0 && bytes + cost > per_arg_.budget) {
                        held_ = std::move(record);  // the next job's first
                        break;
                    }
                    bytes += cost;
                }
                if (taken == 0 && !options_.results.empty()) raw = record;  // --results: the first record names it
                for (std::string& arg : these) args.push_back(std::move(arg));
            }
            if (taken == 0) return false;
            const std::uint64_t sequence = ++sequence_;
            if (skip_.contains(sequence)) {  // --resume: done before
                if (!chunk.empty()) ::unlink(chunk.c_str());
                continue;
            }
            if (options_.max_args == std::size_t{0} && !options_.pipe) args.clear();  // -N0: none inserted
            job = make(args, raw, sequence, taken);
            job.stdin_path = std::move(chunk);
            return true;
        }
    }
    bool ready() override {
        if (chunks_) return chunks_->ready();
        if (held_) return true;
        if (!stream_ || have_current_) return true;
        return pending_ || !ahead_.empty() || stream_->ready();
    }
    void stop() override {
        const std::uint64_t one = 1;
        [[maybe_unused]] const auto written = ::write(stop_fd_.get(), &one, sizeof one);
    }

private:
    // --trim: of each column (of each value without --colsep).
    std::vector<std::string> columns(const std::string& value) const {
        if (!colsep_) return {trimmed(value, options_.trim)};
        std::vector<std::string> parts = split(value);
        for (std::string& part : parts) part = trimmed(std::move(part), options_.trim);
        return parts;
    }

    // --colsep's split of `value`, untrimmed; a match past PCRE2's limits (steps, memory, the
    // run's time) is exit 2 naming it and the value: the header, or job N's.
    std::vector<std::string> split(const std::string& value, bool header = false) const {
        try {
            return colsep_->split(value);
        } catch (const std::runtime_error& e) {
            throw ConfigError(
                fmt::format("--colsep: '{}': {}, in {} \"{}\" (a simpler pattern, or a fixed string, splits it)",
                            printable(*options_.colsep), e.what(),
                            header ? std::string("the header") : fmt::format("the value of job {}", sequence_ + 1),
                            printable(value, 40)));
        }
    }

    // The streamed first source's next value (-r: not a blank one).
    bool stream_value(std::string& value) {
        if (pending_) {
            value = std::move(*pending_);
            pending_.reset();
            return true;
        }
        while (!ahead_.empty()) {
            value = std::move(ahead_.front());
            ahead_.pop_front();
            if (!(options_.no_run_if_empty && blank(value))) return true;
        }
        while (stream_->next(value))
            if (!(options_.no_run_if_empty && blank(value))) return true;
        return false;
    }

    // The next record: each source's value; --pipe: the chunk's file in `chunk`.
    bool next_record(std::vector<std::string>& record, std::string& chunk) {
        record.assign(sources_.size(), std::string());
        if (chunks_) return chunks_->next(chunk);
        if (none_ || ended_) return false;
        const std::size_t first = stream_ ? 1 : 0;  // the groups that go round in memory
        if (stream_ && !have_current_) {
            if (!stream_value(current_)) return false;
            have_current_ = true;
        }
        if (stream_) record[0] = current_;
        for (std::size_t g = first; g < groups_.size(); ++g)
            for (std::size_t s : groups_[g]) record[s] = sources_[s].values[index_[g] % sources_[s].values.size()];
        std::size_t g = groups_.size();
        while (g > first && ++index_[g - 1] == lengths_[g - 1]) index_[--g] = 0;
        if (g == first) {
            if (stream_)
                have_current_ = false;
            else
                ended_ = true;
        }
        return true;
    }

    ParallelJob make(const std::vector<std::string>& args, const std::vector<std::string>& raw, std::uint64_t sequence,
                     std::size_t records) const {
        ParallelJob job;
        job.seq = sequence;
        // As parallel: -m -N0 repeats the word for each record, as -X does.
        const bool context = options_.multi == Multi::X || (options_.multi == Multi::M && args.empty());
        job.command = context ? expand_context(template_, names_, options_.replace, args, sequence, records)
                              : expand(pieces_, args, sequence);
        if (options_.tagstring) {
            // A tag is text, not shell code: the values go in as they are.
            for (const Piece& piece : tag_pieces_) {
                if (piece.kind == Piece::Kind::Text) {
                    job.tag += piece.text;
                } else if (piece.kind == Piece::Kind::All) {
                    for (std::size_t i = 0; i < args.size(); ++i)
                        job.tag += (i > 0 ? " " : "") + modified(args[i], piece.modifier);
                } else if (piece.kind == Piece::Kind::Sequence) {
                    job.tag += std::to_string(sequence);
                } else if (piece.kind == Piece::Kind::Slot) {
                    job.tag += kSlotInTag;  // the slot is known at the result
                } else if (piece.kind == Piece::Kind::Position) {
                    const long count = static_cast<long>(args.size());
                    const long index = piece.position > 0 ? piece.position - 1 : count + piece.position;
                    if (index >= 0 && index < count)
                        job.tag += modified(args[static_cast<std::size_t>(index)], piece.modifier);
                }
            }
        } else if (options_.tag) {
            for (std::size_t i = 0; i < args.size(); ++i) job.tag += (i > 0 ? " " : "") + args[i];
        }
        if (!options_.results.empty()) {
            std::filesystem::path dir = options_.results;
            for (std::size_t s = 0; s < sources_.size() && s < raw.size(); ++s)
                dir = dir / std::to_string(s + 1) / results_name(raw[s]);
            job.results_dir = dir.string();
        }
        return job;
    }

    const Options options_;
    std::vector<Source> sources_;
    const std::unordered_set<std::uint64_t> skip_;  // --resume: the jobs done before
    UniqueFd stop_fd_;
    std::optional<ChunkReader> chunks_;   // --pipe
    std::optional<ValueReader> stream_;   // the first source, read as it goes
    std::optional<std::string> pending_;  // its first value, read to know that it has one
    std::deque<std::string> ahead_;       // -X, -m: its values read ahead, before the rest of it
    bool filling_ = false;                // -X, -m: commands filled to the limit as values come
    std::string current_;                 // its value in the records being made
    bool have_current_ = false;
    std::optional<ColumnSplit> colsep_;
    bool plain_values_ = false;          // no --colsep, no --trim: a value is its one column, as it is
    std::map<std::string, long> names_;  // --header :
    std::vector<std::vector<std::size_t>> groups_;
    std::vector<std::size_t> lengths_;
    std::vector<std::size_t> index_;  // of each group
    bool none_ = false;               // a source without values: no record at all
    bool ended_ = false;              // every record made
    std::size_t per_job_ = 1;
    // -X, -m: what each argument adds to a command at most: its quoted length (and a space)
    // once for each of `words` replacement strings, and `text`, the rest of the words it repeats (-X);
    // a job takes arguments while they add no more than `budget` (words 0: no limit).
    struct {
        std::size_t words = 0, text = 0, budget = 0;
    } per_arg_;
    std::optional<std::vector<std::string>> held_;  // a record taken that did not fit its job
    std::string template_;
    std::vector<Piece> pieces_, tag_pieces_;
    std::uint64_t sequence_ = 0;
};

// --resume, --resume-failed: the jobs that the joblog has (as succeeded: exit 0, no signal),
// as parallel reads it. Sets `append` when it has a header line to append after.
std::unordered_set<std::uint64_t> done_in_joblog(const std::string& path, bool only_succeeded, bool& append) {
    std::unordered_set<std::uint64_t> done;
    std::FILE* file = std::fopen(path.c_str(), "re");
    if (!file) {
        if (errno == ENOENT) return done;  // a first run: every job runs, and the joblog is made
        throw Usage(fmt::format("--joblog: cannot read '{}': {}", printable(path), std::strerror(errno)));
    }
    char* text = nullptr;
    std::size_t capacity = 0;
    std::size_t number = 0;
    const auto malformed = [&](std::string_view line, std::string_view why) {
        std::string message = fmt::format("--joblog {}:{}: not a joblog line ({}): '{}'", printable(path), number, why,
                                          printable(line, 100));
        std::free(text);
        std::fclose(file);
        return Usage(message);
    };
    for (ssize_t length; (length = ::getline(&text, &capacity, file)) > 0;) {
        std::string_view line(text, static_cast<std::size_t>(length));
        if (line.back() == '\n') line.remove_suffix(1);
        if (++number == 1) {  // the header, as parallel takes it: whatever the first line is
            append = true;
            continue;
        }
        // Seq Host Starttime JobRuntime Send Receive Exitval Signal Command, split at tabs
        // (the command may hold more).
        std::string_view fields[8];
        std::string_view rest = line;
        for (std::string_view& field : fields) {
            const std::size_t tab = rest.find('\t');
            if (tab == std::string_view::npos) throw malformed(line, "fewer than 9 tab-separated fields");
            field = rest.substr(0, tab);
            rest.remove_prefix(tab + 1);
        }
        std::uint64_t seq = 0;
        if (const auto [end, ec] = std::from_chars(fields[0].data(), fields[0].data() + fields[0].size(), seq);
            fields[0].empty() || ec != std::errc{} || end != fields[0].data() + fields[0].size())
            throw malformed(line, "Seq is not a whole number below 2^64");
        for (std::size_t f = 2; f < 8; ++f) {  // JobRuntime comes padded with spaces
            std::string_view value = fields[f];
            while (value.starts_with(' ')) value.remove_prefix(1);
            while (value.ends_with(' ')) value.remove_suffix(1);
            if (value.empty() || value.find_first_not_of("-0123456789.") != std::string_view::npos)
                throw malformed(line, "a field from Starttime to Signal is not a number");
        }
        if (!only_succeeded || (fields[6] == "0" && fields[7] == "0")) done.insert(seq);
    }
    std::free(text);
    std::fclose(file);
    return done;
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
                options.max_args = whole_number(flag, value_of(flag, inline_value));
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
            else if (name == "results" || name == "res") {
                options.results = value_of(flag, inline_value);
                // parallel's other forms: one table (NAME.csv, .tsv, .json), or a file per job named
                // by replacement strings; only the tree of directories is made here.
                for (const char* table : {".csv", ".tsv", ".json"})
                    if (options.results.ends_with(table))
                        throw Usage(
                            fmt::format("{} {}: one {} table of every job is not supported: give a "
                                        "directory (DIR/1/VALUE/stdout, ...)",
                                        flag, printable(options.results), table + 1));
                if (replaces(pieces_of(options.results, {})))
                    throw Usage(
                        fmt::format("{} {}: a file per job named by replacement strings is not supported: "
                                    "give a directory (DIR/1/VALUE/stdout, ...)",
                                    flag, printable(options.results)));
            } else if (name == "retries") {
                options.retries = static_cast<std::uint32_t>(whole_number(flag, value_of(flag, inline_value)));
                if (options.retries == 0)
                    throw Usage(
                        "--retries 0 (parallel: try a failing job forever) is not supported: give the "
                        "tries in all, e.g. --retries 100");
            } else if (name == "a" || name == "arg-file")
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
            else if (name == "timeout")
                options.timeout_s = seconds(flag, value_of(flag, inline_value));
            else if (name == "delay")
                options.delay_s = seconds(flag, value_of(flag, inline_value));
            else {
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
                else if (name == "line-buffer" || name == "lb")
                    options.live = ParallelOutput::Live::Lines;
                else if (name == "u" || name == "ungroup")
                    options.live = ParallelOutput::Live::Bytes;
                else if (name == "resume")
                    options.resume = true;
                else if (name == "resume-failed")
                    options.resume_failed = true;
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
        // As parallel: --colsep trims its columns unless --trim says otherwise.
        if (options.trim.empty()) options.trim = options.colsep ? "lr" : "n";
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
        if (command_template.empty())
            throw Usage("no command: give COMMAND before ::: (running each input as a command is not supported)");
        std::vector<Source> sources;
        for (const std::string& file : options.arg_files) sources.push_back({{}, false, file});
        while (at < argc) {
            const std::string kind = argv[at++];
            const bool files = kind.starts_with("::::");
            const bool linked = kind.back() == '+';
            if (linked && sources.empty())
                throw Usage(fmt::format("{} links to the input source before it, and there is none", kind));
            std::vector<std::string> values;
            for (; at < argc && !separator(argv[at]); ++at) values.push_back(argv[at]);
            if (files) {
                for (std::size_t i = 0; i < values.size(); ++i) sources.push_back({{}, linked && i == 0, values[i]});
            } else {
                sources.push_back({std::move(values), linked, {}});
            }
        }
        if (sources.empty() && !options.pipe) sources.push_back({{}, false, "-"});

        // --resume, --resume-failed: the jobs the joblog has (as succeeded) are not run again.
        std::string joblog = options.joblog;
        bool joblog_append = false;
        if (joblog.starts_with('+')) {  // --joblog +FILE: appended to, without a header
            joblog.erase(0, 1);
            joblog_append = true;
        }
        std::unordered_set<std::uint64_t> skip;
        if (options.resume || options.resume_failed) {
            if (joblog.empty() || joblog == "-")
                throw Usage(
                    fmt::format("{} needs --joblog FILE, which it reads (--results DIR alone is not enough "
                                "here)",
                                options.resume_failed ? "--resume-failed" : "--resume"));
            if (!options.dry_run) skip = done_in_joblog(joblog, options.resume_failed, joblog_append);
        }

        auto output = std::make_shared<ParallelOutput>();
        output->spool_dir = make_spool_dir();
        auto jobs =
            std::make_unique<Jobs>(options, std::move(sources), command_template, output->spool_dir, std::move(skip));
        if (options.dry_run) {
            for (ParallelJob job; jobs->next(job);) fmt::print("{}\n", job.command);
            return ExitCode::Ok;
        }
        // The jobs whose input has come (all of them for --halt N%, which counts them): made
        // now, to know how many workers to start; the others as their input comes.
        // -X, -m: a job of thousands of values takes a millisecond to make; once there is one
        // for each slot, the workers start while the thread makes the rest.
        std::deque<ParallelJob> first;
        bool ended = false;
        const std::size_t ahead =
            options.multi == Multi::None
                ? 1024
                : static_cast<std::size_t>(job_slots(options.jobs, std::numeric_limits<std::size_t>::max() / 2));
        while (first.empty() || options.halt.percent || (first.size() < ahead && jobs->ready())) {
            ParallelJob job;
            if (!jobs->next(job)) {
                ended = true;
                break;
            }
            first.push_back(std::move(job));
        }
        if (first.empty()) return ExitCode::Ok;  // parallel runs nothing for no input
        const std::optional<std::size_t> total = ended ? std::optional<std::size_t>(first.size()) : std::nullopt;

        output->named_jobs = true;
        output->tagged = options.tag || options.tagstring.has_value();
        output->keep_order = options.keep_order;
        // With -k the output comes in job order, each job's whole (--line-buffer's bytes, later).
        output->live = options.keep_order ? ParallelOutput::Live::No : options.live;
        output->verbose = options.verbose;
        output->joblog = joblog;
        output->joblog_append = joblog_append;
        output->halt = options.halt;
        output->total = total;

        RunConfig config;
        config.worker_bin = program.worker.path;
        config.worker_prefix = program.worker.prefix;
        config.worker_command = program.worker.prefix.empty() ? std::string("worker") : program.name + " worker";
        config.command_line.assign(argv, argv + argc);
        config.command_line.insert(config.command_line.begin(), program.name);
        config.task = "command";
        const TaskType* command_type = program.registry.find("command");
        if (!command_type) throw Usage(fmt::format("{} has no command task type", program.name));
        config.modes = {Mode::Processes};
        config.modes_given = true;
        config.workers = job_slots(options.jobs, total);
        // -j 0 while the input still comes: a slot for each job that waits, as parallel's, not
        // kMostSlots idle workers for a short input: a worker starts when a job waits and
        // every worker has one (none starting), and holds one job at a time.
        const bool slot_per_job = !options.jobs.empty() && options.jobs.find_first_not_of('0') == std::string::npos;
        if (!total && slot_per_job) {
            config.spawn_on_demand = true;
            config.prefetch = 1;
        }
        config.settings["max_output"] = 1536 * 1024;  // the most a result carries (the command type's --max-output)
        config.progress = ProgressMode::Never;
        config.log_level = "warn";
        if (options.retries > 1) set_retries(config, options.retries - 1);
        config.task_timeout_s = options.timeout_s;
        // --halt: a worker holds one job at a time, so that no job starts after the one that halts;
        // --delay: so that a job starts when it is handed out.
        if (options.halt.when != ParallelHalt::When::Never || options.delay_s > 0) config.prefetch = 1;
        config.plan_source =
            std::make_shared<ParallelJobs>(std::move(first), ended ? nullptr : std::move(jobs), *command_type,
                                           options.wd, options.timeout_s, options.delay_s, output);
        // A stream longer than a result holds comes whole through a file there.
        config.settings["spill_dir"] = output->spool_dir.string();
        config.parallel = std::move(output);
        return config;
    } catch (const Usage& e) {
        fmt::print(stderr, "{}: {}\n", who, e.what());
        return static_cast<ExitCode>(e.status);
    } catch (const ConfigError& e) {  // an input that cannot be read
        fmt::print(stderr, "{}: {}\n", who, e.what());
        return ExitCode::Usage;
    }
}

}  // namespace taskfarm
