// Issue 25's rule that the built-in task types own their flags and settings: no source of
// engine/, launch/, outputs/ or coordinator/ names one (TaskType::flags()' names and keys, the
// settings a type's prepare() makes, those it reads that the run does not give itself, the
// directory it names for --out-dir: download's "downloads"). The
// names are taken from the registered types when the test runs, so a flag added to tasks/ is
// covered at once.

#include <algorithm>
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
    std::string text;  // "--cpu-n", or a setting's key: "cpu_n", or its --out-dir: "downloads"
    std::string type;  // the built-in type that owns it
    bool flag = false;
};

// Each built-in type's flags (their long names and keys) and settings.
std::vector<Name> builtin_names() {
    std::set<std::string> run_gives;  // the run's own settings, which a type may read (retries)
    for (const auto& [key, flag] : kFlagSettings) run_gives.emplace(key);
    std::vector<Name> names;
    for (const auto& type : builtin_types().types()) {
        for (const Flag& flag : type->flags()) {
            std::string rest = flag.name;
            for (std::size_t comma; (comma = rest.find(',')) != std::string::npos; rest.erase(0, comma + 1))
                if (rest.starts_with("--")) names.push_back({rest.substr(0, comma), type->name(), true});
            if (rest.starts_with("--")) names.push_back({rest, type->name(), true});
            if (!flag.key.empty()) names.push_back({flag.key, type->name()});
        }
        const TaskTraits traits = type->traits();
        for (const std::string& key : traits.settings_made) names.push_back({key, type->name()});
        if (!traits.out_dir.empty()) names.push_back({traits.out_dir, type->name()});
        for (const std::string& key : traits.settings_read)
            if (!run_gives.contains(key)) names.push_back({key, type->name()});
    }
    return names;
}

bool word_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-'; }

// Where `line` names `name`: a flag as "--name" not followed by more of a name (so "--command"
// is not in "--command-grace"); a setting (or a directory) as a string literal "key" or as key=
// (--set key=S).
bool names(const std::string& line, const Name& name) {
    if (name.flag) {
        for (auto at = line.find(name.text); at != std::string::npos; at = line.find(name.text, at + 1))
            if (at + name.text.size() == line.size() || !word_char(line[at + name.text.size()])) return true;
        return false;
    }
    if (line.find('"' + name.text + '"') != std::string::npos) return true;
    for (auto at = line.find(name.text + '='); at != std::string::npos; at = line.find(name.text + '=', at + 1))
        if (at == 0 || !word_char(line[at - 1])) return true;
    return false;
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
    {"coordinator/parallel_output.cpp", "--max-output", "the same: its cut says which flag kept the output short"},
    {"coordinator/coordinator.cpp", "command", "--json's field \"command\" is the run's command line"},
    {"outputs/pictures.cpp", "command", "--trace's \"command\" is the run's command line too"},
    {"coordinator/service.cpp", "--command", "the service's submit has its own --command (left, issue 25)"},
    {"coordinator/service.cpp", "command", "the same: submit's --command sets the command type's setting"},
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
    // Every type's flags are there to look for: download's --urls, command's --max-output.
    ASSERT_GE(wanted.size(), 20u);
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
                found << file.string() << ":" << number << ": names " << name.type << "'s "
                      << (name.flag ? "flag " : "setting ") << name.text << ": " << line << "\n";
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
