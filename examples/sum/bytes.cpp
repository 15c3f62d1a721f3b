// bytes: downloads each URL with the built-in download type from the program's own main() and
// sums the bytes in code; no HTTP code of its own. `bytes OUT_DIR URL...` saves the files into
// OUT_DIR/processes/ and prints "FILES files, BYTES bytes".
#include <cstdio>
#include <iostream>

#include <taskfarm/taskfarm.hpp>

int main(int argc, char** argv) {
    if (taskfarm::Farm::is_worker(argc, argv)) return taskfarm::Farm{}.run_worker(argc, argv);
    if (argc < 3) {
        std::fprintf(stderr, "usage: bytes OUT_DIR URL...\n");
        return 2;
    }
    // Every farm has the built-in types; a failed download is tried twice more ("retries").
    taskfarm::Farm farm{{.workers = 2, .settings = {{"retries", 2}, {"max_bytes", 100 << 20}}, .out_dir = argv[1]}};
    for (int i = 2; i < argc; ++i) farm.submit("download", {{"url", argv[i]}});
    long files = 0;
    long bytes = 0;
    int failed = 0;
    for (const auto& result : farm.as_completed()) {
        try {
            bytes += result.value().at("bytes").get<long>();
            ++files;
        } catch (const taskfarm::TaskError& error) {
            std::cerr << error.what() << "\n";
            ++failed;
        }
    }
    std::printf("%ld files, %ld bytes\n", files, bytes);
    return failed == 0 ? 0 : 1;
}
