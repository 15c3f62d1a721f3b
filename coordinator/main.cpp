#include "coordinator.hpp"

int main(int argc, char** argv) { return taskfarm::coordinator_main(argc, argv); }
