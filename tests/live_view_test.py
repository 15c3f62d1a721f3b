#!/usr/bin/env python3
"""coordinator --ui, for real: runs of the built coordinator serve their live page, which a
headless Chromium (Debian's chromium) loads; its DOM must show the lanes and counts the
journal has, a hostile error text as text only, and a screenshot must come out. The event
stream is also read with urllib while a run goes on, and its counts checked against the
journal. Without chromium the browser tests fail under CI=true (CI must not pass without
having run them) and are skipped elsewhere.

TASKFARM_COORDINATOR names the coordinator binary (CTest sets it)."""

import html.parser
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import unittest
import urllib.error
import urllib.request

COORDINATOR = os.environ.get("TASKFARM_COORDINATOR", "coordinator")
# Would run script if it became markup; as text it is harmless.
HOSTILE = "<img src=x onerror=document.title='pwned'>"


def chromium_or_skip(test):
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI") == "true":
        test.fail("chromium is not installed (scripts/test installs it): the live view cannot be tested in a browser")
    test.skipTest("chromium is not installed (scripts/test installs it)")


class Dom(html.parser.HTMLParser):
    """The parts of the dumped DOM the tests check."""

    def __init__(self):
        super().__init__()
        self.tags = []            # every start tag's name
        self.panels = {}          # mode -> {"counts": {key: text}, "lanes": [worker], "bars": n}
        self.failures = []        # text of each li.failure
        self.table_modes = []     # data-mode of each comparison table row
        self._mode = None
        self._count = None
        self._failure = None
        self._text = {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append(tag)
        classes = (a.get("class") or "").split()
        if tag == "section" and "panel" in classes:
            self._mode = a["data-mode"]
            self.panels[self._mode] = {"counts": {}, "lanes": [], "bars": 0}
        elif tag == "span" and "count" in classes and self._mode and "data-count" in a:
            self._count = a["data-count"]
            self.panels[self._mode]["counts"][self._count] = ""
        elif tag == "g" and "lane" in classes and self._mode:
            self.panels[self._mode]["lanes"].append(a["data-worker"])
        elif tag == "rect" and "bar" in classes and "running" not in classes and self._mode:
            self.panels[self._mode]["bars"] += int(a.get("data-tasks", "0"))
        elif tag == "li" and "failure" in classes:
            self._failure = ""
        elif tag == "tr" and "data-mode" in a:
            self.table_modes.append(a["data-mode"])

    def handle_endtag(self, tag):
        if tag == "span" and self._count:
            self._count = None
        elif tag == "li" and self._failure is not None:
            self.failures.append(self._failure)
            self._failure = None

    def handle_data(self, data):
        if self._count:
            self.panels[self._mode]["counts"][self._count] += data
        if self._failure is not None:
            self._failure += data


class LiveView(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="taskfarm-ui-test-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.journal = os.path.join(self.dir, "journal.jsonl")

    def start(self, args, linger=60):
        """Starts a run with --ui on a free port; returns (process, url)."""
        self.stderr_path = os.path.join(self.dir, "stderr.txt")
        stderr = open(self.stderr_path, "w")
        self.addCleanup(stderr.close)
        command = [COORDINATOR, "--ui", "127.0.0.1:0", "--ui-linger", str(linger), "--results", self.journal,
                   "--progress", "never", *args]
        process = subprocess.Popen(command, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        self.addCleanup(self.reap, process)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = re.search(r"live view: (http://127\.0\.0\.1:\d+/[0-9a-f]{32}/)\n", self.read_stderr())
            if found:
                return process, found.group(1)
            self.assertIsNone(process.poll(), self.read_stderr())
            time.sleep(0.02)
        self.fail("no URL on stderr: " + self.read_stderr())

    def reap(self, process):
        if process.poll() is None:
            process.kill()
        process.wait()

    def read_stderr(self):
        with open(self.stderr_path) as f:
            return f.read()

    def wait_until_over(self, process):
        deadline = time.monotonic() + 90
        while "the run is over" not in self.read_stderr():
            self.assertIsNone(process.poll(), self.read_stderr())
            self.assertLess(time.monotonic(), deadline, self.read_stderr())
            time.sleep(0.05)

    def journal_by_mode(self):
        modes = {}
        with open(self.journal) as f:
            for line in f:
                entry = json.loads(line)
                mode = modes.setdefault(entry["mode"], {"ok": 0, "failed": 0, "workers": set(), "errors": []})
                mode["ok" if entry["ok"] else "failed"] += 1
                mode["workers"].add(entry["worker"])
                if not entry["ok"]:
                    mode["errors"].append(entry["error"])
        return modes

    def chromium(self, url, *flags):
        browser = chromium_or_skip(self)
        profile = os.path.join(self.dir, "chromium-profile")
        # --virtual-time-budget: the page's script runs and its event stream is read (the run
        # is over, so the stream ends) before the DOM is dumped or the picture taken.
        done = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               f"--user-data-dir={profile}", "--virtual-time-budget=5000", *flags, url],
                              capture_output=True, text=True, timeout=120, cwd=self.dir)
        self.assertEqual(done.returncode, 0, done.stderr[-3000:])
        return done.stdout

    def hostile_run(self):
        inputs = os.path.join(self.dir, "inputs.txt")
        with open(inputs, "w") as f:
            f.write(f"ok\nok\n{HOSTILE}\nok\n{HOSTILE} again\nok\n")
        # A line that is not "ok" fails with its text as the error (the last line of stderr).
        return self.start(["--command", "test {} = ok || { echo {} >&2; exit 3; }", "--inputs", inputs,
                           "--mode", "sequential,threads,processes", "--workers", "2"])

    def test_the_page_shows_the_journal_and_hostile_text_only_as_text(self):
        chromium_or_skip(self)
        process, url = self.hostile_run()
        self.wait_until_over(process)
        dom_text = self.chromium(url, "--dump-dom")
        dom = Dom()
        dom.feed(dom_text)
        journal = self.journal_by_mode()
        self.assertEqual(sorted(dom.panels), sorted(journal))
        expected_lanes = {"sequential": {"seq"}, "threads": {"t1", "t2"}, "processes": {"w1", "w2"}}
        for mode, want in journal.items():
            panel = dom.panels[mode]
            self.assertEqual(panel["counts"]["ok"], str(want["ok"]), mode)
            self.assertEqual(panel["counts"]["failed"], str(want["failed"]), mode)
            self.assertEqual(panel["counts"]["done"], f"{want['ok'] + want['failed']} / 6", mode)
            self.assertEqual(panel["counts"]["running"], "0", mode)
            self.assertEqual(panel["counts"]["queued"], "0", mode)
            self.assertLessEqual(want["workers"], set(panel["lanes"]), mode)
            self.assertLessEqual(set(panel["lanes"]), expected_lanes[mode], mode)
            self.assertEqual(panel["bars"], want["ok"] + want["failed"], mode)  # each task in a bar
        self.assertEqual(sorted(dom.table_modes), sorted(journal))
        # The hostile text is on the page as text, in every failure, and nothing was injected.
        self.assertEqual(len(dom.failures), sum(m["failed"] for m in journal.values()))
        for failure in dom.failures:
            self.assertIn(HOSTILE, failure)
        self.assertIn("&lt;img src=x onerror=", dom_text)
        self.assertNotIn("img", dom.tags)
        self.assertIn("<title>taskfarm: live view</title>", dom_text)
        # Ctrl-C ends the serving; the exit status is the run's (tasks failed: 1), not 130.
        process.send_signal(signal.SIGINT)
        self.assertEqual(process.wait(timeout=30), 1, self.read_stderr())

    def test_a_screenshot_of_the_page_comes_out(self):
        chromium_or_skip(self)
        process, url = self.hostile_run()
        self.wait_until_over(process)
        picture = os.path.join(self.dir, "live.png")
        self.chromium(url, "--window-size=1200,900", f"--screenshot={picture}", "--hide-scrollbars")
        with open(picture, "rb") as f:
            data = f.read()
        self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
        width, height = struct.unpack(">II", data[16:24])
        self.assertEqual((width, height), (1200, 900))
        # A blank page compresses to a few KB; lanes, bars and text do not.
        self.assertGreater(len(data), 20_000)
        process.send_signal(signal.SIGINT)
        self.assertEqual(process.wait(timeout=30), 1)

    def read_events(self, url):
        """Reads the event stream to its end: the list of (event, data)."""
        events = []
        with urllib.request.urlopen(url + "events", timeout=60) as stream:
            self.assertEqual(stream.headers.get_content_type(), "text/event-stream")
            event, data = None, None
            for raw in stream:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    event = line[len("event: "):]
                elif line.startswith("data: "):
                    data = json.loads(line[len("data: "):])
                elif line == "" and event:
                    events.append((event, data))
                    if event == "end":
                        break
                    event, data = None, None
        return events

    def test_the_event_stream_counts_what_the_journal_has(self):
        process, url = self.start(["--task", "sleep", "--tasks", "24", "--duration", "0.05", "--workers", "3",
                                   "--mode", "threads,processes"])
        events = self.read_events(url)
        self.assertEqual(events[-1][0], "end")
        states = [data for event, data in events if event == "state"]
        self.assertFalse(states[0]["finished"])  # read while the run went on
        self.assertTrue(states[-1]["finished"])
        # Apply the updates as the page does: values by mode, lanes and bars by index.
        modes = {}
        running_seen = False
        for state in states:
            for update in state["modes"]:
                mode = modes.setdefault(update["i"], {"lanes": {}, "bars": {}})
                mode.update({k: update[k] for k in ("name", "tasks", "ok", "failed", "running", "ended")})
                for lane in update["lanes"]:
                    mode["lanes"][lane["i"]] = lane
                    running_seen |= lane["running"] is not None
                for bar in update["bars"]:
                    mode["bars"][bar[0]] = bar
        self.assertTrue(running_seen, "no task was ever shown running")
        journal = self.journal_by_mode()
        self.assertEqual(sorted(m["name"] for m in modes.values()), sorted(journal))
        for mode in modes.values():
            want = journal[mode["name"]]
            self.assertEqual((mode["ok"], mode["failed"], mode["tasks"]), (want["ok"], want["failed"], 24), mode["name"])
            self.assertTrue(mode["ended"])
            self.assertEqual(mode["running"], 0)
            self.assertEqual(sum(bar[5] for bar in mode["bars"].values()), 24, mode["name"])
            self.assertLessEqual(want["workers"], {lane["name"] for lane in mode["lanes"].values()})
            self.assertTrue(all(lane["running"] is None for lane in mode["lanes"].values()))
        where = {lane["name"]: lane["where"] for m in modes.values() for lane in m["lanes"].values()}
        self.assertRegex(where["w1"], r"^this machine, pid \d+$")
        self.assertRegex(where["t1"], r"^this machine, coordinator pid \d+$")
        reports = states[-1]["reports"]
        self.assertEqual([r["mode"] for r in reports], ["threads", "processes"])
        # Another page gets the whole final state at once; the secret path is needed.
        again = self.read_events(url)
        self.assertTrue(again[0][1]["finished"])
        self.assertEqual(sum(m["ok"] for m in again[0][1]["modes"]), 48)
        base = url.split("/")[:3]
        with self.assertRaises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen("/".join(base) + "/events", timeout=10)
        self.assertEqual(refused.exception.code, 404)
        process.send_signal(signal.SIGTERM)
        self.assertEqual(process.wait(timeout=30), 0)

    def test_linger_ends_by_itself(self):
        process, url = self.start(["--task", "sleep", "--tasks", "2", "--duration", "0", "--mode", "threads"],
                                  linger=0.5)
        self.assertEqual(process.wait(timeout=60), 0, self.read_stderr())
        self.assertIn("for 0.5 s (--ui-linger)", self.read_stderr())

    def test_a_port_in_use_is_exit_2_naming_ui(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            done = subprocess.run([COORDINATOR, "--ui", f"127.0.0.1:{port}", "--tasks", "1", "--duration", "0"],
                                  capture_output=True, text=True, timeout=60, cwd=self.dir)
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn(f"--ui: cannot listen on 127.0.0.1:{port}: Address already in use", done.stderr)

    def test_addresses_that_listen_refuses_are_refused(self):
        for value, message in [("localhost:8080", "IPv4 address of this machine"),
                               ("192.0.2.1:8080", "is not an address of this machine"),
                               ("127.0.0.1:70000", "is not [ADDRESS:]PORT"),
                               ("8080x", "is not [ADDRESS:]PORT")]:
            done = subprocess.run([COORDINATOR, "--ui", value, "--tasks", "1"], capture_output=True, text=True,
                                  timeout=60, cwd=self.dir)
            self.assertEqual(done.returncode, 2, value)
            self.assertIn("--ui", done.stderr, value)
            self.assertIn(message, done.stderr, value)
        done = subprocess.run([COORDINATOR, "--ui-linger", "5", "--tasks", "1"], capture_output=True, text=True,
                              timeout=60, cwd=self.dir)
        self.assertEqual(done.returncode, 2)
        self.assertIn("--ui-linger", done.stderr)


if __name__ == "__main__":
    unittest.main()
