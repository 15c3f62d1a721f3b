#pragma once
// The engine's view of a plan: cursors that hand out tasks one at a time, in id order. Where
// the tasks come from (a generator, a file, standard input) is the program's: see
// coordinator/plan_sources.hpp.

#include <cstdint>
#include <memory>
#include <optional>
#include <stop_token>
#include <vector>

#include "task.hpp"

namespace taskfarm {

class StdinSpool;  // coordinator/plan_sources.hpp

// Hands out the tasks of a plan one at a time, in id order from the first (ids 0, 1, ...).
// A plan is never held whole: each mode opens a cursor of its own and gets the same tasks.
class TaskCursor {
public:
    virtual ~TaskCursor() = default;
    // The next task into `task` (its id, type, params and timeout); false after the last.
    // Waits for a plan read as the run goes (standard input, a FIFO) until its next line
    // comes: only for callers that have nothing else to do (see take()).
    // Throws ConfigError("NAME:LINE: problem") for a line it cannot accept: with a file
    // checked before the run only if the file changed since (a count that changed is such
    // a problem too), with standard input read as the run goes for the first bad line.
    virtual bool next(TaskSpec& task) = 0;

    enum class Take { Task, Later, End };
    // As next(), but never waits on the producer of a plan read as the run goes: Later
    // when its next line has not come yet (ready_fd() becomes readable when it may have).
    virtual Take take(TaskSpec& task) { return next(task) ? Take::Task : Take::End; }
    // Readable once take() may give more after a Later; -1 for a cursor that never says Later.
    virtual int ready_fd() const { return -1; }
};

// The next task of `cursor` for a runner that waits for it: while the plan's producer is
// slow it waits, but a stop or a drain ends the wait (false, as at the end), so a signal
// is obeyed while no input comes.
bool next_task(TaskCursor& cursor, TaskSpec& task, const std::stop_token& stop, const std::stop_token& drain);

// Opens cursors over one plan (a generator, a file reader, standard input).
class PlanSource {
public:
    virtual ~PlanSource() = default;
    virtual std::unique_ptr<TaskCursor> open() const = 0;
    // The same tasks, with their params as msgpack (TaskSpec::packed_params) where the source
    // can make them so (a generated plan of a PackedGenerate type), as JSON otherwise: for a
    // reader that sends them on packed and reads them through proto::params_of() (decision 316).
    virtual std::unique_ptr<TaskCursor> open_packed() const { return open(); }
    // How many tasks a cursor found when it reached the end of a plan whose size was not
    // known before (standard input); nullopt until then.
    virtual std::optional<std::uint64_t> counted() const { return std::nullopt; }
};

// The tasks of one run. Ids are 0..N-1 in plan order; every mode runs the same plan. The
// tasks themselves are made as they are handed out (see TaskCursor), so a plan's memory
// does not grow with its size.
struct Plan {
    std::shared_ptr<const PlanSource> source;
    // How many tasks there are; unknown (nullopt) for standard input read as the run goes,
    // until a cursor has reached its end (then known_count() says).
    std::optional<std::uint64_t> count;
    // The types of its tasks, each once, in order of first use.
    std::vector<const TaskType*> types;
    // What the plan's types keep running for the run (TaskType::prepare), e.g. a server its
    // tasks fetch from; started by the coordinator once its signal handling is set up.
    std::vector<std::unique_ptr<RunService>> services;
    // Standard input, for a plan read from it (--inputs -, --plan -); null otherwise.
    std::shared_ptr<StdinSpool> stdin_spool;

    std::unique_ptr<TaskCursor> open() const { return source->open(); }
    std::unique_ptr<TaskCursor> open_packed() const { return source->open_packed(); }
    // count, or what a cursor that reached the end of standard input counted.
    std::optional<std::uint64_t> known_count() const;

    // A plan of these tasks, held in memory (tests, benchmarks). Ids as given.
    static Plan of(std::vector<TaskSpec> tasks);
};

// Every task of `plan`, in memory: for tests and small plans only.
std::vector<TaskSpec> all_tasks(const Plan& plan);

// Reads a whole cursor of `plan` once, checking every task, and sets its count and types.
// Throws ConfigError for the first task it cannot make.
void count_tasks(Plan& plan);

class IdSet;
// The tasks of `plan` whose ids `skip` does not hold, in plan order, with their own ids;
// `skip` must outlive it.
Plan skipping(const Plan& plan, const IdSet& skip);

}  // namespace taskfarm
