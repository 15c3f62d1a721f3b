#include "coordinator.hpp"
#include "process_pool.hpp"

int main(int argc, char** argv) {
    taskfarm::Registry registry;
    taskfarm::add_builtin_types(registry);
    return taskfarm::coordinator_main({"coordinator", registry, {taskfarm::default_worker_binary(), {}}}, argc, argv);
}
