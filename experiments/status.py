"""Where every run stands: its state, iterations done, the latest return, seconds per iteration and time left.

    python -m experiments.status                          # runs under benchmarks/ and runs/ that can continue
    python -m experiments.status benchmarks/quick runs/point-robot
    python -m experiments.status --all                    # every run, finished ones included

A run is any folder holding a ``config.json``. This reads only what runs write as they go (``metrics.jsonl``,
``checkpoint.pt``, ``results.json``) and which processes run now (``--run-dir`` or ``--resume`` on a command line
in ``/proc``), so it is safe beside running runs.

States: ``running``; ``resumable`` (stopped with a checkpoint: the runner or ``--resume`` continues it);
``carried`` (its checkpoint is only in ``carry/``: ``python -m experiments.carry restore`` makes it resumable);
``finished`` (``results.json``); ``no checkpoint`` (not resumable here, e.g. a fresh clone of committed metrics: a
runner starts it afresh). The last two are listed with ``--all``. *s/iteration* is the median of the last three
iterations' durations; *min left* is the iterations still to run at that pace (the final low-noise evaluation comes
on top, and a pace measured while the machine was busier or idler than it will be misleads alike).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from algos.core.config import ConfigError
from experiments.carry import DEFAULT_ROOTS, carried_checkpoint, find_runs
from experiments.report import display_path, fmt, table

RECENT_ITERATIONS = 3  # the pace is the median of this many latest iteration durations
STATE_ORDER = ("carried", "running", "resumable", "finished", "no checkpoint")  # what needs attention first
LISTED = ("carried", "running", "resumable")  # without --all


def read_metrics(run_dir: Path, strict: bool = False) -> list[dict]:
    """The run's per-iteration rows; a torn last line (a write in progress) is skipped, or with ``strict`` (a
    finished run, whose file must be whole) any line that is not JSON is a ``ConfigError`` naming it."""
    rows = []
    path = run_dir / "metrics.jsonl"
    for number, line in enumerate(path.read_text().splitlines() if path.exists() else [], start=1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            if strict and line.strip():
                raise ConfigError(f"{path} line {number} is not JSON: the metrics file is corrupt") from None
    return rows


def running_run_dirs(proc: Path = Path("/proc")) -> set[Path]:
    """Run directories named by ``--run-dir`` or ``--resume`` on a live process's command line (Linux)."""
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


def run_status(run_dir: Path, running: set[Path]) -> dict:
    config = json.loads((run_dir / "config.json").read_text())
    rows = read_metrics(run_dir)
    durations = [b["wall_time_s"] - a["wall_time_s"] for a, b in zip(rows, rows[1:])]
    recent = durations[-RECENT_ITERATIONS:] or [row["wall_time_s"] for row in rows[:1]]
    if (run_dir / "results.json").exists():
        state = "finished"
    elif run_dir.resolve() in running:
        state = "running"
    elif (run_dir / "checkpoint.pt").exists():
        state = "resumable"
    else:
        state = "carried" if carried_checkpoint(run_dir) is not None else "no checkpoint"
    planned = int(config["protocol"]["num_iterations"])
    pace = statistics.median(recent) if recent else None
    return {"run_dir": str(run_dir), "env": config.get("env"), "algo": config.get("algo"),
            "tier": config.get("tier"), "seed": config.get("seed"), "state": state, "iterations_done": len(rows),
            "iterations_planned": planned, "meta_test_return": rows[-1].get("meta_test_return") if rows else None,
            "seconds_per_iteration": pace,
            # a run without a checkpoint starts afresh
            "minutes_left": None if pace is None or state == "finished"
            else (planned if state == "no checkpoint" else max(planned - len(rows), 0)) * pace / 60}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.status", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("roots", nargs="*", default=list(DEFAULT_ROOTS), help="folders to search for runs")
    parser.add_argument("--all", action="store_true", help="list finished runs and runs without a checkpoint too")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    missing = [root for root in args.roots if not Path(root).exists()]
    if missing and len(missing) == len(args.roots):
        parser.error(f"no such folder: {', '.join(missing)}")
    running = running_run_dirs()
    statuses = [run_status(run_dir, running) for run_dir in find_runs([Path(r) for r in args.roots])]
    statuses = [s for s in statuses if args.all or s["state"] in LISTED]
    statuses.sort(key=lambda s: STATE_ORDER.index(s["state"]))  # stable: by path within a state
    if args.json:
        print(json.dumps(statuses, indent=1))
        return 0
    rows = [[display_path(Path(s["run_dir"])), s["state"], f"{s['iterations_done']}/{s['iterations_planned']}",
             fmt(s["meta_test_return"]), fmt(s["seconds_per_iteration"], 0), fmt(s["minutes_left"], 0)]
            for s in statuses]
    print(table(["run", "state", "iterations", "latest meta_test_return", "s/iteration", "min left"], rows) if rows
          else "no running, resumable or carried runs (--all lists every run)")
    if any(s["state"] == "carried" for s in statuses):
        print("carried runs have their checkpoints in carry/ only: `python -m experiments.carry restore` first")
    return 0


if __name__ == "__main__":
    sys.exit(main())
