"""Agents, training algorithms and the harness that runs them.

``ALGORITHMS`` maps each ``--algo`` name to its algorithm class; each class names its typed config in
``config_class``. A new method is one file (agent + algorithm + config) plus one line here.
"""
from __future__ import annotations

import importlib

_REGISTRY = {
    "sac-no-context": "algos.sac_no_context:SACNoContext",
    "oracle": "algos.oracle:Oracle",
    "pearl": "algos.pearl:PEARL",
    "focal": "algos.focal:FOCAL",
    "varibad": "algos.varibad:VariBAD",
    "setformer": "algos.setformer:SetFormer",
}
ALGORITHMS = tuple(_REGISTRY)


def algorithm_class(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown algo {name!r}; choose one of {list(_REGISTRY)}")
    module_name, class_name = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
