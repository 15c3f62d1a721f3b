"""Tests of scripts/sweep, scripts/reproduce-tutorial, scripts/experiments.py and scripts/bench.

  /usr/bin/python3 tests/scripts_test.py                 every test
  /usr/bin/python3 tests/scripts_test.py SweepUnit       one class (CTest runs them class by class)

TASKFARM_COORDINATOR names the coordinator to run (CTest passes the one it built; default
build/bin/coordinator). tests/scripts/fake_coordinator stands in where a test needs a
coordinator that fails on demand or logs the flags it was given. The tests check contents (rows,
keys, columns, files, exit codes), never timings: the machine is shared.
"""

import csv
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import experiments as ex  # noqa: E402

SWEEP = REPO / "scripts" / "sweep"
BENCH = REPO / "scripts" / "bench"
TUTORIAL = REPO / "scripts" / "reproduce-tutorial"
FAKE = REPO / "tests" / "scripts" / "fake_coordinator"
COORDINATOR = Path(os.environ.get("TASKFARM_COORDINATOR", REPO / "build" / "bin" / "coordinator"))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(argv, env=None, timeout=300):
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **(env or {})))


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def row(task="sleep", mode="threads", workers=2, repeat=1, wall="1.0", exit_code="0", failed="0"):
    r = dict.fromkeys(ex.CSV_COLUMNS, "")
    r.update(task=task, mode=mode, workers=str(workers), repeat=str(repeat), tasks="4", ok="4", failed=failed,
             wall_s=wall, cpu_s="0.01", utilisation="0.01", exit_code=exit_code,
             command=f"coordinator --task {task} --mode {mode} --workers {workers} --json x.json")
    return r


class SweepUnit(unittest.TestCase):
    def test_run_order_is_randomised_blocks_one_per_repeat(self):
        order = ex.run_order(["sleep", "cpu"], ["sequential", "threads"], [1, 2, 4], 3, seed=7)
        self.assertEqual(len(order), 2 * 2 * 3 * 3)
        for repeat in (1, 2, 3):
            block = order[(repeat - 1) * 12:repeat * 12]
            self.assertEqual({s.repeat for s in block}, {repeat})
            self.assertEqual(len({(s.task, s.mode, s.workers) for s in block}), 12)
        self.assertEqual(order, ex.run_order(["sleep", "cpu"], ["sequential", "threads"], [1, 2, 4], 3, seed=7))
        blocks = [[(s.task, s.mode, s.workers) for s in order[i:i + 12]] for i in (0, 12, 24)]
        self.assertFalse(blocks[0] == blocks[1] == blocks[2], "every block in the same order: not shuffled")

    def test_speedup_pairs_the_sequential_run_of_the_same_task_workers_and_repeat(self):
        rows = [row(mode="sequential", workers=2, repeat=1, wall="4.0"),
                row(mode="sequential", workers=2, repeat=2, wall="8.0"),
                row(mode="threads", workers=2, repeat=1, wall="2.0"),
                row(mode="threads", workers=2, repeat=2, wall="2.0"),
                row(mode="threads", workers=4, repeat=1, wall="1.0"),       # no sequential at workers 4
                row(task="cpu", mode="threads", workers=2, repeat=1, wall="1.0")]  # nor for cpu
        ex.fill_speedups(rows)
        self.assertEqual([r["speedup_vs_sequential"] for r in rows], ["1.0000", "1.0000", "2.0000", "4.0000", "", ""])

    def test_no_speedup_where_either_run_failed(self):
        rows = [row(mode="sequential", wall="4.0", exit_code="1", failed="1"), row(mode="threads", wall="2.0"),
                row(mode="sequential", repeat=2, wall="4.0"), row(mode="threads", repeat=2, wall="", exit_code="3")]
        ex.fill_speedups(rows)
        self.assertEqual([r["speedup_vs_sequential"] for r in rows], ["", "", "1.0000", ""])

    def test_csv_round_trip_leaves_no_temp_file(self):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "sweep.csv"
            rows = [row(), row(mode="sequential", wall="2.5")]
            rows[0]["error"] = 'a "quoted", comma\nand newline'
            ex.write_csv(path, rows)
            self.assertEqual(ex.read_csv(path), rows)
            self.assertEqual(sorted(p.name for p in Path(d).iterdir()), ["sweep.csv"])
            self.assertEqual(ex.read_csv(Path(d) / "absent.csv"), [])

    def test_read_csv_refuses_a_file_that_is_not_a_sweep(self):
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "sweep.csv"
            path.write_text("a,b\n1,2\n")
            with self.assertRaisesRegex(ex.UsageError, "not a sweep CSV"):
                ex.read_csv(path)

    def test_summary_has_median_and_range_per_setting_and_lists_failures(self):
        rows = [row(mode="sequential", repeat=r, wall="4.0") for r in (1, 2, 3)]
        rows += [row(mode="threads", repeat=1, wall="1.0"), row(mode="threads", repeat=2, wall="2.0"),
                 row(mode="threads", repeat=3, wall="4.0")]
        rows.append(row(mode="processes", repeat=1, wall="", exit_code="3"))
        rows[-1]["error"] = "exit 3: boom"
        ex.fill_speedups(rows)
        text = ex.summary_markdown(rows)
        lines = {line.split("|")[2].strip(): line for line in text.splitlines() if line.startswith("| sleep")}
        self.assertIn("| 3/3 | 2.000 (1.000 - 4.000) | x2.00 (x1.00 - x4.00) |", lines["threads"])
        self.assertIn("| 3/3 | 4.000 (4.000 - 4.000) | x1.00 (x1.00 - x1.00) |", lines["sequential"])
        self.assertIn("| 0/1 | - | - |", lines["processes"])
        self.assertIn("sleep processes workers=2 repeat=1: exit 3: boom", text)

    def test_row_of_a_run_without_report_is_failed(self):
        setting = ex.Setting("cpu", "processes", 4, 2)
        result = ex.RunResult(exit_code=-9, report=None, error="exit -9")
        r = ex.row_from_result(setting, ["coordinator", "--task", "cpu"], result, 8, "now")
        self.assertEqual((r["task"], r["mode"], r["workers"], r["repeat"], r["tasks"]), ("cpu", "processes", "4", "2", "8"))
        self.assertEqual((r["exit_code"], r["error"], r["wall_s"], r["ok"]), ("-9", "exit -9", "", ""))
        self.assertFalse(ex.row_succeeded(r))

    def test_row_of_a_run_with_failed_tasks_names_the_first_failure(self):
        report = {"runs": [{"mode": "threads", "tasks": 4, "ok": 3, "failed": 1, "wall_s": 1.5, "cpu_s": 0.1,
                            "utilisation": 0.05, "interrupted": False,
                            "failures": [{"id": 2, "error": "timed out after 0.05 s"}]}]}
        result = ex.RunResult(exit_code=1, report=report, error="exit 1")
        r = ex.row_from_result(ex.Setting("sleep", "threads", 2, 1), ["c"], result, None, "now")
        self.assertEqual((r["tasks"], r["ok"], r["failed"], r["wall_s"]), ("4", "3", "1", "1.500000"))
        self.assertEqual(r["error"], "1 task(s) failed, first task 2: timed out after 0.05 s")
        self.assertFalse(ex.row_succeeded(r))

    def test_comparable_command_ignores_binary_and_json_path(self):
        self.assertEqual(ex.comparable_command("/a/coordinator --task sleep --json /x/r.json --duration 0.2"),
                         ex.comparable_command("build/bin/coordinator --task sleep --json y.json --duration 0.2"))
        self.assertNotEqual(ex.comparable_command("c --task sleep --duration 0.2"),
                            ex.comparable_command("c --task sleep --duration 0.3"))

    def test_help_parsing_finds_task_kinds_and_options(self):
        help_text = run([FAKE, "--help"]).stdout
        self.assertTrue(ex.supports(help_text, "--task", "download"))
        self.assertTrue(ex.supports(help_text, "--mode", "gil-threads"))
        self.assertTrue(ex.supports(help_text, "--latency"))
        self.assertFalse(ex.supports(help_text, "--task", "upload"))
        self.assertFalse(ex.supports(help_text, "--bandwidth"))
        self.assertFalse(ex.supports("  -t,--task TEXT:{sleep,cpu}=sleep\n     task kind: sleep or cpu\n  --json F\n"
                                     "     the download report\n", "--task", "download"))

    def test_ideal_for_tasks_counts_rounds(self):
        self.assertEqual(ex.ideal_for_tasks(8, 4), 4)
        self.assertAlmostEqual(ex.ideal_for_tasks(10, 4), 10 / 3)
        self.assertEqual(ex.ideal_for_tasks(3, 8), 3)


class SweepArguments(unittest.TestCase):
    def check_usage(self, args, names):
        with tempfile.TemporaryDirectory() as d:
            done = run([SWEEP, "--coordinator", COORDINATOR] + args + (["--out", d] if "--out" not in args else []))
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn(names, done.stderr)
        self.assertIn("usage:", done.stderr)

    def test_bad_arguments_exit_2_naming_the_argument(self):
        self.check_usage(["--workers", "0"], "argument --workers")
        self.check_usage(["--workers", "1,x"], "argument --workers")
        self.check_usage(["--workers", "2,2"], "argument --workers")
        self.check_usage(["--repeat", "-1"], "argument --repeat")
        self.check_usage(["--run-timeout", "0"], "argument --run-timeout")
        self.check_usage(["--task", "nope"], "argument --task")
        self.check_usage(["--mode", "sequential,fast"], "argument --mode")
        self.check_usage(["--mode", "all"], "argument --mode")
        self.check_usage(["--bogus"], "--bogus")
        self.check_usage(["--", "--mode", "threads"], "--mode")
        self.check_usage(["--", "-w", "3"], "--workers")
        self.check_usage(["--coordinator", "/nonexistent/coordinator"], "argument --coordinator")
        done = run([SWEEP, "--workers", "1"])
        self.assertEqual(done.returncode, 2)
        self.assertIn("--out", done.stderr)

    def test_a_flag_the_coordinator_refuses_stops_the_sweep_with_2(self):
        with tempfile.TemporaryDirectory() as d:
            done = run([SWEEP, "--coordinator", COORDINATOR, "--workers", "1", "--repeat", "1", "--out", d,
                        "--", "--duration", "-1"])
            self.assertEqual(done.returncode, 2, done.stderr)
            self.assertIn("--duration", done.stderr)
            self.assertEqual(ex.read_csv(Path(d) / "sweep.csv"), [])

    def test_task_flags_go_to_the_runs_of_that_task_only(self):
        with tempfile.TemporaryDirectory() as d:
            log = Path(d) / "args.jsonl"
            done = run([SWEEP, "--coordinator", FAKE, "--workers", "1", "--task", "sleep,download", "--mode",
                        "sequential", "--repeat", "1", "--task-flags", "download:--latency 0.05", "--out",
                        Path(d) / "out"], env={"FAKE_ARGS_LOG": str(log)})
            self.assertEqual(done.returncode, 0, done.stderr)
            commands = {c[c.index("--task") + 1]: c for c in map(json.loads, log.read_text().splitlines())
                        if "--help" not in c}
            self.assertEqual(sorted(commands), ["download", "sleep"])
            download, sleep = commands["download"], commands["sleep"]
            self.assertEqual(download[download.index("--latency") + 1], "0.05")
            self.assertTrue(download[download.index("--out-dir") + 1].endswith("downloads"))
            self.assertNotIn("--latency", sleep)
            self.assertNotIn("--out-dir", sleep)
        self.check_usage(["--task", "sleep", "--task-flags", "cpu:--cpu-n 5"], "argument --task-flags")
        self.check_usage(["--task-flags", "no-colon"], "argument --task-flags")
        self.check_usage(["--task-flags", "sleep:--mode threads"], "--mode")

    def test_an_out_made_with_other_flags_is_refused(self):
        with tempfile.TemporaryDirectory() as d:
            base = [SWEEP, "--coordinator", COORDINATOR, "--workers", "1", "--mode", "threads", "--repeat", "1",
                    "--tasks", "1", "--out", d, "--", "--duration", "0.01"]
            self.assertEqual(run(base).returncode, 0)
            done = run(base[:-1] + ["0.02"])
            self.assertEqual(done.returncode, 2, done.stderr)
            self.assertIn("argument --out", done.stderr)
            self.assertIn("other flags", done.stderr)


class SweepEndToEnd(unittest.TestCase):
    """The issue's check: a 3x2x2x2 sweep gives 24 rows and a PNG; a rerun skips what is done."""

    GRID = ["--workers", "1,2,3", "--task", "sleep,cpu", "--mode", "sequential,processes", "--repeat", "2",
            "--tasks", "3"]
    EXTRA = ["--", "--duration", "0.01", "--cpu-n", "1000000"]

    def sweep(self, out, *more):
        return run([SWEEP, "--coordinator", COORDINATOR] + self.GRID + list(more) + ["--out", out] + self.EXTRA)

    def test_grid_resume_and_outputs(self):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d)
            done = self.sweep(out)
            self.assertEqual(done.returncode, 0, done.stderr)
            rows = read_rows(out / "sweep.csv")
            self.assertEqual(len(rows), 24)
            self.assertEqual(list(rows[0].keys()), ex.CSV_COLUMNS)
            keys = {(r["task"], r["mode"], r["workers"], r["repeat"]) for r in rows}
            self.assertEqual(keys, {(t, m, w, rp) for t in ("sleep", "cpu") for m in ("sequential", "processes")
                                    for w in ("1", "2", "3") for rp in ("1", "2")})
            for r in rows:
                self.assertEqual((r["exit_code"], r["tasks"], r["ok"], r["failed"]), ("0", "3", "3", "0"), r)
                self.assertGreater(float(r["wall_s"]), 0)
                self.assertGreater(float(r["speedup_vs_sequential"]), 0)
                self.assertIn(f"--mode {r['mode']}", r["command"])
                self.assertIn(f"--workers {r['workers']}", r["command"])
                self.assertTrue((out / "runs" / f"{r['task']}-{r['mode']}-w{r['workers']}-r{r['repeat']}.json")
                                .is_file())
            self.assertEqual({r["speedup_vs_sequential"] for r in rows if r["mode"] == "sequential"}, {"1.0000"})
            # Randomised blocks: repeat 1's twelve runs come before any of repeat 2's.
            self.assertEqual([r["repeat"] for r in rows], ["1"] * 12 + ["2"] * 12)

            png = (out / "speedup.png").read_bytes()
            self.assertEqual(png[:8], PNG_SIGNATURE)
            self.assertEqual(png[12:16], b"IHDR")
            self.assertGreater(int.from_bytes(png[16:20], "big"), 100)  # width
            summary = (out / "summary.md").read_text()
            self.assertEqual(sum(1 for line in summary.splitlines() if line.startswith(("| sleep", "| cpu"))), 12)
            self.assertIn("| sleep | processes | 3 | 3 | 2/2 |", summary)
            self.assertIn("| cpu | sequential | 1 | 3 | 2/2 |", summary)

            # Rerun: nothing to do, nothing changes.
            before = (out / "sweep.csv").read_text()
            again = self.sweep(out)
            self.assertEqual(again.returncode, 0, again.stderr)
            self.assertIn("24 already in", again.stderr)
            self.assertIn("0 to run", again.stderr)
            self.assertEqual((out / "sweep.csv").read_text(), before)

            # Lose five rows: the rerun runs exactly those five.
            kept = rows[:7] + rows[12:]
            ex.write_csv(out / "sweep.csv", kept)
            again = self.sweep(out)
            self.assertEqual(again.returncode, 0, again.stderr)
            self.assertIn("5 to run", again.stderr)
            self.assertEqual(again.stderr.count("sweep: ["), 5)
            rows_after = read_rows(out / "sweep.csv")
            self.assertEqual(len(rows_after), 24)
            # The old rows untouched, in their order; only a speedup may change, where the run it pairs
            # with is one of the five.
            def without_speedup(rows):
                return [{k: v for k, v in r.items() if k != "speedup_vs_sequential"} for r in rows]
            self.assertEqual(without_speedup(rows_after[:19]), without_speedup(kept))
            self.assertEqual({(r["task"], r["mode"], r["workers"], r["repeat"]) for r in rows_after}, keys)


class SweepFailures(unittest.TestCase):
    def test_a_failing_run_is_recorded_and_the_sweep_goes_on(self):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d)
            argv = [SWEEP, "--coordinator", FAKE, "--workers", "1,2", "--mode", "sequential,threads,processes",
                    "--repeat", "2", "--tasks", "4", "--out", out]
            done = run(argv, env={"FAKE_FAIL": "processes:3"})
            self.assertEqual(done.returncode, 1, done.stderr)
            rows = read_rows(out / "sweep.csv")
            self.assertEqual(len(rows), 12)
            failed = [r for r in rows if r["mode"] == "processes"]
            self.assertEqual(len(failed), 4)
            for r in failed:
                self.assertEqual((r["exit_code"], r["wall_s"], r["speedup_vs_sequential"]), ("3", "", ""))
                self.assertIn("fake failure in processes", r["error"])
            for r in rows:
                if r["mode"] != "processes":
                    self.assertEqual(r["exit_code"], "0")
                    self.assertNotEqual(r["speedup_vs_sequential"], "")
            self.assertIn("Failed runs (4)", (out / "summary.md").read_text())
            self.assertEqual((out / "speedup.png").read_bytes()[:8], PNG_SIGNATURE)

            # A plain rerun keeps the failures; --retry-failed runs just those again.
            self.assertIn("0 to run", run(argv, env={"FAKE_FAIL": "processes:3"}).stderr)
            done = run(argv + ["--retry-failed"])
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertIn("4 to run", done.stderr)
            rows = read_rows(out / "sweep.csv")
            self.assertEqual(len(rows), 12)
            self.assertTrue(all(r["exit_code"] == "0" for r in rows))

    def test_a_run_past_run_timeout_is_stopped_and_recorded_as_failed(self):
        with tempfile.TemporaryDirectory() as d:
            done = run([SWEEP, "--coordinator", COORDINATOR, "--workers", "1", "--mode", "threads,processes",
                        "--repeat", "1", "--tasks", "1", "--run-timeout", "0.5", "--out", d, "--", "--duration", "60"],
                       timeout=120)
            self.assertEqual(done.returncode, 1, done.stderr)
            rows = read_rows(Path(d) / "sweep.csv")
            self.assertEqual(sorted(r["mode"] for r in rows), ["processes", "threads"])
            for r in rows:
                self.assertEqual((r["error"], r["wall_s"], r["ok"]), ("timed out after 0.5 s", "", ""))
            self.assertEqual(run(["pgrep", "-f", d]).stdout.split(), [])

    def test_without_sequential_there_is_no_speedup_but_a_wall_time_plot(self):
        with tempfile.TemporaryDirectory() as d:
            done = run([SWEEP, "--coordinator", FAKE, "--workers", "1,2", "--mode", "threads,processes", "--repeat",
                        "1", "--out", d])
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual({r["speedup_vs_sequential"] for r in read_rows(Path(d) / "sweep.csv")}, {""})
            self.assertIn("so wall_time.png instead of speedup.png (add sequential to --mode)", done.stderr)
            self.assertFalse((Path(d) / "speedup.png").exists())
            self.assertEqual((Path(d) / "wall_time.png").read_bytes()[:8], PNG_SIGNATURE)
            self.assertIn(str(Path(d) / "wall_time.png"), done.stderr)

    def test_ctrl_c_leaves_a_valid_csv_and_no_coordinator(self):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d)
            argv = [SWEEP, "--coordinator", COORDINATOR, "--workers", "1,2", "--mode", "sequential,threads,processes",
                    "--repeat", "3", "--tasks", "2", "--out", out, "--", "--duration", "0.3"]
            process = subprocess.Popen([str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True, start_new_session=True)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (
                    (out / "sweep.csv").exists() and len(ex.read_csv(out / "sweep.csv")) >= 2):
                time.sleep(0.05)
            time.sleep(0.1)  # most likely inside a run now
            os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the sweep and its coordinator
            _, stderr = process.communicate(timeout=60)
            self.assertEqual(process.returncode, 130, stderr)
            self.assertIn("interrupted", stderr)
            rows = read_rows(out / "sweep.csv")
            self.assertGreaterEqual(len(rows), 2)
            self.assertLess(len(rows), 18)
            for r in rows:
                self.assertEqual((r["exit_code"], r["failed"]), ("0", "0"), r)  # the interrupted run is not a row
            self.assertFalse(any(p.name.endswith(".tmp") for p in out.iterdir()))
            # No coordinator or worker of this sweep is left.
            left = run(["pgrep", "-f", str(out)]).stdout.split()
            self.assertEqual(left, [])

            done = run(argv)
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertEqual(len(read_rows(out / "sweep.csv")), 18)


class ReproduceTutorial(unittest.TestCase):
    TITLES = ["func() sleeps 1 s, once", "4 calls in a loop", "2 threads", "10 threads", "10 threads of 1.5 s",
              "as_completed, random 1..10 s", "15 image downloads: sequential", "15 image downloads: 8 threads",
              "10 processes sleeping 2 s", "CPU-bound", "threads", "gil-threads", "processes"]

    def table_rows(self, stdout):
        return [[c.strip() for c in line.strip("|").split("|")] for line in stdout.splitlines()
                if line.startswith("| ") and not line.startswith("| experiment")]

    def test_quick_prints_the_table_and_draws_every_run(self):
        with tempfile.TemporaryDirectory() as d:
            done = run([TUTORIAL, "--quick", "--coordinator", COORDINATOR, "--out", d])
            self.assertEqual(done.returncode, 0, done.stderr)
            self.assertIn("| experiment | command | tutorial | taskfarm | ideal |", done.stdout)
            rows = self.table_rows(done.stdout)
            self.assertEqual(len(rows), 13)
            text = done.stdout
            for title in self.TITLES:
                self.assertIn(title, text)
            by_title = {r[0]: r for r in rows}
            self.assertEqual(by_title["4 calls in a loop"][1],
                             "`coordinator --mode sequential --tasks 4 --duration 0.1`")
            self.assertEqual(by_title["4 calls in a loop"][2], "0.400 s")
            self.assertRegex(by_title["4 calls in a loop"][3], r"^\d+\.\d{3} s$")
            self.assertRegex(by_title["as_completed, random 1..10 s"][3], "results shortest first")
            downloads = by_title["15 image downloads: sequential"][3]
            if ex.supports(ex.coordinator_help(COORDINATOR), "--task", "download"):
                self.assertRegex(downloads, r"^\d+\.\d{3} s")
            else:
                self.assertEqual(downloads, "skipped: download tasks not built yet")
            self.assertEqual(sum(1 for r in rows if r[0].startswith("CPU-bound")), 4)
            for r in rows:
                self.assertNotIn("failed", r[3])
            svgs = sorted(p.name for p in Path(d).glob("*.svg"))
            self.assertIn("2-loop.svg", svgs)
            self.assertIn("9-cpu-bound.svg", svgs)
            self.assertGreaterEqual(len(svgs), 8)
            for svg in Path(d).glob("*.svg"):
                self.assertIn("<svg", svg.read_text())
            self.assertEqual((Path(d) / "tutorial.md").read_text().split("\n\n", 1)[1],
                             done.stdout.split("\n\n", 1)[1])

    def test_downloads_run_where_the_coordinator_has_them(self):
        if not ex.supports(ex.coordinator_help(COORDINATOR), "--task", "download"):
            self.skipTest("this coordinator has no --task download")
        with tempfile.TemporaryDirectory() as d:
            done = run([TUTORIAL, "--quick", "--coordinator", COORDINATOR, "--out", d])
            self.assertEqual(done.returncode, 0, done.stderr)
            rows = {r[0]: r for r in self.table_rows(done.stdout)}
            sequential, threads = rows["15 image downloads: sequential"], rows["15 image downloads: 8 threads"]
            self.assertIn("--task download", sequential[1])
            self.assertIn("--latency 0.02", sequential[1])
            self.assertEqual(sequential[2], "293.85 s (internet)")
            self.assertEqual(threads[2], "238.2 s (internet)")
            self.assertRegex(sequential[3], r"^\d+\.\d{3} s$")
            self.assertRegex(threads[3], r"^\d+\.\d{3} s \(x\d+\.\d{2}\)$")
            self.assertEqual(sequential[4], "0.300 s + transfer")
            self.assertEqual(threads[4], "0.040 s + transfer")
            report = json.loads((Path(d) / "7-downloads.json").read_text())
            self.assertEqual(report["task"], "download")
            self.assertEqual([(r["mode"], r["ok"], r["failed"]) for r in report["runs"]],
                             [("sequential", 15, 0), ("threads", 15, 0)])
            for mode in ("sequential", "threads"):
                saved = sorted((Path(d) / "downloads" / mode).iterdir())
                self.assertEqual([p.name for p in saved], [f"{i:03}-photo-{i}.ppm" for i in range(15)])
                for path in saved:
                    self.assertEqual(path.stat().st_size, 200 * 1024, path)
                    self.assertTrue(path.read_bytes().startswith(b"P6\n"), path)

    def test_a_failed_experiment_shows_in_the_table_and_the_exit_status(self):
        with tempfile.TemporaryDirectory() as d:
            done = run([TUTORIAL, "--quick", "--coordinator", FAKE, "--out", d], env={"FAKE_FAIL": "gil-threads:1"})
            self.assertEqual(done.returncode, 1, done.stderr)
            rows = {r[0]: r for r in self.table_rows(done.stdout)}
            gil = [r for title, r in rows.items() if title.startswith("CPU-bound") and title.endswith("gil-threads")]
            self.assertEqual(len(gil), 1)
            self.assertIn("failed (exit 1: error: fake failure in gil-threads)", gil[0][3])
            self.assertRegex(rows["4 calls in a loop"][3], r"^0\.400 s$")  # the others still ran

    def test_bad_arguments_exit_2(self):
        done = run([TUTORIAL, "--coordinator", "/nonexistent/coordinator"])
        self.assertEqual(done.returncode, 2)
        self.assertIn("argument --coordinator", done.stderr)
        done = run([TUTORIAL, "--fast"])
        self.assertEqual(done.returncode, 2)
        self.assertIn("--fast", done.stderr)


class BenchQuick(unittest.TestCase):
    """scripts/bench --quick as a smoke test: every row is measured and its ratio is a number.
    Whether a target is met depends on the machine and its load, so it is never asserted."""

    ROWS = {  # experiment -> how many rows it has (one per anchor, or one without)
        "no-op, processes, 2 workers": 3,
        "no-op, threads, 2 threads": 1,
        "no-op, processes, 100,000 tasks: peak RSS": 1,
        "no-op tasks/s at 1,000, 10,000, 100,000": 1,
        "no-op tasks/s between 1,000, 10,000, 100,000 (start-up left out)": 1,
        "start-up to first result, 8 workers": 2,
        "10 x sleep 0.1 s, 8 workers": 2,
        "15 downloads, 0.05 s latency, 8 workers": 2,
        "1,000 `true` commands, 2 workers (start to exit)": 3,  # against xargs, GNU parallel and the floor
        "1,000 `true` commands, 2 workers: CPU per command": 3,
        "1,000 `true` commands: 10x GNU parallel's rate against the floor": 1,
        "20,000 short values to `true`, `parallel -j 2 -X` (start to exit)": 1,
        "no-op, processes, 1,000 tasks": 1,
        "no-op, processes, 10,000 tasks": 1,
        "no-op, processes, 100,000 tasks": 1,
        "bare ZeroMQ pipe, 1 in flight/worker": 1,
        "bare ZeroMQ pipe, 8 in flight/worker": 1,
        "bare ZeroMQ pipe, 64 in flight/worker": 1,
        # memory (the lazy plan): against the bound, and against the same at 100,000 tasks
        "no-op, threads, 300,000 tasks: coordinator peak RSS": 2,
        "no-op, processes, 300,000 tasks: coordinator peak RSS": 2,
        "10,000 inputs on stdin (--task sleep --inputs -, processes): peak RSS": 1,
        "no-op, processes, 2 workers, --ui": 1,
        "no-op, threads, 2 threads, --ui": 1,
        "no-op tasks/s at 1,000 against 100,000": 1,
        "128 workers all said hello (+1 no-op task)": 1,
        "registered no-op function, processes, 2 workers": 1,
        "20,000 no-op submissions from code (Farm), processes, 2 workers": 1,
        # coordinator serve: the plan through a server against a one-shot run; a task's latency
        "20,000 no-op, processes, 2 workers, through `serve` (submit --wait -q)": 1,
        "1 task from `submit --wait` to its first result, a server running": 1,
    }

    def test_quick_measures_every_row_and_writes_the_json(self):
        with tempfile.TemporaryDirectory() as d:
            out = Path(d) / "results.json"
            done = run([sys.executable, BENCH, "--quick", "--no-setup", "--build-dir", COORDINATOR.parent.parent,
                        "--out", out], timeout=120)
            self.assertEqual(done.returncode, 0, done.stderr)
            results = json.loads(out.read_text())
        self.assertEqual((results["version"], results["quick"], results["repeats"]), (1, True, 1))
        self.assertIsInstance(results["window"], int)  # --prefetch auto's ceiling, not "auto"
        self.assertGreaterEqual(results["window"], 1)
        self.assertEqual(results["machine"]["nproc"], os.cpu_count())
        self.assertEqual(len(results["machine"]["load_average"]), 3)
        self.assertEqual(len(results["machine"]["load_average_at_start"]), 3)
        rows = results["rows"]
        counts = {}
        for r in rows:
            counts[r["experiment"]] = counts.get(r["experiment"], 0) + 1
            self.assertIn(r["experiment"], done.stdout)
            self.assertIsInstance(r["taskfarm"], float, r)
            self.assertTrue(math.isfinite(r["taskfarm"]) and r["taskfarm"] > 0, r)
            if r["anchor"]:
                self.assertIsInstance(r["ratio"], float, r)
                self.assertTrue(math.isfinite(r["ratio"]) and r["ratio"] > 0, r)
            if r["target"]:
                self.assertRegex(r["target"], r"^(>=|<=) \d")
                self.assertIsInstance(r["met"], bool, r)
                self.assertIn("yes" if r["met"] else "NO", done.stdout)
        self.assertEqual(counts, self.ROWS)
        # + the memory rows, the two --ui rows' >= 0.9, CPU per command against xargs', and the
        # Farm's submissions from code against the built-in no-op, and the server's throughput,
        # and `parallel -X` against xargs' default, and 10x GNU parallel against the floor
        self.assertEqual(sum(1 for r in rows if r["target"]), 14 + 5 + 2 + 1 + 1 + 1 + 1 + 1)
        for key, values in results["samples"].items():
            self.assertEqual(len(values), 1, key)
        self.assertIn("fetch.wall_s", results["samples"])
        self.assertIn("ppe_fetch.seconds", results["samples"])

    def test_bad_arguments_exit_2(self):
        done = run([sys.executable, BENCH, "--fast"])
        self.assertEqual(done.returncode, 2)
        self.assertIn("--fast", done.stderr)


class Packages(unittest.TestCase):
    """scripts/test and scripts/setup's apt step, with stand-ins for dpkg-query, apt-get, sudo,
    cmake and ctest first in PATH (apt itself cannot run in a test: it needs root and the
    network): the stand-in apt-get writes each call to a log, the stand-in dpkg-query says
    every package is missing, or every one installed."""

    def setUp(self):
        self.dir = Path(tempfile.mkdtemp(prefix="taskfarm-packages-test-"))
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", str(self.dir)]))
        self.log = self.dir / "apt.log"
        self.log.touch()
        stand_ins = {
            "apt-get": f'echo "$*" >>{self.log}',
            "sudo": 'exec "$@"',
            "cmake": f'echo "$*" >>{self.dir / "cmake.log"}',  # the configure's arguments; builds nothing
            "ctest": "exit 0",
            "dpkg-query": '[ -n "${FAKE_INSTALLED:-}" ] && echo "install ok installed"; exit 0',
        }
        for name, body in stand_ins.items():
            path = self.dir / name
            path.write_text(f"#!/bin/sh\n{body}\n")
            path.chmod(0o755)

    def run_script(self, script, installed):
        env = {"PATH": f"{self.dir}:{os.environ['PATH']}", "FAKE_INSTALLED": "1" if installed else "",
               "TASKFARM_PACKAGES": ""}
        done = run([REPO / "scripts" / script], env=env, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        return self.log.read_text().splitlines()

    def test_a_run_of_test_and_its_setup_updates_apt_once_and_installs_once(self):
        calls = self.run_script("test", installed=False)
        self.assertEqual(calls.count("update -qq"), 1, calls)
        installs = [call.split() for call in calls if call.startswith("install")]
        self.assertEqual(len(installs), 1, calls)
        # setup's packages and the tests' in the one apt run.
        for package in ("g++", "libpcre2-dev", "libgtest-dev", "chromium", "openmpi-bin"):
            self.assertIn(package, installs[0])

    def test_setup_alone_updates_once(self):
        calls = self.run_script("setup", installed=False)
        self.assertEqual(calls.count("update -qq"), 1, calls)
        self.assertNotIn("chromium", " ".join(calls))  # the tests' packages are scripts/test's

    def test_nothing_runs_apt_when_every_package_is_installed(self):
        self.assertEqual(self.run_script("test", installed=True), [])
        self.assertEqual(self.run_script("setup", installed=True), [])

    def clang(self, links_libfuzzer, where):
        """A stand-in clang++ in `where` (put first in PATH by run_fuzz): one that links a
        -fsanitize=fuzzer probe, or one that cannot (no libFuzzer runtime)."""
        where.mkdir(parents=True, exist_ok=True)
        path = where / "clang++"
        path.write_text("#!/bin/sh\n" + ('case "$*" in *-fsanitize=fuzzer*) exit 0;; esac\n' if links_libfuzzer else "")
                        + "exit 1\n")
        path.chmod(0o755)
        return path

    def run_fuzz(self, installed, clang_dir=None):
        """scripts/fuzz in a copy of the scripts, whose built fuzzer is a stand-in that exits 0;
        `clang_dir` goes first in PATH. Returns apt-get's calls and cmake's."""
        root = self.dir / "repo"
        (root / "scripts").mkdir(parents=True)
        for script in ("fuzz", "setup", "install-packages"):
            shutil.copy2(REPO / "scripts" / script, root / "scripts" / script)
        (root / "tests" / "fuzz" / "corpus" / "decode").mkdir(parents=True)
        (root / "tests" / "fuzz" / "corpus" / "decode" / "seed").write_bytes(b"\x80")
        fuzzer = root / "build-fuzz" / "bin" / "decode_fuzzer"
        fuzzer.parent.mkdir(parents=True)
        fuzzer.write_text("#!/bin/sh\nexit 0\n")
        fuzzer.chmod(0o755)
        path = f"{self.dir}:{os.environ['PATH']}"
        env = {"PATH": f"{clang_dir}:{path}" if clang_dir else path, "FAKE_INSTALLED": "1" if installed else ""}
        done = run([root / "scripts" / "fuzz", "1"], env=env, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        cmake = self.dir / "cmake.log"
        return self.log.read_text().splitlines(), cmake.read_text().splitlines() if cmake.exists() else []

    def test_fuzz_installs_clang_with_setups_packages_in_one_apt_run(self):
        # It ran an apt-get update of its own for clang, beside the package step (decision 297).
        # The clang++ first in PATH cannot link a libFuzzer target: Debian's is installed.
        calls, cmake = self.run_fuzz(installed=False, clang_dir=self.clang(False, self.dir / "old").parent)
        self.assertEqual(calls.count("update -qq"), 1, calls)
        installs = [call.split() for call in calls if call.startswith("install")]
        self.assertEqual(len(installs), 1, calls)
        for package in ("clang", "libclang-rt-dev", "libgtest-dev", "python3", "g++", "libzmq3-dev"):
            self.assertIn(package, installs[0])
        self.assertIn("-DCMAKE_CXX_COMPILER=/usr/bin/clang++", cmake[0].split())

    def test_fuzz_uses_a_clang_in_path_that_links_libfuzzer_and_installs_no_clang(self):
        # A clang of one's own (not Debian's: dpkg-query says nothing is installed) that links
        # the probe: no clang package is named, the rest still is, and the build uses that clang
        # (decision 312; before, Debian's clang was installed beside it).
        clang = self.clang(True, self.dir / "llvm" / "bin")
        calls, cmake = self.run_fuzz(installed=False, clang_dir=clang.parent)
        installs = [call.split() for call in calls if call.startswith("install")]
        self.assertEqual(len(installs), 1, calls)
        for package in ("libgtest-dev", "python3", "g++"):
            self.assertIn(package, installs[0])
        for package in ("clang", "libclang-rt-dev"):
            self.assertNotIn(package, installs[0])
        self.assertIn(f"-DCMAKE_CXX_COMPILER={clang}", cmake[0].split())

    def test_fuzz_runs_no_apt_when_every_package_is_installed(self):
        calls, _ = self.run_fuzz(installed=True, clang_dir=self.clang(False, self.dir / "old").parent)
        self.assertEqual(calls, [])

if __name__ == "__main__":
    unittest.main()
