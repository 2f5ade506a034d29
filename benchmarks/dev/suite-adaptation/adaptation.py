"""What in-context adaptation adds on PEARL's MuJoCo suite: per quick-tier cell, the return of the exploring
episodes of a meta-test trial against the adapted ones after them, from the low-noise final evaluation.

    python benchmarks/dev/suite-adaptation/adaptation.py

Reads the committed ``results.json`` of ``benchmarks/quick/cells/<env>`` for the suite's environments; trains and
evaluates nothing. Writes ``adaptation.json`` and ``README.md`` beside this file.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from algos.core.io import atomic_write_json, atomic_write_text  # noqa: E402
from experiments.report import provenance, report_heading  # noqa: E402
from experiments.results_table import collect_cells  # noqa: E402

SUITE = ("cheetah-dir", "ant-dir", "ant-goal", "humanoid-dir", "walker-rand-params", "hopper-rand-params")


def cell_rows() -> list[dict]:
    """One row per finished suite cell: its exploring episodes' returns and the first adapted episode's, each
    averaged over tasks and the low-noise repeats (``final_eval.online_returns``: the episodes every trial ran),
    and the score, each trial's final episode (``final_eval.meta_test_return``)."""
    cells, problems = collect_cells(REPO / "benchmarks" / "quick")
    for problem in problems:
        print(problem, file=sys.stderr)
    rows = []
    for cell in cells:
        if cell["env"] not in SUITE:
            continue
        exploring = cell["protocol"]["num_exp_traj_eval"]
        online, scored = cell["final_eval"]["online_returns"], cell["final_eval"]["meta_test_return"]
        rows.append({"env": cell["env"], "algo": cell["algo"], "seed": cell["seed"], "episodes": len(online),
                     "exploring": online[:exploring], "first_adapted": online[exploring], "scored": scored,
                     "gain": scored - online[0]})
    return sorted(rows, key=lambda row: (SUITE.index(row["env"]), row["algo"], row["seed"]))


def main() -> int:
    started = time.perf_counter()
    report = {**provenance("python benchmarks/dev/suite-adaptation/adaptation.py"), "cells": cell_rows()}
    report["wall_time_s"] = round(time.perf_counter() - started, 2)
    atomic_write_json(HERE / "adaptation.json", report)
    atomic_write_text(HERE / "README.md", render(report))
    print(f"wrote {HERE / 'README.md'} ({len(report['cells'])} cells)")
    return 0


def render(report: dict) -> str:
    lines = report_heading("PEARL's MuJoCo suite: exploring against adapted episodes", report,
                           f"; {report['wall_time_s']} s")
    lines += [
        "Every finished quick-tier cell of the suite, its low-noise final evaluation (10 repeats on each test task): "
        "the return of each episode of a meta-test trial, averaged over tasks and repeats. The exploring episodes "
        "act stochastically on the method's prior or hypotheses; the later ones act deterministically on what the "
        "method inferred, and each trial's last is the protocol's score (*scored*). Where a body can fall, a trial "
        "runs more episodes: *episodes* counts those every trial ran. *gain*: scored minus the first exploring "
        "episode. Nothing is selected on these figures.",
        "",
        "| env | method | seed | episodes | exploring | first adapted | scored | gain |",
        "|---|---|---|---|---|---|---|---|"]
    for row in report["cells"]:
        exploring = " / ".join(f"{r:.1f}" for r in row["exploring"])
        lines.append(f"| {row['env']} | {row['algo']} | {row['seed']} | {row['episodes']} | {exploring} | "
                     f"{row['first_adapted']:.1f} | {row['scored']:.1f} | {row['gain']:+.1f} |")
    lines += ["", "**Mean gain over seeds** (scored minus first exploring episode; n = seeds finished):", "",
              "| env | method | mean gain | n |", "|---|---|---|---|"]
    groups: dict[tuple[str, str], list[float]] = {}
    for row in report["cells"]:
        groups.setdefault((row["env"], row["algo"]), []).append(row["gain"])
    for (env, algo), gains in groups.items():
        lines.append(f"| {env} | {algo} | {statistics.mean(gains):+.1f} | {len(gains)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
