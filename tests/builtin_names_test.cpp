// Issue 25's rule that the built-in task types own their flags and settings, and that the rooms
// below them know no built-in type: no line of engine/, launch/, outputs/ or coordinator/ (code,
// strings and comments alike) names one's flag (TaskType::flags()' names and keys), the settings
// a type's prepare() makes, those it reads that the run does not give itself, the directory it
// names for --out-dir (download's "downloads") or the parameter it runs in (TaskTraits::dir_param),
// nor the type itself: its name as a string ("sleep"), or in words that mean the type ("the
// command type", "download's", "a sleep task", "built-in cpu", "--task fail"). The names are
// taken from the registered types when the test runs, so a type or flag added to tasks/ is
// covered at once.

#include <algorithm>
#include <cstring>
#include <string_view>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "builtin.hpp"
#include "plan_sources.hpp"
#include "task.hpp"

namespace taskfarm {
namespace {

struct Name {
    enum class Kind { Setting, Flag, Type };
    std::string text;  // "--cpu-n", or a setting's key: "cpu_n", or its --out-dir: "downloads", or "cpu"
    std::string type;  // the built-in type that owns it
    Kind kind = Kind::Setting;
};

// Each built-in type's name, flags (their long names and keys) and settings.
std::vector<Name> builtin_names() {
    std::set<std::string> run_gives;  // the run's own settings, which a type may read (retries)
    for (const auto& [key, flag] : kFlagSettings) run_gives.emplace(key);
    std::vector<Name> names;
    for (const auto& type : builtin_types().types()) {
        names.push_back({type->name(), type->name(), Name::Kind::Type});
        for (const Flag& flag : type->flags()) {
            std::string rest = flag.name;
            for (std::size_t comma; (comma = rest.find(',')) != std::string::npos; rest.erase(0, comma + 1))
                if (rest.starts_with("--")) names.push_back({rest.substr(0, comma), type->name(), Name::Kind::Flag});
            if (rest.starts_with("--")) names.push_back({rest, type->name(), Name::Kind::Flag});
            if (!flag.key.empty()) names.push_back({flag.key, type->name()});
        }
        const TaskTraits traits = type->traits();
        for (const std::string& key : traits.settings_made) names.push_back({key, type->name()});
        if (!traits.out_dir.empty()) names.push_back({traits.out_dir, type->name()});
        if (!traits.dir_param.empty()) names.push_back({traits.dir_param, type->name()});
        for (const std::string& key : traits.settings_read)
            if (!run_gives.contains(key)) names.push_back({key, type->name()});
    }
    return names;
}

bool word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; }

// Where `line` names `name`: a flag as "--name" not followed by more of a name (so "--command"
// is not in "--command-grace"); a setting (or a directory) as a string literal "key" or as key=
// (--set key=S); a type as a string literal, or in words that can only mean the type:
// "built-in NAME", "--task NAME", "NAME's", "NAME type(s)", "NAME task(s)".
bool names(const std::string& line, const Name& name) {
    const std::string& text = name.text;
    const auto any_at = [&](const std::string& what, auto&& holds) {
        for (auto at = line.find(what); at != std::string::npos; at = line.find(what, at + 1))
            if (holds(at)) return true;
        return false;
    };
    if (name.kind == Name::Kind::Flag)
        return any_at(text, [&](std::size_t at) {
            return at + text.size() == line.size() || !word_char(line[at + text.size()]);
        });
    if (line.find('"' + text + '"') != std::string::npos || line.find("\\\"" + text + "\\\"") != std::string::npos)
        return true;
    if (name.kind == Name::Kind::Setting)
        return any_at(text + '=', [&](std::size_t at) { return at == 0 || !word_char(line[at - 1]); });
    for (const char* before : {"built-in ", "--task "})
        if (any_at(before + text, [&](std::size_t at) {
                const std::size_t size = std::strlen(before) + text.size();
                return at + size == line.size() || !word_char(line[at + size]);
            }))
            return true;
    return any_at(text, [&](std::size_t at) {
        if (at > 0 && word_char(line[at - 1])) return false;
        const std::string_view rest = std::string_view(line).substr(at + text.size());
        if (rest.starts_with("'s")) return true;
        for (const std::string_view after : {" type", " types", " task", " tasks"})
            if (rest.starts_with(after) && (rest.size() == after.size() || !word_char(rest[after.size()]))) return true;
        return false;
    });
}

// What may still name a built-in's flag or setting, and why. Each must still be needed: one
// that matches nothing fails the test, so that the list only shrinks.
struct Allowed {
    std::string file;  // relative to the source tree
    std::string name;  // empty: every name
    std::string why;
};
const std::vector<Allowed> kAllowed = {
    {"coordinator/parallel_cli.cpp", "", "`coordinator parallel` is GNU parallel's command line over the command type"},
    {"coordinator/parallel_cli.hpp", "command", "the same"},
    {"coordinator/parallel_jobs.hpp", "command", "the same: parallel's jobs are the command type's tasks"},
    {"coordinator/parallel_jobs.cpp", "cwd", "the same: a job runs in the directory parallel ran in"},
    {"coordinator/parallel_output.cpp", "", "the same: its cut says which flag kept the output short"},
    {"coordinator/coordinator.cpp", "command", "--json's field \"command\" is the run's command line"},
    {"outputs/pictures.cpp", "command", "--trace's \"command\" is the run's command line too"},
    {"engine/report.cpp", "cpu", "--json's placement: the CPU a worker was pinned to"},
    {"engine/report.hpp", "cpu", "the same"},
};

std::vector<std::filesystem::path> sources() {
    std::vector<std::filesystem::path> found;
    const std::filesystem::path root(TASKFARM_SOURCE_DIR);
    for (const char* room : {"engine", "launch", "outputs", "coordinator"})
        for (const auto& entry : std::filesystem::recursive_directory_iterator(root / room)) {
            const auto extension = entry.path().extension();
            if (entry.is_regular_file() && (extension == ".cpp" || extension == ".hpp"))
                found.push_back(entry.path().lexically_relative(root));
        }
    std::sort(found.begin(), found.end());
    return found;
}

TEST(BuiltinNames, NoSourceBelowTheTypesNamesABuiltInTypesFlagOrSetting) {
    const std::vector<Name> wanted = builtin_names();
    // Every type and its flags are there to look for: download's --urls, command's --max-output.
    ASSERT_GE(wanted.size(), 26u);
    const std::vector<std::filesystem::path> files = sources();
    ASSERT_GE(files.size(), 20u);
    std::vector<int> used(kAllowed.size(), 0);
    std::ostringstream found;
    for (const auto& file : files) {
        std::ifstream in(std::filesystem::path(TASKFARM_SOURCE_DIR) / file);
        ASSERT_TRUE(in) << file;
        int number = 0;
        for (std::string line; std::getline(in, line);) {
            ++number;
            for (const Name& name : wanted) {
                if (!names(line, name)) continue;
                const auto allowed = std::find_if(kAllowed.begin(), kAllowed.end(), [&](const Allowed& entry) {
                    return entry.file == file.string() && (entry.name.empty() || entry.name == name.text);
                });
                if (allowed != kAllowed.end()) {
                    ++used[allowed - kAllowed.begin()];
                    continue;
                }
                found << file.string() << ":" << number << ": names "
                      << (name.kind == Name::Kind::Type ? "the type " : name.type + "'s ")
                      << (name.kind == Name::Kind::Flag      ? "flag "
                          : name.kind == Name::Kind::Setting ? "setting "
                                                             : "")
                      << name.text << ": " << line << "\n";
            }
        }
    }
    EXPECT_TRUE(found.str().empty()) << found.str()
                                     << "move each into its type (tasks/: flags() or traits()), or say it generally";
    for (std::size_t i = 0; i < kAllowed.size(); ++i)
        EXPECT_GT(used[i], 0) << kAllowed[i].file << " no longer names " << kAllowed[i].name
                              << ": remove it from kAllowed";
}

}  // namespace
}  // namespace taskfarm
