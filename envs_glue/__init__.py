"""Environments of the benchmark, discovered from their modules and registered with gymnasium; the one way to
build them.

An environment is one module in this package that defines ``SPEC``, an :class:`~envs_glue.spec.EnvSpec` holding
everything about it: its :class:`~envs_glue.base.MetaEnv` class (dynamics and task list), its facts (every tool and
table reads them from here) and its benchmark-tier protocol (``docs/PROTOCOL.md#training-protocol``). Every module
here is imported once, in file-name order, and each ``SPEC`` is checked and registered under its name; ``ENV_SPECS``
is in table order (``report_rank``, then file name). Nothing else needs editing. A module that fails to import, or
whose spec is malformed, stops discovery with an error naming it.

An environment outside the repository is named ``module.path:ATTRIBUTE`` (e.g. ``my_pkg.my_env:SPEC``): the module
is imported on first use and that name is what runs, configs and tables record.

``make_env("point-robot")`` returns the gymnasium environment with actions in ``[-1, 1]``; ``env.unwrapped`` is the
:class:`~envs_glue.base.MetaEnv` holding the task list.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import gymnasium as gym

from envs_glue.base import MetaEnv
from envs_glue.protocol import ProtocolConfig
from envs_glue.spec import EnvSpec, EnvSpecError, check_spec
from envs_glue.wrappers import ScaledActionWrapper


def _register(spec: EnvSpec) -> None:
    registered = gym.registry.get(spec.gym_id)
    if registered is None:
        gym.register(id=spec.gym_id, entry_point=spec.entry_point, max_episode_steps=spec.max_episode_steps)
    elif registered.entry_point != spec.entry_point:  # make_env would silently build the other environment
        raise EnvSpecError(f"{spec.name}: gym id {spec.gym_id!r} is already registered for {registered.entry_point}")


def _discover() -> dict[str, EnvSpec]:
    found: dict[str, tuple[int, EnvSpec]] = {}
    modules = sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name)
    for position, module_info in enumerate(modules):
        if module_info.ispkg or module_info.name.startswith("_"):
            continue
        module_name = f"{__name__}.{module_info.name}"
        try:
            module = importlib.import_module(module_name)
        except Exception as error:
            raise ImportError(f"environment module {module_name} does not import: {type(error).__name__}: {error}") \
                from error
        if "SPEC" not in vars(module):
            continue  # a helper module (the task interface, wrappers, shared physics), not an environment
        spec = check_spec(module.SPEC, f"{module_name}.SPEC")
        for _, other in found.values():
            if spec.name == other.name or spec.gym_id == other.gym_id:
                raise EnvSpecError(f"{module_name}.SPEC: name {spec.name!r} or gym id {spec.gym_id!r} is already "
                                   f"taken by {other.env_class.__module__}.SPEC")
        found[spec.name] = (position, spec)
    ordered = sorted(found.values(), key=lambda item: (item[1].report_rank, item[0]))
    return {spec.name: spec for _, spec in ordered}


ENV_SPECS: dict[str, EnvSpec] = _discover()
DEFAULT_ENVS: tuple[str, ...] = tuple(name for name, spec in ENV_SPECS.items() if spec.runs_by_default)
_OUTSIDE_SPECS: dict[str, EnvSpec] = {}  # ``module:ATTRIBUTE`` references resolved so far

for _spec in ENV_SPECS.values():
    _register(_spec)


def _resolve_reference(reference: str) -> EnvSpec:
    """The spec a ``module.path:ATTRIBUTE`` reference names, imported, checked and registered on first use."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise EnvSpecError(f"env {reference!r} is not of the form module.path:ATTRIBUTE")
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise EnvSpecError(f"env {reference!r}: module {module_name} does not import: {type(error).__name__}: "
                           f"{error}") from None
    if not hasattr(module, attribute):
        raise EnvSpecError(f"env {reference!r}: module {module_name} has no attribute {attribute!r}")
    spec = check_spec(getattr(module, attribute), f"env {reference!r}")
    _register(spec)
    return spec


def env_spec(name: str) -> EnvSpec:
    """The spec of a discovered environment by name, or of one outside the repository by ``module.path:ATTRIBUTE``."""
    if name in ENV_SPECS:
        return ENV_SPECS[name]
    if isinstance(name, str) and ":" in name:
        if name not in _OUTSIDE_SPECS:
            _OUTSIDE_SPECS[name] = _resolve_reference(name)
        return _OUTSIDE_SPECS[name]
    raise ValueError(f"unknown env {name!r}; choose one of {sorted(ENV_SPECS)} or name a module's spec as "
                     f"module.path:ATTRIBUTE")


def make_env(name: str, seed: int | None = None) -> gym.Env:
    """The registered environment with the agent-facing ``[-1, 1]`` action scaling."""
    env = ScaledActionWrapper(gym.make(env_spec(name).gym_id))
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


__all__ = ["DEFAULT_ENVS", "ENV_SPECS", "EnvSpec", "EnvSpecError", "MetaEnv", "ProtocolConfig", "ScaledActionWrapper",
           "env_spec", "make_env"]
