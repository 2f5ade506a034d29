"""Ant goal-reaching tasks (PEARL's ``AntGoalEnv``, after ProMP's): reach a goal in a disc of radius 3, on
gymnasium's ant-v5 (``docs/PROTOCOL.md#pearl-mujoco-suite``)."""
from __future__ import annotations

import numpy as np
from gymnasium.envs.mujoco.ant_v5 import AntEnv

from envs_glue.base import NUM_VALIDATION_TASKS, VALIDATION_TASK_SEED, MetaEnv
from envs_glue.mujoco_tasks import TASK_SEED, known_model_warnings_silenced
from envs_glue.protocol import ProtocolConfig
from envs_glue.spec import EnvSpec

NUM_TASKS = 180
GOAL_DISC_RADIUS = 3.0
CTRL_COST_WEIGHT = 0.1


def ant_goals(num_tasks: int, seed: int) -> np.ndarray:
    """Goals uniform over the disc of radius 3: all angles ``2 pi U``, then all radii ``3 sqrt(U)``, from one
    ``RandomState(seed)``. Shape ``(num_tasks, 2)``."""
    rng = np.random.RandomState(seed)
    angles = 2.0 * np.pi * rng.random_sample(num_tasks)
    radii = GOAL_DISC_RADIUS * np.sqrt(rng.random_sample(num_tasks))
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


class AntGoalEnv(MetaEnv, AntEnv):
    """Reward ``-|x - g_x| - |y - g_y| - 0.1 * sum(a^2) - 0.0005 * sum(clip(cfrc_ext, -1, 1)^2)`` with ``(x, y)``
    the torso's position after the step; never ends early. obs = ``qpos`` (15, the position included), ``qvel``
    (14), ``clip(cfrc_ext[1:], -1, 1)`` (78)."""

    max_episode_steps = 200
    num_train_tasks = 150
    num_test_tasks = 30

    def __init__(self, render_mode: str | None = None):
        self.task_array = np.concatenate([ant_goals(NUM_TASKS, TASK_SEED),
                                          ant_goals(NUM_VALIDATION_TASKS, VALIDATION_TASK_SEED)])
        with known_model_warnings_silenced():
            super().__init__(render_mode=render_mode, exclude_current_positions_from_observation=False,
                             terminate_when_unhealthy=False)

    def step(self, action):
        action = np.asarray(action, dtype=np.float64)
        self.do_simulation(action, self.frame_skip)
        position = self.data.body("torso").xpos[:2]
        goal_reward = -float(np.sum(np.abs(position - self.task_array[self.task_idx])))
        ctrl_cost = CTRL_COST_WEIGHT * float(np.sum(np.square(action)))
        contact_cost = float(self.contact_cost)  # ant-v5's: 0.0005 * sum(clip(cfrc_ext, -1, 1)^2), as PEARL's
        reward = goal_reward - ctrl_cost - contact_cost
        info = {"task": self.task, "goal_reward": goal_reward, "ctrl_cost": ctrl_cost, "contact_cost": contact_cost}
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), reward, False, False, info


SPEC = EnvSpec(
    "ant-goal", "incontext/AntGoal-v0", AntGoalEnv,
    # PEARL's configs/ant-goal.json over its default.py, at 20 iterations of 2000 gradient steps instead of 500 of
    # 4000 (docs/PROTOCOL.md); PEARL's own kl_lambda there is 1.0 (``--set kl_lambda=1``)
    ProtocolConfig(
        num_iterations=20, num_initial_steps=2000, num_tasks_sample=5, num_steps_prior=400, num_steps_posterior=0,
        num_extra_rl_steps_posterior=600, num_train_steps_per_itr=2000, meta_batch=10, batch_size=256,
        embedding_batch_size=256, discount=0.99, reward_scale=5.0, num_steps_per_eval=600, num_exp_traj_eval=2,
        num_evals=1),
    max_episode_steps=200, sparse_reward=False,
    known_optimum=None, known_optimum_note="no closed form",
    task_label="goal angle (rad)", report_rank=12, goal_plane=True, task_wraps_around=True, runs_by_default=False)
