#!/usr/bin/env python3
"""`coordinator serve` and its clients (submit, status, jobs, wait, cancel), all real processes:
a server with real workers, clients that talk to it over its socket. Three jobs at once on
four workers, each task ok exactly once; a kill -9 of the server mid-job and a restart that
loses nothing, with a `wait` that outlives it; a second local user refused; every process
gone at the end.

TASKFARM_COORDINATOR names the coordinator binary (CTest sets it)."""

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from collections import Counter
from pathlib import Path

COORDINATOR = os.environ.get("TASKFARM_COORDINATOR", "coordinator")
WAIT_S = 60


def descendants(pid):
    """Pids of the live processes under `pid` (not zombies)."""
    children = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid):
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def wait_until(condition, what, timeout=WAIT_S):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def zmtp_request(path, body):
    """Sends one frame to the server's socket as a ZeroMQ DEALER would (ZMTP 3.0, NULL
    mechanism) and returns the reply's frame: for requests a real client never makes."""
    import socket
    import struct
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(WAIT_S)
    conn.connect(str(path))

    def read(n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise EOFError("the server closed the connection")
            data += chunk
        return data

    def frame():
        flags = read(1)[0]
        size = struct.unpack(">Q", read(8))[0] if flags & 2 else read(1)[0]
        return flags, read(size)

    conn.sendall(b"\xff" + b"\0" * 8 + b"\x7f" + b"\x03\x00" + b"NULL" + b"\0" * 16 + b"\0" + b"\0" * 31)
    read(64)
    ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    conn.sendall(bytes([0x04, len(ready)]) + ready)
    frame()  # the server's READY
    conn.sendall(bytes([0, len(body)]) + body)
    while True:
        flags, data = frame()
        if not flags & 4:  # a message, not a command
            conn.close()
            return data


def final_results(journal):
    """The journal's final result lines (no events, no retried attempts)."""
    lines = [json.loads(line) for line in Path(journal).read_text().splitlines() if line]
    return [line for line in lines if "event" not in line and not line.get("retrying")]


class Service(unittest.TestCase):
    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="taskfarm-service-"))
        self.socket = self.dir / "server" / "socket"
        self.state = self.dir / "state"
        self.server = None
        self.all_pids = set()

    def tearDown(self):
        if self.server and self.server.poll() is None:
            self.server.kill()
            self.server.wait()
        for pid in self.all_pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def start(self, workers=4, files=None, args=()):
        log = open(self.dir / "server.log", "ab")
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))) if files else None
        self.server = subprocess.Popen(
            [COORDINATOR, "serve", "--socket", str(self.socket), "--state", str(self.state), "--workers", str(workers),
             *args],
            stdout=log,
            stderr=log,
            preexec_fn=limit,
            cwd=self.dir,  # where download tasks write (downloads/)
        )
        wait_until(lambda: self.socket.exists() and self.client("status").returncode == 0, "the server to answer")
        wait_until(lambda: len(descendants(self.server.pid)) >= (workers + 1 if workers else 0), "the workers")
        self.all_pids.update(descendants(self.server.pid))
        return self.server

    def client(self, *args, check=False, **kwargs):
        result = subprocess.run(
            [COORDINATOR, args[0], "--socket", str(self.socket), *args[1:]],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            **kwargs,
        )
        if check:
            self.assertEqual(result.returncode, 0, result.stderr)
        return result

    def jobs(self):
        return {job["job"]: job for job in json.loads(self.client("jobs", "--json", check=True).stdout)["jobs"]}

    def inputs(self, name, count):
        path = self.dir / f"{name}.txt"
        path.write_text("".join(f"{name}{i}\n" for i in range(count)))
        return path

    def submit_commands(self, name, count, command):
        """Submits a job of `count` commands (one per input line); its id."""
        result = self.client(
            "submit", "--name", name, "--inputs", str(self.inputs(name, count)), "--command", command, check=True, cwd=self.dir
        )
        return int(result.stdout.strip())

    def check_once(self, job, count):
        """Every task of the job ok exactly once in its journal."""
        results = final_results(self.state / "jobs" / str(job) / "results.jsonl")
        self.assertEqual(Counter(r["id"] for r in results), Counter(range(count)))
        self.assertTrue(all(r["ok"] for r in results), results)

    def stop(self):
        pids = descendants(self.server.pid) + [self.server.pid]
        self.all_pids.update(pids)
        self.server.send_signal(signal.SIGTERM)
        self.assertEqual(self.server.wait(timeout=WAIT_S), 0)
        wait_until(lambda: not any(alive(pid) for pid in self.all_pids), "every process to end", timeout=10)

    def test_three_jobs_at_once_share_four_workers_and_each_task_runs_once(self):
        self.start(workers=4)
        count = 12
        ran = self.dir / "ran"
        submits = []
        for name in ("a", "b", "c"):
            command = ["submit", "--name", name, "--inputs", str(self.inputs(name, count)), "--command",
                       f"echo {{}} >> {ran} && sleep 0.2"]
            submits.append(subprocess.Popen([COORDINATOR, command[0], "--socket", str(self.socket), *command[1:]],
                                            stdout=subprocess.PIPE, text=True, cwd=self.dir))
        ids = []
        for submit in submits:
            out, _ = submit.communicate(timeout=WAIT_S)
            self.assertEqual(submit.returncode, 0)
            ids.append(int(out.strip()))
        self.assertEqual(sorted(ids), [1, 2, 3])
        waits = {job: self.client("wait", str(job)) for job in ids}
        for job, result in waits.items():
            self.assertEqual(result.returncode, 0, result.stderr)
            lines = [json.loads(line) for line in result.stdout.splitlines()]
            self.assertEqual(sorted(line["id"] for line in lines), list(range(count)))
            self.assertTrue(all(line["ok"] and line["job"] == job for line in lines))
            self.check_once(job, count)
        # Each command ran once: 36 lines, each input once.
        self.assertEqual(Counter(ran.read_text().split()), Counter(f"{n}{i}" for n in "abc" for i in range(count)))
        # The jobs shared the workers: each ran while each other one did
        spans = {}
        for job in ids:
            results = final_results(self.state / "jobs" / str(job) / "results.jsonl")
            spans[job] = (min(r["start_s"] for r in results), max(r["end_s"] for r in results))
        # (one job after another would have the first end before the last began).
        for job, (start, end) in spans.items():
            for other, (other_start, other_end) in spans.items():
                self.assertTrue(start < other_end and other_start < end, spans)
        self.assertTrue(all(self.jobs()[job]["state"] == "ok" for job in ids))
        # A job that is done is read back from its journal: the same results, again and again.
        for _ in range(2):
            again = self.client("wait", str(ids[0]))
            self.assertEqual(again.returncode, 0)
            self.assertEqual(sorted(again.stdout.splitlines()), sorted(waits[ids[0]].stdout.splitlines()))
        self.stop()

    def test_kill_9_mid_job_and_a_restart_lose_nothing(self):
        server = self.start(workers=4)
        count = 16
        first = self.submit_commands("a", count, "sleep 0.3; : {}")
        second = self.submit_commands("b", count, "sleep 0.3; : {}")
        # A wait attached before the kill goes on with the restarted server.
        waiter = subprocess.Popen([COORDINATOR, "wait", "--socket", str(self.socket), str(first)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: self.jobs()[first]["ok"] >= 3, "some results")
        before = self.jobs()
        self.assertLess(before[first]["ok"], count)
        pids = descendants(server.pid)
        self.assertGreaterEqual(len(pids), 5)  # the fork server and four workers, at least
        self.all_pids.update(pids)
        server.kill()
        server.wait()
        # No orphans: the workers and their commands die with their server.
        wait_until(lambda: not any(alive(pid) for pid in pids), "the workers to die with the server", timeout=10)
        self.start(workers=4)
        for job in (first, second):
            result = self.client("wait", "-q", str(job))
            self.assertEqual(result.returncode, 0, result.stderr)
            self.check_once(job, count)
        out, err = waiter.communicate(timeout=WAIT_S)
        self.assertEqual(waiter.returncode, 0, err)
        # It saw each result once, those from before the kill and those after.
        self.assertEqual(sorted(json.loads(line)["id"] for line in out.splitlines()), list(range(count)))
        self.stop()

    def test_held_jobs_stay_held_across_a_kill_9_and_run_after_it(self):
        server = self.start(workers=2)
        first = self.submit_commands("a", 6, "sleep 0.4; : {}")
        second = self.submit("--inputs", str(self.inputs("b", 2)), "--command", "true {}", "--afterok", str(first))
        third = self.submit("--task", "sleep", "--tasks", "1", "--after", str(second))
        wait_until(lambda: self.jobs()[first]["ok"] >= 1, "a first result")
        pids = descendants(server.pid)
        self.all_pids.update(pids)
        server.kill()
        server.wait()
        wait_until(lambda: not any(alive(pid) for pid in pids), "the workers to die with the server", timeout=10)
        self.start(workers=2)
        states = {job: summary["state"] for job, summary in self.jobs().items()}
        self.assertEqual(states[second], "held")
        self.assertEqual(self.client("wait", "-q", str(third)).returncode, 0)
        self.check_once(first, 6)
        self.check_once(second, 2)
        self.check_once(third, 1)
        self.stop()

    def test_workers_killed_by_many_tasks_are_always_replaced(self):
        # 40 tasks that kill their worker, each tried 3 times: more deaths than a run's
        # --max-respawns (100) allows; a server must still have its workers afterwards.
        self.start(workers=4)
        crashing = self.submit("--task", "crash", "--tasks", "40")
        self.assertEqual(self.client("wait", "-q", str(crashing)).returncode, 1)
        self.assertEqual(self.jobs()[crashing]["failed"], 40)
        plan = self.dir / "plan.jsonl"
        plan.write_text('{"kind":"sleep","seconds":0}\n' * 8)
        after = self.submit("--plan", str(plan))
        self.assertEqual(self.client("wait", "-q", str(after)).returncode, 0)
        self.stop()

    def test_unfinished_jobs_are_bounded_by_the_descriptors(self):
        # ulimit -n 100: at most 16 unfinished jobs (each holds its journal open); the next
        # submit is refused with the reason, and the server goes on.
        self.start(workers=1, files=100)
        first = self.submit_commands("a", 1, "sleep 30; : {}")
        plan = self.dir / "plan.jsonl"
        plan.write_text('{"kind":"sleep","seconds":0}\n')
        held = [self.submit("--plan", str(plan), "--after", str(first)) for _ in range(15)]
        result = self.client("submit", "--task", "sleep", "--tasks", "1")
        self.assertEqual(result.returncode, 2)
        self.assertIn("16 unfinished jobs", result.stderr)
        self.client("cancel", str(first), check=True)
        for job in held:
            self.assertEqual(self.client("wait", "-q", str(job)).returncode, 0)
        self.assertEqual(self.client("submit", "--task", "sleep", "--tasks", "1").returncode, 0)
        self.stop()

    def test_a_second_local_user_can_neither_submit_nor_read(self):
        if os.getuid() != 0 or not shutil.which("setpriv"):
            self.skipTest("needs root and setpriv to act as another user")
        self.start(workers=1)
        job = self.submit_commands("a", 1, "true {}")
        self.assertEqual(self.client("wait", "-q", str(job)).returncode, 0)
        # The binary and the test's directories must be reachable by nobody for the attempt to mean
        # anything: the server's own directory is what refuses.
        os.chmod(self.dir, 0o755)
        as_nobody = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
        for args in (["submit", "--task", "sleep", "--tasks", "1"], ["status"], ["jobs"], ["wait", str(job)],
                     ["cancel", str(job)]):
            result = subprocess.run(as_nobody + [COORDINATOR, args[0], "--socket", str(self.socket), *args[1:]],
                                    capture_output=True, text=True, timeout=WAIT_S, cwd="/")
            self.assertEqual(result.returncode, 2, (args, result.stdout, result.stderr))
            self.assertIn("--socket", result.stderr)
            self.assertEqual(result.stdout, "")
        # Nor past the client: the kernel refuses nobody a connection to the socket itself.
        probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
                 "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(3)\nsys.exit(0)\n")
        result = subprocess.run(as_nobody + [sys.executable, "-c", probe, str(self.socket)], timeout=WAIT_S, cwd="/")
        self.assertEqual(result.returncode, 3)
        self.assertEqual(list(self.jobs()), [job])
        self.stop()

    def test_cancel_a_job_and_bad_requests(self):
        self.start(workers=2)
        job = self.submit_commands("a", 20, "sleep 5; : {}")
        wait_until(lambda: self.jobs()[job]["running"] >= 1, "a task to start")
        result = self.client("cancel", str(job), check=True)
        self.assertIn(f"job {job}:", result.stdout)
        result = self.client("wait", str(job))
        self.assertEqual(result.returncode, 1)
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        self.assertEqual(sorted(line["id"] for line in lines), list(range(20)))
        self.assertTrue(all(line.get("cancelled") for line in lines), lines)
        self.assertEqual(self.jobs()[job]["state"], "cancelled")
        # No such job; a --command without inputs; an unknown type: exit 2, naming what.
        for args, text in ((["wait", "99"], "no job 99"), (["cancel", "99"], "no job 99"), (["status", "99"], "no job 99"),
                           (["submit", "--command", "true"], "--inputs"),
                           (["submit", "--task", "nosuch"], "nosuch")):
            result = self.client(*args)
            self.assertEqual(result.returncode, 2, (args, result.stderr))
            self.assertIn(text, result.stderr)
        # A second server on the same state is refused.
        second = subprocess.run([COORDINATOR, "serve", "--socket", str(self.dir / "other" / "socket"), "--state",
                                 str(self.state)], capture_output=True, text=True, timeout=WAIT_S)
        self.assertEqual(second.returncode, 2)
        self.assertIn("--state", second.stderr)
        self.assertIn("another server", second.stderr)
        # So is one on the same socket: it would take the first one's clients.
        second = subprocess.run([COORDINATOR, "serve", "--socket", str(self.socket), "--state", str(self.dir / "other")],
                                capture_output=True, text=True, timeout=WAIT_S)
        self.assertEqual(second.returncode, 2)
        self.assertIn("--socket", second.stderr)
        self.assertIn("another server", second.stderr)
        self.assertEqual(self.client("status").returncode, 0)
        self.stop()

    def test_bad_values_are_refused_and_a_bad_request_leaves_the_server_up(self):
        self.start(workers=1)
        # {"op": 5}: an op that is not a string is refused like any bad request (it ended the server).
        reply = zmtp_request(self.socket, b"\x81\xa2op\x05")
        self.assertIn(b"error", reply)
        # {"op": "create", "after": [{"job": 1, "if": "afterok"}, {"job": 1, "if": "afternotok"}]}: refused.
        after = b"\x92" + b"\x82\xa3job\x01\xa2if\xa7afterok" + b"\x82\xa3job\x01\xa2if\xaaafternotok"
        reply = zmtp_request(self.socket, b"\x82\xa2op\xa6create\xa5after" + after)
        self.assertIn(b"could never run", reply)
        self.assertEqual(self.client("status").returncode, 0)
        # Values that cannot be right exit 2 naming the flag, before anything reaches the server.
        plan = self.dir / "after.jsonl"
        plan.write_text('{"kind":"sleep","seconds":0}\n{"kind":"sleep","seconds":0,"after":[1]}\n')
        # A count is a JSON number: "1" as text is refused at its line, as in a one-shot run.
        text = self.dir / "text.jsonl"
        text.write_text('{"kind":"sleep","seconds":0}\n{"kind":"sleep","seconds":0,"resources":{"cpus":"1"}}\n')
        slot = self.dir / "slot.jsonl"
        slot.write_text('{"kind":"sleep","seconds":0,"resources":{"slot":1}}\n')
        for args, text in ((["submit", "--task", "sleep", "--task-timeout", "nan"], "--task-timeout"),
                           (["submit", "--task", "sleep", "--after", "-1"], "--after"),
                           (["submit", "--task", "sleep", "--afterok", "1,,2"], "--afterok"),
                           (["wait", "-1"], "JOB"),
                           (["submit", "--task", "sleep", "--afterok", "1", "--afternotok", "1"],
                            "--afterok 1 and --afternotok 1"),
                           (["submit", "--plan", str(plan)], "after.jsonl:2"),
                           (["submit", "--plan", str(text)], "text.jsonl:2"),
                           (["submit", "--plan", str(slot)], "slot.jsonl:1: asks for slot=1, but the local workers "
                                                             "have no slot"),
                           (["submit", "--task", "sleep", "--task-resources", "slot=x"], "--task-resources"),
                           (["submit", "--task", "sleep", "--task-resources", "cpus=100000"], "--task-resources"),
                           (["submit", "--plan", ""], "--plan"), (["submit", "--inputs", ""], "--inputs")):
            result = self.client(*args)
            self.assertEqual(result.returncode, 2, (args, result.stderr))
            self.assertIn(text, result.stderr, args)
        # A refused submit leaves no job behind, at once (not after --submit-timeout, 10 s).
        self.assertEqual(list((self.state / "jobs").iterdir()), [])
        for args, text in ((["--drain-timeout", "nan"], "--drain-timeout"), (["--socket", ""], "--socket"),
                           (["--worker-resources", "gpu=2"], "--gpus"), (["--gpus", "0,0"], "--gpus"),
                           (["--submit-timeout", "0"], "--submit-timeout"), (["--log-level", "bogus"], "--log-level"),
                           (["--retries", "-1"], "--retries"), (["--workers", "0"], "--workers"),
                           (["--state", ""], "--state"), (["--listen-clients", "tcp://x"], "--listen-clients")):
            result = subprocess.run([COORDINATOR, "serve", "--state", str(self.dir / "other"), *args],
                                    capture_output=True, text=True, timeout=WAIT_S)
            self.assertEqual(result.returncode, 2, (args, result.stderr))
            self.assertIn(text, result.stderr, args)
        self.assertEqual(self.client("status").returncode, 0)
        self.stop()

    def submit(self, *args):
        result = self.client("submit", *args, check=True, cwd=self.dir)
        return int(result.stdout.strip())

    def test_a_job_runs_where_it_was_submitted_and_inputs_alone_are_commands(self):
        # The server runs in self.dir; the jobs are submitted from another directory, and their
        # commands run there (the command type's TaskTraits::dir_param). --inputs without --task
        # or --command: each line is a command (decision 258).
        self.start(workers=1)
        elsewhere = self.dir / "elsewhere"
        elsewhere.mkdir()
        lines = elsewhere / "lines.txt"
        lines.write_text("pwd\n")
        for args in (["--inputs", str(lines)], ["--inputs", str(lines), "--command", "{}; : x"]):
            result = self.client("submit", *args, "--wait", check=True, cwd=elsewhere)
            values = [json.loads(line)["value"] for line in result.stdout.splitlines() if line.startswith("{")]
            self.assertEqual([value["stdout"] for value in values], [f"{os.path.realpath(elsewhere)}\n"], args)
        self.stop()

    def test_a_dependency_chain_runs_in_order_and_a_failed_dependencys_dependents_are_reported(self):
        self.start(workers=4)
        # A held job says what it waits for.
        slow = self.submit("--inputs", str(self.inputs("s", 1)), "--command", "sleep 1; : {}")
        held = self.submit("--task", "sleep", "--tasks", "1", "--afterok", str(slow))
        status = self.client("status", str(held), check=True).stdout
        self.assertIn(f"job {held}: held: job {slow} is not done (--afterok {slow})", status)
        self.assertEqual(self.client("wait", "-q", str(held)).returncode, 0)
        order = self.dir / "order"
        first = self.submit("--inputs", str(self.inputs("a", 4)), "--command", f"sleep 0.1; echo {{}} >> {order}")
        second = self.submit("--inputs", str(self.inputs("b", 4)), "--command", f"echo {{}} >> {order}",
                             "--afterok", str(first))
        third = self.submit("--inputs", str(self.inputs("c", 4)), "--command", f"echo {{}} >> {order}",
                            "--after", str(second))
        self.assertEqual(self.client("wait", "-q", str(third)).returncode, 0)
        lines = order.read_text().split()
        self.assertEqual([line[0] for line in lines], list("aaaabbbbcccc"), lines)
        # A failed dependency: its afterok dependents (and theirs) are reported, not run; its
        # afternotok one runs.
        failing = self.submit("--task", "fail", "--tasks", "2")
        skipped = self.submit("--task", "sleep", "--tasks", "3", "--afterok", str(failing))
        skipped_too = self.submit("--task", "sleep", "--tasks", "1", "--afterok", str(skipped))
        rescue = self.submit("--task", "sleep", "--tasks", "1", "--afternotok", str(failing))
        result = self.client("wait", str(skipped))
        self.assertEqual(result.returncode, 1)
        lines = [json.loads(line) for line in result.stdout.splitlines()]
        self.assertEqual(sorted(line["id"] for line in lines), [0, 1, 2])
        for line in lines:
            self.assertFalse(line["ok"])
            self.assertIn(f"job {failing} had 2 task(s) not ok (--afterok {failing})", line["error"])
        self.assertIn("not run", result.stderr)
        self.assertEqual(self.client("wait", "-q", str(skipped_too)).returncode, 1)
        self.assertEqual(self.client("wait", "-q", str(rescue)).returncode, 0)
        jobs = self.jobs()
        self.assertEqual([jobs[j]["state"] for j in (failing, skipped, skipped_too, rescue)],
                         ["failed", "skipped", "skipped", "ok"])
        # Only jobs that exist: so a cycle cannot be written.
        result = self.client("submit", "--task", "sleep", "--afterok", "99")
        self.assertEqual(result.returncode, 2)
        self.assertIn("--afterok 99: no such job", result.stderr)
        self.stop()

    def test_a_job_of_higher_priority_takes_the_turns_first(self):
        self.start(workers=1)
        low = self.submit("--inputs", str(self.inputs("l", 8)), "--command", "sleep 0.2; : {}")
        wait_until(lambda: self.jobs()[low]["running"] >= 1, "the first job to start")
        high = self.submit("--inputs", str(self.inputs("h", 5)), "--command", "sleep 0.2; : {}", "--priority", "10")
        for job in (low, high):
            self.assertEqual(self.client("wait", "-q", str(job)).returncode, 0)
        ends = {job: sorted(r["end_s"] for r in final_results(self.state / "jobs" / str(job) / "results.jsonl"))
                for job in (low, high)}
        # Taking turns, 5 of the first job's tasks would end before the last of the second's.
        self.assertLessEqual(sum(end < ends[high][-1] for end in ends[low]), 2, ends)
        self.stop()

    def test_an_interrupted_or_silent_submit_is_dropped_and_counted_against_the_limit(self):
        # ulimit -n 100: at most 16 unfinished jobs; a submit silent for 1 s is dropped.
        self.start(workers=1, files=100, args=("--submit-timeout", "1"))
        jobs = self.state / "jobs"
        # A submit interrupted while it sends its tasks: its job goes, tasks, files and all.
        submit = subprocess.Popen([COORDINATOR, "submit", "--socket", str(self.socket), "--task", "sleep", "--tasks",
                                   "5000000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        wait_until(lambda: (jobs / "1" / "tasks.jsonl").exists() and (jobs / "1" / "tasks.jsonl").stat().st_size > 0,
                   "the submit to send tasks")
        submit.send_signal(signal.SIGINT)
        submit.communicate(timeout=WAIT_S)
        self.assertNotEqual(submit.returncode, 0)
        wait_until(lambda: not (jobs / "1").exists(), "the interrupted submit's job to be dropped", timeout=15)
        # Raw creates that never add nor commit count against the limit, and go when silent.
        create = b"\x81\xa2op\xa6create"
        replies = [zmtp_request(self.socket, create) for _ in range(17)]
        self.assertTrue(all(b"error" not in reply for reply in replies[:16]), replies)
        self.assertIn(b"16 unfinished jobs", replies[16])
        wait_until(lambda: not any(jobs.iterdir()), "the silent submits to be dropped", timeout=15)
        # A submit that stays alive longer than the timeout (its tasks are slow to come) is kept.
        slow = subprocess.Popen(f"(echo a; sleep 2.5; echo b) | {COORDINATOR} submit --socket {self.socket} "
                                f"--inputs - --command 'true {{}}' --wait -q", shell=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        out, err = slow.communicate(timeout=WAIT_S)
        self.assertEqual(slow.returncode, 0, err)
        self.check_once(int(out.strip()), 2)
        self.assertEqual(list(self.jobs()), [int(out.strip())])
        self.stop()

    def test_a_dead_servers_socket_is_said_at_once_with_exit_2(self):
        server = self.start(workers=1)
        pids = descendants(server.pid)
        self.all_pids.update(pids)
        server.kill()
        server.wait()
        self.assertTrue(self.socket.exists())  # left behind by the kill
        for args in (["status"], ["jobs"], ["wait", "1"], ["cancel", "1"], ["submit", "--task", "sleep"]):
            result = self.client(*args)
            self.assertEqual(result.returncode, 2, (args, result.stderr))
            self.assertIn("no server there", result.stderr)
            self.assertIn("a server that is gone", result.stderr)

    def test_cancel_counts_only_started_tasks_as_running(self):
        # Quick tasks first, so that each worker holds tasks ahead (prefetch) of a slow one.
        self.start(workers=2)
        inputs = self.dir / "mixed.txt"
        inputs.write_text("".join(f"q{i}\n" for i in range(40)) + "".join(f"s{i}\n" for i in range(20)))
        job = self.submit("--inputs", str(inputs), "--command", "case {} in s*) sleep 30;; esac")
        wait_until(lambda: self.jobs()[job]["ok"] == 40 and self.jobs()[job]["running"] == 2, "both workers on slow ones")
        self.assertEqual(self.jobs()[job]["running"], 2)
        self.assertEqual(self.jobs()[job]["waiting"], 18)
        result = self.client("cancel", str(job), check=True)
        self.assertIn(f"job {job}: 18 waiting task(s) cancelled, 2 running task(s) stopped", result.stdout)
        self.assertEqual(self.client("wait", "-q", str(job)).returncode, 1)
        self.stop()

    def test_resources_limit_what_runs_at_once_and_gpu_tasks_see_their_gpus(self):
        # 4 workers, 2 GPUs (ids 3 and 5, a fake list) and slot=1: never more than 2 GPU tasks at
        # once, each with CUDA_VISIBLE_DEVICES naming the one it holds; one slot task at a time,
        # while a job that asks for nothing runs beside them.
        self.start(workers=4, args=("--gpus", "3,5", "--worker-resources", "slot=1"))
        self.assertIn("gpu=2", self.client("status", check=True).stdout)
        log = self.dir / "log"
        gpu = self.dir / "gpu.jsonl"
        shell = f"echo start $CUDA_VISIBLE_DEVICES >> {log}; sleep 0.3; echo end $CUDA_VISIBLE_DEVICES >> {log}"
        gpu.write_text("".join(json.dumps({"kind": "command", "shell": shell, "resources": {"gpu": 1}}) + "\n"
                               for _ in range(6)))
        gpus = self.submit("--plan", str(gpu))
        slots = self.dir / "slots.txt"
        slots.write_text("".join(f"s{i}\n" for i in range(4)))
        slot_log = self.dir / "slot_log"
        slotted = self.submit("--inputs", str(slots), "--command", f"echo start >> {slot_log}; sleep 0.2; "
                              f"echo end >> {slot_log}; : {{}}", "--task-resources", "slot=1")
        free = self.submit("--task", "sleep", "--tasks", "4")
        for job in (gpus, slotted, free):
            self.assertEqual(self.client("wait", "-q", str(job)).returncode, 0)
        held, most = {}, 0
        for line in log.read_text().split("\n"):
            if not line:
                continue
            what, _, device = line.partition(" ")
            self.assertIn(device, ("3", "5"))  # one GPU each, one of the list
            held[device] = held.get(device, 0) + (1 if what == "start" else -1)
            self.assertLessEqual(held[device], 1, "two tasks held one GPU")
            most = max(most, sum(held.values()))
        self.assertEqual(most, 2)
        depth = 0
        for line in slot_log.read_text().split():
            depth += 1 if line == "start" else -1
            self.assertLessEqual(depth, 1, "two slot tasks at once")
        # Why a task waits: the resources it asks for.
        blocker = self.dir / "blocker.jsonl"
        blocker.write_text(json.dumps({"kind": "command", "shell": "sleep 30", "resources": {"slot": 1}}) + "\n")
        first = self.submit("--plan", str(blocker))
        second = self.submit("--plan", str(blocker))
        wait_until(lambda: self.jobs()[first]["running"] == 1, "the first slot task to start")
        self.assertIn("task 0: asks for slot=1, which is not free (slot 1 of 1 held)",
                      self.client("explain", str(second), "0", check=True).stdout)
        self.assertIn("asks for slot=1, which is not free", self.client("status", str(second), check=True).stdout)
        self.assertIn("task 0: running on a worker", self.client("explain", str(first), "0", check=True).stdout)
        for job in (first, second):
            self.client("cancel", str(job), check=True)
        self.stop()

    def test_tasks_of_a_job_wait_for_their_after_and_a_failed_ones_dependents_are_not_run(self):
        self.start(workers=4)
        order = self.dir / "order"
        lines = [
            {"kind": "command", "shell": f"sleep 0.3; echo a >> {order}"},
            {"kind": "command", "shell": f"echo b >> {order}", "after": [0]},
            {"kind": "command", "shell": "exit 3"},
            {"kind": "command", "shell": f"echo never >> {order}", "after": [2]},
            {"kind": "command", "shell": f"echo never >> {order}", "after": [1, 3]},
            {"kind": "command", "shell": f"echo c >> {order}", "after": [1]},
        ]
        plan = self.dir / "plan.jsonl"
        plan.write_text("".join(json.dumps(line) + "\n" for line in lines))
        job = self.submit("--plan", str(plan))
        wait_until(lambda: self.jobs()[job]["ok"] + self.jobs()[job]["failed"] >= 1, "a first result")
        result = self.client("wait", str(job))
        self.assertEqual(result.returncode, 1)
        self.assertEqual(order.read_text().split(), ["a", "b", "c"])
        by_id = {line["id"]: line for line in map(json.loads, result.stdout.splitlines())}
        self.assertEqual(sorted(by_id), list(range(6)))
        self.assertEqual([by_id[i]["ok"] for i in range(6)], [True, True, False, False, False, True])
        self.assertIn("not run: dependency 2 failed", by_id[3]["error"])
        self.assertIn("not run: dependency 3 failed", by_id[4]["error"])
        self.check_journal(job, {0: True, 1: True, 2: False, 3: False, 4: False, 5: True})
        # Why a task waits: the tasks it waits for.
        chain = self.dir / "chain.jsonl"
        chain.write_text(json.dumps({"kind": "command", "shell": "sleep 30"}) + "\n" +
                         json.dumps({"kind": "sleep", "seconds": 0, "after": [0]}) + "\n")
        held = self.submit("--plan", str(chain))
        wait_until(lambda: self.jobs()[held]["running"] == 1, "the first task to start")
        self.assertIn("task 1: waits for task(s) 0 of this job to end ok",
                      self.client("explain", str(held), "1", check=True).stdout)
        self.assertIn("1 task(s) wait for other tasks of this job", self.client("status", str(held), check=True).stdout)
        self.client("cancel", str(held), check=True)
        self.assertEqual(self.client("wait", "-q", str(held)).returncode, 1)
        self.stop()

    def test_tasks_waiting_for_others_stay_waiting_across_a_kill_9(self):
        server = self.start(workers=2)
        lines = [{"kind": "command", "shell": "exit 1"}, {"kind": "command", "shell": "sleep 30"},
                 {"kind": "sleep", "seconds": 0, "after": [0]}, {"kind": "sleep", "seconds": 0, "after": [1]}]
        plan = self.dir / "plan.jsonl"
        plan.write_text("".join(json.dumps(line) + "\n" for line in lines))
        job = self.submit("--plan", str(plan))
        wait_until(lambda: self.jobs()[job]["failed"] >= 2 and self.jobs()[job]["running"] == 1, "task 0 to fail")
        pids = descendants(server.pid)
        self.all_pids.update(pids)
        server.kill()
        server.wait()
        wait_until(lambda: not any(alive(pid) for pid in pids), "the workers to die with the server", timeout=10)
        self.start(workers=2)
        self.assertEqual(self.jobs()[job]["running"], 1)  # task 1 again; 3 waits for it
        self.assertIn("task 3: waits for task(s) 1", self.client("explain", str(job), "3", check=True).stdout)
        self.client("cancel", str(job), check=True)
        result = self.client("wait", str(job))
        by_id = {line["id"]: line for line in map(json.loads, result.stdout.splitlines())}
        self.assertEqual(sorted(by_id), [0, 1, 2, 3])
        self.assertIn("not run: dependency 0 failed", by_id[2]["error"])
        self.check_journal(job, {0: False, 1: False, 2: False, 3: False})
        self.stop()

    def test_logs_sums_up_a_jobs_journal(self):
        self.start(workers=2)
        job = self.submit("--task", "fail", "--tasks", "3")
        self.assertEqual(self.client("wait", "-q", str(job)).returncode, 1)
        result = self.client("logs", str(job), check=True)
        self.assertIn("3 task(s) in the journal, 0 ok, 3 failed", result.stdout)
        report = json.loads(self.client("logs", str(job), "--json", check=True).stdout)
        self.assertEqual(report, json.loads(subprocess.run(
            [COORDINATOR, "report", "--json", str(self.state / "jobs" / str(job) / "results.jsonl")],
            capture_output=True, text=True, check=True).stdout))
        self.assertIn("task 1", self.client("logs", str(job), "--task", "1", check=True).stdout)
        result = self.client("logs", "99")
        self.assertEqual(result.returncode, 2)
        self.assertIn("no job 99", result.stderr)
        self.stop()

    def test_logs_reads_the_journal_off_the_servers_loop(self):
        self.start(workers=1)
        job = self.submit("--task", "sleep", "--tasks", "2")
        self.assertEqual(self.client("wait", "-q", str(job)).returncode, 0)
        # The job's journal made a FIFO: `logs` blocks reading it until this test writes it,
        # and meanwhile the server answers every other client (on its loop, it answered none).
        journal = self.state / "jobs" / str(job) / "results.jsonl"
        text = journal.read_bytes()
        journal.unlink()
        os.mkfifo(journal)
        logs = subprocess.Popen([COORDINATOR, "logs", "--socket", str(self.socket), str(job)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        writer = []

        def server_reads():  # a writer may open a FIFO without waiting only once a reader has
            try:
                writer.append(os.open(journal, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                return False
            return True

        wait_until(server_reads, "the server to open the journal")
        try:
            result = self.client("status")  # the server reads the FIFO, which has nothing yet
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertEqual(self.client("wait", "-q", str(job)).returncode, 0)
        finally:
            os.set_blocking(writer[0], True)
            os.write(writer[0], text)
            os.close(writer[0])
        out, err = logs.communicate(timeout=WAIT_S)
        self.assertEqual(logs.returncode, 0, err)
        self.assertIn("2 task(s) in the journal, 2 ok", out)
        self.stop()

    def test_tcp_clients_with_the_key_can_submit_and_others_are_refused(self):
        keys, other = self.dir / "keys", self.dir / "other"
        for where in (keys, other):
            subprocess.run([COORDINATOR, "keygen", str(where)], check=True, capture_output=True, timeout=WAIT_S)
        # Never plaintext: --listen-clients without --keys is refused.
        result = subprocess.run([COORDINATOR, "serve", "--socket", str(self.dir / "x" / "socket"), "--listen-clients",
                                 "tcp://127.0.0.1:*"], capture_output=True, text=True, timeout=WAIT_S)
        self.assertEqual(result.returncode, 2)
        self.assertIn("--listen-clients needs --keys", result.stderr)
        self.start(workers=2, args=("--listen-clients", "tcp://127.0.0.1:*", "--keys", str(keys)))
        log = (self.dir / "server.log").read_text()
        endpoint = log.split("clients over tcp at ", 1)[1].split()[0]
        self.assertTrue(endpoint.startswith("tcp://127.0.0.1:"), log)

        def remote(*args, key_dir=keys):
            command = [COORDINATOR, args[0], "--connect", endpoint, *(["--keys", str(key_dir)] if key_dir else []),
                       *args[1:]]
            return subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S, cwd=self.dir)

        result = remote("submit", "--task", "sleep", "--tasks", "3", "--wait", "-q")
        self.assertEqual(result.returncode, 0, result.stderr)
        job = int(result.stdout.strip())
        self.assertEqual(remote("status", str(job)).returncode, 0)
        self.assertIn("3 ok", remote("logs", str(job)).stdout)
        # A worker machine's key (worker.secret, which every worker holds, even passed off as
        # client.secret) is refused on the client socket: the server's ZAP handler says so,
        # and the client says it at once, from the handshake, not after hearing nothing.
        stolen, stranger = self.dir / "stolen", self.dir / "stranger"
        for where, secret in ((stolen, keys / "worker.secret"), (stranger, other / "client.secret")):
            where.mkdir(mode=0o700)
            shutil.copy(keys / "coordinator.public", where / "coordinator.public")
            for name in ("worker.secret", "client.secret"):
                shutil.copy(secret, where / name)
                os.chmod(where / name, 0o600)
            result = remote("submit", "--task", "sleep", "--tasks", "1", key_dir=where)
            self.assertEqual(result.returncode, 1, (where, result.stderr))
            self.assertIn("refused this client (ZAP status 400)", result.stderr)
            self.assertEqual(result.stdout, "")
        self.assertIn("refused a client from", (self.dir / "server.log").read_text())
        # Another server's public key: the server closes the handshake; said at once too.
        result = remote("submit", "--task", "sleep", "--tasks", "1", key_dir=other)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertIn("closed the connection during the CURVE handshake", result.stderr)
        self.assertIn("are --keys the server's?", result.stderr)
        self.assertEqual(result.stdout, "")
        # A client directory with only a worker's key is refused before it connects.
        (stolen / "client.secret").unlink()
        result = remote("status", key_dir=stolen)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn("no client.secret", result.stderr)
        result = remote("status", key_dir=None)
        self.assertEqual(result.returncode, 2)
        self.assertIn("--connect needs --keys", result.stderr)
        self.assertEqual(list(self.jobs()), [job])
        self.stop()
        # serve refuses to admit the workers' key as a client's, and a directory with no client key.
        authorized = self.dir / "authorized"
        authorized.mkdir()
        shutil.copy(keys / "worker.public", authorized / "hostb.public")
        (other / "client.public").unlink()
        for args, text in ((["--keys", str(keys), "--authorized-clients", str(authorized)], "--authorized-clients"),
                           (["--keys", str(other)], "no client.public")):
            result = subprocess.run([COORDINATOR, "serve", "--socket", str(self.dir / "y" / "socket"),
                                     "--listen-clients", "tcp://127.0.0.1:*", *args],
                                    capture_output=True, text=True, timeout=WAIT_S)
            self.assertEqual(result.returncode, 2, (args, result.stderr))
            self.assertIn(text, result.stderr, args)

    def test_serve_retries_reach_a_download_tasks_own_tries(self):
        # A loopback HTTP server that fails every request with 500 (a transient failure, which
        # download tries again, 2 more times by default) and counts them.
        import http.server
        import threading
        hits = []

        class Failing(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Failing)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        self.addCleanup(httpd.server_close)
        self.addCleanup(httpd.shutdown)
        urls = self.dir / "urls.txt"
        urls.write_text(f"http://127.0.0.1:{httpd.server_address[1]}/a.jpg\n")
        # --retries 0: one try, not download's default of three.
        self.start(workers=1, args=("--retries", "0"))
        job = self.submit("--task", "download", "--inputs", str(urls))
        self.assertEqual(self.client("wait", "-q", str(job)).returncode, 1)
        self.assertEqual(hits, ["/a.jpg"])
        self.assertIn("HTTP 500", final_results(self.state / "jobs" / str(job) / "results.jsonl")[0]["error"])
        self.stop()

    def test_a_jobs_tasks_hold_the_peak_memory_its_tasks_took(self):
        # Workers with mem=200 (MiB); each task of the job takes some 70 MiB (a Python process
        # holding 50 MiB). Task 0 runs first (the others are "after" it) and its peak is
        # recorded; each next task then holds as much of the 200, so at most 2 run at once on
        # the 4 workers.
        self.start(workers=4, args=("--worker-resources", "mem=200"))
        log = self.dir / "log"
        shell = (f"echo start >> {log}; python3 -c 'import time; b = bytearray(50 << 20); "
                 f"b[::4096] = bytes(len(b) // 4096); time.sleep(0.4)'; echo end >> {log}")
        plan = self.dir / "mem.jsonl"
        plan.write_text("".join(json.dumps({"kind": "command", "shell": shell, **({"after": [0]} if i else {})}) + "\n"
                                for i in range(7)))
        job = self.submit("--plan", str(plan))
        self.assertEqual(self.client("wait", "-q", str(job)).returncode, 0)
        depth, most = 0, 0
        for line in log.read_text().split():
            depth += 1 if line == "start" else -1
            most = max(most, depth)
        self.assertLess(most, 4)  # not the 4 workers' worth
        peak = self.jobs()[job]["peak_mem_mib"]
        self.assertGreaterEqual(peak, 50)
        self.assertLess(peak, 200)
        self.assertLessEqual(most, 200 // peak)
        self.stop()

    def test_the_live_view_shows_the_servers_workers_and_every_jobs_tasks(self):
        import re
        import urllib.request
        self.start(workers=2, args=("--ui", "127.0.0.1:0"))
        found = re.search(r"live view: (http://127\.0\.0\.1:\d+/[0-9a-f]{32}/)\n", (self.dir / "server.log").read_text())
        self.assertTrue(found, (self.dir / "server.log").read_text())
        jobs = [self.submit("--task", "sleep", "--tasks", str(n)) for n in (3, 4)]
        for job in jobs:
            self.assertEqual(self.client("wait", "-q", str(job)).returncode, 0)
        held = self.submit("--task", "sleep", "--tasks", "2", "--afternotok", str(jobs[0]))  # never runs

        def snapshot():  # the first event a page gets: the whole state
            with urllib.request.urlopen(found.group(1) + "events", timeout=WAIT_S) as stream:
                for raw in stream:
                    line = raw.decode().rstrip("\n")
                    if line.startswith("data: "):
                        return json.loads(line[len("data: "):])

        wait_until(lambda: self.jobs()[held]["state"] == "skipped", "the held job to be skipped")
        modes = snapshot()["modes"]
        self.assertEqual(len(modes), 1)
        mode = modes[0]
        # What was submitted, less the skipped job's tasks, which never reach a worker.
        self.assertEqual((mode["tasks"], mode["ok"], mode["failed"], mode["running"]), (7, 7, 0, 0), mode)
        self.assertEqual({lane["name"] for lane in mode["lanes"]} - {"w1", "w2"}, set(), mode["lanes"])
        self.assertEqual(sum(bar[5] for bar in mode["bars"]), 7)
        # The jobs, newest first, and what the workers have.
        wait_until(lambda: len(snapshot().get("jobs", {}).get("jobs", [])) == 3, "the jobs on the page")
        server = snapshot()["jobs"]
        self.assertEqual([(j["job"], j["state"], j["tasks"], j["ok"]) for j in server["jobs"]],
                         [(held, "skipped", 2, 0), (jobs[1], "ok", 4, 4), (jobs[0], "ok", 3, 3)])
        self.assertEqual(server["resources"]["gpu"], 0)
        self.assertIn("cpus", server["resources"])
        self.stop()

    def live_page(self):
        """The live page's address, from the server's stderr (serve --ui)."""
        found = re.search(r"live view: (http://127\.0\.0\.1:\d+/[0-9a-f]{32}/)\n", (self.dir / "server.log").read_text())
        self.assertTrue(found, (self.dir / "server.log").read_text())
        return found.group(1)

    def page_jobs_until(self, page, what, predicate):
        """Reads one stream of the live page's events until its Jobs panel (the jobs by id)
        satisfies `predicate`, and returns it: the first event is the whole state, the next
        ones what changed."""
        import urllib.request
        deadline = time.monotonic() + WAIT_S / 2
        with urllib.request.urlopen(page + "events", timeout=WAIT_S / 2) as stream:
            for raw in stream:
                if time.monotonic() > deadline:
                    break
                line = raw.decode().rstrip("\n")
                if line.startswith("data: "):
                    event = json.loads(line[len("data: "):])
                    if "jobs" in event:
                        jobs = {j["job"]: j for j in event["jobs"]["jobs"]}
                        if predicate(jobs):
                            return jobs
        raise AssertionError(f"timed out waiting for {what}")

    def test_explain_says_a_job_of_higher_priority_goes_first(self):
        # One worker, busy with a long task: the next jobs' tasks all wait in the server.
        self.start(workers=1, args=("--ui", "127.0.0.1:0"))
        busy = self.submit("--inputs", str(self.inputs("busy", 1)), "--command", "sleep 30; : {}")
        wait_until(lambda: self.jobs()[busy]["running"] == 1, "the long task to start")
        low = self.submit("--task", "sleep", "--tasks", "4")
        high = self.submit("--task", "sleep", "--tasks", "4", "--priority", "5")
        # The worker may hold a task or two ahead of the one it runs; the next of the low job's
        # waits for the high job's, and the one after it for that one.
        why = [self.client("explain", str(low), str(task), check=True).stdout.strip() for task in range(4)]
        held = sum("prefetch" in line for line in why)
        self.assertLess(held, 3, why)
        self.assertTrue(all("prefetch" in line for line in why[:held]), why)
        self.assertEqual(why[held], f"task {held}: job {high} has priority 5, above this job's 0: its tasks go first")
        self.assertIn(f"task {held + 1}: 1 task(s) of this job go before it; the next of them: job {high} has priority",
                      why[held + 1])
        # The live page's Jobs panel says what `explain JOB` says, for each job not done.
        page = self.live_page()
        said = self.client("explain", str(low), check=True).stdout.strip().splitlines()
        jobs = self.page_jobs_until(page, "the page says why the job waits",
                                    lambda jobs: jobs.get(low, {}).get("why") == "; ".join(said))
        self.assertIn(f"job {high} has priority 5, above this job's 0", jobs[low]["why"])
        self.assertIn("1 task(s) running", jobs[busy]["why"])
        result = self.client("explain", str(low), "7")
        self.assertEqual(result.returncode, 2)
        self.assertIn(f"job {low} has no task 7", result.stderr)
        self.client("cancel", str(busy), check=True)
        for job in (low, high):
            self.assertEqual(self.client("wait", "-q", str(job)).returncode, 0)
        self.assertIn(f"job {low} is done: ok", self.client("explain", str(low), check=True).stdout)
        self.stop()

    def check_journal(self, job, expected):
        """Each task's one final line in the job's journal, ok or not as `expected` says."""
        results = final_results(self.state / "jobs" / str(job) / "results.jsonl")
        self.assertEqual(Counter(r["id"] for r in results), Counter(list(expected)))
        self.assertEqual({r["id"]: r["ok"] for r in results}, expected)

    def test_remote_workers_join_the_server_and_one_killed_loses_nothing(self):
        """serve --listen: workers started by hand (`worker --connect` with the workers' key)
        run the tasks of submitted jobs beside the local one; a kill -9 of one mid-job has its
        task run elsewhere, each task ok once; a worker with another key is refused."""
        keys, other = self.dir / "keys", self.dir / "other"
        for where in (keys, other):
            subprocess.run([COORDINATOR, "keygen", str(where)], check=True, capture_output=True, timeout=WAIT_S)
        for args, text in ((["--listen", "tcp://127.0.0.1:*"], "--listen needs --keys"),
                           (["--workers", "0"], "--workers 0 starts no worker"),
                           (["--wait-workers", "5"], "--wait-workers is for the workers of --launch"),
                           (["--keys", str(keys)], "--keys is for --listen-clients or --listen"),
                           (["--listen", "tcp://10.255.255.1:*", "--keys", str(keys)], "not an address of this machine"),
                           (["--launch", "slurm", "--workers", "2", "--listen", "tcp://127.0.0.1:*", "--keys", str(keys)],
                            "--listen cannot go with --launch slurm")):
            result = subprocess.run([COORDINATOR, "serve", "--socket", str(self.dir / "x" / "socket"), *args],
                                    capture_output=True, text=True, timeout=WAIT_S)
            self.assertEqual(result.returncode, 2, (args, result.stderr))
            self.assertIn(text, result.stderr, args)
        self.start(workers=1, args=("--listen", "tcp://127.0.0.1:*", "--keys", str(keys)))
        log = self.dir / "server.log"
        wait_until(lambda: "workers over tcp at " in log.read_text(), "the workers' endpoint on stderr")
        endpoint = re.search(r"workers over tcp at (tcp://127\.0\.0\.1:\d+): worker --connect ", log.read_text())[1]
        self.assertEqual(json.loads(self.client("status", "--json", check=True).stdout)["remote_workers"], endpoint)
        worker_bin = Path(COORDINATOR).parent / "worker"

        def worker(key_dir):
            return subprocess.Popen([str(worker_bin), "--connect", endpoint, "--keys", str(key_dir)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=self.dir)

        # Another server's worker key: refused at once, exit 1, and the server says so.
        stranger = self.dir / "stranger"
        stranger.mkdir(mode=0o700)
        shutil.copy(keys / "coordinator.public", stranger / "coordinator.public")
        shutil.copy(other / "worker.secret", stranger / "worker.secret")
        os.chmod(stranger / "worker.secret", 0o600)
        refused = worker(stranger)
        _, err = refused.communicate(timeout=WAIT_S)
        self.assertEqual(refused.returncode, 1, err)
        self.assertIn("refused this worker", err)
        wait_until(lambda: "refused a worker from" in log.read_text(), "the server's word on the refused worker")
        remotes = [worker(keys) for _ in range(2)]
        self.all_pids.update(w.pid for w in remotes)
        wait_until(lambda: log.read_text().count("remote worker ") >= 2, "both remote workers to attach")
        count = 30
        job = self.submit_commands("r", count, "sleep 0.2; : {}")
        journal = self.state / "jobs" / str(job) / "results.jsonl"
        names = {w.pid: None for w in remotes}

        def ran_on(pid):
            if not journal.exists():
                return []
            return [r for r in final_results(journal) if str(r.get("worker", "")).endswith(f"-{pid}")]

        # A result from each remote worker, then kill -9 of the first while it runs its next task.
        wait_until(lambda: all(ran_on(w.pid) for w in remotes), "a result from each remote worker")
        for w in remotes:
            names[w.pid] = ran_on(w.pid)[0]["worker"]
        remotes[0].kill()
        remotes[0].wait()
        result = self.client("wait", "-q", str(job))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.check_once(job, count)
        workers = Counter(r["worker"] for r in final_results(journal))
        self.assertIn(names[remotes[1].pid], workers)
        self.assertIn(names[remotes[0].pid], workers)
        self.assertEqual(len(workers), 3, workers)  # the local one and the two remote ones
        # The task the killed worker ran went to another worker as its second attempt.
        again = [r for r in final_results(journal) if r["attempt"] > 1]
        self.assertEqual(len(again), 1, again)
        self.assertNotEqual(again[0]["worker"], names[remotes[0].pid])
        self.assertRegex(log.read_text(), rf"worker {names[remotes[0].pid]} .*; task {again[0]['id']} \(attempt 1\) "
                                          r"was running; requeueing")
        # The survivor is told to stop with the server.
        self.stop()
        self.assertEqual(remotes[1].wait(timeout=WAIT_S), 0)

    def test_a_server_of_remote_workers_only_holds_tasks_until_one_attaches(self):
        """serve --workers 0 --listen: a job submitted before any worker waits (no fork server,
        no local worker), and runs once one attaches; `status` says where workers connect."""
        keys = self.dir / "keys"
        subprocess.run([COORDINATOR, "keygen", str(keys)], check=True, capture_output=True, timeout=WAIT_S)
        self.start(workers=0, args=("--listen", "tcp://127.0.0.1:*", "--keys", str(keys)))
        self.assertEqual(descendants(self.server.pid), [])
        log = self.dir / "server.log"
        wait_until(lambda: "workers over tcp at " in log.read_text(), "the workers' endpoint on stderr")
        endpoint = re.search(r"workers over tcp at (tcp://127\.0\.0\.1:\d+): ", log.read_text())[1]
        self.assertIn(f", remote workers at {endpoint}, ", self.client("status", check=True).stdout)
        job = self.submit_commands("w", 4, "echo {}")
        status = self.jobs()[job]
        self.assertEqual((status["state"], status["running"], status["ok"], status["failed"]), ("waiting", 0, 0, 0))
        remote = subprocess.Popen([str(Path(COORDINATOR).parent / "worker"), "--connect", endpoint, "--keys", str(keys)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir)
        self.all_pids.add(remote.pid)
        result = self.client("wait", str(job))
        self.assertEqual(result.returncode, 0, result.stderr)
        self.check_once(job, 4)
        self.assertEqual({json.loads(line)["worker"] for line in result.stdout.splitlines()}, {f"{os.uname().nodename}-{remote.pid}"})
        self.stop()
        self.assertEqual(remote.wait(timeout=WAIT_S), 0)

    def test_every_subcommand_has_help(self):
        for command in ("serve", "submit", "status", "jobs", "wait", "cancel", "explain", "logs"):
            result = subprocess.run([COORDINATOR, command, "--help"], capture_output=True, text=True, timeout=WAIT_S)
            self.assertEqual(result.returncode, 0, command)
            self.assertIn("--socket", result.stdout)


if __name__ == "__main__":
    unittest.main()
