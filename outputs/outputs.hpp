#pragma once
// The files the coordinator reads and writes by name: --plan, --urls, --json, --trace,
// --timeline, --results, --resume. How a report reaches its path (docs/observability.md):
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
    const char* flag;
    std::filesystem::path path;
    bool input = false;
};

// Throws ConfigError naming both flags when two of `files` are the same file: the same
// device and inode, or the same path after symlinks and `..` are resolved when it does not
// exist yet, or `-` for two outputs. `--resume F --results F` is the one pair allowed: a
// resumed journal is appended to. Empty paths are skipped; streams (pipes, terminals)
// named by path are not compared.
void check_distinct(const std::vector<NamedFile>& files);

// Whether the two outputs are one file by the rule of check_distinct().
bool same_file(const std::filesystem::path& a, const std::filesystem::path& b);

}  // namespace taskfarm
