"""The task interface every meta-RL environment of the project implements."""
from __future__ import annotations

import gymnasium as gym
import numpy as np


VALIDATION_TASK_SEED = 4242  # every environment draws its validation list with its own RandomState(4242)
NUM_VALIDATION_TASKS = 10


class MetaEnv(gym.Env):
    """A gymnasium environment holding a fixed task list, ``task_array``, one row of parameters per task (a goal
    position, a goal velocity, a model's scales), in three parts:

    - ``train_task_ids``: the first ``num_train_tasks`` rows, the only tasks meta-training sees;
    - ``test_task_ids``: the ``num_test_tasks`` held-out rows after them, which tables report;
    - ``validation_task_ids``: ``num_validation_tasks`` more rows from the training distribution, drawn with their
      own seed and appended last, on which settings are chosen (``docs/PROTOCOL.md#selection-rule``).

    An environment sets ``task_array`` in its ``__init__``, reads ``task_array[task_idx]`` where its reward or
    dynamics depend on the task, and says in ``apply_task`` what else a task switch changes (nothing, where only the
    reward reads the task). ``reset_task(i)`` switches the task; the next ``reset()`` starts an episode in it.
    """

    max_episode_steps: int
    # ``step`` can end an episode before ``max_episode_steps`` (a body that falls): a meta-test trial then runs more
    # episodes (``docs/PROTOCOL.md#meta-test-evaluation``) and holds up to ``max_episode_steps - 1`` more transitions
    episodes_end_early: bool = False
    num_train_tasks: int
    num_test_tasks: int
    num_validation_tasks: int = NUM_VALIDATION_TASKS
    task_array: np.ndarray
    task_idx: int = 0

    @property
    def tasks(self) -> np.ndarray:
        return self.task_array

    @property
    def task(self) -> np.ndarray:
        """The current task's row, a copy."""
        return self.task_array[self.task_idx].copy()

    def reset_task(self, task_idx: int) -> None:
        self.task_idx = int(task_idx)
        self.apply_task()

    def apply_task(self) -> None:
        """Make the current task take effect beyond the reward (e.g. write a model's arrays)."""

    def _get_reset_info(self) -> dict:
        """The info of ``reset()`` in gymnasium's MuJoCo environments, which build it here."""
        return {"task": self.task}

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
