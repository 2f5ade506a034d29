"""Where a trained agent's sparse-point-robot return goes: finding the goal, using it, and its training data.

    python -m experiments.sparse_probe benchmarks/benchmark/cells/sparse-point-robot/pearl/123 --out /tmp/probe

On the sparse task the final episode scores only if exploration found the goal's reward (or the agent guesses it)
*and* the adapted agent then goes there. On a finished cell's final weights this splits the two:

- **Meta-test trials** (the held-out tasks, the protocol's episodes, ``--repeats`` trials each, seeds of their
  own): the share of trials whose exploration earned any reward (*found*), the final episode's return when found
  and when not, and where the exploration episodes ended (the arc's angle, in degrees).
- **Training tasks**: a context drawn from each task's encoder buffer as a gradient step draws it, the share of its
  transitions that carry reward, and one deterministic episode on the latent inferred from it (its return and how
  far, in degrees, it ended from the goal): what the encoder learned from, not only what it infers at test time.

Writes ``sparse_probe.json`` (every trial) and ``SPARSE_PROBE.md`` under ``--out``; the cells are left unchanged.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from algos.core.evaluation import meta_test_episodes
from algos.core.io import atomic_write_json, atomic_write_text, read_json
from algos.core.sampler import num_eval_episodes, rollout
from experiments.analysis import load_run
from experiments.report import fmt, provenance, report_heading

PROBE_EVAL_OFFSET = 737_373  # the probe's own evaluation seeds: Trainer.eval_seed(this), apart from every other


def arc_angle(position) -> float:
    """The angle of a 2-D position, in degrees (the goals lie on the upper half-circle, 0-180)."""
    return float(np.degrees(np.arctan2(position[1], position[0])))


def meta_test_trials(trainer, repeats: int) -> list[dict]:
    """The protocol's meta-test on every held-out task, ``repeats`` trials each: per-episode sparse returns and
    where each episode ended."""
    p, env, agent = trainer.config.protocol, trainer.env, trainer.algorithm.agent
    meta_env = env.unwrapped
    num_episodes = num_eval_episodes(p.num_steps_per_eval, meta_env.max_episode_steps)
    trials = []
    with trainer.isolated_randomness(trainer.eval_seed(PROBE_EVAL_OFFSET)):
        for task in meta_env.test_task_ids:
            meta_env.reset_task(task)
            for _ in range(repeats):
                episodes = list(meta_test_episodes(env, agent, num_episodes, p.num_exp_traj_eval,
                                                   meta_env.max_episode_steps, sparse_rewards=True))
                ends = [episode.path["next_obs"][-1] for episode in episodes]
                trials.append({"task": int(task), "goal_angle": arc_angle(meta_env.task),
                               "returns": [episode.scored_return for episode in episodes],
                               "end_angles": [arc_angle(end) for end in ends],
                               "end_radii": [float(np.hypot(*end[:2])) for end in ends]})
    return trials


@torch.no_grad()
def training_context_probe(trainer) -> list[dict]:
    """One deterministic episode per training task on the latent inferred from a training-style context."""
    algorithm, env = trainer.algorithm, trainer.env
    meta_env, agent = env.unwrapped, algorithm.agent
    rows = []
    with trainer.isolated_randomness(trainer.eval_seed(PROBE_EVAL_OFFSET + 1)):
        for task in algorithm.train_tasks:
            context = algorithm.sample_task_context(int(task))               # (1, embedding_batch_size, context_dim)
            meta_env.reset_task(int(task))
            agent.clear_context()
            agent.infer_posterior(context)
            path = rollout(env, agent, meta_env.max_episode_steps, deterministic=True)
            goal_angle, end = arc_angle(meta_env.task), path["next_obs"][-1]
            rows.append({"task": int(task), "goal_angle": goal_angle,
                         "rewarding_share": float((context[0, :, -1] > 0).float().mean()),
                         "return": float(path["sparse_rewards"].sum()),
                         "angle_error": abs(arc_angle(end) - goal_angle), "end_radius": float(np.hypot(*end[:2]))})
    return rows


def mean_or_none(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def summarize(trials: list[dict], probe: list[dict], num_exp_traj_eval: int) -> dict:
    found = [any(r > 0 for r in t["returns"][:num_exp_traj_eval]) for t in trials]
    final = [t["returns"][-1] for t in trials]
    exploration_angles = np.array([t["end_angles"][:num_exp_traj_eval] for t in trials])
    with_reward = [row for row in probe if row["rewarding_share"] > 0]
    without_reward = [row for row in probe if row["rewarding_share"] == 0]
    return {
        "trials": len(trials),
        "meta_test_return": mean_or_none(final),
        "found_share": mean_or_none(found),
        "final_return_if_found": mean_or_none(f for f, hit in zip(final, found) if hit),
        "final_return_if_not_found": mean_or_none(f for f, hit in zip(final, found) if not hit),
        "final_scored_share": mean_or_none(f > 0 for f in final),
        "exploration_end_angle_deciles": np.percentile(exploration_angles, [10, 50, 90]).round(1).tolist(),
        "exploration_end_radius": float(np.mean([t["end_radii"][:num_exp_traj_eval] for t in trials])),
        "train_tasks": len(probe),
        "train_tasks_with_reward_in_context": len(with_reward),
        "train_return_with_reward": mean_or_none(row["return"] for row in with_reward),
        "train_return_without_reward": mean_or_none(row["return"] for row in without_reward),
        "train_angle_error_with_reward": mean_or_none(row["angle_error"] for row in with_reward),
        "train_angle_error_without_reward": mean_or_none(row["angle_error"] for row in without_reward),
    }


def probe_cell(run_dir: Path, repeats: int, threads: int) -> dict:
    trainer = load_run(run_dir)
    torch.set_num_threads(threads)
    if not trainer.config.protocol.sparse_rewards:
        raise SystemExit(f"{run_dir}: the probe is for the sparse task, this cell ran on {trainer.config.env}")
    results = read_json(run_dir / "results.json", what="cell results")
    started = time.perf_counter()
    trials = meta_test_trials(trainer, repeats)
    probe = training_context_probe(trainer)
    return {"run_dir": str(run_dir), "algo": trainer.config.algo, "seed": trainer.config.seed,
            "trained_at": results.get("git_commit"), "recorded_meta_test_return": results.get("meta_test_return"),
            "summary": summarize(trials, probe, trainer.config.protocol.num_exp_traj_eval),
            "meta_test_trials": trials, "training_context_probe": probe,
            "wall_time_s": time.perf_counter() - started}


def render_markdown(report: dict) -> str:
    lines = report_heading("Sparse-point-robot probe: finding the goal, using it, and the training context", report)
    lines += ["", "`python -m experiments.sparse_probe --help` says what each column measures. *scored*: share of "
              "trials whose final episode earned any reward; *exploration ends*: 10th, 50th and 90th percentile of the "
              "exploration episodes' final angle (goals span 0-180 degrees) and their mean radius (goals lie at 1).",
              "",
              "| cell | trained at | meta-test return (probe) | found | final if found | final if not found | scored "
              "| exploration ends (deg; radius) | tasks with reward in context | return with / without | angle "
              "error with / without (deg) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for cell in report["cells"]:
        s = cell["summary"]
        deciles = " / ".join(f"{a:.0f}" for a in s["exploration_end_angle_deciles"])
        lines.append(
            f"| {cell['algo']} seed {cell['seed']} | `{(cell['trained_at'] or '?')[:7]}` | {fmt(s['meta_test_return'])} "
            f"({s['trials']} trials) | {s['found_share']:.0%} | {fmt(s['final_return_if_found'])} | "
            f"{fmt(s['final_return_if_not_found'])} | {s['final_scored_share']:.0%} | {deciles}; "
            f"{s['exploration_end_radius']:.2f} | {s['train_tasks_with_reward_in_context']}/{s['train_tasks']} | "
            f"{fmt(s['train_return_with_reward'])} / {fmt(s['train_return_without_reward'])} | "
            f"{fmt(s['train_angle_error_with_reward'], 0)} / {fmt(s['train_angle_error_without_reward'], 0)} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.sparse_probe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="+", help="finished sparse-point-robot cell directories, with checkpoint.pt")
    parser.add_argument("--out", required=True, help="directory for sparse_probe.json and SPARSE_PROBE.md")
    parser.add_argument("--repeats", type=int, default=10, help="meta-test trials per held-out task (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    if args.repeats <= 0:
        parser.error(f"--repeats must be positive, got {args.repeats}")
    for cell in args.cells:
        if not (Path(cell) / "checkpoint.pt").exists() or not (Path(cell) / "results.json").exists():
            parser.error(f"{cell}: not a finished cell with its checkpoint (needs results.json and checkpoint.pt)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "experiments.sparse_probe", *(sys.argv[1:] if argv is None else argv)])
    report = {"repeats": args.repeats, "cells": []}
    for cell in args.cells:
        print(f"probing {cell} ...", flush=True)
        report["cells"].append(probe_cell(Path(cell), args.repeats, args.threads))
    report.update(provenance(command))
    out = Path(args.out)
    atomic_write_json(out / "sparse_probe.json", report)
    atomic_write_text(out / "SPARSE_PROBE.md", render_markdown(report))
    print(render_markdown(report))
    print(f"wrote {out / 'sparse_probe.json'} and {out / 'SPARSE_PROBE.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
