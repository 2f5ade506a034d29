"""Half-cheetah target-velocity tasks of the reference benchmark (PEARL's ``HalfCheetahVelEnv``).

Built on gymnasium's MuJoCo half-cheetah (the standard ``half_cheetah.xml``, frame skip 5, ``dt = 0.05``,
the standard reset noise) through the official ``mujoco`` bindings.
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv

from envs_glue.base import NUM_VALIDATION_TASKS, VALIDATION_TASK_SEED, MetaEnv
from envs_glue.mujoco_tasks import known_model_warnings_silenced
from envs_glue.protocol import ProtocolConfig
from envs_glue.spec import EnvSpec

TASK_SEED = 1337
NUM_TASKS = 40
CTRL_COST_WEIGHT = 0.05


def cheetah_velocities(num_tasks: int = NUM_TASKS, seed: int = TASK_SEED) -> np.ndarray:
    """Goal velocities: ``RandomState(1337).uniform(0, 3, size=40)`` (validation: ``RandomState(4242)``, 10)."""
    return np.random.RandomState(seed).uniform(0.0, 3.0, size=(num_tasks,))


class HalfCheetahTaskEnv(MetaEnv, HalfCheetahEnv):
    """PEARL's half-cheetah: obs = ``qpos[1:]`` (8), ``qvel`` (9), torso ``xpos`` (3); reward
    ``forward_reward(v_x) - 0.05 * sum(a^2)``, where a subclass says what the forward reward of the task is."""

    max_episode_steps = 200

    def __init__(self, render_mode: str | None = None):
        with known_model_warnings_silenced():
            super().__init__(render_mode=render_mode)
        # The reference observation keeps the torso position, so 8 + 9 + 3 = 20 dims.
        self.observation_space = spaces.Box(low=-np.inf, high=np.inf, shape=(20,), dtype=np.float64)

    def forward_reward(self, forward_velocity: float) -> float:
        raise NotImplementedError

    def _get_obs(self) -> np.ndarray:
        # ``get_body_com("torso")`` of mujoco-py was the body frame origin, i.e. ``data.xpos``.
        torso_position = self.data.body("torso").xpos
        return np.concatenate([self.data.qpos.flat[1:], self.data.qvel.flat, torso_position]).astype(np.float64)

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        x_before = float(self.data.qpos[0])
        self.do_simulation(action, self.frame_skip)
        x_after = float(self.data.qpos[0])
        forward_velocity = (x_after - x_before) / self.dt
        forward_reward = self.forward_reward(forward_velocity)
        ctrl_cost = CTRL_COST_WEIGHT * float(np.sum(np.square(action)))
        reward = forward_reward - ctrl_cost
        info = {"task": self.task, "forward_velocity": forward_velocity, "forward_reward": forward_reward,
                "ctrl_cost": ctrl_cost}
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, False, False, info


class CheetahVelEnv(HalfCheetahTaskEnv):
    """Reward ``-|v_x - v_goal| - 0.05 * sum(a^2)``; obs = ``qpos[1:]`` (8), ``qvel`` (9), torso ``xpos`` (3)."""

    num_train_tasks = 30
    num_test_tasks = 10

    def __init__(self, render_mode: str | None = None):
        self.task_array = np.concatenate([cheetah_velocities(),
                                          cheetah_velocities(NUM_VALIDATION_TASKS, VALIDATION_TASK_SEED)])[:, None]
        super().__init__(render_mode=render_mode)

    def forward_reward(self, forward_velocity: float) -> float:
        return -abs(forward_velocity - float(self.task_array[self.task_idx, 0]))


SPEC = EnvSpec(
    "cheetah-vel", "incontext/CheetahVel-v0", CheetahVelEnv,
    ProtocolConfig(
        num_iterations=20, num_initial_steps=2000, num_tasks_sample=5, num_steps_prior=400, num_steps_posterior=0,
        num_extra_rl_steps_posterior=600, num_train_steps_per_itr=2000, meta_batch=16, batch_size=256,
        embedding_batch_size=100, discount=0.99, reward_scale=5.0, num_steps_per_eval=600, num_exp_traj_eval=2,
        num_evals=1),
    max_episode_steps=200, sparse_reward=False,
    known_optimum=None,
    known_optimum_note="no closed form; open-loop gaits found by search reach ≈ -31, and the optimum is "
                       "no higher than ≈ -5",
    task_label="goal velocity", report_rank=2)
