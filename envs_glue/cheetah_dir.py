"""Half-cheetah forward/backward tasks (PEARL's ``HalfCheetahDirEnv``, after MAML's): the cheetah of cheetah-vel,
rewarded for its velocity in the task's direction (``docs/PROTOCOL.md#pearl-mujoco-suite``)."""
from __future__ import annotations

from envs_glue.cheetah_vel import HalfCheetahTaskEnv
from envs_glue.mujoco_tasks import repeated_task_list
from envs_glue.protocol import ProtocolConfig
from envs_glue.spec import EnvSpec

DIRECTIONS = (-1.0, 1.0)  # backward, forward


class CheetahDirEnv(HalfCheetahTaskEnv):
    """Reward ``d * v_x - 0.05 * sum(a^2)`` with ``d`` the task's direction (+1 forward, -1 backward); obs as
    cheetah-vel's (20). Train and test tasks are the same two directions, as in PEARL."""

    num_train_tasks = 2
    num_test_tasks = 2

    def __init__(self, render_mode: str | None = None):
        self.task_array = repeated_task_list(DIRECTIONS)  # (2 + 2 + 10, 1): train, test, validation
        super().__init__(render_mode=render_mode)

    def forward_reward(self, forward_velocity: float) -> float:
        return float(self.task_array[self.task_idx, 0]) * forward_velocity


SPEC = EnvSpec(
    "cheetah-dir", "incontext/CheetahDir-v0", CheetahDirEnv,
    # PEARL's configs/cheetah-dir.json over its default.py, at 20 iterations instead of 500 (docs/PROTOCOL.md)
    ProtocolConfig(
        num_iterations=20, num_initial_steps=2000, num_tasks_sample=5, num_steps_prior=1000, num_steps_posterior=0,
        num_extra_rl_steps_posterior=1000, num_train_steps_per_itr=2000, meta_batch=4, batch_size=256,
        embedding_batch_size=256, discount=0.99, reward_scale=5.0, num_steps_per_eval=600, num_exp_traj_eval=2,
        num_evals=4),
    max_episode_steps=200, sparse_reward=False,
    known_optimum=None, known_optimum_note="no closed form",
    task_label="direction (+1 forward, -1 backward)", report_rank=10, runs_by_default=False)
