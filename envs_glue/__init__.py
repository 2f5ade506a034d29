"""Environments of the benchmark, registered with gymnasium, and the one way to build them.

``make_env("point-robot")`` returns the gymnasium environment with actions in ``[-1, 1]``;
``env.unwrapped`` is the :class:`~envs_glue.base.MetaEnv` holding the task list.

An environment is its module plus two entries: its :class:`EnvSpec` below, the one source of its facts (every
tool and table reads them from here), and its protocol in ``algos.core.config.BENCHMARK`` (``docs/PROTOCOL.md#training-protocol``).
``ENV_SPECS`` is in table order.
"""
from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym

from envs_glue.base import MetaEnv
from envs_glue.point_robot import SPARSE_GOAL_RADIUS
from envs_glue.wrappers import ScaledActionWrapper


@dataclass(frozen=True)
class EnvSpec:
    name: str
    gym_id: str
    entry_point: str
    max_episode_steps: int               # also the smoke tier's episode and step counts
    sparse_reward: bool                  # the context and every reported return use the sparse reward
    known_optimum: float | None          # the final episode's best score when the task is known: docs/PROTOCOL.md#known-optima-and-limits
    known_optimum_note: str              # how that number was obtained, as tables quote it
    task_label: str                      # the one scalar that names a task in plots
    goal_plane: bool = False             # tasks are goals (x, y) on a plane: plots draw positions and goals
    task_wraps_around: bool = False      # the task scalar is an angle over the full circle (a cyclic colormap)
    goal_radius: float | None = None     # the sparse reward's radius around the goal (drawn on attention maps)


ENV_SPECS: dict[str, EnvSpec] = {
    spec.name: spec
    for spec in [
        EnvSpec("point-robot", "incontext/PointRobot-v0", "envs_glue.point_robot:PointRobotEnv", 20, False,
                known_optimum=-4.60,
                known_optimum_note="known-goal optimum -4.60 (random starts; a 10-task mean has std ≈ 1.2 from the "
                                   "starts alone); standing still scores -19.67, heading for the origin -14.08",
                task_label="goal angle (rad)", goal_plane=True, task_wraps_around=True),
        EnvSpec("sparse-point-robot", "incontext/SparsePointRobot-v0",
                "envs_glue.point_robot:SparsePointRobotEnv", 20, True,
                known_optimum=13.07,
                known_optimum_note="known-goal optimum from (0, 0) 13.07; one blind search episode earns at most "
                                   "≈ 6.7",
                task_label="goal angle (rad)", goal_plane=True, goal_radius=SPARSE_GOAL_RADIUS),
        EnvSpec("cheetah-vel", "incontext/CheetahVel-v0", "envs_glue.cheetah_vel:CheetahVelEnv", 200, False,
                known_optimum=None,
                known_optimum_note="no closed form; open-loop gaits found by search reach ≈ -31, and the optimum is "
                                   "no higher than ≈ -5",
                task_label="goal velocity"),
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
