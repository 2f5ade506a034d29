"""Hyperparameter sweeps on Ray Tune: a grid (or random search) over any ``--set`` keys, every configuration run
with each seed, per-iteration ``meta_test_return`` reported to Tune, optional ASHA early stopping.

    python -m experiments.sweep --env point-robot --algo pearl --tier quick --grid lr=0.0003,0.001 \\
        --grid latent_dim=5,8 --seeds 42 123 --out benchmarks/sweeps/pearl-lr
    python -m experiments.sweep ... --search random --num-samples 6 --asha --address 127.0.0.1:6379

Each trial is one run (configuration x seed) in the Tune worker's process, on whichever node Tune places it,
reserving ``num_threads`` CPUs (1 unless set); its run folder is scratch space on that node, and what the table
needs comes back through Tune's reports, so no shared filesystem is needed. ``--out`` receives ``sweep.json``
and ``SWEEP.md``: per configuration the mean ± std over seeds of the protocol figure and of the low-noise final
evaluation, the per-seed figures, and the best configuration (highest mean protocol figure among those that ran
every seed to the end). With ``--asha`` a trial stopped early reports its last evaluated figure and no low-noise
one; the table marks it, since it ran on a smaller budget than the others.
"""
from __future__ import annotations

import argparse
import itertools
import shlex
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from algos import ALGORITHMS
from algos.core.config import TIERS, ConfigError
from algos.core.trainer import build_config
from envs_glue import ENV_SPECS
from experiments.engine import available_cpus, threads_per_cell
from experiments.report import (DASH, display_name, fmt, format_mean_std, mean_std, provenance, report_heading,
                                table, write_json_and_markdown)

METRIC = "meta_test_return"


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


def check_configurations(env: str, algo: str, tier: str, grid: dict[str, list[str]], fixed: list[str]) -> None:
    """Build every configuration once here, so a bad key or value fails before any trial starts."""
    for key in grid:
        if any(item.partition("=")[0].strip() == key for item in fixed):
            raise ConfigError(f"{key!r} is both swept (--grid) and fixed (--set)")
    for point in configurations(grid):
        build_config(env, algo, tier, 0, [*fixed, *point])


def trial(config: dict) -> None:
    """One Tune trial: the run of one configuration with one seed, reporting each evaluated iteration."""
    from ray import tune

    from algos.core.trainer import Trainer

    overrides = [*config["fixed"], *config["point"]]
    run_config = build_config(config["env"], config["algo"], config["tier"], config["seed"], overrides)
    last_iteration = run_config.protocol.num_iterations - 1

    def report(row: dict) -> None:
        # the last iteration reports together with the final evaluation, below: one report per iteration
        if METRIC in row and row["iteration"] < last_iteration:
            tune.report({METRIC: row[METRIC], "iteration": row["iteration"], "finished": False})

    with tempfile.TemporaryDirectory(prefix="trial-") as scratch:
        results = Trainer(run_config, run_dir=Path(scratch) / "run", progress=False).run(on_iteration=report)
    final = results.get("final_eval") or {}
    tune.report({METRIC: results[METRIC], "iteration": last_iteration, "finished": True,
                 "low_noise": final.get(METRIC), "env_steps": results["env_steps"], "grad_steps": results["grad_steps"],
                 "wall_time_s": results["wall_time_s"], "git_commit": results["git_commit"]})


def run_sweep(args: argparse.Namespace, grid: dict[str, list[str]], num_iterations: int, out: Path) -> list[dict]:
    """Run the trials on the cluster and return one record per trial (configuration, seed, figures, curve)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from experiments.ray_backend import connect

    connect(args.address, num_cpus=available_cpus() if args.address is None else None)
    threads = threads_per_cell(available_cpus(), args.overrides)
    fixed = [*args.overrides, *([] if any(o.startswith("num_threads=") for o in args.overrides)
                                 else [f"num_threads={threads}"])]
    points = configurations(grid)
    space = {"env": args.env, "algo": args.algo, "tier": args.tier, "fixed": fixed,
             "seed": tune.grid_search(list(args.seeds)),
             "point": tune.grid_search(points) if args.search == "grid" else tune.choice(points)}
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=num_iterations, grace_period=args.grace_period,
                               reduction_factor=args.reduction_factor) if args.asha else None)
    tuner = tune.Tuner(
        tune.with_resources(trial, {"cpu": threads}),
        param_space=space,
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", scheduler=scheduler,
                                    num_samples=args.num_samples if args.search == "random" else 1),
        run_config=tune.RunConfig(name="tune", storage_path=str(out), verbose=0),
    )
    records = []
    for result in tuner.fit():
        history = result.metrics_dataframe
        curve = ([] if history is None or METRIC not in history else
                 [{"iteration": int(i), METRIC: float(v)} for i, v in zip(history["iteration"], history[METRIC])])
        metrics = result.metrics or {}
        records.append({
            "overrides": list(result.config["point"]), "seed": result.config["seed"],
            METRIC: metrics.get(METRIC), "low_noise": metrics.get("low_noise"),
            "iterations": len(curve), "finished": bool(metrics.get("finished")),
            "error": None if result.error is None else f"{type(result.error).__name__}: {result.error}",
            "env_steps": metrics.get("env_steps"), "grad_steps": metrics.get("grad_steps"),
            "wall_time_s": metrics.get("wall_time_s"), "git_commit": metrics.get("git_commit"), "curve": curve})
    return records


def summarise(records: list[dict], seeds: list[int]) -> tuple[list[dict], dict | None]:
    """Per configuration: its trials' figures over seeds; and the best configuration (highest mean protocol figure
    among those whose every seed ran to the end), or ``None``."""
    by_point: dict[tuple[str, ...], list[dict]] = defaultdict(list)
    for record in records:
        by_point[tuple(record["overrides"])].append(record)
    summary = []
    for point, trials in by_point.items():
        finished = [t for t in trials if t["finished"]]
        protocol = [t[METRIC] for t in trials if t[METRIC] is not None]
        low_noise = [t["low_noise"] for t in finished if t["low_noise"] is not None]
        summary.append({
            "overrides": list(point),
            "mean": mean_std(protocol)[0] if protocol else None,
            "std": mean_std(protocol)[1] if protocol else None,
            "low_noise_mean": mean_std(low_noise)[0] if low_noise else None,
            "per_seed": {str(t["seed"]): t[METRIC] for t in sorted(trials, key=lambda t: t["seed"])},
            "complete": len(finished) == len(seeds),
            "stopped_early": {str(t["seed"]): t["iterations"] for t in sorted(trials, key=lambda t: t["seed"])
                              if not t["finished"] and t["error"] is None},
            "failed": sorted(t["seed"] for t in trials if t["error"] is not None)})
    ranked = [s for s in summary if s["complete"] and s["mean"] is not None]
    best = max(ranked, key=lambda s: s["mean"]) if ranked else None
    return summary, best


def render_markdown(report: dict) -> str:
    seeds = report["seeds"]
    title = f"Sweep: {display_name(report['algo'])} on {report['env']}, {report['tier']} tier"
    grid = " · ".join(f"`{k}` ∈ {{{', '.join(v)}}}" for k, v in report["grid"].items())
    search = ("every point of the grid" if report["search"] == "grid"
              else f"{report['num_samples']} random draws from the grid")
    stopping = (f"ASHA early stopping on `{METRIC}` (grace period {report['grace_period']} iteration(s), reduction "
                f"factor {report['reduction_factor']})" if report["asha"] else "no early stopping")
    parts = [*report_heading(title, report), "## Setup", "",
             f"Grid: {grid}; {search}, each with seeds {', '.join(map(str, seeds))}; {stopping}. Fixed settings: "
             + (" ".join(f"`{o}`" for o in report["fixed"]) or DASH) + ". Every trial runs the protocol of its tier "
             "(the same environment and gradient steps) unless stopped early; *meta-test return* is the protocol "
             "figure of its last evaluated iteration, *low-noise* the final evaluation of a trial that ran to the "
             "end. Mean ± sample std over seeds (ddof = 1).", "", "## Configurations", ""]
    header = ["configuration", "meta-test return (protocol)", "low-noise final eval", "per seed (protocol)", "notes"]
    rows = []
    for entry in sorted(report["configurations"], key=lambda e: -(e["mean"] if e["mean"] is not None else -1e18)):
        protocol = [v for v in entry["per_seed"].values() if v is not None]
        notes = []
        if entry["stopped_early"]:
            notes.append("stopped early by ASHA: " + ", ".join(f"seed {s} after {n} of {report['num_iterations']} "
                                                               f"iterations" for s, n in entry["stopped_early"].items()))
        if entry["failed"]:
            notes.append(f"failed: seed(s) {', '.join(map(str, entry['failed']))}")
        low_noise = fmt(entry["low_noise_mean"]) if entry["low_noise_mean"] is not None else DASH
        rows.append([" ".join(f"`{o}`" for o in entry["overrides"]), format_mean_std(protocol, len(seeds)),
                     low_noise, " · ".join(f"{s}: {fmt(v)}" for s, v in entry["per_seed"].items()),
                     "; ".join(notes)])
    parts += [table(header, rows), ""]
    best = report.get("best")
    parts.append(f"**Best configuration:** {' '.join(f'`{o}`' for o in best['overrides'])}, "
                 f"{fmt(best['mean'])} on the protocol figure (mean over {len(seeds)} seed(s))." if best else
                 "**Best configuration:** none ran every seed to the end.")
    return "\n".join(parts).rstrip() + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, choices=list(ENV_SPECS))
    parser.add_argument("--algo", required=True, choices=list(ALGORITHMS))
    parser.add_argument("--tier", default="quick", choices=TIERS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42])
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...", required=True,
                        help="a swept --set key and its values (repeatable)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="settings fixed for every trial")
    parser.add_argument("--search", choices=("grid", "random"), default="grid")
    parser.add_argument("--num-samples", type=int, default=4, help="with --search random: configurations drawn")
    parser.add_argument("--asha", action="store_true", help="stop poor trials early (ASHA on meta_test_return)")
    parser.add_argument("--grace-period", type=int, default=5, help="ASHA: iterations before a trial can be stopped")
    parser.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA: how hard each rung cuts")
    parser.add_argument("--backend", choices=("ray",), default="ray", help="sweeps run on Ray Tune")
    parser.add_argument("--address", default=None, metavar="HOST:PORT",
                        help="the Ray cluster to join (or auto); without it a local Ray instance is started")
    parser.add_argument("--out", required=True, help="where sweep.json and SWEEP.md go")
    args = parser.parse_args(argv)
    if args.num_samples < 1 or args.grace_period < 1 or args.reduction_factor <= 1:
        parser.error("--num-samples and --grace-period must be at least 1, --reduction-factor above 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "experiments.sweep", *(sys.argv[1:] if argv is None else argv)])
    try:
        grid = parse_grid(args.grid)
        check_configurations(args.env, args.algo, args.tier, grid, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    num_iterations = build_config(args.env, args.algo, args.tier, 0, args.overrides).protocol.num_iterations
    records = run_sweep(args, grid, num_iterations, out)
    summary, best = summarise(records, args.seeds)
    fixed = list(args.overrides)
    report = {**provenance(command), "env": args.env, "algo": args.algo, "tier": args.tier, "seeds": args.seeds,
              "grid": grid, "search": args.search, "num_samples": args.num_samples, "asha": args.asha,
              "grace_period": args.grace_period, "reduction_factor": args.reduction_factor, "fixed": fixed,
              "num_iterations": num_iterations,
              "configurations": summary, "best": best, "trials": records}
    write_json_and_markdown(out / "sweep.json", report, out / "SWEEP.md", render_markdown(report))
    print(f"wrote {out / 'SWEEP.md'} and {out / 'sweep.json'}"
          + (f"; best: {' '.join(best['overrides'])} ({best['mean']:.2f})" if best else ""))
    return 1 if any(r["error"] for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
