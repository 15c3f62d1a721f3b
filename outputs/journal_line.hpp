#pragma once
// One line of a --results journal, as every reader and the writer see it (docs/observability.md):
// - a line is at most kMaxJournalLineBytes: the writer shortens a result's "value" and
//   "error" to fit, and every reader refuses a longer line, naming FILE:LINE, without
//   holding more than that of it;
// - JSON holds only UTF-8, and what a task ran on may not be (an --inputs line in Latin-1):
//   a string that is not UTF-8 is written with each bad byte as U+FFFD, for any JSON
//   reader, and its exact bytes are kept in the line's "bytes" object, keyed by the
//   string's JSON pointer: {"params": {"shell": "echo caf\ufffd"}, ...,
//   "bytes": {"/params/shell": "ZWNobyBjYWbp"}} (base64). Readers put the bytes back, so
//   --resume matches the exact input and `report` shows it (\xe9). A line without "bytes"
//   (every older journal) reads as before. Object keys are not kept this way.
// - every reader's message is "FILE:LINE: what is wrong", never a JSON library's text.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <istream>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace taskfarm {

// The longest journal line, its '\n' left out. A task's params are written whole (an input
// line of up to 4 MiB, whose control bytes JSON writes as 6 each, plus its "bytes"), so the
// limit is larger than a frame.
inline constexpr std::size_t kMaxJournalLineBytes = std::size_t{32} << 20;

// Reads the lines of a journal one at a time, never more than kMaxJournalLineBytes of one,
// up to `length` bytes (the complete lines of a file) or to the end of the stream.
class JournalLineReader {
public:
    // `flag` begins its messages ("--resume", "report"); `name` is the journal as they show
    // it: "FILE" of "FILE:LINE".
    JournalLineReader(std::istream& in, std::string flag, std::string name, std::uintmax_t length = UINTMAX_MAX);
    // The next complete line, without its '\n'; false at the end. What follows the last
    // '\n' of a stream is a torn line: left out and counted in torn_bytes(). Throws
    // ConfigError for a line over the limit, or a stream that cannot be read.
    bool next(std::string& line);
    std::size_t number() const { return number_; }  // of the line next() returned
    std::uintmax_t torn_bytes() const { return torn_; }
    std::string where() const;  // "FLAG: FILE:LINE" of that line

private:
    bool fill();
    std::istream& in_;
    std::string flag_;
    std::string name_;
    std::uintmax_t left_;
    std::size_t number_ = 0;
    std::uintmax_t torn_ = 0;
    std::string buffer_;
    std::size_t at_ = 0;
};

// The length of the regular file `path` up to and including its last '\n'; what follows is
// a torn line. Throws ConfigError ("FLAG: cannot read journal 'PATH': REASON").
std::uintmax_t complete_length(const std::filesystem::path& path, const std::string& flag);

// Puts a line's "bytes" (if any) back into the strings they name, and removes them: also
// for a plan line, which holds a command that is not UTF-8 the same way. Throws
// std::invalid_argument saying what is wrong with them.
void put_back_exact_bytes(nlohmann::json& line);

// Parses one journal line: a JSON object whose "bytes" (if any) are put back into the
// strings they name, and removed. Throws ConfigError("WHERE: not a journal line: WHY").
nlohmann::json parse_journal_line(std::string_view line, const std::string& where);

// The checks every reader makes of a parsed line: "mode" a string; an event line's "event"
// a string; a result line's "id" a whole number >= 0 and "ok" true or false; an "id" of an
// event line a whole number too. Throws ConfigError("WHERE: not a journal line: WHY").
void check_journal_line(const nlohmann::json& entry, const std::string& where);

// Adds the "bytes" object to `line` for each string in it that is not UTF-8 (see above);
// leaves a line of UTF-8 alone.
void keep_exact_bytes(nlohmann::json& line);

// The line as the journal holds it: shortened to the limit (see above), "bytes" added, no
// '\n'. Never throws on bytes that are not UTF-8.
std::string journal_line_text(nlohmann::json line);

// `value` as JSON text with its strings' bytes as they are (a byte that is not UTF-8 stays
// one byte): for a digest of exactly what ran, and, through printable(), for showing it
// (\xe9). Not for parsing.
std::string exact_text(const nlohmann::json& value);

bool is_utf8(std::string_view text);

}  // namespace taskfarm
