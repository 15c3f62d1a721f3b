#pragma once
// The files the coordinator reads and writes by name: --plan, --inputs (or a type's flag that
// is it), --json, --trace, --timeline, --results, --resume. How a report reaches its path (docs/observability.md):
//   `-`, or a path naming our own stdout (/dev/stdout): written to standard output;
//   a regular file, or a new path: a temp file beside it renamed over it, keeping its mode;
//   a symlink: followed, and the file it resolves to is written that way;
//   a descriptor of this process (/dev/fd/N, /dev/stderr): written through it, after what
//   is there, never truncated; anything else (a FIFO, a terminal, /dev/null): written
//   straight into it;
//   a directory: refused before the run.

#include <filesystem>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace taskfarm {

// Whether `path` means standard output for a report: `-`, or a name of the file
// descriptor 1 this process holds (/dev/stdout, /dev/fd/1, /proc/self/fd/1).
bool is_stdout(const std::filesystem::path& path);

// Throws ConfigError naming `flag` unless a report can be written to `path` as above:
// checked before the run, so that a bad path costs nothing.
void check_report_path(const char* flag, const std::filesystem::path& path);

// Writes the report to `path` as above, so that a reader never sees half of a file it
// opened by name. Throws std::runtime_error ("cannot write 'PATH': REASON").
void write_report(const std::filesystem::path& path, std::string_view text);

// One file a run reads or writes: the flag and its value; an input's `-` is stdin.
struct NamedFile {
    enum class Role {
        Output,   // written: a report, a journal
        Input,    // read: --plan, --inputs (or a type's flag that is it), --worker-bin
        Journal,  // --resume: read, then appended to
        Console,  // standard output or error (`fd`), by whatever the shell made of them
    };
    const char* flag;
    std::filesystem::path path;
    Role role = Role::Output;
    int fd = -1;  // a Console's descriptor
};

// The one rule for the files of a run: throws ConfigError naming both flags when a file
// the run reads is also one it writes (an input and an output, or an input and the
// shell's redirection of standard output or error), or when two outputs are one file.
// "The same file": the same device and inode, or the same path after symlinks and `..`
// are resolved when it does not exist yet, or `-` for two outputs; an input's `-` is
// standard input, compared by what it is open on. Allowed: two inputs that are one file,
// and `--resume F --results F` (a resumed journal is appended to). Empty paths are
// skipped; streams (pipes, terminals) named by path are not compared.
void check_distinct(const std::vector<NamedFile>& files);

// Throws ConfigError naming `flag` unless `path` (--results, --resume) is a regular file or
// a new path: a journal is locked, cut back to its last complete line and appended to, and
// opening a FIFO for that would wait for a peer that may never come (decision 121).
void check_journal_path(const char* flag, const std::filesystem::path& path);

// Whether the two outputs are one file by the rule of check_distinct().
bool same_file(const std::filesystem::path& a, const std::filesystem::path& b);

}  // namespace taskfarm
