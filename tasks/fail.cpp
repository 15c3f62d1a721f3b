// fail: fault injection for tests and demos (plan files only): every task fails.

#include "builtin.hpp"

namespace taskfarm {
namespace {

class FailType final : public TaskType {
public:
    std::string name() const override { return "fail"; }
    std::string summary() const override { return "fails on purpose (fault injection, plan files)"; }
    Params parse(const Params& fields) const override {
        Fields(fields).finish();
        return Params::object();
    }
    Value run(const Params&, Context&) const override { throw std::runtime_error("failed on purpose"); }
};

}  // namespace

std::shared_ptr<const TaskType> fail_type() { return std::make_shared<FailType>(); }

}  // namespace taskfarm
