"""The in-context transformer's training attention under bf16 autocast on a CPU: computed in bf16 (as autocast
leaves it) or in fp32 (``models.causal_transformer.fused_causal_attention``), timed in the whole gradient step and
alone at the step's shapes.

    python benchmarks/dev/transformer-attention/measure.py --rounds 5 --steps 3

Both variants live in one process (one torch thread, bf16 autocast on) and take turns for ``--rounds`` rounds, so a
busy neighbour slows both alike; each figure is thread CPU time (which another process on the same core does not
inflate), median over rounds. The bf16 variant swaps the fp32 function for torch's SDPA on the bf16 inputs.
"""
from __future__ import annotations

import argparse
import math
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import models.causal_transformer as causal_transformer  # noqa: E402
from algos.core.io import atomic_write_json, atomic_write_text, git_commit, machine_description  # noqa: E402
from algos.core.trainer import Trainer, build_config  # noqa: E402

fp32_attention = causal_transformer.fused_causal_attention


def bf16_attention(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


VARIANTS = {"bf16 attention": bf16_attention, "fp32 attention": fp32_attention}


def cpu_ms(fn, repeats: int) -> float:
    start = time.thread_time()
    for _ in range(repeats):
        fn()
    return (time.thread_time() - start) / repeats * 1000


def attention_alone(algorithm, repeats: int) -> dict[str, float]:
    """Forward and backward of one attention at the step's shape, ``(t*w, heads, L, head_dim)`` bf16 inputs."""
    agent, p = algorithm.agent, algorithm.protocol
    windows = p.meta_batch * math.ceil(p.batch_size / agent.context_length)
    heads = agent.sequence_model.blocks[0].attention.num_heads
    head_dim = agent.sequence_model.embed.out_features // heads
    shape = (windows, heads, agent.context_length, head_dim)

    def fwd_bwd(fn):
        q, k, v = (torch.randn(shape, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as in a gradient step
            attended = fn(q, k, v)
        attended.float().sum().backward()
    return {name: cpu_ms(lambda fn=fn: fwd_bwd(fn), repeats) for name, fn in VARIANTS.items()} | {"shape": list(shape)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--envs", nargs="+", default=["point-robot", "sparse-point-robot", "cheetah-vel"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="gradient steps per variant per round")
    args = parser.parse_args()
    started = time.perf_counter()
    scratch = tempfile.TemporaryDirectory(prefix="transformer-attention-")
    rows = {}
    for env in args.envs:
        config = build_config(env, "transformer", "benchmark", 0, ["num_threads=1", "bf16=true"])
        algorithm = Trainer(config, run_dir=Path(scratch.name) / env, progress=False).algorithm
        algorithm.collect_initial_data()
        step_ms: dict[str, list[float]] = {name: [] for name in VARIANTS}
        alone: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for round_index in range(args.rounds + 1):  # round 0 warms up (allocation, autocast set-up)
            for name, fn in VARIANTS.items():
                causal_transformer.fused_causal_attention = fn
                try:
                    ms = cpu_ms(algorithm.train_step, args.steps)
                finally:
                    causal_transformer.fused_causal_attention = fp32_attention
                if round_index:
                    step_ms[name].append(ms)
            measured = attention_alone(algorithm, 2)
            if round_index:
                for name in VARIANTS:
                    alone[name].append(measured[name])
        rows[env] = {"attention_shape": measured["shape"],
                     **{name: {"step_cpu_ms": statistics.median(step_ms[name]), "step_cpu_ms_per_round": step_ms[name],
                               "attention_fwd_bwd_cpu_ms": statistics.median(alone[name])} for name in VARIANTS}}
        bf16_ms, fp32_ms = (rows[env][name]["step_cpu_ms"] for name in VARIANTS)
        rows[env]["step_speedup"] = bf16_ms / fp32_ms
        print(env, rows[env], flush=True)
    report = {"command": shlex.join(["python", "benchmarks/dev/transformer-attention/measure.py", *sys.argv[1:]]),
              "git_commit": git_commit(), "machine": machine_description(), "tier": "benchmark", "threads": 1,
              "rounds": args.rounds, "steps": args.steps, "wall_time_s": time.perf_counter() - started, "envs": rows}
    atomic_write_json(HERE / "attention.json", report)
    machine = report["machine"]
    lines = [
        "# The in-context transformer's training attention: bf16 or fp32 under bf16 autocast",
        "",
        f"Generated by `{report['command']}` at commit `{report['git_commit']}` on {machine['cpu']} "
        f"({machine['cores']} cores, native bf16: {machine.get('cpu_native_bf16')}, torch {machine['torch']}), "
        f"benchmark tier (16 tasks x 256 samples), bf16 autocast, one thread; {args.rounds} interleaved rounds of "
        f"{args.steps} steps per variant, {report['wall_time_s']:.0f} s in all. Thread CPU time, median over rounds.",
        "",
        "| environment | attention shape (windows, heads, L, head dim) | step, bf16 attention (ms) | "
        "step, fp32 attention (ms) | step speed-up | attention fwd+bwd, bf16 (ms) | attention fwd+bwd, fp32 (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for env, row in rows.items():
        b, f = row["bf16 attention"], row["fp32 attention"]
        lines.append(f"| {env} | {tuple(row['attention_shape'])} | {b['step_cpu_ms']:.0f} | {f['step_cpu_ms']:.0f} | "
                     f"{row['step_speedup']:.2f}x | {b['attention_fwd_bwd_cpu_ms']:.1f} | "
                     f"{f['attention_fwd_bwd_cpu_ms']:.1f} |")
    atomic_write_text(HERE / "ATTENTION.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
