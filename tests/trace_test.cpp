// --trace and --timeline: the writers on hand-made runs (any mode name, hostile text), and
// the coordinator's files after real runs: a good one, one with a killed worker, a failed one.

#include <signal.h>
#include <sys/wait.h>

#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "outputs.hpp"
#include "support.hpp"
#include "pictures.hpp"

namespace taskfarm {
namespace {

using nlohmann::json;
using testing::Output;
using testing::run_binary;

// ---- reading what the writers wrote

// Occurrences of `needle` in `text`.
std::size_t count(std::string_view text, std::string_view needle) {
    std::size_t n = 0;
    for (auto at = text.find(needle); at != std::string_view::npos; at = text.find(needle, at + needle.size())) ++n;
    return n;
}

// The SVG's mode panels (<g class="mode">...</g>), in order.
std::vector<std::string> panels(const std::string& svg) {
    std::vector<std::string> found;
    const std::string open = R"(<g class="mode">)";
    for (auto at = svg.find(open); at != std::string::npos; at = svg.find(open, at + 1))
        found.push_back(svg.substr(at, svg.find("</g>", at) - at));
    return found;
}

struct TraceMode {
    std::string name;
    std::map<int, std::string> lanes;  // tid -> thread_name
    std::vector<json> complete;        // "X"
    std::vector<json> instant;         // "i"
};

// The trace's modes by pid, each event checked for the fields Chrome and Perfetto need.
std::map<int, TraceMode> modes_of(const json& trace) {
    std::map<int, TraceMode> modes;
    for (const json& event : trace.at("traceEvents")) {
        TraceMode& mode = modes[event.at("pid").get<int>()];
        const std::string phase = event.at("ph");
        EXPECT_TRUE(event.at("name").is_string()) << event;
        EXPECT_TRUE(event.at("tid").is_number_integer()) << event;
        if (phase == "M" && event["name"] == "process_name") mode.name = event["args"]["name"];
        if (phase == "M" && event["name"] == "thread_name") mode.lanes[event["tid"].get<int>()] = event["args"]["name"];
        if (phase == "X") {
            EXPECT_TRUE(event.at("ts").is_number()) << event;
            EXPECT_GE(event.at("dur").get<double>(), 0) << event;
            mode.complete.push_back(event);
        }
        if (phase == "i") {
            EXPECT_TRUE(event.at("ts").is_number()) << event;
            EXPECT_EQ(event.at("s"), "t") << event;
            mode.instant.push_back(event);
        }
    }
    return modes;
}

bool rsvg_available() { return std::system("command -v rsvg-convert >/dev/null 2>&1") == 0; }

// Renders `svg` to PNG with rsvg-convert; "" when it did, else what went wrong.
std::string render_error(const std::filesystem::path& svg) {
    const auto png = svg.string() + ".png";
    const std::string command = "rsvg-convert -o '" + png + "' '" + svg.string() + "' 2>&1";
    std::FILE* pipe = ::popen(command.c_str(), "r");
    std::string out;
    char buffer[512];
    for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) out.append(buffer, n);
    const int status = ::pclose(pipe);
    if (status != 0) return "rsvg-convert failed: " + out;
    if (!std::filesystem::exists(png) || std::filesystem::file_size(png) == 0) return "no PNG";
    return "";
}

// ---- the writers

TaskResult result(TaskId id, std::string worker, double start, double end, std::uint32_t attempt = 1, bool ok = true) {
    TaskResult r;
    r.id = id;
    r.worker = std::move(worker);
    r.start_s = start;
    r.end_s = end;
    r.attempt = attempt;
    r.ok = ok;
    r.type = testing::type("sleep");
    if (ok) r.value = {{"slept_s", end - start}};
    if (!ok) r.error = "bad \"quote\" <tag> & \x01 control \xff\xfe not UTF-8 \xe2\x82 cut";
    return r;
}

RunReport report(std::string mode, double wall, double cpu) {
    RunReport r;
    r.mode = std::move(mode);
    r.wall_s = wall;
    r.cpu_s = cpu;
    return r;
}

// Two modes: a sequential one, and one with an odd name, a lane t10, a lost attempt and a failure.
std::vector<ModeRecording> sample() {
    ModeRecording sequential{"sequential", report("sequential", 3, 0.01), {}, {}};
    for (TaskId id = 0; id < 3; ++id) sequential.results.push_back(result(id, "seq", id, id + 1.0));
    ModeRecording odd{R"(gil "threads" <&>)", report(R"(gil "threads" <&>)", 1.6, 1.5), {}, {}};
    odd.events.push_back({.kind = RunEvent::Kind::WorkerStarted, .at_s = 0, .worker = "t10", .detail = "pid 7"});
    odd.results.push_back(result(1, "t2", 0, 1));
    odd.events.push_back({.kind = RunEvent::Kind::WorkerExited, .at_s = 0.4, .worker = "t10", .detail = "signal 9"});
    odd.events.push_back({.kind = RunEvent::Kind::Requeued,
                          .at_s = 0.4,
                          .worker = "t10",
                          .detail = "worker t10 died (signal 9)",
                          .task = 0,
                          .task_type = testing::type("sleep"),
                          .attempt = 1,
                          .started_s = 0.1});
    odd.results.push_back(result(0, "t1", 0.5, 1.5, 2));
    odd.results.push_back(result(2, "", 1.6, 1.6, 1, false));  // never ran
    return {sequential, odd};
}

TEST(Lanes, AreEveryWorkerInNaturalOrder) {
    EXPECT_EQ(lanes_of(sample()[1]), (std::vector<std::string>{"t1", "t2", "t10", "unassigned"}));
    EXPECT_EQ(lanes_of(sample()[0]), (std::vector<std::string>{"seq"}));
}

TEST(TraceJson, HasAProcessPerModeAThreadPerLaneAndAnEventPerAttempt) {
    const std::string text =
        trace_json(sample(), "coordinator --x 'y z'").dump(-1, ' ', false, json::error_handler_t::replace);
    const json trace = json::parse(text);  // valid JSON, even with the hostile error text
    EXPECT_EQ(trace["otherData"]["command"], "coordinator --x 'y z'");
    const auto modes = modes_of(trace);
    ASSERT_EQ(modes.size(), 2u);
    EXPECT_EQ(modes.at(1).name, "sequential");
    EXPECT_EQ(modes.at(2).name, R"(gil "threads" <&>)");
    EXPECT_EQ(modes.at(1).lanes, (std::map<int, std::string>{{1, "seq"}}));
    EXPECT_EQ(modes.at(2).lanes, (std::map<int, std::string>{{1, "t1"}, {2, "t2"}, {3, "t10"}, {4, "unassigned"}}));
    ASSERT_EQ(modes.at(1).complete.size(), 3u);
    const json& first = modes.at(1).complete[0];
    EXPECT_EQ(first["name"], "sleep #0");
    EXPECT_EQ(first["ts"], 0);
    EXPECT_EQ(first["dur"], 1'000'000);
    EXPECT_EQ(first["args"]["id"], 0);
    EXPECT_EQ(first["args"]["kind"], "sleep");
    EXPECT_EQ(first["args"]["attempt"], 1);
    EXPECT_EQ(first["args"]["ok"], true);
    EXPECT_EQ(first["args"]["value"]["slept_s"], 1.0);

    // Three results and the lost attempt, on the lanes of the workers that ran them.
    const auto& odd = modes.at(2);
    ASSERT_EQ(odd.complete.size(), 4u);
    std::multiset<std::pair<std::string, int>> attempts;  // lane, attempt
    for (const json& event : odd.complete) attempts.insert({odd.lanes.at(event["tid"]), event["args"]["attempt"]});
    EXPECT_EQ(attempts,
              (std::multiset<std::pair<std::string, int>>{{"t2", 1}, {"t10", 1}, {"t1", 2}, {"unassigned", 1}}));
    const auto lost = std::find_if(odd.complete.begin(), odd.complete.end(),
                                   [](const json& e) { return e["args"].contains("lost"); });
    ASSERT_NE(lost, odd.complete.end());
    EXPECT_EQ((*lost)["ts"], 100'000);
    EXPECT_EQ((*lost)["dur"], 300'000);
    EXPECT_EQ((*lost)["args"]["ok"], false);
    EXPECT_EQ((*lost)["args"]["error"], "worker t10 died (signal 9)");
    std::vector<std::string> instants;
    for (const json& event : odd.instant) instants.push_back(event["name"]);
    EXPECT_EQ(instants, (std::vector<std::string>{"worker started", "worker exited", "requeue"}));
    const auto failed = std::find_if(odd.complete.begin(), odd.complete.end(), [](const json& e) {
        return e["args"]["ok"] == false && !e["args"].contains("lost");
    });
    ASSERT_NE(failed, odd.complete.end());
    EXPECT_NE((*failed)["args"]["error"].get<std::string>().find(R"(bad "quote" <tag> &)"), std::string::npos);
}

TEST(TimelineSvg, HasAPanelPerModeABarPerTaskAndEscapesEveryText) {
    const std::string svg = timeline_svg(sample(), R"(taskfarm: coordinator --timeline '<a & "b">.svg')");
    const auto found = panels(svg);
    ASSERT_EQ(found.size(), 2u);
    EXPECT_EQ(count(found[0], R"(class="task )"), 3u);
    EXPECT_EQ(count(found[0], R"(class="lane")"), 1u);
    EXPECT_EQ(count(found[1], R"(class="task )"), 3u);
    EXPECT_EQ(count(found[1], R"(class="task ok retry")"), 1u);
    EXPECT_EQ(count(found[1], R"(class="task failed")"), 1u);
    EXPECT_EQ(count(found[1], R"(class="attempt lost")"), 1u);
    EXPECT_EQ(count(found[1], R"(class="lane")"), 4u);
    EXPECT_EQ(count(found[1], R"(class="event start")"), 1u);
    EXPECT_EQ(count(found[1], R"(class="event exit")"), 1u);
    EXPECT_NE(found[0].find("sequential: 3 tasks on 1 lane, wall 3.00 s, CPU 0.01 s (0.0 cores busy)"),
              std::string::npos)
        << found[0];
    EXPECT_NE(found[1].find("x1.88 vs sequential, CPU 1.50 s (0.9 cores busy)"), std::string::npos) << found[1];
    // Escaped, never raw: the mode name, the title, the error text.
    EXPECT_NE(svg.find("gil &quot;threads&quot; &lt;&amp;&gt;"), std::string::npos);
    EXPECT_EQ(svg.find(R"(gil "threads")"), std::string::npos);
    EXPECT_NE(svg.find("--timeline &apos;&lt;a &amp; &quot;b&quot;&gt;.svg&apos;"), std::string::npos);
    EXPECT_NE(svg.find("&lt;tag&gt; &amp; ? control \xEF\xBF\xBD\xEF\xBF\xBD not UTF-8 \xEF\xBF\xBD\xEF\xBF\xBD cut"),
              std::string::npos);
    // Ticks at whole seconds, up to the end of the longest mode.
    EXPECT_NE(svg.find(">0.0 s</text>"), std::string::npos);
    EXPECT_NE(svg.find(">3.0 s</text>"), std::string::npos);
    EXPECT_EQ(svg.find(">3.5 s</text>"), std::string::npos);
    // Self-contained: nothing fetched from elsewhere.
    EXPECT_EQ(svg.find("href"), std::string::npos);
}

TEST(TimelineSvg, RendersWithRsvgConvert) {
    if (!rsvg_available()) GTEST_SKIP() << "rsvg-convert is not installed (Debian: librsvg2-bin)";
    testing::TempDir dir;
    write_report(dir / "t.svg", timeline_svg(sample(), "taskfarm: a <title>"));
    EXPECT_EQ(render_error(dir / "t.svg"), "");
    write_report(dir / "empty.svg", timeline_svg({}, "no modes"));
    EXPECT_EQ(render_error(dir / "empty.svg"), "");
}

TEST(WriteReport, ReplacesTheFileAndLeavesNoTempBehind) {
    testing::TempDir dir;
    write_report(dir / "out.json", "old");
    write_report(dir / "out.json", "new");
    EXPECT_EQ(testing::read_file(dir / "out.json"), "new");
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);
    EXPECT_THROW(write_report("/nonexistent/dir/out.json", "x"), std::runtime_error);
    EXPECT_THROW(check_report_path("--json", "/nonexistent/dir/out.json"), std::runtime_error);
    EXPECT_NO_THROW(check_report_path("--json", dir / "other.json"));
    EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()), {}), 1);
}

// ---- the coordinator's files

TEST(CoordinatorTrace, HasOneEventPerTaskPerModeAndALanePerWorker) {
    testing::TempDir dir;
    const Output output =
        run_binary("coordinator", {"--mode", "all", "--workers", "3", "--tasks", "5", "--duration", "0.02", "--trace",
                                   (dir / "run.json").string(), "--timeline", (dir / "run.svg").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    const auto modes = modes_of(testing::read_json(dir / "run.json"));
    ASSERT_EQ(modes.size(), 4u);
    const std::map<std::string, std::set<std::string>> allowed{{"sequential", {"seq"}},
                                                               {"threads", {"t1", "t2", "t3"}},
                                                               {"gil-threads", {"t1", "t2", "t3"}},
                                                               {"processes", {"w1", "w2", "w3"}}};
    for (const auto& [pid, mode] : modes) {
        SCOPED_TRACE(mode.name);
        ASSERT_TRUE(allowed.contains(mode.name));
        ASSERT_EQ(mode.complete.size(), 5u);
        std::set<TaskId> ids;
        std::set<std::string> used;
        for (const json& event : mode.complete) {
            ids.insert(event["args"]["id"].get<TaskId>());
            const std::string& lane = mode.lanes.at(event["tid"]);
            EXPECT_EQ(lane, event["args"]["worker"]);
            EXPECT_EQ(event["args"]["ok"], true);
            used.insert(lane);
        }
        EXPECT_EQ(ids, (std::set<TaskId>{0, 1, 2, 3, 4}));
        for (const auto& [tid, lane] : mode.lanes) EXPECT_TRUE(allowed.at(mode.name).contains(lane)) << lane;
        if (mode.name == "processes") {
            EXPECT_EQ(mode.lanes.size(), 3u);  // every worker, even one that ran no task
            std::multiset<std::string> instants;
            for (const json& event : mode.instant) instants.insert(event["name"]);
            EXPECT_EQ(instants.count("worker started"), 3u);
            EXPECT_EQ(instants.count("worker exited"), 3u);
        } else {
            EXPECT_EQ(mode.lanes.size(), used.size());
        }
    }
    EXPECT_EQ(modes.at(1).name, "sequential");

    const std::string svg = testing::read_file(dir / "run.svg");
    const auto found = panels(svg);
    ASSERT_EQ(found.size(), 4u);
    for (const std::string& panel : found) EXPECT_EQ(count(panel, R"(class="task ok")"), 5u);
    // The title is the command line, without the directory of the binary.
    EXPECT_NE(svg.find("taskfarm: coordinator --mode all --workers 3"), std::string::npos);
    EXPECT_EQ(svg.find(TASKFARM_BIN_DIR), std::string::npos);
    if (rsvg_available()) {
        EXPECT_EQ(render_error(dir / "run.svg"), "");
    }
}

TEST(CoordinatorTrace, ShowsTheAttemptLostWithAKilledWorker) {
    testing::TempDir dir;
    testing::Running coordinator(
        "coordinator", {"--mode", "processes", "--workers", "2", "--tasks", "4", "--duration", "0.6", "--trace",
                        (dir / "run.json").string(), "--timeline", (dir / "run.svg").string()});
    std::vector<pid_t> workers;
    ASSERT_TRUE(testing::eventually([&] { return (workers = testing::workers_of(coordinator.pid())).size() == 2; },
                                    std::chrono::seconds(10)))
        << coordinator.err();
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // both are running a task now
    ::kill(workers.front(), SIGKILL);
    const Output output = coordinator.wait();
    ASSERT_EQ(output.exit_code, 0) << output.err;

    const auto modes = modes_of(testing::read_json(dir / "run.json"));
    ASSERT_EQ(modes.size(), 1u);
    const TraceMode& mode = modes.at(1);
    std::size_t finished = 0;
    std::size_t lost = 0;
    for (const json& event : mode.complete) (event["args"].contains("lost") ? lost : finished) += 1;
    EXPECT_EQ(finished, 4u);
    EXPECT_GE(lost, 1u);
    std::multiset<std::string> instants;
    bool killed = false;
    for (const json& event : mode.instant) {
        instants.insert(event["name"]);
        killed |= event["name"] == "worker exited" &&
                  event["args"]["detail"].get<std::string>().find("signal 9") != std::string::npos;
    }
    EXPECT_EQ(instants.count("requeue"), lost);
    EXPECT_GE(instants.count("worker started"), 3u);  // two, and the replacement
    EXPECT_TRUE(killed);

    const std::string svg = testing::read_file(dir / "run.svg");
    EXPECT_EQ(count(svg, R"(class="task )"), 4u);
    EXPECT_EQ(count(svg, R"(class="attempt lost")"), lost);
}

TEST(CoordinatorTrace, IsWrittenEvenWhenTheRunFails) {
    testing::TempDir dir;
    // /bin/true exits at once without saying hello: the run fails.
    const Output output =
        run_binary("coordinator", {"--mode", "processes", "--workers", "1", "--worker-bin", "/bin/true", "--trace",
                                   (dir / "run.json").string(), "--timeline", (dir / "run.svg").string()});
    EXPECT_EQ(output.exit_code, 1) << output.err;
    const auto modes = modes_of(testing::read_json(dir / "run.json"));
    ASSERT_EQ(modes.size(), 1u);
    EXPECT_EQ(modes.at(1).name, "processes");
    EXPECT_EQ(modes.at(1).lanes, (std::map<int, std::string>{{1, "w1"}}));
    ASSERT_EQ(modes.at(1).instant.size(), 2u);
    EXPECT_EQ(modes.at(1).instant[0]["name"], "worker started");
    EXPECT_EQ(modes.at(1).instant[1]["name"], "worker exited");
    const std::string svg = testing::read_file(dir / "run.svg");
    EXPECT_NE(svg.find("processes: 0 tasks on 1 lane, did not finish"), std::string::npos) << svg;
    if (rsvg_available()) {
        EXPECT_EQ(render_error(dir / "run.svg"), "");
    }
}

TEST(CoordinatorTrace, AnUnwritablePathExitsTwoBeforeRunning) {
    for (const char* flag : {"--trace", "--timeline"}) {
        const Output output = run_binary("coordinator", {flag, "/nonexistent/dir/out", "--tasks", "1"});
        EXPECT_EQ(output.exit_code, 2) << flag;
        EXPECT_NE(output.err.find(flag), std::string::npos) << output.err;
        EXPECT_NE(output.err.find("/nonexistent/dir/out"), std::string::npos) << output.err;
        EXPECT_TRUE(output.out.empty()) << output.out;
    }
}

}  // namespace
}  // namespace taskfarm
