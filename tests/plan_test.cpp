#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "errors.hpp"
#include "plan.hpp"
#include "runner.hpp"
#include "support.hpp"

namespace taskfarm {
namespace {

RunConfig sleeps(int tasks, double lo, double hi, std::uint64_t seed = 1) {
    RunConfig config;
    config.task = "sleep";
    config.tasks = tasks;
    config.settings["duration_s"] = {lo, hi};  // what sleep's --duration LO:HI sets
    config.seed = seed;
    return config;
}

TEST(Plan, NumbersTasksFromZeroInPlanOrder) {
    const Plan plan = testing::plan_for(sleeps(5, 0.5, 0.5));
    ASSERT_EQ(all_tasks(plan).size(), 5u);
    for (std::size_t i = 0; i < all_tasks(plan).size(); ++i) {
        EXPECT_EQ(all_tasks(plan)[i].id, i);
        EXPECT_EQ(all_tasks(plan)[i].type->name(), "sleep");
        EXPECT_EQ(all_tasks(plan)[i].params.at("seconds"), 0.5);
    }
}

TEST(Plan, RandomDurationsStayInRangeAndRepeatWithTheSeed) {
    const Plan first = testing::plan_for(sleeps(200, 1, 10, 42));
    const Plan again = testing::plan_for(sleeps(200, 1, 10, 42));
    const Plan other = testing::plan_for(sleeps(200, 1, 10, 43));
    std::size_t differ = 0;
    double lowest = 10;
    double highest = 1;
    for (std::size_t i = 0; i < all_tasks(first).size(); ++i) {
        const double seconds = all_tasks(first)[i].params.at("seconds");
        EXPECT_GE(seconds, 1.0);
        EXPECT_LE(seconds, 10.0);
        EXPECT_EQ(seconds, all_tasks(again)[i].params.at("seconds"));
        differ += seconds != all_tasks(other)[i].params.at("seconds");
        lowest = std::min(lowest, seconds);
        highest = std::max(highest, seconds);
    }
    EXPECT_GT(differ, 150u);
    EXPECT_LT(lowest, 2.0);  // 200 draws cover the range
    EXPECT_GT(highest, 9.0);
}

TEST(Plan, KnownSeedGivesKnownDurations) {
    // Pinned: a change of generator would silently change every published experiment.
    const Plan plan = testing::plan_for(sleeps(3, 1, 10, 1));
    EXPECT_EQ(all_tasks(plan)[0].params.at("seconds"), 2.205);
    EXPECT_EQ(all_tasks(plan)[1].params.at("seconds"), 2.228);
    EXPECT_EQ(all_tasks(plan)[2].params.at("seconds"), 5.061);
}

TEST(Plan, CpuTaskIGetsItsOwnRangeOfCpuNNumbers) {
    RunConfig config;
    config.task = "cpu";
    config.tasks = 3;
    config.settings["cpu_n"] = std::uint64_t{1'000'000};
    const Plan plan = testing::plan_for(config);
    ASSERT_EQ(all_tasks(plan).size(), 3u);
    for (std::size_t i = 0; i < 3; ++i) {
        EXPECT_EQ(all_tasks(plan)[i].id, i);
        EXPECT_EQ(all_tasks(plan)[i].type->name(), "cpu");
        EXPECT_EQ(all_tasks(plan)[i].params.at("lo"), i * 1'000'000);
        EXPECT_EQ(all_tasks(plan)[i].params.at("hi"), (i + 1) * 1'000'000);
    }
}

Plan plan_from(const std::string& text) {
    std::istringstream in(text);
    return read_plan(in, "p.jsonl", builtin_types());
}

// The message read_plan() throws for `text`, or "accepted".
std::string plan_error(const std::string& text) {
    try {
        plan_from(text);
        return "accepted";
    } catch (const ConfigError& e) {
        return e.what();
    }
}

TEST(PlanFile, ReadsTasksInOrderSkippingBlankLinesAndComments) {
    const Plan plan = plan_from(
        "# a mixed plan\n"
        "{\"kind\":\"sleep\",\"seconds\":0.5}\n"
        "\n"
        "   # indented comment\n"
        "{\"kind\":\"cpu\",\"n\":2000000}\r\n"
        "  {\"kind\": \"cpu\", \"lo\": 100, \"hi\": 200}  \n"
        "{\"seconds\":2,\"kind\":\"sleep\"}");  // no newline at the end
    ASSERT_EQ(all_tasks(plan).size(), 4u);
    for (std::size_t i = 0; i < all_tasks(plan).size(); ++i) EXPECT_EQ(all_tasks(plan)[i].id, i);
    EXPECT_EQ(all_tasks(plan)[0].type->name(), "sleep");
    EXPECT_EQ(all_tasks(plan)[0].params.at("seconds"), 0.5);
    EXPECT_EQ(all_tasks(plan)[1].type->name(), "cpu");
    EXPECT_EQ(all_tasks(plan)[1].params.at("lo"), 0u);
    EXPECT_EQ(all_tasks(plan)[1].params.at("hi"), 2'000'000u);
    EXPECT_EQ(all_tasks(plan)[2].params.at("lo"), 100u);
    EXPECT_EQ(all_tasks(plan)[2].params.at("hi"), 200u);
    EXPECT_EQ(all_tasks(plan)[3].params.at("seconds"), 2.0);
}

TEST(PlanFile, NamesTheFileTheLineAndTheProblem) {
    EXPECT_EQ(plan_error("{\"kind\":\"sleep\",\"seconds\":1}\n# ok\n{\"kind\":\"fly\"}\n"),
              "p.jsonl:3: unknown kind \"fly\" (want sleep, cpu, download, fail, crash or command)");
    EXPECT_EQ(plan_error("{\"kind\":\"sleep\"}"), "p.jsonl:1: sleep needs \"seconds\"");
    EXPECT_EQ(plan_error("{\"kind\":\"sleep\",\"seconds\":-1}"),
              "p.jsonl:1: \"seconds\" must be a number of seconds from 0 to 31536000 (a year), not -1");
    EXPECT_EQ(plan_error("{\"kind\":\"sleep\",\"seconds\":\"1\"}"),
              "p.jsonl:1: \"seconds\" must be a number of seconds from 0 to 31536000 (a year), not \"1\"");
    EXPECT_EQ(plan_error("{\"kind\":\"sleep\",\"secnds\":1}"), "p.jsonl:1: sleep needs \"seconds\"");
    EXPECT_EQ(plan_error("{\"kind\":\"sleep\",\"seconds\":1,\"url\":\"x\"}"), "p.jsonl:1: unknown field \"url\"");
    EXPECT_EQ(plan_error("{\"seconds\":1}"), "p.jsonl:1: no \"kind\"");
    EXPECT_EQ(plan_error("{\"kind\":7}"), "p.jsonl:1: \"kind\" must be a string, not 7");
    EXPECT_EQ(plan_error("[1,2]"), "p.jsonl:1: want a JSON object like {\"kind\":TYPE, its parameters}, not [1,2]");
    EXPECT_EQ(plan_error("\n\n{\"kind\":\"sleep\",").rfind("p.jsonl:3: not JSON: ", 0), 0u);
    EXPECT_EQ(plan_error("{\"kind\":\"cpu\"}"), "p.jsonl:1: cpu needs \"n\", or \"lo\" and \"hi\"");
    EXPECT_EQ(plan_error("{\"kind\":\"cpu\",\"lo\":5}"), "p.jsonl:1: cpu needs \"n\", or \"lo\" and \"hi\"");
    EXPECT_EQ(plan_error("{\"kind\":\"cpu\",\"n\":5,\"hi\":9}"),
              "p.jsonl:1: cpu takes \"n\" or \"lo\" and \"hi\", not both");
    EXPECT_EQ(plan_error("{\"kind\":\"cpu\",\"lo\":9,\"hi\":5}"), "p.jsonl:1: cpu \"lo\" 9 is above \"hi\" 5");
    EXPECT_EQ(plan_error("{\"kind\":\"cpu\",\"n\":-5}"), "p.jsonl:1: \"n\" must be a whole number >= 0, not -5");
    EXPECT_EQ(plan_error("{\"kind\":\"cpu\",\"n\":2.5}"), "p.jsonl:1: \"n\" must be a whole number >= 0, not 2.5");
    EXPECT_EQ(plan_error("{\"kind\":\"cpu\",\"n\":1000000000001}"),
              "p.jsonl:1: cpu range end 1000000000001 is above the limit 1000000000000");
}

// JSON that parses but no task can mean is refused with FILE:LINE, like any other bad line.
TEST(PlanFile, RefusesOverflowsDuplicateKeysNulsAndDurationsBeyondAYear) {
    EXPECT_EQ(plan_error("{\"kind\":\"sleep\",\"seconds\":1e400}"),
              "p.jsonl:1: not JSON: number overflow parsing '1e400'");
    EXPECT_EQ(plan_error("{\"kind\":\"cpu\",\"n\":99999999999999999999999}").rfind("p.jsonl:1: ", 0), 0u);
    EXPECT_EQ(plan_error("{\"kind\":\"sleep\",\"seconds\":1,\"seconds\":2}"),
              "p.jsonl:1: key \"seconds\" given twice in one object");
    EXPECT_EQ(plan_error("{\"kind\":\"sleep\",\"kind\":\"cpu\",\"n\":5}"),
              "p.jsonl:1: key \"kind\" given twice in one object");
    EXPECT_EQ(plan_error("{\"kind\":\"sleep\",\"seconds\":1}\n{\"kind\":\"sleep\",\"seconds\":1,\"a\\u0000b\":1}")
                  .rfind("p.jsonl:2: a key holds a NUL byte: ", 0),
              0u);
    EXPECT_EQ(
        plan_error("{\"kind\":\"sle\\u0000ep\",\"seconds\":1}").rfind("p.jsonl:1: a string holds a NUL byte: ", 0), 0u);
    EXPECT_EQ(plan_error("{\"kind\":\"sleep\",\"seconds\":1e300}"),
              "p.jsonl:1: \"seconds\" must be a number of seconds from 0 to 31536000 (a year), not 1e+300");
    EXPECT_EQ(plan_error("{\"kind\":\"sleep\",\"seconds\":1,\"timeout_s\":1e20}"),
              "p.jsonl:1: \"timeout_s\" must be a number of seconds from 0 to 31536000 (a year), not 1e+20");
    // The same key in two objects is fine.
    EXPECT_EQ(plan_error("{\"kind\":\"sleep\",\"seconds\":1}\n{\"kind\":\"sleep\",\"seconds\":2}"), "accepted");
}

TEST(PlanFile, ReadsDownloadLinesAndChecksTheirUrls) {
    const Plan plan = plan_from("{\"kind\":\"download\",\"url\":\"https://example.com/a.jpg\",\"timeout_s\":5}\n");
    ASSERT_EQ(all_tasks(plan).size(), 1u);
    EXPECT_EQ(all_tasks(plan)[0].type->name(), "download");
    EXPECT_EQ(all_tasks(plan)[0].params.at("url"), "https://example.com/a.jpg");
    EXPECT_EQ(all_tasks(plan)[0].timeout_s, 5.0);
    EXPECT_EQ(plan_error("{\"kind\":\"download\"}"), "p.jsonl:1: download needs \"url\"");
    EXPECT_EQ(plan_error("{\"kind\":\"download\",\"url\":7}"), "p.jsonl:1: \"url\" must be a string, not 7");
    EXPECT_EQ(plan_error("{\"kind\":\"download\",\"url\":\"file:///etc/passwd\"}")
                  .rfind("p.jsonl:1: \"url\" \"file:///etc/passwd\" is not an http:// or https:// URL: ", 0),
              0u);
    EXPECT_EQ(plan_error("{\"kind\":\"download\",\"url\":\"http://h/x\",\"seconds\":1}"),
              "p.jsonl:1: unknown field \"seconds\"");
}

TEST(UrlList, SkipsBlankLinesCommentsAndSpaceAroundUrls) {
    std::istringstream in("# pictures\n\n  https://example.com/a.jpg  \r\n\t# more\nhttp://127.0.0.1:8080/b?x=1\n");
    const Plan plan = read_inputs(in, "u.txt", *testing::type("download"), Json::object());
    ASSERT_EQ(all_tasks(plan).size(), 2u);
    EXPECT_EQ(all_tasks(plan)[0].params, (Json{{"url", "https://example.com/a.jpg"}}));
    EXPECT_EQ(all_tasks(plan)[1].params, (Json{{"url", "http://127.0.0.1:8080/b?x=1"}}));
    EXPECT_EQ(all_tasks(plan)[1].id, 1u);
}

// A user's type that takes its inputs as they are (TaskTraits::verbatim_inputs), as the
// built-in command does, or, without the trait, as every other type does.
class EchoType final : public TaskType {
public:
    explicit EchoType(bool verbatim) : verbatim_(verbatim) {}
    std::string name() const override { return "echo"; }
    Value run(const Params& params, Context&) const override { return params; }
    TaskTraits traits() const override { return {.verbatim_inputs = verbatim_}; }

private:
    bool verbatim_;
};

TEST(InputList, ATypesTraitSaysWhetherEveryLineIsATaskAsItIs) {
    const auto inputs = [](bool verbatim) {
        std::istringstream in("# notes\n\n  x  \ny\n");
        const EchoType type(verbatim);
        const Plan plan = read_inputs(in, "in.txt", type, Json::object());
        std::vector<std::string> lines;
        for (const TaskSpec& task : all_tasks(plan)) lines.push_back(task.params.at("input"));
        return lines;
    };
    EXPECT_EQ(inputs(true), (std::vector<std::string>{"# notes", "", "  x  ", "y"}));
    EXPECT_EQ(inputs(false), (std::vector<std::string>{"x", "y"}));
}

TEST(UrlList, NamesTheLineThatIsNotAnHttpUrl) {
    const auto error = [](const std::string& text) -> std::string {
        std::istringstream in(text);
        try {
            read_inputs(in, "u.txt", *testing::type("download"), Json::object());
            return "accepted";
        } catch (const ConfigError& e) {
            return e.what();
        }
    };
    EXPECT_EQ(error("https://a.example/x\n\nftp://b.example/y\n")
                  .rfind("u.txt:3: 'ftp://b.example/y' is not an http:// or https:// URL: ", 0),
              0u);
    EXPECT_EQ(error("example.com/a.jpg\n").rfind("u.txt:1: 'example.com/a.jpg' is not", 0), 0u);
    EXPECT_EQ(
        error("http://a.example/x y\n"),
        "u.txt:1: 'http://a.example/x y' is not an http:// or https:// URL: contains a space or a control character");
    EXPECT_EQ(error("# only a comment\n"), "u.txt: no inputs in the list");
}

TEST(Plan, GeneratedDownloadsAreTheServersImagesWithTheRunsSettings) {
    RunConfig config;
    config.task = "download";
    config.tasks = 2;
    config.settings["max_bytes"] = 1000;  // --max-bytes, the download type's flag
    config.retries = 4;
    config.task_timeout_s = 9;
    config.out_dir = "pictures";
    Json settings = settings_json(config);
    const Plan plan = make_plan(config, builtin_types(), settings);
    ASSERT_EQ(all_tasks(plan).size(), 2u);
    ASSERT_EQ(plan.services.size(), 1u);  // the image server, bound, not started
    EXPECT_EQ(all_tasks(plan)[1].params, (Json{{"url", settings.at("served_urls").at(1)}}));
    EXPECT_TRUE(all_tasks(plan)[1].params.at("url").get<std::string>().ends_with("/photo-1.ppm"));
    EXPECT_EQ(all_tasks(plan)[1].timeout_s, 9.0);
    EXPECT_EQ(settings.at("max_bytes"), 1000u);
    EXPECT_EQ(settings.at("retries"), 4u);
    EXPECT_EQ(mode_out_dir(config, Mode::Threads), std::filesystem::current_path() / "pictures" / "threads");
}

TEST(Plan, SetValuesJoinTheSettingsAndWinOverTheFlags) {
    RunConfig config;
    config.settings = {{"lang", "en"}, {"retries", 7}};
    const Json settings = settings_json(config);
    EXPECT_EQ(settings.at("lang"), "en");
    EXPECT_EQ(settings.at("retries"), 7);
    EXPECT_EQ(settings.at("workers"), config.workers);
}

TEST(Plan, AGeneratorThatCannotMakeATaskIsAConfigErrorNamingTheType) {
    RunConfig config;
    config.task = "cpu";
    config.tasks = 3;
    config.settings["cpu_n"] = std::uint64_t{600'000'000'000};
    try {
        testing::plan_for(config);
        ADD_FAILURE() << "no error for cpu tasks past the limit";
    } catch (const ConfigError& e) {
        EXPECT_EQ(std::string(e.what()),
                  "--task cpu: cannot make task 2 of 3: cpu task 2 would end at 3 x --cpu-n 600000000000, "
                  "above the limit 1000000000000; lower --cpu-n or --tasks");
    }
}

TEST(PlanFile, WithoutTasksIsAnError) {
    EXPECT_EQ(plan_error(""), "p.jsonl: no tasks in the plan");
    EXPECT_EQ(plan_error("# nothing\n\n"), "p.jsonl: no tasks in the plan");
}

TEST(PlanFile, MakePlanReadsTheFileAndNamesOneItCannotOpen) {
    testing::TempDir dir;
    {
        std::ofstream out(dir / "plan.jsonl");
        out << "{\"kind\":\"cpu\",\"n\":1000}\n";
    }
    RunConfig config;
    config.plan_path = dir / "plan.jsonl";
    const Plan plan = testing::plan_for(config);
    ASSERT_EQ(all_tasks(plan).size(), 1u);
    EXPECT_EQ(all_tasks(plan)[0].params.at("hi"), 1000u);

    config.plan_path = dir / "missing.jsonl";
    try {
        testing::plan_for(config);
        ADD_FAILURE() << "no error for a missing plan";
    } catch (const ConfigError& e) {
        EXPECT_EQ(std::string(e.what()),
                  fmt::format("--plan: cannot open '{}': No such file or directory", (dir / "missing.jsonl").string()));
    }
}

}  // namespace
}  // namespace taskfarm
