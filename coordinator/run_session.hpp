#pragma once
// The engine side of a run, one object for the coordinator's run() and a Farm (decision 290):
// what must happen before any thread starts (the fork server, the live view's port), the sinks
// every run has beside the caller's own (journal, progress, live view), the stop signals and
// the runner's stop and drain tokens, the cancel board, and a mode's runner over a plan into
// those sinks, which gives its RunReport. The coordinator runs a runner per mode through one
// session (run_modes), a Farm one runner over the queue its program fills.
//
// In this order:
//   RunSession session(config, registry, settings, types);  // the fork server
//   session.open_live_view(live);  // the live view binds its port (a ConfigError naming the option)
//   session.add_journal(...); session.add_progress(...); session.add(...);  // the sinks
//   session.start(signals);  // the SignalWatcher (before any other thread), the live view's thread
//   auto runner = session.runner(mode); session.run(*runner, plan);  // per mode
//   session.finish(reports);  // the bar erased, the page showing the run as over

#include <chrono>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <vector>

#include "config.hpp"
#include "control.hpp"
#include "progress.hpp"
#include "report.hpp"
#include "runner.hpp"
#include "sink.hpp"

namespace taskfarm {

class ForkServer;
class JournalSink;
class LiveView;
class SignalWatcher;

// --ui's live view: where it binds, the title of its page, and the option to name in an error.
struct LiveViewSetup {
    std::string address;  // [ADDRESS:]PORT; empty: no live view
    std::string title;
    std::string option = "--ui";  // a bad address or a port in use is a ConfigError naming it
};

// The stop signals (SignalWatcher): a drain after drain_timeout becomes a stop; `option` names
// that setting in the log.
struct SignalSetup {
    std::chrono::milliseconds drain_timeout;
    std::string option;
    // Taken through handlers, changing no thread's mask (SignalWatcher::Take::Handlers: a Farm),
    // rather than blocked in the calling thread and the threads it starts after (the coordinator).
    bool handlers = false;
};

class RunSession {
public:
    // Starts the fork server (with `types` preloaded; none where the workers are exec'd) while
    // this process may have no thread yet: start() begins the session's. `config`, `registry`
    // and `settings` are kept by reference.
    RunSession(const RunConfig& config, const Registry& registry, const Json& settings,
               const std::vector<const TaskType*>& types);
    ~RunSession();
    RunSession(const RunSession&) = delete;
    RunSession& operator=(const RunSession&) = delete;

    // Binds the live view's port when `live` gives an address (after the fork server, which its
    // socket must not go through): a port in use or a bad address is a ConfigError naming
    // live.option. Its page tells a Slurm run (a Slurm step or allocations) from a local one.
    void open_live_view(const LiveViewSetup& live);

    // The sinks, in the order added; the live view's is added last, by start(). Before start().
    void add(std::unique_ptr<ResultSink> sink);
    JournalSink* add_journal(std::unique_ptr<JournalSink> journal);  // null stays null
    // A progress bar (or log line) in front of `lines` (the result lines, or nothing), when
    // `mode` asks for one on stderr; else `lines` alone. Returns the bar, or null.
    ProgressSink* add_progress(ProgressMode mode, ProgressOptions options, std::unique_ptr<ResultSink> lines);

    // With `signals`, the SignalWatcher, which blocks the stop signals in the calling thread and
    // every thread started after it (so: before any other), or with signals->handlers takes
    // them through handlers; without, the tokens are the session's own (stop() and drain() ask
    // them). Then the live view's thread starts.
    void start(const std::optional<SignalSetup>& signals);

    // The runner for `mode`; the cancel board takes requests from now (a cancel is for the mode
    // that runs when it comes).
    std::unique_ptr<Runner> runner(Mode mode);
    // Runs `plan` with `runner` into the sinks (the one sink itself when there is only one: no
    // fan-out's lock per result); the cancel board refuses requests afterwards, until the next runner().
    RunReport run(Runner& runner, const Plan& plan);

    // The bar erased (before the table is printed, or when the run fails); once.
    void end_progress();
    // The run is over: the bar erased, the live view's page shows `reports` as the run's.
    void finish(const std::vector<RunReport>& reports);

    // Ends the stop signals' watch (with a mask, the calling thread gets it back when it is the
    // one that called start(); with handlers, what was there before is put back, from any
    // thread); signal() still says which came.
    void end_signals();

    std::stop_token stop_token() const;
    std::stop_token drain_token() const;
    SignalWatcher* signals() { return signals_.get(); }  // null without start(SignalSetup)
    const SignalWatcher* signals() const { return signals_.get(); }
    int signal() const;  // the first stop signal received; 0: none (or no watcher)
    CancelBoard& cancels() { return cancels_; }
    LiveView* live() { return live_.get(); }
    const LiveView* live() const { return live_.get(); }
    ProgressSink* progress() { return progress_; }
    ForkServer* fork_server() { return fork_server_.get(); }

private:
    const RunConfig& config_;
    const Registry& registry_;
    const Json& settings_;
    std::unique_ptr<ForkServer> fork_server_;
    std::unique_ptr<LiveView> live_;  // before the sinks: its sink refers to its state
    std::vector<std::unique_ptr<ResultSink>> added_;
    FanOutSink sinks_;                  // added_, from start(), when there are several
    std::unique_ptr<ResultSink> sole_;  // or the one
    ProgressSink* progress_ = nullptr;
    bool progress_ended_ = false;
    CancelBoard cancels_;
    std::stop_source stop_;
    std::stop_source drain_;
    std::unique_ptr<SignalWatcher> signals_;  // its tokens, when given, not stop_'s and drain_'s
    int ended_signal_ = 0;                    // signal() of the watch end_signals() ended
};

}  // namespace taskfarm
