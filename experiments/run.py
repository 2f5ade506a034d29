"""Run one (env, algo, seed) meta-training job.

    python -m experiments.run --env point-robot --algo pearl --tier quick --seed 42 --set num_iterations=5
    python -m experiments.run --resume runs/point-robot/pearl/42-20261129-170000-000000

A mistake (an unknown name, a bad value, a run directory that cannot be written, a checkpoint of another run) stops
with one line on stderr and exit code 2 before any file is written; a diverged run exits with 3. Resuming a run
that already finished (its results.json is there) says so, changes nothing and exits with 0.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from algos import ALGORITHMS
from algos.core.config import MAX_SEED, TIERS, ConfigError
from algos.core.io import CheckpointError, RunDirError, make_run_dir
from algos.core.meta_sac import TrainingDivergedError
from envs_glue import ENV_SPECS

DEFAULT_TIER, DEFAULT_SEED = "quick", 42


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse prints its usage too; a mistake here is one line, as everywhere else
        raise ConfigError(f"{message} (see --help)")


def parse_args(argv=None):
    parser = _Parser(prog="python -m experiments.run", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", help=" | ".join(ENV_SPECS) + ", or module.path:SPEC for one outside the repository")
    parser.add_argument("--algo", help=" | ".join(ALGORITHMS))
    parser.add_argument("--tier", help=" | ".join(TIERS) + f" (default: {DEFAULT_TIER})")
    parser.add_argument("--seed", type=int, help=f"0 to 2**32 - 1 (default: {DEFAULT_SEED})")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --set num_iterations=5 aux.reward=0 (repeatable)")
    parser.add_argument("--run-dir", help="write the run here instead of runs/<env>/<algo>/<seed>-<stamp>")
    parser.add_argument("--resume", metavar="RUN_DIR",
                        help="continue a killed run from its last checkpoint, with its saved config (only --set "
                             "num_threads / device may change); a finished run is left as it is (exit code 0)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        outcome = _run(args)
    except (ConfigError, CheckpointError, RunDirError) as error:  # the project's own: one line; a bug: a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the outside world: a path that is missing, read-only, full or not a folder
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except TrainingDivergedError as error:
        print(f"error: training diverged: {error}", file=sys.stderr)
        return 3
    if outcome is None:
        return 0
    trainer, results = outcome
    summary = {k: results[k] for k in ("env", "algo", "tier", "seed", "meta_test_return", "env_steps", "grad_steps",
                                       "wall_time_s")}
    if results["final_eval"]:
        summary["final_eval_meta_test_return"] = results["final_eval"]["meta_test_return"]
        if "meta_test_success" in results["final_eval"]:  # environments that report task success (Meta-World)
            summary["final_eval_meta_test_success"] = results["final_eval"]["meta_test_success"]
    print(json.dumps(summary))
    print(next_steps(trainer.run_dir, trainer.config.algo))
    return 0


def _run(args):
    """The run the arguments ask for, trained and evaluated: ``(trainer, results)``; None where there was nothing to
    do. Every mistake is raised before the first file is written."""
    from algos.core.trainer import Trainer, build_config
    if args.resume:
        given = [flag for flag, value in (("--env", args.env), ("--algo", args.algo), ("--tier", args.tier),
                                          ("--seed", args.seed), ("--run-dir", args.run_dir)) if value is not None]
        if given:
            raise ConfigError(f"--resume continues a run with its saved config: {', '.join(given)} cannot be given "
                              f"with it")
        # only how fast it continues may change (num_threads, device): Trainer.from_run_dir refuses the rest
        trainer = Trainer.from_run_dir(args.resume, progress=not args.no_progress, overrides=args.overrides)
        if (trainer.run_dir / "results.json").exists():
            print(f"run {trainer.run_dir} already finished (results.json); nothing to resume", file=sys.stderr)
            return None
        resume = trainer.checkpoint_path.exists()
        if not resume and (trainer.run_dir / "metrics.jsonl").exists():
            raise CheckpointError(f"run {trainer.run_dir} has no checkpoint.pt to resume from, though its "
                                  f"metrics.jsonl shows it trained: start it again with another --run-dir")
    else:
        if not args.env or not args.algo:
            raise ConfigError("--env and --algo are required (or --resume RUN_DIR)")
        seed = DEFAULT_SEED if args.seed is None else args.seed
        if not 0 <= seed <= MAX_SEED:
            raise ConfigError(f"--seed must be a non-negative integer below 2**32, got {seed}")
        config = build_config(args.env, args.algo, args.tier or DEFAULT_TIER, seed, args.overrides)
        trainer = Trainer(config, run_dir=args.run_dir, progress=not args.no_progress)
        if (trainer.run_dir / "results.json").exists():
            raise CheckpointError(f"run dir {trainer.run_dir} already holds a finished run (results.json): choose "
                                  f"another --run-dir")
        resume = False
    make_run_dir(trainer.run_dir)  # the first write: a folder that cannot be made or written stops the run here
    return trainer, trainer.run(resume=resume)


def next_steps(run_dir: Path, algo: str) -> str:
    """Where the run's files are and what to open next, in commands that work after ``pip install -r
    requirements.txt``."""
    also = " (setformer: also attention_maps)" if algo == "setformer" else ""
    return (f"run saved in {run_dir}: results.json (figures), metrics.jsonl (per iteration), config.json, "
            f"checkpoint.pt\n"
            f"next: tensorboard --logdir {run_dir / 'tb'}\n"
            f"      python -m experiments.notebook latent_space {run_dir}{also}\n"
            f"      (runs the notebook headless into the run folder; optional, to open notebooks interactively: "
            f"pip install jupyterlab)")


if __name__ == "__main__":
    sys.exit(main())
