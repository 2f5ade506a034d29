"""What a cell's wall time is made of, per method: gradient steps/s, environment steps/s while collecting data,
and the ``adapt()`` latency against the context size, each method built as a run builds it (tier, threads).

    python -m experiments.throughput --algos pearl setformer --envs point-robot cheetah-vel --tier quick

Gradient steps are timed at the default precision and with bf16 autocast forced on and off, with FLOPs per step
(torch's ``FlopCounterMode``) and, as the ceiling they are set against, the fp32 and bf16 matrix-multiply peak at the
critic's layer shape measured in the same process. Writes ``<out>/throughput.json`` and ``THROUGHPUT.md``; a method that does not
import is skipped with a note, one that crashes fails the command.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from algos import ALGORITHMS, algorithm_class
from algos.core.config import TIERS
from algos.core.trainer import Trainer, build_config
from experiments.engine import available_cpus, unsupported_reason
from experiments.report import DASH, env_argument, provenance, report_heading, table, write_json_and_markdown
from models.kernels import bf16_autocast, cpu_has_native_bf16, eager_layers


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", choices=list(ALGORITHMS), default=list(ALGORITHMS))
    parser.add_argument("--envs", nargs="+", type=env_argument, default=["point-robot"])
    parser.add_argument("--tier", default="quick", choices=TIERS, help="batch sizes of this tier (default: quick)")
    parser.add_argument("--threads", type=int, default=max(1, available_cpus() // 2),
                        help="torch threads (default: cpu_count // 2, a cell's share with the benchmark's --workers 2)")
    parser.add_argument("--grad-steps", type=int, default=30, help="timed gradient steps (default: 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed gradient steps first (default: 3)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds in which the precisions take turns; each rate is the median round's (default: 3)")
    parser.add_argument("--context-sizes", nargs="+", type=int, default=[10, 100, 1000])
    parser.add_argument("--adapt-repeats", type=int, default=21, help="adapt() calls per size; median reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--identity-steps", type=int, default=3,
                        help="bf16 steps compared weight for weight with fused and eager hidden layers (default: 3)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config override for every method, e.g. --set bf16=false")
    parser.add_argument("--out", default="benchmarks", help="writes <out>/throughput.json and THROUGHPUT.md")
    args = parser.parse_args(argv)
    if min(args.threads, args.grad_steps, args.adapt_repeats, args.rounds) < 1 or min(args.warmup, args.identity_steps) < 0:
        parser.error("--threads, --grad-steps, --rounds and --adapt-repeats must be positive, --warmup and "
                     "--identity-steps non-negative")
    return args


# ---------------------------------------------------------------------- measurements
def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def collection_rate(algorithm, collect) -> dict | None:
    """Environment steps per second of one collection call, or None for a method that collects nothing."""
    before = algorithm.env_steps
    seconds = _timed(collect)
    steps = algorithm.env_steps - before
    return {"env_steps": int(steps), "seconds": seconds, "env_steps_per_s": steps / seconds} if steps > 0 else None


def timed_steps(algorithm, steps: int, warmup: int) -> float:
    """Seconds for ``steps`` gradient steps after ``warmup`` untimed ones (allocation, autocast set-up)."""
    for _ in range(warmup):
        algorithm.train_step()
    _synchronize(algorithm.device)
    return _timed(lambda: ([algorithm.train_step() for _ in range(steps)], _synchronize(algorithm.device)))


def gradient_rates(algorithm, steps: int, warmup: int, rounds: int) -> dict:
    """Gradient steps/s at the default precision, with bf16 on and off, and bf16 with eager (unfused) hidden layers,
    each with its GFLOP/s. The variants take turns for ``rounds`` rounds and each rate is the median round's, so a
    neighbour's busy spell slows all of them rather than one."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, eager_layers():  # it counts aten's products, not oneDNN's fused ones
        algorithm.train_step()
    flops, default_bf16 = float(counter.get_total_flops()), algorithm.bf16
    variants = {"default": (default_bf16, contextlib.nullcontext), "bf16": (True, contextlib.nullcontext),
                "fp32": (False, contextlib.nullcontext), "bf16_eager": (True, eager_layers)}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (bf16, layers) in variants.items():
            algorithm.bf16 = bf16
            try:
                with layers():
                    seconds[name].append(timed_steps(algorithm, steps, warmup))
            finally:
                algorithm.bf16 = default_bf16
    samples = algorithm.protocol.meta_batch * algorithm.protocol.batch_size
    out = {"flops_per_step": flops}
    for name, values in seconds.items():
        rate = steps / statistics.median(values)
        out[name] = {"steps": steps, "rounds": rounds, "seconds": values, "grad_steps_per_s": rate,
                     "rl_samples_per_s": rate * samples, "gflop_per_s": flops * rate / 1e9}
    return out


def fused_matches_eager(config, steps: int) -> bool | None:
    """Whether ``steps`` bf16 gradient steps from one seed leave every weight bit-identical with fused and with eager
    hidden layers (two fresh runs); None where the fused layers do not apply (no native bf16, a GPU) or ``steps`` is 0."""
    if steps == 0 or config.device != "cpu" or not cpu_has_native_bf16():
        return None
    weights = []
    for layers in (contextlib.nullcontext, eager_layers):
        with tempfile.TemporaryDirectory(prefix="throughput-") as tmp, layers():
            algorithm = Trainer(dataclasses.replace(config, bf16=True), run_dir=Path(tmp) / "run",
                                progress=False).algorithm
            algorithm.collect_initial_data()
            for _ in range(steps):
                algorithm.train_step()
            weights.append({f"{name}.{key}": value for name, net in algorithm.networks.items()
                            for key, value in net.state_dict().items()})
    return all(torch.equal(value, weights[1][key]) for key, value in weights[0].items())


def adapt_latency(agent, obs_dim: int, action_dim: int, episode_length: int, sizes: list[int], repeats: int,
                  rng: np.random.Generator) -> dict[str, dict]:
    """Per context size: ``update_context``'s mean cost per (random) transition and the median ``adapt()`` latency."""
    out = {}
    for size in sizes:
        agent.clear_context()
        transitions = []
        for step in range(size):
            reward = float(rng.standard_normal())
            transitions.append((rng.standard_normal(obs_dim).astype(np.float32),
                                rng.uniform(-1.0, 1.0, size=action_dim).astype(np.float32), reward,
                                rng.standard_normal(obs_dim).astype(np.float32), False,
                                {"sparse_reward": reward, "truncated": (step + 1) % episode_length == 0}))
        update_seconds = _timed(lambda: [agent.update_context(transition) for transition in transitions])
        agent.adapt()  # warm-up: the first call at a new size may allocate
        latencies = [_timed(agent.adapt) for _ in range(repeats)]
        out[str(size)] = {"update_context_us": 1e6 * update_seconds / size,
                          "adapt_ms_median": 1e3 * statistics.median(latencies), "adapt_ms_min": 1e3 * min(latencies)}
    agent.clear_context()
    return out


def measure(env: str, algo: str, args: argparse.Namespace) -> dict:
    """Every measurement of one method on one environment, in a temporary run directory."""
    config = build_config(env, algo, args.tier, args.seed, [f"num_threads={args.threads}", *args.overrides])
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        trainer = Trainer(config, run_dir=Path(tmp) / "run", progress=False)
        algorithm = trainer.algorithm
        result = {"env": env, "algo": algo, "status": "ok", "bf16": config.bf16, "device": config.device,
                  "threads": torch.get_num_threads(), "meta_batch": config.protocol.meta_batch,
                  "batch_size": config.protocol.batch_size, "parameter_count": algorithm.parameter_count(),
                  "notes": [], "initial_collection": collection_rate(algorithm, algorithm.collect_initial_data),
                  "iteration_collection": None, "gradient": None}
        if hasattr(algorithm, "collect_iteration_data"):
            result["iteration_collection"] = collection_rate(algorithm, algorithm.collect_iteration_data)
        else:
            result["notes"].append("collects no data per iteration")
        if hasattr(algorithm, "train_step"):
            result["gradient"] = gradient_rates(algorithm, args.grad_steps, args.warmup, args.rounds)
            result["fused_matches_eager"] = fused_matches_eager(config, args.identity_steps)
        else:
            result["notes"].append("takes no gradient steps")
        result["adapt"] = adapt_latency(algorithm.agent, trainer.env.observation_space.shape[0],
                                        trainer.env.action_space.shape[0], trainer.env.unwrapped.max_episode_steps,
                                        args.context_sizes, args.adapt_repeats, np.random.default_rng(args.seed))
    return result


def matmul_peak(rows: int, width: int, device: torch.device, seconds_per_round: float = 0.1, rounds: int = 5) -> dict:
    """GFLOP/s of ``(rows x width) @ (width x width)`` in fp32 and bf16, and on a CPU without native bf16 also as
    bf16 autocast computes it there (``bf16_emulated``: fp32 kernels on rounded operands, ``models/kernels.py``):
    the most a step's layers can reach. The best of ``rounds`` rounds of at least ``seconds_per_round`` each, as a
    low ceiling would flatter every share of it. Each product is dropped at once, as a layer's would be: keeping them
    all alive times fresh memory's page faults too, which read bf16 at 37-41 % of the rate on an Intel Xeon with AMX
    (benchmarks/dev/bf16-step/MATMUL_PEAK.md)."""
    out = {"shape": [rows, width, width]}
    variants = {"fp32": (torch.float32, contextlib.nullcontext), "bf16": (torch.bfloat16, contextlib.nullcontext)}
    if device.type == "cpu" and not cpu_has_native_bf16():
        variants["bf16_emulated"] = (torch.float32, lambda: bf16_autocast("cpu"))
    for name, (dtype, context) in variants.items():
        a, b = torch.randn(rows, width, device=device, dtype=dtype), torch.randn(width, width, device=device, dtype=dtype)

        def products(repeats: int) -> float:
            def run() -> None:
                with context():
                    for _ in range(repeats):
                        a @ b
                _synchronize(device)
            return _timed(run)

        repeats = 1  # warm-up (kernel selection, allocation, the matrix unit's clock), doubling to a round's length
        while products(repeats) < seconds_per_round:
            repeats *= 2
        seconds = min(products(repeats) for _ in range(rounds))
        out[f"{name}_gflop_per_s"] = 2 * rows * width * width * repeats / seconds / 1e9
    return out


# ---------------------------------------------------------------------- report
def _f(value: float | None, digits: int = 1) -> str:
    return DASH if value is None else f"{value:,.{digits}f}"


def render_markdown(report: dict) -> str:
    sizes = report["context_sizes"]
    parts = [
        *report_heading("Throughput", report, f", **{report['threads']} torch thread(s)**, batch sizes of the "
                                              f"**{report['tier']}** tier"),
        "Gradient steps/s of `train_step()` (meta_batch tasks × batch_size transitions) on the same weights and "
        f"buffers, the median of {report.get('rounds', 1)} round(s) in which the variants take turns, at the default "
        "precision, with bf16 autocast forced on and off (*fp32* is what a CPU without native bf16 gets; there *bf16* "
        "is autocast with emulated products, `models/kernels.py`), and in bf16 with *eager* hidden layers (Linear and ReLU as separate kernels, as before "
        "`models/kernels.py`); *fused / eager* is the bf16 rate over the eager one, and *fused = eager* whether "
        f"{report.get('identity_steps', 3)} bf16 steps from one seed leave every weight bit-identical either way "
        "(two fresh runs; — where the fused layers do not apply). GFLOP/step as torch's `FlopCounterMode` counts it "
        "in a step with eager layers (the same products). Env steps/s: initial (prior) and per-iteration (posterior) "
        "collection. `adapt()`: median over "
        f"{report['adapt_repeats']} calls after N random transitions fed to `update_context`. *% of peak* sets a "
        "rate × GFLOP/step against the matrix-multiply peak below, bf16 for the bf16 rate and fp32 for the fp32 rate.",
        "",
    ]
    peak = report.get("matmul_peak") or {}
    if peak:
        rows, width, _ = peak["shape"]
        parts += [f"**Matrix-multiply peak in this process** ({rows} × {width} @ {width} × {width}, the critic's layer "
                  f"shape at this tier): fp32 {_f(peak['fp32_gflop_per_s'])} GFLOP/s, bf16 "
                  f"{_f(peak['bf16_gflop_per_s'])} GFLOP/s"
                  + (f" (torch's own kernel; emulated under autocast, the ceiling of the bf16 rates: "
                     f"{_f(peak['bf16_emulated_gflop_per_s'])} GFLOP/s)" if "bf16_emulated_gflop_per_s" in peak else "")
                  + ".", ""]
    header = ["method", "params", "meta_batch × batch", "bf16 (default)", "grad steps/s (default)",
              "grad steps/s (bf16)", "grad steps/s (fp32)", "grad steps/s (bf16, eager layers)", "fused / eager",
              "fused = eager", "GFLOP/step", "GFLOP/s (default)",
              "bf16 % of bf16 peak", "fp32 % of fp32 peak",
              "env steps/s (initial)", "env steps/s (iteration)", *(f"adapt ms @ {n}" for n in sizes),
              *(f"update_context µs @ {n}" for n in sizes)]
    for env in report["envs"]:
        rows = []
        for r in (r for r in report["results"] if r["env"] == env and r["status"] == "ok"):
            gradient, adapt = r.get("gradient") or {}, r.get("adapt") or {}
            flops = gradient.get("flops_per_step")
            rates = {name: (gradient.get(name) or {}).get("grad_steps_per_s")
                     for name in ("default", "bf16", "fp32", "bf16_eager")}
            speedup = (rates["bf16"] / rates["bf16_eager"]) if rates["bf16"] and rates["bf16_eager"] else None
            identical = {True: "yes", False: "no"}.get(r.get("fused_matches_eager"), DASH)

            def peak_share(name: str) -> str:
                ceiling = peak.get(f"{name}_emulated_gflop_per_s") or peak.get(f"{name}_gflop_per_s")
                if flops is None or rates[name] is None or not ceiling:
                    return DASH
                return f"{100 * rates[name] * flops / 1e9 / ceiling:.0f} %"

            rows.append([r["algo"], f"{r['parameter_count']:,}", f"{r['meta_batch']} × {r['batch_size']}",
                         "yes" if r.get("bf16") else "no", *(_f(rate, 2) for rate in rates.values()),
                         DASH if speedup is None else f"{speedup:.2f}x", identical,
                         _f(None if flops is None else flops / 1e9, 2),
                         _f((gradient.get("default") or {}).get("gflop_per_s"), 1), peak_share("bf16"), peak_share("fp32"),
                         _f((r.get("initial_collection") or {}).get("env_steps_per_s"), 0),
                         _f((r.get("iteration_collection") or {}).get("env_steps_per_s"), 0),
                         *(_f((adapt.get(str(n)) or {}).get("adapt_ms_median"), 3) for n in sizes),
                         *(_f((adapt.get(str(n)) or {}).get("update_context_us"), 1) for n in sizes)])
        parts += [f"## {env}", "", table(header, rows), ""]
    notes = [f"{r['algo']} on {r['env']} ({r['status']}): {note}" for r in report["results"] for note in r["notes"]]
    if notes:
        parts += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    return "\n".join(parts).rstrip() + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    command = shlex.join(["python", "-m", "experiments.throughput", *(sys.argv[1:] if argv is None else argv)])
    results, failed = [], False
    torch.set_num_threads(args.threads)
    first = build_config(args.envs[0], "sac-no-context", args.tier, args.seed, list(args.overrides))
    peak_args = (first.protocol.meta_batch * first.protocol.batch_size, first.agent.hidden_dim,
                 torch.device("cuda" if first.device == "cuda" else "cpu"))
    peak = matmul_peak(*peak_args)
    for env, algo in ((env, algo) for env in args.envs for algo in args.algos):
        try:
            algorithm_class(algo)
        except Exception as error:  # a method still being written: skip it, say why
            print(f"skipping {algo}: not importable yet")
            results.append({"env": env, "algo": algo, "status": "skipped",
                            "notes": [f"not importable yet ({type(error).__name__}: {error})"]})
            continue
        if reason := unsupported_reason(algo, env):  # a combination that does not exist: not a failure
            results.append({"env": env, "algo": algo, "status": "not run", "notes": [reason]})
            continue
        print(f"measuring {algo} on {env} ...", flush=True)
        try:
            results.append(measure(env, algo, args))
        except Exception:
            failed = True
            print(f"FAILED {algo} on {env}:\n{traceback.format_exc()}", file=sys.stderr)
            results.append({"env": env, "algo": algo, "status": "failed",
                            "notes": [traceback.format_exc().strip().splitlines()[-1]]})
    # measured again once the CPU has worked for a while (an idle core starts slow): the better of the two
    again = matmul_peak(*peak_args)
    peak = {key: max(value, again[key]) if key.endswith("_per_s") else value for key, value in peak.items()}
    print(f"matmul peak: fp32 {peak['fp32_gflop_per_s']:.1f} GFLOP/s, bf16 {peak['bf16_gflop_per_s']:.1f} GFLOP/s")
    report = {**provenance(command), "threads": args.threads, "tier": args.tier, "envs": args.envs,
              "context_sizes": args.context_sizes, "adapt_repeats": args.adapt_repeats,
              "grad_steps_timed": args.grad_steps, "rounds": args.rounds, "identity_steps": args.identity_steps,
              "overrides": args.overrides, "matmul_peak": peak, "results": results}
    write_json_and_markdown(out / "throughput.json", report, out / "THROUGHPUT.md", render_markdown(report))
    print(f"wrote {out / 'throughput.json'} and {out / 'THROUGHPUT.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
