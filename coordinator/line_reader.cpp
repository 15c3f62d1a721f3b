#include "line_reader.hpp"

#include <poll.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <system_error>

#include <fmt/format.h>

namespace taskfarm {

namespace {
constexpr std::size_t kReadBytes = 64 * 1024;
}

LineReader::LineReader(int fd, std::size_t max, int stop_fd)
    : fd_(fd), max_(max), stop_fd_(stop_fd), buffer_(kReadBytes) {}

bool LineReader::fill() {
    if (eof_ || stopped_) return false;
    while (true) {
        if (stop_fd_ >= 0) {
            pollfd fds[2] = {{fd_, POLLIN, 0}, {stop_fd_, POLLIN, 0}};
            if (::poll(fds, 2, -1) < 0) {
                if (errno == EINTR) continue;
                throw std::system_error(errno, std::generic_category(), "poll");
            }
            if (fds[1].revents != 0) {
                stopped_ = true;
                return false;
            }
        }
        const ssize_t got = ::read(fd_, buffer_.data(), buffer_.size());
        if (got < 0) {
            if (errno == EINTR) continue;
            throw std::system_error(errno, std::generic_category(), "read");
        }
        if (got == 0) {
            eof_ = true;
            return false;
        }
        begin_ = 0;
        end_ = static_cast<std::size_t>(got);
        return true;
    }
}

LineReader::Got LineReader::next(std::string& line) {
    if (refused_) return Got::TooLong;
    line.clear();
    bool any = false;  // a byte of this line was read: at the end it is a line of its own
    while (true) {
        if (begin_ == end_ && !fill()) {
            if (stopped_) return Got::Stopped;
            return any ? Got::Line : Got::End;
        }
        any = true;
        const char* start = buffer_.data() + begin_;
        const std::size_t left = end_ - begin_;
        const auto* newline = static_cast<const char*>(std::memchr(start, '\n', left));
        const std::size_t take = newline ? static_cast<std::size_t>(newline - start) : left;
        if (line.size() + take > max_) {
            refused_ = true;
            line.clear();
            line.shrink_to_fit();
            return Got::TooLong;
        }
        line.append(start, take);
        begin_ += newline ? take + 1 : take;
        if (newline) return Got::Line;
    }
}

std::string too_long_text(std::size_t max) {
    return fmt::format(
        "a line of more than {} bytes, the most a task's line may hold (it must fit one message to a "
        "worker): refused as it was read",
        max);
}

}  // namespace taskfarm
