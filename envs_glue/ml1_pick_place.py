"""Meta-World's ML1 pick-place-v3 (``docs/PROTOCOL.md#meta-world-ml1``), an optional extra: this module imports without
``metaworld``; building the environment needs it (``requirements-metaworld.txt``)."""
from __future__ import annotations

from envs_glue.metaworld_ml1 import ML1Env, metaworld_spec


class ML1PickPlaceEnv(ML1Env):
    """Grasp a puck and place it at a goal position, in the air or on the table; success when Meta-World says so
    (``info["success"]``)."""

    metaworld_name = "pick-place-v3"


SPEC = metaworld_spec("ml1-pick-place", "incontext/ML1PickPlace-v0", ML1PickPlaceEnv, report_rank=22)
