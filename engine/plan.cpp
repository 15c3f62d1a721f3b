#include "plan.hpp"

#include <poll.h>

#include <algorithm>

#include "id_set.hpp"

namespace taskfarm {
namespace {

// The tasks of Plan::of.
class HeldSource final : public PlanSource {
public:
    explicit HeldSource(std::vector<TaskSpec> tasks) : tasks_(std::move(tasks)) {}
    std::unique_ptr<TaskCursor> open() const override {
        class Cursor final : public TaskCursor {
        public:
            explicit Cursor(const std::vector<TaskSpec>& tasks) : tasks_(tasks) {}
            bool next(TaskSpec& task) override {
                if (next_ >= tasks_.size()) return false;
                task = tasks_[next_++];
                return true;
            }

        private:
            const std::vector<TaskSpec>& tasks_;
            std::size_t next_ = 0;
        };
        return std::make_unique<Cursor>(tasks_);
    }

private:
    std::vector<TaskSpec> tasks_;
};

// The tasks of `source` whose ids `skip` does not hold.
class SkippingSource final : public PlanSource {
public:
    SkippingSource(std::shared_ptr<const PlanSource> source, const IdSet& skip)
        : source_(std::move(source)), skip_(skip) {}
    std::unique_ptr<TaskCursor> open() const override { return skipping(source_->open()); }
    std::unique_ptr<TaskCursor> open_packed() const override { return skipping(source_->open_packed()); }
    std::optional<std::uint64_t> counted() const override { return source_->counted(); }

private:
    std::unique_ptr<TaskCursor> skipping(std::unique_ptr<TaskCursor> inner) const {
        class Cursor final : public TaskCursor {
        public:
            Cursor(std::unique_ptr<TaskCursor> inner, const IdSet& skip) : inner_(std::move(inner)), skip_(skip) {}
            bool next(TaskSpec& task) override {
                while (inner_->next(task))
                    if (!skip_.contains(task.id)) return true;
                return false;
            }
            Take take(TaskSpec& task) override {
                while (true) {
                    const Take took = inner_->take(task);
                    if (took != Take::Task || !skip_.contains(task.id)) return took;
                }
            }
            int ready_fd() const override { return inner_->ready_fd(); }

        private:
            std::unique_ptr<TaskCursor> inner_;
            const IdSet& skip_;
        };
        return std::make_unique<Cursor>(std::move(inner), skip_);
    }

    std::shared_ptr<const PlanSource> source_;
    const IdSet& skip_;
};

}  // namespace

void count_tasks(Plan& plan) {
    const auto cursor = plan.open();
    TaskSpec task;
    std::uint64_t count = 0;
    while (cursor->next(task)) {
        ++count;
        if (std::find(plan.types.begin(), plan.types.end(), task.type) == plan.types.end())
            plan.types.push_back(task.type);
    }
    plan.count = count;
}

std::optional<std::uint64_t> Plan::known_count() const {
    if (count) return count;
    return source ? source->counted() : std::nullopt;
}

Plan Plan::of(std::vector<TaskSpec> tasks) {
    Plan plan;
    plan.count = tasks.size();
    for (const TaskSpec& task : tasks)
        if (std::find(plan.types.begin(), plan.types.end(), task.type) == plan.types.end())
            plan.types.push_back(task.type);
    plan.source = std::make_shared<HeldSource>(std::move(tasks));
    return plan;
}

std::vector<TaskSpec> all_tasks(const Plan& plan) {
    std::vector<TaskSpec> tasks;
    const auto cursor = plan.open();
    for (TaskSpec task; cursor->next(task);) tasks.push_back(task);
    return tasks;
}

Plan skipping(const Plan& plan, const IdSet& skip) {
    Plan rest;
    rest.source = std::make_shared<SkippingSource>(plan.source, skip);
    if (plan.count) rest.count = *plan.count - std::min(*plan.count, skip.size());
    rest.types = plan.types;
    return rest;
}

bool next_task(TaskCursor& cursor, TaskSpec& task, const std::stop_token& stop, const std::stop_token& drain) {
    // How often a wait for input looks at the stop requests.
    constexpr int kStopCheckMs = 50;
    while (true) {
        switch (cursor.take(task)) {
            case TaskCursor::Take::Task: return true;
            case TaskCursor::Take::End: return false;
            case TaskCursor::Take::Later: break;
        }
        if (stop.stop_requested() || drain.stop_requested()) return false;
        pollfd ready{cursor.ready_fd(), POLLIN, 0};
        ::poll(&ready, ready.fd >= 0 ? 1 : 0, kStopCheckMs);
    }
}

}  // namespace taskfarm
