"""How fast each environment simulates: random-action steps through ``make_env``, one core, no agent.

    python benchmarks/dev/env-step-time/measure.py                          # every environment this Python can build
    .venv-metaworld/bin/python benchmarks/dev/env-step-time/measure.py --envs ml1-reach ml1-push ml1-pick-place ml10

Collection and evaluation are a large part of a cell's wall time on the MuJoCo environments, so planning a cell
needs the simulator's pace beside the gradient step's (``benchmarks/THROUGHPUT.md``). Per environment: the time to
build it (task lists and models; the first build in a process), then ``--rounds`` rounds of ``--steps`` random
actions, a fresh task drawn at each episode's start, cycling through the training tasks. The figure is the
*thread CPU time* per step (median over rounds), which another process on the same core does not inflate; wall
time and the load average are recorded beside it. Results from every run (each Python, e.g. the Meta-World
environment's pinned ``mujoco``) are merged into ``env_step_time.json`` by environment name and rendered into
``ENV_STEP_TIME.md``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from algos.core.io import atomic_write_json, atomic_write_text, git_commit, machine_description  # noqa: E402
from envs_glue import ENV_SPECS, make_env  # noqa: E402
from envs_glue.metaworld_ml1 import OptionalExtraMissingError  # noqa: E402

RESULTS = HERE / "env_step_time.json"
REPORT = HERE / "ENV_STEP_TIME.md"


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    versions = {}
    for name in ("mujoco", "gymnasium", "metaworld"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def measure(env_name: str, rounds: int, steps: int, seed: int) -> dict:
    build_start = time.perf_counter()
    env = make_env(env_name, seed=seed)
    build_s = time.perf_counter() - build_start
    meta_env = env.unwrapped
    task_ids = meta_env.train_task_ids
    rng = np.random.default_rng(seed)

    def new_episode():
        meta_env.reset_task(int(rng.choice(task_ids)))
        env.reset()

    new_episode()
    cpu_per_step, wall_per_step, episodes = [], [], 0
    for _ in range(rounds):
        cpu_start, wall_start = time.thread_time(), time.perf_counter()
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                episodes += 1
                new_episode()
        cpu_per_step.append((time.thread_time() - cpu_start) / steps)
        wall_per_step.append((time.perf_counter() - wall_start) / steps)
    env.close()
    cpu_median = statistics.median(cpu_per_step)
    return {
        "env": env_name,
        "obs_dim": int(env.observation_space.shape[0]),
        "action_dim": int(env.action_space.shape[0]),
        "build_s": round(build_s, 2),
        "cpu_us_per_step": round(cpu_median * 1e6, 1),
        "cpu_steps_per_s": round(1.0 / cpu_median),
        "cpu_steps_per_s_range": [round(1.0 / max(cpu_per_step)), round(1.0 / min(cpu_per_step))],
        "wall_steps_per_s": round(1.0 / statistics.median(wall_per_step)),
        "episodes_ended": episodes,
        "rounds": rounds,
        "steps_per_round": steps,
        "libraries": library_versions(),
        "machine": machine_description(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
        "commit": git_commit(),
        "command": "python " + shlex.join(sys.argv),
        "interpreter": sys.executable,  # the Meta-World environments run from their own virtual environment
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def render(results: dict) -> str:
    lines = [
        "# Environment step time",
        "",
        "Random actions through `make_env`, one core, no agent: the simulator's own pace (see `measure.py` for the",
        "method). *CPU steps/s* is from the thread's CPU time, which other processes on the core do not inflate",
        "(caches and clocks shared with them still can); *wall steps/s* and the load average show how busy the",
        "machine was. Build time is the first `make_env` in a process (task",
        "lists and models). Random actions end episodes early on the MuJoCo bodies with a healthy check (resets are",
        "part of the figure), so the rounds differ; the agent's own episodes pace differently.",
        "",
        "| environment | obs / action dims | CPU steps/s (median; slowest-fastest round) | wall steps/s | build (s) | "
        "mujoco | load average (1, 5, 15 min) | CPU | commit | measured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: rank for rank, name in enumerate(ENV_SPECS)}
    for entry in sorted(results.values(), key=lambda e: order.get(e["env"], len(order))):
        load = ", ".join(f"{value:.2f}" for value in entry["load_average"])
        slowest, fastest = entry["cpu_steps_per_s_range"]
        lines.append(
            f"| {entry['env']} | {entry['obs_dim']} / {entry['action_dim']} | {entry['cpu_steps_per_s']:,} "
            f"({slowest:,}-{fastest:,}) | {entry['wall_steps_per_s']:,} | {entry['build_s']} | "
            f"{entry['libraries']['mujoco'] or '—'} | {load} | {entry['machine']['cpu']} | `{entry['commit'][:7]}` | "
            f"{entry['measured_at']} |")
    lines += ["", "Commands (the interpreter's virtual environment, and the `mujoco` it holds):", ""]
    runs = {(entry["command"], entry["interpreter"], entry["libraries"]["mujoco"]) for entry in results.values()}
    for command, interpreter, mujoco in sorted(runs):
        lines.append(f"- `{command}` with `{interpreter}` (mujoco {mujoco})")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=None, help="default: every environment this Python can build")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2000, help="random steps per round")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    unknown = [name for name in args.envs or [] if name not in ENV_SPECS]
    if unknown:
        parser.error(f"unknown environment(s) {', '.join(unknown)}; known: {', '.join(ENV_SPECS)}")
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    torch.set_num_threads(1)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    for name in args.envs or ENV_SPECS:
        try:
            entry = measure(name, args.rounds, args.steps, args.seed)
        except OptionalExtraMissingError:
            if args.envs:
                raise
            print(f"{name}: skipped, its optional extra is not installed in this Python", flush=True)
            continue
        print(f"{name}: {entry['cpu_steps_per_s']:,} steps/s (CPU), {entry['wall_steps_per_s']:,} wall, "
              f"build {entry['build_s']} s", flush=True)
        results[name] = entry
        atomic_write_json(RESULTS, results)
        atomic_write_text(REPORT, render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
