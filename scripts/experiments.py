"""What scripts/sweep and scripts/reproduce-tutorial share: running the coordinator, reading
its --json report, the sweep's CSV, summary and plot. Python standard library only, plus
matplotlib (Debian's python3-matplotlib) for the plot, imported when a plot is drawn.
"""

import csv
import io
import json
import math
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_COORDINATOR = REPO / "build" / "bin" / "coordinator"

# The columns first, then what a reader needs to judge a row.
CSV_COLUMNS = [
    "task", "mode", "workers", "repeat", "tasks", "ok", "failed", "wall_s", "speedup_vs_sequential",
    "cpu_s", "utilisation", "command", "exit_code", "error", "started_at", "load_1m",  # load: 1-min average as the run ended
]
KEY_COLUMNS = ("task", "mode", "workers", "repeat")

EXIT_INTERRUPTED = {130, 143}  # the coordinator's exits on SIGINT / SIGTERM


class UsageError(Exception):
    """A bad argument: the script prints it and exits 2."""


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the script; `code` is the exit status to end with."""

    def __init__(self, code):
        super().__init__(f"interrupted ({code})")
        self.code = code


def raise_interrupted_on_sigterm():
    """Makes SIGTERM end the script the way Ctrl-C does: through `Interrupted`, so files are left whole."""

    def handler(signum, frame):
        raise Interrupted(143)

    signal.signal(signal.SIGTERM, handler)


def available_cpus():
    return len(os.sched_getaffinity(0))


def load_text():
    """The 1-minute load average against the core count: how busy the machine was with other work."""
    return f"load average {os.getloadavg()[0]:.1f} on {available_cpus()} cores"




def coordinator_help(coordinator):
    """The coordinator's --help text; UsageError naming --coordinator if it cannot be run."""
    path = Path(coordinator)
    if not path.is_file() or not os.access(path, os.X_OK):
        raise UsageError(f"argument --coordinator: cannot run '{coordinator}': not an executable file "
                         f"(build it with scripts/setup)")
    try:
        done = subprocess.run([str(path), "--help"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UsageError(f"argument --coordinator: cannot run '{coordinator} --help': {e}") from e
    if done.returncode != 0:
        raise UsageError(f"argument --coordinator: '{coordinator} --help' exited {done.returncode}")
    return done.stdout


def option_help(help_text, option):
    """The part of --help that describes `option` (its line and the description lines under it)."""
    lines = help_text.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"\s*(-\w,)?{re.escape(option)}\b", line):
            block = [line]
            for follow in lines[i + 1:]:
                if re.match(r"\s*-", follow) or not follow.strip():
                    break
                block.append(follow)
            return "\n".join(block)
    return ""


def supports(help_text, option, word=None):
    """Whether the coordinator has `option` and, if `word` is given, mentions `word` in its help."""
    block = option_help(help_text, option)
    if not block:
        return False
    return word is None or re.search(rf"\b{re.escape(word)}\b", block) is not None


@dataclass
class RunResult:
    exit_code: int        # the coordinator's exit status; negative: killed by that signal
    report: dict | None   # its --json report, if it wrote one
    error: str            # one line saying why, if the run failed
    timed_out: bool = False


def last_error_line(log_text):
    """The most telling line of a failed run's output: its last error log line, else its last line."""
    lines = [line.strip() for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.search(r"\b(error|critical)\b", line) or line.startswith("--") or "ERROR" in line:
            return line
    return lines[-1] if lines else ""


def run_coordinator(argv, json_path, log_path, timeout_s=None):
    """Runs one coordinator command, its stdout and stderr to `log_path`, and reads `json_path`.

    Ctrl-C: the coordinator, in our process group, gets the same SIGINT, stops and exits 130;
    if it still runs 2 s later (the signal was sent to us alone) we pass SIGINT on, then kill.
    Either way we wait for it, so no coordinator outlives the script, then raise Interrupted.
    """
    json_path = Path(json_path)
    json_path.unlink(missing_ok=True)
    timed_out = False
    with open(log_path, "w") as log:
        log.write("$ " + shlex.join(argv) + "\n")
        log.flush()
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            try:
                process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                stop(process, signal.SIGTERM, grace_s=0.0)
        except KeyboardInterrupt:
            stop(process, signal.SIGINT, grace_s=2.0)
            raise Interrupted(130)
        except Interrupted:
            stop(process, signal.SIGTERM, grace_s=0.0)
            raise
    report = None
    if json_path.is_file():
        try:
            report = json.loads(json_path.read_text())
        except ValueError:
            report = None
    code = process.returncode
    error = ""
    if timed_out:
        error = f"timed out after {timeout_s:g} s"
    elif code != 0:
        why = last_error_line(Path(log_path).read_text(errors="replace"))
        error = f"exit {code}" + (f": {why}" if why else "")
    return RunResult(exit_code=code, report=report, error=error, timed_out=timed_out)


def stop(process, first_signal, grace_s):
    """Waits `grace_s` for `process` to end, then sends `first_signal`, waits 10 s more, then kills."""
    for sig in (None, first_signal, signal.SIGKILL):
        if sig is not None and process.poll() is None:
            process.send_signal(sig)
        try:
            process.wait(timeout=grace_s if sig is None else 10.0)
            return
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:  # a second Ctrl-C: no more patience
            continue


def short_path(path):
    """`path` relative to the current directory if it is under it (commands read better), else absolute."""
    relative = os.path.relpath(Path(path).resolve())
    return relative if not relative.startswith("..") else str(Path(path).resolve())


def command_text(argv):
    """The command as a user would type it: shell-quoted."""
    return shlex.join(str(a) for a in argv)




@dataclass(frozen=True)
class Setting:
    task: str
    mode: str
    workers: int
    repeat: int

    def key(self):
        return (self.task, self.mode, str(self.workers), str(self.repeat))

    def name(self):
        return f"{self.task}-{self.mode}-w{self.workers}-r{self.repeat}"


def run_order(tasks, modes, workers, repeats, seed):
    """Every setting once per repeat, as randomised blocks.

    Repeat r is one block holding every (task, mode, workers) once, shuffled; the blocks run in
    order. Noise that drifts over the sweep (another job starting, the CPU warming up) then
    falls on every setting alike instead of on the ones that happen to run late, and a run and
    the sequential run it is compared with share a block.
    """
    rng = random.Random(seed)
    order = []
    for repeat in range(1, repeats + 1):
        block = [Setting(t, m, w, repeat) for t in tasks for m in modes for w in workers]
        rng.shuffle(block)
        order.extend(block)
    return order




def row_from_result(setting, argv, result, tasks_arg, started_at):
    """The CSV row (every value a string) of one finished run."""
    row = dict.fromkeys(CSV_COLUMNS, "")
    row.update(task=setting.task, mode=setting.mode, workers=str(setting.workers), repeat=str(setting.repeat),
               command=command_text(argv), exit_code=str(result.exit_code), error=result.error,
               started_at=started_at, load_1m=f"{os.getloadavg()[0]:.2f}")
    if tasks_arg:
        row["tasks"] = str(tasks_arg)
    runs = (result.report or {}).get("runs") or []
    run = next((r for r in runs if r.get("mode") == setting.mode), None)
    if run is not None and not run.get("interrupted") and not result.timed_out:
        row.update(tasks=str(run["tasks"]), ok=str(run["ok"]), failed=str(run["failed"]),
                   wall_s=f"{run['wall_s']:.6f}", cpu_s=f"{run['cpu_s']:.6f}",
                   utilisation=f"{run['utilisation']:.4f}")
    if row["failed"] not in ("", "0") and not result.timed_out:
        failures = run.get("failures") or []
        first = f"task {failures[0]['id']}: {failures[0]['error']}" if failures else ""
        row["error"] = f"{row['failed']} task(s) failed" + (f", first {first}" if first else "")
    return row


def row_succeeded(row):
    """A run that finished every task: its times mean something."""
    return row.get("exit_code") == "0" and row.get("wall_s", "") != "" and row.get("failed") == "0"


def fill_speedups(rows):
    """Sets each row's speedup_vs_sequential from the sequential run of the same task, workers and
    repeat (the same block of the sweep): that run's wall_s / this run's. Empty where either run
    failed or there is no such sequential run. Rows are changed in place and returned."""
    sequential = {(r["task"], r["workers"], r["repeat"]): r for r in rows if r["mode"] == "sequential"}
    for row in rows:
        base = sequential.get((row["task"], row["workers"], row["repeat"]))
        row["speedup_vs_sequential"] = ""
        if base is None or not row_succeeded(row) or not row_succeeded(base):
            continue
        wall = float(row["wall_s"])
        if wall > 0:
            row["speedup_vs_sequential"] = f"{float(base['wall_s']) / wall:.4f}"
    return rows


def write_csv(path, rows):
    """Writes every row to `path` through a temp file and a rename: the CSV on disk is always
    whole, whatever moment a Ctrl-C or a kill comes at."""
    path = Path(path)
    temp = path.with_name(path.name + ".tmp")
    with open(temp, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)


def read_csv(path):
    """The rows of an earlier sweep's CSV ([] if there is none); UsageError if it is not one."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in KEY_COLUMNS + ("command", "exit_code") if c not in (reader.fieldnames or [])]
        if missing:
            raise UsageError(f"argument --out: '{path}' is not a sweep CSV (no column {', '.join(missing)})")
        return [{c: (row.get(c) or "") for c in CSV_COLUMNS} for row in reader]


def comparable_command(command):
    """A row's command without what differs between identical runs (binary path, --json file)."""
    argv = shlex.split(command)[1:]
    out = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--json":
            skip = True
            continue
        out.append(arg)
    return out




@dataclass
class Stats:
    values: list = field(default_factory=list)

    def text(self, fmt="{:.3f}", prefix=""):
        if not self.values:
            return "-"
        med = statistics.median(self.values)
        if len(self.values) == 1:
            return prefix + fmt.format(med)
        return (prefix + fmt.format(med) + " (" + prefix + fmt.format(min(self.values)) + " - "
                + prefix + fmt.format(max(self.values)) + ")")


def group_rows(rows):
    """{(task, mode, workers): [rows]}, in a stable order: task, then mode, then workers."""
    groups = {}
    for row in rows:
        groups.setdefault((row["task"], row["mode"], int(row["workers"])), []).append(row)
    mode_rank = {m: i for i, m in enumerate(["sequential", "threads", "gil-threads", "processes"])}
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], mode_rank.get(kv[0][1], 99), kv[0][1], kv[0][2])))


def summary_markdown(rows, title_lines=()):
    """DIR/summary.md: per setting, the median and the min - max over its repeats."""
    out = io.StringIO()
    out.write("# Sweep summary\n\n")
    for line in title_lines:
        out.write(line + "\n")
    if title_lines:
        out.write("\n")
    out.write("Per setting: the median over its successful repeats, and (min - max). speedup is the paired\n"
              "sequential run's wall_s / this run's, in the same repeat; see docs/experiments.md.\n\n")
    out.write("| task | mode | workers | tasks | runs ok | wall_s | speedup | cpu_s | utilisation |\n")
    out.write("|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
    for (task, mode, workers), group in group_rows(rows).items():
        good = [r for r in group if row_succeeded(r)]
        wall = Stats([float(r["wall_s"]) for r in good])
        speed = Stats([float(r["speedup_vs_sequential"]) for r in good if r["speedup_vs_sequential"]])
        cpu = Stats([float(r["cpu_s"]) for r in good])
        util = Stats([100 * float(r["utilisation"]) for r in good])
        tasks = sorted({r["tasks"] for r in group if r["tasks"]})
        out.write(f"| {task} | {mode} | {workers} | {','.join(tasks) or '-'} | {len(good)}/{len(group)} | "
                  f"{wall.text()} | {speed.text('{:.2f}', 'x')} | {cpu.text()} | {util.text('{:.0f}%')} |\n")
    failed = [r for r in rows if not row_succeeded(r)]
    if failed:
        out.write(f"\n## Failed runs ({len(failed)})\n\n")
        for r in failed:
            out.write(f"- {r['task']} {r['mode']} workers={r['workers']} repeat={r['repeat']}: "
                      f"{r['error'] or 'exit ' + r['exit_code']}\n")
    return out.getvalue()


def write_text_atomically(path, text):
    path = Path(path)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text(text)
    os.replace(temp, path)




def ideal_for_tasks(tasks, workers):
    """The best speedup `tasks` equal tasks allow on `workers`: the rounds shrink from tasks to ceil(tasks/workers)."""
    return tasks / math.ceil(tasks / workers)


def median_series(groups, task, mode, all_workers, column):
    """For one line of a plot: the worker counts with successful runs of `task` in `mode`, the
    median of `column` over their repeats, and its distance to the min and the max (error bars)."""
    xs, ys, lo, hi = [], [], [], []
    for workers in all_workers:
        values = [float(r[column]) for r in groups.get((task, mode, workers), []) if row_succeeded(r) and r[column]]
        if values:
            med = statistics.median(values)
            xs.append(workers)
            ys.append(med)
            lo.append(med - min(values))
            hi.append(max(values) - med)
    return xs, ys, lo, hi


def plot_speedup(rows, path, cores):
    """DIR/speedup.png: a panel per task, speedup vs workers, a line per mode (the median, with
    min - max bars), the ideal line and the machine's core count. Returns the panels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_rows(rows)
    tasks = sorted({task for task, _, _ in groups})
    modes = [m for m in dict.fromkeys(mode for _, mode, _ in groups) if m != "sequential"]
    all_workers = sorted({w for _, _, w in groups})
    colours = {"threads": "tab:blue", "gil-threads": "tab:orange", "processes": "tab:green"}
    markers = {"threads": "o", "gil-threads": "s", "processes": "^"}

    figure, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5.2 * max(1, len(tasks)), 4.2), squeeze=False)
    top = max([1.0] + all_workers)
    for ax, task in zip(axes[0], tasks):
        drew = False
        for mode in modes:
            xs, ys, lo, hi = median_series(groups, task, mode, all_workers, "speedup_vs_sequential")
            if xs:
                top = max(top, max(y + h for y, h in zip(ys, hi)))
            if xs:
                drew = True
                ax.errorbar(xs, ys, yerr=[lo, hi], marker=markers.get(mode, "D"), capsize=3,
                            color=colours.get(mode), label=mode)
        ax.plot(all_workers, all_workers, linestyle="--", color="grey", label="ideal: x workers")
        counts = {int(r["tasks"]) for r in rows if r["task"] == task and r["tasks"]}
        if len(counts) == 1:
            n = counts.pop()
            steps = [ideal_for_tasks(n, w) for w in all_workers]
            if any(abs(s - w) > 1e-9 for s, w in zip(steps, all_workers)):
                ax.plot(all_workers, steps, linestyle=":", color="grey", label=f"ideal for {n} tasks")
        if task == "cpu":
            capped = [min(w, cores) for w in all_workers]
            if capped != all_workers:
                ax.plot(all_workers, capped, linestyle=(0, (1, 3)), color="black", label=f"CPU-bound: {cores} cores at most")
        if cores <= max(all_workers) * 1.5:
            ax.axvline(cores, color="black", linestyle="-.", linewidth=1)
            ax.annotate(f"{cores} cores", xy=(cores, 0.02), xycoords=("data", "axes fraction"),
                        xytext=(4, 0), textcoords="offset points", fontsize=8)
        ax.axhline(1, color="lightgrey", linewidth=1)
        ax.set_title(f"--task {task}" + ("" if drew else " (no speedup: no paired sequential run)"))
        ax.set_xlabel("workers (threads or processes)")
        ax.set_ylabel("speedup vs sequential")
        if len(all_workers) > 1 and all_workers[-1] / all_workers[0] >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(all_workers)
        ax.set_xticklabels([str(w) for w in all_workers])
        ax.set_ylim(0, top * 1.1)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    figure.suptitle(f"taskfarm speedup vs workers ({cores} cores; median and min - max over repeats)", fontsize=10)
    figure.tight_layout()
    temp = Path(path).with_name(Path(path).name + ".tmp.png")
    figure.savefig(temp, dpi=80)
    plt.close(figure)
    os.replace(temp, path)
    return tasks


def plot_wall_time(rows, path):
    """DIR/wall_time.png, for a sweep without sequential runs (so no speedup): a panel per
    task, wall time vs workers, a line per mode (the median, with min - max bars). Returns
    the panels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = group_rows(rows)
    tasks = sorted({task for task, _, _ in groups})
    all_workers = sorted({w for _, _, w in groups})
    figure, axes = plt.subplots(1, max(1, len(tasks)), figsize=(5.2 * max(1, len(tasks)), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for mode in dict.fromkeys(m for t, m, _ in groups if t == task):
            xs, ys, lo, hi = median_series(groups, task, mode, all_workers, "wall_s")
            if xs:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=mode)
        ax.set_title(f"--task {task}")
        ax.set_xlabel("workers (threads or processes)")
        ax.set_ylabel("wall time (s)")
        if len(all_workers) > 1 and all_workers[-1] / all_workers[0] >= 8:
            ax.set_xscale("log", base=2)
        ax.set_xticks(all_workers)
        ax.set_xticklabels([str(w) for w in all_workers])
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="upper right")
    figure.suptitle("taskfarm wall time vs workers (median and min - max over repeats; no sequential run, "
                    "so no speedup)", fontsize=10)
    figure.tight_layout()
    temp = Path(path).with_name(Path(path).name + ".tmp.png")
    figure.savefig(temp, dpi=80)
    plt.close(figure)
    os.replace(temp, path)
    return tasks


def format_duration(seconds):
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{seconds // 60}:{seconds % 60:02d}"
