#include "text.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>

#include <fmt/format.h>

namespace taskfarm {

std::size_t utf8_sequence(std::string_view text, std::size_t at, char32_t& code) {
    const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
    const unsigned char lead = byte(at);
    std::size_t length = 0;
    char32_t least = 0;
    if (lead < 0x80) return code = lead, 1;
    if ((lead & 0xE0) == 0xC0)
        length = 2, code = lead & 0x1F, least = 0x80;
    else if ((lead & 0xF0) == 0xE0)
        length = 3, code = lead & 0x0F, least = 0x800;
    else if ((lead & 0xF8) == 0xF0)
        length = 4, code = lead & 0x07, least = 0x10000;
    else
        return 0;
    if (at + length > text.size()) return 0;
    for (std::size_t i = 1; i < length; ++i) {
        if ((byte(at + i) & 0xC0) != 0x80) return 0;
        code = (code << 6) | (byte(at + i) & 0x3F);
    }
    if (code < least || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
    return length;
}

namespace {

// Code points a terminal acts on or that change how the rest of a line reads: C1 controls
// (0x9B is a CSI on some terminals), line and paragraph separators, bidi overrides and
// isolates (the "Trojan Source" characters).
bool hidden_control(char32_t code) {
    return (code >= 0x80 && code <= 0x9F) || code == 0x2028 || code == 0x2029 || (code >= 0x202A && code <= 0x202E) ||
           (code >= 0x2066 && code <= 0x2069) || code == 0x200E || code == 0x200F || code == 0x061C;
}

std::string escaped_byte(unsigned char byte) {
    switch (byte) {
        case '\n': return "\\n";
        case '\r': return "\\r";
        case '\t': return "\\t";
        default: return fmt::format("\\x{:02x}", byte);
    }
}

}  // namespace

std::string printable(std::string_view text, std::size_t max_bytes) {
    std::string out;
    out.reserve(std::min(text.size(), max_bytes) + 16);
    std::size_t at = 0;
    while (at < text.size()) {
        char32_t code = 0;
        const std::size_t length = utf8_sequence(text, at, code);
        std::string piece;
        if (length == 0)
            piece = escaped_byte(static_cast<unsigned char>(text[at]));
        else if (code < 0x20 || code == 0x7F)
            piece = escaped_byte(static_cast<unsigned char>(code));
        else if (hidden_control(code))
            piece = fmt::format("\\u{:04x}", static_cast<std::uint32_t>(code));
        else
            piece = std::string(text.substr(at, length));
        if (out.size() + piece.size() > max_bytes) {
            out += fmt::format("... ({} more bytes)", text.size() - at);
            return out;
        }
        out += piece;
        at += length == 0 ? 1 : length;
    }
    return out;
}

bool is_printable(std::string_view text, std::size_t max_bytes) { return printable(text, max_bytes) == text; }

std::string printable_lines(std::string_view text, std::size_t max_line_bytes) {
    std::string out;
    while (!text.empty()) {
        const auto end = text.find('\n');
        out += printable(text.substr(0, end), max_line_bytes);
        if (end == std::string_view::npos) break;
        out += '\n';
        text.remove_prefix(end + 1);
    }
    return out;
}

std::optional<std::uint64_t> parse_size(std::string_view text) {
    double number = 0;
    const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), number);
    if (ec != std::errc{} || !std::isfinite(number) || number < 0) return std::nullopt;
    std::string suffix(end, text.data() + text.size());
    for (char& c : suffix) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    double unit = 1;
    if (!suffix.empty() && suffix != "B") {
        const auto at = std::string_view("KMG").find(suffix[0]);
        const std::string_view rest = std::string_view(suffix).substr(1);
        if (at == std::string_view::npos || !(rest.empty() || rest == "B" || rest == "IB")) return std::nullopt;
        unit = std::pow(1024.0, static_cast<double>(at + 1));
    }
    const double bytes = std::round(number * unit);
    if (bytes > 0x1p50) return std::nullopt;
    return static_cast<std::uint64_t>(bytes);
}

bool is_plain_shell_word(std::string_view text) {
    return !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '+' ||
               c == '-' || c == '.' || c == '/';
    });
}

}  // namespace taskfarm
