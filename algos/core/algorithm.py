"""The interface every method implements, and the facts it declares about itself.

A method is one module in ``algos/`` holding a subclass of :class:`Algorithm` that sets ``name``. Everything
else (the run CLI, the benchmark runner, the ablation and throughput tools, every table) reads the facts below
from the class, so a new method needs no edit anywhere else (see ``algos/__init__.py`` for the discovery).

Facts (class attributes):

- ``name``: the ``--algo`` name; only a class that sets it in its own body is registered, so a base class or a
  helper subclass without one is not a method.
- ``display_name``: how tables name it; set beside ``name`` (a subclass does not inherit it, or tables would show
  two rows under its parent's name).
- ``role``: ``ours`` (the project's method, compared against the baselines), ``baseline`` (a published method,
  reimplemented), ``floor`` (what every context method must beat) or ``reference`` (a line, not a method: it may
  read the task from the environment).
- ``supported_envs``: the environments the method exists for (``None``: every one), with ``unsupported_reason``
  saying why the others are left out.
- ``reference_row``: the row of the reference benchmark's table (``experiments/reference_results.json``) that
  is this method's own published number, shown beside it. Read from the class's own body only: a variant made
  by subclassing PEARL is not PEARL, so it does not inherit PEARL's number (every other fact is inherited).
- ``report_rank``: the order among methods of the same role in tables (then the name).
- ``env_defaults``: per-environment settings that replace the config's defaults, ``{env: {field: value}}``: the
  grid point chosen for the method on that environment's validation tasks (``docs/PROTOCOL.md#selection-rule``).
- ``architecture(agent_config)``: one line on its task inference and networks, from a saved ``agent`` config
  (a dict), which tables print so that every architecture difference between methods is stated.

The interface: ``__init__(env, protocol, config, rng, bf16, device)``; ``agent`` (a :class:`MetaAgent`, what
evaluation runs), ``env_steps`` and ``grad_steps`` counters, ``networks`` (the modules the device setting moves:
the protocol's interface, ``docs/PROTOCOL.md#interfaces``), ``parameter_count()``, ``collect_initial_data()``, ``train_iteration(i)`` returning scalars
to log, and ``state_dict()`` / ``load_state_dict()`` for checkpoints (everything a resumed run needs, random
state included).
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

ROLES = ("floor", "baseline", "ours", "reference")  # also the order of method groups in tables


class Algorithm:
    name: ClassVar[str]
    display_name: ClassVar[str]
    role: ClassVar[str] = "baseline"
    supported_envs: ClassVar[tuple[str, ...] | None] = None
    unsupported_reason: ClassVar[str] = ""
    reference_row: ClassVar[str | None] = None
    report_rank: ClassVar[int] = 0
    env_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    config_class: ClassVar[type]
    # config groups (of ``config_class``) that only change how the trained agent acts, not what it learns from a
    # given batch: ``experiments.reevaluate`` may override them on finished weights
    inference_time_config: ClassVar[tuple[str, ...]] = ()

    agent: Any
    env_steps: int
    grad_steps: int

    @classmethod
    def architecture(cls, agent: dict) -> str:
        return ""

    def __init__(self, env, protocol, config, rng: np.random.Generator, bf16: bool = False,
                 device: torch.device | str = "cpu"):
        raise NotImplementedError

    @classmethod
    def supports(cls, env: str) -> str | None:
        """``None`` when the method exists for ``env``, else why not (not a failure: the combination does not
        exist)."""
        if cls.supported_envs is None or env in cls.supported_envs:
            return None
        return cls.unsupported_reason or f"{cls.name} supports only {', '.join(cls.supported_envs)}"

    @classmethod
    def default_config(cls, env: str):
        """The method's config on ``env`` before any ``--set``: ``config_class()`` with the environment's
        ``env_defaults`` (a method may also derive a default from the environment's facts: PEARL's KL weight)."""
        return cls.config_class(**cls.env_defaults.get(env, {}))

    @classmethod
    def own_reference_row(cls) -> str | None:
        return vars(cls).get("reference_row")

    @property
    def networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def parameter_count(self) -> int:
        raise NotImplementedError

    def collect_initial_data(self) -> None:
        raise NotImplementedError

    def train_iteration(self, iteration_idx: int) -> dict[str, float]:
        raise NotImplementedError

    def state_dict(self) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict) -> None:
        raise NotImplementedError

    def inference_config_changed(self) -> None:
        """Called after ``inference_time_config`` was overridden on loaded weights: rebuild derived state."""


def check_facts(cls: type) -> None:
    """A registered method's facts are complete and of the right kind; raised at discovery, naming the class."""
    where = f"{cls.__module__}.{cls.__qualname__}"
    if not isinstance(cls.__dict__.get("name"), str) or not cls.name:
        raise TypeError(f"{where}: `name` must be a non-empty string")
    # a subclass that inherited its parent's display name would show up in tables as a second copy of the parent
    if not isinstance(vars(cls).get("display_name"), str) or not cls.display_name:
        raise TypeError(f"{where}: set `display_name` beside `name` (how tables name {cls.name!r})")
    if cls.role not in ROLES:
        raise TypeError(f"{where}: `role` must be one of {ROLES}, got {cls.role!r}")
    if cls.supported_envs is not None and not isinstance(cls.supported_envs, tuple):
        raise TypeError(f"{where}: `supported_envs` must be a tuple of env names or None")
    if not hasattr(cls, "config_class"):
        raise TypeError(f"{where}: `config_class` (its typed config) is missing")
    known = {f.name for f in dataclasses.fields(cls.config_class)}
    for env, settings in cls.env_defaults.items():
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"{where}: `env_defaults[{env!r}]` sets {unknown}, not fields of {cls.config_class.__name__}")

