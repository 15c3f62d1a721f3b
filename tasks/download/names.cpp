// The pure-string half of download.hpp: file names from URLs and headers, made safe.

#include <algorithm>
#include <cctype>

#include <fmt/format.h>

#include "download.hpp"

namespace taskfarm {
namespace {

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

// "%2e%2E%2f" -> "../"; a '%' not followed by two hex digits stays as it is.
std::string percent_decode(std::string_view text) {
    std::string decoded;
    decoded.reserve(text.size());
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == '%' && i + 2 < text.size()) {
            const int high = hex_digit(text[i + 1]);
            const int low = hex_digit(text[i + 2]);
            if (high >= 0 && low >= 0) {
                decoded += static_cast<char>(high * 16 + low);
                i += 2;
                continue;
            }
        }
        decoded += text[i];
    }
    return decoded;
}

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
           });
}

std::string_view trim(std::string_view text) {
    const auto first = text.find_first_not_of(" \t\r\n");
    if (first == std::string_view::npos) return {};
    const auto last = text.find_last_not_of(" \t\r\n");
    return text.substr(first, last - first + 1);
}

// A quoted-string's content with its backslash escapes undone, or a token as it is.
std::string unquote(std::string_view value) {
    if (value.size() < 2 || value.front() != '"') return std::string(value);
    std::string text;
    for (std::size_t i = 1; i < value.size() && value[i] != '"'; ++i) {
        if (value[i] == '\\' && i + 1 < value.size()) ++i;
        text += value[i];
    }
    return text;
}

// ASCII letters and digits, '.', '_' and '-': nothing a shell, a path or a terminal reads specially.
bool safe_byte(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
           c == '-';
}

}  // namespace

std::string file_name_from_url(std::string_view url) {
    const auto scheme_end = url.find("://");
    std::string_view rest = scheme_end == std::string_view::npos ? url : url.substr(scheme_end + 3);
    rest = rest.substr(0, rest.find_first_of("?#"));
    const auto path_start = rest.find('/');
    if (path_start == std::string_view::npos) return {};
    const std::string path = percent_decode(rest.substr(path_start));
    return path.substr(path.find_last_of('/') + 1);  // after decoding: %2f splits too
}

std::optional<std::string> file_name_from_content_disposition(std::string_view value) {
    std::optional<std::string> plain;
    std::optional<std::string> extended;
    // Parameters are split at ';' outside quoted strings.
    std::size_t start = 0;
    bool quoted = false;
    for (std::size_t i = 0; i <= value.size(); ++i) {
        if (i < value.size()) {
            if (value[i] == '\\' && quoted) {
                ++i;
                continue;
            }
            if (value[i] == '"') quoted = !quoted;
            if (value[i] != ';' || quoted) continue;
        }
        const std::string_view parameter = trim(value.substr(start, i - start));
        start = i + 1;
        const auto equals = parameter.find('=');
        if (equals == std::string_view::npos) continue;
        const std::string_view key = trim(parameter.substr(0, equals));
        const std::string_view argument = trim(parameter.substr(equals + 1));
        if (iequals(key, "filename")) {
            plain = unquote(argument);
        } else if (iequals(key, "filename*")) {
            // RFC 5987: charset'language'percent-encoded; the bytes are kept, safe_file_name()
            // replaces whatever is not ASCII.
            const auto second_quote = argument.find('\'', argument.find('\'') + 1);
            if (argument.find('\'') != std::string_view::npos && second_quote != std::string_view::npos)
                extended = percent_decode(argument.substr(second_quote + 1));
        }
    }
    if (extended && !extended->empty()) return extended;
    if (plain && !plain->empty()) return plain;
    return std::nullopt;
}

std::string safe_file_name(std::string_view raw) {
    raw = raw.substr(raw.find_last_of("/\\") == std::string_view::npos ? 0 : raw.find_last_of("/\\") + 1);
    std::string name;
    for (char c : raw) name += safe_byte(c) ? c : '_';
    name.erase(0, name.find_first_not_of(".-"));  // no ".", "..", hidden files or options
    if (name.find_first_not_of("._-") == std::string::npos) return "download";
    if (name.size() > kMaxFileNameBytes) {
        const auto dot = name.rfind('.');
        const std::size_t extension = dot != std::string::npos && name.size() - dot <= 16 ? name.size() - dot : 0;
        name = name.substr(0, kMaxFileNameBytes - extension) + name.substr(name.size() - extension);
    }
    return name;
}

std::string saved_file_name(TaskId id, std::string_view raw) {
    return fmt::format("{:03}-{}", id, safe_file_name(raw));
}

}  // namespace taskfarm
