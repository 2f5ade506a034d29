"""Environments of the benchmark, registered with gymnasium, and the one way to build them.

``make_env("point-robot")`` returns the gymnasium environment with actions in ``[-1, 1]``;
``env.unwrapped`` is the :class:`~envs_glue.base.MetaEnv` holding the task list.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym

from envs_glue.base import MetaEnv
from envs_glue.wrappers import ScaledActionWrapper


@dataclass(frozen=True)
class EnvSpec:
    name: str
    gym_id: str
    entry_point: str
    max_episode_steps: int
    sparse_reward: bool


ENV_SPECS: dict[str, EnvSpec] = {
    spec.name: spec
    for spec in [
        EnvSpec("point-robot", "incontext/PointRobot-v0", "envs_glue.point_robot:PointRobotEnv", 20, False),
        EnvSpec("sparse-point-robot", "incontext/SparsePointRobot-v0",
                "envs_glue.point_robot:SparsePointRobotEnv", 20, True),
        EnvSpec("cheetah-vel", "incontext/CheetahVel-v0", "envs_glue.cheetah_vel:CheetahVelEnv", 200, False),
    ]
}

for _spec in ENV_SPECS.values():
    if _spec.gym_id not in gym.registry:
        gym.register(id=_spec.gym_id, entry_point=_spec.entry_point, max_episode_steps=_spec.max_episode_steps)


def env_spec(name: str) -> EnvSpec:
    if name not in ENV_SPECS:
        raise ValueError(f"unknown env {name!r}; choose one of {sorted(ENV_SPECS)}")
    return ENV_SPECS[name]


def make_env(name: str, seed: int | None = None) -> gym.Env:
    """The registered environment with the agent-facing ``[-1, 1]`` action scaling."""
    env = ScaledActionWrapper(gym.make(env_spec(name).gym_id))
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


__all__ = ["ENV_SPECS", "EnvSpec", "MetaEnv", "ScaledActionWrapper", "env_spec", "make_env"]
