"""Humanoid walking-direction tasks (PEARL's ``HumanoidDirEnv``), on gymnasium's humanoid-v5
(``docs/PROTOCOL.md#pearl-mujoco-suite``)."""
from __future__ import annotations

import numpy as np
from gymnasium.envs.mujoco.humanoid_v5 import HumanoidEnv, mass_center

from envs_glue.base import MetaEnv
from envs_glue.mujoco_tasks import (known_model_warnings_silenced, random_directions_with_validation,
                                    unit_vector)
from envs_glue.protocol import ProtocolConfig
from envs_glue.spec import EnvSpec

NUM_TASKS = 130
VELOCITY_WEIGHT = 0.25   # per unit of displacement over one physics timestep, i.e. 1.25 per m/s at frame skip 5
ALIVE_BONUS = 5.0
CTRL_COST_WEIGHT = 0.1
IMPACT_COST_WEIGHT = 5e-7
MAX_IMPACT_COST = 10.0


class HumanoidDirEnv(MetaEnv, HumanoidEnv):
    """Reward ``0.25 * (dxy . (cos g, sin g)) / timestep + 5 - 0.1 * sum(a^2) - min(5e-7 * sum(cfrc_ext^2), 10)``
    with ``dxy`` the planar displacement of the centre of mass over the step and ``g`` the task's angle; the episode
    ends when the torso leaves ``1 < z < 2``. obs: humanoid-v5's (348)."""

    max_episode_steps = 200
    episodes_end_early = True
    num_train_tasks = 100
    num_test_tasks = 30

    def __init__(self, render_mode: str | None = None):
        self.task_array = random_directions_with_validation(NUM_TASKS)
        with known_model_warnings_silenced():
            super().__init__(render_mode=render_mode)

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        direction = unit_vector(float(self.task_array[self.task_idx, 0]))
        before = mass_center(self.model, self.data)
        self.do_simulation(action, self.frame_skip)
        displacement = mass_center(self.model, self.data) - before
        forward_reward = VELOCITY_WEIGHT * float(displacement @ direction) / self.model.opt.timestep
        ctrl_cost = CTRL_COST_WEIGHT * float(np.sum(np.square(action)))
        impact_cost = min(IMPACT_COST_WEIGHT * float(np.sum(np.square(self.data.cfrc_ext))), MAX_IMPACT_COST)
        reward = forward_reward + ALIVE_BONUS - ctrl_cost - impact_cost
        info = {"task": self.task, "forward_reward": forward_reward, "ctrl_cost": ctrl_cost,
                "impact_cost": impact_cost}
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, not self.is_healthy, False, info


SPEC = EnvSpec(
    "humanoid-dir", "incontext/HumanoidDir-v0", HumanoidDirEnv,
    # PEARL's configs/humanoid-dir.json over its default.py, at 20 iterations of 1000 gradient steps instead of 500
    # of 4000 (docs/PROTOCOL.md)
    ProtocolConfig(
        num_iterations=20, num_initial_steps=2000, num_tasks_sample=5, num_steps_prior=400, num_steps_posterior=0,
        num_extra_rl_steps_posterior=600, num_train_steps_per_itr=1000, meta_batch=16, batch_size=256,
        embedding_batch_size=256, discount=0.99, reward_scale=5.0, num_steps_per_eval=600, num_exp_traj_eval=2,
        num_evals=1),
    max_episode_steps=200, sparse_reward=False,
    known_optimum=None, known_optimum_note="no closed form",
    task_label="direction angle (rad)", report_rank=13, task_wraps_around=True, runs_by_default=False)
