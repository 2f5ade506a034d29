"""Meta-World's ML10 (``docs/PROTOCOL.md#meta-world-ml10``), an optional extra: this module imports without
``metaworld``; building the environment needs it (``requirements-metaworld.txt``).

Ten manipulation tasks to meta-train on and five others, never seen in training, to meta-test on: the agent must
tell from a few transitions which task it is in (and, within it, where the goal is), and act on a task it was
never trained on. One Meta-World simulator per task family, switched between by ``reset_task``.
"""
from __future__ import annotations

import functools

import numpy as np

from envs_glue.base import VALIDATION_TASK_SEED
from envs_glue.metaworld_ml1 import (METAWORLD_SEED, MetaWorldEnv, check_distinct, import_metaworld, metaworld_spec,
                                     rand_vec)

TRAIN_GOALS_PER_FAMILY = 5       # of Meta-World's 50 per family: 50 training tasks, as on ML1
TEST_GOALS_PER_FAMILY = 10       # 50 test tasks, as on ML1
VALIDATION_GOALS_PER_FAMILY = 1  # 10 validation tasks, one per training family, from the validation seed
TASK_WIDTH = 7                   # a task row: the family's index, then its rand_vec (3 or 6 numbers), 0-padded


@functools.lru_cache(maxsize=None)
def ml10_task_lists() -> tuple[dict[str, type], tuple, np.ndarray]:
    """``(Meta-World's environment class per family, the tasks, their rows)``, training families first.

    Tasks, in the project's order: the first ``TRAIN_GOALS_PER_FAMILY`` goals of each training family in
    ``ML10(seed=METAWORLD_SEED)``'s train tasks, the first ``TEST_GOALS_PER_FAMILY`` of each held-out family in its
    test tasks, then the first ``VALIDATION_GOALS_PER_FAMILY`` of each training family in
    ``ML10(seed=VALIDATION_TASK_SEED)``'s train tasks: the training families' distribution, other goals. Cached:
    building ML10 resets each of its 15 environments 50 times, and it is built twice (about 35-40 s of a busy core).
    """
    metaworld = import_metaworld()
    benchmark = metaworld.ML10(seed=METAWORLD_SEED)
    validation_benchmark = metaworld.ML10(seed=VALIDATION_TASK_SEED)
    classes = {**benchmark.train_classes, **benchmark.test_classes}
    family_index = {family: index for index, family in enumerate(classes)}

    def first_goals_per_family(tasks, families, count: int) -> list:
        return [task for family in families for task in [t for t in tasks if t.env_name == family][:count]]

    tasks = (*first_goals_per_family(benchmark.train_tasks, benchmark.train_classes, TRAIN_GOALS_PER_FAMILY),
             *first_goals_per_family(benchmark.test_tasks, benchmark.test_classes, TEST_GOALS_PER_FAMILY),
             *first_goals_per_family(validation_benchmark.train_tasks, benchmark.train_classes,
                                     VALIDATION_GOALS_PER_FAMILY))
    rows = np.zeros((len(tasks), TASK_WIDTH))
    for row, task in zip(rows, tasks):
        goal = rand_vec(task)
        row[0], row[1:1 + len(goal)] = family_index[task.env_name], goal
    check_distinct(rows, "ML10")
    return classes, tasks, rows


class ML10Env(MetaWorldEnv):
    """ML10: 10 training families x 5 goals, 5 held-out families x 10 goals, 10 validation goals (one per training
    family). ``tasks[:, 0]`` is the family (0-9 training, 10-14 held out, in Meta-World's order)."""

    num_train_tasks = 10 * TRAIN_GOALS_PER_FAMILY
    num_test_tasks = 5 * TEST_GOALS_PER_FAMILY
    num_validation_tasks = 10 * VALIDATION_GOALS_PER_FAMILY

    def __init__(self, render_mode: str | None = None):
        self.refuse_rendering(render_mode)
        classes, self._metaworld_tasks, rows = ml10_task_lists()
        self.task_array = rows.copy()
        self.families = list(classes)
        self._sims = {family: self.with_episode_length(env_class()) for family, env_class in classes.items()}
        self.start_at_the_first_task()  # every family's spaces are the same: the first one's stand for all

    def apply_task(self) -> None:
        task = self._metaworld_tasks[self.task_idx]
        self.sim = self._sims[task.env_name]
        self.sim.set_task(task)

    def close(self) -> None:
        for sim in self._sims.values():
            sim.close()


SPEC = metaworld_spec("ml10", "incontext/ML10-v0", ML10Env, report_rank=23, task_label="task family")
