#!/usr/bin/env python3
"""coordinator --ui against other local users: the live view can never stop, slow or crash
the run. Real runs of the built coordinator; the "attackers" are real sockets opened by a
second process, run as another user (nobody, through setpriv) when the tests run as root.
They hold idle connections, trickle requests a byte at a time, or ask for pages without the
token, while the test checks the run's exit status, its table, that it exits soon after its
last task, and that the owner (who has the URL) still gets the page. No browser needed.

TASKFARM_COORDINATOR names the coordinator binary (CTest sets it)."""

import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

COORDINATOR = os.environ.get("TASKFARM_COORDINATOR", "coordinator")
# A common default soft limit on open files; the machine's may be higher.
NOFILE = 1024

# The attacker: opens COUNT connections to 127.0.0.1:PORT and keeps that many open for SECONDS,
# opening a new one for each the server closes. KIND idle: they send nothing. KIND slow: each
# sends a request line without the token one byte every 0.5 s. KIND prefix: each sends "GET /"
# and then nothing (a token could still follow). Prints "ready" once the first COUNT
# connections are made, and at the end how many connections the server closed.
ATTACKER = r"""
import resource, select, socket, sys, time
port, kind, count, seconds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 100)), hard))
request = b"GET /not-the-token/events HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 4000
conns = {}
closed = 0
def open_one():
    s = socket.socket()
    s.settimeout(1)  # one at a time, as the server accepts them; a full backlog holds us up 1 s at most
    try:
        s.connect(("127.0.0.1", port))
    except OSError:
        s.close()
        return
    s.setblocking(False)
    conns[s] = 0
for _ in range(count):
    open_one()
if kind == "prefix":
    time.sleep(0.5)
    for s in list(conns):
        try:
            s.send(b"GET /")
        except OSError:
            pass
print("ready", flush=True)
end = time.monotonic() + seconds
while time.monotonic() < end:
    poller = select.poll()
    by_fd = {s.fileno(): s for s in conns}
    for fd in by_fd:
        poller.register(fd, select.POLLIN)
    for fd, _ in poller.poll(500):
        s = by_fd[fd]
        try:
            data = s.recv(4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if not data:
            closed += 1
            del conns[s]
            s.close()
            open_one()
    if kind == "slow":
        for s in list(conns):
            try:
                sent = s.send(request[conns[s]:conns[s] + 1])
                conns[s] += sent
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                closed += 1
                del conns[s]
                s.close()
                open_one()
print("closed", closed, flush=True)
"""


def as_another_user():
    """The command prefix that runs a program as nobody (root, or passwordless sudo), or None."""
    if not shutil.which("setpriv"):
        return None
    setpriv = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    if os.geteuid() == 0:
        return setpriv
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"], capture_output=True).returncode == 0:
        return ["sudo", "-n", *setpriv]
    return None


def attacker_command(port, kind, count, seconds):
    """As nobody when we can (another local user), else as ourselves."""
    python = sys.executable
    prefix = as_another_user()
    if prefix:
        # Another user cannot read root's home, where a pyenv python may live.
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else python
        return [*prefix, python, "-c", ATTACKER, str(port), kind, str(count), str(seconds)]
    return [python, "-c", ATTACKER, str(port), kind, str(count), str(seconds)]


def limit_open_files(count):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(count, hard), hard))


class LiveViewDoor(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="taskfarm-ui-door-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.journal = os.path.join(self.dir, "journal.jsonl")

    def start(self, args, linger=None, nofile=NOFILE):
        """Starts a run with --ui on a free port (lingering `linger` s; None: until a signal), open files
        limited to `nofile`; returns (process, url, port)."""
        self.stderr_path = os.path.join(self.dir, "stderr.txt")
        self.stdout_path = os.path.join(self.dir, "stdout.txt")
        stderr = open(self.stderr_path, "w")
        stdout = open(self.stdout_path, "w")
        self.addCleanup(stderr.close)
        self.addCleanup(stdout.close)
        command = [COORDINATOR, "--ui", "127.0.0.1:0", "--results", self.journal, "--progress", "never", *args]
        if linger is not None:
            command += ["--ui-linger", str(linger)]
        process = subprocess.Popen(command, cwd=self.dir, stdout=stdout, stderr=stderr,
                                   preexec_fn=lambda: limit_open_files(nofile))
        self.addCleanup(self.reap, process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.search(r"live view: (http://127\.0\.0\.1:(\d+)/[0-9a-f]{32}/)\n", self.read(self.stderr_path))
            if found:
                return process, found.group(1), int(found.group(2))
            self.assertIsNone(process.poll(), self.read(self.stderr_path))
            time.sleep(0.02)
        self.fail("no URL on stderr: " + self.read(self.stderr_path))

    def attack(self, port, kind, count, seconds):
        """Starts an attacker and waits until its connections are made."""
        attacker = subprocess.Popen(attacker_command(port, kind, count, seconds), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        self.addCleanup(self.reap, attacker)
        self.assertEqual(attacker.stdout.readline().strip(), "ready", attacker.stderr.read() if attacker.poll() else "")
        return attacker

    def reap(self, process):
        if process.poll() is None:
            process.kill()
        process.wait()

    def read(self, path):
        with open(path) as f:
            return f.read()

    def journal_counts(self):
        counts = {}
        with open(self.journal) as f:
            for line in f:
                entry = json.loads(line)
                counts[entry["mode"], entry["ok"]] = counts.get((entry["mode"], entry["ok"]), 0) + 1
        return counts

    def assert_run_complete(self, process, tasks, modes, timeout):
        code = process.wait(timeout=timeout)
        stderr = self.read(self.stderr_path)
        self.assertEqual(code, 0, stderr[-3000:])
        self.assertNotIn("Too many open files", stderr)
        # With --command the table is on stderr (stdout holds the commands' output alone).
        table = self.read(self.stdout_path) + stderr
        for mode in modes:
            self.assertRegex(table, rf"(?m)^{mode}\s+\d+\s+{tasks}\s+{tasks}\s+0\s", table)
        self.assertEqual(self.journal_counts(), {(mode, True): tasks for mode in modes})

    def test_many_idle_connections_from_another_user_do_not_crash_the_run(self):
        # More connections than the coordinator may open files, made while the first mode
        # runs: the page must not take the descriptors the next one needs (ZeroMQ aborts when
        # it cannot make a socket).
        # The tasks wait for the file "go", made once the connections are.
        inputs = os.path.join(self.dir, "inputs.txt")
        with open(inputs, "w") as f:
            f.write("".join(f"{i}\n" for i in range(8)))
        process, url, port = self.start(["--command", "while [ ! -e go ]; do sleep 0.05; done; echo {}", "--inputs",
                                         inputs, "--workers", "2", "--mode", "threads,processes"], linger=0, nofile=512)
        attacker = self.attack(port, "idle", 1100, 60)
        open(os.path.join(self.dir, "go"), "w").close()
        self.assert_run_complete(process, 8, ["threads", "processes"], timeout=120)
        attacker.kill()

    def test_slow_clients_do_not_hold_a_finished_run(self):
        # Connections that trickle a request a byte at a time, and ones that send "GET /" and
        # stop, are still open when the run ends: with --ui-linger 0 it exits all the same.
        process, url, port = self.start(["--task", "sleep", "--tasks", "6", "--duration", "0.2", "--mode", "threads"],
                                        linger=0)
        slow = self.attack(port, "slow", 10, 120)
        prefix = self.attack(port, "prefix", 10, 120)
        # The run takes 1.2 s; 20 s is far past it on a loaded machine and far short of 120.
        self.assert_run_complete(process, 6, ["threads"], timeout=20)
        for attacker in (slow, prefix):
            self.assertIsNone(attacker.poll())  # they were still at it when the run exited
            attacker.kill()

    def test_the_owner_gets_the_page_while_others_hold_connections(self):
        if not as_another_user():
            # Connections of the owner's own user share the owner's slots: only another user's are kept out.
            self.skipTest("needs a second user: run as root, or with passwordless sudo, and setpriv")
        process, url, port = self.start(["--task", "sleep", "--tasks", "2", "--duration", "0", "--mode", "threads"])
        attackers = [self.attack(port, "slow", 20, 120), self.attack(port, "prefix", 20, 120),
                     self.attack(port, "idle", 300, 120)]
        for _ in range(10):  # each time, with the others' connections open
            with urllib.request.urlopen(url, timeout=20) as page:
                self.assertEqual(page.status, 200)
                self.assertIn(b"<title>taskfarm: live view</title>", page.read())
            with urllib.request.urlopen(url + "events", timeout=20) as stream:
                self.assertEqual(stream.headers.get_content_type(), "text/event-stream")
                first = b""
                while not first.endswith(b"\n\n"):
                    first += stream.readline()
                self.assertIn(b"event: state", first)
        for attacker in attackers:
            self.assertIsNone(attacker.poll())
        process.send_signal(signal.SIGINT)
        self.assertEqual(process.wait(timeout=30), 0, self.read(self.stderr_path))

    def test_a_request_without_the_token_is_closed_at_once(self):
        process, url, port = self.start(["--task", "sleep", "--tasks", "1", "--duration", "0", "--mode", "threads"])
        token = url.split("/")[3]
        wrong = "0" * 32 if token != "0" * 32 else "1" * 32
        last = "0" if token[-1] != "0" else "1"  # all but the last digit right: judged once all of it is there
        for path in ["/", "/events", f"/{wrong}/", f"/{token[:31]}{last}/events", f"/{token[:31]}x/events",
                     f"/{token}x", "/../" + token + "/"]:
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                # The request line without its end, then a byte a second: the server must not
                # wait for the rest of the request.
                s.sendall(f"GET {path}".encode())
                s.settimeout(1)
                answer = b""
                for _ in range(30):
                    try:
                        data = s.recv(4096)
                    except socket.timeout:
                        try:
                            s.send(b"x")
                        except OSError:
                            break
                        continue
                    except OSError:
                        break
                    if not data:
                        break
                    answer += data
                else:
                    self.fail(f"{path}: still open after 30 s of a byte a second")
                self.assertTrue(answer == b"" or answer.startswith(b"HTTP/1.1 404"), answer[:200])
        process.send_signal(signal.SIGINT)
        self.assertEqual(process.wait(timeout=30), 0, self.read(self.stderr_path))

    def test_sigterm_during_the_linger_ends_it_at_once(self):
        process, url, port = self.start(["--task", "sleep", "--tasks", "2", "--duration", "0", "--mode", "threads"],
                                        linger=600)
        deadline = time.monotonic() + 60
        while "the run is over" not in self.read(self.stderr_path):
            self.assertLess(time.monotonic(), deadline, self.read(self.stderr_path))
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        # The drain's 25 s would be the run's; there is nothing left to drain.
        self.assertEqual(process.wait(timeout=15), 0, self.read(self.stderr_path))
        self.assertNotIn("draining", self.read(self.stderr_path))


class UiMessages(unittest.TestCase):
    """Every error about --ui suggests a value that --ui accepts: taken from the message, it runs."""

    def run_ui(self, value, *more):
        """Runs one task with --ui VALUE; a linger that --ui-linger asks for is ended by SIGTERM once it starts."""
        linger = [] if "--ui-linger" in more else ["--ui-linger", "0"]
        process = subprocess.Popen([COORDINATOR, "--ui", value, *linger, "--tasks", "1", "--duration", "0",
                                    "--mode", "threads", "--progress", "never", *more],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   cwd=tempfile.gettempdir())
        stderr = ""
        for line in process.stderr:
            stderr += line
            if "the run is over" in line:
                process.send_signal(signal.SIGTERM)
        return subprocess.CompletedProcess(process.args, process.wait(timeout=60), "", stderr)

    def suggested(self, stderr):
        """The values an error message offers (after 'e.g.' or 'such as', or after '--ui ')."""
        found = re.findall(r"--ui ([^\s,;)'\"]+)", stderr)
        for examples in re.findall(r"(?:e\.g\.|such as) ([^;)]*)", stderr):
            found += [e.strip().strip("'") for e in examples.split(",")]
        return [f.replace("PORT", "0") for f in found if f]

    def test_each_refusal_suggests_a_value_that_is_accepted(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            in_use = f"127.0.0.1:{taken.getsockname()[1]}"
            for value in ["localhost:0", "localhost:8080", "[::1]:8080", "192.0.2.1:8080", "127.0.0.1:70000",
                          "8080x", "", in_use]:
                done = self.run_ui(value)
                self.assertEqual(done.returncode, 2, (value, done.stderr))
                self.assertIn("--ui", done.stderr, value)
                self.assertNotIn("tcp://", done.stderr, value)  # that is --listen's form, not --ui's
                offered = self.suggested(done.stderr)
                self.assertTrue(offered, (value, done.stderr))
                for example in offered:
                    if example.endswith(":8080") or example == "8080":
                        example = example[:-4] + "0"  # 8080 may be taken here
                    accepted = self.run_ui(example)
                    self.assertEqual(accepted.returncode, 0, (value, example, done.stderr, accepted.stderr))

    def test_each_refusal_of_ui_linger_suggests_a_value_that_is_accepted(self):
        for value in ["-1", "abc", "1e9", ""]:
            done = subprocess.run([COORDINATOR, "--ui", "127.0.0.1:0", "--ui-linger", value, "--tasks", "1"],
                                  capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir())
            self.assertEqual(done.returncode, 2, (value, done.stderr))
            offered = re.findall(r"--ui-linger ([^\s,;)'\"]+)", done.stderr)
            self.assertTrue(offered, (value, done.stderr))
            for example in offered:
                accepted = self.run_ui("127.0.0.1:0", "--ui-linger", example)
                self.assertEqual(accepted.returncode, 0, (value, example, accepted.stderr))


if __name__ == "__main__":
    unittest.main()
