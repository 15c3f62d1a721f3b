#!/usr/bin/env python3
"""The instruction-count guard (label perf): instructions per no-op task, counted by callgrind.

Each case runs the coordinator under `valgrind --tool=callgrind` at two plan sizes and divides
the difference in instructions by the difference in tasks, so start-up and shutdown cancel
out. Instruction counts do not depend on how loaded the machine is; a timing would, so nothing
here is timed. The budgets, the value measured when they were set and how to update them are
in tests/perf_budget.json.

  perf_test.py COORDINATOR [CASE ...]     (cases: threads, threads_console, threads_ui, processes,
                                          worker, farm; default: every one)

The worker case counts the other side of processes mode: the two workers' instructions (the
coordinator runs natively and starts each worker, exec'd rather than forked, under callgrind
through a small wrapper given as --worker-bin), summed.

The farm case counts a program's own process while it drives a taskfarm::Farm: `farm_test
noop-map TASKS 1000` (TASKFARM_FARM_TEST names it), Farm::map of a no-op function on 2 worker
processes with at most 1,000 tasks queued, so both sizes run as a long map does: submits,
results taken as they come, the submitter waiting for room. Its workers are not counted.
"""
import json
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BUDGET_FILE = os.path.join(HERE, "perf_budget.json")

# The coordinator's flags per case; stdout goes to /dev/null as in scripts/bench.
CASES = {
    "threads": ["--mode", "threads", "--workers", "2"],
    # The same with stdout a file: every console line formatted and written (decision 203).
    "threads_console": ["--mode", "threads", "--workers", "2"],
    # The same with the live view on and no browser (decision 263): what --ui adds per task.
    "threads_ui": ["--mode", "threads", "--workers", "2", "--ui", "127.0.0.1:0", "--ui-linger", "0"],
    # Only the coordinator is counted: callgrind does not follow the workers (no
    # --trace-children), so this is the coordinator's side of processes mode.
    "processes": ["--mode", "processes", "--workers", "2"],
    # The workers only: see worker_instructions().
    "worker": ["--mode", "processes", "--workers", "2"],
    # farm_test's own main(): see farm_command().
    "farm": [],
}


def farm_command(tasks):
    """The program that drives a Farm, with its arguments, for `tasks` no-op tasks."""
    program = os.environ.get("TASKFARM_FARM_TEST")
    if not program:
        sys.exit("the farm case needs TASKFARM_FARM_TEST, the path of build/bin/farm_test")
    return [program, "noop-map", str(tasks), "1000"]


def instructions(coordinator, case, tasks):
    """Instructions callgrind counts for one run of `tasks` no-op tasks."""
    with tempfile.TemporaryDirectory() as tmp:
        run_what = farm_command(tasks) if case == "farm" else [
            coordinator, *CASES[case], "--tasks", str(tasks), "--duration", "0", "-q", "--progress", "never"]
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/callgrind.out", *run_what]
        stdout = os.path.join(tmp, "stdout.txt") if case == "threads_console" else os.devnull
        with open(stdout, "w") as out:
            run = subprocess.run(command, stdout=out, stderr=subprocess.PIPE, text=True, timeout=240)
        if run.returncode != 0:
            sys.exit(f"{' '.join(command)} exited {run.returncode}:\n{run.stderr[-3000:]}")
        found = re.search(r"Collected : (\d+)", run.stderr)
        if not found:
            sys.exit(f"no instruction count in callgrind's output:\n{run.stderr[-3000:]}")
        return int(found.group(1))


def worker_instructions(coordinator, tasks):
    """Instructions callgrind counts in the workers of one processes-mode run, summed."""
    worker = os.path.join(os.path.dirname(os.path.abspath(coordinator)), "worker")
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = os.path.join(tmp, "worker-under-callgrind")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind --dump-instr=no "
                    f"--callgrind-out-file={tmp}/callgrind.%p --log-file={tmp}/log.%p {worker} \"$@\"\n")
        os.chmod(wrapper, 0o755)
        command = [os.path.abspath(coordinator), *CASES["worker"], "--tasks", str(tasks), "--duration", "0", "-q",
                   "--progress", "never", "--worker-bin", wrapper,
                   # valgrind starts a worker in about a second and slows each one down
                   # some fifty times: more time to say hello and to answer.
                   "--heartbeat-timeout", "60"]
        with open(os.devnull, "w") as devnull:
            run = subprocess.run(command, stdout=devnull, stderr=subprocess.PIPE, text=True, timeout=240, cwd=tmp)
        if run.returncode != 0:
            sys.exit(f"{' '.join(command)} exited {run.returncode}:\n{run.stderr[-3000:]}")
        counts = []
        for name in os.listdir(tmp):
            if name.startswith("log."):
                with open(os.path.join(tmp, name)) as f:
                    found = re.search(r"Collected : (\d+)", f.read())
                if found:
                    counts.append(int(found.group(1)))
        if len(counts) != 2:
            sys.exit(f"expected the counts of 2 workers, found {len(counts)} in {os.listdir(tmp)}")
        return sum(counts)


def per_task(coordinator, case, small, large):
    count = (lambda tasks: worker_instructions(coordinator, tasks)) if case == "worker" else (
        lambda tasks: instructions(coordinator, case, tasks))
    return (count(large) - count(small)) / (large - small)


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    coordinator = sys.argv[1]
    with open(BUDGET_FILE) as f:
        budgets = json.load(f)
    cases = sys.argv[2:] or [c for c in budgets["cases"]]
    failed = []
    for case in cases:
        budget = budgets["cases"][case]
        measured = per_task(coordinator, case, budgets["small_tasks"], budgets["large_tasks"])
        print(f"{case}: {measured:,.0f} instructions per no-op task (budget {budget['budget']:,}, "
              f"measured {budget['measured']:,} when it was set)")
        if measured > budget["budget"]:
            failed.append(f"{case}: {measured:,.0f} instructions per task, over the budget of "
                          f"{budget['budget']:,} in tests/perf_budget.json (see its \"update\")")
    if failed:
        sys.exit("\n".join(failed))


if __name__ == "__main__":
    main()
