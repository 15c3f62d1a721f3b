#pragma once
// --command TEMPLATE: GNU parallel's replacement strings, each replacement quoted where the
// shell would change it, so that an input is always data for /bin/sh, never code (unless the
// template puts it inside double quotes, where quotes are text: as in GNU parallel).

#include <cstdint>
#include <string>
#include <string_view>

namespace taskfarm::command {

// `text` as one /bin/sh word: 'text', with each ' written '\''. "" is ''.
std::string shell_quote(std::string_view text);

// `text` as GNU parallel puts a value into a command: as it is when the shell would not
// change it (not empty; letters, digits and _ + - . / only), else shell_quote(text). So
// `echo "v={}"` and `$(( {} * 2 ))` work for ordinary values, and any other is one word.
std::string word_quote(std::string_view text);

// The shell command for one input. In `command_template`, {} is the input, {.} the input
// without its extension, {/} its base name, {//} its directory ("." when it has none), {/.}
// the base name without extension, each quoted by word_quote(); {#} is `number` (GNU
// parallel's sequence number, from 1). A template with none of them gets the quoted input
// appended after a space. Any other brace is kept as it is.
std::string expand(std::string_view command_template, std::string_view input, std::uint64_t number);

}  // namespace taskfarm::command
