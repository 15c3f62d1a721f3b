#pragma once
// Text from outside (the wire, an input file, a worker's error) made safe to print.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace taskfarm {

// The most bytes printable() returns by default, before its "..." marker: one error or
// name, not a whole file.
inline constexpr std::size_t kMaxPrintable = 1000;

// The longest worker name a hello may carry (see docs/protocol.md).
inline constexpr std::size_t kMaxWorkerName = 64;

// `text` as one line of visible characters, so that nothing read from a peer or a file can
// move the cursor, clear the screen, recolour the terminal or forge a line of its own:
// newline, carriage return and tab become \n, \r and \t; every other control byte (C0, DEL),
// every C1 control and Unicode line separator or bidi override becomes \xHH or \uHHHH; a
// byte that is not part of valid UTF-8 becomes \xHH. Other UTF-8 passes unchanged, so
// names in any script stay readable. Longer results are cut at a character boundary after
// `max_bytes` and end in "... (N more bytes)". The escapes are for reading, not parsing:
// a backslash is kept as it is.
std::string printable(std::string_view text, std::size_t max_bytes = kMaxPrintable);

// The length of the UTF-8 sequence starting at text[at] and its code point, or 0 when the
// bytes there are not one well-formed sequence (overlong forms and surrogates included).
std::size_t utf8_sequence(std::string_view text, std::size_t at, char32_t& code);

// Whether /bin/sh reads `text` as one word, unchanged, written bare: not empty, and only
// letters, digits and _ + - . / (the values GNU parallel leaves unquoted).
bool is_plain_shell_word(std::string_view text);

// Whether printable(text) would return `text` unchanged.
bool is_printable(std::string_view text, std::size_t max_bytes = kMaxPrintable);

// printable() applied to each line of `text`, keeping its line ends: for tables and lists
// that hold text from outside.
std::string printable_lines(std::string_view text, std::size_t max_line_bytes = kMaxPrintable);

// "200K" -> 204800: a number of bytes with an optional K, M or G (x1024 each; "KiB" and
// "KB" mean the same), fractions allowed ("1.5M"), at most 2^50.
std::optional<std::uint64_t> parse_size(std::string_view text);

}  // namespace taskfarm
