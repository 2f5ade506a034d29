"""Measure what a benchmark cell's wall time is made of, per method: gradient steps per second, environment
steps per second during data collection, and the online ``adapt()`` latency against the context size.

    python -m experiments.throughput                                   # every registered method, point-robot
    python -m experiments.throughput --algos pearl setformer --envs point-robot cheetah-vel --tier quick
    python -m experiments.throughput --render-only                     # re-render THROUGHPUT.md from its JSON

Each measurement builds the method exactly as a run would (``build_config`` + ``Trainer`` with the tier's
batch sizes and the same thread count a benchmark cell gets), so the numbers predict the benchmark's cost:

- gradient steps/s: ``algorithm.train_step()`` after ``collect_initial_data()`` and a warm-up, timed over N
  steps (one step = one meta-batch of ``meta_batch`` tasks × ``batch_size`` transitions), on the same weights
  and buffers at the run's default settings (bf16 as resolved for this machine) and with bf16 forced on and off;
  and the *naive* fp32 step, in a process of its own from the same config and seed, as a plain implementation
  runs it: fp32, Q's weight gradients computed in the policy pass, glibc's default allocator (the same math, more
  work). *fp32 / naive* is what a CPU without native bf16 gets (``bf16=auto`` resolves to fp32 there). FLOPs per
  step are counted by torch's ``FlopCounterMode`` on one step, so each rate also reads as achieved GFLOP/s,
  beside the matrix-multiply peak this process reaches at the critic's shapes (``meta_batch * batch_size`` ×
  hidden × hidden) in fp32 and bf16;
- env steps/s: ``collect_initial_data()`` (prior only) and ``collect_iteration_data()`` (with posterior
  inference), the environment steps they took divided by their time;
- ``update_context`` cost per transition and ``adapt()`` latency (median over repeats) after feeding 10, 100
  and 1000 random transitions of the right shapes, as meta-test evaluation does.

Writes ``<out>/throughput.json`` and ``<out>/THROUGHPUT.md`` (atomically). Methods that do not import yet are
skipped with a note; a method that crashes while measured is reported and the script exits nonzero.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from algos import ALGORITHMS, algorithm_class
from algos.core.config import TIERS
from algos.core.device import cpu_allocator
from algos.core.io import REPO_ROOT, atomic_write_text
from algos.core.trainer import Trainer, build_config
from envs_glue import ENV_SPECS
from experiments.engine import available_cpus, unsupported_reason
from experiments.report import provenance, report_heading, write_json_and_markdown

DEFAULT_CONTEXT_SIZES = (10, 100, 1000)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.throughput", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", choices=list(ALGORITHMS), default=list(ALGORITHMS))
    parser.add_argument("--envs", nargs="+", choices=list(ENV_SPECS), default=["point-robot"])
    parser.add_argument("--tier", default="quick", choices=TIERS, help="batch sizes of this tier (default: quick)")
    parser.add_argument("--threads", type=int, default=max(1, available_cpus() // 2),
                        help="torch threads (default: cpu_count // 2, what a cell gets with the benchmark's default "
                             "--workers 2)")
    parser.add_argument("--grad-steps", type=int, default=30, help="timed gradient steps (default: 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed gradient steps first (default: 3)")
    parser.add_argument("--context-sizes", nargs="+", type=int, default=list(DEFAULT_CONTEXT_SIZES))
    parser.add_argument("--adapt-repeats", type=int, default=21, help="adapt() calls per size; median reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", nargs="+", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every method, e.g. --set bf16=false")
    parser.add_argument("--out", default="benchmarks", help="writes <out>/throughput.json and THROUGHPUT.md")
    parser.add_argument("--render-only", action="store_true",
                        help="measure nothing: re-render <out>/THROUGHPUT.md from <out>/throughput.json")
    args = parser.parse_args(argv)
    args.overrides = [item for group in args.overrides for item in group]
    if args.threads < 1 or args.grad_steps < 1 or args.adapt_repeats < 1 or args.warmup < 0:
        parser.error("--threads, --grad-steps and --adapt-repeats must be positive, --warmup non-negative")
    return args


# ---------------------------------------------------------------------- measurements
def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def collection_rate(algorithm, collect) -> dict | None:
    """Environment steps per second of one collection call, or ``None`` for a method that collects nothing."""
    before = algorithm.env_steps
    seconds = _timed(collect)
    steps = algorithm.env_steps - before
    if steps <= 0:
        return None
    return {"env_steps": int(steps), "seconds": seconds, "env_steps_per_s": steps / seconds}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gradient_rate(algorithm, steps: int, warmup: int) -> dict:
    for _ in range(warmup):  # first steps pay for allocation and autocast set-up
        algorithm.train_step()
    _synchronize(algorithm.device)
    seconds = _timed(lambda: ([algorithm.train_step() for _ in range(steps)], _synchronize(algorithm.device)))
    protocol = algorithm.protocol
    samples = protocol.meta_batch * protocol.batch_size
    return {"steps": steps, "seconds": seconds, "grad_steps_per_s": steps / seconds,
            "rl_samples_per_s": steps * samples / seconds}


def flops_per_step(algorithm) -> float:
    """Floating-point operations of one ``train_step()`` (matrix products and convolutions, as torch counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        algorithm.train_step()
    return float(counter.get_total_flops())


# the settings a gradient step is timed at in the measuring process: (name, bf16); the naive step has a process of
# its own (naive_rate_in_fresh_process)
STEP_VARIANTS = (("bf16", True), ("fp32", False))


def gradient_rates(algorithm, steps: int, warmup: int, naive: dict) -> dict:
    """Gradient steps/s at the run's default precision and at every ``STEP_VARIANTS`` setting, on the same state,
    beside the ``naive`` fp32 step's (measured in its own process); each with its achieved GFLOP/s."""
    default_bf16 = algorithm.bf16
    flops = flops_per_step(algorithm)
    out = {"flops_per_step": flops, "default": gradient_rate(algorithm, steps, warmup)}
    for name, bf16 in STEP_VARIANTS:
        algorithm.bf16 = bf16
        try:
            out[name] = gradient_rate(algorithm, steps, warmup)
        finally:
            algorithm.bf16 = default_bf16
    out["naive_fp32"] = naive
    for name in ("default", *(v[0] for v in STEP_VARIANTS), "naive_fp32"):
        out[name]["gflop_per_s"] = flops * out[name]["grad_steps_per_s"] / 1e9
    out["speedup_default_vs_naive_fp32"] = (out["default"]["grad_steps_per_s"]
                                            / out["naive_fp32"]["grad_steps_per_s"])
    # what a CPU without native bf16 gets: bf16=auto resolves to fp32 there
    out["speedup_fp32_vs_naive_fp32"] = out["fp32"]["grad_steps_per_s"] / out["naive_fp32"]["grad_steps_per_s"]
    return out


def naive_rate_in_fresh_process(env: str, algo: str, args: argparse.Namespace) -> dict:
    """Gradient steps/s of the naive fp32 step as a plain implementation runs it: fp32, Q's weight gradients also
    computed in the policy pass, and glibc's default allocator. The allocator is set once per process, so this
    one is measured in a process of its own, from the same config, seed and initial data."""
    code = "import sys; from experiments.throughput import naive_child; naive_child(sys.argv[1:])"
    argv = [env, algo, args.tier, str(args.seed), str(args.threads), str(args.grad_steps), str(args.warmup),
            *args.overrides]
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the naive step's process failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def naive_child(argv: list[str]) -> None:
    env, algo, tier, seed, threads, steps, warmup, *overrides = argv
    config = build_config(env, algo, tier, int(seed), [f"num_threads={threads}", *overrides, "bf16=false"])
    with tempfile.TemporaryDirectory(prefix="throughput-naive-") as tmp:
        algorithm = Trainer(config, run_dir=Path(tmp) / "run", progress=False, tune_allocator=False).algorithm
        algorithm.collect_initial_data()
        algorithm.freeze_q_in_policy_step = False
        print(json.dumps({**gradient_rate(algorithm, int(steps), int(warmup)), "allocator": cpu_allocator()}))


def matmul_peak(rows: int, width: int, device: torch.device, repeats: int = 20) -> dict:
    """GFLOP/s of ``(rows × width) @ (width × width)`` in fp32 and bf16: the ceiling a step's layers can reach here."""
    out = {"shape": [rows, width, width]}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(rows, width, device=device).to(dtype)
        b = torch.randn(width, width, device=device).to(dtype)
        for _ in range(3):
            a @ b
        _synchronize(device)
        seconds = _timed(lambda: ([a @ b for _ in range(repeats)], _synchronize(device)))
        out[f"{name}_gflop_per_s"] = 2 * rows * width * width * repeats / seconds / 1e9
    return out


def random_transition(rng: np.random.Generator, obs_dim: int, action_dim: int, step: int, episode_length: int):
    """A transition ``(obs, action, reward, next_obs, done, info)`` shaped as the path sampler hands it over."""
    obs = rng.standard_normal(obs_dim).astype(np.float32)
    next_obs = rng.standard_normal(obs_dim).astype(np.float32)
    action = rng.uniform(-1.0, 1.0, size=action_dim).astype(np.float32)
    reward = float(rng.standard_normal())
    info = {"sparse_reward": reward, "truncated": (step + 1) % episode_length == 0}
    return obs, action, reward, next_obs, False, info


def adapt_latency(agent, obs_dim: int, action_dim: int, episode_length: int, sizes: list[int], repeats: int,
                  rng: np.random.Generator) -> dict[str, dict]:
    """Per context size: mean ``update_context`` cost per transition and median ``adapt()`` latency."""
    out = {}
    for size in sizes:
        agent.clear_context()
        transitions = [random_transition(rng, obs_dim, action_dim, i, episode_length) for i in range(size)]
        start = time.perf_counter()
        for transition in transitions:
            agent.update_context(transition)
        update_seconds = time.perf_counter() - start
        agent.adapt()  # warm-up: the first call at a new size may allocate
        latencies = [_timed(agent.adapt) for _ in range(repeats)]
        out[str(size)] = {"update_context_us": 1e6 * update_seconds / size,
                          "adapt_ms_median": 1e3 * statistics.median(latencies),
                          "adapt_ms_min": 1e3 * min(latencies)}
    agent.clear_context()
    return out


def measure(env: str, algo: str, args: argparse.Namespace) -> dict:
    """Every measurement of one method on one environment; the run directory is a temporary one."""
    config = build_config(env, algo, args.tier, args.seed, [f"num_threads={args.threads}", *args.overrides])
    with tempfile.TemporaryDirectory(prefix="throughput-") as tmp:
        trainer = Trainer(config, run_dir=Path(tmp) / "run", progress=False)
        algorithm = trainer.algorithm
        meta_env = trainer.env.unwrapped
        obs_dim = trainer.env.observation_space.shape[0]
        action_dim = trainer.env.action_space.shape[0]
        result = {"env": env, "algo": algo, "status": "ok", "bf16": config.bf16, "device": config.device,
                  "threads": torch.get_num_threads(),
                  "meta_batch": config.protocol.meta_batch, "batch_size": config.protocol.batch_size,
                  "parameter_count": algorithm.parameter_count(), "notes": []}
        result["initial_collection"] = collection_rate(algorithm, algorithm.collect_initial_data)
        if hasattr(algorithm, "collect_iteration_data"):
            result["iteration_collection"] = collection_rate(algorithm, algorithm.collect_iteration_data)
        else:
            result["iteration_collection"] = None
            result["notes"].append("collects no data per iteration")
        if hasattr(algorithm, "train_step"):
            result["gradient"] = gradient_rates(algorithm, args.grad_steps, args.warmup,
                                                naive_rate_in_fresh_process(env, algo, args))
        else:
            result["gradient"] = None
            result["notes"].append("takes no gradient steps")
        rng = np.random.default_rng(args.seed)
        result["adapt"] = adapt_latency(algorithm.agent, obs_dim, action_dim, meta_env.max_episode_steps,
                                        args.context_sizes, args.adapt_repeats, rng)
    return result


# ---------------------------------------------------------------------- report
def _f(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def render_markdown(report: dict) -> str:
    sizes = report["context_sizes"]
    parts = [
        *report_heading("Throughput", report, f", **{report['threads']} torch thread(s)**, batch sizes of the "
                                              f"**{report['tier']}** tier"),
        "Gradient steps/s: `train_step()` after a warm-up (one step = meta_batch tasks × batch_size transitions "
        "through critic, value, policy and encoder updates), on the same weights and buffers at the run's default "
        "settings (*default*: bf16 as `bf16=auto` resolves on this machine), with bf16 autocast forced on and off, "
        "and as a *naive* fp32 step in a process of its own from the same config and seed (fp32, Q's weight "
        "gradients also computed in the policy pass, and glibc's default allocator, as a plain implementation "
        "runs: the same math, more work); *default / naive* is their ratio, and *fp32 / naive* what a CPU without "
        "native bf16 gets (`bf16=auto` runs fp32 there). GFLOP/step is counted "
        "by torch's `FlopCounterMode` over one step; *GFLOP/s* is that times the default rate, and *% of fp32 "
        "peak* the fp32 and naive steps' achieved rate against the fp32 matrix-multiply peak below (the naive "
        "step's at the default step's FLOPs, so a lower bound: it also computes Q's weight gradients). A step "
        "near 100 % is bound by matrix multiplies, which no change at identical math can beat. Env steps/s: the "
        "initial collection (prior, no inference) and one iteration's collection (with posterior inference). "
        f"`adapt()`: median latency over {report['adapt_repeats']} calls after feeding N random transitions with "
        "`update_context` (whose mean cost per transition is given too).",
        "",
    ]
    peak = report.get("matmul_peak")
    if peak:
        rows, width, _ = peak["shape"]
        parts += [f"**Matrix-multiply peak in this process** ({rows} × {width} @ {width} × {width}, the critic's "
                  f"layer shape at this tier): fp32 {_f(peak['fp32_gflop_per_s'])} GFLOP/s, bf16 "
                  f"{_f(peak['bf16_gflop_per_s'])} GFLOP/s.", ""]
    for env in report["envs"]:
        rows = [r for r in report["results"] if r["env"] == env]
        header = ["method", "params", "meta_batch × batch", "bf16 (default)", "grad steps/s (default)",
                  "grad steps/s (bf16)", "grad steps/s (fp32)", "grad steps/s (naive fp32)", "default / naive",
                  "fp32 / naive",
                  "GFLOP/step", "GFLOP/s (default)", "fp32 % of fp32 peak", "naive % of fp32 peak",
                  "env steps/s (initial)",
                  "env steps/s (iteration)", *(f"adapt ms @ {n}" for n in sizes),
                  *(f"update_context µs @ {n}" for n in sizes)]
        lines = [f"## {env}", "", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        for r in rows:
            if r["status"] != "ok":
                continue
            gradient = r.get("gradient") or {}
            initial = r.get("initial_collection") or {}
            iteration = r.get("iteration_collection") or {}
            adapt = r.get("adapt") or {}
            rate = lambda name: (gradient.get(name) or {}).get("grad_steps_per_s")  # noqa: E731
            ratio = gradient.get("speedup_default_vs_naive_fp32")
            fp32_ratio = gradient.get("speedup_fp32_vs_naive_fp32")
            flops = gradient.get("flops_per_step")
            fp32_peak = (report.get("matmul_peak") or {}).get("fp32_gflop_per_s")

            def peak_share(name: str) -> str:
                if flops is None or not fp32_peak or rate(name) is None:
                    return "—"
                return f"{100 * rate(name) * flops / 1e9 / fp32_peak:.0f} %"
            cells = [r["algo"], f"{r['parameter_count']:,}", f"{r['meta_batch']} × {r['batch_size']}",
                     "yes" if r.get("bf16") else "no", _f(rate("default"), 2), _f(rate("bf16"), 2),
                     _f(rate("fp32"), 2), _f(rate("naive_fp32"), 2), "—" if ratio is None else f"{ratio:.2f}x",
                     "—" if fp32_ratio is None else f"{fp32_ratio:.2f}x",
                     _f(None if flops is None else flops / 1e9, 2),
                     _f((gradient.get("default") or {}).get("gflop_per_s"), 1),
                     peak_share("fp32"), peak_share("naive_fp32"),
                     _f(initial.get("env_steps_per_s"), 0), _f(iteration.get("env_steps_per_s"), 0),
                     *(_f((adapt.get(str(n)) or {}).get("adapt_ms_median"), 3) for n in sizes),
                     *(_f((adapt.get(str(n)) or {}).get("update_context_us"), 1) for n in sizes)]
            lines.append("| " + " | ".join(cells) + " |")
        parts += lines + [""]
    notes = [f"{r['algo']} on {r['env']} ({r['status']}): {note}" for r in report["results"] for note in r["notes"]]
    if notes:
        parts += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    return "\n".join(parts).rstrip() + "\n"


def render_only(out: Path) -> int:
    source = out / "throughput.json"
    try:
        report = json.loads(source.read_text())
    except FileNotFoundError:
        raise SystemExit(f"--render-only: {source} does not exist; run the measurement first")
    except json.JSONDecodeError as error:
        raise SystemExit(f"--render-only: {source} is not valid JSON ({error})")
    atomic_write_text(out / "THROUGHPUT.md", render_markdown(report))
    print(f"re-rendered {out / 'THROUGHPUT.md'} from {source}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render_only:
        return render_only(Path(args.out))
    command = shlex.join(["python", "-m", "experiments.throughput", *(sys.argv[1:] if argv is None else argv)])
    results, failed = [], False
    torch.set_num_threads(args.threads)
    peak_config = build_config(args.envs[0], "pearl", args.tier, args.seed, list(args.overrides))
    matmul = matmul_peak(peak_config.protocol.meta_batch * peak_config.protocol.batch_size,
                         peak_config.agent.hidden_dim, torch.device(peak_config.device))
    print(f"matmul peak: fp32 {matmul['fp32_gflop_per_s']:.1f} GFLOP/s, bf16 {matmul['bf16_gflop_per_s']:.1f} GFLOP/s")
    for env in args.envs:
        for algo in args.algos:
            try:
                algorithm_class(algo)
            except Exception as error:  # a method still being written: skip it, say why
                note = f"not importable yet ({type(error).__name__}: {error})"
                print(f"skipping {algo}: {note}")
                results.append({"env": env, "algo": algo, "status": "skipped", "notes": [note]})
                continue
            reason = unsupported_reason(algo, env)
            if reason:  # a combination that does not exist (the oracle on cheetah-vel), not a failure
                results.append({"env": env, "algo": algo, "status": "not run", "notes": [reason]})
                continue
            print(f"measuring {algo} on {env} ...", flush=True)
            try:
                result = measure(env, algo, args)
            except Exception:
                failed = True
                last = traceback.format_exc().strip().splitlines()[-1]
                print(f"FAILED {algo} on {env}:\n{traceback.format_exc()}", file=sys.stderr)
                results.append({"env": env, "algo": algo, "status": "failed", "notes": [last]})
                continue
            gradient = result["gradient"] or {}
            print(f"  grad steps/s {_f((gradient.get('default') or {}).get('grad_steps_per_s'), 2)}, adapt ms "
                  + ", ".join(f"@{n}: {_f(result['adapt'][str(n)]['adapt_ms_median'], 3)}"
                              for n in args.context_sizes))
            results.append(result)
    report = {
        **provenance(command), "threads": args.threads, "tier": args.tier,
        "envs": args.envs, "context_sizes": args.context_sizes, "adapt_repeats": args.adapt_repeats,
        "grad_steps_timed": args.grad_steps, "overrides": args.overrides, "matmul_peak": matmul, "results": results,
    }
    out = Path(args.out)
    write_json_and_markdown(out / "throughput.json", report, out / "THROUGHPUT.md", render_markdown(report))
    print(f"wrote {out / 'throughput.json'} and {out / 'THROUGHPUT.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
