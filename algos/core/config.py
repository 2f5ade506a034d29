"""Typed, validated configuration: the per-environment protocol (``docs/PROTOCOL.md#training-protocol``) at three tiers, the
run-level settings, and ``key=value`` overrides with clear errors.

Tiers:
- ``benchmark``: the protocol each environment module declares (``SPEC.protocol``): the reference benchmark's
  exactly (``docs/PROTOCOL.md#benchmark-tier``), and a stated share of PEARL's budget on PEARL's MuJoCo suite
  (``docs/PROTOCOL.md#pearl-mujoco-suite``).
- ``quick``: the same data collection and evaluation, with the gradient budget scaled down for a 2-core CPU:
  ``num_train_steps_per_itr`` divided by ``QUICK_STEP_DIVISOR`` (1000 -> 200, 2000 -> 400) and the per-task RL
  batch ``batch_size`` 256 -> ``QUICK_BATCH_SIZE`` (64), i.e. 1/20 of the benchmark's gradient samples. Meta-batch,
  context sizes, discount, reward scale and every collection and evaluation setting are unchanged.
- ``smoke``: a few steps of everything, for tests and CI.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from envs_glue import ENV_SPECS, env_spec
from envs_glue.protocol import ConfigError, ProtocolConfig

TIERS = ("benchmark", "quick", "smoke")
QUICK_STEP_DIVISOR = 5
QUICK_BATCH_SIZE = 64


# keys that say where and how fast a run computes, not what it computes
NON_SEMANTIC_KEYS = frozenset({"num_threads", "run_dir", "run_root", "device"})
# of those, the ones a resumed run may change (``--resume RUN_DIR --set num_threads=2``): how fast it continues
RESUME_OVERRIDABLE_KEYS = frozenset({"num_threads", "device"})
DEVICES = ("auto", "cpu", "cuda")
MAX_SEED = 2**32 - 1  # seeds numpy, torch and gymnasium all take (the evaluation seeds derived from it too)


def check_finite(obj: Any, prefix: str = "") -> None:
    """Every float of a (nested) config dataclass is finite: NaN passes every ``x < 0`` check, so it is refused
    here once instead of slipping past each bound."""
    for f in fields(obj):
        value = getattr(obj, f.name)
        if is_dataclass(value):
            check_finite(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"config key '{prefix}{f.name}' must be a finite number, got {value}")


# the benchmark tier of every discovered environment, in table order: each environment module declares its own
# (``SPEC.protocol``); this view is read-only by convention, ``protocol_for`` hands out copies
BENCHMARK = {name: spec.protocol for name, spec in ENV_SPECS.items()}
SEEDS = (42, 123, 456)
# The grid every method is tuned on, identical for all (docs/PROTOCOL.md#equal-budget): the references' settings
# first (ties go to them), then setformer's former cheetah-vel settings, the two places where the methods' defaults
# differed before any tuning. Chosen per environment and method on validation tasks by ``experiments.sweep``.
TUNING_GRID: dict[str, tuple[str, ...]] = {
    "reference-settings": ("lr=0.0003", "encoder_lr=0", "learn_temperature=false"),
    "fast-actor-critic": ("lr=0.001", "encoder_lr=0.0003", "learn_temperature=true"),
}
TUNING_SEEDS = (7,)  # outside the table seeds


def grid_settings(point: str) -> dict[str, Any]:
    """A ``TUNING_GRID`` point as config values ``{field: value}``: what a method's ``env_defaults`` holds for the
    point selected on an environment, and what a cell's settings are matched against."""
    return {key: json.loads(value) for key, value in (assignment.split("=", 1) for assignment in TUNING_GRID[point])}


def protocol_for(env: str, tier: str) -> ProtocolConfig:
    try:
        spec = env_spec(env)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if tier not in TIERS:
        raise ConfigError(f"unknown tier {tier!r}; choose one of {list(TIERS)}")
    # the reward the context and the reported returns use is the environment's fact, not a protocol choice
    protocol = dataclasses.replace(spec.protocol, sparse_rewards=spec.sparse_reward)
    if tier == "quick":
        protocol.num_train_steps_per_itr //= QUICK_STEP_DIVISOR
        protocol.batch_size = QUICK_BATCH_SIZE
    elif tier == "smoke":
        episode = spec.max_episode_steps
        protocol = dataclasses.replace(
            protocol, num_iterations=2, num_initial_steps=episode, num_tasks_sample=2,
            num_steps_prior=episode, num_steps_posterior=episode if protocol.num_steps_posterior else 0,
            num_extra_rl_steps_posterior=episode if protocol.num_extra_rl_steps_posterior else 0,
            num_train_steps_per_itr=3, meta_batch=4, batch_size=32,
            embedding_batch_size=min(protocol.embedding_batch_size, 32), num_evals=1, final_eval_repeats=1,
            replay_buffer_size=4 * episode * 3)
    return protocol


@dataclass
class RunConfig:
    """Everything one run needs; saved resolved beside its results."""
    env: str
    algo: str
    tier: str
    seed: int
    protocol: ProtocolConfig
    agent: Any                         # the algorithm's own typed config (e.g. PearlConfig)
    num_threads: int = 1               # torch intra-op threads
    bf16: bool | str = "auto"          # bfloat16 autocast for gradient steps: true, false or auto (on where native:
                                       # AVX512-BF16/AMX CPUs, ~2.7x faster; emulated and slower elsewhere)
    device: str = "auto"               # auto | cpu | cuda; networks, batches and evaluation run there
    run_root: str = "runs"
    run_dir: str = ""                  # set when the run starts; --resume takes it

    def validate(self) -> None:
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed <= MAX_SEED:
            raise ConfigError(f"seed must be a non-negative integer below 2**32, got {self.seed!r}")
        check_finite(self.protocol, "protocol.")
        if is_dataclass(self.agent):
            check_finite(self.agent, "agent.")
        self.protocol.validate()
        if self.num_threads <= 0:
            raise ConfigError(f"num_threads must be positive, got {self.num_threads}")
        if not (isinstance(self.bf16, bool) or self.bf16 == "auto"):
            raise ConfigError(f"config key 'bf16' must be true, false or auto, got {self.bf16!r}")
        if self.device not in DEVICES:
            raise ConfigError(f"config key 'device' must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if hasattr(self.agent, "validate"):
            self.agent.validate()


# ---------------------------------------------------------------------- overrides
IDENTITY_FIELDS = ("env", "algo", "tier", "seed", "run_dir")

def _coerce(value: str, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):  # e.g. ``bool | str``: the first member the text parses as
        members = typing.get_args(annotation)
        for member in sorted(members, key=lambda m: m is str):  # str accepts anything: try it last
            try:
                return _coerce(value, member, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r} expects one of {[m.__name__ for m in members]}, got {value!r}")
    if annotation is bool:
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"config key {key!r} expects a bool (true/false), got {value!r}")
    if annotation is int:
        try:
            return int(value)
        except ValueError:
            try:
                as_float = float(value)
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
            raise ConfigError(f"config key {key!r} expects an int, got {value!r}") from None
    if annotation is float:
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"config key {key!r} expects a float, got {value!r}") from None
    if annotation is str:
        return value
    if origin in (tuple, list):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = [v for v in value.split(",") if v]
        (inner, *_rest) = typing.get_args(annotation) or (str,)
        return origin(_coerce(str(v), inner, key) for v in parsed)
    raise ConfigError(f"config key {key!r} has a type ({annotation}) that cannot be set from the command line")


def _field_types(obj: Any) -> dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in fields(obj)}


def _has_path(obj: Any, parts: list[str]) -> bool:
    for part in parts:
        if not is_dataclass(obj) or part not in {f.name for f in fields(obj)}:
            return False
        obj = getattr(obj, part)
    return True


def set_value(config: RunConfig, key: str, value: str) -> None:
    """Set ``key`` (dotted) to the string ``value`` coerced to the field's type. A key that is not a run-level
    field is looked up in ``protocol`` and then ``agent`` (``aux.reward`` means ``agent.aux.reward``)."""
    parts = key.split(".")
    if parts[0] in IDENTITY_FIELDS:
        raise ConfigError(f"config key {key!r} names the run itself; use --{parts[0].replace('_', '-')} instead of --set")
    if parts[0] in {"protocol", "agent"} or _has_path(config, parts):
        path = parts
    else:
        candidates = [[prefix, *parts] for prefix in ("protocol", "agent") if _has_path(config, [prefix, *parts])]
        if not candidates:
            raise ConfigError(f"unknown config key {key!r} for algo {config.algo!r} on env {config.env!r}")
        if len(candidates) > 1:
            raise ConfigError(f"config key {key!r} is ambiguous: use protocol.{key} or agent.{key}")
        path = candidates[0]
    if not _has_path(config, path):
        raise ConfigError(f"unknown config key {key!r} for algo {config.algo!r} on env {config.env!r}")
    target = config
    for part in path[:-1]:
        target = getattr(target, part)
    annotation = _field_types(target)[path[-1]]
    if is_dataclass(getattr(target, path[-1])):
        raise ConfigError(f"config key {key!r} is a group; set one of its fields instead")
    setattr(target, path[-1], _coerce(value, annotation, key))


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    seen: dict[str, str] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        # ``lr`` and ``agent.lr`` are one key: a second value would silently win
        canonical = key.removeprefix("agent.").removeprefix("protocol.")
        if canonical in seen:
            raise ConfigError(f"config key {key!r} is set twice ({seen[canonical]!r} and {item!r}); set it once")
        seen[canonical] = item
        set_value(config, key, value.strip())
    config.validate()
    return config


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)


def flatten_config(data: dict, ignored: frozenset[str] = NON_SEMANTIC_KEYS, prefix: str = "") -> dict:
    """``{"agent": {"aux": {"reward": 1.0}}}`` -> ``{"agent.aux.reward": 1.0}``, leaving out ``ignored`` keys."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten_config(value, ignored, f"{prefix}{key}."))
        elif key not in ignored:
            out[f"{prefix}{key}"] = value
    return out
