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

#include "task.hpp"

namespace taskfarm {

struct ImageServerOptions {
    int images = 15;
    std::uint64_t file_size = 200 * 1024;  // bytes per image
    double latency_s = 0.2;                // before each response's headers
    std::uint64_t bandwidth = 0;           // bytes per second per response; 0: as fast as it goes
    int threads = 8;                       // responses served at once (each kept-alive connection holds one)
    std::uint64_t seed = 1;                // same seed, same bytes

    // From the run's settings: "tasks" images, "file_size", "latency_s", "bandwidth", "seed",
    // and a thread per worker ("workers") plus spares.
    static ImageServerOptions from(const Json& settings);
};

// Binds in the constructor (throws std::runtime_error if it cannot) and serves from start() until it
// is destroyed, so that its threads can start after the coordinator has blocked signals.
// GET /photo-<i>.ppm (0 <= i < images) answers a binary PPM image of exactly file_size
// bytes (just bytes when file_size is too small for a header); anything else is a 404.
class ImageServer final : public RunService {
public:
    explicit ImageServer(ImageServerOptions options);
    ~ImageServer() override;  // stops serving (cutting short delays and throttled bodies) and joins
    ImageServer(const ImageServer&) = delete;
    ImageServer& operator=(const ImageServer&) = delete;

    void start() override;  // returns once the server accepts connections; logs where
    int port() const { return port_; }
    const ImageServerOptions& options() const { return options_; }
    std::string base_url() const;           // "http://127.0.0.1:PORT"
    std::string name(int image) const;      // "photo-3.ppm"
    std::vector<std::string> urls() const;  // one per image, in order
    std::string image(int image) const;     // its bytes, as served
    // `size` of its bytes from `offset`, as the server sends them a chunk at a time.
    std::string piece(int image, std::uint64_t offset, std::size_t size) const;
    std::uint64_t requests() const;  // answered so far, 404s included

private:
    class Server;
    // Sleeps until `when` or until stopping; false when stopping.
    bool sleep_until(std::chrono::steady_clock::time_point when);
    // `size` bytes of image `image` from `offset` into `out`.
    void image_bytes(int image, std::uint64_t offset, std::size_t size, std::string& out) const;
    std::string header(int image) const;

    ImageServerOptions options_;
    std::unique_ptr<Server> server_;
    int port_ = 0;
    std::mutex mutex_;
    std::condition_variable wake_;
    bool stopping_ = false;  // under mutex_
    std::thread thread_;     // runs the server's accept loop from start()
};

// The download type's prepare(): an ImageServer for the run's settings, its URLs added to
// them as "served_urls". Defined in image_server.cpp, in a library of its own
// (taskfarm_image_server) that only coordinators link: cpp-httplib pulls in libssl and
// libcrypto, which a worker should not load at start (decision 55). The stock worker links
// worker/no_image_server.cpp instead, which throws.
std::unique_ptr<RunService> serve_images(Json& settings);

}  // namespace taskfarm
