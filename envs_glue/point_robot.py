"""Point-robot navigation tasks of the reference benchmark (PEARL's ``PointEnv``).

The environment acts in its native bounds ``[-0.1, 0.1]^2``; the agent-facing ``[-1, 1]^2`` scaling
lives in :class:`envs_glue.wrappers.ScaledActionWrapper` so the dynamics here read as in the reference.
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

from envs_glue.base import NUM_VALIDATION_TASKS, VALIDATION_TASK_SEED, MetaEnv
from envs_glue.protocol import ProtocolConfig
from envs_glue.spec import EnvSpec

TASK_SEED = 1337
NUM_TASKS = 50


def point_robot_goals(num_tasks: int = NUM_TASKS, seed: int = TASK_SEED) -> np.ndarray:
    """Goals of ``point-robot``: for each goal draw x then y from ``uniform(-1, 1)``. Shape ``(num_tasks, 2)``."""
    rng = np.random.RandomState(seed)
    return np.array([[rng.uniform(-1.0, 1.0), rng.uniform(-1.0, 1.0)] for _ in range(num_tasks)])


class PointRobotEnv(MetaEnv):
    """State = position; reward = ``-||position - goal||`` after the step; never terminates."""

    metadata = {"render_modes": []}
    max_episode_steps = 20
    num_train_tasks = 40
    num_test_tasks = 10

    def __init__(self, render_mode: str | None = None):
        self.task_array = self.make_goals()
        self.observation_space = spaces.Box(low=-np.inf, high=np.inf, shape=(2,), dtype=np.float64)
        self.action_space = spaces.Box(low=-0.1, high=0.1, shape=(2,), dtype=np.float32)
        self.render_mode = render_mode
        self._position = np.zeros(2)
        self.reset_task(0)

    @staticmethod
    def make_goals() -> np.ndarray:
        """Train and test goals, then the validation goals: ``(50 + 10, 2)``."""
        return np.concatenate([point_robot_goals(), point_robot_goals(NUM_VALIDATION_TASKS, VALIDATION_TASK_SEED)])

    def _initial_position(self) -> np.ndarray:
        return self.np_random.uniform(-1.0, 1.0, size=2)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._position = self._initial_position()
        return self._position.copy(), {"task": self.task}

    def _dense_reward(self) -> float:
        return -float(np.linalg.norm(self._position - self.task_array[self.task_idx]))

    def step(self, action):
        self._position = self._position + np.asarray(action, dtype=np.float64)
        reward = self._dense_reward()
        return self._position.copy(), reward, False, False, {"task": self.task}


SPEC = EnvSpec(
    "point-robot", "incontext/PointRobot-v0", PointRobotEnv,
    ProtocolConfig(
        num_iterations=20, num_initial_steps=200, num_tasks_sample=5, num_steps_prior=200, num_steps_posterior=0,
        num_extra_rl_steps_posterior=200, num_train_steps_per_itr=1000, meta_batch=16, batch_size=256,
        embedding_batch_size=64, discount=0.99, reward_scale=100.0, num_steps_per_eval=60, num_exp_traj_eval=1,
        num_evals=2),
    max_episode_steps=20, sparse_reward=False,
    known_optimum=-4.60,
    known_optimum_note="known-goal optimum -4.60 (random starts; a 10-task mean has std ≈ 1.2 from the "
                       "starts alone); standing still scores -19.67, heading for the origin -14.08",
    task_label="goal angle (rad)", report_rank=0, goal_plane=True, task_wraps_around=True)
