#pragma once
// Whether a shell command needs a shell: a command of plain words (letters, digits, a few
// punctuation marks, '...' quotes and \ escapes, separated by spaces and tabs) means the same
// to /bin/sh as the words themselves, exec'd as they are, so the command type runs it
// without starting a shell (as xargs runs a program), which halves what a short command
// costs. Anything else is left to /bin/sh.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace taskfarm::command {

// The words of `command` as /bin/sh -c would split and unquote them, when exec'ing those
// words gives what /bin/sh gives; nullopt when a shell is needed. Conservative: nullopt on
// any character with a meaning to the shell (`$`, backquote, `"`, `;`, `&`, `|`, `<`, `>`, `(`,
// `)`, `*`, `?`, `[`, `{`, `}`, `~`, `#`, `!`, `^`, a newline, a control byte, a byte above
// 0x7F outside quotes), a first word with `=` (an assignment) or one that is a reserved
// word or a builtin of sh or bash (`cd`, `echo`, `exit`, `[`, ...; `true` and `false` with no
// argument that starts with `-` excepted: the programs do the same, as xargs runs them), an
// unterminated quote, or no word at all.
std::optional<std::vector<std::string>> plain_words(std::string_view command);

}  // namespace taskfarm::command
