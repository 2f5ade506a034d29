"""What the Meta-World environments share (``docs/PROTOCOL.md#meta-world-ml1`` and ``#meta-world-ml10``):
Meta-World's Sawyer-arm environments as a :class:`MetaEnv` (:class:`MetaWorldEnv`), their tasks set with
``set_task``, their spec and benchmark tier; and ML1, one manipulation task whose goal and object positions vary
between tasks (``metaworld.ML1``). Not an environment itself (no ``SPEC``): ``ml1_reach.py``, ``ml1_push.py``,
``ml1_pick_place.py`` and ``ml10.py`` are.

An optional extra: Meta-World pins ``mujoco==3.3.0`` while this project runs ``mujoco`` 4, so it lives in its own
virtual environment (``requirements-metaworld.txt``). These modules import without it, so discovery always lists
the Meta-World environments; building one where ``metaworld`` does not import raises :class:`OptionalExtraMissingError`,
which ``experiments.run`` prints as one line (exit 2).

Rewards and success are Meta-World's own; episodes are 200 steps instead of its 500 (why: the protocol page).
"""
from __future__ import annotations

import functools
import pickle

import numpy as np

from envs_glue.base import NUM_VALIDATION_TASKS, VALIDATION_TASK_SEED, MetaEnv
from envs_glue.protocol import ConfigError, ProtocolConfig
from envs_glue.spec import EnvSpec

METAWORLD_SEED = 42      # ML1(name, seed=42) draws train goals with 42, test goals with 43; ML10(seed=42) both with 42
EPISODE_LENGTH = 200     # Meta-World's max_path_length is 500; 200 is 0.4 of it (docs/PROTOCOL.md#meta-world-ml1)
INSTALL_HINT = ("Meta-World is an optional extra: install it in a separate virtual environment with "
                "`pip install -r requirements.txt -r requirements-metaworld.txt` (it pins mujoco==3.3.0, this "
                "project's main environment runs mujoco 4)")


class OptionalExtraMissingError(ConfigError):
    """An environment of an optional extra was asked for where the extra is not installed."""


def import_metaworld():
    """The ``metaworld`` package, or one :class:`OptionalExtraMissingError` saying how to install it."""
    try:
        import metaworld
    except ImportError as error:
        raise OptionalExtraMissingError(f"{INSTALL_HINT} ({type(error).__name__}: {error})") from None
    return metaworld


def rand_vec(task) -> np.ndarray:
    """A Meta-World task's random reset vector: the object's and the goal's positions (3 or 6 numbers by task)."""
    return pickle.loads(task.data)["rand_vec"]


def check_distinct(rows: np.ndarray, what: str) -> None:
    """Refuse task lists in which a task repeats another (a validation or test goal equal to a training one)."""
    if len(np.unique(rows, axis=0)) != len(rows):
        raise RuntimeError(f"Meta-World's {what} task lists overlap; their seeds must give distinct goals")


@functools.lru_cache(maxsize=None)
def ml1_task_lists(env_name: str) -> tuple[type, tuple, np.ndarray]:
    """``(Meta-World's environment class, its tasks, their positions)`` for ``env_name`` (e.g. ``"reach-v3"``).

    Tasks, in the project's order: ``ML1(env_name, seed=METAWORLD_SEED)``'s 50 train tasks, then its 50 test tasks,
    then the first 10 train tasks of ``ML1(env_name, seed=VALIDATION_TASK_SEED)`` as validation tasks: the same
    distribution as the train tasks, drawn by Meta-World's own sampler with the project's validation seed.
    Meta-World draws them under ``np.random.seed`` and restores numpy's global state afterwards. Positions: one row
    per task, Meta-World's ``rand_vec`` with the goal first, ``[goal x, y, z, object x, y, z]``. Cached: building an
    ML1 benchmark resets the environment 100 times (several seconds).
    """
    metaworld = import_metaworld()
    benchmark = metaworld.ML1(env_name, seed=METAWORLD_SEED)
    validation = metaworld.ML1(env_name, seed=VALIDATION_TASK_SEED).train_tasks[:NUM_VALIDATION_TASKS]
    tasks = (*benchmark.train_tasks, *benchmark.test_tasks, *validation)
    rand_vecs = np.array([rand_vec(task) for task in tasks], dtype=np.float64)
    check_distinct(rand_vecs, env_name)
    positions = np.concatenate([rand_vecs[:, 3:6], rand_vecs[:, 0:3]], axis=1)
    return benchmark.train_classes[env_name], tasks, positions


class MetaWorldEnv(MetaEnv):
    """A Meta-World environment as a :class:`MetaEnv`: ``sim`` is Meta-World's environment of the current task, its
    task set by ``set_task`` in ``apply_task``, the goal hidden from the observation (the ML benchmarks are partially
    observable: the last 3 of the 39 observation entries are zero). A task fixes the goal and the object's start;
    every reset starts the same within a task. ``info["success"]`` is Meta-World's success flag; the reward is its
    own (0 to 10 per step)."""

    sim: object
    max_episode_steps = EPISODE_LENGTH
    metadata = {"render_modes": []}

    @staticmethod
    def refuse_rendering(render_mode: str | None) -> None:
        if render_mode is not None:
            raise ValueError(f"Meta-World environments here do not render (render_mode={render_mode!r})")

    @classmethod
    def with_episode_length(cls, sim):
        """Meta-World's environment with its own truncation at this project's episode length."""
        sim.max_path_length = cls.max_episode_steps
        return sim

    def start_at_the_first_task(self) -> None:
        """Set task 0, then take Meta-World's spaces, which hold once a task is set (the goal's entries 0)."""
        self.reset_task(0)
        self.observation_space = self.sim.sawyer_observation_space
        self.action_space = self.sim.action_space

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)  # a task's start is fixed (Meta-World freezes its positions): no draw here
        obs, _ = self.sim.reset()
        return obs, {"task": self.task}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.sim.step(np.asarray(action, dtype=np.float32))
        info = {**info, "success": bool(info["success"]), "task": self.task}
        return obs, float(reward), bool(terminated), bool(truncated), info

    def close(self) -> None:
        self.sim.close()


class ML1Env(MetaWorldEnv):
    """One Meta-World ML1 task family: one Meta-World environment, 50 train and 50 test goals."""

    metaworld_name: str      # Meta-World's environment name, e.g. "reach-v3"
    num_train_tasks = 50
    num_test_tasks = 50

    def __init__(self, render_mode: str | None = None):
        self.refuse_rendering(render_mode)
        env_class, self._metaworld_tasks, positions = ml1_task_lists(self.metaworld_name)
        self.task_array = positions.copy()  # the cached lists are shared by every instance in the process
        self.sim = self.with_episode_length(env_class())
        self.start_at_the_first_task()

    def apply_task(self) -> None:
        self.sim.set_task(self._metaworld_tasks[self.task_idx])


def metaworld_protocol() -> ProtocolConfig:
    """The benchmark tier of every Meta-World environment: garage's PEARL ML1 example
    (``pearl_metaworld_ml1_push.py``: 1000 epochs of 4000 gradient steps on meta-batches of 16 x 256, 15 tasks
    sampled per epoch with 750 prior and 750 extra-RL-posterior steps, 4000 initial steps per task, embedding batch
    64, reward scale 10), at 20 iterations of 1000 gradient steps and 5 tasks of 400 + 600 steps, 1000 initial steps
    per task: 0.5 % of its gradient steps and 0.44 % of its environment steps after the initial collection
    (``docs/PROTOCOL.md#meta-world-ml1``; its ML10 example has the same settings)."""
    return ProtocolConfig(
        num_iterations=20, num_initial_steps=1000, num_tasks_sample=5, num_steps_prior=400, num_steps_posterior=0,
        num_extra_rl_steps_posterior=600, num_train_steps_per_itr=1000, meta_batch=16, batch_size=256,
        embedding_batch_size=64, discount=0.99, reward_scale=10.0, num_steps_per_eval=600, num_exp_traj_eval=2,
        num_evals=1)


def metaworld_spec(name: str, gym_id: str, env_class: type[MetaWorldEnv], report_rank: int,
                   task_label: str = "goal x") -> EnvSpec:
    """The spec the Meta-World environments share; they differ in their tasks only."""
    return EnvSpec(name, gym_id, env_class, metaworld_protocol(), max_episode_steps=EPISODE_LENGTH,
                   sparse_reward=False, known_optimum=None,
                   known_optimum_note="no closed form (Meta-World pays at most 10 per step)", task_label=task_label,
                   report_rank=report_rank, runs_by_default=False, reports_success=True)
