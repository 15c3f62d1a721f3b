#include "template.hpp"

#include <algorithm>
#include <array>
#include <utility>

#include "text.hpp"

namespace taskfarm::command {
namespace {

std::string_view base_name(std::string_view path) {
    const auto slash = path.rfind('/');
    return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

std::string_view directory(std::string_view path) {
    const auto slash = path.rfind('/');
    if (slash == std::string_view::npos) return ".";
    return slash == 0 ? path.substr(0, 1) : path.substr(0, slash);
}

// "a/b.tar.gz" -> "a/b.tar"; only the base name's last dot counts, and not a leading one
// (".bashrc" has no extension), as in GNU parallel.
std::string_view without_extension(std::string_view path) {
    const std::string_view base = base_name(path);
    const auto dot = base.rfind('.');
    if (dot == std::string_view::npos || dot == 0) return path;
    return path.substr(0, path.size() - base.size() + dot);
}

}  // namespace

std::string shell_quote(std::string_view text) {
    std::string quoted = "'";
    for (char c : text) {
        if (c == '\'')
            quoted += "'\\''";
        else
            quoted += c;
    }
    return quoted + "'";
}

std::string word_quote(std::string_view text) {
    return is_plain_shell_word(text) ? std::string(text) : shell_quote(text);
}

std::string expand(std::string_view command_template, std::string_view input, std::uint64_t number) {
    // Longest first: "{/.}" before "{/}".
    const std::array<std::pair<std::string_view, std::string>, 6> replacements{{
        {"{/.}", word_quote(without_extension(base_name(input)))},
        {"{//}", word_quote(directory(input))},
        {"{}", word_quote(input)},
        {"{.}", word_quote(without_extension(input))},
        {"{/}", word_quote(base_name(input))},
        {"{#}", std::to_string(number)},
    }};
    std::string command;
    bool replaced = false;
    for (std::size_t at = 0; at < command_template.size();) {
        bool matched = false;
        if (command_template[at] == '{') {
            for (const auto& [name, value] : replacements) {
                if (command_template.substr(at, name.size()) == name) {
                    command += value;
                    at += name.size();
                    matched = replaced = true;
                    break;
                }
            }
        }
        if (!matched) command += command_template[at++];
    }
    if (!replaced) {
        command += ' ';
        command += word_quote(input);
    }
    return command;
}

}  // namespace taskfarm::command
