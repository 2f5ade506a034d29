"""Hopper with randomised physics (PEARL's ``HopperRandParamsWrappedEnv`` over rand_param_envs), on
gymnasium's hopper-v5 (``docs/PROTOCOL.md#pearl-mujoco-suite``)."""
from __future__ import annotations

from gymnasium.envs.mujoco.hopper_v5 import HopperEnv

from envs_glue.mujoco_tasks import RandomisedPhysicsEnv, randomised_physics_spec


class HopperRandParamsEnv(RandomisedPhysicsEnv, HopperEnv):
    """The task is the model (``RandomisedPhysicsEnv``); the episode ends when
    hopper-v5 calls the body unhealthy."""


SPEC = randomised_physics_spec(
    "hopper-rand-params", "incontext/HopperRandParams-v0", HopperRandParamsEnv, report_rank=15)
