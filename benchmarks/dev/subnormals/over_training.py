"""How long subnormal floats slow VariBAD's gradient step as training goes on: one run (sparse-point-robot, benchmark
tier, seed 0, after its initial and one iteration's collection) steps in blocks that take turns, subnormals flushed
(as every run computes) and kept, and each block's seconds per step are written down. Both kinds of block train the
same weights, which come out the same either way (``THROUGHPUT.md`` here, *flushed = kept*).

    python benchmarks/dev/subnormals/over_training.py --rounds 25 --block 3
"""
from __future__ import annotations

import argparse
import contextlib
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from algos.core.device import subnormals_kept  # noqa: E402
from algos.core.trainer import Trainer, build_config  # noqa: E402
from experiments.report import provenance, report_heading, table, write_json_and_markdown  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="sparse-point-robot")
    parser.add_argument("--algo", default="varibad")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--block", type=int, default=3, help="gradient steps per block")
    args = parser.parse_args()
    command = shlex.join(["python", "benchmarks/dev/subnormals/over_training.py", *sys.argv[1:]])
    config = build_config(args.env, args.algo, "benchmark", 0, ["num_threads=1", "bf16=true"])
    with tempfile.TemporaryDirectory() as tmp:
        algorithm = Trainer(config, run_dir=Path(tmp) / "run", progress=False).algorithm
        algorithm.collect_initial_data()
        algorithm.collect_iteration_data()
        rounds = []
        for _ in range(args.rounds):
            row = {"steps_before": algorithm.grad_steps}
            for name, way in (("flushed", contextlib.nullcontext), ("kept", subnormals_kept)):
                with way():
                    started = time.perf_counter()
                    for _ in range(args.block):
                        algorithm.train_step()
                    row[f"{name}_s_per_step"] = (time.perf_counter() - started) / args.block
            rounds.append(row)
            print(row, flush=True)
    report = {**provenance(command), "env": args.env, "algo": args.algo, "block": args.block, "rounds": rounds}
    rows = [[str(r["steps_before"]), f"{r['flushed_s_per_step']:.2f}", f"{r['kept_s_per_step']:.2f}",
             f"{r['kept_s_per_step'] / r['flushed_s_per_step']:.2f}x"] for r in rounds]
    lines = [*report_heading(f"Subnormals over training: {args.algo} on {args.env}", report,
                             ", one torch thread, bf16, a campaign cell sharing the core"),
             f"Benchmark tier, seed 0. Blocks of {args.block} gradient steps take turns, subnormals flushed then kept; "
             "*steps before* counts the run's gradient steps before the round.", "",
             table(["steps before", "flushed s/step", "kept s/step", "kept / flushed"], rows)]
    write_json_and_markdown(HERE / "over_training.json", report, HERE / "OVER_TRAINING.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
