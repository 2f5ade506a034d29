"""Walker with randomised physics (PEARL's ``WalkerRandParamsWrappedEnv`` over rand_param_envs), on
gymnasium's walker2d-v5 (``docs/PROTOCOL.md#pearl-mujoco-suite``)."""
from __future__ import annotations

from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv

from envs_glue.mujoco_tasks import RandomisedPhysicsEnv, randomised_physics_spec


class WalkerRandParamsEnv(RandomisedPhysicsEnv, Walker2dEnv):
    """The task is the model (``RandomisedPhysicsEnv``); the episode ends when
    walker2d-v5 calls the body unhealthy."""


SPEC = randomised_physics_spec(
    "walker-rand-params", "incontext/WalkerRandParams-v0", WalkerRandParamsEnv, report_rank=14)
