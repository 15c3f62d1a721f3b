#include "worker.hpp"

int main(int argc, char** argv) {
    taskfarm::Registry registry;
    taskfarm::add_builtin_types(registry);
    return taskfarm::worker_main("worker", registry, argc, argv);
}
