#include "journal_line.hpp"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>

#include <fmt/format.h>

#include "errors.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

using nlohmann::json;

constexpr std::size_t kChunk = 64 * 1024;
// A result's "error" is cut to this when its line is over the limit.
constexpr std::size_t kCutError = 64 * 1024;

constexpr char kBase64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64(std::string_view bytes) {
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    for (std::size_t i = 0; i < bytes.size(); i += 3) {
        const std::size_t n = std::min<std::size_t>(3, bytes.size() - i);
        std::uint32_t group = 0;
        for (std::size_t j = 0; j < 3; ++j)
            group = (group << 8) | (j < n ? static_cast<unsigned char>(bytes[i + j]) : 0u);
        for (std::size_t j = 0; j < 4; ++j) out += j <= n ? kBase64[(group >> (18 - 6 * j)) & 63] : '=';
    }
    return out;
}

// Empty optional-like: throws std::invalid_argument on text that is not base64.
std::string unbase64(std::string_view text) {
    if (text.size() % 4 != 0) throw std::invalid_argument("its length is not a multiple of 4");
    std::string out;
    out.reserve(text.size() / 4 * 3);
    for (std::size_t i = 0; i < text.size(); i += 4) {
        std::uint32_t group = 0;
        int pad = 0;
        for (std::size_t j = 0; j < 4; ++j) {
            const char c = text[i + j];
            const char* found = c == '=' ? nullptr : std::strchr(kBase64, c);
            if (c == '=' && i + 4 == text.size() && j >= 2) {
                ++pad;
                group <<= 6;
                continue;
            }
            if (!found || c == '\0' || pad > 0) throw std::invalid_argument("it is not base64");
            group = (group << 6) | static_cast<std::uint32_t>(found - kBase64);
        }
        for (int j = 0; j < 3 - pad; ++j) out += static_cast<char>((group >> (16 - 8 * j)) & 0xFF);
    }
    return out;
}

std::size_t first_bad_byte(std::string_view text) {
    for (std::size_t at = 0; at < text.size();) {
        char32_t code = 0;
        const std::size_t length = utf8_sequence(text, at, code);
        if (length == 0) return at;
        at += length;
    }
    return std::string_view::npos;
}

std::string pointer_part(const std::string& key) {
    std::string part;
    for (char c : key) part += c == '~' ? std::string("~0") : c == '/' ? std::string("~1") : std::string(1, c);
    return part;
}

void collect(const json& value, const std::string& pointer, json& bytes) {
    if (value.is_string()) {
        const auto& text = value.get_ref<const std::string&>();
        if (!is_utf8(text)) bytes[pointer] = base64(text);
    } else if (value.is_object()) {
        for (const auto& [key, item] : value.items()) collect(item, pointer + "/" + pointer_part(key), bytes);
    } else if (value.is_array()) {
        for (std::size_t i = 0; i < value.size(); ++i) collect(value[i], fmt::format("{}/{}", pointer, i), bytes);
    }
}

void exact_string(const std::string& text, std::string& out) {
    out += '"';
    for (const char c : text) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20)
                    out += fmt::format("\\u{:04x}", static_cast<unsigned char>(c));
                else
                    out += c;
        }
    }
    out += '"';
}

void exact(const json& value, std::string& out) {
    if (value.is_string()) return exact_string(value.get_ref<const std::string&>(), out);
    if (value.is_object()) {
        out += '{';
        bool first = true;
        for (const auto& [key, item] : value.items()) {
            if (!first) out += ',';
            first = false;
            exact_string(key, out);
            out += ':';
            exact(item, out);
        }
        out += '}';
        return;
    }
    if (value.is_array()) {
        out += '[';
        for (std::size_t i = 0; i < value.size(); ++i) {
            if (i > 0) out += ',';
            exact(value[i], out);
        }
        out += ']';
        return;
    }
    out += value.dump();  // null, true, false, a number: never text
}

std::string cut_text(const std::string& text, std::size_t most) {
    std::size_t end = std::min(most, text.size());
    while (end > 0 && end < text.size() && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80) --end;
    return text.substr(0, end) + fmt::format("... ({} more bytes)", text.size() - end);
}

[[noreturn]] void not_a_line(const std::string& where, const std::string& why) {
    throw ConfigError(printable(fmt::format("{}: not a journal line: {}", where, why)));
}

}  // namespace

bool is_utf8(std::string_view text) { return first_bad_byte(text) == std::string_view::npos; }

JournalLineReader::JournalLineReader(std::istream& in, std::string flag, std::string name, std::uintmax_t length)
    : in_(in), flag_(std::move(flag)), name_(printable(name)), left_(length) {}

std::string JournalLineReader::where() const { return fmt::format("{}: {}:{}", flag_, name_, number_); }

bool JournalLineReader::fill() {
    if (left_ == 0) return false;
    const std::size_t want = static_cast<std::size_t>(std::min<std::uintmax_t>(kChunk, left_));
    const std::size_t old = buffer_.size();
    buffer_.resize(old + want);
    in_.read(buffer_.data() + old, static_cast<std::streamsize>(want));
    const auto got = static_cast<std::size_t>(in_.gcount());
    buffer_.resize(old + got);
    left_ -= got;
    if (in_.bad())
        throw ConfigError(
            fmt::format("{}: {}:{}: cannot read further: {}", flag_, name_, number_ + 1, std::strerror(errno)));
    return got > 0;
}

bool JournalLineReader::next(std::string& line) {
    std::size_t scanned = at_;
    for (;;) {
        const std::size_t end = buffer_.find('\n', scanned);
        if (end != std::string::npos) {
            line.assign(buffer_, at_, end - at_);
            at_ = end + 1;
            ++number_;
            return true;
        }
        if (buffer_.size() - at_ > kMaxJournalLineBytes)
            throw ConfigError(
                fmt::format("{}: {}:{}: a line longer than {} MiB; no journal line is (the run shortens what "
                            "it writes to fit)",
                            flag_, name_, number_ + 1, kMaxJournalLineBytes >> 20));
        buffer_.erase(0, at_);
        scanned = buffer_.size();
        at_ = 0;
        if (!fill()) {
            torn_ = buffer_.size();
            buffer_.clear();
            return false;
        }
    }
}

std::uintmax_t complete_length(const std::filesystem::path& path, const std::string& flag) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw ConfigError(
            fmt::format("{}: cannot read journal '{}': {}", flag, printable(path.string()), std::strerror(errno)));
    in.seekg(0, std::ios::end);
    std::streamoff end = in.tellg();
    char buffer[4096];
    while (end > 0) {
        const std::streamoff start = std::max<std::streamoff>(0, end - static_cast<std::streamoff>(sizeof buffer));
        in.seekg(start);
        in.read(buffer, end - start);
        for (std::streamoff i = end - start; i > 0; --i)
            if (buffer[i - 1] == '\n') return static_cast<std::uintmax_t>(start + i);
        end = start;
    }
    return 0;
}

json parse_journal_line(std::string_view line, const std::string& where) {
    json entry;
    try {
        entry = json::parse(line);
    } catch (const json::parse_error& e) {
        const std::size_t bad = first_bad_byte(line);
        if (bad != std::string_view::npos)
            not_a_line(where,
                       fmt::format("byte {} is not UTF-8 (0x{:02x}); journals are UTF-8, with the exact bytes in "
                                   "\"bytes\"",
                                   bad + 1, static_cast<unsigned char>(line[bad])));
        not_a_line(where,
                   fmt::format("not JSON (at byte {} of {})", std::min<std::size_t>(e.byte, line.size()), line.size()));
    }
    if (!entry.is_object()) not_a_line(where, "not a JSON object");
    try {
        put_back_exact_bytes(entry);
    } catch (const std::invalid_argument& e) {
        not_a_line(where, e.what());
    }
    return entry;
}

void put_back_exact_bytes(json& entry) {
    const auto bytes = entry.find("bytes");
    if (bytes == entry.end()) return;
    if (!bytes->is_object()) throw std::invalid_argument("\"bytes\" is not an object");
    const json kept = std::move(*bytes);
    entry.erase("bytes");
    for (const auto& [pointer, encoded] : kept.items()) {
        const std::string shown = fmt::format("\"bytes\" names '{}'", pointer);
        if (!encoded.is_string()) throw std::invalid_argument(shown + ": its value is not a string");
        std::string decoded;
        try {
            decoded = unbase64(encoded.get_ref<const std::string&>());
        } catch (const std::invalid_argument& e) {
            throw std::invalid_argument(fmt::format("{}: its value is not base64: {}", shown, e.what()));
        }
        json::json_pointer at;
        try {
            at = json::json_pointer(pointer);
        } catch (const json::exception&) {
            throw std::invalid_argument(shown + ", which is not a JSON pointer (/params/shell)");
        }
        json* target = nullptr;
        try {
            target = &entry.at(at);
        } catch (const json::exception&) {
        }
        if (!target || !target->is_string()) throw std::invalid_argument(shown + ", which is not a string of the line");
        *target = std::move(decoded);
    }
}

void check_journal_line(const json& entry, const std::string& where) {
    if (!entry.is_object()) not_a_line(where, "not a JSON object");
    const auto is = [&](const char* key, auto test) {
        const auto found = entry.find(key);
        return found != entry.end() && test(*found);
    };
    const auto whole = [](const json& v) { return v.is_number_unsigned(); };
    const auto text = [](const json& v) { return v.is_string(); };
    if (entry.contains("event")) {
        if (!is("event", text)) not_a_line(where, "\"event\" is not a string");
        if (entry.contains("id") && !is("id", whole)) not_a_line(where, "\"id\" is not a whole number >= 0");
    } else {
        if (!entry.contains("id")) not_a_line(where, "it has no \"id\"");
        if (!is("id", whole)) not_a_line(where, "\"id\" is not a whole number >= 0");
        if (!is("ok", [](const json& v) { return v.is_boolean(); })) not_a_line(where, "\"ok\" is not true or false");
    }
    if (!is("mode", text)) not_a_line(where, "\"mode\" is not a string");
    if (entry.contains("attempt") && !is("attempt", whole)) not_a_line(where, "\"attempt\" is not a whole number >= 0");
    for (const char* flag : {"retrying", "cancelled"})
        if (entry.contains(flag) && !is(flag, [](const json& v) { return v.is_boolean(); }))
            not_a_line(where, fmt::format("\"{}\" is not true or false", flag));
}

namespace {

// Whether every string in `value` is UTF-8: the walk of collect() without the pointers it
// names each node by, which cost more than the check when, as nearly always, all are.
bool all_utf8(const json& value) {
    if (value.is_string()) return is_utf8(value.get_ref<const std::string&>());
    if (value.is_object()) {
        for (auto it = value.begin(); it != value.end(); ++it)
            if (!all_utf8(it.value())) return false;
    } else if (value.is_array()) {
        for (const json& item : value)
            if (!all_utf8(item)) return false;
    }
    return true;
}

}  // namespace

void keep_exact_bytes(json& line) {
    if (all_utf8(line)) return;
    json bytes = json::object();
    collect(line, "", bytes);
    if (!bytes.empty()) line["bytes"] = std::move(bytes);
}

std::string journal_line_text(json line) {
    keep_exact_bytes(line);
    std::string text = line.dump(-1, ' ', false, json::error_handler_t::replace);
    if (text.size() <= kMaxJournalLineBytes || !line.is_object()) return text;
    // Over the limit: the value goes, the error is cut; the params, which --resume matches,
    // stay whole.
    const std::size_t was = text.size();
    line.erase("bytes");
    if (auto value = line.find("value"); value != line.end() && !value->is_null()) *value = nullptr;
    if (auto error = line.find("error");
        error != line.end() && error->is_string() && error->get_ref<const std::string&>().size() > kCutError)
        *error = cut_text(error->get<std::string>(), kCutError);
    line["cut"] =
        fmt::format("the line was {} bytes, over the journal's {} MiB: its value was left out and its error cut", was,
                    kMaxJournalLineBytes >> 20);
    keep_exact_bytes(line);
    return line.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string exact_text(const json& value) {
    std::string out;
    exact(value, out);
    return out;
}

}  // namespace taskfarm
