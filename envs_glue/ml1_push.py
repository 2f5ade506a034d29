"""Meta-World's ML1 push-v3 (``docs/PROTOCOL.md#meta-world-ml1``), an optional extra: this module imports without
``metaworld``; building the environment needs it (``requirements-metaworld.txt``)."""
from __future__ import annotations

from envs_glue.metaworld_ml1 import ML1Env, metaworld_spec


class ML1PushEnv(ML1Env):
    """Push a puck to a goal position on the table; success when Meta-World says so (``info["success"]``)."""

    metaworld_name = "push-v3"


SPEC = metaworld_spec("ml1-push", "incontext/ML1Push-v0", ML1PushEnv, report_rank=21)
