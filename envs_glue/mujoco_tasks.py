"""What the MuJoCo environments share: quiet model compilation, direction tasks, and
PEARL's randomised physics (``docs/PROTOCOL.md#pearl-mujoco-suite``). Not an environment itself (no ``SPEC``)."""
from __future__ import annotations

import contextlib
import warnings

import mujoco
import numpy as np

from envs_glue.base import NUM_VALIDATION_TASKS, VALIDATION_TASK_SEED, MetaEnv
from envs_glue.protocol import ProtocolConfig
from envs_glue.spec import EnvSpec

TASK_SEED = 1337

# gymnasium's model files set the total mass with a compiler attribute MuJoCo 3.3+ deprecates; the model it compiles
# is unchanged, so this one message is dropped instead of printed (and logged to ./MUJOCO_LOG.TXT) per env
KNOWN_MODEL_WARNINGS = ("compiler attribute 'settotalmass' is deprecated",)


@contextlib.contextmanager
def known_model_warnings_silenced():
    """While the model compiles: drop ``KNOWN_MODEL_WARNINGS``; anything else MuJoCo warns becomes a Python warning."""
    previous = mujoco.get_mju_user_warning()

    def on_warning(message: str) -> None:
        if not message.startswith(KNOWN_MODEL_WARNINGS):
            warnings.warn(f"MuJoCo: {message}", RuntimeWarning, stacklevel=2)

    mujoco.set_mju_user_warning(on_warning)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def repeated_task_list(values: tuple[float, ...]) -> np.ndarray:
    """PEARL's few-task families (cheetah-dir, ant-dir), as a column: the same tasks are trained on and tested on, so
    ``values`` as training tasks, ``values`` again as test tasks, then ``NUM_VALIDATION_TASKS`` validation tasks drawn
    among ``values`` by ``RandomState(VALIDATION_TASK_SEED)``; with so few tasks, none can be held out."""
    picks = np.random.RandomState(VALIDATION_TASK_SEED).randint(len(values), size=NUM_VALIDATION_TASKS)
    return np.array([*values, *values, *np.asarray(values, dtype=np.float64)[picks]], dtype=np.float64)[:, None]


def random_directions(num_tasks: int, seed: int) -> np.ndarray:
    """Walking directions (angles in radians), ``RandomState(seed).uniform(0, 2 pi)``, as a column."""
    return np.random.RandomState(seed).uniform(0.0, 2.0 * np.pi, size=num_tasks)[:, None]


def random_directions_with_validation(num_tasks: int) -> np.ndarray:
    """Train and test directions from ``TASK_SEED``, then the validation directions from ``VALIDATION_TASK_SEED``."""
    return np.concatenate([random_directions(num_tasks, TASK_SEED),
                           random_directions(NUM_VALIDATION_TASKS, VALIDATION_TASK_SEED)])


def unit_vector(angle: float) -> np.ndarray:
    return np.array([np.cos(angle), np.sin(angle)])


# ---------------------------------------------------------------------- randomised physics (walker, hopper)
LOG_SCALE_LIMIT = 3.0
# model array -> the base b of its scale b**u, u ~ uniform(-LOG_SCALE_LIMIT, LOG_SCALE_LIMIT), drawn per element in
# this order for every task (PEARL's rand_param_envs; the joint damping's base is 1.3, every other one 1.5)
PHYSICS_SCALE_BASES = {"body_mass": 1.5, "body_inertia": 1.5, "dof_damping": 1.3, "geom_friction": 1.5}


def physics_exponents(model: mujoco.MjModel, num_tasks: int, seed: int) -> np.ndarray:
    """``(num_tasks, n)``: for each task, the exponents ``u`` of every element of every array of
    ``PHYSICS_SCALE_BASES``, drawn from one ``RandomState(seed)`` array by array, task after task."""
    rng = np.random.RandomState(seed)
    return np.array([np.concatenate([rng.uniform(-LOG_SCALE_LIMIT, LOG_SCALE_LIMIT, size=getattr(model, name).shape)
                                     .ravel() for name in PHYSICS_SCALE_BASES]) for _ in range(num_tasks)])


class RandomisedPhysicsEnv(MetaEnv):
    """Locomotion in a model whose body masses, inertias, joint damping and geom friction are each scaled by
    ``base ** u`` per element (PEARL's walker- and hopper-rand-params); the task is the model, the reward is fixed:
    ``forward velocity + 1 - 0.001 * sum(a^2)``, the episode ends when the body leaves its healthy range.

    A task row is ``[log_1.5 of the total body mass ratio, u...]``: the first entry is the scalar plots colour by, the
    rest are the exponents in the order of ``PHYSICS_SCALE_BASES``.
    """

    max_episode_steps = 200
    episodes_end_early = True
    num_train_tasks = 40
    num_test_tasks = 10
    HEALTHY_REWARD = 1.0
    CTRL_COST_WEIGHT = 1e-3

    def __init__(self, render_mode: str | None = None):
        with known_model_warnings_silenced():
            super().__init__(render_mode=render_mode)
        self.nominal_physics = {name: getattr(self.model, name).copy() for name in PHYSICS_SCALE_BASES}
        num_tasks = self.num_train_tasks + self.num_test_tasks
        exponents = np.concatenate([physics_exponents(self.model, num_tasks, TASK_SEED),
                                    physics_exponents(self.model, NUM_VALIDATION_TASKS, VALIDATION_TASK_SEED)])
        total_mass = np.array([self.scaled_physics(row)["body_mass"].sum() for row in exponents])
        mass_scale = np.log(total_mass / self.nominal_physics["body_mass"].sum()) / np.log(1.5)
        self.task_array = np.concatenate([mass_scale[:, None], exponents], axis=1)
        self.reset_task(0)

    def scaled_physics(self, exponents: np.ndarray) -> dict[str, np.ndarray]:
        """The model arrays of the task with these exponents (the order of ``PHYSICS_SCALE_BASES``)."""
        scaled, start = {}, 0
        for name, base in PHYSICS_SCALE_BASES.items():
            nominal = self.nominal_physics[name]
            scaled[name] = nominal * base ** exponents[start:start + nominal.size].reshape(nominal.shape)
            start += nominal.size
        return scaled

    def apply_task(self) -> None:
        for name, values in self.scaled_physics(self.task_array[self.task_idx, 1:]).items():
            getattr(self.model, name)[:] = values

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        x_before = float(self.data.qpos[0])
        self.do_simulation(action, self.frame_skip)
        forward_velocity = (float(self.data.qpos[0]) - x_before) / self.dt
        ctrl_cost = self.CTRL_COST_WEIGHT * float(np.sum(np.square(action)))
        reward = forward_velocity + self.HEALTHY_REWARD - ctrl_cost
        terminated = not self.is_healthy
        info = {"task": self.task, "forward_velocity": forward_velocity, "ctrl_cost": ctrl_cost}
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, terminated, False, info


def randomised_physics_spec(name: str, gym_id: str, env_class: type[RandomisedPhysicsEnv],
                            report_rank: int) -> EnvSpec:
    """The spec walker- and hopper-rand-params share: PEARL's configs/walker_rand_params.json and
    hopper_rand_params.json (the same settings) over its default.py, at 20 iterations of 2000 gradient steps instead
    of 500 of 4000 (docs/PROTOCOL.md#pearl-mujoco-suite)."""
    protocol = ProtocolConfig(
        num_iterations=20, num_initial_steps=2000, num_tasks_sample=5, num_steps_prior=400, num_steps_posterior=0,
        num_extra_rl_steps_posterior=600, num_train_steps_per_itr=2000, meta_batch=10, batch_size=256,
        embedding_batch_size=100, discount=0.99, reward_scale=5.0, num_steps_per_eval=600, num_exp_traj_eval=2,
        num_evals=2, use_next_obs_in_context=True)
    return EnvSpec(name, gym_id, env_class, protocol, max_episode_steps=200, sparse_reward=False, known_optimum=None,
                   known_optimum_note="no closed form", task_label="log1.5 of the total body mass scale",
                   report_rank=report_rank, runs_by_default=False)
