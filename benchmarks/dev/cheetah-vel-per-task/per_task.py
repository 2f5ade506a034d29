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
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
sys.path.insert(0, str(REPO))

from algos.core.io import atomic_write_json, atomic_write_text  # noqa: E402
from envs_glue import env_spec  # noqa: E402
from envs_glue.base import VALIDATION_TASK_SEED  # noqa: E402
from envs_glue.cheetah_vel import TASK_SEED  # noqa: E402
from experiments.report import provenance, report_heading, table  # noqa: E402
from experiments.results_table import collect_cells, grid_point_of  # noqa: E402

ENV = "cheetah-vel"


def task_velocities() -> dict[str, np.ndarray]:
    env = env_spec(ENV).env_class()
    return {split: env.task_array[env.task_ids(split), 0] for split in ("train", "test", "validation")}


def run_rows() -> list[dict]:
    """One row per finished run (the table's cells, then each grid point's tuning trials): method, setting, seed
    and its per-task low-noise final returns."""
    benchmark = REPO / "benchmarks" / "benchmark"
    tier_dirs = [(benchmark, "table cell")] + [(point / "benchmark", "tuning trial")
                                               for point in sorted((benchmark / "selection").glob("*/"))]
    rows = []
    for tier_dir, kind in tier_dirs:
        cells, problems = collect_cells(tier_dir)
        for problem in problems:
            print(problem, file=sys.stderr)
        for cell in cells:
            final = cell["final_eval"]
            if cell["env"] != ENV or "per_validation_task_final_returns" not in final:
                continue  # another environment, or a run from before the validation tasks
            rows.append({"run": str(Path(tier_dir, cell["cell_dir"]).relative_to(REPO)), "algo": cell["algo"],
                         "seed": cell["seed"], "kind": kind, "setting": grid_point_of(cell["shared_hyperparameters"]),
                         "test": final["per_task_final_returns"],
                         "validation": final["per_validation_task_final_returns"]})
    return rows


def main() -> int:
    started = time.perf_counter()
    velocities = task_velocities()
    below_training = {split: velocities[split] < velocities["train"].min() for split in ("test", "validation")}
    slower_than_validation = velocities["test"] < velocities["validation"].min()
    rows = run_rows()
    for row in rows:
        test = np.asarray(row["test"])
        row["test_mean"] = float(test.mean())
        row["validation_mean"] = float(np.mean(row["validation"]))
        row["test_mean_within_training_range"] = float(test[~below_training["test"]].mean())
        row["test_mean_slower_than_validation"] = float(test[slower_than_validation].mean())
        row["test_mean_within_validation_span"] = float(test[~slower_than_validation].mean())
    report = {**provenance("python benchmarks/dev/cheetah-vel-per-task/per_task.py"),
              "velocities": {split: v.tolist() for split, v in velocities.items()},
              "test_tasks_below_training_range": np.flatnonzero(below_training["test"]).tolist(),
              "validation_tasks_below_training_range": np.flatnonzero(below_training["validation"]).tolist(),
              "test_tasks_slower_than_validation": np.flatnonzero(slower_than_validation).tolist(),
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
        f"**Task lists** (`RandomState({TASK_SEED}).uniform(0, 3)`: {len(velocities['train'])} training, then "
        f"{len(velocities['test'])} test tasks; validation `RandomState({VALIDATION_TASK_SEED})`, "
        f"{len(velocities['validation'])}): training velocities span {velocities['train'].min():.2f}-"
        f"{velocities['train'].max():.2f}; test {', '.join(f'{v:.2f}' for v in np.sort(velocities['test']))}; "
        f"validation {', '.join(f'{v:.2f}' for v in np.sort(velocities['validation']))}. "
        f"Below every training velocity lie {len(report['test_tasks_below_training_range'])} test and "
        f"{len(report['validation_tasks_below_training_range'])} validation task(s).",
        ""]
    lines += table_cell_means(report)
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


def table_cell_means(report: dict) -> list[str]:
    """Per method, its table cells' per-run means averaged over seeds: the whole test list, the test tasks slower
    than every validation task, the others, and the validation list."""
    slow = report["test_tasks_slower_than_validation"]
    columns = ("test_mean", "test_mean_slower_than_validation", "test_mean_within_validation_span", "validation_mean")
    lines = ["## The table's cells, mean over seeds", "",
             f"Low-noise final returns, averaged over each method's table cells (n seeds): the {len(slow)} test tasks "
             "slower than every validation task, the other test tasks, which lie within the validation tasks' span "
             "of velocities or just beyond it, and the validation tasks.", ""]
    by_algo: dict[str, list[dict]] = defaultdict(list)
    for row in report["runs"]:
        if row["kind"] == "table cell":
            by_algo[row["algo"]].append(row)
    rows = [[algo, str(len(runs)), *(f"{np.mean([row[c] for row in runs]):.2f}" for c in columns)]
            for algo, runs in sorted(by_algo.items())]
    header = ["method", "n", "test tasks", "slower than every validation task", "the other test tasks",
              "validation tasks"]
    return lines + [table(header, rows), ""]


if __name__ == "__main__":
    raise SystemExit(main())
