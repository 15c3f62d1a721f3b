#include "worker.hpp"

int main(int argc, char** argv) { return taskfarm::worker_main(argc, argv); }
