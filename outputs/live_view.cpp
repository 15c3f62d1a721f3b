#include "live_view.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <optional>
#include <string_view>
#include <system_error>
#include <thread>
#include <variant>

#include <fmt/format.h>
#include <httplib.h>
#include <spdlog/spdlog.h>

#include "errors.hpp"
#include "live_view_assets.hpp"
#include "live_view_door.hpp"
#include "task.hpp"

namespace taskfarm {
namespace {

using Clock = std::chrono::steady_clock;

enum BarStatus { kOk = 0, kFailed = 1, kLost = 2 };

// Bars shorter than this share of the time so far, and as close to the one before on their
// lane, are merged into it: a million tiny tasks make a few thousand bars, not a million.
constexpr double kMergeShare = 1.0 / 1000;
constexpr double kMergeLeast_s = 0.001;
// A page that falls this many messages behind gets a fresh snapshot instead.
constexpr std::size_t kMaxQueued = 50;
// An open page with nothing new gets a comment this often: a page that went away is noticed.
constexpr auto kKeepAlive = std::chrono::seconds(5);
// A request for the page or its script or style is answered within this, or cut.
constexpr auto kRequestDeadline = std::chrono::seconds(10);

std::string dump(const nlohmann::json& document) {
    // Replace, not throw, on bytes that are not UTF-8: an error text may hold anything.
    return document.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string sse(const char* event, const nlohmann::json& document) {
    return fmt::format("event: {}\ndata: {}\n\n", event, dump(document));  // dump() has no line breaks
}

// Where a worker runs, from its WorkerStarted event's detail.
std::string where_of(const std::string& detail, bool slurm) {
    constexpr std::string_view kRemote = "remote on ";
    if (detail.starts_with(kRemote)) {
        std::string host = detail.substr(kRemote.size());
        host = host.substr(0, host.rfind(", attached"));
        return fmt::format("{} {}", slurm ? "Slurm node" : "remote host", host);
    }
    return "this machine, " + detail;  // "pid 1234"
}

std::string random_token() {
    unsigned char bytes[16];
    for (std::size_t got = 0; got < sizeof bytes;) {
        const ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
        if (n < 0 && errno != EINTR)
            throw std::runtime_error(fmt::format("cannot make a token for --ui: {}", std::strerror(errno)));
        if (n > 0) got += static_cast<std::size_t>(n);
    }
    std::string token;
    for (unsigned char byte : bytes) token += fmt::format("{:02x}", byte);
    return token;
}

}  // namespace

std::optional<UiAddress> parse_ui_address(const std::string& text) {
    const auto colon = text.rfind(':');
    UiAddress address{colon == std::string::npos ? "127.0.0.1" : text.substr(0, colon), 0};
    const std::string port = colon == std::string::npos ? text : text.substr(colon + 1);
    const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), address.port);
    if (port.empty() || ec != std::errc{} || end != port.data() + port.size() || address.port < 0 ||
        address.port > 65535)
        return std::nullopt;
    return address;
}

// ---- LiveState

LiveState::LiveState(std::string title, bool slurm) : title_(std::move(title)), slurm_(slurm) {}

double LiveState::now_s(const Mode& mode) const {
    if (mode.end_s >= 0) return mode.end_s;
    return std::chrono::duration<double>(Clock::now() - mode.began).count();
}

std::optional<std::pair<TaskId, double>> LiveState::running_task(const Lane& lane) {
    const StartSlot::Seen seen = lane.start->get();
    if (seen.serial == lane.ended_start) return std::nullopt;
    return std::pair{seen.task, seen.at_s};
}

LiveState::Lane& LiveState::lane(Mode& mode, const std::string& worker, std::uint32_t* index) {
    static const std::string kUnassigned = "unassigned";              // a result that never ran anywhere
    const std::string& name = worker.empty() ? kUnassigned : worker;  // no copy per task
    std::uint32_t at = mode.last_lane;
    if (at >= mode.lanes.size() || mode.lanes[at].name != name) {
        auto [found, added] = mode.lane_of.try_emplace(name, static_cast<std::uint32_t>(mode.lanes.size()));
        if (added) {
            // In-process lanes (seq, t1...) never get a WorkerStarted event.
            Lane& added_lane = mode.lanes.emplace_back();
            added_lane.name = name;
            added_lane.where = fmt::format("this machine, coordinator pid {}", ::getpid());
            mode.changed = generation_;
        }
        at = mode.last_lane = found->second;
    }
    Lane& lane = mode.lanes[at];
    lane.changed = generation_;
    if (index) *index = at;
    return lane;
}

// A mode is over: its threads are gone too (worker processes say so themselves).
void LiveState::close(Mode& mode) {
    if (mode.end_s < 0) mode.end_s = now_s(mode);
    for (Lane& lane : mode.lanes)
        if (lane.alive) {
            lane.alive = false;
            lane.changed = generation_;
        }
    mode.changed = generation_;
}

void LiveState::begin_mode(const std::string& mode, std::size_t tasks) {
    std::lock_guard lock(mutex_);
    if (!modes_.empty()) close(modes_.back());
    Mode& added = modes_.emplace_back();
    added.name = mode;
    added.tasks = tasks > 0 ? tasks : given_tasks_;
    added.began = Clock::now();
    added.changed = generation_;
}

// The mode's count of tasks is now `tasks` (never below those done): it has ended when all
// are done, and goes on again when more come after it seemed over (a Farm's submits racing
// its results, a server's next job).
void LiveState::resize(Mode& mode, std::int64_t tasks) {
    const auto done = static_cast<std::int64_t>(mode.ok + mode.failed);
    mode.tasks = static_cast<std::size_t>(std::max(done, tasks));
    mode.end_s = mode.ok + mode.failed >= mode.tasks ? now_s(mode) : -1;
    mode.changed = generation_;
}

void LiveState::add_tasks(std::int64_t more) {
    std::lock_guard lock(mutex_);
    if (modes_.empty()) {  // set_tasks()'s count, which begin_mode() takes, grows
        given_tasks_ =
            static_cast<std::size_t>(std::max<std::int64_t>(0, static_cast<std::int64_t>(given_tasks_) + more));
        return;
    }
    resize(modes_.back(), static_cast<std::int64_t>(modes_.back().tasks) + more);
}

void LiveState::set_jobs(nlohmann::json jobs) {
    std::lock_guard lock(mutex_);
    if (jobs == jobs_) return;
    jobs_ = std::move(jobs);
    jobs_changed_ = generation_;
}

void LiveState::set_tasks(std::size_t tasks) {
    std::lock_guard lock(mutex_);
    given_tasks_ = tasks;
    if (modes_.empty()) return;  // begin_mode takes it
    resize(modes_.back(), static_cast<std::int64_t>(tasks));
}

void LiveState::result(const TaskResult& result) {
    std::lock_guard lock(mutex_);
    if (modes_.empty()) return;
    Mode& mode = modes_.back();
    mode.changed = generation_;
    std::uint32_t index = 0;
    Lane& lane = this->lane(mode, result.worker, &index);
    record(mode, lane, index, result);
    end_start(lane, result.id);
    if (mode.ok + mode.failed >= mode.tasks) mode.end_s = std::max(result.end_s, now_s(mode));
}

namespace {

// The same worker's name: inline for the few bytes of one ("t1", "w12"), where a call of
// memcmp per result is most of the cost.
bool same_name(const std::string& a, const std::string& b) {
    if (a.size() != b.size()) return false;
    for (std::size_t i = 0; i < a.size(); ++i)
        if (a[i] != b[i]) return false;
    return true;
}

}  // namespace

void LiveState::results(std::span<const Finished> batch) {
    std::lock_guard lock(mutex_);
    if (modes_.empty() || batch.empty()) return;
    Mode& mode = modes_.back();
    mode.changed = generation_;
    // A batch comes in runs of one lane's results (a thread's slice is all its own): the lane
    // is looked up, and its latest start read, once a run, not once a result (decision 306).
    double last_end_s = 0;
    for (std::size_t from = 0; from < batch.size();) {
        const std::string& worker = batch[from].result.worker;
        std::uint32_t index = 0;
        Lane& lane = this->lane(mode, worker, &index);  // may grow mode.lanes: held for this run only
        std::size_t to = from;
        for (; to < batch.size() && same_name(batch[to].result.worker, worker); ++to) {
            const TaskResult& result = batch[to].result;
            if (!record_short(mode, lane, result)) record(mode, lane, index, result);
            last_end_s = std::max(last_end_s, result.end_s);
        }
        end_start(lane, batch[to - 1].result.id);  // only its latest result can end its latest start
        from = to;
    }
    if (mode.ok + mode.failed >= mode.tasks) mode.end_s = std::max(last_end_s, now_s(mode));
}

void LiveState::end_start(Lane& lane, TaskId task) {
    if (const StartSlot::Seen start = lane.start->get(); start.task == task) lane.ended_start = start.serial;
}

bool LiveState::record_short(Mode& mode, Lane& lane, const TaskResult& result) {
    if (!result.ok || !lane.last_bar) return false;
    Bar& last = mode.bars[*lane.last_bar];
    const double merge_s = std::max(kMergeLeast_s, result.end_s * kMergeShare);
    if (!last.ok || result.end_s - result.start_s >= merge_s || result.start_s - last.end_s >= merge_s) return false;
    ++mode.ok;
    ++lane.done;
    last.end_s = std::max(last.end_s, result.end_s);
    ++last.tasks;
    last.changed = generation_;
    return true;
}

void LiveState::record(Mode& mode, Lane& lane, std::uint32_t index, const TaskResult& result) {
    ++(result.ok ? mode.ok : mode.failed);
    ++lane.done;
    const double merge_s = std::max(kMergeLeast_s, result.end_s * kMergeShare);
    Bar* last = lane.last_bar ? &mode.bars[*lane.last_bar] : nullptr;
    if (last && last->ok == result.ok && result.end_s - result.start_s < merge_s &&
        result.start_s - last->end_s < merge_s) {
        last->end_s = std::max(last->end_s, result.end_s);
        ++last->tasks;
        last->changed = generation_;
    } else {
        lane.last_bar = mode.bars.size();
        mode.bars.push_back({index, result.start_s, result.end_s, result.ok, 1, result.id, generation_});
    }
    if (!result.ok) {
        ++failures_total_;
        if (failures_.size() < kMaxFailures) failures_.push_back({mode.name, result.id, result.worker, result.error});
    }
}

StartSlot* LiveState::start_slot(const std::string& worker) {
    std::lock_guard lock(mutex_);
    if (modes_.empty()) return nullptr;
    return lane(modes_.back(), worker).start.get();
}

void LiveState::event(const RunEvent& event) {
    std::lock_guard lock(mutex_);
    if (modes_.empty()) return;
    Mode& mode = modes_.back();
    Lane& lane = this->lane(mode, event.worker);
    const StartSlot::Seen start = lane.start->get();
    switch (event.kind) {
        case RunEvent::Kind::TaskStarted: lane.start->set(event.task, event.at_s); break;
        case RunEvent::Kind::WorkerStarted:
            lane.alive = true;
            lane.where = where_of(event.detail, slurm_);
            break;
        case RunEvent::Kind::WorkerExited:
            lane.alive = false;
            lane.ended_start = start.serial;
            break;
        case RunEvent::Kind::Requeued:
            if (start.task == event.task) lane.ended_start = start.serial;
            // The lost attempt, drawn as such; never merged.
            mode.bars.push_back(
                {mode.lane_of.at(lane.name), event.started_s, event.at_s, false, 1, event.task, generation_});
            mode.bars.back().tasks = 0;  // a lost attempt is no finished task
            break;
    }
}

void LiveState::finish(const std::vector<RunReport>& reports) {
    std::lock_guard lock(mutex_);
    for (Mode& mode : modes_) close(mode);
    nlohmann::json rows = nlohmann::json::array();
    for (const RunReport& report : reports) {
        rows.push_back(report_json(reports, report));
        rows.back().erase("failures");  // the page has them, and a million would make a huge message
    }
    reports_ = std::move(rows);
}

bool LiveState::finished() const {
    std::lock_guard lock(mutex_);
    return reports_.has_value();
}

nlohmann::json LiveState::mode_json(const Mode& mode, std::size_t index, std::uint64_t since) const {
    nlohmann::json lanes = nlohmann::json::array();
    std::size_t running = 0;
    for (std::size_t i = 0; i < mode.lanes.size(); ++i) {
        const Lane& lane = mode.lanes[i];
        const auto runs = running_task(lane);
        if (runs) ++running;
        if (lane.changed < since) continue;
        lanes.push_back(
            {{"i", i},
             {"name", lane.name},
             {"where", lane.where},
             {"alive", lane.alive},
             {"done", lane.done},
             {"running", runs ? nlohmann::json::array({runs->first, runs->second}) : nlohmann::json(nullptr)}});
    }
    nlohmann::json bars = nlohmann::json::array();
    for (std::size_t i = 0; i < mode.bars.size(); ++i) {
        const Bar& bar = mode.bars[i];
        if (bar.changed < since) continue;
        const int status = bar.tasks == 0 ? kLost : bar.ok ? kOk : kFailed;
        bars.push_back({i, bar.lane, bar.start_s, bar.end_s, status, bar.tasks, bar.id});
    }
    return {{"i", index},
            {"name", mode.name},
            {"tasks", mode.tasks},
            {"ok", mode.ok},
            {"failed", mode.failed},
            {"running", running},
            {"now_s", now_s(mode)},
            {"ended", mode.end_s >= 0},
            {"lanes", std::move(lanes)},
            {"bars", std::move(bars)}};
}

nlohmann::json LiveState::document(std::uint64_t since, std::size_t failures_from) const {
    nlohmann::json modes = nlohmann::json::array();
    for (std::size_t i = 0; i < modes_.size(); ++i)
        if (modes_[i].changed >= since || modes_[i].end_s < 0) modes.push_back(mode_json(modes_[i], i, since));
    nlohmann::json failures = nlohmann::json::array();
    for (std::size_t i = failures_from; i < failures_.size(); ++i)
        failures.push_back({{"mode", failures_[i].mode},
                            {"id", failures_[i].id},
                            {"worker", failures_[i].worker},
                            {"error", failures_[i].error}});
    nlohmann::json document = {{"modes", std::move(modes)},
                               {"failures", std::move(failures)},
                               {"failures_total", failures_total_},
                               {"finished", reports_.has_value()}};
    if (reports_) document["reports"] = *reports_;
    if (!jobs_.is_null() && jobs_changed_ >= since) document["jobs"] = jobs_;
    if (since == 0) document["title"] = title_;
    return document;
}

nlohmann::json LiveState::snapshot() {
    std::lock_guard lock(mutex_);
    return document(0, 0);
}

void LiveState::note_starts() {
    for (Mode& mode : modes_)
        for (Lane& lane : mode.lanes)
            if (const std::uint64_t serial = lane.start->get().serial; serial != lane.seen_start) {
                lane.seen_start = serial;
                lane.changed = mode.changed = generation_;
            }
}

std::optional<nlohmann::json> LiveState::delta(bool wanted) {
    std::lock_guard lock(mutex_);
    if (!wanted) {
        // No page to send it to: a page that connects gets a snapshot, and the next delta holds
        // what changes after this one, so only the generation moves on (decision 306).
        for (Mode& mode : modes_)
            for (Lane& lane : mode.lanes) lane.seen_start = lane.start->get().serial;
        failures_sent_ = failures_.size();
        reports_sent_ = reports_.has_value();
        ++generation_;
        return std::nullopt;
    }
    note_starts();
    const bool running = !modes_.empty() && modes_.back().end_s < 0;
    const bool changed =
        std::any_of(modes_.begin(), modes_.end(), [&](const Mode& m) { return m.changed >= generation_; });
    const bool news = changed || running || failures_sent_ < failures_.size() || (reports_ && !reports_sent_) ||
                      (!jobs_.is_null() && jobs_changed_ >= generation_);
    std::optional<nlohmann::json> out;
    if (news) out = document(generation_, failures_sent_);
    failures_sent_ = failures_.size();
    reports_sent_ = reports_.has_value();
    ++generation_;
    return out;
}

// ---- LiveView

// A named namespace, not an anonymous one: LiveView::Server holds an Http, and in a unity build
// (decision 278) GCC would warn of a member whose type has internal linkage.
namespace live_http {

// cpp-httplib's handling of one request (parsing, routing, the response, a chunked stream)
// on a connection the door has vetted; its own accept loop and thread pool are not used:
// they hold a thread per connection, proven or not, for as long as the client likes.
class Http final : public httplib::Server {
public:
    // One request, answered with "Connection: close": no connection outlives its request.
    bool serve(httplib::Stream& stream) {
        bool closed = false;
        return process_request(stream, /*close_connection=*/true, closed, nullptr);
    }
    // cpp-httplib ends a content provider when this is no socket: a stop.
    void serving(int fd) { svr_sock_ = fd; }
};

// A vetted connection to cpp-httplib: the head the door has read, then the socket, every
// wait at most kIoTimeout and, unless it is an event stream, all of it within a deadline.
class Connection final : public httplib::Stream {
public:
    Connection(int fd, std::string head, std::optional<Clock::time_point> deadline)
        : fd_(fd), head_(std::move(head)), deadline_(deadline) {}

    bool is_readable() const override { return given_ < head_.size() || wait(POLLIN); }
    bool is_writable() const override { return wait(POLLOUT); }

    ssize_t read(char* ptr, std::size_t size) override {
        if (given_ < head_.size()) {
            const std::size_t n = std::min(size, head_.size() - given_);
            std::memcpy(ptr, head_.data() + given_, n);
            given_ += n;
            return static_cast<ssize_t>(n);
        }
        if (!wait(POLLIN)) return -1;
        ssize_t got;
        do got = ::recv(fd_, ptr, size, 0);
        while (got < 0 && errno == EINTR);
        return got;
    }

    ssize_t write(const char* ptr, std::size_t size) override {
        if (!wait(POLLOUT)) return -1;
        ssize_t sent;
        do sent = ::send(fd_, ptr, size, MSG_NOSIGNAL);
        while (sent < 0 && errno == EINTR);
        return sent < 0 && errno == EAGAIN ? 0 : sent;  // cpp-httplib writes the rest again
    }

    void get_remote_ip_and_port(std::string& ip, int& port) const override { address(::getpeername, ip, port); }
    void get_local_ip_and_port(std::string& ip, int& port) const override { address(::getsockname, ip, port); }
    socket_t socket() const override { return fd_; }

private:
    static constexpr auto kIoTimeout = std::chrono::seconds(5);

    bool wait(short events) const {
        auto left = std::chrono::duration_cast<Clock::duration>(kIoTimeout);
        if (deadline_) left = std::min(left, *deadline_ - Clock::now());
        if (left <= Clock::duration::zero()) return false;
        pollfd polled{fd_, events, 0};
        const int ms = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(left).count());
        int ready;
        do ready = ::poll(&polled, 1, ms);
        while (ready < 0 && errno == EINTR);
        return ready > 0 && (polled.revents & events) != 0 && (polled.revents & (POLLERR | POLLNVAL)) == 0;
    }

    void address(int (*get)(int, sockaddr*, socklen_t*), std::string& ip, int& port) const {
        sockaddr_in peer{};
        socklen_t length = sizeof peer;
        char text[INET_ADDRSTRLEN] = {};
        if (get(fd_, reinterpret_cast<sockaddr*>(&peer), &length) == 0 && peer.sin_family == AF_INET &&
            ::inet_ntop(AF_INET, &peer.sin_addr, text, sizeof text)) {
            ip = text;
            port = ntohs(peer.sin_port);
        }
    }

    const int fd_;
    const std::string head_;
    std::size_t given_ = 0;
    const std::optional<Clock::time_point> deadline_;
};

}  // namespace live_http

using live_http::Connection;
using live_http::Http;

class LiveView::Server : public std::enable_shared_from_this<LiveView::Server> {
public:
    struct Page {
        std::deque<std::string> queue;  // SSE messages not yet written
        bool behind = false;            // fell kMaxQueued behind: the queue restarts with a snapshot
    };

    explicit Server(std::shared_ptr<LiveState> state) : state_(std::move(state)) {}

    void routes(const std::string& token) {
        base_ = "/" + token + "/";
        http_.set_payload_max_length(4096);  // the page is read only: no request has a body to speak of
        const auto headers = [](httplib::Response& response) {
            // Defence in depth: the page escapes every text, and no script but its own may run.
            response.set_header("Content-Security-Policy",
                                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                                "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'");
            response.set_header("X-Content-Type-Options", "nosniff");
            response.set_header("Referrer-Policy", "no-referrer");
            response.set_header("Cache-Control", "no-store");
        };
        http_.Get(base_, [headers](const httplib::Request&, httplib::Response& response) {
            headers(response);
            response.set_content(std::string(ui_assets::kPageHtml), "text/html; charset=utf-8");
        });
        http_.Get(base_ + "page.js", [headers](const httplib::Request&, httplib::Response& response) {
            headers(response);
            response.set_content(std::string(ui_assets::kPageJs), "text/javascript; charset=utf-8");
        });
        http_.Get(base_ + "page.css", [headers](const httplib::Request&, httplib::Response& response) {
            headers(response);
            response.set_content(std::string(ui_assets::kPageCss), "text/css; charset=utf-8");
        });
        http_.Get(base_ + "events", [this, headers](const httplib::Request&, httplib::Response& response) {
            headers(response);
            auto page = std::make_shared<Page>();
            {
                std::lock_guard lock(mutex_);
                page->queue.push_back(sse("state", state_->snapshot()));
                pages_.push_back(page);
            }
            response.set_chunked_content_provider(
                "text/event-stream", [this, page](std::size_t, httplib::DataSink& sink) { return stream(*page, sink); },
                [this, page](bool) {
                    std::lock_guard lock(mutex_);
                    std::erase(pages_, page);
                });
        });
        http_.set_error_handler([](const httplib::Request&, httplib::Response& response) {
            response.set_content(
                fmt::format("{}: the page is at the address the coordinator printed\n", response.status), "text/plain");
        });
    }

    // Binds; the port (a free one for 0), or an error message.
    std::variant<int, std::string> bind(const std::string& host, int port) {
        try {
            door_.emplace(host, port);
            return door_->port();
        } catch (const std::system_error& e) {
            return std::string(std::strerror(e.code().value()));
        }
    }

    void start(const std::string& token) {
        http_.serving(door_->listening_fd());
        std::weak_ptr<Server> weak = weak_from_this();
        door_->start(token, [weak](UiDoor::Request& request) {
            if (const auto self = weak.lock()) self->handle(request);
        });
        flusher_ = std::jthread([this](std::stop_token stop) { flush_every_interval(stop); });
    }

    // Bounded: the flusher wakes at once, and the door waits at most UiDoor::kStopWait.
    void stop() {
        {
            std::lock_guard lock(mutex_);
            if (stopping_) return;
            stopping_ = true;
        }
        wake_.notify_all();
        if (flusher_.joinable()) {
            flusher_.request_stop();
            flusher_.join();
        }
        if (door_) {
            door_->stop();
            if (door_->refused() > 0)
                spdlog::debug(
                    "live view: {} connection(s) closed unserved: without the token, too slow, or over a limit",
                    door_->refused());
        }
        http_.serving(INVALID_SOCKET);
    }

    ~Server() { stop(); }

private:
    // On the request's own thread (the door's handler).
    void handle(UiDoor::Request& request) {
        // An event stream lasts as long as the run; every other answer has kRequestDeadline.
        const std::string_view rest =
            std::string_view(request.head).substr(std::min(request.head.size(), base_.size() + 4));
        const bool events = rest.starts_with("events") && rest.size() > 6 && (rest[6] == ' ' || rest[6] == '?');
        std::optional<Clock::time_point> deadline;
        if (!events) deadline = request.accepted + kRequestDeadline;
        Connection connection(request.fd, std::move(request.head), deadline);
        http_.serve(connection);
    }

    bool stream(Page& page, httplib::DataSink& sink) {
        std::unique_lock lock(mutex_);
        if (page.behind) {
            page.behind = false;
            page.queue.assign(1, sse("state", state_->snapshot()));
        }
        wake_.wait_for(lock, kKeepAlive, [&] { return stopping_ || ended_ || !page.queue.empty(); });
        if (stopping_) return false;
        if (page.queue.empty()) {
            if (!ended_) return sink.write(": keep-alive\n\n", 15);
            // The run is over and the page has all of it: the stream ends (the page does not reconnect).
            lock.unlock();
            const std::string end = "event: end\ndata: {}\n\n";
            if (!sink.write(end.data(), end.size())) return false;
            sink.done();
            return true;
        }
        const std::string message = std::move(page.queue.front());
        page.queue.pop_front();
        lock.unlock();
        return sink.write(message.data(), message.size());
    }

    void flush_every_interval(std::stop_token stop) {
        std::mutex sleep_mutex;
        std::condition_variable_any sleeping;
        while (!stop.stop_requested()) {
            {
                std::unique_lock sleep_lock(sleep_mutex);
                sleeping.wait_for(sleep_lock, stop, kFlushInterval, [] { return false; });
            }
            std::lock_guard lock(mutex_);  // deltas go out in the order made, after any snapshot taken before
            const bool finished = state_->finished();
            const auto delta = state_->delta(!pages_.empty());  // nothing built for no page
            if (delta && !pages_.empty()) {
                const auto message = sse("state", *delta);
                for (auto& page : pages_) {
                    if (page->queue.size() >= kMaxQueued) {
                        page->behind = true;
                        page->queue.clear();
                    } else {
                        page->queue.push_back(message);
                    }
                }
            }
            if (finished) ended_ = true;  // the delta made after finish() holds the table
            wake_.notify_all();
        }
    }

    const std::shared_ptr<LiveState> state_;
    Http http_;
    std::string base_;
    std::optional<UiDoor> door_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::vector<std::shared_ptr<Page>> pages_;
    bool stopping_ = false;
    bool ended_ = false;
    std::jthread flusher_;
};

LiveView::LiveView(const std::string& address, std::string title, bool slurm)
    : state_(std::make_shared<LiveState>(std::move(title), slurm)), server_(std::make_shared<Server>(state_)) {
    const auto parsed = parse_ui_address(address);
    if (!parsed) throw ConfigError(fmt::format("--ui: '{}' is not [ADDRESS:]PORT (e.g. --ui 127.0.0.1:0)", address));
    const std::string host = parsed->host == "*" ? "0.0.0.0" : parsed->host;
    token_ = random_token();
    server_->routes(token_);
    const auto bound = server_->bind(host, parsed->port);
    if (const auto* why = std::get_if<std::string>(&bound))
        throw ConfigError(fmt::format("--ui: cannot listen on {}:{}: {} (PORT 0 picks a free one: --ui {}:0)", host,
                                      parsed->port, *why, parsed->host));
    const std::string& shown = host == "0.0.0.0" ? this_host() : host;
    url_ = fmt::format("http://{}:{}/{}/", shown, std::get<int>(bound), token_);
}

LiveView::~LiveView() { server_->stop(); }

void LiveView::start() { server_->start(token_); }

}  // namespace taskfarm
