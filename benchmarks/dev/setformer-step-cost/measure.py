"""Where setformer's gradient step spends the time PEARL's does not: the step's CPU time with each of setformer's
components switched off in turn, beside PEARL's, at the benchmark tier's batch sizes (16 x 256) on cheetah-vel.

    python benchmarks/dev/setformer-step-cost/measure.py --rounds 7 --steps 4

All variants live in one process (one torch thread, bf16 as ``auto`` resolves) and are timed in interleaved rounds,
so a machine whose other core is busy slows them alike; the figure is the step's *thread CPU time* (not wall time),
median over rounds, which another process on the same core does not inflate. FLOPs per step are counted by torch's
FlopCounterMode. Each variant's buffers are filled with a short initial collection (``num_initial_steps``): the
step's shapes, not its data, decide its cost. The variants change the method (they are the ablations' switches):
this measures what each component costs, not a faster way to compute the same thing.
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

import torch  # noqa: E402

from algos.core.io import atomic_write_json, atomic_write_text, git_commit, machine_description  # noqa: E402
from algos.core.trainer import Trainer, build_config  # noqa: E402
from models.kernels import eager_layers  # noqa: E402

def flops_per_step(algorithm) -> float:
    """FLOPs of one gradient step as torch's FlopCounterMode counts them (with eager layers: it does not see oneDNN's
    fused products, which are the same ones)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter, eager_layers():
        algorithm.train_step()
    return float(counter.get_total_flops())


VARIANTS = {  # name -> (algo, overrides)
    "PEARL": ("pearl", []),
    "setformer (full)": ("setformer", []),
    "setformer, no next-state head": ("setformer", ["aux.next_state=0"]),
    "setformer, no reward head": ("setformer", ["aux.reward=0"]),
    "setformer, no auxiliary heads": ("setformer", ["aux.reward=0", "aux.next_state=0"]),
    "setformer, mean-pool encoder": ("setformer", ["encoder_pooling=mean"]),
    "setformer, mean-pool, no next-state head": ("setformer", ["encoder_pooling=mean", "aux.next_state=0"]),
}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", default="cheetah-vel")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=4, help="gradient steps per variant per round")
    parser.add_argument("--initial-steps", type=int, default=1000)
    args = parser.parse_args()
    started = time.perf_counter()
    scratch = tempfile.TemporaryDirectory(prefix="step-cost-")
    algorithms, flops, params = {}, {}, {}
    for name, (algo, overrides) in VARIANTS.items():
        config = build_config(args.env, algo, "benchmark", 0,
                              ["num_threads=1", f"num_initial_steps={args.initial_steps}", *overrides])
        trainer = Trainer(config, run_dir=Path(scratch.name) / str(len(algorithms)), progress=False)
        trainer.algorithm.collect_initial_data()
        for _ in range(2):  # warm-up: allocation and autocast set-up
            trainer.algorithm.train_step()
        flops[name] = flops_per_step(trainer.algorithm)
        params[name] = trainer.algorithm.parameter_count()
        algorithms[name] = trainer.algorithm
        print(f"built {name}: {flops[name] / 1e9:.2f} GFLOP/step", flush=True)
    cpu_ms: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, algorithm in algorithms.items():
            start = time.thread_time()
            for _ in range(args.steps):
                algorithm.train_step()
            cpu_ms[name].append((time.thread_time() - start) / args.steps * 1000)
    rows = {}
    pearl = statistics.median(cpu_ms["PEARL"])
    full = statistics.median(cpu_ms["setformer (full)"])
    for name in VARIANTS:
        median = statistics.median(cpu_ms[name])
        rows[name] = {"algo": VARIANTS[name][0], "overrides": VARIANTS[name][1], "cpu_ms_per_step": median,
                      "cpu_ms_per_round": cpu_ms[name], "gflop_per_step": flops[name] / 1e9,
                      "parameters": params[name], "vs_pearl": median / pearl, "vs_full_setformer": median / full,
                      "achieved_gflop_per_s": flops[name] / 1e9 / (median / 1000)}
    bf16 = next(iter(algorithms.values())).bf16
    report = {"command": shlex.join(["python", "benchmarks/dev/setformer-step-cost/measure.py", *sys.argv[1:]]),
              "git_commit": git_commit(), "machine": machine_description(), "env": args.env, "tier": "benchmark",
              "bf16": bf16, "threads": torch.get_num_threads(), "rounds": args.rounds, "steps": args.steps,
              "wall_time_s": time.perf_counter() - started, "variants": rows}
    atomic_write_json(HERE / "step_cost.json", report)
    lines = [
        "# setformer's gradient step, component by component",
        "",
        f"Generated by `{report['command']}` at commit `{report['git_commit']}` on {report['machine']['cpu']} "
        f"({report['machine']['cores']} cores, native bf16: {report['machine'].get('cpu_native_bf16')}, torch "
        f"{report['machine']['torch']}), {args.env}, benchmark tier (16 x 256), bf16 {bf16}, one thread; "
        f"{args.rounds} interleaved rounds of {args.steps} steps per variant, {report['wall_time_s']:.0f} s in all. "
        "Thread CPU time per step, median over rounds (see the script's docstring for why CPU time).",
        "",
        "| variant | overrides | CPU ms/step | vs PEARL | vs full setformer | GFLOP/step | GFLOP/s | parameters |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        lines.append(f"| {name} | {' '.join(f'`{o}`' for o in row['overrides']) or '—'} | "
                     f"{row['cpu_ms_per_step']:.1f} | {row['vs_pearl']:.3f}x | {row['vs_full_setformer']:.3f}x | "
                     f"{row['gflop_per_step']:.2f} | {row['achieved_gflop_per_s']:.0f} | {row['parameters']:,} |")
    atomic_write_text(HERE / "STEP_COST.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
