#!/usr/bin/env python3
"""libtaskfarm.so exports the public API of include/taskfarm/ and nothing else (decision 131):
lists its exported dynamic symbols (nm -D --defined-only, demangled) and fails on any other.

  python3 tests/exports_test.py build/app/libtaskfarm.so
"""
import re
import subprocess
import sys

PUBLIC_CLASSES = ["App", "Farm", "Context", "Context::Waiting", "Fields", "Flag", "TaskType", "TaskError",
                  "detail::Outcome", "detail::FlushOutput"]
THROWN_OR_DERIVED = ["TaskType", "TaskError", "TaskStopped", "TaskFailed"]
ALLOWED = [re.compile(r"taskfarm::version\(\)$"), re.compile(r"taskfarm::download_type\(\)$")]
ALLOWED += [re.compile(rf"taskfarm::{re.escape(c)}::(~?\w+)(\[abi:cxx11\])?\(") for c in PUBLIC_CLASSES]
ALLOWED += [re.compile(rf"(typeinfo|typeinfo name|vtable) for taskfarm::{c}$") for c in THROWN_OR_DERIVED]
# What a user needs for sure: registering, submitting, taking results, running a worker.
REQUIRED = ["taskfarm::App::run(", "taskfarm::Farm::submit(", "taskfarm::Farm::next[abi:cxx11](",
            "taskfarm::Farm::run_worker(", "taskfarm::Context::check(", "taskfarm::download_type(",
            "typeinfo for taskfarm::TaskType"]


def main(library):
    listed = subprocess.run(["nm", "-D", "--defined-only", "-C", library], capture_output=True, text=True, check=True)
    symbols = [line.split(" ", 2)[2] for line in listed.stdout.splitlines() if line.count(" ") >= 2]
    # Farm::Impl is the farm's inside, not its API.
    outside = [s for s in symbols if "Farm::Impl" in s or not any(p.match(s) for p in ALLOWED)]
    missing = [r for r in REQUIRED if not any(s.startswith(r) for s in symbols)]
    for symbol in outside:
        print(f"exported but not public API: {symbol}")
    for symbol in missing:
        print(f"public API not exported: {symbol}")
    print(f"{len(symbols)} exported symbols, {len(outside)} outside the public API, {len(missing)} missing")
    return 1 if outside or missing else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
