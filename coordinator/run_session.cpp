#include "run_session.hpp"

#include <unistd.h>

#include <utility>

#include "errors.hpp"
#include "journal.hpp"
#include "live_view.hpp"
#include "modes.hpp"
#include "process_pool.hpp"
#include "signals.hpp"

namespace taskfarm {

RunSession::RunSession(const RunConfig& config, const Registry& registry, const Json& settings,
                       const std::vector<const TaskType*>& types)
    : config_(config), registry_(registry), settings_(settings), fork_server_(start_fork_server(config, types)) {}

RunSession::~RunSession() = default;

void RunSession::open_live_view(const LiveViewSetup& live) {
    if (live.address.empty()) return;
    const bool slurm = (config_.step && config_.step->launcher == StepLauncher::Slurm) || config_.alloc;
    try {
        live_ = std::make_unique<LiveView>(live.address, live.title, slurm);
    } catch (const ConfigError& e) {
        // LiveView names --ui; a Farm's program set another option.
        std::string why = e.what();
        if (live.option != "--ui" && why.starts_with("--ui: ")) why = live.option + ": " + why.substr(6);
        throw ConfigError(why);
    }
}

void RunSession::add(std::unique_ptr<ResultSink> sink) {
    if (sink) added_.push_back(std::move(sink));
}

JournalSink* RunSession::add_journal(std::unique_ptr<JournalSink> journal) {
    JournalSink* const kept = journal.get();
    add(std::move(journal));
    return kept;
}

ProgressSink* RunSession::add_progress(ProgressMode mode, ProgressOptions options, std::unique_ptr<ResultSink> lines) {
    const auto style = progress_style(mode, STDERR_FILENO);
    if (!style) {
        add(std::move(lines));
        return nullptr;
    }
    options.style = *style;
    auto sink = std::make_unique<ProgressSink>(options, lines ? std::move(lines) : std::make_unique<FanOutSink>());
    progress_ = sink.get();
    add(std::move(sink));
    return progress_;
}

void RunSession::start(const std::optional<SignalSetup>& signals) {
    // The watcher before any thread of ours, which inherit its blocked signals; the sinks were
    // made before it (a progress bar swaps log sinks while no other thread logs).
    if (signals)
        signals_ = std::make_unique<SignalWatcher>(
            signals->drain_timeout, signals->option,
            signals->handlers ? SignalWatcher::Take::Handlers : SignalWatcher::Take::Mask);
    if (live_) {
        added_.push_back(live_->sink());
        live_->start();
    }
    if (added_.size() == 1) {
        sole_ = std::move(added_.front());
    } else {
        for (auto& sink : added_) sinks_.add(std::move(sink));
    }
    added_.clear();
}

std::unique_ptr<Runner> RunSession::runner(Mode mode) {
    cancels_.clear();
    const RunShared shared{registry_, settings_, &cancels_, fork_server_.get()};
    return make_runner(mode, config_, shared, stop_token(), drain_token());
}

RunReport RunSession::run(Runner& runner, const Plan& plan) {
    struct Close {
        CancelBoard& cancels;
        ~Close() { cancels.close(); }  // until the next runner(), a cancel is answered "nothing cancelled"
    } close{cancels_};
    return runner.run(plan, sole_ ? *sole_ : static_cast<ResultSink&>(sinks_));
}

void RunSession::end_progress() {
    if (progress_ && !progress_ended_) progress_->close();
    progress_ended_ = true;
}

void RunSession::finish(const std::vector<RunReport>& reports) {
    end_progress();
    if (live_) live_->state().finish(reports);
}

std::stop_token RunSession::stop_token() const { return signals_ ? signals_->token() : stop_.get_token(); }
std::stop_token RunSession::drain_token() const { return signals_ ? signals_->drain_token() : drain_.get_token(); }
int RunSession::signal() const { return signals_ ? signals_->signal() : ended_signal_; }

void RunSession::end_signals() {
    if (!signals_) return;
    ended_signal_ = signals_->signal();
    signals_.reset();
}

}  // namespace taskfarm
