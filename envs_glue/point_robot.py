"""Point-robot navigation tasks of the reference benchmark (PEARL's ``PointEnv`` / ``SparsePointEnv``).

The environment acts in its native bounds ``[-0.1, 0.1]^2``; the agent-facing ``[-1, 1]^2`` scaling
lives in :class:`envs_glue.wrappers.ScaledActionWrapper` so the dynamics here read as in the reference.
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

from envs_glue.base import NUM_VALIDATION_TASKS, VALIDATION_TASK_SEED, MetaEnv

TASK_SEED = 1337
NUM_TASKS = 50
SPARSE_GOAL_RADIUS = 0.2


def point_robot_goals(num_tasks: int = NUM_TASKS, seed: int = TASK_SEED) -> np.ndarray:
    """Goals of ``point-robot``: for each goal draw x then y from ``uniform(-1, 1)``. Shape ``(num_tasks, 2)``."""
    rng = np.random.RandomState(seed)
    return np.array([[rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)] for _ in range(num_tasks)])


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


class PointRobotEnv(MetaEnv):
    """State = position; reward = ``-||position - goal||`` after the step; never terminates."""

    metadata = {"render_modes": []}
    max_episode_steps = 20
    num_train_tasks = 40
    num_test_tasks = 10

    def __init__(self, render_mode: str | None = None):
        self.goals = self.make_goals()
        self.observation_space = spaces.Box(low=-np.inf, high=np.inf, shape=(2,), dtype=np.float64)
        self.action_space = spaces.Box(low=-0.1, high=0.1, shape=(2,), dtype=np.float32)
        self.render_mode = render_mode
        self._position = np.zeros(2)
        self.reset_task(0)

    @staticmethod
    def make_goals() -> np.ndarray:
        """Train and test goals, then the validation goals: ``(50 + 10, 2)``."""
        return np.concatenate([point_robot_goals(), point_robot_goals(NUM_VALIDATION_TASKS, VALIDATION_TASK_SEED)])

    @property
    def tasks(self) -> np.ndarray:
        return self.goals

    def reset_task(self, task_idx: int) -> None:
        self.task_idx = int(task_idx)
        self._goal = self.goals[self.task_idx].copy()

    @property
    def task(self) -> np.ndarray:
        return self._goal.copy()

    def _initial_position(self) -> np.ndarray:
        return self.np_random.uniform(-1.0, 1.0, size=2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._position = self._initial_position()
        return self._position.copy(), {"task": self.task}

    def _dense_reward(self) -> float:
        return -float(np.linalg.norm(self._position - self._goal))

    def step(self, action):
        self._position = self._position + np.asarray(action, dtype=np.float64)
        reward = self._dense_reward()
        return self._position.copy(), reward, False, False, {"task": self.task}


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
