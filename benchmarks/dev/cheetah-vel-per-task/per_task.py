"""Where cheetah-vel's test figure and validation figure part: every finished benchmark-tier cheetah-vel run's
low-noise final return per task, beside the goal velocity of that task.

    python benchmarks/dev/cheetah-vel-per-task/per_task.py

Reads the committed ``results.json`` of the table's cells (``benchmarks/benchmark/cells/cheetah-vel``) and of the
tuning trials (``benchmarks/benchmark/selection/*/benchmark/cells/cheetah-vel``); trains and evaluates nothing.
Writes ``per_task.json`` and ``README.md`` beside this file.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from algos.core.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402
from envs_glue import env_spec  # noqa: E402
from experiments.report import provenance, report_heading  # noqa: E402
from experiments.results_table import grid_point_of  # noqa: E402

ENV = "cheetah-vel"


def task_velocities() -> dict[str, np.ndarray]:
    env = env_spec(ENV).env_class()
    return {split: env.task_array[env.task_ids(split), 0] for split in ("train", "test", "validation")}


def run_rows() -> list[dict]:
    """One row per finished run: where it is, method, setting, seed and its per-task low-noise final returns."""
    patterns = (f"benchmarks/benchmark/cells/{ENV}/*/*/results.json",
                f"benchmarks/benchmark/selection/*/benchmark/cells/{ENV}/*/*/results.json")
    rows = []
    for path in sorted(path for pattern in patterns for path in REPO.glob(pattern)):
        results = read_json(path)
        final = results["final_eval"]
        if "per_validation_task_final_returns" not in final:
            continue  # a run from before the validation tasks
        rows.append({"run": str(path.parent.relative_to(REPO)), "algo": results["algo"], "seed": results["seed"],
                     "kind": "tuning trial" if "/selection/" in str(path) else "table cell",
                     "setting": grid_point_of(results["config"]["agent"]),
                     "test": final["per_task_final_returns"],
                     "validation": final["per_validation_task_final_returns"]})
    return rows


def main() -> int:
    started = time.perf_counter()
    velocities = task_velocities()
    below_training = velocities["test"] < velocities["train"].min()
    rows = run_rows()
    for row in rows:
        test = np.asarray(row["test"])
        row["test_mean"] = float(test.mean())
        row["validation_mean"] = float(np.mean(row["validation"]))
        row["test_mean_within_training_range"] = float(test[~below_training].mean())
    report = {**provenance("python benchmarks/dev/cheetah-vel-per-task/per_task.py"),
              "velocities": {split: v.tolist() for split, v in velocities.items()},
              "test_tasks_below_training_range": np.flatnonzero(below_training).tolist(),
              "runs": rows}
    report["wall_time_s"] = round(time.perf_counter() - started, 2)
    atomic_write_json(HERE / "per_task.json", report)
    atomic_write_text(HERE / "README.md", render(report))
    print(f"wrote {HERE / 'README.md'} ({len(rows)} runs)")
    return 0


def render(report: dict) -> str:
    velocities = {split: np.asarray(v) for split, v in report["velocities"].items()}
    order = {split: np.argsort(velocities[split]) for split in ("test", "validation")}
    lines = report_heading("cheetah-vel: returns per task", report, f"; {report['wall_time_s']} s")
    lines += [
        "Every finished benchmark-tier cheetah-vel run with validation figures: its low-noise final evaluation (the "
        "final episode's return, 10 repeats) on each test and each validation task, tasks sorted by goal velocity. "
        "Nothing is selected on these figures; they say where the test and the validation figures part.",
        "",
        f"**Task lists** (`RandomState(1337).uniform(0, 3)`: 30 training, then 10 test tasks; validation "
        f"`RandomState(4242)`, 10): training velocities span {velocities['train'].min():.2f}-"
        f"{velocities['train'].max():.2f}; test {', '.join(f'{v:.2f}' for v in np.sort(velocities['test']))}; "
        f"validation {', '.join(f'{v:.2f}' for v in np.sort(velocities['validation']))}. "
        f"{len(report['test_tasks_below_training_range'])} test task(s) lie below every training velocity; no "
        "validation task does.",
        ""]
    for split in ("test", "validation"):
        header = " | ".join(f"{v:.2f}" for v in velocities[split][order[split]])
        extra = " | mean | mean within training range" if split == "test" else " | mean"
        lines += [f"## {split.capitalize()} tasks (goal velocity in the header)", "",
                  f"| run | method | setting | seed | {header}{extra} |",
                  "|" + "---|" * (4 + len(velocities[split]) + (2 if split == "test" else 1))]
        for row in report["runs"]:
            returns = np.asarray(row[split])[order[split]]
            cells = " | ".join(f"{r:.1f}" for r in returns)
            tail = (f" | {row['test_mean']:.2f} | {row['test_mean_within_training_range']:.2f}" if split == "test"
                    else f" | {row['validation_mean']:.2f}")
            lines.append(f"| {row['kind']} | {row['algo']} | `{row['setting']}` | {row['seed']} | {cells}{tail} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
