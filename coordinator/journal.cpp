#include "journal.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "errors.hpp"
#include "text.hpp"

namespace taskfarm {
namespace {

// Everything in `text` up to and including its last '\n'; the rest is a torn line.
std::size_t complete_length(const std::string& text) {
    const auto last_newline = text.rfind('\n');
    return last_newline == std::string::npos ? 0 : last_newline + 1;
}

}  // namespace

Done read_journal_for_resume(const std::filesystem::path& path, const Plan& plan) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        throw ConfigError(fmt::format("--resume: cannot read journal '{}': {}", printable(path.string()), std::strerror(errno)));
    std::stringstream buffer;
    buffer << in.rdbuf();
    const std::string text = buffer.str();
    const std::size_t complete = complete_length(text);
    if (complete < text.size()) {
        spdlog::warn("journal '{}' ends in a torn line; cutting it off: {}", path.string(), printable(text.substr(complete)));
        std::error_code ec;
        std::filesystem::resize_file(path, complete, ec);
        if (ec)
            throw ConfigError(fmt::format("--resume: cannot repair journal '{}': {}", printable(path.string()), ec.message()));
    }

    Done done;
    std::map<std::pair<std::string, TaskId>, int> ok_lines;  // (mode, task) -> the line saying ok
    std::istringstream lines(text.substr(0, complete));
    int number = 0;
    for (std::string line; std::getline(lines, line);) {
        ++number;
        if (line.empty()) continue;
        const auto where = fmt::format("--resume: journal '{}' line {}", printable(path.string()), number);
        nlohmann::json entry;
        try {
            entry = nlohmann::json::parse(line);
            // What happened on the way (a lost attempt, a lost worker; decision 93) says
            // nothing about what is done.
            if (entry.is_object() && entry.contains("event")) continue;
            const auto id = entry.at("id").get<TaskId>();
            if (id >= plan.tasks.size() || plan.tasks[id].id != id)
                throw ConfigError(fmt::format("{}: task {} is not in this plan of {} tasks; the journal is from a "
                                              "different plan", where, id, plan.tasks.size()));
            const TaskSpec& task = plan.tasks[id];
            if (entry.at("kind").get<std::string>() != task.type->name() || entry.at("params") != task.params)
                throw ConfigError(fmt::format("{}: task {} is {} {} there but {} {} here; the journal is from a "
                                              "different plan", where, id, printable(entry.at("kind").get<std::string>()),
                                              printable(entry.at("params").dump()), task.type->name(),
                                              printable(task.params.dump())));
            if (!entry.at("ok").get<bool>()) continue;
            const auto mode = entry.at("mode").get<std::string>();
            // One run writes one line per task and mode, and a resume reruns only what is not
            // ok: a second ok line means two runs appended at once (or a hand edit), and the
            // counts built on this journal would be wrong.
            if (const auto [first, added] = ok_lines.try_emplace({mode, id}, number); !added)
                throw ConfigError(fmt::format("{}: task {} of {} is ok a second time (first on line {}); two runs "
                                              "wrote to this journal, so it cannot say what is done",
                                              where, id, printable(mode), first->second));
            done[mode].insert(id);
        } catch (const nlohmann::json::exception& e) {
            throw ConfigError(printable(fmt::format("{}: not a journal line: {}", where, e.what())));
        }
    }
    return done;
}

Plan remaining(const Plan& plan, const std::set<TaskId>& done) {
    Plan rest;
    for (const TaskSpec& task : plan.tasks)
        if (!done.contains(task.id)) rest.tasks.push_back(task);
    return rest;
}

}  // namespace taskfarm
