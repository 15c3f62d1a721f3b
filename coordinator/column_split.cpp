#include "column_split.hpp"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <time.h>

#include <stdexcept>

#include <fmt/format.h>

namespace taskfarm {

namespace {

// Each match may take this many steps of the matcher (PCRE2's default is ten times more, about
// a second): a separator that needs more on one value is no separator anyone means.
constexpr std::uint32_t kMatchSteps = 1'000'000;
// And this much heap for its backtracking (KiB; the interpreter), or stack (the JIT's own).
constexpr std::uint32_t kHeapKiB = 64 * 1024;
constexpr std::size_t kJitStack = 8 * 1024 * 1024;
// The step limit is PCRE2's per start position, so a pattern just under it at each of a
// million positions ran for half a minute: the time the matcher takes is bounded as well,
// over the whole run, by what a pattern anyone means takes with room to spare (a JIT-compiled
// `\s*,\s*` takes ~0.01 us a byte): kFreeNs, and kNsPerByte more for each byte split so far.
constexpr std::int64_t kFreeNs = 2'000'000'000;
constexpr std::int64_t kNsPerByte = 2'000;

std::int64_t coarse_now_ns() {
    timespec now{};
    ::clock_gettime(CLOCK_MONOTONIC_COARSE, &now);  // the vDSO's: no system call, a few ns
    return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

// The matching thread's CPU time: a system call, so taken only once the coarse wall clock says
// the bound is passed (a thread preempted mid-match counts wall time it did not run).
std::int64_t thread_cpu_ns() {
    timespec now{};
    ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
    return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

std::string pcre2_message(int code) {
    PCRE2_UCHAR buffer[256];
    if (pcre2_get_error_message(code, buffer, sizeof buffer) < 0) return fmt::format("PCRE2 error {}", code);
    return reinterpret_cast<const char*>(buffer);
}

}  // namespace

std::optional<std::string> fixed_string_of(std::string_view regex) {
    constexpr std::string_view kSpecial = "\\^$.|?*+()[]{}";
    std::string literal;
    for (std::size_t at = 0; at < regex.size(); ++at) {
        const char c = regex[at];
        if (c != '\\') {
            if (kSpecial.find(c) != std::string_view::npos) return std::nullopt;
            literal += c;
        } else if (at + 1 < regex.size() && regex[at + 1] == 't') {
            literal += '\t';
            ++at;
        } else if (at + 1 < regex.size() && kSpecial.find(regex[at + 1]) != std::string_view::npos) {
            literal += regex[++at];
        } else {
            return std::nullopt;
        }
    }
    if (literal.empty()) return std::nullopt;  // the empty regex splits between characters
    return literal;
}

struct ColumnSplit::Compiled {
    pcre2_code* code = nullptr;
    pcre2_match_context* context = nullptr;
    pcre2_jit_stack* jit_stack = nullptr;
    pcre2_match_data* data = nullptr;  // one split at a time (a job maker is one thread)
    std::uint32_t groups = 0;
    // The time budget: what the splits so far took and were allowed, and when this one began.
    std::int64_t spent_ns = 0;
    std::int64_t allowed_ns = kFreeNs;
    std::int64_t began_ns = 0;
    std::int64_t cpu_base_ns = -1;  // the thread's CPU time at the first split
    bool over = false;
    ~Compiled() {
        pcre2_match_data_free(data);
        pcre2_jit_stack_free(jit_stack);
        pcre2_match_context_free(context);
        pcre2_code_free(code);
    }
};

ColumnSplit::ColumnSplit(std::string pattern) : literal_(fixed_string_of(pattern)) {
    if (literal_) return;
    auto compiled = std::make_unique<Compiled>();
    int error = 0;
    PCRE2_SIZE offset = 0;
    compiled->code =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), 0, &error, &offset, nullptr);
    if (!compiled->code) throw std::invalid_argument(fmt::format("{} at offset {}", pcre2_message(error), offset));
    // The same pattern with a callout first, after the options PCRE2 reads only at its very
    // start ((*UTF), (*CRLF), ...): the matcher calls it at each start position it tries (the
    // first alternative is always tried first), where the time is checked. Compiled second,
    // so that an error's offset is of the pattern as given.
    std::size_t head = 0;
    while (pattern.compare(head, 2, "(*") == 0) {
        const std::size_t close = pattern.find(')', head);
        if (close == std::string::npos) break;
        head = close + 1;
    }
    const std::string timed = pattern.substr(0, head) + "(?C1)" + pattern.substr(head);
    pcre2_code* with_callout =
        pcre2_compile(reinterpret_cast<PCRE2_SPTR>(timed.data()), timed.size(), 0, &error, &offset, nullptr);
    if (!with_callout) throw std::invalid_argument(fmt::format("{} at offset {}", pcre2_message(error), offset));
    pcre2_code_free(compiled->code);
    compiled->code = with_callout;
    compiled->context = pcre2_match_context_create(nullptr);
    compiled->data = pcre2_match_data_create_from_pattern(compiled->code, nullptr);
    if (!compiled->context || !compiled->data) throw std::bad_alloc();
    pcre2_set_match_limit(compiled->context, kMatchSteps);
    pcre2_set_callout(
        compiled->context,
        [](pcre2_callout_block*, void* data) {
            auto& c = *static_cast<Compiled*>(data);
            if (c.spent_ns + (coarse_now_ns() - c.began_ns) <= c.allowed_ns) return 0;
            // Past the bound in wall time: the thread's CPU time since the first split decides
            // (its other work counted too, so never less than the matching's), and becomes the
            // time spent so far, so that a run preempted on a loaded machine goes on.
            const std::int64_t cpu = thread_cpu_ns() - c.cpu_base_ns;
            if (cpu <= c.allowed_ns) {
                c.spent_ns = cpu;
                c.began_ns = coarse_now_ns();
                return 0;
            }
            c.over = true;
            return static_cast<int>(PCRE2_ERROR_CALLOUT);
        },
        compiled.get());
    pcre2_set_heap_limit(compiled->context, kHeapKiB);
    // The JIT (where the platform has it) is several times faster; without it, the interpreter.
    if (pcre2_jit_compile(compiled->code, PCRE2_JIT_COMPLETE) == 0) {
        compiled->jit_stack = pcre2_jit_stack_create(32 * 1024, kJitStack, nullptr);
        if (compiled->jit_stack) pcre2_jit_stack_assign(compiled->context, nullptr, compiled->jit_stack);
    }
    pcre2_pattern_info(compiled->code, PCRE2_INFO_CAPTURECOUNT, &compiled->groups);
    compiled_ = std::move(compiled);
}

ColumnSplit::~ColumnSplit() = default;
ColumnSplit::ColumnSplit(ColumnSplit&&) noexcept = default;
ColumnSplit& ColumnSplit::operator=(ColumnSplit&&) noexcept = default;

std::vector<std::string> ColumnSplit::split(std::string_view value) const {
    std::vector<std::string> columns;
    if (value.empty()) return {std::string()};  // as parallel: an empty value is one empty column
    if (literal_) {
        for (std::size_t at = 0;;) {
            const std::size_t found = value.find(*literal_, at);
            if (found == std::string_view::npos) {
                columns.emplace_back(value.substr(at));
                return columns;
            }
            columns.emplace_back(value.substr(at, found - at));
            at = found + literal_->size();
        }
    }
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(value.data());
    Compiled& c = *compiled_;
    c.allowed_ns += static_cast<std::int64_t>(value.size()) * kNsPerByte;
    c.began_ns = coarse_now_ns();
    if (c.cpu_base_ns < 0) c.cpu_base_ns = thread_cpu_ns();
    // Coarse (4 ms ticks): a short split counts a tick or none, which evens out over many.
    struct Account {
        Compiled& c;
        ~Account() { c.spent_ns += coarse_now_ns() - c.began_ns; }
    } account{c};
    std::size_t at = 0;  // where the column being cut starts
    while (at < value.size()) {
        // As Perl's split: a match must end past the column's start (no empty match there;
        // the matcher tries the pattern's other ways first, then the next position).
        const int found = pcre2_match(compiled_->code, subject, value.size(), at, PCRE2_NOTEMPTY_ATSTART,
                                      compiled_->data, compiled_->context);
        if (found == PCRE2_ERROR_NOMATCH) break;
        if (found < 0 && c.over)
            throw std::runtime_error(fmt::format(
                "matching took {:.1f} s, more than the {:.1f} s allowed so far ({} s and {} us a byte of the "
                "values split), at a value of {} bytes",
                static_cast<double>(c.spent_ns + coarse_now_ns() - c.began_ns) / 1e9,
                static_cast<double>(c.allowed_ns) / 1e9, kFreeNs / 1'000'000'000, kNsPerByte / 1000, value.size()));
        if (found < 0)
            throw std::runtime_error(
                fmt::format("matching a value of {} bytes stopped: {}", value.size(), pcre2_message(found)));
        const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(compiled_->data);
        columns.emplace_back(value.substr(at, ovector[0] - at));
        for (std::uint32_t group = 1; group <= compiled_->groups; ++group) {
            const PCRE2_SIZE start = ovector[2 * group];
            if (static_cast<int>(group) < found && start != PCRE2_UNSET)
                columns.emplace_back(value.substr(start, ovector[2 * group + 1] - start));
            else
                columns.emplace_back();  // a group that took no part: Perl's undef
        }
        at = ovector[1];
    }
    columns.emplace_back(value.substr(at));  // the last column, empty too (limit -1)
    return columns;
}

}  // namespace taskfarm
