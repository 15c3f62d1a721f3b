#include "builtin.hpp"

#include "task.hpp"

namespace taskfarm {

void add_builtin_types(Registry& registry) {
    registry.add(sleep_type(), /*builtin=*/true);
    registry.add(cpu_type(), /*builtin=*/true);
    registry.add(download_type(), /*builtin=*/true);
    registry.add(fail_type(), /*builtin=*/true);
    registry.add(crash_type(), /*builtin=*/true);
    registry.add(command_type(), /*builtin=*/true);
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
