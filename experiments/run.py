"""Run one (env, algo, seed) meta-training job.

    python -m experiments.run --env point-robot --algo pearl --tier quick --seed 42 --set num_iterations=5
    python -m experiments.run --resume runs/point-robot/pearl/42-20261129-170000-000000
"""
from __future__ import annotations

import argparse
import json
import sys

from algos import ALGORITHMS
from algos.core.config import TIERS, ConfigError
from algos.core.io import CheckpointError
from algos.core.meta_sac import TrainingDivergedError


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m experiments.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", help="point-robot | sparse-point-robot | cheetah-vel")
    parser.add_argument("--algo", help=" | ".join(ALGORITHMS))
    parser.add_argument("--tier", default="quick", help=" | ".join(TIERS) + " (default: quick)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --set num_iterations=5 aux.reward=0 (repeatable)")
    parser.add_argument("--run-dir", help="write the run here instead of runs/<env>/<algo>/<seed>-<stamp>")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from algos.core.trainer import Trainer, build_config
    try:
        if args.resume:
            # only how fast it continues may change (num_threads, device): Trainer.from_run_dir refuses the rest
            trainer = Trainer.from_run_dir(args.resume, progress=not args.no_progress, overrides=args.overrides)
            resume = trainer.checkpoint_path.exists()
        else:
            if not args.env or not args.algo:
                raise ConfigError("--env and --algo are required (or --resume RUN_DIR)")
            config = build_config(args.env, args.algo, args.tier, args.seed, args.overrides)
            trainer = Trainer(config, run_dir=args.run_dir, progress=not args.no_progress)
            resume = False
        results = trainer.run(resume=resume)
    except (ConfigError, CheckpointError) as error:  # the project's own errors: one line; a bug keeps its traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the outside world: a path that is missing, read-only, full or not a folder
        where = f": {error.filename}" if error.filename else ""
        print(f"error: {error.strerror or error}{where}", file=sys.stderr)
        return 2
    except TrainingDivergedError as error:
        print(f"error: training diverged: {error}", file=sys.stderr)
        return 3
    summary = {k: results[k] for k in ("env", "algo", "tier", "seed", "meta_test_return", "env_steps", "grad_steps",
                                       "wall_time_s")}
    if results["final_eval"]:
        summary["final_eval_meta_test_return"] = results["final_eval"]["meta_test_return"]
    print(json.dumps(summary))
    run_dir = trainer.run_dir
    print(f"run saved in {run_dir}: results.json (figures), metrics.jsonl (per iteration), config.json, checkpoint.pt\n"
          f"next: tensorboard --logdir {run_dir / 'tb'}\n"
          f"      jupyter lab experiments/notebooks/  (set RUN_DIR = \"{run_dir}\" in attention_maps.ipynb or "
          f"latent_space.ipynb)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
