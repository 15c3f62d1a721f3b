#include "process_title.hpp"

#include <sys/prctl.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

namespace taskfarm {
namespace {

// Where the kernel keeps this process's arguments: fields 48 and 49 of /proc/self/stat
// (arg_start, arg_end; Linux 3.5 and later). {0, 0} when they cannot be read.
std::pair<std::uintptr_t, std::uintptr_t> argument_block() {
    std::ifstream file("/proc/self/stat");
    std::stringstream text;
    text << file.rdbuf();
    const std::string stat = text.str();
    const auto close = stat.rfind(')');  // after the name, which may hold anything
    if (close == std::string::npos) return {0, 0};
    std::istringstream fields(stat.substr(close + 1));
    std::string field;
    // The field after the name is number 3: arg_start is the 46th from there.
    for (int number = 3; number < 48 && fields >> field; ++number) {
    }
    std::uintptr_t start = 0;
    std::uintptr_t end = 0;
    if (!(fields >> start >> end) || end <= start) return {0, 0};
    return {start, end};
}

}  // namespace

ProcessTitle::ProcessTitle(std::string_view title, std::string_view name) {
    const auto [start, end] = argument_block();
    if (start != 0) {
        args_ = reinterpret_cast<char*>(start);
        size_ = end - start;
    }
    // The last byte of the block stays NUL: the kernel then shows the block as it is.
    const std::size_t fits = std::min({title.size(), sizeof text_ - 1, size_ > 0 ? size_ - 1 : 0});
    std::memcpy(text_, title.data(), fits);
    std::memcpy(name_, name.data(), std::min(name.size(), sizeof name_ - 1));
}

void ProcessTitle::apply(long number) const noexcept {
    if (name_[0] != '\0') ::prctl(PR_SET_NAME, name_);
    if (!args_) return;
    char text[sizeof text_ + 24];
    std::size_t length = ::strnlen(text_, sizeof text_);
    std::memcpy(text, text_, length);
    if (number >= 0) {
        char digits[24];
        std::size_t count = 0;
        do {
            digits[count++] = static_cast<char>('0' + number % 10);
            number /= 10;
        } while (number > 0);
        text[length++] = ' ';
        while (count > 0) text[length++] = digits[--count];
    }
    length = std::min(length, size_ - 1);
    std::memcpy(args_, text, length);
    std::memset(args_ + length, 0, size_ - length);
}

}  // namespace taskfarm
