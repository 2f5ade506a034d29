"""Tuning sweeps: every point of a grid, with every tuning seed, run as resumable benchmark cells, and the points
ranked by the **validation** figure alone (docs/PROTOCOL.md#selection-rule).

    python -m experiments.sweep --tier benchmark --envs cheetah-vel --out benchmarks/benchmark/selection
    python -m experiments.sweep --tier quick --envs point-robot sparse-point-robot --algos pearl setformer \\
        --out benchmarks/benchmark/selection --carry
    python -m experiments.sweep --tier smoke --envs point-robot --algos pearl --grid lr=0.0003,0.001 --seeds 1 \\
        --out /tmp/sweep --backend ray
    python -m experiments.sweep --render-only --out benchmarks/benchmark/selection

Without ``--grid`` the sweep runs ``TUNING_GRID``, the grid every method is tuned on, with ``TUNING_SEEDS``: seeds
that no results table reports. Each point's cells go to ``<out>/<point>/<tier>/cells/<env>/<algo>/<seed>`` and
run exactly as the benchmark runs them (``experiments.benchmark``: resumable, ``--workers``, ``--carry``, the
Ray backend). ``<out>/SELECTION.md`` and ``selection.json`` list every finished trial found under ``<out>`` (its
setting, validation and test figures, budget, commit and machine) and, per (environment, method, tier), the
selected point: the highest mean over seeds of the low-noise validation figure
(``final_eval.validation_return``) among the points that finished every seed; a tie goes to the point listed
first. The test figures are shown for the record and never read by the selection.
"""
from __future__ import annotations

import argparse
import itertools
import os
import shlex
import sys
from collections import defaultdict
from pathlib import Path

from algos import ALGORITHMS
from algos.core.config import TIERS, TUNING_GRID, TUNING_SEEDS, ConfigError
from algos.core.io import REPO_ROOT, atomic_write_json, read_json
from algos.core.trainer import build_config
from envs_glue import DEFAULT_ENVS
from experiments.benchmark import add_runner_arguments, check_runner_arguments, run_cells
from experiments.engine import Cell, cell_dir, unsupported_reason
from experiments.report import (ALGO_ORDER, DASH, ENV_ORDER, cpu_label, display_name, env_argument, fmt, mean_std,
                                provenance, report_heading, short_commit, table, write_json_and_markdown)

SELECTION_FIGURE = "validation_low_noise"


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["lr=0.0003,0.001", "aux.reward=0,1"]`` -> ``{"lr": ["0.0003", "0.001"], "aux.reward": ["0", "1"]}``."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not choices:
            raise ConfigError(f"--grid {item!r} is not of the form key=value1,value2,...")
        if key in grid:
            raise ConfigError(f"--grid names {key!r} twice; give all its values in one --grid")
        grid[key] = choices
    return grid


def configurations(grid: dict[str, list[str]]) -> list[tuple[str, ...]]:
    """Every point of the grid as its overrides, ``("lr=0.0003", "latent_dim=5")``, in the order given."""
    keys = list(grid)
    return [tuple(f"{k}={v}" for k, v in zip(keys, values)) for values in itertools.product(*grid.values())]


def point_name(point: tuple[str, ...]) -> str:
    """A folder name for a grid point: ``("lr=0.001", "aux.reward=0")`` -> ``lr-0.001_aux.reward-0``."""
    return "_".join(item.replace("=", "-") for item in point)


def check_configurations(envs: list[str], algos: list[str], tier: str, points: dict[str, tuple[str, ...]],
                         fixed: list[str]) -> None:
    """Build every configuration once here, so a bad key or value fails before any trial starts."""
    swept = {item.partition("=")[0].strip() for point in points.values() for item in point}
    for key in swept:
        if any(item.partition("=")[0].strip() == key for item in fixed):
            raise ConfigError(f"{key!r} is both swept (--grid) and fixed (--set)")
    for env, algo in itertools.product(envs, algos):
        if unsupported_reason(algo, env) is None:
            for point in points.values():
                build_config(env, algo, tier, 0, [*fixed, *point])


# ---------------------------------------------------------------------- the record and the selection
def collect_trials(out: Path) -> list[dict]:
    """Every finished cell under ``<out>/<point>/<tier>/cells``: one record per trial."""
    trials = []
    for results_path in sorted(out.glob("*/*/cells/*/*/*/results.json")):
        results = read_json(results_path, what="trial results")
        point_dir = results_path.parents[5]
        final = results.get("final_eval") or {}
        trials.append({
            "point": point_dir.name, "overrides": read_json(point_dir / "point.json", what="grid point")["overrides"],
            "env": results["env"], "algo": results["algo"], "tier": results["tier"], "seed": results["seed"],
            "validation_low_noise": final.get("validation_return"), "validation": results.get("validation_return"),
            "test_low_noise": final.get("meta_test_return"), "test": results.get("meta_test_return"),
            "env_steps": results["env_steps"], "grad_steps": results["grad_steps"],
            "wall_time_s": results["wall_time_s"], "git_commit": results["git_commit"],
            "bf16": results["config"].get("bf16"), "cpu": cpu_label(results.get("machine")),
            "cell": str(results_path.parent.relative_to(out))})
    return trials


def select(trials: list[dict], points_in_order: list[str]) -> list[dict]:
    """Per (env, algo, tier): each point's mean validation figure over its seeds, and the selected point (the best
    among those with every seed finished; a tie goes to the point listed first). Test figures are not read."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for trial in trials:
        groups[(trial["env"], trial["algo"], trial["tier"])].append(trial)
    order = {name: i for i, name in enumerate(points_in_order)}
    selections = []
    for (env, algo, tier), group in groups.items():
        seeds = sorted({t["seed"] for t in group})
        by_point: dict[str, list[dict]] = defaultdict(list)
        for trial in group:
            by_point[trial["point"]].append(trial)
        scored = []
        for name, runs in by_point.items():
            values = [t[SELECTION_FIGURE] for t in runs if t[SELECTION_FIGURE] is not None]
            complete = sorted(t["seed"] for t in runs) == seeds and len(values) == len(seeds)
            scored.append({"point": name, "overrides": runs[0]["overrides"], "seeds": sorted(t["seed"] for t in runs),
                           "mean": mean_std(values)[0] if values else None, "complete": complete})
        present = {s["point"] for s in scored}
        scored += [{"point": name, "overrides": None, "seeds": [], "mean": None, "complete": False}
                   for name in points_in_order if name not in present]  # grid points not run yet
        scored.sort(key=lambda s: (order.get(s["point"], len(order)), s["point"]))
        ranked = [s for s in scored if s["complete"]]
        # a selection is made once every point has finished every seed; max keeps the first of equal means
        best = max(ranked, key=lambda s: s["mean"]) if ranked and len(ranked) == len(scored) else None
        selections.append({"env": env, "algo": algo, "tier": tier, "points": scored,
                           "selected": None if best is None else best["point"],
                           "selected_overrides": None if best is None else best["overrides"]})
    env_rank, algo_rank = {e: i for i, e in enumerate(ENV_ORDER)}, {a: i for i, a in enumerate(ALGO_ORDER)}
    return sorted(selections, key=lambda s: (env_rank.get(s["env"], 99), algo_rank.get(s["algo"], 99), s["tier"]))


def render_markdown(report: dict, out: Path) -> str:
    protocol = os.path.relpath(REPO_ROOT / "docs" / "PROTOCOL.md", out)
    parts = [*report_heading("Selection of settings on the validation tasks", report),
             "Every trial is one benchmark cell of a grid point on a tuning seed. The selection reads only the "
             "low-noise **validation** figure (the final policy on the validation tasks, `final_eval_repeats` "
             "repeats): per environment, method and tier the point with the highest mean over seeds wins, a tie "
             f"going to the point listed first ([docs/PROTOCOL.md]({protocol}#selection-rule)). The "
             "test figures are recorded here and never selected on.", "",
             "Grid points: " + "; ".join(f"`{name}`: " + " ".join(f"`{o}`" for o in overrides)
                                         for name, overrides in report["points"].items()) + ".", "",
             "## Selected settings", ""]
    rows = []
    for s in report["selections"]:
        means = " · ".join(f"{p['point']}: {fmt(p['mean'])}" + ("" if p["complete"] else " (not finished)")
                           for p in s["points"])
        rows.append([s["env"], display_name(s["algo"]), s["tier"],
                     f"`{s['selected']}`" if s["selected"] else "pending: not every point has finished", means])
    parts += [table(["environment", "method", "tier", "selected point", "mean validation figure per point"], rows),
              "", "## Every trial", ""]
    rows = []
    for t in report["trials"]:
        rows.append([t["env"], display_name(t["algo"]), t["tier"], f"`{t['point']}`", str(t["seed"]),
                     fmt(t["validation_low_noise"]), fmt(t["validation"]), fmt(t["test_low_noise"]), fmt(t["test"]),
                     f"{t['env_steps']:,} / {t['grad_steps']:,}", f"{t['wall_time_s'] / 60:.1f}",
                     "bf16" if t["bf16"] else "fp32", short_commit(t["git_commit"]), t["cpu"] or DASH])
    parts.append(table(["environment", "method", "tier", "point", "seed", "validation (low-noise)",
                        "validation (protocol)", "test (low-noise)", "test (protocol)", "env / grad steps",
                        "wall time (min)", "arithmetic", "commit", "CPU"], rows))
    return "\n".join(parts).rstrip() + "\n"


def render(out: Path, command: str, points: dict[str, tuple[str, ...]]) -> Path:
    known = {p.name: tuple(read_json(p / "point.json", what="grid point")["overrides"])
             for p in sorted(out.iterdir()) if (p / "point.json").exists()} if out.is_dir() else {}
    points = {**points, **{k: v for k, v in known.items() if k not in points}}
    trials = collect_trials(out)
    env_rank = {e: i for i, e in enumerate(ENV_ORDER)}
    trials.sort(key=lambda t: (env_rank.get(t["env"], 99), t["algo"], t["tier"], t["point"], t["seed"]))
    report = {**provenance(command), "points": {k: list(v) for k, v in points.items()}, "selection_figure":
              SELECTION_FIGURE, "selections": select(trials, list(points)), "trials": trials}
    write_json_and_markdown(out / "selection.json", report, out / "SELECTION.md", render_markdown(report, out))
    return out / "SELECTION.md"


# ---------------------------------------------------------------------- the command
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="quick", choices=TIERS)
    parser.add_argument("--envs", nargs="+", type=env_argument, default=list(DEFAULT_ENVS))
    parser.add_argument("--algos", nargs="+", choices=list(ALGORITHMS), default=None,
                        help="methods (default: every method that learns: ours and the baselines)")
    parser.add_argument("--seeds", nargs="+", type=int, default=list(TUNING_SEEDS))
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a swept --set key and its values (repeatable; default: TUNING_GRID)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="settings fixed for every trial")
    parser.add_argument("--out", required=True, help="where the trials' cells, SELECTION.md and selection.json go")
    parser.add_argument("--render-only", action="store_true", help="only collect finished trials and render")
    add_runner_arguments(parser)
    args = parser.parse_args(argv)
    check_runner_arguments(parser, args)
    return args


def main(argv=None) -> int:
    from algos import algorithm_class

    args = parse_args(argv)
    command = shlex.join(["python", "-m", "experiments.sweep", *(sys.argv[1:] if argv is None else argv)])
    out = Path(args.out).resolve()
    algos = args.algos or [a for a in ALGORITHMS if algorithm_class(a).role in ("ours", "baseline")]
    try:
        points = ({point_name(p): p for p in configurations(parse_grid(args.grid))} if args.grid
                  else dict(TUNING_GRID))
        check_configurations(args.envs, algos, args.tier, points, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.render_only:
        print(f"rendered {render(out, command, points)}")
        return 0
    failed = False
    for name, point in points.items():
        point_dir = out / name
        point_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(point_dir / "point.json", {"overrides": list(point)})
        cells, done = [], 0
        for seed in args.seeds:
            for env, algo in itertools.product(args.envs, algos):
                if unsupported_reason(algo, env) is None:
                    cell = Cell(env, algo, seed, cell_dir(point_dir / args.tier, env, algo, seed))
                    done += cell.finished
                    cells += [] if cell.finished else [cell]
        print(f"grid point {name}: {' '.join(point)}")
        outcome = run_cells(args, cells, done, args.tier, [*args.overrides, *point], point_dir)
        failed |= outcome is None or bool(outcome.failed) or outcome.interrupted
        print(f"rendered {render(out, command, points)}")
        if outcome is not None and outcome.interrupted:  # stop the sweep, not just this grid point
            break
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
