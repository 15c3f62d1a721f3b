#!/usr/bin/env python3
"""coordinator --launch slurm against a real one-node Slurm: the one tests/slurm/cluster
starts as a CTest fixture (TASKFARM_SLURM_STATE names the file that holds its directory).
With no cluster these tests fail, never skip: CI must not pass without having run them.

Every process a test starts has the test's own temporary directory on its command line (the
journal, the run's key directory), so "no process left" is checked by that path, not by a
program's name that other runs on the machine share."""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
from collections import Counter
from pathlib import Path

COORDINATOR = Path(os.environ["TASKFARM_COORDINATOR"])
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "slurm.sbatch"
WORKER = COORDINATOR.parent / "worker"
WAIT_S = 90  # the most any one wait takes before the test fails


def cluster_env():
    state = Path(os.environ["TASKFARM_SLURM_STATE"])
    if not state.is_file():
        raise AssertionError(f"no Slurm cluster: {state} is missing (the fixture Slurm.Start failed; its output says why)")
    conf = Path(state.read_text().strip()) / "slurm.conf"
    if not conf.is_file():
        raise AssertionError(f"no Slurm cluster: {conf} is missing")
    env = dict(os.environ, SLURM_CONF=str(conf))
    for name in [n for n in env if n.startswith("SLURM_") and n != "SLURM_CONF"]:
        del env[name]  # a test run inside someone's allocation must not use it
    return env


def wait_until(what, predicate, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def journal(path):
    """Each result line of a journal as JSON: a line that does not parse fails the test. The
    "event" lines (attempts and workers lost) are left out."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [line for line in lines if "event" not in line]


def pids_with(text):
    """Pids of processes (not this one) whose command line contains `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if text.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass
    return found


class SlurmLaunch(unittest.TestCase):
    def setUp(self):
        self.env = cluster_env()
        self.dir = Path(tempfile.mkdtemp(prefix="taskfarm-slurm-test-"))
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.addCleanup(self.cancel_jobs)
        self.jobs = []

    def cancel_jobs(self):
        for job in self.jobs:
            subprocess.run(["scancel", job], env=self.env, timeout=30, check=False)

    def slurm(self, *args, timeout=30):
        done = subprocess.run(list(args), env=self.env, timeout=timeout, capture_output=True, text=True)
        self.assertEqual(done.returncode, 0, f"{args}: {done.stderr}")
        return done.stdout

    def submit(self, ntasks, coordinator_args):
        """sbatch a job of `ntasks` tasks whose batch script runs the coordinator in the test's
        directory; returns the job id."""
        command = " ".join([str(COORDINATOR), "--launch", "slurm", "--progress", "never"] + coordinator_args)
        job = self.slurm("sbatch", "--parsable", f"--ntasks={ntasks}", f"--chdir={self.dir}",
                         f"--output={self.dir}/job-%j.out", f"--error={self.dir}/job-%j.err",
                         "--wrap", f"exec {command}").strip().split(";")[0]
        self.jobs.append(job)
        return job

    def running(self, job):
        return self.slurm("squeue", "-h", "-j", job, "-o", "%T").strip() != ""

    def wait_job(self, job):
        """Waits for the job to leave the queue; returns its exit code as Slurm says it (0:0)."""
        wait_until(f"job {job} to end", lambda: not self.running(job))
        info = self.slurm("scontrol", "show", "job", job)
        return next(field.split("=", 1)[1] for field in info.split() if field.startswith("ExitCode="))

    def output(self, job, stream="out"):
        return (self.dir / f"job-{job}.{stream}").read_text()

    def assert_nothing_left(self):
        # Slurm ends a job's processes after it leaves the queue (KillWait): wait for that,
        # then assert, so the assertion is on what is left, not on how soon.
        text = str(self.dir)
        try:
            wait_until("the job's processes to end", lambda: not pids_with(text), timeout=30)
        except AssertionError:
            pass
        self.assertEqual(pids_with(text), [], f"processes still running with {text} on their command line")
        self.assertEqual(list(self.dir.glob(".taskfarm-keys-*")), [], "the run's key directory is still there")

    def test_sbatch_job_of_four_workers_runs_each_task_once(self):
        results = self.dir / "run.jsonl"
        job = self.submit(4, ["--task", "sleep", "--duration", "0.01", "--tasks", "200", "--results", str(results)])
        exit_code = self.wait_job(job)
        self.assertEqual(exit_code, "0:0", self.output(job, "err"))
        lines = journal(results)
        self.assertEqual(Counter(line["id"] for line in lines), Counter(range(200)))
        self.assertTrue(all(line["ok"] for line in lines))
        workers = {line["worker"] for line in lines}
        self.assertLessEqual(len(workers), 4)
        # The default names are HOST-PID: the node each task ran on.
        host = socket.gethostname().split(".")[0]
        self.assertTrue(all(name.startswith(host + "-") for name in workers), workers)
        out = self.output(job)
        self.assertIn("processes", out)
        self.assertNotIn("(interrupted)", out)
        self.assertIn("started 4 worker(s) as a Slurm job step", self.output(job, "err"))
        self.assert_nothing_left()

    def test_scancel_leaves_no_process_and_a_journal_that_resume_completes(self):
        results = self.dir / "run.jsonl"
        plan = ["--task", "sleep", "--duration", "0.1", "--tasks", "200"]
        job = self.submit(2, plan + ["--results", str(results)])
        wait_until("20 results in the journal", lambda: len(journal(results)) >= 20)
        self.slurm("scancel", job)
        self.wait_job(job)
        self.assert_nothing_left()
        lines = journal(results)  # every line parses: the journal is intact
        ids = Counter(line["id"] for line in lines if line["ok"])
        self.assertGreaterEqual(len(ids), 20)
        self.assertLess(len(ids), 200)
        self.assertEqual(max(ids.values()), 1, "a task recorded ok twice")
        # The coordinator got the job's SIGTERM: the partial table, marked so.
        self.assertIn("(interrupted)", self.output(job))

        resumed = self.submit(4, plan + ["--resume", str(results)])  # the same plan, on more workers
        self.assertEqual(self.wait_job(resumed), "0:0", self.output(resumed, "err"))
        ok = Counter(line["id"] for line in journal(results) if line["ok"])
        self.assertEqual(ok, Counter(range(200)))
        self.assert_nothing_left()

    def test_a_worker_killed_under_slurm_has_its_tasks_requeued_not_respawned(self):
        results = self.dir / "run.jsonl"
        job = self.submit(2, ["--task", "sleep", "--duration", "0.5", "--tasks", "12", "--results", str(results)])
        wait_until("2 results in the journal", lambda: len(journal(results)) >= 2)

        def workers():  # the worker processes of this run (srun's command line names the keys too)
            return [pid for pid in pids_with(str(self.dir)) if Path(f"/proc/{pid}/exe").resolve() == WORKER.resolve()]

        victims = wait_until("the step's 2 workers", lambda: len(workers()) == 2 and workers())
        victim = victims[0]
        os.kill(victim, signal.SIGKILL)
        self.assertEqual(self.wait_job(job), "0:0", self.output(job, "err"))
        lines = journal(results)
        self.assertEqual(Counter(line["id"] for line in lines if line["ok"]), Counter(range(12)))
        err = self.output(job, "err")
        host = socket.gethostname().split(".")[0]
        self.assertRegex(err, rf"worker {host}-{victim} \S.*; requeueing its [1-9]\d* task\(s\)")
        self.assertTrue(any(line["attempt"] >= 2 for line in lines), "no task ran a second time")
        # Nothing replaced it: the rest ran on the one worker left.
        self.assertLessEqual({line["worker"] for line in lines}, {f"{host}-{pid}" for pid in victims})
        self.assert_nothing_left()

    def test_the_step_ending_early_fails_the_run_with_the_reason(self):
        results = self.dir / "run.jsonl"
        job = self.submit(2, ["--task", "sleep", "--duration", "0.1", "--tasks", "200", "--results", str(results)])
        wait_until("5 results in the journal", lambda: len(journal(results)) >= 5)
        self.slurm("scancel", f"{job}.0")  # the workers' step only; the batch script goes on
        self.assertEqual(self.wait_job(job), "1:0", self.output(job, "err"))
        err = self.output(job, "err")
        self.assertIn("the Slurm job step of the workers ended before the run did: srun exited with status", err)
        # No worker will come: the rest fail at once with the reason, each recorded once.
        lines = journal(results)
        self.assertEqual(Counter(line["id"] for line in lines), Counter(range(200)))
        failed = [line for line in lines if not line["ok"]]
        self.assertGreater(len(failed), 0)
        for line in failed:
            self.assertRegex(line["error"], r"^not run: the Slurm job step of the workers ended \(srun exited with status \d+\)$")
        # The table, with the failures counted.
        self.assertRegex(self.output(job), rf"processes +2 +200 +{200 - len(failed)} +{len(failed)} ")
        self.assert_nothing_left()

    def test_outside_an_allocation_srun_allocates_with_slurm_args(self):
        results = self.dir / "run.jsonl"
        # The plan on stdin: srun must not pass it on to a worker.
        plan = "".join(json.dumps({"kind": "cpu", "lo": i * 1000, "hi": (i + 1) * 1000}) + "\n" for i in range(30))
        done = subprocess.run([str(COORDINATOR), "--launch", "slurm", "--workers", "3", "--pin", "--progress", "never",
                               "--slurm-args", "--job-name='taskfarm test' --time=5", "--plan", "-",
                               "--results", str(results)],
                              cwd=self.dir, env=self.env, timeout=WAIT_S, capture_output=True, text=True, input=plan)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("--ntasks=3 --cpus-per-task=1 --kill-on-bad-exit=0 --job-name=taskfarm-workers "
                      "--cpu-bind=cores --job-name=taskfarm test --time=5", done.stderr)
        lines = journal(results)
        self.assertEqual(Counter(line["id"] for line in lines), Counter(range(30)))
        self.assertLessEqual(len({line["worker"] for line in lines}), 3)
        self.assertIn("srun exited with status 0", done.stderr)
        self.assert_nothing_left()

    def test_the_example_script_runs_a_plan_and_resumes_after_scancel(self):
        # As the README says: sbatch the script, scancel it, sbatch it again.
        script = self.dir / "slurm.sbatch"
        shutil.copy(EXAMPLE, script)
        export = f"--export=ALL,PATH={COORDINATOR.parent}:{os.environ['PATH']},TASKS=200,CPU_N=5000000"

        def sbatch():
            job = self.slurm("sbatch", "--parsable", "--ntasks=2", f"--chdir={self.dir}", export,
                             str(script)).strip().split(";")[0]
            self.jobs.append(job)
            return job

        results = self.dir / "taskfarm.jsonl"
        first = sbatch()
        wait_until("10 results in the journal", lambda: len(journal(results)) >= 10)
        self.slurm("scancel", first)
        self.wait_job(first)
        self.assert_nothing_left()
        done_before = {line["id"] for line in journal(results) if line["ok"]}
        self.assertLess(len(done_before), 200, "the first job ended before scancel: nothing left to resume")
        second = sbatch()
        self.assertEqual(self.wait_job(second), "0:0", (self.dir / f"taskfarm-{second}.out").read_text())
        ok = Counter(line["id"] for line in journal(results) if line["ok"])
        self.assertEqual(ok, Counter(range(200)))
        out = (self.dir / f"taskfarm-{second}.out").read_text()
        self.assertIn(f"{len(done_before)} of 200 tasks done in the journal", out)
        self.assert_nothing_left()


if __name__ == "__main__":
    unittest.main()
