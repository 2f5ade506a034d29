"""The task interface every meta-RL environment of the project implements."""
from __future__ import annotations

import gymnasium as gym
import numpy as np


VALIDATION_TASK_SEED = 4242  # every environment draws its validation list with its own RandomState(4242)
NUM_VALIDATION_TASKS = 10


class MetaEnv(gym.Env):
    """A gymnasium environment holding a fixed task list, in three parts:

    - ``train_task_ids``: the first ``num_train_tasks`` tasks, the only ones meta-training sees;
    - ``test_task_ids``: the ``num_test_tasks`` held-out tasks after them, which tables report;
    - ``validation_task_ids``: ``num_validation_tasks`` more tasks from the training distribution, drawn with their
      own seed and appended last, on which settings are chosen (``docs/PROTOCOL.md#selection-rule``).

    ``reset_task(i)`` switches the task; the next ``reset()`` starts an episode in it.
    """

    max_episode_steps: int
    num_train_tasks: int
    num_test_tasks: int
    num_validation_tasks: int = NUM_VALIDATION_TASKS

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
        return list(range(self.num_train_tasks, self.num_train_tasks + self.num_test_tasks))

    @property
    def validation_task_ids(self) -> list[int]:
        start = self.num_train_tasks + self.num_test_tasks
        return list(range(start, start + self.num_validation_tasks))

    def task_ids(self, split: str) -> list[int]:
        """The task ids of ``split``: ``train``, ``test`` or ``validation``."""
        if split not in TASK_SPLITS:
            raise ValueError(f"unknown task split {split!r}; choose one of {list(TASK_SPLITS)}")
        return getattr(self, f"{split}_task_ids")


TASK_SPLITS = ("train", "test", "validation")
