#include "builtin.hpp"

#include "task.hpp"

namespace taskfarm {

void add_builtin_types(Registry& registry) {
    registry.add(sleep_type());
    registry.add(cpu_type());
    registry.add(download_type());
    registry.add(fail_type());
    registry.add(crash_type());
    registry.add(command_type());
}

const Registry& builtin_types() {
    static const Registry registry = [] {
        Registry made;
        add_builtin_types(made);
        return made;
    }();
    return registry;
}

}  // namespace taskfarm
