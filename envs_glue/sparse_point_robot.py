"""Sparse point-robot navigation tasks of the reference benchmark (PEARL's ``SparsePointEnv``): the point robot
of ``point_robot.py`` starting at the origin, with goals on the upper half-circle and a sparse reward."""
from __future__ import annotations

import numpy as np

from envs_glue.base import NUM_VALIDATION_TASKS, VALIDATION_TASK_SEED
from envs_glue.point_robot import NUM_TASKS, TASK_SEED, PointRobotEnv
from envs_glue.protocol import ProtocolConfig
from envs_glue.spec import EnvSpec

SPARSE_GOAL_RADIUS = 0.2


def sparse_point_robot_goals(num_tasks: int = NUM_TASKS) -> np.ndarray:
    """Goals of ``sparse-point-robot``: the upper unit half-circle, shuffled by a fresh ``RandomState(1337)``."""
    angles = np.linspace(0.0, np.pi, num=num_tasks)
    goals = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    np.random.RandomState(TASK_SEED).shuffle(goals)
    return goals


def sparse_point_robot_validation_goals(num_tasks: int = NUM_VALIDATION_TASKS) -> np.ndarray:
    """Validation goals of ``sparse-point-robot``: angles ``uniform(0, pi)`` from ``RandomState(4242)``, on the same
    half-circle as the training goals but off their grid."""
    angles = np.random.RandomState(VALIDATION_TASK_SEED).uniform(0.0, np.pi, size=num_tasks)
    return np.stack([np.cos(angles), np.sin(angles)], axis=1)


def sparsify(dense_reward: float, goal_radius: float = SPARSE_GOAL_RADIUS) -> float:
    """``1 - d`` inside the goal radius, ``0`` outside, with ``d = -dense_reward`` the distance to the goal."""
    distance = -dense_reward
    return float(1.0 - distance) if distance <= goal_radius else 0.0


class SparsePointRobotEnv(PointRobotEnv):
    """Point robot starting at the origin with goals on the upper half-circle; sparse reward in ``info``."""

    @staticmethod
    def make_goals() -> np.ndarray:
        return np.concatenate([sparse_point_robot_goals(), sparse_point_robot_validation_goals()])

    def _initial_position(self) -> np.ndarray:
        return np.zeros(2)

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        info["sparse_reward"] = sparsify(reward)
        return obs, reward, terminated, truncated, info


SPEC = EnvSpec(
    "sparse-point-robot", "incontext/SparsePointRobot-v0", SparsePointRobotEnv,
    ProtocolConfig(
        num_iterations=20, num_initial_steps=200, num_tasks_sample=10, num_steps_prior=100, num_steps_posterior=900,
        num_extra_rl_steps_posterior=0, num_train_steps_per_itr=1000, meta_batch=16, batch_size=256,
        embedding_batch_size=1024, discount=0.90, reward_scale=100.0, num_steps_per_eval=400, num_exp_traj_eval=5,
        num_evals=2),
    max_episode_steps=20, sparse_reward=True,
    known_optimum=13.07,
    known_optimum_note="known-goal optimum from (0, 0) 13.07; one blind search episode earns at most ≈ 6.7",
    task_label="goal angle (rad)", report_rank=1, goal_plane=True, goal_radius=SPARSE_GOAL_RADIUS)
