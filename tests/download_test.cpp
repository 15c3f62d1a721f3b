// Download tasks against real servers on loopback: the built-in fixture, `python3 -m
// http.server` over files the test writes, and tests/hostile_server.py, which misbehaves
// on purpose. Files are compared byte for byte and by SHA-256; nothing may be written
// outside the output directory, and no temp file may survive.

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <regex>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "digest.hpp"
#include "download.hpp"
#include "image_server.hpp"
#include "lazy_library.hpp"
#include "support.hpp"

namespace taskfarm {
namespace {

namespace fs = std::filesystem;
using testing::Output;
using testing::run_binary;

// Every regular file under `root` (hidden ones included), as paths relative to it.
std::set<std::string> files_under(const fs::path& root) {
    std::set<std::string> files;
    for (const auto& entry : fs::recursive_directory_iterator(root))
        if (!entry.is_directory()) files.insert(entry.path().lexically_relative(root).string());
    return files;
}

void write_file(const fs::path& path, const std::string& bytes) {
    fs::create_directories(path.parent_path());
    std::ofstream(path, std::ios::binary) << bytes;
}

std::string random_bytes(std::size_t size, unsigned seed) {
    std::mt19937 generator(seed);
    std::string bytes(size, '\0');
    for (char& c : bytes) c = static_cast<char>(generator());
    return bytes;
}

// hostile_server.py's /bytes/N?seed=S.
std::string pattern(std::size_t size, int seed) {
    std::string bytes(size, '\0');
    for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<char>((i * 7 + static_cast<std::size_t>(seed)) % 251);
    return bytes;
}

// A download task with where it saves and the run's settings it reads.
struct DownloadTask {
    TaskSpec spec;
    fs::path dir;
    Json settings;
};

DownloadTask download_task(TaskId id, const std::string& url, const fs::path& dir, double timeout_s = 0) {
    return {
        testing::task_of("download", {{"url", url}}, id, timeout_s), dir, {{"max_bytes", 100 << 20}, {"retries", 0}}};
}

TaskResult download(const DownloadTask& task, std::stop_token stop = {}) {
    return run_task(task.spec, 1,
                    RunEnv{.worker = "test", .stop = std::move(stop), .settings = &task.settings, .out_dir = task.dir});
}

// What a download saved, from its value.
std::string saved_path(const TaskResult& result) { return result.value.at("path").get<std::string>(); }

// Closes the connections the download type keeps for this thread.
void close_connections() { run_hooks(*testing::type("download"))->thread_done(); }

// The body at `url`, fetched by the executor itself.
std::string fetch(const std::string& url) {
    testing::TempDir dir;
    const TaskResult result = download(download_task(0, url, dir.path()));
    if (!result.ok) throw std::runtime_error(result.error);
    return testing::read_file(saved_path(result));
}

// A port on 127.0.0.1 where nothing listens: bound, then closed.
int refused_port() {
    const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
    ::close(fd);
    return ntohs(address.sin_port);
}

// python3 running a server on 127.0.0.1, killed at the end of the test. Waits for the
// "port N" that both servers print once they listen.
class PythonServer {
public:
    explicit PythonServer(std::vector<std::string> args) {
        args.insert(args.begin(), "-u");  // unbuffered: the port line comes at once
        process_ = std::make_unique<testing::Running>(TASKFARM_PYTHON, args);
        const std::regex port_line(R"(port (\d+))");
        std::smatch match;
        testing::eventually(
            [&] {
                const std::string out = process_->out();
                if (!std::regex_search(out, match, port_line)) return false;
                port_ = std::stoi(match[1]);
                return true;
            },
            std::chrono::seconds(20));
        if (port_ == 0) throw std::runtime_error("python server did not start: " + process_->err());
    }
    static PythonServer hostile() { return PythonServer({TASKFARM_TESTS_DIR "/hostile_server.py"}); }
    static PythonServer serving(const fs::path& dir) {
        return PythonServer({"-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", dir.string()});
    }
    std::string url(const std::string& path) const { return fmt::format("http://127.0.0.1:{}{}", port_, path); }
    int count(const std::string& key) const { return std::stoi(fetch(url("/count/" + key))); }

private:
    std::unique_ptr<testing::Running> process_;
    int port_ = 0;
};

// --- names, URLs, digests ------------------------------------------------------------

TEST(DownloadNames, KeepOnlyALastSegmentOfHarmlessBytes) {
    EXPECT_EQ(safe_file_name("photo.jpg"), "photo.jpg");
    EXPECT_EQ(safe_file_name("../../etc/passwd"), "passwd");
    EXPECT_EQ(safe_file_name("..\\..\\windows\\win.ini"), "win.ini");
    EXPECT_EQ(safe_file_name(".."), "download");
    EXPECT_EQ(safe_file_name("."), "download");
    EXPECT_EQ(safe_file_name(""), "download");
    EXPECT_EQ(safe_file_name("dir/"), "download");
    EXPECT_EQ(safe_file_name(".bashrc"), "bashrc");
    EXPECT_EQ(safe_file_name("-rf"), "rf");
    EXPECT_EQ(safe_file_name("a b\tc\nd"), "a_b_c_d");
    EXPECT_EQ(safe_file_name("\x1b[31mred"), "__31mred");
    EXPECT_EQ(safe_file_name("caf\xc3\xa9.jpg"), "caf__.jpg");
    EXPECT_EQ(safe_file_name(std::string("nul\0byte", 8)), "nul_byte");
    const std::string longest = safe_file_name(std::string(300, 'x') + ".jpeg");
    EXPECT_EQ(longest.size(), kMaxFileNameBytes);
    EXPECT_TRUE(longest.ends_with("xx.jpeg"));
}

TEST(DownloadNames, SavedNamesArePrefixedWithTheTaskId) {
    EXPECT_EQ(saved_file_name(7, "photo.jpg"), "007-photo.jpg");
    EXPECT_EQ(saved_file_name(1234, "../x"), "1234-x");
    EXPECT_EQ(saved_file_name(0, ".."), "000-download");
}

TEST(DownloadNames, ComeFromTheLastDecodedPathSegmentOfTheUrl) {
    EXPECT_EQ(file_name_from_url("https://example.com/a/b/photo.jpg?w=100#top"), "photo.jpg");
    EXPECT_EQ(file_name_from_url("https://example.com/a/%2e%2e%2f%2e%2e%2fevil.sh"), "evil.sh");
    EXPECT_EQ(file_name_from_url("https://example.com/a%20b.txt"), "a b.txt");
    EXPECT_EQ(file_name_from_url("https://example.com/dir/"), "");
    EXPECT_EQ(file_name_from_url("https://example.com"), "");
    EXPECT_EQ(file_name_from_url("https://example.com?x=/y"), "");
    EXPECT_EQ(file_name_from_url("https://example.com/100%"), "100%");
}

TEST(DownloadNames, ComeFromContentDispositionWhenItHasOne) {
    EXPECT_EQ(file_name_from_content_disposition(R"( attachment; filename="report.pdf")"), "report.pdf");
    EXPECT_EQ(file_name_from_content_disposition("attachment; filename=plain.txt"), "plain.txt");
    EXPECT_EQ(file_name_from_content_disposition(R"(attachment; filename="a;b \"c\".txt")"), "a;b \"c\".txt");
    EXPECT_EQ(file_name_from_content_disposition(R"(attachment; FILENAME="../../evil.sh")"), "../../evil.sh");
    EXPECT_EQ(file_name_from_content_disposition(
                  R"(attachment; filename="fallback.txt"; filename*=UTF-8''%e2%82%ac%20rates.txt)"),
              "\xe2\x82\xac rates.txt");
    EXPECT_EQ(file_name_from_content_disposition("inline"), std::nullopt);
    EXPECT_EQ(file_name_from_content_disposition(""), std::nullopt);
    EXPECT_EQ(file_name_from_content_disposition("attachment; filename=\"\""), std::nullopt);
}

TEST(DownloadUrls, OnlyAbsoluteHttpAndHttpsWithAHost) {
    EXPECT_EQ(url_problem("http://127.0.0.1:8080/a.jpg"), "");
    EXPECT_EQ(url_problem("https://example.com/photo?id=1#x"), "");
    EXPECT_EQ(url_problem("HTTPS://EXAMPLE.COM/"), "");
    EXPECT_NE(url_problem("file:///etc/passwd"), "");
    EXPECT_NE(url_problem("ftp://example.com/a"), "");
    EXPECT_NE(url_problem("example.com/a.jpg"), "");
    EXPECT_NE(url_problem("http://"), "");
    EXPECT_NE(url_problem(""), "");
    EXPECT_NE(url_problem("http://example.com/a b"), "");
    EXPECT_NE(url_problem("http://example.com/\x01"), "");
    EXPECT_NE(url_problem("http://example.com/" + std::string(kMaxUrlBytes, 'a')), "");
}

TEST(Digest, Sha256OfKnownVectors) {
    EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    Sha256 pieces;
    pieces.update("a");
    pieces.update("bc");
    EXPECT_EQ(pieces.hex(), sha256_hex("abc"));
}

// --- the built-in server ---------------------------------------------------------------

// The bytes are the documented ones (docs/downloads.md, README's run) whichever way they are
// made: whole, or in the server's chunks that start anywhere in a pixel word (decision 264).
TEST(ImageServer, TheDocumentedImagesAreMadeByteForByteWholeOrInPieces) {
    ImageServer fixture({.images = 2, .file_size = 204'800, .latency_s = 0});
    EXPECT_EQ(sha256_hex(fixture.image(0)), "9d170234f301da278116cb796ea4b46f1a3dbb36a0ac41025aedb4ae6b4d068c");
    EXPECT_EQ(sha256_hex(fixture.image(1)).substr(0, 12), "5118efd0def8");
    const std::string whole = fixture.image(1);
    for (const std::size_t piece : {std::size_t{1}, std::size_t{7}, std::size_t{4093}, std::size_t{65'536}}) {
        std::string pieces;
        for (std::size_t at = 0; at < whole.size(); at += piece)
            pieces += fixture.piece(1, at, std::min(piece, whole.size() - at));
        EXPECT_EQ(pieces, whole) << piece;
    }
}

TEST(ImageServer, ImagesHaveExactlyTheFileSizeAndAConsistentPpmHeader) {
    for (std::uint64_t size : {0ull, 1ull, 40ull, 100ull, 1000ull, 204'800ull, 1'000'003ull}) {
        ImageServer fixture({.images = 2, .file_size = size, .latency_s = 0});
        const std::string image = fixture.image(1);
        ASSERT_EQ(image.size(), size);
        if (size > 0) {
            EXPECT_NE(image, fixture.image(0)) << size;
        }
        if (size < 100) continue;
        const std::regex header(R"(P6\n# taskfarm synthetic image 1 *\n(\d+) (\d+)\n255\n)");
        std::smatch match;
        const std::string head = image.substr(0, 2000);  // the padding stays below one 768-byte row
        ASSERT_TRUE(std::regex_search(head, match, header)) << size;
        EXPECT_EQ(match.position(0), 0);
        EXPECT_EQ(match.length(0) + 3 * std::stoull(match[1]) * std::stoull(match[2]), size);
    }
}

TEST(ImageServer, ServesEachImageByteForByteAnd404sTheRest) {
    ImageServer fixture({.images = 3, .file_size = 100'000, .latency_s = 0});
    fixture.start();
    testing::TempDir dir;
    for (int i = 0; i < 3; ++i) {
        const TaskResult result = download(download_task(static_cast<TaskId>(i), fixture.urls()[i], dir.path()));
        ASSERT_TRUE(result.ok) << result.error;
        EXPECT_EQ(result.value.at("http_status"), 200);
        EXPECT_EQ(result.value.at("bytes"), 100'000u);
        EXPECT_EQ(result.value.at("tries"), 1u);
        EXPECT_EQ(result.value.at("final_url"), fixture.urls()[i]);
        EXPECT_EQ(saved_path(result), (dir.path() / fmt::format("{:03}-photo-{}.ppm", i, i)).string());
        EXPECT_EQ(testing::read_file(saved_path(result)), fixture.image(i));
        EXPECT_EQ(result.value.at("sha256"), sha256_hex(fixture.image(i)));
    }
    const std::string missing = fixture.base_url() + "/photo-3.ppm";
    const TaskResult result = download(download_task(3, missing, dir.path()));
    EXPECT_EQ(result.error, fmt::format("cannot download '{}': HTTP 404", missing));
    EXPECT_TRUE(result.value.is_null());
    EXPECT_EQ(files_under(dir.path()),
              (std::set<std::string>{"000-photo-0.ppm", "001-photo-1.ppm", "002-photo-2.ppm"}));
    close_connections();
}

TEST(ImageServer, ThrottledBodiesArriveWhole) {
    ImageServer fixture({.images = 1, .file_size = 300'000, .latency_s = 0, .bandwidth = 2'000'000});
    fixture.start();
    testing::TempDir dir;
    const TaskResult result = download(download_task(0, fixture.urls()[0], dir.path()));
    ASSERT_TRUE(result.ok) << result.error;
    EXPECT_EQ(testing::read_file(saved_path(result)), fixture.image(0));
    close_connections();
}

// Workers connect all at once. A SYN that finds the accept queue full is dropped, and TCP
// sends it again only a second later: with cpp-httplib's backlog of 5, 8 threads fetching
// 15 images of 0.02 s latency took 1.04 s instead of 0.06 s. Before start() nothing accepts,
// so the queue alone must hold the burst.
TEST(ImageServer, QueuesABurstOfConnectionsBeforeAcceptingAny) {
    ImageServer fixture({.images = 1, .latency_s = 0});  // not started
    constexpr int kBurst = 64;
    std::vector<pollfd> connecting;
    for (int i = 0; i < kBurst; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        ASSERT_GE(fd, 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        address.sin_port = htons(static_cast<std::uint16_t>(fixture.port()));
        ::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);  // EINPROGRESS
        connecting.push_back({fd, POLLOUT, 0});
    }
    std::vector<int> sockets;
    for (const pollfd& item : connecting) sockets.push_back(item.fd);
    int connected = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!connecting.empty() && std::chrono::steady_clock::now() < deadline) {
        if (::poll(connecting.data(), connecting.size(), 100) <= 0) continue;
        std::erase_if(connecting, [&](const pollfd& item) {
            if (item.revents == 0) return false;
            int error = -1;
            socklen_t length = sizeof error;
            if (::getsockopt(item.fd, SOL_SOCKET, SO_ERROR, &error, &length) == 0 && error == 0) ++connected;
            return true;
        });
    }
    for (int fd : sockets) ::close(fd);
    EXPECT_EQ(connected, kBurst);
}

// Clients that trickle a request's headers a byte at a time never finish one; each request has
// a deadline, so they cannot keep the server's threads (two here, all taken by them) from the
// downloads that queue behind them.
TEST(ImageServer, SlowHeaderClientsDoNotHoldUpDownloads) {
    ImageServer fixture({.images = 4, .file_size = 1000, .latency_s = 0, .threads = 2});
    fixture.start();
    constexpr int kSlowClients = 3;
    std::atomic<int> cut_off{0};
    std::vector<std::thread> slow;
    for (int i = 0; i < kSlowClients; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        ASSERT_GE(fd, 0);
        sockaddr_in address{};
        address.sin_family = AF_INET;
        address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        address.sin_port = htons(static_cast<std::uint16_t>(fixture.port()));
        ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
        slow.emplace_back([fd, &cut_off] {
            const std::string request = "GET /photo-0.ppm HTTP/1.1\r\nHost: x\r\nX-Slow: " + std::string(1000, 'a');
            // A byte every 0.3 s, for at most a minute, until the server cuts the connection.
            for (std::size_t sent = 0; sent < 200; ++sent) {
                if (::send(fd, request.data() + sent % request.size(), 1, MSG_NOSIGNAL) != 1) {
                    ++cut_off;
                    break;
                }
                std::this_thread::sleep_for(std::chrono::milliseconds(300));
            }
            ::close(fd);
        });
    }
    testing::TempDir dir;
    std::vector<TaskResult> results;
    for (TaskId id = 0; id < 4; ++id)
        results.push_back(download(download_task(id, fixture.urls()[id], dir.path(), /*timeout_s=*/50)));
    for (std::thread& thread : slow) thread.join();
    for (const TaskResult& result : results) EXPECT_TRUE(result.ok) << result.error;
    EXPECT_EQ(files_under(dir.path()).size(), 4u);
    EXPECT_EQ(cut_off, kSlowClients);  // the server hung up on every one of them
    close_connections();
}

// --- the executor in-process -------------------------------------------------------------

TEST(DownloadExecutor, StopsWhenCancelledAndLeavesNoFile) {
    ImageServer fixture({.images = 1, .file_size = 1000, .latency_s = 600});
    fixture.start();
    testing::TempDir dir;
    std::stop_source stop;
    TaskResult result;
    std::thread runner([&] { result = download(download_task(0, fixture.urls()[0], dir.path()), stop.get_token()); });
    testing::eventually([&] { return fixture.requests() == 1; }, std::chrono::seconds(20));
    stop.request_stop();
    runner.join();
    EXPECT_EQ(result.error, "cancelled");
    EXPECT_FALSE(result.ok);
    EXPECT_EQ(files_under(dir.path()), std::set<std::string>{});
}

TEST(DownloadExecutor, StopsAtItsDeadlineAndLeavesNoFile) {
    ImageServer fixture({.images = 1, .file_size = 1000, .latency_s = 600});
    fixture.start();
    testing::TempDir dir;
    const TaskResult result = download(download_task(0, fixture.urls()[0], dir.path(), 0.3));
    EXPECT_EQ(result.error, "timed out after 0.3 s");
    EXPECT_EQ(files_under(dir.path()), std::set<std::string>{});
    close_connections();
}

// A server that sends a byte a second never stalls outright; --min-speed and --stall-time
// (here 100 bytes a second over 1 s) fail it as stalled anyway, with no task deadline.
TEST(DownloadExecutor, FailsADownloadSlowerThanTheMinimumSpeed) {
    const PythonServer server = PythonServer::hostile();
    testing::TempDir dir;
    DownloadTask drip = download_task(0, server.url("/drip"), dir.path());
    drip.settings["min_speed"] = 100;
    drip.settings["stall_s"] = 1;
    drip.settings["retries"] = 1;
    const TaskResult result = download(drip);
    EXPECT_EQ(result.error, fmt::format("cannot download '{}': stalled: less than 100 bytes a second for 1 s "
                                        "(--min-speed, --stall-time) (2 tries)",
                                        server.url("/drip")));
    EXPECT_EQ(files_under(dir.path()), std::set<std::string>{});
    close_connections();
}

TEST(DownloadExecutor, ReusesItsConnectionForTheNextTaskOnTheSameThread) {
    const PythonServer server = PythonServer::hostile();
    const std::string first = fetch(server.url("/peer"));
    EXPECT_EQ(fetch(server.url("/peer")), first);  // the client's port: same connection
    close_connections();
    EXPECT_NE(fetch(server.url("/peer")), first);
    close_connections();
}

// A 304 must not have a body; this server sends one anyway, and libcurl, which reads none,
// keeps the connection with those bytes unread. The next task on the thread must not take
// them for its response (it failed with "Received HTTP/0.9 when not allowed").
TEST(DownloadExecutor, AFailedTaskLeavesNoConnectionForTheNextToStumbleOn) {
    const PythonServer server = PythonServer::hostile();
    testing::TempDir dir;
    // libcurl does not reuse a connection with bytes already waiting, so whether the stray
    // body beats the next request is a race, lost most of the time: run it often.
    for (int round = 0; round < 20; ++round) {
        const TaskResult not_modified = download(download_task(0, server.url("/status/304"), dir.path()));
        EXPECT_EQ(not_modified.error, fmt::format("cannot download '{}': HTTP 304", server.url("/status/304")));
        const TaskResult next = download(download_task(1, server.url("/bytes/100?seed=1"), dir.path()));
        ASSERT_TRUE(next.ok) << "round " << round << ": " << next.error;
        EXPECT_EQ(next.value.at("tries"), 1u);
        EXPECT_EQ(testing::read_file(saved_path(next)), pattern(100, 1));
    }
    close_connections();
}

// The URL was http, so a reply that is not HTTP must not be blamed on the URL's scheme.
TEST(DownloadExecutor, SaysWhenTheReplyIsNotHttp) {
    const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    ASSERT_EQ(::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
    ASSERT_EQ(::listen(listener, 1), 0);
    ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length);
    std::thread server([listener] {
        const int client = ::accept(listener, nullptr, nullptr);
        char request[4096];
        static_cast<void>(::recv(client, request, sizeof request, 0));
        const std::string banner = "SSH-2.0-OpenSSH_9.2\r\n";
        static_cast<void>(::send(client, banner.data(), banner.size(), MSG_NOSIGNAL));
        ::close(client);
    });
    testing::TempDir dir;
    const std::string url = fmt::format("http://127.0.0.1:{}/file", ntohs(address.sin_port));
    const TaskResult result = download(download_task(0, url, dir.path()));
    server.join();
    ::close(listener);
    EXPECT_FALSE(result.ok);
    EXPECT_NE(result.error.find("HTTP/0.9"), std::string::npos) << result.error;
    EXPECT_EQ(result.error.find("not an http or https"), std::string::npos) << result.error;
    EXPECT_EQ(files_under(dir.path()), std::set<std::string>{});
}

TEST(DownloadExecutor, ReplacesItsOwnFileWhenRunAgain) {
    const PythonServer server = PythonServer::hostile();
    testing::TempDir dir;
    const TaskResult first = download(download_task(4, server.url("/bytes/100?seed=1"), dir.path()));
    const TaskResult again = download(download_task(4, server.url("/bytes/200?seed=2"), dir.path()));
    ASSERT_TRUE(first.ok && again.ok) << first.error << again.error;
    EXPECT_EQ(files_under(dir.path()), (std::set<std::string>{"004-100", "004-200"}));
    const TaskResult same = download(download_task(4, server.url("/bytes/100?seed=3"), dir.path()));
    ASSERT_TRUE(same.ok) << same.error;
    EXPECT_EQ(testing::read_file(dir.path() / "004-100"), pattern(100, 3));
    close_connections();
}

TEST(DownloadExecutor, RetriesA500UntilItRecoversButNeverA404) {
    const PythonServer server = PythonServer::hostile();
    testing::TempDir dir;
    DownloadTask flaky = download_task(0, server.url("/flaky/twice/2"), dir.path());
    flaky.settings["retries"] = 2;
    const TaskResult recovered = download(flaky);
    ASSERT_TRUE(recovered.ok) << recovered.error;
    EXPECT_EQ(recovered.value.at("tries"), 3u);
    EXPECT_EQ(testing::read_file(saved_path(recovered)), "recovered twice");

    DownloadTask missing = download_task(1, server.url("/status/404?key=missing"), dir.path());
    missing.settings["retries"] = 3;
    const TaskResult failed = download(missing);
    EXPECT_EQ(failed.error, fmt::format("cannot download '{}': HTTP 404", missing.spec.params.at("url")));
    EXPECT_EQ(server.count("missing"), 1);  // one try: a 404 is not retried
    close_connections();
}

// The default of 2 further tries is the type's own: the run's settings have "retries" only
// when --retries is given (settings_json), so a run without it still retries.
TEST(DownloadExecutor, RetriesTwiceWhenTheSettingsHaveNoRetries) {
    const PythonServer server = PythonServer::hostile();
    testing::TempDir dir;
    DownloadTask flaky = download_task(0, server.url("/flaky/default/2"), dir.path());
    flaky.settings.erase("retries");
    const TaskResult recovered = download(flaky);
    ASSERT_TRUE(recovered.ok) << recovered.error;
    EXPECT_EQ(recovered.value.at("tries"), 3u);
    DownloadTask failing = download_task(1, server.url("/flaky/always/3"), dir.path());
    failing.settings.erase("retries");
    const TaskResult failed = download(failing);
    EXPECT_TRUE(failed.error.ends_with("HTTP 500 (3 tries)")) << failed.error;
    close_connections();
}

TEST(DownloadExecutor, FailsInOneLineWhenTheDirectoryCannotBeMade) {
    testing::TempDir dir;
    write_file(dir / "file", "not a directory");
    const TaskResult result = download(download_task(0, "http://127.0.0.1:9/x", dir / "file" / "sub"));
    EXPECT_FALSE(result.ok);
    EXPECT_TRUE(result.error.starts_with("cannot download 'http://127.0.0.1:9/x': cannot create directory"))
        << result.error;
    EXPECT_EQ(result.error.find('\n'), std::string::npos);
}

// --- the coordinator end to end ---------------------------------------------------------

// The journal's result lines of one mode, by task id (not its event lines: the settings that
// changed results, lost workers).
std::map<TaskId, nlohmann::json> lines_of(const std::vector<nlohmann::json>& journal, const std::string& mode) {
    std::map<TaskId, nlohmann::json> lines;
    for (const auto& line : journal)
        if (!line.contains("event") && line["mode"] == mode) lines[line["id"].get<TaskId>()] = line;
    return lines;
}

TEST(DownloadRun, TheBuiltInServerGivesTheSameImagesInEveryMode) {
    testing::TempDir dir;
    const fs::path out = dir / "out";
    const Output output =
        run_binary("coordinator", {"--task", "download", "--tasks", "6", "--workers", "3", "--mode", "all",
                                   "--file-size", "50K", "--latency", "0.05", "--out-dir", out.string(), "--results",
                                   (dir / "results.jsonl").string(), "--json", (dir / "report.json").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err << output.out;
    // The same options and seed make the same bytes in this process.
    ImageServer reference({.images = 6, .file_size = 50 * 1024, .latency_s = 0});
    const auto journal = testing::read_json_lines(dir / "results.jsonl");
    for (const char* mode : {"sequential", "threads", "gil-threads", "processes"}) {
        std::set<std::string> expected;
        const auto lines = lines_of(journal, mode);
        ASSERT_EQ(lines.size(), 6u) << mode;
        for (int i = 0; i < 6; ++i) {
            const std::string name = fmt::format("{:03}-photo-{}.ppm", i, i);
            expected.insert(name);
            const fs::path file = out / mode / name;
            EXPECT_EQ(testing::read_file(file), reference.image(i)) << file;
            const auto& value = lines.at(static_cast<TaskId>(i))["value"];
            EXPECT_EQ(value["sha256"], sha256_hex(reference.image(i)));
            EXPECT_EQ(value["bytes"], 50 * 1024);
            EXPECT_EQ(value["http_status"], 200);
            EXPECT_EQ(value["path"], fs::absolute(file).lexically_normal().string());
            EXPECT_TRUE(value["final_url"].get<std::string>().ends_with(fmt::format("/photo-{}.ppm", i)));
        }
        EXPECT_EQ(files_under(out / mode), expected) << mode;
    }
    EXPECT_EQ(testing::read_json(dir / "report.json")["task"], "download");
    EXPECT_NE(output.out.find("HTTP 200, 51200 bytes"), std::string::npos);
}

TEST(DownloadRun, SavesEveryUrlOfAnotherServerByteForByte) {
    testing::TempDir site;
    const std::map<std::string, std::string> files = {
        {"small.txt", "hello, world\n"},
        {"empty.bin", ""},
        {"big.bin", random_bytes(3 * 1024 * 1024 + 17, 1)},
        {"with space.dat", random_bytes(1000, 2)},
        {"one/same.txt", "the first same.txt\n"},
        {"two/same.txt", "the second same.txt\n"},
        {"caf\xc3\xa9.bin", random_bytes(4096, 3)},
    };
    for (const auto& [name, bytes] : files) write_file(site / name, bytes);
    const PythonServer server = PythonServer::serving(site.path());
    // Listed order: id i is line i of the URLs; names as they come out.
    const std::vector<std::pair<std::string, std::string>> listed = {
        {"small.txt", "/small.txt"},
        {"empty.bin", "/empty.bin"},
        {"big.bin", "/big.bin"},
        {"with space.dat", "/with%20space.dat"},
        {"one/same.txt", "/one/same.txt"},
        {"two/same.txt", "/two/same.txt"},
        {"caf\xc3\xa9.bin", "/caf%C3%A9.bin"},
    };
    const std::vector<std::string> saved = {"000-small.txt", "001-empty.bin", "002-big.bin",  "003-with_space.dat",
                                            "004-same.txt",  "005-same.txt",  "006-caf__.bin"};
    testing::TempDir dir;
    std::ofstream list(dir / "urls.txt");
    list << "# files of a python http.server\n\n";
    for (const auto& [name, path] : listed) list << "  " << server.url(path) << "\n";
    list.close();

    const fs::path out = dir / "out";
    const Output output =
        run_binary("coordinator", {"--urls", (dir / "urls.txt").string(), "--workers", "3", "--out-dir", out.string(),
                                   "--results", (dir / "results.jsonl").string()});
    ASSERT_EQ(output.exit_code, 0) << output.err << output.out;
    const auto journal = testing::read_json_lines(dir / "results.jsonl");
    for (const char* mode : {"sequential", "threads", "processes"}) {
        const auto lines = lines_of(journal, mode);
        ASSERT_EQ(lines.size(), listed.size()) << mode;
        for (std::size_t i = 0; i < listed.size(); ++i) {
            const std::string& source = files.at(listed[i].first);
            const fs::path file = out / mode / saved[i];
            EXPECT_EQ(testing::read_file(file), source) << file;
            const auto& value = lines.at(i)["value"];
            EXPECT_EQ(value["sha256"], sha256_hex(source)) << file;
            EXPECT_EQ(value["bytes"], source.size()) << file;
            EXPECT_EQ(value["final_url"], server.url(listed[i].second)) << file;
        }
        EXPECT_EQ(files_under(out / mode), std::set<std::string>(saved.begin(), saved.end())) << mode;
    }
}

// Every failure at once, with good downloads among them.
TEST(DownloadRun, AHostileServerGetsClearErrorsAndTheGoodFilesStayIntact) {
    const PythonServer server = PythonServer::hostile();
    const std::string refused = fmt::format("http://127.0.0.1:{}/refused", refused_port());
    const std::vector<std::string> urls = {
        server.url("/bytes/5000?seed=1"),                                                  // 0 ok
        server.url("/status/404?key=e404"),                                                // 1
        server.url("/status/500?key=e500"),                                                // 2
        server.url("/flaky/recovers/1"),                                                   // 3 ok
        refused,                                                                           // 4
        server.url("/redirect?to=file:///etc/passwd"),                                     // 5
        server.url("/loop/0"),                                                             // 6
        server.url("/stall"),                                                              // 7
        server.url("/truncated?key=truncated"),                                            // 8
        server.url("/huge?length=3000000"),                                                // 9
        server.url("/huge-chunked?length=3000000"),                                        // 10
        server.url("/huge-close?length=3000000"),                                          // 11
        server.url("/named?cd=attachment%3B%20filename%3D%22..%2F..%2Fevil.sh%22"),        // 12 ok
        server.url("/named?cd=attachment%3B%20filename*%3DUTF-8''%252e%252e%252fpasswd"),  // 13 ok
        server.url("/any/%2e%2e%2f%2e%2e%2fescape.txt"),                                   // 14 ok
        server.url("/redirect?to=/bytes/7000%3Fseed%3D2"),                                 // 15 ok
        server.url("/redirect?to=ftp://127.0.0.1/x"),                                      // 16
        server.url("/stall-headers"),                                                      // 17
    };
    testing::TempDir dir;
    std::ofstream list(dir / "urls.txt");
    for (const std::string& url : urls) list << url << "\n";
    list.close();
    const fs::path out = dir / "out";
    const Output output =
        run_binary("coordinator", {"--urls", (dir / "urls.txt").string(), "--mode", "threads,processes", "--workers",
                                   "6", "--retries", "1", "--max-bytes", "1M", "--task-timeout", "2", "--out-dir",
                                   out.string(), "--results", (dir / "results.jsonl").string()});
    EXPECT_EQ(output.exit_code, 1) << output.err << output.out;

    const auto error = [&](std::size_t i, const std::string& reason) {
        return fmt::format("cannot download '{}': {}", urls[i], reason);
    };
    const std::string too_big = "larger than the limit of 1048576 bytes (--max-bytes)";
    const std::map<std::size_t, std::string> exact = {
        {1, error(1, "HTTP 404")},
        {2, error(2, "HTTP 500 (2 tries)")},
        {5, error(5, "redirected to 'file:///etc/passwd', which is not http or https")},
        {6, error(6, "more than 5 redirects")},
        {7, "timed out after 2 s"},
        {9, error(9, too_big)},
        {10, error(10, too_big)},
        {11, error(11, too_big)},
        {16, error(16, "redirected to 'ftp://127.0.0.1/x', which is not http or https")},
        {17, "timed out after 2 s"},
    };
    const auto journal = testing::read_json_lines(dir / "results.jsonl");
    for (const char* mode : {"threads", "processes"}) {
        const auto lines = lines_of(journal, mode);
        ASSERT_EQ(lines.size(), urls.size()) << mode;
        for (const auto& [id, message] : exact) EXPECT_EQ(lines.at(id)["error"], message) << mode << " task " << id;
        const std::string connect = lines.at(4)["error"];
        EXPECT_TRUE(connect.starts_with(error(4, ""))) << connect;
        EXPECT_TRUE(connect.ends_with("(2 tries)")) << connect;
        const std::string truncated = lines.at(8)["error"];
        EXPECT_TRUE(truncated.starts_with(error(8, ""))) << truncated;
        EXPECT_TRUE(truncated.ends_with("(2 tries)")) << truncated;

        const fs::path saved = out / mode;
        EXPECT_EQ(files_under(saved), (std::set<std::string>{"000-5000", "003-1", "012-evil.sh", "013-passwd",
                                                             "014-escape.txt", "015-redirect"}))
            << mode;
        EXPECT_EQ(testing::read_file(saved / "000-5000"), pattern(5000, 1));
        EXPECT_EQ(testing::read_file(saved / "003-1"), "recovered recovers");
        EXPECT_EQ(testing::read_file(saved / "012-evil.sh"), "named body");
        EXPECT_EQ(testing::read_file(saved / "013-passwd"), "named body");
        EXPECT_EQ(testing::read_file(saved / "014-escape.txt"), "any body");
        EXPECT_EQ(testing::read_file(saved / "015-redirect"), pattern(7000, 2));
        EXPECT_EQ(lines.at(15)["value"]["final_url"], server.url("/bytes/7000?seed=2"));
        EXPECT_EQ(lines.at(0)["value"]["sha256"], sha256_hex(pattern(5000, 1)));
    }
    // Nothing anywhere else: no temp files, nothing a name or a redirect smuggled out.
    std::set<std::string> everything = files_under(dir.path());
    std::erase_if(everything, [](const std::string& path) { return path.starts_with("out/"); });
    EXPECT_EQ(everything, (std::set<std::string>{"urls.txt", "results.jsonl"}));
    // 404 is never retried, 500 once (--retries 1), in each of the two modes.
    EXPECT_EQ(server.count("e404"), 2);
    EXPECT_EQ(server.count("e500"), 4);
    EXPECT_EQ(server.count("truncated"), 4);
    EXPECT_NE(output.out.find("task(s) failed in threads:"), std::string::npos) << output.out;
    EXPECT_NE(output.out.find("  task 1: " + error(1, "HTTP 404")), std::string::npos) << output.out;
    close_connections();
}

// Two downloads that are mid-body (10 bytes in, then the server goes quiet) when the
// coordinator is stopped or killed: neither a file nor a temp file remains.
struct Interruption {
    std::string mode;
    int signo;
    int exit_code;
};

class DownloadInterrupted : public ::testing::TestWithParam<Interruption> {};

TEST_P(DownloadInterrupted, LeavesNoFileBehind) {
    const PythonServer server = PythonServer::hostile();
    testing::TempDir dir;
    const std::string key = "stall-" + GetParam().mode;
    std::ofstream(dir / "urls.txt") << server.url("/stall?key=" + key) << "\n"
                                    << server.url("/stall?key=" + key) << "\n";
    testing::Running coordinator("coordinator", {"--urls", (dir / "urls.txt").string(), "--mode", GetParam().mode,
                                                 "--workers", "2", "--out-dir", (dir / "out").string()});
    ASSERT_TRUE(testing::eventually([&] { return server.count(key) == 2; }, std::chrono::seconds(20)))
        << coordinator.err();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // the first bytes are in
    const std::vector<pid_t> workers = testing::workers_of(coordinator.pid());
    coordinator.signal(GetParam().signo);
    const Output output = coordinator.wait(std::chrono::seconds(30));
    EXPECT_EQ(output.exit_code, GetParam().exit_code) << output.err;
    for (pid_t worker : workers)
        EXPECT_TRUE(testing::eventually([&] { return !testing::process_exists(worker); }, std::chrono::seconds(5)));
    EXPECT_EQ(files_under(dir / "out"), std::set<std::string>{});
    close_connections();
}

INSTANTIATE_TEST_SUITE_P(Modes, DownloadInterrupted,
                         ::testing::Values(Interruption{"threads", SIGINT, 130}, Interruption{"processes", SIGINT, 130},
                                           Interruption{"threads", SIGKILL, 128 + SIGKILL},
                                           Interruption{"processes", SIGKILL, 128 + SIGKILL}),
                         [](const auto& param_info) {
                             const Interruption& param = param_info.param;
                             return param.mode + (param.signo == SIGINT ? "_SIGINT" : "_SIGKILL");
                         });

TEST(DownloadRun, ABadUrlListStopsTheRunBeforeItStarts) {
    testing::TempDir dir;
    std::ofstream(dir / "urls.txt") << "# list\nhttp://127.0.0.1:9/a.jpg\n\nfile:///etc/passwd\n";
    const Output bad =
        run_binary("coordinator", {"--urls", (dir / "urls.txt").string(), "--out-dir", (dir / "out").string()});
    EXPECT_EQ(bad.exit_code, 2);
    EXPECT_NE(bad.err.find(fmt::format("--urls: {}:4: 'file:///etc/passwd' is not an http:// or https:// URL",
                                       (dir / "urls.txt").string())),
              std::string::npos)
        << bad.err;
    EXPECT_EQ(bad.out, "");
    EXPECT_FALSE(fs::exists(dir / "out"));

    const Output missing = run_binary("coordinator", {"--urls", (dir / "nope.txt").string()});
    EXPECT_EQ(missing.exit_code, 2);
    EXPECT_NE(missing.err.find("--urls: cannot open"), std::string::npos) << missing.err;

    std::ofstream(dir / "empty.txt") << "# nothing\n\n";
    const Output empty = run_binary("coordinator", {"--urls", (dir / "empty.txt").string()});
    EXPECT_EQ(empty.exit_code, 2);
    EXPECT_NE(empty.err.find("no inputs in the list"), std::string::npos) << empty.err;
}

TEST(DownloadRun, AnOutDirThatCannotBeMadeIsAUsageError) {
    testing::TempDir dir;
    write_file(dir / "file", "x");
    const Output output =
        run_binary("coordinator", {"--task", "download", "--tasks", "1", "--out-dir", (dir / "file").string()});
    EXPECT_EQ(output.exit_code, 2);
    EXPECT_NE(output.err.find("--out-dir: cannot create directory"), std::string::npos) << output.err;
}

// Without --out-dir the files go to downloads/<mode>/ of the working directory: the directory
// the download type names (TaskTraits::out_dir), which the coordinator, the worker's --help
// and the type's line in --task's help take from it.
TEST(DownloadRun, WithoutOutDirFilesGoIntoTheTypesOwnDirectory) {
    testing::TempDir dir;
    const Output output =
        run_binary("/bin/sh", {"-c", "cd \"$1\" && shift && exec \"$@\"", "sh", dir.path().string(),
                               testing::bin("coordinator").string(), "--task", "download", "--tasks", "2", "--workers",
                               "2", "--mode", "sequential,processes", "--file-size", "1K", "--latency", "0"});
    ASSERT_EQ(output.exit_code, 0) << output.err;
    for (const char* mode : {"sequential", "processes"}) {
        std::size_t files = 0;
        for (const auto& entry : fs::directory_iterator(dir / "downloads" / mode)) files += entry.is_regular_file();
        EXPECT_EQ(files, 2u) << mode;
    }
    EXPECT_NE(run_binary("coordinator", {"--help"}).out.find("(--out-dir default: downloads)"), std::string::npos);
    EXPECT_NE(run_binary("worker", {"--help"}).out.find("(default: downloads,"), std::string::npos);
}

// What a running process has mapped, from /proc/PID/maps: the libraries it has loaded.
std::string mapped_files(pid_t pid) { return testing::read_file(fs::path("/proc") / std::to_string(pid) / "maps"); }

// The worker of a one-worker coordinator, once it runs the worker binary with its libraries
// loaded (libzmq is linked, so the loader has mapped it before main).
pid_t started_worker(const testing::Running& coordinator) {
    pid_t worker = -1;
    testing::eventually(
        [&] {
            const std::vector<pid_t> children = testing::workers_of(coordinator.pid());
            if (children.size() != 1) return false;
            if (!testing::runs_program(children[0], "worker") ||
                mapped_files(children[0]).find("libzmq") == std::string::npos)
                return false;
            worker = children[0];
            return true;
        },
        std::chrono::seconds(10));
    return worker;
}

// Decision 55: libcurl and libcrypto (and their dependencies) are loaded by the first
// download, not at start-up, so an exec'd worker (--worker-bin) that sleeps starts in a third
// of the time; a forked one has them from its fork server (decision 101), which loaded them
// once, so even its first download pays nothing for them.
TEST(DownloadRun, AWorkerLoadsLibcurlAndLibcryptoOnlyWhenItDownloads) {
    testing::TempDir dir;
    {
        testing::Running sleeper(
            "coordinator", {"--mode", "processes", "--workers", "1", "--tasks", "1", "--duration", "60", "--worker-bin",
                            testing::bin("worker").string(), "--drain-timeout", "0"});
        const pid_t worker = started_worker(sleeper);
        ASSERT_GT(worker, 0) << sleeper.err();
        EXPECT_EQ(testing::fork_server_of(sleeper.pid()), -1) << "--worker-bin workers are exec'd";
        const std::string maps = mapped_files(worker);
        EXPECT_EQ(maps.find("libcurl"), std::string::npos) << maps;
        EXPECT_EQ(maps.find("libcrypto"), std::string::npos) << maps;
        sleeper.signal(SIGTERM);
        EXPECT_EQ(sleeper.wait(std::chrono::seconds(20)).exit_code, 143);
    }
    // The same check sees them in a worker in the middle of a download (the server takes a minute).
    testing::Running downloader(
        "coordinator",
        {"--mode", "processes", "--workers", "1", "--task", "download", "--tasks", "1", "--latency", "60", "--out-dir",
         dir.path().string(), "--worker-bin", testing::bin("worker").string(), "--drain-timeout", "0"});
    const pid_t worker = started_worker(downloader);
    ASSERT_GT(worker, 0) << downloader.err();
    EXPECT_TRUE(testing::eventually(
        [&] {
            const std::string maps = mapped_files(worker);
            return maps.find("libcurl") != std::string::npos && maps.find("libcrypto") != std::string::npos;
        },
        std::chrono::seconds(10)))
        << mapped_files(worker);
    downloader.signal(SIGTERM);
    EXPECT_EQ(downloader.wait(std::chrono::seconds(20)).exit_code, 143);
}

TEST(DownloadRun, AForkedWorkerStartsWithLibcurlItsForkServerLoaded) {
#if defined(__SANITIZE_ADDRESS__)
    GTEST_SKIP() << "sanitized builds exec their workers: no fork server (decisions 101, 104)";
#endif
    // A plan of downloads: its fork server preloads libcurl (decision 145), so the worker
    // has it from its first instruction. A plan without downloads: ForkServer.PreloadsOnly...
    const testing::TempDir dir;
    testing::Running sleeper(
        "coordinator", {"--mode", "processes", "--workers", "1", "--task", "download", "--tasks", "1", "--latency",
                        "60", "--out-dir", dir.path().string(), "--drain-timeout", "0"});
    const pid_t worker = started_worker(sleeper);
    ASSERT_GT(worker, 0) << sleeper.err();
    const pid_t server = testing::fork_server_of(sleeper.pid());
    ASSERT_GT(server, 0) << sleeper.err();
    EXPECT_NE(mapped_files(server).find("libcurl"), std::string::npos);
    EXPECT_NE(mapped_files(worker).find("libcurl"), std::string::npos);
    sleeper.signal(SIGTERM);
    EXPECT_EQ(sleeper.wait(std::chrono::seconds(20)).exit_code, 143);
    EXPECT_FALSE(testing::process_exists(worker));
    EXPECT_FALSE(testing::process_exists(server));
}

TEST(LazyLibrary, NamesTheLibraryOrSymbolItCannotFind) {
    try {
        lazy::open("libtaskfarm-no-such-library.so.0");
        ADD_FAILURE() << "opened a library that does not exist";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("cannot load libtaskfarm-no-such-library.so.0"), std::string::npos)
            << e.what();
    }
    void* libc = lazy::open("libc.so.6");
    EXPECT_EQ(lazy::open("libc.so.6"), libc);  // opened once
    EXPECT_NE(lazy::function<decltype(::getpid)>(libc, "libc.so.6", "getpid"), nullptr);
    EXPECT_EQ(lazy::function<decltype(::getpid)>(libc, "libc.so.6", "getpid")(), ::getpid());
    try {
        lazy::symbol(libc, "libc.so.6", "taskfarm_no_such_function");
        ADD_FAILURE() << "found a symbol that does not exist";
    } catch (const std::runtime_error& e) {
        EXPECT_NE(std::string(e.what()).find("cannot find taskfarm_no_such_function in libc.so.6"), std::string::npos)
            << e.what();
    }
}

}  // namespace
}  // namespace taskfarm
