#!/usr/bin/env python3
"""The Python anchors scripts/bench compares taskfarm with: the standard library's pools
running the same experiments. Standard library only. Prints one JSON object per run.

  anchors.py ppe       --tasks N --workers W   ProcessPoolExecutor, submit + as_completed, no-op
  anchors.py pool      --tasks N --workers W   multiprocessing.Pool.imap_unordered(chunksize=1), no-op
  anchors.py tpe       --tasks N --workers W   ThreadPoolExecutor.map, no-op
  anchors.py startup   --workers W             ProcessPoolExecutor: pool creation to the first result
  anchors.py sleep     --tasks N --workers W --seconds S   ProcessPoolExecutor, N sleeps of S seconds
  anchors.py download  --tasks N --workers W --seconds S   ProcessPoolExecutor, N urllib downloads of
                       --bytes B from a loopback http.server that waits S seconds before each response

Every time runs from just before the pool is created to the last result, so it includes
starting the pool, as taskfarm's processes mode includes spawning its workers.
"""

import argparse
import concurrent.futures as futures
import hashlib
import http.server
import json
import multiprocessing
import os
import sys
import tempfile
import threading
import time
import urllib.request


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


def fetch(url, out_dir):
    """What a taskfarm download task does: GET, save to a file, hash the body."""
    digest = hashlib.sha256()
    path = os.path.join(out_dir, url.rsplit("/", 1)[1])
    with urllib.request.urlopen(url) as response, open(path, "wb") as out:
        while chunk := response.read(65536):
            digest.update(chunk)
            out.write(chunk)
    return digest.hexdigest()


def serve(latency_s, body):
    """A loopback HTTP server like taskfarm's built-in one: waits latency_s, then sends body."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(latency_s)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run_download(args):
    server = serve(args.seconds, os.urandom(args.bytes))
    urls = [f"http://127.0.0.1:{server.server_address[1]}/{i}.jpg" for i in range(args.tasks)]
    with tempfile.TemporaryDirectory() as out_dir:
        started = time.perf_counter()
        with futures.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("fork")) as pool:
            pending = [pool.submit(fetch, url, out_dir) for url in urls]
            done = sum(1 for future in futures.as_completed(pending) if len(future.result()) == 64)
            seconds = time.perf_counter() - started
    server.shutdown()
    return done, seconds


RUNS = {"ppe": run_ppe, "pool": run_pool, "tpe": run_tpe, "startup": run_startup, "sleep": run_sleep,
        "download": run_download}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", choices=sorted(RUNS))
    parser.add_argument("--tasks", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=0.0)
    parser.add_argument("--bytes", type=int, default=200 * 1024)
    args = parser.parse_args()
    done, seconds = RUNS[args.run](args)
    print(json.dumps({"run": args.run, "tasks": done, "workers": args.workers, "seconds": seconds,
                      "per_s": done / seconds, "python": sys.version.split()[0]}))


if __name__ == "__main__":
    main()
