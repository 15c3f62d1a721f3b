#include "control.hpp"

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

#include "text.hpp"
#include "temp_dirs.hpp"
#include "wire.hpp"

namespace taskfarm {
namespace {

constexpr std::size_t kMaxIpcPath = 107;  // sizeof(sockaddr_un::sun_path) - 1
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

std::string answer(const nlohmann::json& body) { return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

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
        board.request(ids);
        spdlog::warn("cancelling task(s) {} (coordinator cancel)", fmt::join(ids, ", "));
        return answer({{"ok", true}, {"pid", ::getpid()}, {"cancel", ids}});
    } catch (const std::exception& e) {
        return answer({{"ok", false}, {"error", printable(e.what())}});
    }
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
            if (std::find(found.begin(), found.end(), entry.path()) == found.end()) found.push_back(entry.path());
        }
        if (!found.empty()) break;
    }
    if (found.empty())
        throw ConfigError(fmt::format("--run {}: no run of a coordinator with pid {} is here (no {}XXXXXX in '{}'); is it "
                                      "running, as this user, with the same TMPDIR?",
                                      pid, pid, prefix, control_base().string()));
    if (found.size() > 1)
        throw ConfigError(fmt::format("--run {}: {} control directories match ('{}', '{}'); give the directory", pid,
                                      found.size(), found[0].string(), found[1].string()));
    return found.front();
}

}  // namespace

TaskResult cancelled(TaskResult result) {
    result.ok = false;
    result.error = kCancelledError;
    result.cancelled = true;
    return result;
}

void CancelBoard::request(const std::vector<TaskId>& ids) {
    std::lock_guard lock(mutex_);
    for (TaskId id : ids) {
        if (!requested_.insert(id).second) continue;
        new_.push_back(id);
        if (const auto running = running_.find(id); running != running_.end()) running->second->request_stop();
    }
    fresh_.store(!new_.empty(), std::memory_order_release);
}

void CancelBoard::clear() {
    std::lock_guard lock(mutex_);
    requested_.clear();
    new_.clear();
    fresh_.store(false, std::memory_order_release);
}

bool CancelBoard::requested(TaskId id) const {
    std::lock_guard lock(mutex_);
    return requested_.contains(id);
}

void CancelBoard::running(TaskId id, std::stop_source* stop) {
    std::lock_guard lock(mutex_);
    running_[id] = stop;
    if (requested_.contains(id)) stop->request_stop();
}

void CancelBoard::finished(TaskId id) {
    std::lock_guard lock(mutex_);
    running_.erase(id);
}

std::vector<TaskId> CancelBoard::take_new() {
    std::lock_guard lock(mutex_);
    fresh_.store(false, std::memory_order_release);
    return std::exchange(new_, {});
}

ControlServer::ControlServer(CancelBoard& board) : board_(board) {
    std::string pattern = (control_base() / fmt::format("taskfarm-run-{}-XXXXXX", ::getpid())).string();
    if (!::mkdtemp(pattern.data()))
        throw std::runtime_error(fmt::format("cannot create a control directory '{}': {}", pattern, std::strerror(errno)));
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
        while (!stop.stop_requested()) {
            zmq::pollitem_t items[] = {{socket->handle(), 0, ZMQ_POLLIN, 0}};
            try {
                zmq::poll(items, 1, kPoll);
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
    struct stat info {};
    if (::stat(dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode))
        throw ConfigError(fmt::format("--run '{}': not a run's control directory or a coordinator's pid",
                                      printable(config.run)));
    if (info.st_uid != ::getuid())
        throw ConfigError(fmt::format("--run '{}': the directory is another user's", printable(dir.string())));
    const std::filesystem::path socket_path = dir / "control";
    if (socket_path.string().size() > kMaxIpcPath || !std::filesystem::exists(socket_path))
        throw ConfigError(fmt::format("--run '{}': no control socket in it (has the run ended?)", printable(dir.string())));

    zmq::context_t context(1);
    zmq::socket_t socket(context, zmq::socket_type::req);
    wire::configure(socket, zmq::socket_type::req);
    socket.connect("ipc://" + socket_path.string());
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
    if (body.is_discarded() || !body.value("ok", false)) {
        spdlog::error("the run refused: {}",
                      printable(body.is_object() ? body.value("error", std::string("no reason")) : reply.to_string()));
        return ExitCode::TasksFailed;
    }
    fmt::print("asked the run of pid {} to cancel task(s) {}\n", body.value("pid", 0), fmt::join(config.ids, ", "));
    return ExitCode::Ok;
}

}  // namespace taskfarm
