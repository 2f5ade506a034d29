"""Ant forward/backward tasks (PEARL's ``AntDirEnv`` with its forward-backward task pair), on gymnasium's ant-v5
(``docs/PROTOCOL.md#pearl-mujoco-suite``)."""
from __future__ import annotations

import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv

from envs_glue.base import MetaEnv
from envs_glue.mujoco_tasks import known_model_warnings_silenced, repeated_task_list, unit_vector
from envs_glue.protocol import ProtocolConfig
from envs_glue.spec import EnvSpec

DIRECTIONS = (0.0, np.pi)  # forward (+x), backward (-x)
CTRL_COST_WEIGHT = 0.5
SURVIVE_REWARD = 1.0


class AntDirEnv(MetaEnv, AntEnv):
    """Reward ``v_xy . (cos g, sin g) + 1 - 0.5 * sum(a^2) - 0.0005 * sum(clip(cfrc_ext, -1, 1)^2)`` with ``g`` the
    task's angle and ``v_xy`` the torso's planar velocity; the episode ends when the torso leaves ``0.2 <= z <= 1``.
    obs = ``qpos[2:]`` (13), ``qvel`` (14): no contact forces, as PEARL's ant."""

    max_episode_steps = 200
    episodes_end_early = True
    num_train_tasks = 2
    num_test_tasks = 2

    def __init__(self, render_mode: str | None = None):
        self.task_array = repeated_task_list(DIRECTIONS)
        with known_model_warnings_silenced():
            super().__init__(render_mode=render_mode, include_cfrc_ext_in_observation=False)

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        direction = unit_vector(float(self.task_array[self.task_idx, 0]))
        xy_before = self.data.body("torso").xpos[:2].copy()
        self.do_simulation(action, self.frame_skip)
        xy_velocity = (self.data.body("torso").xpos[:2] - xy_before) / self.dt
        forward_reward = float(xy_velocity @ direction)
        ctrl_cost = CTRL_COST_WEIGHT * float(np.sum(np.square(action)))
        contact_cost = float(self.contact_cost)  # ant-v5's: 0.0005 * sum(clip(cfrc_ext, -1, 1)^2), as PEARL's
        reward = forward_reward + SURVIVE_REWARD - ctrl_cost - contact_cost
        info = {"task": self.task, "forward_reward": forward_reward, "ctrl_cost": ctrl_cost,
                "contact_cost": contact_cost}
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, not self.is_healthy, False, info


SPEC = EnvSpec(
    "ant-dir", "incontext/AntDir-v0", AntDirEnv,
    # PEARL's configs/ant-dir.json over its default.py, at 20 iterations instead of 500 (docs/PROTOCOL.md)
    ProtocolConfig(
        num_iterations=20, num_initial_steps=2000, num_tasks_sample=5, num_steps_prior=400, num_steps_posterior=0,
        num_extra_rl_steps_posterior=600, num_train_steps_per_itr=4000, meta_batch=4, batch_size=256,
        embedding_batch_size=256, discount=0.99, reward_scale=5.0, num_steps_per_eval=600, num_exp_traj_eval=2,
        num_evals=4),
    max_episode_steps=200, sparse_reward=False,
    known_optimum=None, known_optimum_note="no closed form",
    task_label="direction angle (rad)", report_rank=11, task_wraps_around=True, runs_by_default=False)
