"""The task interface every meta-RL environment of the project implements."""
from __future__ import annotations

import gymnasium as gym
import numpy as np


class MetaEnv(gym.Env):
    """A gymnasium environment holding a fixed task list.

    ``tasks[:num_train_tasks]`` are the meta-training tasks, ``tasks[-num_test_tasks:]`` the held-out ones.
    ``reset_task(i)`` switches the task; the next ``reset()`` starts an episode in it.
    """

    max_episode_steps: int
    num_train_tasks: int
    num_test_tasks: int

    @property
    def tasks(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def task(self) -> np.ndarray:
        """The current task's parameters (goal position or goal velocity) as an array."""
        raise NotImplementedError

    def reset_task(self, task_idx: int) -> None:
        raise NotImplementedError

    @property
    def train_task_ids(self) -> list[int]:
        return list(range(self.num_train_tasks))

    @property
    def test_task_ids(self) -> list[int]:
        n = len(self.tasks)
        return list(range(n - self.num_test_tasks, n))
