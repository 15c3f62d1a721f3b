#!/usr/bin/env python3
"""CPU accounting per slice and per frame, not per task (decisions 150, 201; label perf).

Counts the getrusage system calls of a whole run of no-op tasks (the coordinator, its fork
server and workers: strace -f) in threads and processes mode. One call per task was as dear
as a no-op task; a thread reads its CPU once per slice of up to 64 tasks and a worker once per
frame of results, so a run of 5,000 tasks makes a few dozen calls. Counts, not timings.

  rusage_calls_test.py COORDINATOR
"""
import os
import re
import subprocess
import sys
import tempfile

TASKS = 5000
# Far above what slices and frames make (a few dozen), far below one call per task.
MOST = TASKS // 20


def getrusage_calls(coordinator, mode):
    with tempfile.TemporaryDirectory() as tmp:
        summary = os.path.join(tmp, "strace.txt")
        command = ["strace", "-f", "-qq", "-c", "-e", "trace=getrusage", "-o", summary, os.path.abspath(coordinator), "--mode", mode,
                   "--workers", "2", "--tasks", str(TASKS), "--duration", "0", "-q", "--progress", "never"]
        with open(os.devnull, "w") as devnull:
            run = subprocess.run(command, stdout=devnull, stderr=subprocess.PIPE, text=True, timeout=120, cwd=tmp)
        if run.returncode != 0:
            sys.exit(f"{' '.join(command)} exited {run.returncode}:\n{run.stderr[-3000:]}")
        with open(summary) as f:
            text = f.read()
        found = re.search(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?getrusage\s*$", text, re.MULTILINE)
        if not found:  # every run reads its CPU at least at its end
            sys.exit(f"no getrusage line in strace's summary:\n{text}")
        return int(found.group(1))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    failed = []
    for mode in ("threads", "processes"):
        calls = getrusage_calls(sys.argv[1], mode)
        print(f"{mode}: {calls} getrusage calls for {TASKS} no-op tasks (at most {MOST})")
        if calls > MOST:
            failed.append(f"{mode}: {calls} getrusage calls for {TASKS} tasks: CPU is read per task again")
    if failed:
        sys.exit("\n".join(failed))


if __name__ == "__main__":
    main()
