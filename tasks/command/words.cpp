#include "words.hpp"

#include <algorithm>
#include <iterator>

namespace taskfarm::command {
namespace {

// Outside quotes, these stand for themselves in every POSIX shell and in bash.
bool plain(char c) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return true;
    switch (c) {
        case '_':
        case '-':
        case '.':
        case '/':
        case ',':
        case ':':
        case '+':
        case '@':
        case '%':
        case '=': return true;
        default: return false;
    }
}

// Reserved words and builtins of dash and bash: a first word among them means something
// else to the shell than the program of that name (echo and printf differ in their escapes,
// cd or exit have no program), or nothing without a shell.
constexpr std::string_view kShellWords[] = {
    "!",         "[",        "[[",       "]]",      "{",       "}",      ".",       ":",       "alias",   "bg",
    "bind",      "break",    "builtin",  "caller",  "case",    "cd",     "chdir",   "command", "compgen", "complete",
    "compopt",   "continue", "coproc",   "declare", "dirs",    "disown", "do",      "done",    "echo",    "elif",
    "else",      "enable",   "esac",     "eval",    "exec",    "exit",   "export",  "false",   "fc",      "fg",
    "fi",        "for",      "function", "getopts", "hash",    "help",   "history", "if",      "in",      "jobs",
    "kill",      "let",      "local",    "logout",  "mapfile", "popd",   "printf",  "pushd",   "pwd",     "read",
    "readarray", "readonly", "return",   "select",  "set",     "shift",  "shopt",   "source",  "suspend", "test",
    "then",      "time",     "times",    "trap",    "true",    "type",   "typeset", "ulimit",  "umask",   "unalias",
    "unset",     "until",    "wait",     "while"};

bool shell_word(std::string_view word) {
    return std::find(std::begin(kShellWords), std::end(kShellWords), word) != std::end(kShellWords);
}

}  // namespace

std::optional<std::vector<std::string>> plain_words(std::string_view command) {
    std::vector<std::string> words;
    // -X sends tens of thousands of words a command: one allocation for the list, and each
    // run of plain characters appended at once.
    words.reserve(static_cast<std::size_t>(std::count(command.begin(), command.end(), ' ')) + 1);
    bool first_has_equals = false;
    std::size_t at = 0;
    while (true) {
        while (at < command.size() && (command[at] == ' ' || command[at] == '\t')) ++at;
        if (at == command.size()) break;
        std::string word;
        while (at < command.size() && command[at] != ' ' && command[at] != '\t') {
            const char c = command[at];
            if (c == '\'') {
                const auto close = command.find('\'', at + 1);
                if (close == std::string_view::npos) return std::nullopt;
                word.append(command.substr(at + 1, close - at - 1));
                at = close + 1;
            } else if (c == '\\') {
                if (at + 1 == command.size() || command[at + 1] == '\n') return std::nullopt;
                word += command[at + 1];
                at += 2;
            } else if (plain(c)) {
                std::size_t end = at + 1;
                while (end < command.size() && plain(command[end])) ++end;
                if (words.empty() && command.substr(at, end - at).find('=') != std::string_view::npos)
                    first_has_equals = true;
                word.append(command.substr(at, end - at));
                at = end;
            } else {
                return std::nullopt;
            }
        }
        words.push_back(std::move(word));
    }
    if (words.empty() || words[0].empty() || first_has_equals) return std::nullopt;
    // The programs true and false differ from the builtins only in --help and --version.
    const bool no_options =
        std::none_of(words.begin() + 1, words.end(), [](const std::string& w) { return w.starts_with('-'); });
    if (no_options && (words[0] == "true" || words[0] == "false")) return words;
    if (shell_word(words[0])) return std::nullopt;
    return words;
}

}  // namespace taskfarm::command
