#pragma once
// What download tasks accept and how they name what they save. The transfer itself is in
// download.cpp, the only file using libcurl.

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "task.hpp"

namespace taskfarm {

inline constexpr std::size_t kMaxUrlBytes = 8192;  // keeps every TASK and RESULT far below kMaxFrameBytes
inline constexpr long kMaxRedirects = 5;
inline constexpr std::chrono::seconds kConnectTimeout{10};
// A response slower than kMinSpeed bytes a second, on average over kStallTimeout, fails as
// stalled (and may be retried), with or without a --task-timeout: a server that drips a byte
// a second cannot hold a task for ever. The defaults of --min-speed and --stall-time.
inline constexpr std::chrono::seconds kStallTimeout{15};
inline constexpr std::uint64_t kMinSpeed = 1024;
// Further tries after a transient failure when the run's settings have no "retries" (--retries).
inline constexpr std::uint32_t kDefaultRetries = 2;
inline constexpr std::size_t kMaxFileNameBytes = 120;  // of the sanitised name, before the "NNN-" prefix

// Why `url` cannot be a download task, or empty when it can: it must be an absolute
// http:// or https:// URL with a host, at most kMaxUrlBytes long, as libcurl parses it.
std::string url_problem(std::string_view url);

// The last segment of the URL's path, percent-decoded, query and fragment removed: raw bytes
// straight from the network, to be passed through safe_file_name(). Empty when the path ends in '/'.
std::string file_name_from_url(std::string_view url);

// The file name a Content-Disposition header value suggests (filename*= preferred over
// filename=), decoded but not yet safe; nullopt when it names none.
std::optional<std::string> file_name_from_content_disposition(std::string_view value);

// `raw` made safe to use as one file name inside the output directory, whatever it holds:
// only its last '/'- or '\'-separated part, every byte outside [A-Za-z0-9._-] replaced by
// '_', no leading '.' or '-' (so never ".", "..", hidden or an option), at most kMaxFileNameBytes (keeping a
// short extension); "download" when nothing is left.
std::string safe_file_name(std::string_view raw);

// The name task `id` saves under: "<id, 3 digits at least>-<safe_file_name(raw)>", e.g.
// "007-photo.jpg". The prefix makes it unique within a plan, so two URLs with the same
// name never overwrite each other, and the same plan run again replaces its own files.
std::string saved_file_name(TaskId id, std::string_view raw);

}  // namespace taskfarm
