#!/usr/bin/env python3
"""What one command costs in processes and system calls, counted by strace (label perf).

Runs `coordinator --command true` (no shell syntax: the worker execs it, as xargs does,
searching a PATH whose first three directories lack it: the PATH is searched once per worker,
so a search per command shows as three `access` calls more per command) under `strace -f -c` (every process of the run: the
coordinator, the fork server, the workers, the guardians and the commands) at two numbers of
inputs and divides the difference in counts by the difference in inputs, so start-up and
shutdown cancel out. Counts do not depend on how loaded the machine is, except the calls that
wait (poll, read of a wake-up), which vary a little: the budgets for those have a margin, the
process counts have none. The budgets, the values measured when they were set and how to
update them are in tests/command_cost_budget.json.

  command_cost_test.py COORDINATOR
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BUDGET_FILE = os.path.join(HERE, "command_cost_budget.json")

TRUE = shutil.which("true", path="/usr/bin:/bin") or "/usr/bin/true"

# System calls that make a process (or a thread: none is made per command, and those of
# start-up cancel out).
PROCESS_CALLS = ("clone", "clone3", "fork", "vfork")


def counts(coordinator, inputs):
    """strace's count per system call for one run of `inputs` `true` commands on 2 workers."""
    with tempfile.TemporaryDirectory() as tmp:
        listing = os.path.join(tmp, "inputs")
        with open(listing, "w") as f:
            f.writelines(f"{i}\n" for i in range(inputs))
        summary = os.path.join(tmp, "strace.txt")
        empty = [os.path.join(tmp, name) for name in ("a", "b", "c")]
        for directory in empty:
            os.mkdir(directory)
        path = ":".join(empty + [os.path.dirname(TRUE)])
        command = ["strace", "-f", "-c", "-o", summary, coordinator, "--command", "true", "--inputs", listing,
                   "--mode", "processes", "--workers", "2", "-q", "--progress", "never"]
        with open(os.devnull, "w") as devnull:
            run = subprocess.run(command, stdout=devnull, stderr=subprocess.PIPE, text=True, timeout=240,
                                 env=dict(os.environ, PATH=path))
        if run.returncode != 0:
            sys.exit(f"{' '.join(command)} exited {run.returncode}:\n{run.stderr[-3000:]}")
        calls = {}
        with open(summary) as f:
            for line in f:
                # % time  seconds  usecs/call  calls  [errors]  syscall
                fields = line.split()
                if len(fields) >= 5 and re.fullmatch(r"[\d.]+", fields[0]) and fields[-1] != "total":
                    calls[fields[-1]] = int(fields[3])
        return calls


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    coordinator = sys.argv[1]
    with open(BUDGET_FILE) as f:
        budget = json.load(f)
    small, large = budget["small_inputs"], budget["large_inputs"]
    a, b = counts(coordinator, small), counts(coordinator, large)
    per = {name: (b.get(name, 0) - a.get(name, 0)) / (large - small) for name in set(a) | set(b)}
    measured = {
        "processes": sum(per.get(name, 0) for name in PROCESS_CALLS),
        "execve": per.get("execve", 0),
        "syscalls": sum(per.values()),
        # The child's signal resets (decision 285: the ones not at default, and always the
        # six a command's life depends on) and the PATH search (decision 286: once per
        # worker and name; the one left is the loader's own).
        "rt_sigaction": per.get("rt_sigaction", 0),
        "access": per.get("access", 0),
    }
    print("per command: " + ", ".join(f"{name} {value:.2f}" for name, value in sorted(measured.items())))
    print("busiest calls per command: " +
          ", ".join(f"{name} {value:.1f}" for name, value in sorted(per.items(), key=lambda kv: -kv[1])[:12]))
    # Counts of a process or an exec are whole numbers per command: 1.01 is one in a hundred
    # commands that made a second process.
    failed = [f"{name}: {measured[name]:.2f} per command, budget {limit}"
              for name, limit in budget["budgets"].items() if measured[name] > limit + 0.005]
    if failed:
        sys.exit("over budget (see tests/command_cost_budget.json):\n  " + "\n  ".join(failed))


if __name__ == "__main__":
    main()
