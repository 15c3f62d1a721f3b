// Download tasks: libcurl's easy interface, one handle per thread kept across tasks, the
// body streamed into an unnamed file in the output directory and named when complete.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <type_traits>

#include <curl/curl.h>
#include <fmt/format.h>

#include "builtin.hpp"
#include "digest.hpp"
#include "download.hpp"
#include "image_server.hpp"
#include "lazy_library.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

constexpr auto kFirstBackoff = std::chrono::milliseconds(250);
constexpr auto kMaxBackoff = std::chrono::seconds(4);
constexpr auto kDeadlineTimerSlack = std::chrono::milliseconds(50);

// The libcurl functions this file calls. libcurl is loaded at the first download or URL
// check, not when the process starts (decision 55), so the build passes its soname and links
// only its headers.
struct CurlApi {
    decltype(&curl_global_init) global_init;
    decltype(&curl_easy_strerror) easy_strerror;
    decltype(&curl_easy_init) easy_init;
    decltype(&curl_easy_reset) easy_reset;
    decltype(&curl_easy_cleanup) easy_cleanup;
    decltype(&curl_easy_setopt) easy_setopt;
    decltype(&curl_easy_perform) easy_perform;
    decltype(&curl_easy_getinfo) easy_getinfo;
    decltype(&curl_url) url;
    decltype(&curl_url_cleanup) url_cleanup;
    decltype(&curl_url_set) url_set;
    decltype(&curl_url_get) url_get;
    decltype(&curl_url_strerror) url_strerror;
    decltype(&curl_free) free;
};

// libcurl, loaded and initialised once (a function-local static: curl_global_init is not
// thread-safe everywhere). A failure throws, and the next call tries again.
const CurlApi& libcurl() {
    static const CurlApi api = [] {
        void* library = lazy::open(TASKFARM_CURL_SONAME);
#define TASKFARM_CURL(name) TASKFARM_LAZY_FUNCTION(library, TASKFARM_CURL_SONAME, name)
        const CurlApi loaded{
            TASKFARM_CURL(curl_global_init),  TASKFARM_CURL(curl_easy_strerror), TASKFARM_CURL(curl_easy_init),
            TASKFARM_CURL(curl_easy_reset),   TASKFARM_CURL(curl_easy_cleanup),  TASKFARM_CURL(curl_easy_setopt),
            TASKFARM_CURL(curl_easy_perform), TASKFARM_CURL(curl_easy_getinfo),  TASKFARM_CURL(curl_url),
            TASKFARM_CURL(curl_url_cleanup),  TASKFARM_CURL(curl_url_set),       TASKFARM_CURL(curl_url_get),
            TASKFARM_CURL(curl_url_strerror), TASKFARM_CURL(curl_free)};
#undef TASKFARM_CURL
        if (const CURLcode code = loaded.global_init(CURL_GLOBAL_DEFAULT); code != CURLE_OK)
            throw std::runtime_error(fmt::format("cannot initialise libcurl: {}", loaded.easy_strerror(code)));
        return loaded;
    }();
    return api;
}

// A CURLU, freed on every path.
class Url {
public:
    Url() : url_(libcurl().url()) {
        if (!url_) throw std::bad_alloc();
    }
    ~Url() { libcurl().url_cleanup(url_); }
    Url(const Url&) = delete;
    Url& operator=(const Url&) = delete;
    CURLU* get() const { return url_; }

    std::string part(CURLUPart which) const {
        char* text = nullptr;
        if (libcurl().url_get(url_, which, &text, 0) != CURLUE_OK) return {};
        std::string copy = text;
        libcurl().free(text);
        return copy;
    }

private:
    CURLU* url_;
};

// The easy handle of this thread. Kept across tasks, so a connection (and its TLS session)
// to a host serves the next task too; reset before each task, which keeps the connections.
struct Handle {
    CURL* curl = nullptr;
    ~Handle() {
        if (curl) libcurl().easy_cleanup(curl);
    }
};
thread_local Handle this_thread_handle;

// Closes the connections that the calling thread's handle keeps open for the next task;
// the next download opens new ones.
void close_connections() {
    if (!this_thread_handle.curl) return;  // never downloaded: libcurl may not even be loaded
    libcurl().easy_cleanup(this_thread_handle.curl);
    this_thread_handle.curl = nullptr;
}

CURL* thread_handle() {
    if (!this_thread_handle.curl) this_thread_handle.curl = libcurl().easy_init();
    if (!this_thread_handle.curl) throw std::runtime_error("cannot create a libcurl handle");
    libcurl().easy_reset(this_thread_handle.curl);
    return this_thread_handle.curl;
}

// When the task ends: resets the handle, so it keeps no pointer into this task's stack; or,
// unless the task succeeded, closes it with its connections. A server that broke HTTP (a body
// after a 304, say) can leave bytes that the next request on its connection would read as
// its own response ("Received HTTP/0.9"), failing a task that did nothing wrong.
struct EndOfTask {
    bool succeeded = false;
    ~EndOfTask() {
        if (succeeded)
            libcurl().easy_reset(this_thread_handle.curl);
        else
            close_connections();
    }
};

std::system_error os_error(const std::string& what) { return {errno, std::generic_category(), what}; }

// The body being downloaded. Where the file system allows it, an unnamed file (O_TMPFILE)
// in the output directory, which vanishes with its process whatever kills it; elsewhere a
// hidden ".taskfarm-*.part" file that the destructor removes. commit() names it.
class PartFile {
public:
    explicit PartFile(const fs::path& dir) : dir_(dir) {
        fd_ = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0644);
        if (fd_ >= 0) return;
        if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL)
            throw os_error(fmt::format("cannot create a file in '{}'", dir.string()));
        std::string pattern = (dir / ".taskfarm-XXXXXX.part").string();
        fd_ = ::mkostemps(pattern.data(), 5, O_CLOEXEC);
        if (fd_ < 0) throw os_error(fmt::format("cannot create a file in '{}'", dir.string()));
        named_ = pattern;
        ::fchmod(fd_, 0644);
    }
    ~PartFile() {
        if (fd_ >= 0) ::close(fd_);
        if (!named_.empty()) ::unlink(named_.c_str());
    }
    PartFile(const PartFile&) = delete;
    PartFile& operator=(const PartFile&) = delete;

    void write(const char* data, std::size_t size) {
        while (size > 0) {
            const ssize_t written = ::write(fd_, data, size);
            if (written < 0 && errno == EINTR) continue;
            if (written < 0) throw os_error(fmt::format("cannot write into '{}'", dir_.string()));
            data += written;
            size -= static_cast<std::size_t>(written);
        }
    }

    // Empties the file for another try.
    void clear() {
        if (::ftruncate(fd_, 0) != 0 || ::lseek(fd_, 0, SEEK_SET) != 0)
            throw os_error(fmt::format("cannot truncate a file in '{}'", dir_.string()));
    }

    // Gives the file the name `target` (in the same directory), replacing a file of that name
    // atomically. An unnamed file is first linked under a hidden temporary name, since
    // linkat() cannot replace.
    void commit(const fs::path& target) {
        if (named_.empty()) {
            static std::atomic<unsigned> counter{0};
            const fs::path temp = dir_ / fmt::format(".taskfarm-{}-{}.part", ::getpid(), counter++);
            const std::string proc = fmt::format("/proc/self/fd/{}", fd_);
            if (::linkat(fd_, "", AT_FDCWD, temp.c_str(), AT_EMPTY_PATH) != 0 &&  // needs CAP_DAC_READ_SEARCH
                ::linkat(AT_FDCWD, proc.c_str(), AT_FDCWD, temp.c_str(), AT_SYMLINK_FOLLOW) != 0)
                throw os_error(fmt::format("cannot name the downloaded file '{}'", temp.string()));
            named_ = temp;
        }
        if (::rename(named_.c_str(), target.c_str()) != 0)
            throw os_error(fmt::format("cannot rename the downloaded file to '{}'", target.string()));
        named_.clear();
    }

private:
    fs::path dir_;
    int fd_ = -1;
    fs::path named_;  // the file's name while it has one that is not final; empty otherwise
};

// What the callbacks of one request see and say.
struct Transfer {
    Transfer(const Context& context_, PartFile& file_, Sha256& digest_, std::uint64_t max_bytes_)
        : context(context_), file(file_), digest(digest_), max_bytes(max_bytes_) {}

    const Context& context;
    PartFile& file;
    Sha256& digest;
    std::uint64_t max_bytes = 0;                              // 0: no limit
    std::uint64_t min_speed = kMinSpeed;                      // bytes a second, averaged over stall_s
    long stall_s = static_cast<long>(kStallTimeout.count());  // slower than min_speed this long: stalled
    std::uint64_t bytes = 0;
    bool too_big = false;             // the body passed max_bytes
    std::string write_error;          // the file could not be written
    bool stopped = false;             // stop requested
    bool expired = false;             // deadline passed
    std::string content_disposition;  // of the last response, if it had one
};

std::size_t on_body(char* data, std::size_t, std::size_t size, void* user) {
    auto& transfer = *static_cast<Transfer*>(user);
    if (transfer.max_bytes > 0 && transfer.bytes + size > transfer.max_bytes) {
        transfer.too_big = true;
        return 0;  // any other count aborts the transfer with CURLE_WRITE_ERROR
    }
    try {
        transfer.file.write(data, size);
        transfer.digest.update({data, size});
    } catch (const std::exception& e) {
        transfer.write_error = e.what();
        return 0;
    }
    transfer.bytes += size;
    return size;
}

bool starts_with_ignoring_case(std::string_view text, std::string_view prefix) {
    return text.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), text.begin(), [](char a, char b) {
               return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
           });
}

bool http_or_https(std::string_view url) {
    return starts_with_ignoring_case(url, "http://") || starts_with_ignoring_case(url, "https://");
}

// Called once per header line, for every response (redirects included).
std::size_t on_header(char* data, std::size_t, std::size_t size, void* user) {
    auto& transfer = *static_cast<Transfer*>(user);
    const std::string_view line(data, size);
    constexpr std::string_view kDisposition = "content-disposition:";
    if (line.starts_with("HTTP/")) {
        transfer.content_disposition.clear();  // a new response
    } else if (starts_with_ignoring_case(line, kDisposition)) {
        std::string_view value = line.substr(kDisposition.size());
        while (!value.empty() && (value.back() == '\r' || value.back() == '\n')) value.remove_suffix(1);
        transfer.content_disposition = std::string(value);
    }
    return size;
}

// Called often while a request runs, and about once a second while nothing moves.
int on_progress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    auto& transfer = *static_cast<Transfer*>(user);
    transfer.stopped = transfer.context.stop_requested();
    transfer.expired = transfer.context.expired();
    return transfer.stopped || transfer.expired ? 1 : 0;  // nonzero: CURLE_ABORTED_BY_CALLBACK
}

// The proxy environment still applies, but never to loopback, where the tests and the
// built-in server live.
std::string no_proxy_list() {
    std::string list = "localhost,127.0.0.0/8,::1";
    for (const char* name : {"no_proxy", "NO_PROXY"})
        if (const char* value = std::getenv(name); value && *value) return std::string(value) + "," + list;
    return list;
}

long milliseconds_until(Clock::time_point when) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(when - Clock::now()).count();
    return static_cast<long>(std::clamp<std::int64_t>(left, 1, std::numeric_limits<long>::max()));
}

template <typename T>
void set(CURL* curl, CURLoption option, T value) {
    // curl_easy_setopt reads its third argument as a long, a curl_off_t or a pointer, by the
    // option; through a function pointer its own type checks do not apply, so this one does.
    static_assert(std::is_same_v<T, long> || std::is_same_v<T, curl_off_t> || std::is_pointer_v<T>,
                  "a libcurl option takes a long, a curl_off_t or a pointer");
    if (const CURLcode code = libcurl().easy_setopt(curl, option, value); code != CURLE_OK)
        throw std::runtime_error(
            fmt::format("cannot set libcurl option {}: {}", static_cast<int>(option), libcurl().easy_strerror(code)));
}

void configure(CURL* curl, const std::string& url, const Context& context, Transfer& transfer, char* error_buffer,
               const std::string& no_proxy) {
    set(curl, CURLOPT_URL, url.c_str());
    set(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    set(curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    set(curl, CURLOPT_FOLLOWLOCATION, 1L);
    set(curl, CURLOPT_MAXREDIRS, kMaxRedirects);
    set(curl, CURLOPT_FAILONERROR, 1L);  // a status >= 400 ends the transfer before its body
    set(curl, CURLOPT_NOSIGNAL, 1L);     // threads: no SIGALRM for DNS timeouts
    set(curl, CURLOPT_USERAGENT, "taskfarm/0.1 (libcurl)");
    set(curl, CURLOPT_NOPROXY, no_proxy.c_str());
    set(curl, CURLOPT_ERRORBUFFER, error_buffer);
    set(curl, CURLOPT_WRITEFUNCTION, on_body);
    set(curl, CURLOPT_WRITEDATA, &transfer);
    set(curl, CURLOPT_HEADERFUNCTION, on_header);
    set(curl, CURLOPT_HEADERDATA, &transfer);
    set(curl, CURLOPT_NOPROGRESS, 0L);
    set(curl, CURLOPT_XFERINFOFUNCTION, on_progress);
    set(curl, CURLOPT_XFERINFODATA, &transfer);
    // A Content-Length over the limit fails at once; a body without one is counted in on_body.
    if (transfer.max_bytes > 0)
        set(curl, CURLOPT_MAXFILESIZE_LARGE,
            static_cast<curl_off_t>(
                std::min<std::uint64_t>(transfer.max_bytes, std::numeric_limits<curl_off_t>::max())));
    // A stalled response: less than min_speed bytes a second for stall_s seconds (--min-speed,
    // --stall-time).
    set(curl, CURLOPT_LOW_SPEED_LIMIT,
        static_cast<long>(std::min<std::uint64_t>(transfer.min_speed, std::numeric_limits<long>::max())));
    set(curl, CURLOPT_LOW_SPEED_TIME, transfer.stall_s);
    long connect_ms = std::chrono::duration_cast<std::chrono::milliseconds>(kConnectTimeout).count();
    if (context.deadline() != Clock::time_point::max()) {
        const long left = milliseconds_until(context.deadline());
        set(curl, CURLOPT_TIMEOUT_MS, left);
        connect_ms = std::min(connect_ms, left);
    }
    set(curl, CURLOPT_CONNECTTIMEOUT_MS, connect_ms);
}

// One line, no control bytes: error texts go to terminals and journals.
std::string one_line(std::string text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
    for (char& c : text)
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
    return text;
}

struct Failure {
    std::string reason;
    bool transient = false;  // worth another try
};

// Why a finished request did not give a body to keep, or nullopt when it did.
std::optional<Failure> failure_of(CURL* curl, const std::string& url, CURLcode code, long status,
                                  const Transfer& transfer, const char* error_buffer) {
    const std::string detail = error_buffer[0] ? error_buffer : libcurl().easy_strerror(code);
    if (transfer.too_big || code == CURLE_FILESIZE_EXCEEDED)
        return Failure{fmt::format("larger than the limit of {} bytes (--max-bytes)", transfer.max_bytes)};
    if (!transfer.write_error.empty()) return Failure{transfer.write_error};
    switch (code) {
        case CURLE_OK: break;
        case CURLE_HTTP_RETURNED_ERROR: return Failure{fmt::format("HTTP {}", status), status >= 500};
        case CURLE_TOO_MANY_REDIRECTS: return Failure{fmt::format("more than {} redirects", kMaxRedirects)};
        case CURLE_UNSUPPORTED_PROTOCOL: {
            // A redirect to another scheme, or a reply that is not HTTP ("Received HTTP/0.9
            // when not allowed"): `url` itself was checked to be http or https.
            char* effective = nullptr;
            libcurl().easy_getinfo(curl, CURLINFO_EFFECTIVE_URL, &effective);
            const std::string target = effective ? effective : url;
            if (target != url && !http_or_https(target))
                return Failure{fmt::format("redirected to '{}', which is not http or https", target.substr(0, 200))};
            return Failure{detail};
        }
        // Transient: the server or the network may do better next time.
        case CURLE_COULDNT_CONNECT:
        case CURLE_OPERATION_TIMEDOUT:  // connect timeout or stall; the task's deadline is handled before
            if (std::string_view(detail).starts_with("Operation too slow"))
                return Failure{fmt::format("stalled: less than {} bytes a second for {} s (--min-speed, --stall-time)",
                                           transfer.min_speed, transfer.stall_s),
                               true};
            return Failure{detail, true};
        case CURLE_PARTIAL_FILE:
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM: return Failure{detail, true};
        default: return Failure{detail};
    }
    if (status < 200 || status > 299) return Failure{fmt::format("HTTP {}", status)};
    curl_off_t length = -1;
    if (libcurl().easy_getinfo(curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length) == CURLE_OK && length >= 0 &&
        static_cast<std::uint64_t>(length) != transfer.bytes)
        return Failure{fmt::format("got {} bytes, Content-Length said {}", transfer.bytes, length), true};
    return std::nullopt;
}

// Waits before try number `next` (2, 3, ...): 0.25 s, 0.5 s, 1 s, ... at most kMaxBackoff.
// False when the stop or the deadline came first.
bool back_off(int next, const Context& context) {
    const auto delay = std::min<Clock::duration>(kFirstBackoff * (1 << std::min(next - 2, 8)), kMaxBackoff);
    const auto wake = context.deadline() - Clock::now() > delay ? Clock::now() + delay : context.deadline();
    std::mutex mutex;
    std::condition_variable_any never;
    std::unique_lock lock(mutex);
    static_cast<void>(never.wait_until(lock, context.stop_token(), wake, [] { return false; }));
    return !context.stop_requested() && !context.expired();
}

// What one download task asks for: its parameters and the run's settings.
struct Request {
    std::string url;
    TaskId id = kNoId;
    fs::path dir;                                             // Context::out_dir()
    std::uint64_t max_bytes = 0;                              // a larger body fails the task; 0: no limit
    std::uint32_t retries = 0;                                // further tries after a transient failure
    std::uint64_t min_speed = kMinSpeed;                      // --min-speed
    long stall_s = static_cast<long>(kStallTimeout.count());  // --stall-time, whole seconds as libcurl counts
};

// Downloads `request`; throws TaskStopped when cancelled or past the deadline, and
// runtime_error with the reason for anything else.
Value download(const Request& request, const Context& context) {
    const std::string& url = request.url;
    if (const std::string problem = url_problem(url); !problem.empty()) throw std::runtime_error(problem);
    const fs::path& dir = request.dir;
    if (std::error_code ec; !fs::create_directories(dir, ec) && ec)
        throw std::runtime_error(fmt::format("cannot create directory '{}': {}", dir.string(), ec.message()));

    CURL* curl = thread_handle();
    EndOfTask end;
    PartFile file(dir);
    Sha256 digest;
    const std::string no_proxy = no_proxy_list();
    const int tries = 1 + static_cast<int>(std::min<std::uint32_t>(request.retries, 100));
    std::uint64_t bytes = 0;
    long status = 0;
    int attempt = 1;
    std::string disposition;
    for (;; ++attempt) {
        if (attempt > 1) {
            file.clear();
            digest.reset();
        }
        Transfer transfer(context, file, digest, request.max_bytes);
        transfer.min_speed = request.min_speed;
        transfer.stall_s = request.stall_s;
        char error_buffer[CURL_ERROR_SIZE] = {};
        configure(curl, url, context, transfer, error_buffer, no_proxy);
        if (attempt > 1) set(curl, CURLOPT_FRESH_CONNECT, 1L);  // the failed try's may be in any state
        const CURLcode code = libcurl().easy_perform(curl);
        status = 0;
        libcurl().easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
        if (transfer.stopped || context.stop_requested()) throw TaskStopped("cancelled");
        // libcurl's timer for the deadline (CURLOPT_TIMEOUT_MS) may fire a few milliseconds
        // before this clock says the deadline passed; its other timers (connect, stall) are
        // seconds long, so a timeout this close to the deadline is the deadline's.
        const bool curl_hit_deadline = code == CURLE_OPERATION_TIMEDOUT &&
                                       context.deadline() != Clock::time_point::max() &&
                                       Clock::now() + kDeadlineTimerSlack >= context.deadline();
        if (transfer.expired || context.expired() || curl_hit_deadline) throw TaskStopped(context.timed_out());
        const std::optional<Failure> failure = failure_of(curl, url, code, status, transfer, error_buffer);
        if (!failure) {
            bytes = transfer.bytes;
            disposition = transfer.content_disposition;
            break;
        }
        if (!failure->transient || attempt == tries)
            throw std::runtime_error(attempt > 1 ? fmt::format("{} ({} tries)", failure->reason, attempt)
                                                 : failure->reason);
        if (!back_off(attempt + 1, context)) context.check();
    }

    char* effective = nullptr;
    libcurl().easy_getinfo(curl, CURLINFO_EFFECTIVE_URL, &effective);
    const std::string final_url = effective ? std::string(effective).substr(0, kMaxUrlBytes) : url;
    const std::optional<std::string> suggested = file_name_from_content_disposition(disposition);
    const fs::path target = dir / saved_file_name(request.id, suggested ? *suggested : file_name_from_url(url));
    file.commit(target);
    end.succeeded = true;
    return Value{{"http_status", status},  {"bytes", bytes},          {"sha256", digest.hex()},
                 {"final_url", final_url}, {"path", target.string()}, {"tries", attempt}};
}

// `path` relative to the working directory when it lies inside it: shorter console lines.
std::string display_path(const std::string& path) {
    std::error_code ec;
    const fs::path cwd = fs::current_path(ec);
    if (ec) return path;
    const fs::path relative = fs::path(path).lexically_relative(cwd);
    return relative.empty() || *relative.begin() == ".." ? path : relative.string();
}

// --bandwidth: "unlimited" (0 in the settings) or a size of at least one byte.
Json read_bandwidth(const std::string& text) {
    if (text == "unlimited") return Json(std::uint64_t{0});
    Flag size;
    size.type = Flag::Type::Size;
    size.least = 1;
    return size.read(text);
}

class DownloadType final : public TaskType, public RunHooks {
public:
    std::string name() const override { return "download"; }
    std::string summary() const override {
        return "fetches a URL into --out-dir/<mode> as <task id>-<name from the URL or a sanitised "
               "Content-Disposition>, renamed there when complete (plan: \"url\"; --urls FILE; without either, the "
               "built-in "
               "image server's --tasks images, 15 by default); tries a transient failure (HTTP 5xx, refused or "
               "reset, truncated, stalled) again 0.25 s, 0.5 s, 1 s ... apart, --retries times (default: 2)";
    }

    Params parse(const Params& fields) const override {
        Fields read(fields);
        const auto url = read.text("url");
        if (!url) throw std::invalid_argument("download needs \"url\"");
        read.finish();
        if (const std::string problem = url_problem(*url); !problem.empty())
            throw std::invalid_argument(
                fmt::format("\"url\" {} is not an http:// or https:// URL: {}", Json(*url).dump(), problem));
        return Params{{"url", *url}};
    }

    Params from_input(const Input& input) const override {
        const std::string_view url = input.line;
        if (const std::string problem = url_problem(url); !problem.empty())
            throw std::invalid_argument(
                fmt::format("'{}' is not an http:// or https:// URL: {}", printable(url, 200), problem));
        return Params{{"url", std::string(url)}};
    }

    // The built-in server's URLs, one per task (prepare() put them in the settings).
    Params generate(Generate& args) const override {
        return Params{{"url", args.settings.at("served_urls").at(args.index)}};
    }

    // --urls FILE, its limits (every download) and the built-in server's shape (only the images
    // it serves, so those go with no --plan, --urls or --command). --retries is the engine's
    // flag too.
    std::vector<Flag> flags() const override {
        return {
            Flag{.name = "--urls",
                 .help = "fetch each URL in FILE instead of the built-in server's images; one http:// or\n"
                         "https:// URL per line, blank lines and lines starting with # skipped; implies --task\n"
                         "download; - reads stdin",
                 .value_name = "FILE",
                 .picks = Flag::Picks::InputsFile},
            Flag{.name = "--max-bytes",
                 .key = "max_bytes",
                 .type = Flag::Type::Size,
                 .default_value = "100M",
                 .help = "fail a download whose body passes SIZE bytes, checked as it streams, with or\n"
                         "without a Content-Length; K, M, G are x1024",
                 .value_name = "SIZE",
                 .least = 1},
            Flag{.name = "--min-speed",
                 .key = "min_speed",
                 .type = Flag::Type::Size,
                 .default_value = "1K",
                 .help = "a response slower than SIZE bytes a second, on average over --stall-time, fails\n"
                         "as stalled (and is retried); 0: no such limit",
                 .value_name = "SIZE"},
            Flag{.name = "--stall-time",
                 .key = "stall_s",
                 .type = Flag::Type::Number,
                 .default_value = "15",
                 .help = "seconds over which --min-speed is measured (whole seconds, as libcurl counts)",
                 .value_name = "SECONDS",
                 .least = 1,
                 .most = 3600},
            Flag{.name = "--file-size",
                 .key = "file_size",
                 .type = Flag::Type::Size,
                 .default_value = "200K",
                 .help = "built-in server (download without --urls): bytes per image; K, M, G are x1024",
                 .value_name = "SIZE",
                 .generated_only = true},
            Flag{.name = "--latency",
                 .key = "latency_s",
                 .type = Flag::Type::Number,
                 .default_value = "0.2",
                 .help = "built-in server: seconds before each response, like a remote host's round trip",
                 .value_name = "SECONDS",
                 .most = 3600,
                 .changes_results = false,
                 .generated_only = true},
            Flag{.name = "--bandwidth",
                 .key = "bandwidth",
                 .default_value = "unlimited",
                 .help = "built-in server: bytes per second per response, e.g. 1M",
                 .value_name = "SIZE",
                 .changes_results = false,
                 .generated_only = true,
                 .parse = read_bandwidth},
        };
    }
    // The tutorial's 15 images without --tasks.
    TaskTraits traits() const override {
        return {.settings_read = {"retries"},
                .writes_files = true,
                .out_dir = "downloads",
                .default_count = 15,
                .examples = {"{program} --workers 8 --task download",
                             "{program} --workers 8 --urls urls.txt --out-dir ~/pictures --task-timeout 60"},
                .settings_made = {"served_urls"}};
    }

    std::unique_ptr<RunService> prepare(Json& settings) const override { return serve_images(settings); }

    Value run(const Params& params, Context& context) const override {
        const auto started = Clock::now();
        const auto waiting = context.waiting();  // CPython frees the GIL around network I/O
        Fields read(params);
        const auto url = read.text("url");
        if (!url) throw std::invalid_argument("download needs \"url\"");
        const Json& settings = context.settings();
        const Request request{
            .url = *url,
            .id = context.id(),
            .dir = context.out_dir(),
            .max_bytes = settings.value("max_bytes", std::uint64_t{0}),
            .retries = settings.value("retries", kDefaultRetries),
            .min_speed = settings.value("min_speed", kMinSpeed),
            .stall_s = std::lround(
                std::clamp(settings.value("stall_s", static_cast<double>(kStallTimeout.count())), 1.0, kMaxSeconds))};
        try {
            Value value = download(request, context);
            value["elapsed_s"] = std::chrono::duration<double>(Clock::now() - started).count();
            return value;
        } catch (const TaskStopped&) {
            throw;
        } catch (const std::exception& e) {
            throw std::runtime_error(one_line(fmt::format("cannot download '{}': {}", *url, e.what())));
        }
    }

    std::string describe(const Value& value) const override {
        const std::uint32_t tries = value.value("tries", 1u);
        return fmt::format("HTTP {}, {} bytes, sha256 {:.12} -> {}{}", value.value("http_status", 0),
                           value.value("bytes", std::uint64_t{0}), value.value("sha256", std::string()),
                           display_path(value.value("path", std::string())),
                           tries > 1 ? fmt::format(" ({} tries)", tries) : "");
    }

    void thread_done() const override { close_connections(); }
    void preload() const override { libcurl(); }
};

}  // namespace

std::string url_problem(std::string_view url) {
    if (url.empty()) return "empty URL";
    if (url.size() > kMaxUrlBytes) return fmt::format("longer than {} bytes", kMaxUrlBytes);
    if (std::any_of(url.begin(), url.end(), [](char c) { return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f; }))
        return "contains a space or a control character";
    const Url parsed;
    const std::string text(url);
    // Without CURLU_NON_SUPPORT_SCHEME, a scheme libcurl lacks is an error; file:// etc. are checked next.
    if (const CURLUcode code = libcurl().url_set(parsed.get(), CURLUPART_URL, text.c_str(), 0); code != CURLUE_OK)
        return libcurl().url_strerror(code);
    const std::string scheme = parsed.part(CURLUPART_SCHEME);
    if (scheme != "http" && scheme != "https") return fmt::format("scheme '{}' is not http or https", scheme);
    if (parsed.part(CURLUPART_HOST).empty()) return "no host";
    return {};
}

std::shared_ptr<const TaskType> download_type() { return std::make_shared<DownloadType>(); }

}  // namespace taskfarm
