#include "control.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>
#include <zmq.hpp>

#include "stop_wake.hpp"
#include "text.hpp"
#include "temp_dirs.hpp"
#include "wire.hpp"

namespace taskfarm {
namespace {

constexpr std::size_t kMaxIpcPath = 107;                // sizeof(sockaddr_un::sun_path) - 1
constexpr auto kPoll = std::chrono::milliseconds(100);  // how soon the server notices it should end
constexpr auto kAnswerTimeout = std::chrono::seconds(5);
constexpr std::size_t kMaxIds = 100'000;  // in one request

// Where control directories go: $TMPDIR, or /tmp where an ipc path there would be too long.
std::filesystem::path control_base() {
    std::error_code ec;
    std::string base = std::filesystem::temp_directory_path(ec).string();
    if (ec || base.size() > kMaxIpcPath - 48) base = "/tmp";
    return base;
}

std::string answer(const nlohmann::json& body) {
    return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// One request's answer; never throws.
std::string serve(CancelBoard& board, std::string_view request) {
    try {
        const nlohmann::json body = nlohmann::json::parse(request);
        if (!body.is_object() || !body.contains("cancel") || !body.at("cancel").is_array())
            return answer({{"ok", false}, {"error", "want {\"cancel\": [ID, ...]}"}});
        const auto& list = body.at("cancel");
        if (list.empty() || list.size() > kMaxIds)
            return answer({{"ok", false}, {"error", fmt::format("want 1 to {} task ids", kMaxIds)}});
        std::vector<TaskId> ids;
        for (const auto& id : list) {
            if (!id.is_number_unsigned()) return answer({{"ok", false}, {"error", "a task id is a whole number >= 0"}});
            ids.push_back(id.get<TaskId>());
        }
        // Answered with what the run did, once it did it (CancelBoard::request).
        const std::vector<CancelOutcome> outcomes = board.request(ids);
        nlohmann::json answers = nlohmann::json::array();
        bool all = true;
        for (const CancelOutcome& outcome : outcomes) {
            all = all && outcome.cancelled;
            answers.push_back({{"id", outcome.id}, {"cancelled", outcome.cancelled}, {"what", outcome.what}});
            spdlog::warn("coordinator cancel: task {}: {}", outcome.id, outcome.what);
        }
        return answer({{"ok", all}, {"pid", ::getpid()}, {"cancel", ids}, {"outcomes", std::move(answers)}});
    } catch (const std::exception& e) {
        return answer({{"ok", false}, {"error", printable(e.what())}});
    }
}

// Why `info` (an lstat of a control directory) is not one this user may trust, or empty.
// Another local user can plant anything in a shared TMPDIR: a symlink to a socket of their
// own (whose "ok" would be a lie), a directory of theirs (that would make --run ambiguous).
std::string untrusted_dir(const struct stat& info) {
    if (S_ISLNK(info.st_mode)) return "a symbolic link";
    if (!S_ISDIR(info.st_mode)) return "not a directory";
    if (info.st_uid != ::getuid())
        return fmt::format("owned by uid {}, not by this user (uid {})", info.st_uid, ::getuid());
    if ((info.st_mode & 077) != 0) return fmt::format("mode {:04o}, not 0700", info.st_mode & 07777);
    return {};
}

// The control directory of the coordinator with pid `pid` that this user owns.
std::filesystem::path find_run(const std::string& pid) {
    std::vector<std::filesystem::path> found;
    std::error_code ec;
    const std::string prefix = fmt::format("taskfarm-run-{}-", pid);
    for (const auto& base : {control_base(), std::filesystem::path("/tmp")}) {
        for (const auto& entry : std::filesystem::directory_iterator(base, ec)) {
            const std::string name = entry.path().filename().string();
            if (!name.starts_with(prefix) || name.size() != prefix.size() + 6) continue;
            if (std::find(found.begin(), found.end(), entry.path()) != found.end()) continue;
            struct stat info {};
            if (::lstat(entry.path().c_str(), &info) != 0) continue;  // gone meanwhile
            if (const std::string why = untrusted_dir(info); !why.empty()) {
                spdlog::warn("--run {}: skipping '{}': {}", pid, printable(entry.path().string()), why);
                continue;
            }
            found.push_back(entry.path());
        }
        if (!found.empty()) break;
    }
    if (found.empty())
        throw ConfigError(
            fmt::format("--run {}: no run of a coordinator with pid {} is here (no {}XXXXXX of this user in "
                        "'{}'); is it running, as this user, with the same TMPDIR?",
                        pid, pid, prefix, control_base().string()));
    if (found.size() > 1)
        throw ConfigError(fmt::format("--run {}: {} control directories match ('{}', '{}'); give the directory", pid,
                                      found.size(), found[0].string(), found[1].string()));
    return found.front();
}

// A descriptor of the control directory `dir`, opened without following a symlink and
// checked as find_run checks; the socket is then reached through it (/proc/self/fd/N), so
// what was checked is what is used. Throws ConfigError.
int open_run_dir(const std::filesystem::path& dir, const std::string& run) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    struct stat info {};
    if (fd < 0) {
        const int error = errno;
        if (::lstat(dir.c_str(), &info) == 0 && S_ISLNK(info.st_mode))
            throw ConfigError(fmt::format("--run '{}': '{}' is a symbolic link; give the directory itself",
                                          printable(run), printable(dir.string())));
        throw ConfigError(fmt::format("--run '{}': not a run's control directory or a coordinator's pid ({})",
                                      printable(run), std::strerror(error)));
    }
    std::string why;
    if (::fstat(fd, &info) != 0) why = std::strerror(errno);
    if (why.empty()) why = untrusted_dir(info);
    struct stat socket_info {};
    if (why.empty() && ::fstatat(fd, "control", &socket_info, AT_SYMLINK_NOFOLLOW) != 0)
        why = "no control socket in it (has the run ended?)";
    else if (why.empty() && !S_ISSOCK(socket_info.st_mode))
        why = "its 'control' is not a socket";
    else if (why.empty() && socket_info.st_uid != ::getuid())
        why = fmt::format("its control socket is owned by uid {}, not by this user", socket_info.st_uid);
    if (!why.empty()) {
        ::close(fd);
        throw ConfigError(fmt::format("--run '{}': '{}' is not a control directory of this user's: {}", printable(run),
                                      printable(dir.string()), why));
    }
    return fd;
}

}  // namespace

TaskResult cancelled(TaskResult result) {
    result.ok = false;
    result.error = kCancelledError;
    result.cancelled = true;
    return result;
}

std::vector<CancelOutcome> CancelBoard::request(const std::vector<TaskId>& ids, std::chrono::milliseconds wait) {
    std::unique_lock lock(mutex_);
    std::vector<CancelOutcome> outcomes;
    if (!open_) {
        for (TaskId id : ids)
            outcomes.push_back({id, false,
                                "no mode of the run is running now (not started yet, between modes, or "
                                "ending): nothing cancelled"});
        return outcomes;
    }
    std::vector<TaskId> dispatched;  // to wait for
    for (TaskId id : ids) {
        if (!requested_.insert(id).second) {
            outcomes.push_back({id, true, "cancel asked for already"});
            continue;
        }
        requests_.store(requested_.size(), std::memory_order_seq_cst);
        new_.push_back(id);
        if (attached_) {
            waiting_[id].reset();
            dispatched.push_back(id);
            outcomes.push_back({id, false, {}});  // filled below
        } else if (stop_running(id)) {
            outcomes.push_back({id, true, "running: stopped, and recorded as cancelled (unless it finished ok first)"});
        } else {
            outcomes.push_back({id, true,
                                "not running: recorded as cancelled when its turn comes, unless it has its "
                                "result already"});
        }
    }
    fresh_.store(!new_.empty(), std::memory_order_release);
    if (dispatched.empty()) return outcomes;
    answered_.wait_for(lock, wait, [&] {
        return !attached_ || std::all_of(dispatched.begin(), dispatched.end(),
                                         [&](TaskId id) { return waiting_.at(id).has_value(); });
    });
    for (CancelOutcome& outcome : outcomes) {
        const auto found = waiting_.find(outcome.id);
        if (found == waiting_.end() || std::find(dispatched.begin(), dispatched.end(), outcome.id) == dispatched.end())
            continue;
        if (found->second)
            outcome = *found->second;
        else if (!attached_)
            outcome.what = "the mode ended before it applied the cancel: nothing cancelled";
        else
            outcome.what = fmt::format("the run did not apply it within {} ms (it may still)", wait.count());
        waiting_.erase(found);
    }
    return outcomes;
}

void CancelBoard::applied(TaskId id, bool cancelled, std::string what) {
    {
        std::lock_guard lock(mutex_);
        const auto found = waiting_.find(id);
        if (found == waiting_.end()) return;  // asked before the dispatcher came: answered then
        found->second = CancelOutcome{id, cancelled, std::move(what)};
    }
    answered_.notify_all();
}

CancelBoard::Attached::Attached(CancelBoard* board) : board_(board) {
    if (!board_) return;
    std::lock_guard lock(board_->mutex_);
    board_->attached_ = true;
}

CancelBoard::Attached::~Attached() {
    if (!board_) return;
    {
        std::lock_guard lock(board_->mutex_);
        board_->attached_ = false;
    }
    board_->answered_.notify_all();
}

void CancelBoard::clear() {
    std::lock_guard lock(mutex_);
    requested_.clear();
    requests_.store(0, std::memory_order_seq_cst);
    new_.clear();
    open_ = true;
    fresh_.store(false, std::memory_order_release);
}

void CancelBoard::close() {
    std::lock_guard lock(mutex_);
    open_ = false;
}

bool CancelBoard::requested(TaskId id) const {
    std::lock_guard lock(mutex_);
    return requested_.contains(id);
}

bool CancelBoard::stop_running(TaskId id) {
    // A Lane stores its task's id, then reads stopping_; this increments stopping_, then reads
    // the ids (all sequentially consistent): either this sees the id, or the Lane sees that a
    // stop may come and waits for the mutex before it reuses its source.
    stopping_.fetch_add(1, std::memory_order_seq_cst);
    bool found = false;
    for (Lane* lane : lanes_) {
        if (lane->running_.load(std::memory_order_seq_cst) != id) continue;
        lane->source_.request_stop();
        found = true;
    }
    stopping_.fetch_sub(1, std::memory_order_seq_cst);
    return found;
}

CancelBoard::Lane::Lane(CancelBoard* board, std::stop_token run_stop) : board_(board), run_stop_(std::move(run_stop)) {
    if (!board_) return;
    link();
    std::lock_guard lock(board_->mutex_);
    board_->lanes_.push_back(this);
}

CancelBoard::Lane::~Lane() {
    if (!board_) return;
    std::lock_guard lock(board_->mutex_);
    std::erase(board_->lanes_, this);
}

void CancelBoard::Lane::link() {
    link_.reset();
    source_ = std::stop_source();
    link_.emplace(run_stop_, std::function<void()>([source = source_]() mutable { source.request_stop(); }));
}

bool CancelBoard::Lane::begin(TaskId id) {
    if (!board_) return true;
    running_.store(id, std::memory_order_seq_cst);
    if (board_->requests_.load(std::memory_order_seq_cst) == 0) return true;
    if (!board_->requested(id)) return true;
    end();  // a cancel may have stopped the source meanwhile: a fresh one for the next task
    return false;
}

bool CancelBoard::Lane::end() {
    if (!board_) return false;
    running_.store(kNoId, std::memory_order_seq_cst);
    // A request() that saw the id may still be stopping the source: wait until it is done.
    if (board_->stopping_.load(std::memory_order_seq_cst) != 0) {
        const std::lock_guard lock(board_->mutex_);
    }
    if (!source_.stop_requested()) return false;
    const bool by_cancel = !run_stop_.stop_requested();
    if (by_cancel) link();  // the run's stop stays requested: no new source then
    return by_cancel;
}

std::vector<TaskId> CancelBoard::take_new() {
    std::lock_guard lock(mutex_);
    fresh_.store(false, std::memory_order_release);
    return std::exchange(new_, {});
}

ControlServer::ControlServer(CancelBoard& board) : board_(board) {
    std::string pattern = (control_base() / fmt::format("taskfarm-run-{}-XXXXXX", ::getpid())).string();
    if (!::mkdtemp(pattern.data()))
        throw std::runtime_error(
            fmt::format("cannot create a control directory '{}': {}", pattern, std::strerror(errno)));
    dir_ = pattern;
    keep_track_of(dir_);  // removed at exit(), or by the next run if we are killed (temp_dirs.hpp)
    const std::string endpoint = "ipc://" + (dir_ / "control").string();
    // Bound here, so that a failure is the constructor's; the socket then moves to the thread.
    auto context = std::make_shared<zmq::context_t>(1);
    auto socket = std::make_shared<zmq::socket_t>(*context, zmq::socket_type::rep);
    try {
        wire::configure(*socket, zmq::socket_type::rep);
        socket->bind(endpoint);
    } catch (const zmq::error_t& e) {
        std::error_code ec;
        std::filesystem::remove_all(dir_, ec);
        throw std::runtime_error(fmt::format("cannot bind the control socket '{}': {}", endpoint, e.what()));
    }
    thread_ = std::jthread([this, context, socket](std::stop_token stop) mutable {
        // The end of the run wakes the poll at once (an eventfd), rather than after kPoll: every
        // run's exit waited for it.
        const StopWake wake(stop);
        while (!stop.stop_requested()) {
            zmq::pollitem_t items[] = {{socket->handle(), 0, ZMQ_POLLIN, 0}, {nullptr, wake.fd(), ZMQ_POLLIN, 0}};
            try {
                zmq::poll(items, wake.fd() >= 0 ? 2 : 1, kPoll);
                if (!(items[0].revents & ZMQ_POLLIN)) continue;
                zmq::message_t request;
                if (!socket->recv(request, zmq::recv_flags::dontwait)) continue;
                bool several = false;  // a request is one frame: the rest is read and refused
                for (bool more = request.more(); more; several = true) {
                    zmq::message_t part;
                    if (!socket->recv(part, zmq::recv_flags::none)) break;
                    more = part.more();
                }
                const std::string reply = several ? answer({{"ok", false}, {"error", "a request is one frame"}})
                                                  : serve(board_, request.to_string_view());
                socket->send(zmq::buffer(reply), zmq::send_flags::dontwait);
            } catch (const zmq::error_t& e) {
                spdlog::warn("control socket: {}", e.what());
            }
        }
        socket.reset();  // before its context
        context.reset();
    });
    spdlog::info("control: cancel a task with `coordinator cancel --run {} ID...`", ::getpid());
}

ControlServer::~ControlServer() {
    thread_.request_stop();
    if (thread_.joinable()) thread_.join();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    if (ec) spdlog::warn("cannot remove '{}': {}", dir_.string(), ec.message());
    forget_temp_dir(dir_);
}

ExitCode cancel_tasks(const CancelConfig& config) {
    const bool pid = !config.run.empty() && config.run.find_first_not_of("0123456789") == std::string::npos;
    const std::filesystem::path dir = pid ? find_run(config.run) : std::filesystem::path(config.run);
    const int dir_fd = open_run_dir(dir, config.run);
    struct CloseFd {
        int fd;
        ~CloseFd() { ::close(fd); }
    } close_dir{dir_fd};

    zmq::context_t context(1);
    zmq::socket_t socket(context, zmq::socket_type::req);
    wire::configure(socket, zmq::socket_type::req);
    socket.connect(fmt::format("ipc:///proc/self/fd/{}/control", dir_fd));
    const std::string request = nlohmann::json{{"cancel", config.ids}}.dump();
    socket.send(zmq::buffer(request), zmq::send_flags::none);
    zmq::pollitem_t items[] = {{socket.handle(), 0, ZMQ_POLLIN, 0}};
    zmq::poll(items, 1, std::chrono::duration_cast<std::chrono::milliseconds>(kAnswerTimeout));
    zmq::message_t reply;
    if (!(items[0].revents & ZMQ_POLLIN) || !socket.recv(reply, zmq::recv_flags::dontwait)) {
        spdlog::error("the run at '{}' did not answer within {} s", dir.string(), kAnswerTimeout.count());
        return ExitCode::TasksFailed;
    }
    const nlohmann::json body = nlohmann::json::parse(reply.to_string_view(), nullptr, false);
    if (body.is_discarded() || !body.is_object() || !body.contains("outcomes") || !body.at("outcomes").is_array()) {
        spdlog::error("the run refused: {}",
                      printable(body.is_object() ? body.value("error", std::string("no reason")) : reply.to_string()));
        return ExitCode::TasksFailed;
    }
    // What the run did with each, as it did it: exit 0 only if every one is cancelled.
    bool all = true;
    for (const auto& outcome : body.at("outcomes")) {
        if (!outcome.is_object()) continue;
        const bool cancelled = outcome.value("cancelled", false);
        all = all && cancelled;
        fmt::print("run of pid {}: task {}: {}{}\n", body.value("pid", 0), outcome.value("id", TaskId{0}),
                   cancelled ? "cancelled: " : "NOT cancelled: ", printable(outcome.value("what", std::string())));
    }
    return all && body.value("ok", false) ? ExitCode::Ok : ExitCode::TasksFailed;
}

}  // namespace taskfarm
