// fetch: GET each URL and report its status, size and how long the server took. I/O-bound:
// the task waits on the network, so it speeds up with concurrency (threads, gil-threads,
// processes) far past the number of cores.

#include <chrono>
#include <stdexcept>
#include <string>

#include <curl/curl.h>
#include <taskfarm/taskfarm.hpp>

namespace {

struct Transfer {
    std::size_t bytes = 0;
    const taskfarm::Context* context = nullptr;
};

std::size_t count_bytes(char*, std::size_t size, std::size_t count, void* user) {
    static_cast<Transfer*>(user)->bytes += size * count;
    return size * count;
}

// Nonzero aborts the transfer: a cancelled run or a task past its deadline.
int keep_going(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
    const taskfarm::Context& context = *static_cast<Transfer*>(user)->context;
    return context.stop_requested() || context.expired() ? 1 : 0;
}

taskfarm::Value fetch(const taskfarm::Params& params, taskfarm::Context& context) {
    const std::string url = params.at("input").get<std::string>();  // one line of --inputs FILE
    // Waiting on the network: in gil-threads mode the other threads run meanwhile, as
    // CPython frees its lock around blocking I/O.
    const auto waiting = context.waiting();
    CURL* curl = curl_easy_init();
    if (!curl) throw std::runtime_error("cannot create a libcurl handle");
    Transfer transfer{.context = &context};
    curl_easy_setopt(curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, count_bytes);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &transfer);
    curl_easy_setopt(curl, CURLOPT_XFERINFOFUNCTION, keep_going);
    curl_easy_setopt(curl, CURLOPT_XFERINFODATA, &transfer);
    curl_easy_setopt(curl, CURLOPT_NOPROGRESS, 0L);
    const auto started = std::chrono::steady_clock::now();
    const CURLcode code = curl_easy_perform(curl);
    long status = 0;
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(curl);
    context.check();  // "cancelled" or "timed out after ..." rather than curl's words for it
    if (code != CURLE_OK) throw std::runtime_error(url + ": " + curl_easy_strerror(code));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    return {{"status", status}, {"bytes", transfer.bytes}, {"seconds", seconds}};
}

}  // namespace

int main(int argc, char** argv) {
    curl_global_init(CURL_GLOBAL_DEFAULT);  // once, before any thread starts
    taskfarm::App app{"fetch"};
    app.task("fetch", fetch, {.summary = "GET the URL of each --inputs line; value: status, bytes, seconds"});
    const int code = app.run(argc, argv);
    curl_global_cleanup();
    return code;
}
