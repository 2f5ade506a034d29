"""Reading configs that older code saved (a run's ``config.json``, a checkpoint's flattened config) in today's layout.

Only the places that read saved configs import this module: the trainer (``config_from_dict``, ``check_identity``)
and the cell engine's comparison of two saved configs. ``algos.core.config`` defines today's typed configs and
knows nothing of older layouts.

Two tables say how an older layout maps onto today's:

- ``MOVED_KEYS``: a setting that lives under another key (and possibly takes other values) today. A saved config is
  read with the new key, so a run saved in the older layout still resumes and compares equal to one saved today.
- ``ADDED_KEYS``: a setting a saved config may lack whose default today is not what the code computed without it;
  a saved config without the key is read with the value its run computed with. A setting whose default is what the
  code computed without it needs no entry: it reads as the run's default.
"""
from __future__ import annotations

from dataclasses import fields
from typing import Any

from algos.core.config import ProtocolConfig

# old key -> new key (None: the setting no longer exists), or (new key, {old value: new value}) where the values
# changed too
MOVED_KEYS: dict[str, str | None | tuple[str, dict]] = {
    # PEARL's KL weight is PEARL's own setting (other methods never read it)
    "protocol.kl_lambda": "agent.kl_lambda",
    # setformer's on/off latent bound became a choice of normalisation: on -> tanh, off -> none
    "agent.bounded_latents": ("agent.latent_norm", {True: "tanh", False: "none"}),
    # setformer's "teacher" settings, named for what they are: the share of each task's RL batch, and of each
    # posterior collection phase, that acts on the training task's own embedding e_j
    "agent.teacher_fraction": "agent.embedding_batch_fraction",
    "agent.teacher_collection": "agent.embedding_collection_fraction",
}

# key -> the value a saved config without it ran with
ADDED_KEYS: dict[str, Any] = {
    "agent.latent_norm": "none",  # setformer: unbounded latents (today's default is sphere)
}


def upgrade_flat_config(saved: dict, current: dict, defaults: dict | None = None) -> dict:
    """``saved`` (flattened) in the layout of ``current`` (flattened): a moved key takes its new name (and value)
    where the current layout has it, and is dropped where it has neither name (the setting does not exist there).
    A key of ``current`` that ``saved`` lacks gets the value its run computed with: the ``ADDED_KEYS`` entry,
    else the setting's default for that run (``defaults``, flattened; a setting without an ``ADDED_KEYS`` entry
    computes at its default what the code computed without it). Without ``defaults`` such keys stay missing."""
    out = dict(saved)
    for old, move in MOVED_KEYS.items():
        if old in out and old not in current:
            value = out.pop(old)
            new, values = move if isinstance(move, tuple) else (move, None)
            if new is not None and new in current and new not in out:
                out[new] = values[value] if values is not None else value
    for key in current:
        if key not in out:
            if key in ADDED_KEYS:
                out[key] = ADDED_KEYS[key]
            elif defaults is not None and key in defaults:
                out[key] = defaults[key]
    return out


def upgrade_saved_config(data: dict, agent_fields: set[str]) -> dict:
    """A saved (nested) config dict in the current layout, given the algorithm config's field names: its protocol and
    agent groups go through :func:`upgrade_flat_config` one level deep."""
    flat = {f"{group}.{key}": value for group in ("protocol", "agent") for key, value in (data.get(group) or {}).items()}
    current = {**{f"protocol.{f.name}": None for f in fields(ProtocolConfig)},
               **{f"agent.{name}": None for name in agent_fields}}
    groups: dict[str, dict] = {"protocol": {}, "agent": {}}
    for key, value in upgrade_flat_config(flat, current).items():
        group, name = key.split(".", 1)
        groups[group][name] = value
    return {**data, **groups}
