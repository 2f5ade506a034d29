"""Two facts behind Meta-World's place as an optional extra, measured (``README.md`` beside this file).

``rollout``: one cheetah-vel episode (test task 0, reset seed 0, 200 uniform random actions from a fixed seed) under
whatever ``mujoco`` this interpreter imports; the observations and rewards go to an ``.npz``.
``compare A B``: the first step at which two such rollouts' observations differ, and by how much at chosen steps.
``scripted``: Meta-World's scripted policies, shown the goal, on the first 20 test tasks of each ML1 environment in
this project's 200-step episodes: the step of first success (needs the optional extra's interpreter).
Each command writes a JSON to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repository root


def rollout(out: str) -> None:
    import mujoco
    from envs_glue import make_env
    env = make_env("cheetah-vel", seed=0)
    env.unwrapped.reset_task(env.unwrapped.test_task_ids[0])
    obs, _ = env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1.0, 1.0, size=(200, *env.action_space.shape))
    observations, rewards = [obs], []
    for action in actions:
        obs, reward, *_ = env.step(action.astype(env.action_space.dtype))
        observations.append(obs)
        rewards.append(reward)
    np.savez(out, observations=np.array(observations), rewards=np.array(rewards), mujoco=mujoco.__version__)


def compare(a: str, b: str, out: str) -> None:
    runs = [np.load(path) for path in (a, b)]
    gap = np.abs(runs[0]["observations"] - runs[1]["observations"]).max(axis=1)  # per step, over coordinates
    differs = np.flatnonzero(gap > 0)
    result = {
        "mujoco": [run["mujoco"].item() for run in runs],
        "first_step_differing": int(differs[0]) if differs.size else None,
        "max_abs_obs_difference_at_step": {str(t): float(gap[t]) for t in (1, 10, 25, 50, 75, 100, 150, 200)},
        "first_step_difference_above_1e-3": int(np.flatnonzero(gap > 1e-3)[0]) if (gap > 1e-3).any() else None,
        "episode_return": [float(run["rewards"].sum()) for run in runs],
    }
    _write(out, result)


def scripted(out: str) -> None:
    from importlib import metadata

    from metaworld import policies
    from envs_glue import make_env
    policy_of = {"ml1-reach": policies.SawyerReachV3Policy, "ml1-push": policies.SawyerPushV3Policy,
                 "ml1-pick-place": policies.SawyerPickPlaceV3Policy}
    result = {"metaworld": metadata.version("metaworld")}
    for name, policy_class in policy_of.items():
        policy, env = policy_class(), make_env(name, seed=0)
        sim, first_success = env.unwrapped.sim, []
        for task in env.unwrapped.test_task_ids[:20]:
            env.unwrapped.reset_task(task)
            obs, _ = env.reset()
            goal, step_of_success = sim._target_pos.copy(), None
            for step in range(1, 201):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the policy warns that its gains exceed the action range
                    action = np.clip(policy.get_action(np.concatenate([obs[:-3], goal])), -1.0, 1.0)
                obs, _, _, truncated, info = env.step(action)
                if info["success"]:
                    step_of_success = step
                    break
                if truncated:
                    break
            first_success.append(step_of_success)
        reached = [s for s in first_success if s is not None]
        result[name] = {"first_success_step": first_success, "succeeded": len(reached),
                        "median": float(np.median(reached)) if reached else None,
                        "max": max(reached) if reached else None}
    _write(out, result)


def _write(out: str, result: dict) -> None:
    from algos.core.io import atomic_write_json, git_commit, machine_description
    result.update(command=shlex.join(["python", *sys.argv]), commit=git_commit(), machine=machine_description())
    atomic_write_json(Path(out), result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["rollout", "compare", "scripted"])
    parser.add_argument("inputs", nargs="*")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.command == "compare":
        compare(*args.inputs, out=args.out)
    else:
        (rollout if args.command == "rollout" else scripted)(args.out)
