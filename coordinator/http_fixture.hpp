#pragma once
// The built-in image server of the offline download demo (and of the tests): synthetic
// images on http://127.0.0.1:<ephemeral port>/, each response delayed like a remote host's
// and optionally throttled. The only file that includes cpp-httplib.

#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace taskfarm {

struct FixtureOptions {
    int images = 15;
    std::uint64_t file_size = 200 * 1024;  // bytes per image
    double latency_s = 0.2;                // before each response's headers
    std::uint64_t bandwidth = 0;           // bytes per second per response; 0: as fast as it goes
    int threads = 8;                       // responses served at once (each kept-alive connection holds one)
    std::uint64_t seed = 1;                // same seed, same bytes
};

// Binds in the constructor (throws RunError if it cannot) and serves from start() until it
// is destroyed, so that its threads can start after the coordinator has blocked signals.
// GET /photo-<i>.ppm (0 <= i < images) answers a binary PPM image of exactly file_size
// bytes (just bytes when file_size is too small for a header); anything else is a 404.
class HttpFixture {
public:
    explicit HttpFixture(FixtureOptions options);
    ~HttpFixture();  // stops serving (cutting short delays and throttled bodies) and joins
    HttpFixture(const HttpFixture&) = delete;
    HttpFixture& operator=(const HttpFixture&) = delete;

    void start();  // returns once the server accepts connections
    int port() const { return port_; }
    const FixtureOptions& options() const { return options_; }
    std::string base_url() const;              // "http://127.0.0.1:PORT"
    std::string name(int image) const;         // "photo-3.ppm"
    std::vector<std::string> urls() const;     // one per image, in order
    std::string image(int image) const;        // its bytes, as served
    std::uint64_t requests() const;            // answered so far, 404s included

private:
    class Server;
    // Sleeps until `when` or until stopping; false when stopping.
    bool sleep_until(std::chrono::steady_clock::time_point when);
    // `size` bytes of image `image` from `offset` into `out`.
    void image_bytes(int image, std::uint64_t offset, std::size_t size, std::string& out) const;
    std::string header(int image) const;

    FixtureOptions options_;
    std::unique_ptr<Server> server_;
    int port_ = 0;
    std::mutex mutex_;
    std::condition_variable wake_;
    bool stopping_ = false;  // under mutex_
    std::thread thread_;     // runs the server's accept loop from start()
};

}  // namespace taskfarm
