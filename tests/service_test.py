#!/usr/bin/env python3
"""`coordinator serve` and its clients (submit, status, jobs, wait, cancel), all real processes:
a server with real workers, clients that talk to it over its socket. Three jobs at once on
four workers, each task ok exactly once; a kill -9 of the server mid-job and a restart that
loses nothing, with a `wait` that outlives it; a second local user refused; every process
gone at the end.

TASKFARM_COORDINATOR names the coordinator binary (CTest sets it)."""

import json
import os
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

    def start(self, workers=4, files=None):
        log = open(self.dir / "server.log", "ab")
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))) if files else None
        self.server = subprocess.Popen(
            [COORDINATOR, "serve", "--socket", str(self.socket), "--state", str(self.state), "--workers", str(workers)],
            stdout=log,
            stderr=log,
            preexec_fn=limit,
        )
        wait_until(lambda: self.socket.exists() and self.client("status").returncode == 0, "the server to answer")
        wait_until(lambda: len(descendants(self.server.pid)) >= workers + 1, "the workers")
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
        self.assertEqual(self.client("status").returncode, 0)
        # Values that cannot be right exit 2 naming the flag, before anything reaches the server.
        plan = self.dir / "after.jsonl"
        plan.write_text('{"kind":"sleep","seconds":0}\n{"kind":"sleep","seconds":0,"after":[0]}\n')
        gpu = self.dir / "gpu.jsonl"
        gpu.write_text('{"kind":"sleep","seconds":0,"resources":{"slot":1}}\n')
        for args, text in ((["submit", "--task", "sleep", "--task-timeout", "nan"], "--task-timeout"),
                           (["submit", "--task", "sleep", "--after", "-1"], "--after"),
                           (["submit", "--task", "sleep", "--afterok", "1,,2"], "--afterok"),
                           (["wait", "-1"], "JOB"),
                           (["submit", "--plan", str(plan)], "after"),
                           (["submit", "--plan", str(gpu)], "resources")):
            result = self.client(*args)
            self.assertEqual(result.returncode, 2, (args, result.stderr))
            self.assertIn(text, result.stderr, args)
        for args, text in ((["--drain-timeout", "nan"], "--drain-timeout"), (["--socket", ""], "--socket")):
            result = subprocess.run([COORDINATOR, "serve", "--state", str(self.dir / "other"), *args],
                                    capture_output=True, text=True, timeout=WAIT_S)
            self.assertEqual(result.returncode, 2, (args, result.stderr))
            self.assertIn(text, result.stderr, args)
        self.assertEqual(self.client("status").returncode, 0)
        self.stop()

    def submit(self, *args):
        result = self.client("submit", *args, check=True, cwd=self.dir)
        return int(result.stdout.strip())

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

    def test_every_subcommand_has_help(self):
        for command in ("serve", "submit", "status", "jobs", "wait", "cancel"):
            result = subprocess.run([COORDINATOR, command, "--help"], capture_output=True, text=True, timeout=WAIT_S)
            self.assertEqual(result.returncode, 0, command)
            self.assertIn("--socket", result.stdout)


if __name__ == "__main__":
    unittest.main()
