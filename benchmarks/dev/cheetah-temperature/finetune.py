"""Mechanism probe for setformer's cheetah-vel policy: does a learned entropy temperature fix the deterministic
policy's velocity bias?

Continues a finished benchmark-tier cell from its final checkpoint for a few more iterations in two arms, from
the same weights, buffers and random state: ``fixed`` (temperature 1, as the cell trained) and ``learned``
(``learn_temperature``, from 1 toward ``target_entropy_per_dim`` x action_dim). Both arms then measure, on the
final weights: the low-noise held-out figure (the cell's own final-evaluation seeds), and on every training task
with its own embedding (known task, deterministic) the return and the steady-state velocity error, split by goal.
It is a probe of mechanism, not a protocol result: both arms spend more gradient steps than the protocol allows,
and only their difference means anything. The cell's files are read, never written.

    python benchmarks/dev/cheetah-temperature/finetune.py benchmarks/archive/benchmark-before-selection/benchmark/cells/cheetah-vel/setformer/123 \
        --arm learned --iterations 3 --out benchmarks/dev/cheetah-temperature
"""
from __future__ import annotations

import argparse
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from algos.core.io import atomic_write_json
from experiments.analysis import load_run

STEADY_FROM = 50  # steps: the velocity error is read once the cheetah has had time to reach its gait


def known_task_profile(trainer, seed: int, deterministic: bool = True) -> dict:
    """Each training task run once on its own embedding (deterministically unless told): return, and velocity
    error after ``STEADY_FROM`` steps (signed mean and mean absolute)."""
    alg, agent, env = trainer.algorithm, trainer.algorithm.agent, trainer.env
    env.reset(seed=seed)
    rows = []
    for task in alg.train_tasks:
        env.unwrapped.reset_task(int(task))
        agent.clear_context()
        agent.act_on(agent.hypotheses[int(task)])
        obs, _ = env.reset()
        goal = float(env.unwrapped.task[0])
        rewards, velocities = [], []
        for _ in range(alg.max_path_length):
            action, _ = agent.get_action(obs, deterministic=deterministic)
            obs, reward, terminated, truncated, info = env.step(action)
            rewards.append(reward)
            velocities.append(info["forward_velocity"])
            if terminated or truncated:
                break
        error = np.asarray(velocities[STEADY_FROM:]) - goal
        rows.append({"task": int(task), "goal": goal, "return": float(np.sum(rewards)),
                     "steady_velocity_error": float(error.mean()), "steady_abs_error": float(np.abs(error).mean())})
    rows.sort(key=lambda r: r["goal"])
    return {"return": float(np.mean([r["return"] for r in rows])),
            "steady_abs_error": float(np.mean([r["steady_abs_error"] for r in rows])),
            "steady_velocity_error": float(np.mean([r["steady_velocity_error"] for r in rows])),
            "per_task": rows}


def profile_main(argv) -> int:
    """``finetune.py profile CELL --out DIR``: the known-task profile of a cell's final weights as they are,
    deterministic and stochastic, into ``DIR/profile-<seed>.json``."""
    parser = argparse.ArgumentParser(description="known-task velocity profile of a cell's final weights")
    parser.add_argument("cell", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    trainer = load_run(args.cell)
    torch.manual_seed(0)
    result = {"cell": str(args.cell), "deterministic": known_task_profile(trainer, seed=12345),
              "stochastic": known_task_profile(trainer, seed=12345, deterministic=False),
              "command": shlex.join([sys.executable, *sys.argv]),
              "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"profile-{args.cell.name}.json", result)
    for mode in ("deterministic", "stochastic"):
        print(f"{mode}: known-task {result[mode]['return']:.2f}, steady |v error| {result[mode]['steady_abs_error']:.3f}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["profile"]:
        return profile_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cell", type=Path)
    parser.add_argument("--arm", choices=("fixed", "learned"), required=True)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--target-entropy-per-dim", type=float, default=-1.0)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()
    trainer = load_run(args.cell)
    alg = trainer.algorithm
    before = known_task_profile(trainer, seed=12345)  # in both arms: it reseeds the env, which collection reads
    if args.arm == "learned":
        alg.config.learn_temperature = True
        alg.config.target_entropy_per_dim = args.target_entropy_per_dim
        alg.log_temperature = torch.zeros((), requires_grad=True)
        alg.optimizers["temperature"] = torch.optim.Adam([alg.log_temperature], lr=alg.config.lr)
    torch.manual_seed(0)
    first = int(trainer.config.protocol.num_iterations)
    log = []
    for iteration in range(first, first + args.iterations):
        metrics = alg.train_iteration(iteration)
        log.append({"iteration": iteration, **{k: metrics[k] for k in metrics
                                                if k.split("/")[-1] in ("log_pi", "temperature", "q_mean")}})
        print(log[-1], flush=True)
    final = trainer.final_evaluation(args.repeats)
    after = known_task_profile(trainer, seed=12345)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    result = {"cell": str(args.cell), "arm": args.arm, "extra_iterations": args.iterations,
              "extra_gradient_steps": args.iterations * trainer.config.protocol.num_train_steps_per_itr,
              "target_entropy_per_dim": args.target_entropy_per_dim if args.arm == "learned" else None,
              "held_out_low_noise": float(final.meta_test_return), "held_out_repeats": args.repeats,
              "known_task_before": before, "known_task_after": after, "training_log": log,
              "command": shlex.join([sys.executable, *sys.argv]), "commit": commit,
              "machine": f"{platform.processor() or platform.machine()} ({torch.__version__})",
              "wall_time_s": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / f"{args.cell.name}-{args.arm}.json", result)
    print(f"{args.arm}: held-out low-noise {result['held_out_low_noise']:.2f}, known-task {after['return']:.2f}, "
          f"steady |v error| {after['steady_abs_error']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
