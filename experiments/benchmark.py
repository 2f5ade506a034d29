"""Run the benchmark: every (environment, method, seed) cell in its own subprocess, then the results tables.

    python -m experiments.benchmark --tier quick --workers 2
    python -m experiments.benchmark --tier quick --envs point-robot --algos pearl setformer --seeds 42 123 456
    python -m experiments.benchmark --tier smoke --envs point-robot --algos oracle sac-no-context --seeds 42 \\
        --set num_iterations=3 --out /tmp/bench
    python -m experiments.benchmark --tier quick --render-only      # re-render results.json / RESULTS.md

Each cell is ``python -m experiments.run ... --run-dir <out>/<tier>/cells/<env>/<algo>/<seed>``. A cell with a
``results.json`` is finished and skipped; one with a ``checkpoint.pt`` is continued with ``--resume`` (runs
checkpoint after every iteration), so killing the runner and starting it again loses at most one iteration
per running cell; any other leftover directory is a run killed before its first checkpoint and is started
afresh. Cells run ``--workers`` at a time with ``cpu_count // workers`` threads each, and a failing cell does
not stop the others (its stderr is kept in ``stderr.log`` in the cell directory; the runner exits nonzero).
Combinations that cannot exist (the oracle on cheetah-vel) are skipped with a note.

Results: ``<out>/<tier>/results.json``, ``RESULTS.md`` and ``curves_<env>.png`` (see experiments.results_table).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from algos import ALGORITHMS
from algos.core.config import SEEDS, TIERS
from envs_glue import ENV_SPECS
from experiments.results_table import render_tier
from experiments.engine import (Cell, add_backend_arguments, cell_dir, check_available, claim_cells, config_mismatch,
                                make_runner, merged_plan, previous_plan, threads_per_cell, refuse_unrestored_carries,
                                unsupported_combinations)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="quick", choices=TIERS, help="protocol tier (default: quick)")
    parser.add_argument("--envs", nargs="+", choices=list(ENV_SPECS), default=None,
                        help="environments (default: all three; with --render-only: those of the last run)")
    parser.add_argument("--algos", nargs="+", choices=list(ALGORITHMS), default=None,
                        help="methods (default: every registered one; with --render-only: those of the last run)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help=f"seeds (default: {' '.join(map(str, SEEDS))})")
    parser.add_argument("--workers", type=int, default=2, help="cells run in parallel (default: 2; local backend)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config override passed to every cell, e.g. --set num_iterations=5")
    parser.add_argument("--out", default="benchmarks", help="output root; cells go to <out>/<tier>/cells")
    parser.add_argument("--render-only", action="store_true", help="only collect finished cells and render")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_backend_arguments(parser)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.address is not None and args.backend != "ray":
        parser.error("--address is for --backend ray")
    return args


def command_line(argv) -> str:
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", "experiments.benchmark", *args])


def main(argv=None) -> int:
    args = parse_args(argv)
    tier_dir = Path(args.out).resolve() / args.tier
    command = command_line(argv)

    if args.render_only:
        last = previous_plan(tier_dir)
        envs, algos = args.envs or last.get("envs", []), args.algos or last.get("algos", [])
        plan = {"envs": envs, "algos": algos, "seeds": args.seeds or last.get("seeds", []),
                "skipped": unsupported_combinations(envs, algos)}
        markdown = render_tier(tier_dir, args.tier, plan, command, [])
        print(f"rendered {markdown}")
        return 0

    envs = args.envs or list(ENV_SPECS)
    algos = args.algos or list(ALGORITHMS)
    seeds = args.seeds or list(SEEDS)
    threads = threads_per_cell(args.workers, args.overrides)

    # which combinations exist, and which of those the code can build right now
    skipped, notes, problems = unsupported_combinations(envs, algos), [], 0
    for combination in skipped:
        print(f"note: skipping {combination['algo']} on {combination['env']}: {combination['reason']}")
    unsupported = {(combination["env"], combination["algo"]) for combination in skipped}
    runnable: set[tuple[str, str]] = set()
    for env in envs:
        for algo in algos:
            if (env, algo) in unsupported:
                continue
            error = check_available(env, algo, args.tier, args.overrides)
            if error:
                problems += 1
                notes.append(f"{algo} on {env} could not be set up, no cell started: {error}")
                print(f"error: {algo} on {env} cannot be set up: {error}", file=sys.stderr)
                continue
            runnable.add((env, algo))

    if problems and not runnable:  # e.g. a mistyped --set key: change nothing, not even the report
        return 2

    cells, done = [], 0
    for seed in seeds:  # seed-major: one seed of everything first, so a complete comparison exists early
        for env in envs:
            for algo in algos:
                if (env, algo) not in runnable:
                    continue
                cell = Cell(env, algo, seed, cell_dir(tier_dir, env, algo, seed))
                if cell.finished or cell.resumable:
                    differing = config_mismatch(cell, args.tier, args.overrides)
                    if differing:
                        print(f"warning: existing cell {cell.label} was configured differently "
                              f"({', '.join(differing)}); it is kept. Delete {cell.run_dir} to rerun it.")
                if cell.finished:
                    done += 1
                else:
                    cells.append(cell)
    if refuse_unrestored_carries(cells):
        return 2
    # another runner may be using this tier folder for other cells; a cell it is running is left to it
    planned = len(cells)
    cells, held_elsewhere, locks = claim_cells(cells)
    done += planned - len(cells) - len(held_elsewhere)  # finished by another runner while this one planned
    for cell in held_elsewhere:
        print(f"note: {cell.label} is being run by another runner; left to it")
    plan = merged_plan(previous_plan(tier_dir), {"envs": envs, "algos": algos, "seeds": seeds, "skipped": skipped})
    print(f"{done + len(cells) + len(held_elsewhere)} cells ({done} already finished, {sum(c.resumable for c in cells)} to resume), "
          + (f"{args.workers} worker(s) × {threads} thread(s)" if args.backend == "local"
             else f"Ray backend ({args.address or 'local instance'})")
          + f", tier {args.tier}, output {tier_dir}")

    runner = make_runner(args, cells, done, args.tier, args.overrides, Path(args.out).resolve(),
                         progress=not args.no_progress)
    outcome = runner.run()
    if outcome.interrupted:
        print(f"stopped; finished cells are kept. Rerun to continue, or render what is done with "
              f"`python -m experiments.benchmark --tier {args.tier} --out {args.out} --render-only`.")
        return 130
    notes += [f"cell {cell.label} failed ({reason}); see {cell.run_dir / 'stderr.log'}"
              for cell, reason in outcome.failed]
    markdown = render_tier(tier_dir, args.tier, plan, command, notes)
    print(f"{len(outcome.finished)} cell(s) finished now, {len(outcome.failed)} failed; results in {markdown}")
    return 1 if (outcome.failed or problems) else 0


if __name__ == "__main__":
    sys.exit(main())
