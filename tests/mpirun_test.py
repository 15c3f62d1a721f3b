#!/usr/bin/env python3
"""coordinator --launch mpirun with a real mpirun (Debian's Open MPI, which scripts/test
installs): the workers as one `mpirun -n N`, each task once, a worker killed mid-run with its
tasks finished by the others, and nothing left afterwards. Without mpirun these tests fail,
never skip.

Every process a test starts has the test's own temporary directory on its command line (the
run's key directory), so "no process left" is checked by that path."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest
from collections import Counter
from pathlib import Path

from processes import pids_with

COORDINATOR = Path(os.environ["TASKFARM_COORDINATOR"])
WORKER = COORDINATOR.parent / "worker"
WAIT_S = 60


def journal(path):
    if not path.exists():
        return []
    return [line for line in map(json.loads, path.read_text().splitlines()) if "event" not in line]


class MpirunLaunch(unittest.TestCase):
    def setUp(self):
        if not shutil.which("mpirun"):
            raise AssertionError("mpirun is not installed (scripts/test installs openmpi-bin)")
        self.dir = Path(tempfile.mkdtemp(prefix="taskfarm-mpirun-test-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        # Open MPI refuses to run as root without these; the tests run as root in CI.
        # --oversubscribe: more workers than this machine has cores.
        self.env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")

    def start(self, *args):
        return subprocess.Popen([str(COORDINATOR), "--launch", "mpirun", "--mpirun-args", "--oversubscribe",
                                 "--progress", "never", *args],
                                cwd=self.dir, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def assert_nothing_left(self):
        text = str(self.dir)
        deadline = time.monotonic() + 10
        while pids_with(text) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual(pids_with(text), [], f"processes still running with {text} on their command line")
        self.assertEqual(list(self.dir.glob(".taskfarm-keys-*")), [], "the run's key directory is still there")

    def kill_a_worker_of_three(self, results, deadline):
        """Once `results` holds 3 results, SIGKILLs one of the run's 3 workers; returns its pid."""
        while len(journal(results)) < 3:
            self.assertLess(time.monotonic(), deadline, "no results")
            time.sleep(0.05)
        workers = [pid for pid in pids_with(str(self.dir)) if Path(f"/proc/{pid}/exe").resolve() == WORKER.resolve()]
        self.assertEqual(len(workers), 3, workers)
        os.kill(workers[0], signal.SIGKILL)
        return workers[0]

    def assert_each_ok_once(self, results, count):
        self.assertEqual(Counter(line["id"] for line in journal(results) if line["ok"]), Counter(range(count)))

    def test_one_mpirun_of_three_workers_runs_each_task_once(self):
        results = self.dir / "run.jsonl"
        run = self.start("--workers", "3", "--task", "sleep", "--duration", "0.01", "--tasks", "150",
                         "--results", str(results))
        out, err = run.communicate(timeout=WAIT_S)
        self.assertEqual(run.returncode, 0, err)
        lines = journal(results)
        self.assertEqual(Counter(line["id"] for line in lines), Counter(range(150)))
        self.assertTrue(all(line["ok"] for line in lines))
        self.assertLessEqual(len({line["worker"] for line in lines}), 3)
        self.assertRegex(err, r"started 3 worker\(s\) as an mpirun job: .*OMPI_MCA_orte_abort_on_non_zero_status=0 "
                              r"OMPI_MCA_hwloc_base_binding_policy=none \S*mpirun -n 3 --oversubscribe \S*worker --connect")
        self.assertIn("the mpirun job of the workers ended: mpirun exited with status 0", err)
        self.assertRegex(out, r"processes +3 +150 +150 +0 ")
        self.assert_nothing_left()

    def test_a_worker_killed_has_its_tasks_finished_by_the_others(self):
        # Open MPI ends every process of a job when one dies, unless told otherwise: the
        # launcher tells it, so the two left finish the run.
        results = self.dir / "run.jsonl"
        run = self.start("--workers", "3", "--task", "sleep", "--duration", "0.2", "--tasks", "30",
                         "--results", str(results))
        killed = self.kill_a_worker_of_three(results, time.monotonic() + WAIT_S)
        out, err = run.communicate(timeout=WAIT_S)
        self.assertEqual(run.returncode, 0, err)
        self.assert_each_ok_once(results, 30)
        self.assertRegex(err, rf"worker \S+-{killed} \S.*; requeueing its [1-9]\d* task\(s\)")
        self.assertTrue(any(line["attempt"] >= 2 for line in journal(results)), "no task ran a second time")
        self.assert_nothing_left()

    def test_serve_owns_an_mpirun_of_workers_and_one_killed_loses_nothing(self):
        # coordinator serve --launch mpirun: a submitted job's tasks run on the mpirun's workers,
        # each ok once though one is killed mid-job; SIGTERM ends the server and the mpirun.
        socket = self.dir / "server" / "socket"
        log_path = self.dir / "server.log"
        with open(log_path, "wb") as log:
            server = subprocess.Popen([str(COORDINATOR), "serve", "--socket", str(socket), "--launch", "mpirun",
                                       "--workers", "3", "--mpirun-args", "--oversubscribe"],
                                      cwd=self.dir, env=self.env, stdout=log, stderr=log)
        self.addCleanup(lambda: server.poll() is None and server.kill())

        def client(*args):
            return subprocess.run([str(COORDINATOR), args[0], "--socket", str(socket), *args[1:]], cwd=self.dir,
                                  env=self.env, timeout=WAIT_S, capture_output=True, text=True)

        deadline = time.monotonic() + WAIT_S
        while not (socket.exists() and client("status").returncode == 0):
            self.assertLess(time.monotonic(), deadline, log_path.read_text())
            time.sleep(0.05)
        plan = self.dir / "plan.jsonl"
        plan.write_text("".join(json.dumps({"kind": "sleep", "seconds": 0.2}) + "\n" for _ in range(15)))
        job = client("submit", "--plan", str(plan))
        self.assertEqual(job.returncode, 0, job.stderr)
        self.assertIn("serving", log_path.read_text())
        self.assertIn("with 3 workers in one mpirun job;", log_path.read_text())
        results = self.dir / "server" / "jobs" / job.stdout.strip() / "results.jsonl"
        killed = self.kill_a_worker_of_three(results, deadline)
        done = client("wait", "-q", job.stdout.strip())
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assert_each_ok_once(results, 15)
        self.assertTrue(all(line["ok"] for line in journal(results)))
        self.assertRegex(log_path.read_text(), rf"worker \S+-{killed} \S.*; requeueing its [1-9]\d* task\(s\)")
        server.send_signal(signal.SIGTERM)
        self.assertEqual(server.wait(timeout=WAIT_S), 0, log_path.read_text())
        self.assertIn("the mpirun job of the workers ended: mpirun exited", log_path.read_text())
        self.assert_nothing_left()

    def test_without_mpirun_the_run_says_which_package(self):
        env = dict(self.env, PATH=str(self.dir))  # no mpirun there
        done = subprocess.run([str(COORDINATOR), "--launch", "mpirun", "--workers", "2", "--task", "sleep",
                               "--tasks", "2"], cwd=self.dir, env=env, capture_output=True, text=True, timeout=WAIT_S)
        self.assertEqual(done.returncode, 1, done.stderr)
        self.assertIn("--launch mpirun: cannot start 'mpirun': not found in PATH (Debian's packages are openmpi-bin "
                      "and mpich)", done.stderr)
        self.assert_nothing_left()


if __name__ == "__main__":
    unittest.main()
