// A user's program with one registered no-op function, built against the shared library as
// a user's would be: scripts/bench runs it against the built-in no-op (a sleep of 0 s).
#include <taskfarm/taskfarm.hpp>

int main(int argc, char** argv) {
    taskfarm::App app{"noop_app"};
    app.task("noop", [](const taskfarm::Params&, taskfarm::Context&) { return taskfarm::Value(); });
    return app.run(argc, argv);
}
