"""Meta-World's ML1 reach-v3 (``docs/PROTOCOL.md#meta-world-ml1``), an optional extra: this module imports without
``metaworld``; building the environment needs it (``requirements-metaworld.txt``)."""
from __future__ import annotations

from envs_glue.metaworld_ml1 import ML1Env, metaworld_spec


class ML1ReachEnv(ML1Env):
    """Move the gripper to a goal position; success when Meta-World says so (``info["success"]``)."""

    metaworld_name = "reach-v3"


SPEC = metaworld_spec("ml1-reach", "incontext/ML1Reach-v0", ML1ReachEnv, report_rank=20)
