#include "outputs.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <stdexcept>

#include <fmt/format.h>

#include "checks.hpp"
#include "errors.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

namespace fs = std::filesystem;

enum class Kind { Missing, Regular, Directory, Stream, Descriptor };

// Where a path leads once its symlinks are followed. `path` is the resolved one, except for
// a Descriptor (a name of an open file descriptor, like /dev/fd/3 or /dev/stdout), which
// only means something through the /proc link it passes: renaming onto what that link
// points to would detach the file from whoever holds the descriptor.
struct Resolved {
    Kind kind = Kind::Missing;
    fs::path path;
    struct stat st {};
    int own_fd = -1;  // a Descriptor of this process: the descriptor itself
};

std::runtime_error write_error(const fs::path& path, std::string_view reason) {
    return std::runtime_error(fmt::format("cannot write '{}': {}", printable(path.string()), reason));
}

// /proc/PID/fd, where every entry is a link to an open file description.
bool is_descriptor_dir(const fs::path& dir) {
    const std::string text = dir.string();
    if (!text.starts_with("/proc/") || !text.ends_with("/fd")) return false;
    const std::string_view middle = std::string_view(text).substr(6, text.size() - 6 - 3);
    return !middle.empty() && middle.find('/') == std::string_view::npos;
}

// Follows `given` one link at a time, resolving each directory part with realpath(), so
// that a dangling link leads to the new path it names and /dev/fd/N is seen to be one.
Resolved resolve(const fs::path& given) {
    fs::path path = given;
    for (int hops = 0; hops < 40; ++hops) {
        const fs::path parent = path.has_parent_path() ? path.parent_path() : fs::path(".");
        char* real = ::realpath(parent.c_str(), nullptr);
        if (!real) throw write_error(given, std::strerror(errno));
        const fs::path dir(real);
        std::free(real);
        Resolved resolved;
        if (is_descriptor_dir(dir)) {
            if (::stat(path.c_str(), &resolved.st) != 0) throw write_error(given, std::strerror(errno));
            resolved.kind = Kind::Descriptor;
            resolved.path = path;
            const std::string name = path.filename().string();
            if (dir == fs::path(fmt::format("/proc/{}/fd", ::getpid())) && !name.empty() &&
                name.find_first_not_of("0123456789") == std::string::npos && name.size() < 9)
                resolved.own_fd = parse_whole<int>(name).value_or(-1);
            return resolved;
        }
        resolved.path = path.filename().empty() ? dir : dir / path.filename();
        if (::lstat(resolved.path.c_str(), &resolved.st) != 0) {
            if (errno != ENOENT) throw write_error(given, std::strerror(errno));
            resolved.kind = Kind::Missing;
            return resolved;
        }
        if (S_ISLNK(resolved.st.st_mode)) {
            std::error_code ec;
            const fs::path target = fs::read_symlink(resolved.path, ec);
            if (ec) throw write_error(given, ec.message());
            path = target.is_absolute() ? target : dir / target;
            continue;
        }
        resolved.kind = S_ISDIR(resolved.st.st_mode)   ? Kind::Directory
                        : S_ISREG(resolved.st.st_mode) ? Kind::Regular
                                                       : Kind::Stream;
        return resolved;
    }
    throw write_error(given, std::strerror(ELOOP));
}

bool same_inode(const struct stat& a, const struct stat& b) { return a.st_dev == b.st_dev && a.st_ino == b.st_ino; }

std::optional<struct stat> stdout_stat() {
    struct stat st {};
    if (::fstat(STDOUT_FILENO, &st) != 0) return std::nullopt;
    return st;
}

bool names_stdout(const Resolved& resolved) {
    if (resolved.kind != Kind::Descriptor) return false;
    if (resolved.own_fd >= 0) return resolved.own_fd == STDOUT_FILENO;
    const auto out = stdout_stat();
    return out && same_inode(*out, resolved.st);
}

void write_all(int fd, std::string_view text, const fs::path& path) {
    while (!text.empty()) {
        const ssize_t written = ::write(fd, text.data(), text.size());
        if (written < 0) {
            if (errno == EINTR) continue;
            throw write_error(path, std::strerror(errno));
        }
        text.remove_prefix(static_cast<std::size_t>(written));
    }
}

void write_to_stdout(std::string_view text) {
    std::fflush(stdout);  // what the console printed before comes first
    write_all(STDOUT_FILENO, text, "-");
}

// Straight into a FIFO, a terminal, a device or a descriptor's file. Opened without
// blocking, so that a FIFO nobody reads is an error (ENXIO) rather than a hang.
void write_in_place(const fs::path& path, std::string_view text, bool truncate) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NONBLOCK | (truncate ? O_TRUNC : 0));
    if (fd < 0) throw write_error(path, errno == ENXIO ? "nothing is reading from it" : std::strerror(errno));
    try {
        ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);  // a full pipe waits for its reader
        write_all(fd, text, path);
    } catch (...) {
        ::close(fd);
        throw;
    }
    if (::close(fd) != 0) throw write_error(path, std::strerror(errno));
}

fs::path temp_path_for(const fs::path& path) { return path.string() + fmt::format(".tmp{}", ::getpid()); }

// A new file beside `path`, O_EXCL so that no link planted at its name is followed.
int create_temp(const fs::path& temp) {
    int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && errno == EEXIST) {  // left by a killed run whose pid was ours
        ::unlink(temp.c_str());
        fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    }
    return fd;
}

// A temp file renamed over `path` (resolved: a regular file or a new path), with the mode,
// and where we may, the owner of the file it replaces.
void replace(const fs::path& path, std::string_view text, const struct stat* existing) {
    const fs::path temp = temp_path_for(path);
    const int fd = create_temp(temp);
    if (fd < 0) throw write_error(path, std::strerror(errno));
    try {
        if (existing) {
            if (::fchmod(fd, existing->st_mode & 07777) != 0) throw write_error(path, std::strerror(errno));
            // Root would otherwise hand a user's file over to root; anyone else may keep only
            // what they could set anyway, so a refusal here changes nothing.
            [[maybe_unused]] const int kept_owner = ::fchown(fd, existing->st_uid, existing->st_gid);
        }
        write_all(fd, text, path);
        if (::close(fd) != 0) throw write_error(path, std::strerror(errno));
    } catch (...) {
        ::close(fd);
        ::unlink(temp.c_str());
        throw;
    }
    if (::rename(temp.c_str(), path.c_str()) != 0) {
        const int error = errno;
        ::unlink(temp.c_str());
        throw write_error(path, std::strerror(error));
    }
}

}  // namespace

bool is_stdout(const fs::path& path) {
    if (path == "-") return true;
    try {
        return names_stdout(resolve(path));
    } catch (const std::runtime_error&) {
        return false;  // check_report_path says why
    }
}

void check_report_path(const char* flag, const fs::path& path) {
    if (path.empty() || path == "-") return;
    try {
        const Resolved resolved = resolve(path);
        switch (resolved.kind) {
            case Kind::Directory: throw write_error(path, "it is a directory");
            case Kind::Descriptor:
            case Kind::Stream:
                if (::access(resolved.path.c_str(), W_OK) != 0) throw write_error(path, std::strerror(errno));
                return;
            case Kind::Regular:
            case Kind::Missing: {
                // The rename needs the directory: try the temp file the end of the run will make.
                const fs::path temp = temp_path_for(resolved.path);
                const int fd = create_temp(temp);
                if (fd < 0) throw write_error(path, std::strerror(errno));
                ::close(fd);
                ::unlink(temp.c_str());
                return;
            }
        }
    } catch (const std::runtime_error& e) {
        throw ConfigError(fmt::format("{}: {}", flag, e.what()));
    }
}

void write_report(const fs::path& path, std::string_view text) {
    if (path == "-") return write_to_stdout(text);
    const Resolved resolved = resolve(path);
    switch (resolved.kind) {
        case Kind::Directory: throw write_error(path, "it is a directory");
        case Kind::Descriptor:
            if (names_stdout(resolved)) return write_to_stdout(text);
            // One of our own descriptors (/dev/stderr, /dev/fd/3 of `3>file`, bash's >(...)):
            // written through as it is, after what was written to it before, never truncated.
            if (resolved.own_fd >= 0) {
                if (resolved.own_fd == STDERR_FILENO) std::fflush(stderr);
                return write_all(resolved.own_fd, text, path);
            }
            return write_in_place(resolved.path, text, S_ISREG(resolved.st.st_mode));
        case Kind::Stream: return write_in_place(resolved.path, text, false);
        case Kind::Regular: return replace(resolved.path, text, &resolved.st);
        case Kind::Missing: return replace(resolved.path, text, nullptr);
    }
}

namespace {

// The device and inode of what `fd` is open on, when it is a regular file.
std::string descriptor_identity(int fd) {
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) return {};
    return fmt::format("{}:{}", st.st_dev, st.st_ino);
}

// What identifies the file behind `file`, for comparing; empty when it is not compared.
std::string identity(const NamedFile& file) {
    using Role = NamedFile::Role;
    if (file.role == Role::Console) return descriptor_identity(file.fd);
    if (file.path == "-") {
        if (file.role == Role::Input) {  // `--inputs - < L` reads L
            const std::string id = descriptor_identity(STDIN_FILENO);
            return id.empty() ? "stdin" : id;
        }
        const auto out = stdout_stat();
        return out && S_ISREG(out->st_mode) ? fmt::format("{}:{}", out->st_dev, out->st_ino) : "stdout";
    }
    Resolved resolved;
    try {
        resolved = resolve(file.path);
    } catch (const std::runtime_error&) {
        return {};  // opening it will say why
    }
    switch (resolved.kind) {
        case Kind::Missing: return "new:" + resolved.path.lexically_normal().string();
        case Kind::Regular: return fmt::format("{}:{}", resolved.st.st_dev, resolved.st.st_ino);
        case Kind::Descriptor:
            if (S_ISREG(resolved.st.st_mode)) return fmt::format("{}:{}", resolved.st.st_dev, resolved.st.st_ino);
            return file.role == Role::Output && names_stdout(resolved) ? "stdout" : "";
        case Kind::Directory:
        case Kind::Stream: return {};
    }
    return {};
}

bool reads(const NamedFile& file) {
    return file.role == NamedFile::Role::Input || file.role == NamedFile::Role::Journal;
}
bool writes(const NamedFile& file) { return file.role != NamedFile::Role::Input; }

// Whether two files that are one file may be given together: see check_distinct().
bool may_share(const NamedFile& a, const NamedFile& b) {
    using Role = NamedFile::Role;
    const std::string_view x = a.flag, y = b.flag;
    if ((x == "--resume" && y == "--results") || (x == "--results" && y == "--resume")) return true;
    if (a.role == Role::Input && b.role == Role::Input) return true;  // read twice, written never
    // Standard output and error count only against what the run reads: a report on `-`
    // is meant to go there.
    if (a.role == Role::Console || b.role == Role::Console) return !reads(a) && !reads(b);
    return false;
}

}  // namespace

void check_journal_path(const char* flag, const fs::path& path) {
    if (path.empty()) return;
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0 || S_ISREG(st.st_mode)) return;  // a missing one: opening it says why
    const char* what = S_ISFIFO(st.st_mode)   ? "a FIFO"
                       : S_ISDIR(st.st_mode)  ? "a directory"
                       : S_ISCHR(st.st_mode)  ? "a character device"
                       : S_ISSOCK(st.st_mode) ? "a socket"
                                              : "not a regular file";
    throw ConfigError(
        fmt::format("{}: cannot use '{}' as a journal: it is {}; a journal must be a regular file, which "
                    "the run locks, repairs and appends to (`report` reads a journal from a stream)",
                    flag, printable(path.string()), what));
}

bool same_file(const fs::path& a, const fs::path& b) {
    const std::string first = identity({"", a}), second = identity({"", b});
    return first.empty() ? a == b : first == second;
}

void check_distinct(const std::vector<NamedFile>& files) {
    std::vector<std::pair<const NamedFile*, std::string>> seen;
    for (const NamedFile& file : files) {
        if (file.path.empty() && file.role != NamedFile::Role::Console) continue;
        const std::string id = identity(file);
        if (id.empty()) continue;
        for (const auto& [earlier, earlier_id] : seen) {
            if (earlier_id != id || may_share(*earlier, file)) continue;
            // Named by the flag the user gave: standard output or error only as the other file.
            const bool console = file.role == NamedFile::Role::Console;
            const NamedFile& flag = console ? *earlier : file;
            const NamedFile& other = console ? file : *earlier;
            const bool overwrites_input = (reads(*earlier) && writes(file)) || (reads(file) && writes(*earlier));
            throw ConfigError(fmt::format("{}: cannot use '{}': it is the same file as {}{}", flag.flag,
                                          printable(flag.path.string()),
                                          other.role == NamedFile::Role::Console
                                              ? std::string(other.flag)
                                              : fmt::format("{} '{}'", other.flag, printable(other.path.string())),
                                          overwrites_input ? ", and a run never writes to a file it reads" : ""));
        }
        seen.emplace_back(&file, id);
    }
}

}  // namespace taskfarm
