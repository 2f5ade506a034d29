"""``EnvSpec``: the facts of one environment, declared in its own module as ``SPEC`` and checked on discovery."""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

from envs_glue.base import MetaEnv
from envs_glue.protocol import ProtocolConfig


class EnvSpecError(ValueError):
    """A malformed environment spec or an environment reference that does not resolve; the message names it."""


@dataclass(frozen=True)
class EnvSpec:
    name: str                            # the ``--env`` name of an environment in ``envs_glue/``
    gym_id: str                          # registered with gymnasium under this id on discovery
    env_class: type[MetaEnv]             # the environment itself
    protocol: ProtocolConfig             # the benchmark tier; quick and smoke derive from it (``protocol_for``)
    max_episode_steps: int               # the time limit; also the smoke tier's episode and step counts
    sparse_reward: bool                  # the context and every reported return use the sparse reward
    known_optimum: float | None          # the final episode's best score when the task is known
                                         # (docs/PROTOCOL.md#known-optima-and-limits)
    known_optimum_note: str              # how that number was obtained, as tables quote it
    task_label: str                      # the one scalar that names a task in plots: ``tasks[:, 0]``, or the
                                         # goal's angle on a goal plane
    report_rank: int = 1000              # table order: lower first, then the module's file name
    goal_plane: bool = False             # tasks are goals (x, y) on a plane: plots draw positions and goals
    task_wraps_around: bool = False      # the task scalar is an angle over the full circle (a cyclic colormap)
    goal_radius: float | None = None     # the sparse reward's radius around the goal (drawn on attention maps)
    runs_by_default: bool = True         # in the runners' default environment list (``--envs`` names any of them)
    reports_success: bool = False        # ``step`` puts a task-success flag in ``info["success"]``: evaluation then
                                         # reports a success rate beside the return (``meta_test_success``)

    @property
    def entry_point(self) -> str:
        """Where gymnasium builds the environment from, ``module:Class``."""
        return f"{self.env_class.__module__}:{self.env_class.__qualname__}"


# the type each field must have (bool is refused where an int or a float is meant: ``True`` is not a count)
_FIELD_TYPES = {"name": str, "gym_id": str, "protocol": ProtocolConfig, "max_episode_steps": int, "sparse_reward": bool,
                "known_optimum": (float, int, type(None)), "known_optimum_note": str, "task_label": str,
                "report_rank": int, "goal_plane": bool, "task_wraps_around": bool,
                "goal_radius": (float, int, type(None)), "runs_by_default": bool,
                "reports_success": bool}


def check_spec(spec: object, where: str) -> EnvSpec:
    """``spec`` as a well-formed :class:`EnvSpec`, or one :class:`EnvSpecError` naming ``where`` and what is wrong."""
    if not isinstance(spec, EnvSpec):
        raise EnvSpecError(f"{where}: expected an envs_glue.spec.EnvSpec, got {type(spec).__name__}")
    problems = []
    for f in fields(EnvSpec):
        value, expected = getattr(spec, f.name), _FIELD_TYPES.get(f.name)
        if expected is None:
            continue
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            problems.append(f"`{f.name}` must be {_type_names(expected)}, got {value!r}")
    if not (isinstance(spec.env_class, type) and issubclass(spec.env_class, MetaEnv)):
        problems.append(f"`env_class` must be a MetaEnv subclass, got {spec.env_class!r}")
    elif isinstance(spec.max_episode_steps, int) and spec.env_class.max_episode_steps != spec.max_episode_steps:
        problems.append(f"`max_episode_steps` is {spec.max_episode_steps} but {spec.env_class.__qualname__}"
                        f".max_episode_steps is {spec.env_class.max_episode_steps}")
    if isinstance(spec.name, str) and not spec.name:
        problems.append("`name` is empty")
    if isinstance(spec.max_episode_steps, int) and spec.max_episode_steps <= 0:
        problems.append(f"`max_episode_steps` must be positive, got {spec.max_episode_steps}")
    for name in ("known_optimum", "goal_radius"):
        value = getattr(spec, name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value):
            problems.append(f"`{name}` must be finite, got {value}")
    if problems:
        raise EnvSpecError(f"{where}: malformed EnvSpec: {'; '.join(problems)}")
    return spec


def _type_names(expected) -> str:
    members = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join("None" if m is type(None) else m.__name__ for m in members)
