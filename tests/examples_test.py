#!/usr/bin/env python3
"""The user's side of the library: install it to a temporary prefix, build each project in
examples/ out of tree against it with find_package(taskfarm), and run it as a user would: every
mode, the journal, and a worker started by hand.

  /usr/bin/python3 tests/examples_test.py -v          TASKFARM_BUILD_DIR names the build to install
"""
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = Path(os.environ.get("TASKFARM_BUILD_DIR", REPO / "build"))
PREFIX = None  # the install, made once for every test


def run(argv, timeout=300, **kwargs):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)


def journal(path):
    """The result lines of a journal (event lines, such as the settings --resume checks, left out)."""
    lines = [json.loads(line) for line in Path(path).read_text().splitlines() if line]
    return [line for line in lines if "event" not in line]


def collatz_reference(lo, hi):
    best, best_steps = lo, 0
    for start in range(lo, hi):
        n, steps = start, 0
        while n != 1:
            n = n // 2 if n % 2 == 0 else 3 * n + 1
            steps += 1
        if steps > best_steps:
            best, best_steps = start, steps
    return {"start": best, "steps": best_steps}


def build_example(name, workdir):
    build = workdir / f"build-{name}"
    flags = os.environ.get("TASKFARM_EXAMPLE_FLAGS", "")  # a sanitizer build's library needs its runtime
    configured = run(["cmake", "-S", REPO / "examples" / name, "-B", build, "-G", "Ninja",
                      f"-DCMAKE_PREFIX_PATH={PREFIX}", "-DCMAKE_BUILD_TYPE=Release", f"-DCMAKE_CXX_FLAGS={flags}",
                      f"-DCMAKE_EXE_LINKER_FLAGS={flags}"])
    assert configured.returncode == 0, configured.stdout + configured.stderr
    built = run(["cmake", "--build", build])
    assert built.returncode == 0, built.stdout + built.stderr
    return build / name


class Sum(unittest.TestCase):
    """The farm from a program's own main(): values summed in code, results fed back as tasks;
    built without CMAKE_CXX_STANDARD (the target carries C++20)."""

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp(prefix="taskfarm-examples-"))
        cls.program = build_example("sum", cls.dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_a_thousand_values_are_summed_in_code(self):
        done = run([self.program, "1000", "2"], cwd=self.dir)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, "332833500\n")

    def test_the_built_in_download_is_used_from_the_program(self):
        served = self.dir / "served"
        served.mkdir()
        sizes = {"a.bin": 1000, "b.bin": 2500, "c.bin": 70000}
        for name, size in sizes.items():
            (served / name).write_bytes(bytes(i % 251 for i in range(size)))
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        handler = functools.partial(Quiet, directory=str(served))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            urls = [f"http://127.0.0.1:{server.server_address[1]}/{name}" for name in sizes]
            done = run([self.program.parent / "bytes", self.dir / "out", *urls], cwd=self.dir)
        finally:
            server.shutdown()
            server.server_close()
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, f"3 files, {sum(sizes.values())} bytes\n")
        saved = sorted(p.stat().st_size for p in (self.dir / "out" / "processes").iterdir())
        self.assertEqual(saved, sorted(sizes.values()))

    def test_results_feed_new_tasks(self):
        done = run([self.program.parent / "chains", "30"], cwd=self.dir)
        self.assertEqual(done.returncode, 0, done.stderr)
        steps = dict(line.split() for line in done.stdout.splitlines())
        self.assertEqual(len(steps), 29)
        self.assertEqual(steps["27"], "111")

    def test_workers_started_by_hand_connect_to_the_farm_with_keys(self):
        keys = self.dir / "keys"
        made = run([PREFIX / "bin" / "coordinator", "keygen", keys])
        self.assertEqual(made.returncode, 0, made.stderr)
        cluster = self.program.parent / "cluster"
        farm = subprocess.Popen([str(cluster), "200", "listen", "tcp://127.0.0.1:*", str(keys), "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.dir)
        workers = []
        try:
            endpoint, log = None, ""
            deadline = time.monotonic() + 30
            while endpoint is None and time.monotonic() < deadline:
                line = farm.stderr.readline()
                log += line
                found = re.search(r"--connect (tcp://127\.0\.0\.1:\d+) --keys", line)
                if found:
                    endpoint = found.group(1)
            self.assertIsNotNone(endpoint, log)
            for name in ["a", "b"]:
                workers.append(subprocess.Popen([str(cluster), "worker", "--connect", endpoint, "--keys", str(keys),
                                                 "--name", name], stdout=subprocess.DEVNULL,
                                                stderr=subprocess.DEVNULL))
            out, err = farm.communicate(timeout=120)
            self.assertEqual(farm.returncode, 0, log + err)
            self.assertEqual(out, "2646700\n")  # 0^2 + ... + 199^2
            self.assertIn("2 remote worker(s) attached", err)
            for worker in workers:
                self.assertEqual(worker.wait(timeout=30), 0)
        finally:
            for process in [farm, *workers]:
                if process.poll() is None:
                    process.kill()
                    process.wait()


class Install(unittest.TestCase):
    def test_the_prefix_has_binaries_headers_library_and_package(self):
        for part in ["bin/coordinator", "bin/worker", "include/taskfarm/taskfarm.hpp", "include/taskfarm/app.hpp",
                     "include/taskfarm/task_type.hpp", "lib/cmake/taskfarm/taskfarm-config.cmake",
                     "lib/cmake/taskfarm/taskfarm-config-version.cmake"]:
            self.assertTrue((PREFIX / part).exists(), part)
        self.assertTrue(list((PREFIX / "lib").glob("libtaskfarm.so*")))
        # Only the public API: nothing private leaks into include/.
        self.assertEqual(sorted(p.name for p in (PREFIX / "include" / "taskfarm").iterdir()),
                         ["app.hpp", "farm.hpp", "task_type.hpp", "taskfarm.hpp"])
        for program in ["coordinator", "worker"]:
            version = run([PREFIX / "bin" / program, "--version"])
            self.assertEqual(version.returncode, 0)
            self.assertRegex(version.stdout, rf"^{program} \(taskfarm \d+\.\d+\.\d+\)\n$")


class Collatz(unittest.TestCase):
    """CPU-bound: the same answers in every mode and from a worker started by hand."""

    @classmethod
    def setUpClass(cls):
        cls.dir = Path(tempfile.mkdtemp(prefix="taskfarm-examples-"))
        cls.program = build_example("collatz", cls.dir)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.dir, ignore_errors=True)

    def test_every_mode_gives_the_reference_answers(self):
        results = self.dir / "collatz.jsonl"
        done = run([self.program, "--tasks", "4", "--set", "span=20000", "--mode", "all", "--workers", "2",
                    "--results", results], cwd=self.dir)
        self.assertEqual(done.returncode, 0, done.stderr)
        lines = journal(results)
        self.assertEqual(len(lines), 16)
        for line in lines:
            self.assertTrue(line["ok"], line)
            self.assertEqual(line["kind"], "longest")
            lo, hi = line["params"]["lo"], line["params"]["hi"]
            self.assertEqual((lo, hi), (1 + line["id"] * 20000, 1 + (line["id"] + 1) * 20000))
            self.assertEqual(line["value"], collatz_reference(lo, hi), line)
        self.assertEqual({(l["mode"], l["id"]) for l in lines},
                         {(m, i) for m in ["sequential", "threads", "gil-threads", "processes"] for i in range(4)})
        self.assertIn("longest", run([self.program, "--help"]).stdout)

    def test_a_worker_started_by_hand_runs_the_plan(self):
        keys = self.dir / "keys"
        made = run([self.program, "keygen", keys])
        self.assertEqual(made.returncode, 0, made.stderr)
        results = self.dir / "remote.jsonl"
        coordinator = subprocess.Popen(
            [str(self.program), "--tasks", "3", "--set", "span=1000", "--workers", "0", "--expect-workers", "1",
             "--listen", "tcp://127.0.0.1:*", "--keys", str(keys), "--results", str(results), "--wait-workers", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=self.dir)
        worker = None
        try:
            endpoint = None
            log = ""
            deadline = time.monotonic() + 30
            while endpoint is None and time.monotonic() < deadline:
                line = coordinator.stderr.readline()
                log += line
                found = re.search(r"listening for remote workers on (tcp://127\.0\.0\.1:\d+)", line)
                if found:
                    endpoint = found.group(1)
            self.assertIsNotNone(endpoint, log)
            worker = subprocess.Popen([str(self.program), "worker", "--connect", endpoint, "--keys", str(keys),
                                       "--name", "by-hand"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True)
            out, err = coordinator.communicate(timeout=120)
            self.assertEqual(coordinator.returncode, 0, log + err)
            self.assertEqual(worker.wait(timeout=30), 0)
        finally:
            for process in [coordinator, worker]:
                if process and process.poll() is None:
                    process.kill()
                    process.wait()
        lines = journal(results)
        self.assertEqual(sorted(l["id"] for l in lines), [0, 1, 2])
        for line in lines:
            self.assertEqual(line["worker"], "by-hand")
            self.assertEqual(line["value"], collatz_reference(line["params"]["lo"], line["params"]["hi"]))


class Fetch(unittest.TestCase):
    """I/O-bound: every URL fetched once per mode from a slow server on loopback."""

    def test_every_mode_fetches_every_url(self):
        workdir = Path(tempfile.mkdtemp(prefix="taskfarm-examples-"))
        server = None
        try:
            program = build_example("fetch", workdir)
            server = subprocess.Popen([sys.executable, REPO / "examples" / "fetch" / "slow_server.py", "0.05"],
                                      stdout=subprocess.PIPE, text=True)
            port = int(server.stdout.readline().split()[1])
            urls = workdir / "urls.txt"
            urls.write_text("".join(f"http://127.0.0.1:{port}/item-{i}\n" for i in range(6)))
            results = workdir / "fetch.jsonl"
            done = run([program, "--inputs", urls, "--mode", "all", "--workers", "3", "--results", results],
                       cwd=workdir)
            self.assertEqual(done.returncode, 0, done.stderr)
            lines = journal(results)
            self.assertEqual(len(lines), 24)
            for line in lines:
                self.assertEqual(line["kind"], "fetch")
                self.assertEqual(line["value"]["status"], 200, line)
                path = "/item-%d\n" % line["id"]
                self.assertEqual(line["value"]["bytes"], 100 * len(path), line)
                self.assertGreaterEqual(line["value"]["seconds"], 0.05)
        finally:
            if server:
                server.kill()
                server.wait()
            shutil.rmtree(workdir, ignore_errors=True)


def setUpModule():
    global PREFIX
    PREFIX = Path(tempfile.mkdtemp(prefix="taskfarm-prefix-"))
    installed = run(["cmake", "--install", BUILD, "--prefix", PREFIX])
    assert installed.returncode == 0, installed.stdout + installed.stderr


def tearDownModule():
    shutil.rmtree(PREFIX, ignore_errors=True)


if __name__ == "__main__":
    unittest.main()
