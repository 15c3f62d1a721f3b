#!/usr/bin/env python3
"""coordinator --launch slurm against a real three-node Slurm (tf1, tf2, tf3 on this host): the
one tests/slurm/cluster starts as a CTest fixture (TASKFARM_SLURM_STATE names the file that holds its directory).
With no cluster these tests fail, never skip: CI must not pass without having run them.

Every process a test starts has the test's own temporary directory on its command line (the
journal, the run's key directory), so "no process left" is checked by that path, not by a
program's name that other runs on the machine share."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from processes import pids_with  # noqa: E402

COORDINATOR = Path(os.environ["TASKFARM_COORDINATOR"])
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "slurm.sbatch"
CLUSTER = Path(__file__).resolve().parent / "cluster"
NODES = ["tf1", "tf2", "tf3"]
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


class SlurmCase(unittest.TestCase):
    """The cluster, a temporary directory, and what every test asserts at its end."""

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

    def submit(self, ntasks, coordinator_args, sbatch_args=()):
        """sbatch a job of `ntasks` tasks whose batch script runs the coordinator in the test's
        directory; returns the job id."""
        command = " ".join([str(COORDINATOR), "--launch", "slurm", "--progress", "never"] + coordinator_args)
        job = self.slurm("sbatch", "--parsable", f"--ntasks={ntasks}", *sbatch_args, f"--chdir={self.dir}",
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


class SlurmLaunch(SlurmCase):
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
        # The default names are NODE-PID: the Slurm node each task ran on (one node: 4 tasks fit
        # the 8 CPUs of the first).
        self.assertEqual(len({name.rsplit("-", 1)[0] for name in workers}), 1, workers)
        self.assertTrue(all(name.rsplit("-", 1)[0] in NODES for name in workers), workers)
        self.assertTrue(all(line["host"] == line["worker"].rsplit("-", 1)[0] for line in lines))
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
        self.assertRegex(err, rf"worker tf\d-{victim} \S.*; requeueing its [1-9]\d* task\(s\)")
        self.assertTrue(any(line["attempt"] >= 2 for line in lines), "no task ran a second time")
        # Nothing replaced it: the rest ran on the one worker left.
        self.assertLessEqual({line["worker"].rsplit("-", 1)[1] for line in lines}, {str(pid) for pid in victims})
        self.assert_nothing_left()

    def test_three_nodes_run_each_task_once_and_the_journal_says_where(self):
        results = self.dir / "run.jsonl"
        job = self.submit(6, ["--task", "sleep", "--duration", "0.01", "--tasks", "300", "--results", str(results)],
                          ["--nodes=3", "--ntasks-per-node=2"])
        self.assertEqual(self.wait_job(job), "0:0", self.output(job, "err"))
        lines = journal(results)
        self.assertEqual(Counter(line["id"] for line in lines), Counter(range(300)))
        self.assertTrue(all(line["ok"] for line in lines))
        # Placement: each line's host is the Slurm node its worker ran on, and the worker's
        # default name says the same; two workers per node, every node used.
        workers = {line["worker"] for line in lines}
        self.assertTrue(all(line["host"] == line["worker"].rsplit("-", 1)[0] for line in lines))
        per_node = Counter(name.rsplit("-", 1)[0] for name in workers)
        self.assertEqual(set(per_node), set(NODES), per_node)
        self.assertTrue(all(count <= 2 for count in per_node.values()), per_node)
        self.assertIn("started 6 worker(s) as a Slurm job step", self.output(job, "err"))
        self.assert_nothing_left()

    def test_a_node_lost_mid_run_has_its_workers_tasks_requeued_on_the_others(self):
        # A node lost as a power cut loses it: its slurmd, its job step daemon and its
        # worker, all SIGKILLed. The batch script (the coordinator) runs on the first node;
        # the last one is lost. --no-kill keeps Slurm from ending the job for a lost node.
        lost = NODES[-1]
        self.addCleanup(subprocess.run, [str(CLUSTER), "slurmd", os.environ["TASKFARM_SLURM_STATE"], lost],
                        env=self.env, timeout=60, check=False)
        results = self.dir / "run.jsonl"
        job = self.submit(3, ["--task", "sleep", "--duration", "0.3", "--tasks", "30", "--results", str(results)],
                          ["--nodes=3", "--ntasks-per-node=1", "--no-kill"])
        wait_until("3 results in the journal", lambda: len(journal(results)) >= 3)

        def workers_on(node):
            found = []
            for pid in pids_with(str(self.dir)):
                try:
                    if Path(f"/proc/{pid}/exe").resolve() != WORKER.resolve():
                        continue
                    if f"SLURMD_NODENAME={node}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                        found.append(pid)
                except OSError:
                    pass
            return found

        victims = wait_until(f"the worker on {lost}", lambda: workers_on(lost))
        state_dir = Path(Path(os.environ["TASKFARM_SLURM_STATE"]).read_text().strip())
        slurmd = int((state_dir / "run" / f"slurmd-{lost}.pid").read_text())
        stepds = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) for pid in victims}
        for pid in [slurmd, *stepds, *victims]:
            os.kill(pid, signal.SIGKILL)

        self.assertEqual(self.wait_job(job), "0:0", self.output(job, "err"))
        lines = journal(results)
        ok = [line for line in lines if line["ok"]]
        self.assertEqual(Counter(line["id"] for line in ok), Counter(range(30)))
        err = self.output(job, "err")
        self.assertRegex(err, rf"worker {lost}-{victims[0]} \S.*; requeueing its [1-9]\d* task\(s\)")
        # Every task after the loss ran on the nodes left.
        self.assertIn(lost, {line["host"] for line in ok})
        self.assertEqual({line["host"] for line in ok if line["attempt"] >= 2} - set(NODES[:-1]), set())
        self.assert_nothing_left()

    def test_scancel_of_a_three_node_job_leaves_no_process(self):
        results = self.dir / "run.jsonl"
        job = self.submit(3, ["--task", "sleep", "--duration", "0.1", "--tasks", "300", "--results", str(results)],
                          ["--nodes=3", "--ntasks-per-node=1"])
        wait_until("10 results in the journal", lambda: len(journal(results)) >= 10)
        self.slurm("scancel", job)
        self.wait_job(job)
        self.assert_nothing_left()
        ids = Counter(line["id"] for line in journal(results) if line["ok"])
        self.assertEqual(max(ids.values()), 1, "a task recorded ok twice")
        self.assertEqual(len({line["host"] for line in journal(results)}), 3)

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

    def test_serve_owns_a_slurm_step_and_runs_submitted_jobs_on_it(self):
        # coordinator serve --launch slurm outside an allocation: srun allocates its step of 3
        # workers, which run a submitted job's tasks, each once; SIGTERM ends step and server.
        socket = self.dir / "server" / "socket"
        log = open(self.dir / "server.log", "wb")
        server = subprocess.Popen([str(COORDINATOR), "serve", "--socket", str(socket), "--launch", "slurm",
                                   "--workers", "3", "--slurm-args", "--time=5"],
                                  cwd=self.dir, env=self.env, stdout=log, stderr=log)
        self.addCleanup(lambda: server.poll() is None and server.kill())

        def client(*args):
            return subprocess.run([str(COORDINATOR), args[0], "--socket", str(socket), *args[1:]], cwd=self.dir,
                                  env=self.env, timeout=WAIT_S, capture_output=True, text=True)

        wait_until("the server to answer", lambda: socket.exists() and client("status").returncode == 0)
        self.assertIn("with 3 workers in one Slurm job step;", (self.dir / "server.log").read_text())
        plan = self.dir / "plan.jsonl"
        plan.write_text("".join(json.dumps({"kind": "cpu", "lo": i * 1000, "hi": (i + 1) * 1000}) + "\n"
                                for i in range(30)))
        done = client("submit", "--plan", str(plan), "--wait", "-q")
        self.assertEqual(done.returncode, 0, done.stderr + (self.dir / "server.log").read_text())
        job = done.stdout.strip()
        lines = journal(self.dir / "server" / "jobs" / job / "results.jsonl")
        self.assertEqual(Counter(line["id"] for line in lines), Counter(range(30)))
        workers = {line["worker"] for line in lines}
        self.assertTrue(workers and all(re.fullmatch(r"tf[123]-\d+", name) for name in workers), workers)
        self.assertLessEqual(len(workers), 3)
        server.send_signal(signal.SIGTERM)
        self.assertEqual(server.wait(timeout=WAIT_S), 0, (self.dir / "server.log").read_text())
        self.assertIn("srun exited with status 0", (self.dir / "server.log").read_text())
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


class SlurmFarm(SlurmCase):
    """taskfarm::Farm with a Slurm step (FarmOptions::slurm), from a program's own main(): farm_test."""

    def test_a_farm_in_an_sbatch_job_sums_in_code_on_its_step_each_task_once(self):
        farm_test = Path(os.environ["TASKFARM_FARM_TEST"])
        results = self.dir / "run.jsonl"
        # SlurmStep::tasks 0: the job's $SLURM_NTASKS workers.
        job = self.slurm("sbatch", "--parsable", "--ntasks=3", f"--chdir={self.dir}",
                         f"--output={self.dir}/job-%j.out", f"--error={self.dir}/job-%j.err",
                         "--wrap", f"exec {farm_test} slurm-sum 200 0 {results}").strip().split(";")[0]
        self.jobs.append(job)
        self.assertEqual(self.wait_job(job), "0:0", self.output(job, "err"))
        self.assertEqual(self.output(job), "2646700\n")  # 0^2 + ... + 199^2
        lines = journal(results)
        self.assertEqual(Counter(line["id"] for line in lines), Counter(range(200)))
        self.assertTrue(all(line["ok"] and line["mode"] == "processes" for line in lines))
        workers = {line["worker"] for line in lines}
        self.assertLessEqual(len(workers), 3)
        self.assertIn("srun exited with status 0", self.output(job, "err"))
        self.assert_nothing_left()

    def test_a_farm_outside_an_allocation_has_srun_allocate_its_step(self):
        farm_test = Path(os.environ["TASKFARM_FARM_TEST"])
        results = self.dir / "run.jsonl"
        # SlurmStep{.tasks = 2, .args = "--time=5"}: srun allocates the two workers itself.
        done = subprocess.run([str(farm_test), "slurm-sum", "100", "2", str(results)], cwd=self.dir, env=self.env,
                              timeout=WAIT_S, capture_output=True, text=True)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stdout, "328350\n")  # 0^2 + ... + 99^2
        self.assertIn("--ntasks=2", done.stderr)
        self.assertIn("--time=5", done.stderr)
        lines = journal(results)
        self.assertEqual(Counter(line["id"] for line in lines), Counter(range(100)))
        self.assertLessEqual(len({line["worker"] for line in lines}), 2)
        self.assert_nothing_left()


class SlurmAlloc(SlurmCase):
    """coordinator --alloc slurm, run outside any allocation: it submits its own with sbatch."""

    def start(self, args, command=None):
        """Starts the coordinator (or `command`, a program that allocates as it does) in the test's
        directory; returns the process and its job name."""
        command = command or [str(COORDINATOR), "--alloc", "slurm", "--progress", "never"]
        process = subprocess.Popen(command + args, cwd=self.dir, env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        self.addCleanup(self.end, process)
        return process, f"taskfarm-alloc-{process.pid}"

    def end(self, process):
        if process.poll() is None:
            process.kill()
            process.communicate()
        # Whatever a failed test left: the run's jobs are named after its pid.
        subprocess.run(["scancel", "--name", f"taskfarm-alloc-{process.pid}"], env=self.env, timeout=30, check=False)

    def our_jobs(self, name):
        """Our allocations in squeue: job id -> state."""
        text = self.slurm("squeue", "--noheader", "--name", name, "--format=%i %t")
        return dict(line.split() for line in text.splitlines())

    def watch(self, process, name, until=None):
        """Polls squeue until the run ends; returns (the most allocations seen at once, the
        run's stdout and stderr). `until(jobs)` is called at each poll while it returns False."""
        most = 0
        deadline = time.monotonic() + WAIT_S
        while process.poll() is None:
            jobs = self.our_jobs(name)
            most = max(most, len(jobs))
            if until and until(jobs):
                until = None
            self.assertLess(time.monotonic(), deadline, "the run did not end")
            time.sleep(0.1)
        out, err = process.communicate()
        return most, out, err

    def test_alloc_runs_each_task_once_in_at_most_max_allocs_allocations(self):
        results = self.dir / "run.jsonl"
        report = self.dir / "report.json"
        process, name = self.start(["--max-allocs", "2", "--alloc-workers", "1", "--alloc-time", "5",
                                    "--task", "sleep", "--duration", "0.02", "--tasks", "300",
                                    "--results", str(results), "--json", str(report)])
        most, out, err = self.watch(process, name)
        self.assertEqual(process.returncode, 0, err)
        lines = journal(results)
        self.assertEqual(Counter(line["id"] for line in lines), Counter(range(300)))
        self.assertTrue(all(line["ok"] for line in lines))
        self.assertGreaterEqual(most, 1)
        self.assertLessEqual(most, 2, "more allocations than --max-allocs at once")
        # The workers are NODE-JOBID.RANK; every job is one the run said it submitted.
        submitted = set(re.findall(r"--alloc: allocating: .*submitted job (\d+)", err))
        jobs = {line["worker"].rsplit("-", 1)[1].split(".")[0] for line in lines}
        self.assertLessEqual(jobs, submitted, err)
        self.assertTrue(all(line["host"] in NODES for line in lines))
        self.assertIn("none is left in the queue", err)
        # The report says what was submitted and why, decision by decision.
        allocations = json.loads(report.read_text())["runs"][0]["allocations"]
        self.assertEqual(allocations["submitted"], len(submitted))
        self.assertEqual(allocations["left_in_queue"], [])
        self.assertLessEqual(allocations["most_at_once"], 2)
        decisions = [d["what"] for d in allocations["decisions"]]
        self.assertTrue(any(d.startswith("allocating: 300 task(s) wait and 0 allocation(s) exist") for d in decisions),
                        decisions)
        self.assertIn("not allocating: tasks wait, but 2 allocation(s) exist (--max-allocs 2)", decisions)
        self.assertEqual(self.our_jobs(name), {})
        self.assert_nothing_left()

    def test_an_allocation_cancelled_mid_run_has_its_tasks_run_elsewhere(self):
        # As an allocation whose time limit ends mid-task: Slurm ends it the same way.
        results = self.dir / "run.jsonl"
        process, name = self.start(["--max-allocs", "2", "--alloc-workers", "2", "--alloc-time", "5",
                                    "--task", "sleep", "--duration", "0.3", "--tasks", "40",
                                    "--results", str(results)])
        cancelled = []

        def cancel_one(jobs):  # the first allocation, once its workers have run tasks
            lines = journal(results)
            ran = {line["worker"].rsplit("-", 1)[1].split(".")[0] for line in lines}
            running = sorted((job for job, state in jobs.items() if state == "R" and job in ran), key=int)
            if len(lines) < 4 or not running:
                return False
            self.slurm("scancel", running[0])
            cancelled.append(running[0])
            return True

        most, out, err = self.watch(process, name, cancel_one)
        self.assertEqual(process.returncode, 0, err)
        self.assertEqual(len(cancelled), 1, "no allocation ran tasks")
        lines = journal(results)
        ok = [line for line in lines if line["ok"]]
        self.assertEqual(Counter(line["id"] for line in ok), Counter(range(40)))
        self.assertLessEqual(most, 2)
        self.assertRegex(err, rf"--alloc: allocation {cancelled[0]} left the queue")
        # Its workers were lost with tasks in hand (running ones charged, queued ones
        # requeued), and a new allocation took its place while tasks waited.
        self.assertRegex(err, rf"worker tf\d-{cancelled[0]}\.\d \S.*; requeueing its [1-9]\d* task\(s\)")
        self.assertTrue(any(line["attempt"] >= 2 for line in ok), "no task ran a second time")
        submitted = re.findall(r"--alloc: allocating: .*submitted job (\d+)", err)
        self.assertGreaterEqual(len(submitted), 3, err)
        after = {line["worker"].rsplit("-", 1)[1].split(".")[0] for line in ok} - {cancelled[0]}
        self.assertTrue(after, "no task ran outside the cancelled allocation")
        self.assertEqual(self.our_jobs(name), {})
        self.assert_nothing_left()

    def test_an_idle_allocation_is_cancelled_and_a_new_one_comes_when_work_does(self):
        # Inputs on stdin, a slow producer: two commands, then nothing (the allocation idles),
        # then two more.
        results = self.dir / "run.jsonl"
        process = subprocess.Popen([str(COORDINATOR), "--alloc", "slurm", "--alloc-time", "5", "--progress", "never",
                                    "--command", "echo {}", "--inputs", "-", "--results", str(results)],
                                   cwd=self.dir, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        self.addCleanup(self.end, process)
        name = f"taskfarm-alloc-{process.pid}"
        process.stdin.write("a\nb\n")
        process.stdin.flush()
        wait_until("2 results", lambda: len(journal(results)) == 2)
        first = journal(results)[0]["worker"].rsplit("-", 1)[1].split(".")[0]
        wait_until(f"allocation {first} to leave the queue", lambda: first not in self.our_jobs(name))
        out, err = process.communicate("c\nd\n", timeout=WAIT_S)
        self.assertEqual(process.returncode, 0, err)
        self.assertIn(f"--alloc: cancelled allocation(s) {first}: no task waits and its workers have held none for "
                      "2 s", err)
        lines = journal(results)
        self.assertEqual(Counter(line["id"] for line in lines if line["ok"]), Counter(range(4)))
        later = {line["worker"].rsplit("-", 1)[1].split(".")[0] for line in lines[2:]}
        self.assertNotIn(first, later, "the later tasks ran in the cancelled allocation")
        self.assertEqual(self.our_jobs(name), {})
        self.assert_nothing_left()

    def test_ctrl_c_cancels_every_allocation(self):
        results = self.dir / "run.jsonl"
        process, name = self.start(["--max-allocs", "2", "--alloc-workers", "2", "--alloc-time", "5",
                                    "--task", "sleep", "--duration", "0.3", "--tasks", "100",
                                    "--results", str(results)])
        wait_until("4 results in the journal", lambda: len(journal(results)) >= 4)
        wait_until("a second allocation", lambda: len(self.our_jobs(name)) == 2)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=WAIT_S)
        self.assertEqual(process.returncode, 130, err)
        # Each ended on its own (its workers were told to shut down) or was cancelled.
        self.assertEqual(len(re.findall(r"--alloc: allocation \d+ left the queue", err)), 2, err)
        self.assertIn("none is left in the queue", err)
        self.assertEqual(self.our_jobs(name), {})
        ids = Counter(line["id"] for line in journal(results) if line["ok"])
        self.assertEqual(max(ids.values()), 1, "a task recorded ok twice")
        self.assert_nothing_left()

    def test_a_farm_with_alloc_sums_in_code_and_leaves_no_allocation(self):
        # farm_test alloc-sum: a Farm in its own main() with FarmOptions::alloc{.time = "5",
        # .workers = 1, .max_allocs = 2}, 200 squares of 10 ms each, its workers the same program.
        farm_test = Path(os.environ["TASKFARM_FARM_TEST"])
        results = self.dir / "run.jsonl"
        process, name = self.start(["alloc-sum", "200", str(results)], command=[str(farm_test)])
        most, out, err = self.watch(process, name)
        self.assertEqual(process.returncode, 0, err)
        self.assertEqual(out, "2646700\n")  # 0^2 + ... + 199^2, summed in code
        lines = journal(results)
        self.assertEqual(Counter(line["id"] for line in lines if line["ok"]), Counter(range(200)))
        self.assertGreaterEqual(most, 1)
        self.assertLessEqual(most, 2, "more allocations than SlurmAllocations::max_allocs at once")
        submitted = set(re.findall(r"--alloc: allocating: .*submitted job (\d+)", err))
        # A farm's plan has no count: the log says no number (it said "many task(s) wait").
        self.assertIn("--alloc: allocating: tasks wait and 0 allocation(s) exist (--max-allocs 2)", err)
        self.assertNotIn("many", err)
        jobs = {line["worker"].rsplit("-", 1)[1].split(".")[0] for line in lines}
        self.assertTrue(jobs, err)
        self.assertLessEqual(jobs, submitted, err)
        self.assertTrue(all(line["host"] in NODES for line in lines))
        # The farm's end released them: none of its jobs in squeue, no process of the run left
        # (the workers, their srun and slurmstepd name the run's key directory under self.dir).
        self.assertIn("none is left in the queue", err)
        self.assertEqual(self.our_jobs(name), {})
        self.assert_nothing_left()

    def test_a_failing_sbatch_backs_off_and_fails_the_run_with_its_error(self):
        # --wait-workers bounds how long sbatch may fail with nothing running: 3 s here
        # (tries at 0, 1 and 3 s).
        results = self.dir / "run.jsonl"
        process, name = self.start(["--max-allocs", "2", "--alloc-time", "5", "--alloc-args", "--partition=nope",
                                    "--wait-workers", "3", "--task", "sleep", "--duration", "0.01", "--tasks", "5",
                                    "--results", str(results)])
        out, err = process.communicate(timeout=WAIT_S)
        self.assertEqual(process.returncode, 1, err)
        tries = re.findall(r"--alloc: cannot submit an allocation \(sbatch .*--partition=nope'?\): sbatch exited with "
                           r"status 1: (.*); trying again in (\S+) s", err)
        self.assertGreaterEqual(len(tries), 2, err)
        self.assertEqual([delay for _, delay in tries[:2]], ["1.0", "2.0"])
        self.assertIn("Invalid partition name specified", tries[0][0])
        lines = journal(results)
        self.assertEqual(Counter(line["id"] for line in lines), Counter(range(5)))
        for line in lines:
            self.assertFalse(line["ok"])
            self.assertRegex(line["error"], r"^not run: cannot get an allocation: sbatch failed \d+ time\(s\) over "
                                            r".*Invalid partition name specified")
        self.assertEqual(self.our_jobs(name), {})
        self.assert_nothing_left()


if __name__ == "__main__":
    unittest.main()
