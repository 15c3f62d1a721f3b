// crash: fault injection for tests and demos (plan files only): aborts its worker process
// (SIGABRT), as a crashing worker would; on the coordinator's own threads it fails instead,
// since aborting would take the whole run with it.

#include <cstdlib>

#include "builtin.hpp"

namespace taskfarm {
namespace {

class CrashType final : public TaskType {
public:
    std::string name() const override { return "crash"; }
    std::string summary() const override { return "aborts its worker process (fault injection, plan files)"; }
    Params parse(const Params& fields) const override {
        Fields(fields).finish();
        return Params::object();
    }
    Value run(const Params&, Context& context) const override {
        if (context.isolated()) std::abort();
        throw std::runtime_error("crash task: fails in-process (it aborts only a worker process of its own)");
    }
};

}  // namespace

std::shared_ptr<const TaskType> crash_type() { return std::make_shared<CrashType>(); }

}  // namespace taskfarm
