#pragma once
// --command TEMPLATE: GNU parallel's replacement strings, each replacement quoted as one
// shell word, so that an input is always data for /bin/sh, never code.

#include <cstdint>
#include <string>
#include <string_view>

namespace taskfarm::command {

// `text` as one /bin/sh word: 'text', with each ' written '\''. "" is ''.
std::string shell_quote(std::string_view text);

// The shell command for one input. In `command_template`, {} is the input, {.} the input
// without its extension, {/} its base name, {//} its directory ("." when it has none), {/.}
// the base name without extension, each quoted by shell_quote(); {#} is `number` (GNU
// parallel's sequence number, from 1). A template with none of them gets the quoted input
// appended after a space. Any other brace is kept as it is.
std::string expand(std::string_view command_template, std::string_view input, std::uint64_t number);

}  // namespace taskfarm::command
