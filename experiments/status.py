"""Where every run stands: iterations done, the latest return, seconds per iteration, and when it will finish.

    python -m experiments.status                                   # every run under benchmarks/ and runs/
    python -m experiments.status benchmarks/dev/cheetah-split-default runs/point-robot
    python -m experiments.status --all                             # lost and finished runs too

A run is any directory with a ``config.json`` (a benchmark cell or an ``experiments.run`` run directory). It reads
only what runs write as they go (``metrics.jsonl`` after every iteration, ``checkpoint.pt``, ``results.json`` at the
end) and which processes run now (``--run-dir`` on a command line in ``/proc``), so it is safe beside the runs.

*state*: ``running`` (a process holds the run directory), ``finished`` (``results.json``), ``resumable`` (stopped
with a checkpoint: the runner or ``--resume`` continues it), ``carried`` (its checkpoint is gone but ``carry/``
holds a copy: ``python -m experiments.carry restore`` makes it resumable) or ``lost`` (stopped before its first
checkpoint, or its checkpoint is gone: it starts afresh). *s/iteration* is the median over the last three
iterations, and *ETA* the remaining iterations at that pace (the final evaluation not counted) for a running run: in a workplace where
the machine does not outlive a session, a run whose ETA lies past the session's end is lost.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

from algos.core.config import ConfigError
from experiments.report import DASH, display_path, fmt, table

DEFAULT_ROOTS = ("benchmarks", "runs")
RECENT_ITERATIONS = 3  # the pace is the median of this many latest iteration durations
STATE_ORDER = ("carried", "running", "resumable", "lost", "finished")  # what needs attention first


def find_runs(roots: list[Path]) -> list[Path]:
    """Every run directory (one holding ``config.json``) under ``roots``, sorted."""
    runs = {path.parent for root in roots if root.exists() for path in root.rglob("config.json")}
    return sorted(runs)


def read_metrics(run_dir: Path, strict: bool = False) -> list[dict]:
    """The run's per-iteration rows; a torn last line (a write in progress) is skipped, or with ``strict`` (a
    finished run, whose file must be whole) any line that is not JSON is a ``ConfigError`` naming it."""
    rows = []
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            try:
                rows.append(json.loads(line))
            except ValueError:
                if strict and line.strip():
                    raise ConfigError(f"{path} line {number} is not JSON: the metrics file is corrupt") from None
                continue
    return rows


def running_run_dirs(proc: Path = Path("/proc")) -> set[Path]:
    """Run directories named by ``--run-dir`` or ``--resume`` on a live process's command line (Linux; empty
    elsewhere). A relative path is taken as relative to that process's working directory."""
    held = set()
    for cmdline in proc.glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        for flag, value in zip(args, args[1:]):
            if flag in (b"--run-dir", b"--resume") and value:
                path = Path(value.decode(errors="replace"))
                if not path.is_absolute():
                    try:
                        path = Path(os.readlink(cmdline.parent / "cwd")) / path
                    except OSError:  # not ours to read, or gone: take it as relative to here
                        pass
                held.add(path.resolve())
    return held


def run_status(run_dir: Path, running: set[Path], now: datetime) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    planned = int(config["protocol"]["num_iterations"])
    rows = read_metrics(run_dir)
    done = len(rows)
    durations = [b["wall_time_s"] - a["wall_time_s"] for a, b in zip(rows, rows[1:])]
    recent = durations[-RECENT_ITERATIONS:] or [row["wall_time_s"] for row in rows[:1]]
    pace = statistics.median(recent) if recent else None
    if (run_dir / "results.json").exists():
        state = "finished"
    elif run_dir.resolve() in running:
        state = "running"
    elif (run_dir / "checkpoint.pt").exists():
        state = "resumable"
    else:
        state = "lost"
    eta = None
    if state == "running" and pace is not None:
        # counted from when the last iteration ended (metrics.jsonl's last write), not from now
        last_row_at = datetime.fromtimestamp((run_dir / "metrics.jsonl").stat().st_mtime, timezone.utc) if rows else now
        eta = last_row_at + timedelta(seconds=pace * (planned - done))
    return {"run_dir": str(run_dir), "env": config.get("env"), "algo": config.get("algo"),
            "tier": config.get("tier"), "seed": config.get("seed"), "state": state,
            "iterations_done": done, "iterations_planned": planned,
            "meta_test_return": rows[-1].get("meta_test_return") if rows else None,
            "seconds_per_iteration": pace, "eta": eta.isoformat(timespec="minutes") if eta else None}


def render(statuses: list[dict]) -> str:
    rows = [[display_path(Path(s["run_dir"])), s["state"], f"{s['iterations_done']}/{s['iterations_planned']}",
             fmt(s["meta_test_return"]), fmt(s["seconds_per_iteration"], 0),
             s["eta"].replace("T", " ") if s["eta"] else DASH] for s in statuses]
    return table(["run", "state", "iterations", "latest meta_test_return", "s/iteration", "ETA (UTC)"], rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="*", default=list(DEFAULT_ROOTS), help="folders to search for runs")
    parser.add_argument("--all", action="store_true", help="list lost and finished runs too")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    missing = [root for root in args.roots if not Path(root).exists()]
    if missing and len(missing) == len(args.roots):
        parser.error(f"no such folder: {', '.join(missing)}")
    now = datetime.now(timezone.utc)
    running = running_run_dirs()
    statuses = [run_status(run_dir, running, now) for run_dir in find_runs([Path(r) for r in args.roots])]
    from experiments.carry import carried_checkpoint  # here, not at the top: experiments.carry builds on this module
    for s in statuses:
        if s["state"] == "lost" and carried_checkpoint(Path(s["run_dir"])) is not None:
            s["state"] = "carried"
    # a lost run is usually one stopped on purpose long ago (or one a runner restarts from scratch): counted, not listed
    lost = sum(s["state"] == "lost" for s in statuses)
    if not args.all:
        statuses = [s for s in statuses if s["state"] in ("carried", "running", "resumable")]
    statuses.sort(key=lambda s: STATE_ORDER.index(s["state"]))  # stable: by path within a state
    if args.json:
        print(json.dumps(statuses, indent=1))
        return 0
    print(render(statuses) if statuses else "no running or resumable runs")
    if any(s["state"] == "carried" for s in statuses):
        print("carried runs lost their checkpoints in this checkout: `python -m experiments.carry restore` first")
    if lost and not args.all:
        print(f"{lost} lost run(s) not listed (stopped before a checkpoint, or the checkpoint is gone): --all lists them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
