#include "support.hpp"

#include "fork_protocol.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>
#include <thread>

extern char** environ;

namespace taskfarm::testing {

TempDir::TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "taskfarm-test-XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("cannot create a temp dir");
    path_ = pattern;
}

TempDir::~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
}

std::filesystem::path bin(const std::string& name) { return std::filesystem::path(TASKFARM_BIN_DIR) / name; }

std::string read_file(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream buffer;
    buffer << in.rdbuf();
    return buffer.str();
}

nlohmann::json read_json(const std::filesystem::path& path) { return nlohmann::json::parse(read_file(path)); }

std::vector<nlohmann::json> read_json_lines(const std::filesystem::path& path) {
    std::vector<nlohmann::json> lines;
    std::istringstream in(read_file(path));
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
    return lines;
}

std::vector<nlohmann::json> read_result_lines(const std::filesystem::path& path) {
    std::vector<nlohmann::json> lines = read_json_lines(path);
    std::erase_if(lines, [](const nlohmann::json& line) { return line.contains("event"); });
    return lines;
}

std::vector<std::string> lines_of(const std::filesystem::path& path) {
    std::vector<std::string> lines;
    std::istringstream in(read_file(path));
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) lines.push_back(line);
    return lines;
}

std::filesystem::path numbers(const TempDir& dir, int count) {
    std::ofstream out(dir / "inputs.txt");
    for (int i = 0; i < count; ++i) out << i << "\n";
    return dir / "inputs.txt";
}

Running::Running(const std::string& program, const std::vector<std::string>& args) {
    const std::string exe = program.find('/') == std::string::npos ? bin(program).string() : program;
    std::vector<char*> argv{const_cast<char*>(exe.c_str())};
    for (const std::string& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    const std::string out = (dir_ / "stdout").string();
    const std::string err = (dir_ / "stderr").string();
    posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    const int rc = ::posix_spawn(&pid_, exe.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    if (rc != 0) throw std::runtime_error("cannot start " + exe);
}

Running::~Running() {
    if (pid_ > 0) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, nullptr, 0);
    }
}

void Running::signal(int signo) const { ::kill(pid_, signo); }

Output Running::wait(std::chrono::seconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    int status = 0;
    while (::waitpid(pid_, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
            ::kill(pid_, SIGKILL);
            ::waitpid(pid_, &status, 0);
            break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid_ = -1;
    Output output;
    output.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    output.out = out();
    output.err = err();
    return output;
}

std::string Running::out() const { return read_file(dir_ / "stdout"); }
std::string Running::err() const { return read_file(dir_ / "stderr"); }

Output run_binary(const std::string& program, const std::vector<std::string>& args) {
    Running running(program, args);
    return running.wait();
}

namespace {

// Pids whose parent is `parent`, zombies (not yet reaped) included when asked.
std::vector<pid_t> children(pid_t parent, bool zombies) {
    std::vector<pid_t> children;
    for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
        const std::string name = entry.path().filename().string();
        if (name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::istringstream stat(read_file(entry.path() / "stat"));
        std::string text = stat.str();
        // pid (comm) state ppid ...: comm may hold spaces, so parse after the last ')'.
        const auto close = text.rfind(')');
        if (close == std::string::npos) continue;
        std::istringstream rest(text.substr(close + 1));
        char state = 0;
        pid_t ppid = 0;
        rest >> state >> ppid;
        if (ppid == parent && (zombies || state != 'Z')) children.push_back(std::stoi(name));
    }
    return children;
}

std::string proc_text(pid_t pid, const char* file) {
    return read_file(std::filesystem::path("/proc") / std::to_string(pid) / file);
}

bool named_fork_server(pid_t pid) { return proc_text(pid, "comm") == std::string(kForkServerName) + "\n"; }

}  // namespace

std::vector<pid_t> children_of(pid_t parent) { return children(parent, false); }

// A child with the coordinator's own command line has not exec'd yet: it may become the fork
// server. The fork server renames itself before it forks anything, so until some child (a
// zombie, if it was killed) has its name, a child with its command line is the server itself.
std::vector<pid_t> workers_of(pid_t coordinator) {
    const std::vector<pid_t> all = children(coordinator, true);
    const bool server_named = std::any_of(all.begin(), all.end(), named_fork_server);
    const std::string unexeced = proc_text(coordinator, "cmdline");
    std::vector<pid_t> workers = children_of(coordinator);
    std::erase_if(workers, [&](pid_t pid) {
        if (named_fork_server(pid)) return true;
        const std::string cmdline = proc_text(pid, "cmdline");
        return cmdline == unexeced || (!server_named && cmdline.find("--fork-server") != std::string::npos);
    });
    return workers;
}

pid_t fork_server_of(pid_t coordinator) {
    for (pid_t child : children_of(coordinator))
        if (named_fork_server(child)) return child;
    return -1;
}

bool process_exists(pid_t pid) {
    const std::string stat = read_file(std::filesystem::path("/proc") / std::to_string(pid) / "stat");
    const auto close = stat.rfind(')');
    return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
}

bool runs_program(pid_t pid, const std::string& program) {
    std::error_code ec;
    return std::filesystem::read_symlink(std::filesystem::path("/proc") / std::to_string(pid) / "exe", ec).filename() ==
           program;
}

bool eventually(const std::function<bool()>& condition, std::chrono::milliseconds limit) {
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!condition()) {
        if (std::chrono::steady_clock::now() > deadline) return condition();
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
}

const ProgramInfo& stock_program() {
    static const ProgramInfo program{"coordinator", builtin_types(), {bin("worker"), {}}};
    return program;
}

const TaskType* type(std::string_view name) { return &builtin_types().at(name); }

Plan plan_for(const RunConfig& config) {
    Json settings = settings_json(config);
    return make_plan(config, builtin_types(), settings);
}

namespace {

class RunnerWithSettings final : public Runner {
public:
    RunnerWithSettings(Mode mode, const RunConfig& config, std::stop_token stop)
        : settings_(settings_json(config)), runner_(make_runner(mode, config, {builtin_types(), settings_}, stop)) {}
    RunReport run(const Plan& plan, ResultSink& sink) override { return runner_->run(plan, sink); }

private:
    const Json settings_;
    std::unique_ptr<Runner> runner_;
};

}  // namespace

std::unique_ptr<Runner> runner_for(Mode mode, const RunConfig& config, std::stop_token stop) {
    return std::make_unique<RunnerWithSettings>(mode, config, std::move(stop));
}

TaskSpec task_of(std::string_view kind, Params params, TaskId id, double timeout_s) {
    return TaskSpec{.id = id, .type = type(kind), .params = std::move(params), .timeout_s = timeout_s};
}

}  // namespace taskfarm::testing
