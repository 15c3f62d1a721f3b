#!/usr/bin/env python3
"""The Python anchors scripts/bench compares taskfarm with: the standard library's pools
running the same experiments. Standard library only. Prints one JSON object per run.

  anchors.py ppe       --tasks N --workers W   ProcessPoolExecutor, submit + as_completed, no-op
  anchors.py pool      --tasks N --workers W   multiprocessing.Pool.imap_unordered(chunksize=1), no-op
  anchors.py tpe       --tasks N --workers W   ThreadPoolExecutor.map, no-op
  anchors.py startup   --workers W             ProcessPoolExecutor: pool creation to the first result
  anchors.py sleep     --tasks N --workers W --seconds S   ProcessPoolExecutor, N sleeps of S seconds

Every time runs from just before the pool is created to the last result, so it includes
starting the pool, as taskfarm's processes mode includes spawning its workers.
"""

import argparse
import concurrent.futures as futures
import json
import multiprocessing
import sys
import time


def noop(_):
    return None


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def run_ppe(args):
    started = time.perf_counter()
    with futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pending = [pool.submit(noop, i) for i in range(args.tasks)]
        done = sum(1 for _ in futures.as_completed(pending))
        seconds = time.perf_counter() - started
    return done, seconds


def run_pool(args):
    started = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        done = sum(1 for _ in pool.imap_unordered(noop, range(args.tasks), chunksize=1))
        seconds = time.perf_counter() - started
    return done, seconds


def run_tpe(args):
    started = time.perf_counter()
    with futures.ThreadPoolExecutor(args.workers) as pool:
        done = sum(1 for _ in pool.map(noop, range(args.tasks)))
        seconds = time.perf_counter() - started
    return done, seconds


def run_startup(args):
    started = time.perf_counter()
    with futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pool.submit(noop, 0).result()
        seconds = time.perf_counter() - started
    return 1, seconds


def run_sleep(args):
    started = time.perf_counter()
    with futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("fork")) as pool:
        pending = [pool.submit(sleep, args.seconds) for _ in range(args.tasks)]
        done = sum(1 for _ in futures.as_completed(pending))
        seconds = time.perf_counter() - started
    return done, seconds


RUNS = {"ppe": run_ppe, "pool": run_pool, "tpe": run_tpe, "startup": run_startup, "sleep": run_sleep}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", choices=sorted(RUNS))
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.0)
    args = parser.parse_args()
    done, seconds = RUNS[args.run](args)
    print(json.dumps({"run": args.run, "tasks": done, "workers": args.workers, "seconds": seconds,
                      "per_s": done / seconds, "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
