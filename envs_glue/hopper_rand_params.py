"""Hopper with randomised physics (PEARL's ``HopperRandParamsWrappedEnv`` over rand_param_envs), on gymnasium's
hopper-v5 (``docs/PROTOCOL.md#pearl-mujoco-suite``)."""
from __future__ import annotations

from gymnasium.envs.mujoco.hopper_v5 import HopperEnv

from envs_glue.mujoco_tasks import RandomisedPhysicsEnv
from envs_glue.protocol import ProtocolConfig
from envs_glue.spec import EnvSpec


class HopperRandParamsEnv(RandomisedPhysicsEnv, HopperEnv):
    """The task is the model: body masses, inertias, joint damping and geom friction scaled per element; reward
    ``v_x + 1 - 0.001 * sum(a^2)``; the episode ends when hopper-v5 calls the body unhealthy."""

    max_episode_steps = 200
    num_train_tasks = 40
    num_test_tasks = 10
    num_tasks = 50


SPEC = EnvSpec(
    "hopper-rand-params", "incontext/HopperRandParams-v0", HopperRandParamsEnv,
    # PEARL's configs/hopper_rand_params.json over its default.py, at 20 iterations of 2000 gradient steps
    # instead of 500 of 4000 (docs/PROTOCOL.md)
    ProtocolConfig(
        num_iterations=20, num_initial_steps=2000, num_tasks_sample=5, num_steps_prior=400, num_steps_posterior=0,
        num_extra_rl_steps_posterior=600, num_train_steps_per_itr=2000, meta_batch=10, batch_size=256,
        embedding_batch_size=100, discount=0.99, reward_scale=5.0, num_steps_per_eval=600, num_exp_traj_eval=2,
        num_evals=2, use_next_obs_in_context=True),
    max_episode_steps=200, sparse_reward=False,
    known_optimum=None, known_optimum_note="no closed form",
    task_label="log1.5 of the total body mass scale", report_rank=15, runs_by_default=False)
