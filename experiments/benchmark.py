"""Run the benchmark: every (environment, method, seed) cell in its own subprocess, then the results tables.

    python -m experiments.benchmark --tier quick --envs point-robot --algos pearl setformer --seeds 42 123 456
    python -m experiments.benchmark --tier smoke --set num_iterations=3 --out /tmp/bench
    python -m experiments.benchmark --tier quick --render-only      # re-render results.json / RESULTS.md

A cell (``<out>/<tier>/cells/<env>/<algo>/<seed>``) with a ``results.json`` is skipped and one with a
``checkpoint.pt`` resumed, so a killed runner loses at most one iteration per running cell. Cells run
``--workers`` at a time with ``cpu_count // workers`` threads each; a failing cell does not stop the others (its
stderr stays in its ``stderr.log``) but makes the runner exit nonzero. Combinations that cannot exist are skipped
with a note. Results: ``<out>/<tier>/results.json``, ``RESULTS.md`` and ``curves_<env>.png``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from algos import ALGORITHMS
from algos.core.config import SEEDS, TIERS
from algos.core.io import REPO_ROOT
from envs_glue import DEFAULT_ENVS
from experiments.engine import (Cell, CellRunner, Outcome, available_cpus, cell_dir, check_available,
                                config_mismatch, merged_plan, previous_plan, refuse_unrestored_carries,
                                threads_per_cell, unsupported_combinations)
from experiments.report import env_argument
from experiments.results_table import asked_combinations, render_tier


# ---------------------------------------------------------------------- running cells (shared with the ablations)
def add_runner_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="cells run in parallel (default: 2; local backend)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local: subprocesses here, --workers at a time (default); ray: one Ray task per cell "
                             "on a Ray cluster, as many at once as its CPUs allow")
    parser.add_argument("--address", default=None, metavar="HOST:PORT",
                        help="with --backend ray: the cluster to join (HOST:PORT of `ray start --head`, or auto); "
                             "without it a local Ray instance is started")
    parser.add_argument("--carry", action="store_true",
                        help="local backend: after each checkpoint, copy the running cell's git-ignored files "
                             "(checkpoint, clock, TensorBoard) to carry/, to move unfinished runs to another "
                             "machine or checkout (see experiments.carry)")


def check_runner_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.address is not None and args.backend != "ray":
        parser.error("--address is for --backend ray")


def make_runner(args, cells: list[Cell], done: int, tier: str, overrides: list[str], root: Path) -> CellRunner:
    """The runner of ``args.backend``: subprocesses here, or Ray tasks reserving one CPU per thread."""
    if args.backend == "ray":
        from experiments.ray_backend import RayCellRunner, connect

        if args.carry:
            print("note: --carry applies to the local backend; Ray cells keep their checkpoints on the driver")
        connect(args.address, num_cpus=available_cpus() if args.address is None else None)
        return RayCellRunner(cells, done, tier, overrides, threads_per_cell(available_cpus(), overrides), root,
                             progress=not args.no_progress)
    return CellRunner(cells, done, args.workers, tier, overrides, threads_per_cell(args.workers, overrides),
                      progress=not args.no_progress, carry_repo=REPO_ROOT if args.carry else None)


def run_cells(args, cells: list[Cell], done: int, tier: str, overrides: list[str], root: Path,
              on_start=None) -> Outcome | None:
    """Run the unfinished ``cells``, each claimed as it starts (one another runner has started or finished by then
    is left to it), after calling ``on_start()`` if given; None, starting nothing, when ``carry/`` holds an
    unrestored checkpoint of one of them."""
    if refuse_unrestored_carries(cells):
        return None
    where = (f"{args.workers} worker(s) × {threads_per_cell(args.workers, overrides)} thread(s)"
             if args.backend == "local" else f"Ray backend ({args.address or 'local instance'})")
    print(f"{done + len(cells)} cells ({done} already finished, {sum(c.resumable for c in cells)} to resume), "
          f"{where}, tier {tier}, output {root}")
    runner = make_runner(args, cells, done, tier, overrides, root)  # a bad Ray address fails here, before on_start
    if on_start is not None:
        on_start()
    return runner.run()


# ---------------------------------------------------------------------- the benchmark
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="quick", choices=TIERS, help="protocol tier (default: quick)")
    parser.add_argument("--envs", nargs="+", type=env_argument, default=None,
                        help=f"environments, or module.path:SPEC references (default: {' '.join(DEFAULT_ENVS)}; "
                             "with --render-only: those of the last run)")
    parser.add_argument("--algos", nargs="+", choices=list(ALGORITHMS), default=None,
                        help="methods (default: every registered one; with --render-only: those of the last run)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help=f"seeds (default: {' '.join(map(str, SEEDS))})")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config override passed to every cell, e.g. --set num_iterations=5")
    parser.add_argument("--out", default="benchmarks", help="output root; cells go to <out>/<tier>/cells")
    parser.add_argument("--render-only", action="store_true", help="only collect finished cells and render")
    add_runner_arguments(parser)
    args = parser.parse_args(argv)
    check_runner_arguments(parser, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    tier_dir = Path(args.out).resolve() / args.tier
    command = shlex.join(["python", "-m", "experiments.benchmark", *(sys.argv[1:] if argv is None else argv)])
    if args.render_only:
        last = previous_plan(tier_dir)
        envs, algos = args.envs or last.get("envs", []), args.algos or last.get("algos", [])
        combinations = ([(env, algo) for env in envs for algo in algos] if args.envs or args.algos
                        else asked_combinations(last))
        plan = {"envs": envs, "algos": algos, "seeds": args.seeds or last.get("seeds", []),
                "combinations": [list(combination) for combination in combinations],
                "skipped": unsupported_combinations(combinations)}
        print(f"rendered {render_tier(tier_dir, args.tier, plan, command, [])}")
        return 0

    envs, algos, seeds = args.envs or list(DEFAULT_ENVS), args.algos or list(ALGORITHMS), args.seeds or list(SEEDS)
    combinations = [(env, algo) for env in envs for algo in algos]
    skipped, notes, runnable = unsupported_combinations(combinations), [], set()
    for combination in skipped:
        print(f"note: skipping {combination['algo']} on {combination['env']}: {combination['reason']}")
    unsupported = {(combination["env"], combination["algo"]) for combination in skipped}
    for env, algo in ((env, algo) for env, algo in combinations if (env, algo) not in unsupported):
        error = check_available(env, algo, args.tier, args.overrides)
        if error:
            notes.append(f"{algo} on {env} could not be set up, no cell started: {error}")
            print(f"error: {algo} on {env} cannot be set up: {error}", file=sys.stderr)
        else:
            runnable.add((env, algo))
    if notes and not runnable:  # e.g. a mistyped --set key: change nothing, not even the report
        return 2

    cells, done = [], 0
    for seed in seeds:  # seed-major: one seed of everything first, so a complete comparison exists early
        for env, algo in ((env, algo) for env in envs for algo in algos if (env, algo) in runnable):
            cell = Cell(env, algo, seed, cell_dir(tier_dir, env, algo, seed))
            differing = config_mismatch(cell, args.tier, args.overrides) if cell.finished or cell.resumable else []
            if differing:
                print(f"warning: existing cell {cell.label} was configured differently ({', '.join(differing)}); "
                      f"it is kept. Delete {cell.run_dir} to rerun it.")
            if cell.finished:
                done += 1
            else:
                cells.append(cell)
    plan = {"envs": envs, "algos": algos, "seeds": seeds,
            "combinations": [list(combination) for combination in combinations], "skipped": skipped}

    def record_plan():  # the report states what is asked for while the cells run, not only once they all finish
        render_tier(tier_dir, args.tier, merged_plan(previous_plan(tier_dir), plan), command, notes)

    outcome = run_cells(args, cells, done, args.tier, args.overrides, Path(args.out).resolve(), on_start=record_plan)
    if outcome is None:
        return 2
    if outcome.interrupted:
        print(f"stopped; finished cells are kept. Rerun to continue, or render what is done with "
              f"`python -m experiments.benchmark --tier {args.tier} --out {args.out} --render-only`.")
        return 130
    plan = merged_plan(previous_plan(tier_dir), plan)
    notes += [f"cell {cell.label} failed ({reason}); see {cell.run_dir / 'stderr.log'}"
              for cell, reason in outcome.failed]
    markdown = render_tier(tier_dir, args.tier, plan, command, notes)
    print(f"{len(outcome.finished)} cell(s) finished now, {len(outcome.failed)} failed; results in {markdown}")
    return 1 if notes else 0


if __name__ == "__main__":
    sys.exit(main())
