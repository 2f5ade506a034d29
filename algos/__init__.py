"""Agents, training algorithms and the harness that runs them.

A method is one module in this package: an :class:`~algos.core.algorithm.Algorithm` subclass that sets ``name``
(and its other facts) in its own class body. Every module here is imported once, in file-name order, and each
such class is registered under its name; ``ALGORITHMS`` lists the names in table order (role, then
``report_rank``, then name). Nothing else needs editing: the CLIs, runners and tables read this registry.
A module that fails to import is not silently dropped: the error names the module.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from algos.core.algorithm import ROLES, Algorithm, check_facts


def _discover() -> dict[str, type[Algorithm]]:
    found: dict[str, type[Algorithm]] = {}
    for module_info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda m: m.name):
        if module_info.ispkg or module_info.name.startswith("_"):
            continue
        module_name = f"{__name__}.{module_info.name}"
        try:
            module = importlib.import_module(module_name)
        except Exception as error:
            raise ImportError(f"method module {module_name} does not import: {type(error).__name__}: {error}") from error
        for value in vars(module).values():
            # a class counts where it is defined (an import of PEARL into another module is not a second PEARL)
            if (isinstance(value, type) and issubclass(value, Algorithm) and value.__module__ == module_name
                    and "name" in vars(value)):
                check_facts(value)
                if value.name in found and found[value.name] is not value:
                    other = found[value.name]
                    raise TypeError(f"two methods are named {value.name!r}: {other.__module__}.{other.__qualname__} "
                                    f"and {module_name}.{value.__qualname__}")
                found[value.name] = value
    return dict(sorted(found.items(), key=lambda item: (ROLES.index(item[1].role), item[1].report_rank, item[0])))


_REGISTRY = _discover()
ALGORITHMS = tuple(_REGISTRY)


def algorithm_class(name: str) -> type[Algorithm]:
    if name not in _REGISTRY:
        raise ValueError(f"unknown algo {name!r}; choose one of {list(_REGISTRY)}")
    return _REGISTRY[name]


def display_name(algo: str) -> str:
    """How tables name ``algo``; a name no longer registered (an old cell's) is shown as it is."""
    return _REGISTRY[algo].display_name if algo in _REGISTRY else algo


def methods_with_role(role: str) -> tuple[str, ...]:
    return tuple(name for name, cls in _REGISTRY.items() if cls.role == role)
