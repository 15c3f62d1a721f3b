#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace taskfarm {

// --colsep REGEX: the columns of a value as GNU parallel makes them, with Perl's
// split(/REGEX/, $value, -1): a separator of positive width at the start gives an empty first
// column, an empty match splits between characters (never an empty first column), what a
// group captures is a column of its own, trailing empty columns stay; an empty value is one
// empty column. A fixed separator (letters, \t, escaped special characters) is cut with
// string search; any other goes to PCRE2 (Perl's syntax), whose matcher keeps its
// backtracking on the heap, never the stack, under a limit of steps and of memory for each
// match, and of time for the whole run's matching (2 s, and 2 us more for each byte split):
// a pattern that backtracks without end on a long value, or near the step limit at each of
// its positions, stops with an error instead of crashing or hanging (decisions 253, 274).
class ColumnSplit {
public:
    // Throws std::invalid_argument saying what is wrong with `pattern` and where.
    explicit ColumnSplit(std::string pattern);
    ~ColumnSplit();
    ColumnSplit(ColumnSplit&&) noexcept;
    ColumnSplit& operator=(ColumnSplit&&) noexcept;
    ColumnSplit(const ColumnSplit&) = delete;
    ColumnSplit& operator=(const ColumnSplit&) = delete;

    // Throws std::runtime_error when matching `value` ran past the limits (of its own or the run's).
    std::vector<std::string> split(std::string_view value) const;
    // Whether the separator is cut without the regex engine.
    bool fixed() const { return literal_.has_value(); }

private:
    std::optional<std::string> literal_;
    struct Compiled;
    std::unique_ptr<Compiled> compiled_;
};

// The string a regex matches when it is a fixed, non-empty one (letters, and \t or an escaped
// special character), else nullopt.
std::optional<std::string> fixed_string_of(std::string_view regex);

}  // namespace taskfarm
