#pragma once
// Lines of a descriptor, each bounded as it is read: a line over the limit is refused
// before more of it than the limit (and one read's worth) is held, however long it is.

#include <cstddef>
#include <string>
#include <vector>

#include "protocol.hpp"

namespace taskfarm {

// The longest plan or input line accepted: a task is made of its line, and a task never
// travels in more than one frame of the protocol, so a longer one could never run as a
// worker's (the same plan runs in every mode, so every mode refuses it alike).
inline constexpr std::size_t kMaxLineBytes = proto::kMaxFrameBytes;

class LineReader {
public:
    enum class Got {
        Line,     // the next line, without its '\n' (a last line without one counts)
        End,      // no more
        TooLong,  // the next line has more than `max` bytes: nothing after it is read
        Stopped,  // `stop_fd` became readable while waiting for input
    };
    // Reads `fd` (not owned). With `stop_fd` >= 0, every wait for input also watches it.
    explicit LineReader(int fd, std::size_t max = kMaxLineBytes, int stop_fd = -1);
    // Throws std::system_error when reading fails.
    Got next(std::string& line);

private:
    bool fill();  // reads more into the buffer; false at the end (or when stopped: stopped_)

    int fd_;
    std::size_t max_;
    int stop_fd_;
    std::vector<char> buffer_;
    std::size_t begin_ = 0;  // unread bytes: [begin_, end_)
    std::size_t end_ = 0;
    bool eof_ = false;
    bool stopped_ = false;
    bool refused_ = false;  // a line was too long: the reader is done
};

// The message for a line that LineReader refused.
std::string too_long_text(std::size_t max = kMaxLineBytes);

}  // namespace taskfarm
