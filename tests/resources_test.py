#!/usr/bin/env python3
"""Resources per task (docs/resources.md), for real: the built coordinator with real worker
processes and real commands, on a machine with no GPU. A named count limits how many tasks
run at once whatever the workers; a fake device list (--gpus 3,5) gives each GPU task
CUDA_VISIBLE_DEVICES of one id, never one id to two tasks at once; a request no worker can
meet stops the run before it starts, exit 2 naming FILE:LINE or the flag.

Concurrency is read from what the commands themselves saw (a count kept under flock) and
from the journal's start_s and end_s, never from how long anything took.

TASKFARM_COORDINATOR names the coordinator binary (CTest sets it)."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

COORDINATOR = os.environ.get("TASKFARM_COORDINATOR", "coordinator")

# A command that joins the tasks running now (a count under a lock, in DIR), waits until one
# other is there too (or 2 s have passed), records the most it saw, then leaves. With room for
# two at once, pairs meet; a third never does unless three run at once.
MEET = textwrap.dedent("""\
    import fcntl, os, sys, time
    d = sys.argv[1]
    def update(change):
        with open(os.path.join(d, "lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            path = os.path.join(d, "count")
            count = int(open(path).read() or 0) if os.path.exists(path) else 0
            count += change
            open(path, "w").write(str(count))
            if change > 0:
                with open(os.path.join(d, "seen"), "a") as seen:
                    seen.write(f"{count}\\n")
            return count
    update(1)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and update(0) < 2:
        time.sleep(0.01)
    with open(os.path.join(d, "seen"), "a") as seen:
        seen.write(f"{update(0)}\\n")
    update(-1)
""")


def journal(path):
    """The journal's result lines (those with an id), by id."""
    results = {}
    with open(path) as f:
        for line in f:
            entry = json.loads(line)
            if "id" in entry and not entry.get("retrying"):
                results[entry["id"]] = entry
    return results


def most_at_once(results):
    """The most tasks whose [start_s, end_s) the journal has overlapping."""
    edges = []
    for entry in results.values():
        edges.append((entry["start_s"], 1))
        edges.append((entry["end_s"], -1))
    most = running = 0
    for _, change in sorted(edges, key=lambda e: (e[0], e[1])):  # an end before a start at the same time
        running += change
        most = max(most, running)
    return most


class Resources(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.tmp = self.dir.name

    def tearDown(self):
        self.dir.cleanup()

    def run_coordinator(self, *args, timeout=120):
        return subprocess.run([COORDINATOR, *args, "-q", "--progress", "never"], capture_output=True, text=True,
                              timeout=timeout, cwd=self.tmp)

    def test_a_named_count_limits_how_many_run_at_once_on_more_workers(self):
        meet = os.path.join(self.tmp, "meet.py")
        with open(meet, "w") as f:
            f.write(MEET)
        inputs = os.path.join(self.tmp, "inputs.txt")
        with open(inputs, "w") as f:
            f.write("".join(f"{i}\n" for i in range(6)))
        run = self.run_coordinator("--command", f"{sys.executable} {meet} {self.tmp} {{}}", "--inputs", inputs,
                                   "--workers", "4", "--worker-resources", "slot=2", "--task-resources", "slot=1",
                                   "--results", "run.jsonl")
        self.assertEqual(run.returncode, 0, run.stderr)
        results = journal(os.path.join(self.tmp, "run.jsonl"))
        self.assertEqual(sorted(results), list(range(6)))
        self.assertTrue(all(entry["ok"] for entry in results.values()))
        with open(os.path.join(self.tmp, "seen")) as f:
            seen = [int(line) for line in f]
        self.assertEqual(max(seen), 2, f"the commands saw {seen}: slot=2 lets two run at once, never three")
        self.assertLessEqual(most_at_once(results), 2, results)
        self.assertGreater(len({entry["worker"] for entry in results.values()}), 1)

    def test_each_gpu_task_sees_one_of_the_listed_gpus_that_no_other_task_holds(self):
        held = os.path.join(self.tmp, "held")
        os.mkdir(held)
        # mkdir fails if another task holds the same GPU now; rmdir gives it back.
        shell = (f"mkdir {held}/$CUDA_VISIBLE_DEVICES || exit 7; echo $CUDA_VISIBLE_DEVICES; sleep 0.2; "
                 f"rmdir {held}/$CUDA_VISIBLE_DEVICES")
        plan = os.path.join(self.tmp, "plan.jsonl")
        with open(plan, "w") as f:
            for _ in range(6):
                f.write(json.dumps({"kind": "command", "shell": shell, "resources": {"gpu": 1}}) + "\n")
            f.write(json.dumps({"kind": "command", "shell": "echo none:${CUDA_VISIBLE_DEVICES-unset}"}) + "\n")
        run = self.run_coordinator("--plan", plan, "--workers", "4", "--gpus", "3,5", "--results", "run.jsonl")
        self.assertEqual(run.returncode, 0, run.stderr)
        results = journal(os.path.join(self.tmp, "run.jsonl"))
        self.assertEqual(sorted(results), list(range(7)))
        gpus = [results[i]["value"]["stdout"].strip() for i in range(6)]
        self.assertTrue(set(gpus) <= {"3", "5"}, gpus)
        self.assertEqual(len(set(gpus)), 2, f"{gpus}: both GPUs are used")
        self.assertEqual(results[6]["value"]["stdout"].strip(), "none:unset", "a task that asks for none sees none")
        self.assertLessEqual(most_at_once({i: results[i] for i in range(6)}), 2)

    def test_gpus_are_found_in_cuda_visible_devices_else_from_nvidia_smi(self):
        # A stand-in nvidia-smi first on PATH: two GPUs, one of them split by MIG.
        bin_dir = os.path.join(self.tmp, "bin")
        os.mkdir(bin_dir)
        with open(os.path.join(bin_dir, "nvidia-smi"), "w") as f:
            f.write("#!/bin/sh\n[ \"$1\" = -L ] || exit 9\n"
                    "echo 'GPU 0: NVIDIA H200 (UUID: GPU-aaaa)'\n"
                    "echo 'GPU 1: NVIDIA H200 (UUID: GPU-bbbb)'\n"
                    "echo '  MIG 1g.18gb     Device  0: (UUID: MIG-cccc)'\n")
        os.chmod(os.path.join(bin_dir, "nvidia-smi"), 0o755)
        inputs = os.path.join(self.tmp, "inputs.txt")
        with open(inputs, "w") as f:
            f.write("".join(f"{i}\n" for i in range(4)))
        base = dict(os.environ, PATH=bin_dir + os.pathsep + os.environ["PATH"])
        base.pop("CUDA_VISIBLE_DEVICES", None)
        for name, env, want in (("smi", base, {"0", "1"}), ("visible", dict(base, CUDA_VISIBLE_DEVICES="7"), {"7"})):
            run = subprocess.run([COORDINATOR, "--command", "test -n {} && echo $CUDA_VISIBLE_DEVICES",
                                  "--inputs", inputs, "--workers", "2", "--task-resources", "gpu=1",
                                  "--results", f"{name}.jsonl", "-q", "--progress", "never"],
                                 capture_output=True, text=True, timeout=120, cwd=self.tmp, env=env)
            self.assertEqual(run.returncode, 0, f"{name}: {run.stderr}")
            results = journal(os.path.join(self.tmp, f"{name}.jsonl"))
            seen = {entry["value"]["stdout"].strip() for entry in results.values()}
            self.assertTrue(seen and seen <= want, f"{name}: {seen}")
        run = subprocess.run([COORDINATOR, "--command", "true", "--inputs", inputs, "--task-resources", "gpu=1", "-q"],
                             capture_output=True, text=True, timeout=60, cwd=self.tmp,
                             env=dict(base, CUDA_VISIBLE_DEVICES=""))
        self.assertEqual(run.returncode, 2, run.stderr)
        self.assertIn("--task-resources: asks for gpu=1, but the local workers have 0 GPU(s)", run.stderr)

    def test_a_request_no_worker_can_meet_stops_the_run_before_it_starts(self):
        plan = os.path.join(self.tmp, "plan.jsonl")
        with open(plan, "w") as f:
            f.write('{"kind":"sleep","seconds":0}\n')
            f.write('{"kind":"sleep","seconds":0,"resources":{"gpu":3}}\n')
        run = self.run_coordinator("--plan", plan, "--gpus", "3,5", "--results", "run.jsonl")
        self.assertEqual(run.returncode, 2, run.stderr)
        self.assertIn("plan.jsonl:2: asks for gpu=3, but the local workers have 2 GPU(s) (3,5)", run.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.tmp, "run.jsonl")) and
                         journal(os.path.join(self.tmp, "run.jsonl")), "a task ran")
        with open(plan, "w") as f:
            f.write('{"kind":"sleep","seconds":0,"resources":{"licence":1}}\n')
        run = self.run_coordinator("--plan", plan, "--worker-resources", "license=1")
        self.assertEqual(run.returncode, 2, run.stderr)
        self.assertIn("plan.jsonl:1: asks for licence=1, but the local workers have no licence", run.stderr)
        # A count is a JSON number, a whole one: "1" as text, 1.5, -1 and true are refused at
        # their line; mem alone also takes a size with its unit ("2G").
        for value in ('"1"', "1.5", "-1", "true", '"2G"'):
            with open(plan, "w") as f:
                f.write('{"kind":"sleep","seconds":0,"resources":{"mem":"1G"}}\n')
                f.write('{"kind":"sleep","seconds":0,"resources":{"slot":%s}}\n' % value)
            run = self.run_coordinator("--plan", plan, "--worker-resources", "slot=2")
            self.assertEqual(run.returncode, 2, (value, run.stderr))
            self.assertIn("plan.jsonl:2:", run.stderr, value)
            self.assertIn("slot: want a whole number >= 1", run.stderr, value)
        inputs = os.path.join(self.tmp, "inputs.txt")
        with open(inputs, "w") as f:
            f.write("a\n")
        for flags, expected in ((["--task-resources", "slot=3", "--worker-resources", "slot=2"],
                                 "--task-resources: asks for slot=3, but the local workers have 2 in all"),
                                (["--task-resources", "gpu=x"], "--task-resources: resource gpu: amount 'x'"),
                                (["--gpus", "0,0"], "--gpus: GPU 0 listed twice"),
                                (["--worker-resources", "gpu=2"], "GPUs have ids: give --gpus"),
                                (["--task-resources", "slot=1", "--worker-resources", "slot=1", "--mode", "threads"],
                                 "only the processes mode hands out")):
            run = self.run_coordinator("--command", "true", "--inputs", inputs, *flags)
            self.assertEqual(run.returncode, 2, f"{flags}: {run.stderr}")
            self.assertIn(expected, run.stderr, flags)


class Dependencies(unittest.TestCase):
    """A plan line's "after": afterok, in the processes mode."""

    def setUp(self):
        self.dir = tempfile.TemporaryDirectory()
        self.tmp = self.dir.name

    def tearDown(self):
        self.dir.cleanup()

    def test_a_task_runs_after_its_dependencies_and_not_at_all_when_one_failed(self):
        plan = os.path.join(self.tmp, "plan.jsonl")
        lines = [
            {"kind": "command", "shell": "sleep 0.2; echo made > first"},
            {"kind": "command", "shell": "cat first", "after": [0]},  # fails unless 0 has ended
            {"kind": "command", "shell": "exit 3"},
            {"kind": "command", "shell": "touch ran3", "after": [1, 2]},
            {"kind": "command", "shell": "touch ran4", "after": [3]},
            {"kind": "command", "shell": "echo free"},
        ]
        with open(plan, "w") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))
        run = subprocess.run([COORDINATOR, "--plan", plan, "--workers", "3", "--results", "run.jsonl", "-q",
                              "--progress", "never"], capture_output=True, text=True, timeout=120, cwd=self.tmp)
        self.assertEqual(run.returncode, 1, run.stderr)
        results = journal(os.path.join(self.tmp, "run.jsonl"))
        self.assertEqual(sorted(results), list(range(6)))
        self.assertEqual(results[1]["value"]["stdout"], "made\n")
        self.assertEqual([results[i]["ok"] for i in range(6)], [True, True, False, False, False, True])
        self.assertEqual(results[3]["error"], "dependency 2 failed")
        self.assertEqual(results[4]["error"], "dependency 3 failed")
        for name in ("ran3", "ran4"):
            self.assertFalse(os.path.exists(os.path.join(self.tmp, name)), f"{name}: a dependent ran")
        self.assertGreaterEqual(results[1]["start_s"], results[0]["end_s"])

    def test_resume_reruns_the_tasks_after_one_that_runs_again(self):
        # 0 writes a file, 1 reads it (after 0), 2 reads what 1 wrote (after 1), 3 is free. Task
        # 0's line removed from the journal: --resume runs 0 again, then 1 and 2, which are ok
        # in the journal but read what 0 made, and not 3.
        plan = os.path.join(self.tmp, "plan.jsonl")
        lines = [
            {"kind": "command", "shell": "echo $$ > first; echo x >> ran0"},
            {"kind": "command", "shell": "cp first second; echo x >> ran1", "after": [0]},
            {"kind": "command", "shell": "cat second; echo x >> ran2", "after": [1]},
            {"kind": "command", "shell": "echo x >> ran3"},
        ]
        with open(plan, "w") as f:
            f.write("".join(json.dumps(line) + "\n" for line in lines))
        args = [COORDINATOR, "--plan", plan, "--workers", "2", "-q", "--progress", "never"]
        run = subprocess.run([*args, "--results", "run.jsonl"], capture_output=True, text=True, timeout=120,
                             cwd=self.tmp)
        self.assertEqual(run.returncode, 0, run.stderr)
        path = os.path.join(self.tmp, "run.jsonl")
        with open(path) as f:
            kept = [line for line in f if json.loads(line).get("id") != 0]
        with open(path, "w") as f:
            f.write("".join(kept))

        def report(*more):
            done = subprocess.run([COORDINATOR, "report", "run.jsonl", *more], capture_output=True, text=True,
                                  timeout=60, cwd=self.tmp)
            self.assertEqual(done.returncode, 0, done.stderr)
            return done.stdout

        # `report --plan` says what --resume will run, by its rule: 0 and its dependents 1 and 2.
        # Without the plan the report cannot know the "after"s: task 0 only.
        would = json.loads(report("--json", "--plan", plan))["modes"][0]["resume_would_run"]
        self.assertEqual((would["count"], would["ranges"], would["dependents"]), (3, [[0, 2]], 2))
        self.assertIn("--resume would run 3 task(s): 0-2 (2 of them ok in the journal, run again because a task "
                      "they wait for does)\n", report("--plan", plan))
        self.assertIn("--resume would run it again", report("--plan", plan, "--task", "2"))
        self.assertEqual(json.loads(report("--json"))["modes"][0]["resume_would_run"]["ranges"], [[0, 0]])
        run = subprocess.run([*args, "--resume", "run.jsonl"], capture_output=True, text=True, timeout=120,
                             cwd=self.tmp)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("--resume would run none of the plan's tasks\n", report("--plan", plan))
        for task, runs in ((0, 2), (1, 2), (2, 2), (3, 1)):
            with open(os.path.join(self.tmp, f"ran{task}")) as f:
                self.assertEqual(len(f.read().split()), runs, f"task {task}")
        results = journal(path)
        with open(os.path.join(self.tmp, "first")) as f:
            self.assertEqual(results[2]["value"]["stdout"], f.read())  # the last line of each id
        # The journal says which ran again, so it stays one that --resume reads: nothing to do.
        run = subprocess.run([*args, "--resume", "run.jsonl"], capture_output=True, text=True, timeout=120,
                             cwd=self.tmp)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("nothing to do", run.stderr)

    def test_a_task_that_waits_for_itself_or_a_later_one_is_refused_at_its_line(self):
        plan = os.path.join(self.tmp, "plan.jsonl")
        for after, expected in (([1], "plan.jsonl:2: \"after\": task 1 is this task itself"),
                                ([2], "plan.jsonl:2: \"after\": task 2 comes later"),
                                (["x"], "plan.jsonl:2: \"after\": \"x\" is not a task id")):
            with open(plan, "w") as f:
                f.write('{"kind":"sleep","seconds":0,"after":[1]}\n'.replace("[1]", "[]"))
                f.write(json.dumps({"kind": "sleep", "seconds": 0, "after": after}) + "\n")
                f.write('{"kind":"sleep","seconds":0}\n')
            run = subprocess.run([COORDINATOR, "--plan", plan, "-q"], capture_output=True, text=True, timeout=60,
                                 cwd=self.tmp)
            self.assertEqual(run.returncode, 2, run.stderr)
            self.assertIn(expected, run.stderr)


if __name__ == "__main__":
    unittest.main()
