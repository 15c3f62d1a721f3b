#!/usr/bin/env python3
"""What starting a local worker costs in system calls on files (decision 284; label perf).

Runs `COORDINATOR --mode processes --tasks 1 --duration 0` with 2 and with 8 workers under
`strace -f -c -e trace=%file` (the coordinator, its fork server and the forked workers: every
call that names a file, as opening, stat'ing and searching for libraries do) and divides the
difference by the 6 workers more: what one forked worker makes from its fork to the end of the
run. Only calls on files: how many polls and wake-ups a worker makes depends on how long the run
takes, these do not. Fails above the budget, and when glibc's name-service set-up
(/etc/nsswitch.conf) is read more often with 8 workers than with 2: read once in the fork
server, it is what every worker inherits. Counts, not timings.

  worker_start_test.py COORDINATOR
"""
import os
import re
import subprocess
import sys
import tempfile

# A forked worker made 10-11 calls on files after decision 284 (the larger of three runs, 11)
# and 105 before (the difference over 6 workers: /proc/self/stat and statm, the running-board
# file, /etc/protocols, where before nsswitch.conf, ld.so.cache and a search for libnss_db in
# ~40 directories came too). The budget is 11 and a slack of 4 for a file more in some run;
# after a change that opens more or fewer files on purpose, set it the same way.
BUDGET = 15


def counts(coordinator, workers):
    """(system calls on files, opens of /etc/nsswitch.conf) of one run with `workers` workers."""
    with tempfile.TemporaryDirectory() as tmp:
        summary = os.path.join(tmp, "summary.txt")
        opens = os.path.join(tmp, "opens.txt")
        run = [os.path.abspath(coordinator), "--mode", "processes", "--workers", str(workers), "--tasks", "1",
               "--duration", "0", "-q", "--progress", "never"]
        for command in (["strace", "-f", "-qq", "-c", "-e", "trace=%file", "-o", summary, *run],
                        ["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", opens, *run]):
            with open(os.devnull, "w") as devnull:
                done = subprocess.run(command, stdout=devnull, stderr=subprocess.PIPE, text=True, timeout=120, cwd=tmp)
            if done.returncode != 0:
                sys.exit(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-3000:]}")
        with open(summary) as f:
            total = re.search(r"^\s*100\.00\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?total\s*$", f.read(), re.MULTILINE)
        if not total:
            sys.exit(f"no total line in strace's summary {summary}")
        with open(opens) as f:
            nsswitch = sum(1 for line in f if "/etc/nsswitch.conf" in line and "ENOENT" not in line)
        return int(total.group(1)), nsswitch


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    calls_2, nsswitch_2 = counts(sys.argv[1], 2)
    calls_8, nsswitch_8 = counts(sys.argv[1], 8)
    per_worker = (calls_8 - calls_2) / 6
    print(f"{per_worker:.0f} system calls on files per forked worker (budget {BUDGET}); /etc/nsswitch.conf opened "
          f"{nsswitch_2} times with 2 workers, {nsswitch_8} with 8")
    failed = []
    if per_worker > BUDGET:
        failed.append(f"a forked worker makes {per_worker:.0f} system calls on files, more than the budget of {BUDGET}")
    if nsswitch_8 > nsswitch_2:
        failed.append("each worker reads /etc/nsswitch.conf again: the fork server no longer loads it for them")
    if failed:
        sys.exit("\n".join(failed))


if __name__ == "__main__":
    main()
