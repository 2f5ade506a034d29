"""Every run config saved under ``benchmarks/`` still reads in today's layout (``algos/core/saved_config.py``), so
each committed cell can be resumed, compared and re-evaluated by today's code. Reading only: no training."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from algos.core.config import flatten_config, to_dict
from algos.core.trainer import build_config, config_from_dict

REPO_ROOT = Path(__file__).resolve().parents[1]
SAVED = sorted((REPO_ROOT / "benchmarks").rglob("config.json"))


def test_there_are_saved_configs_to_read():
    assert len(SAVED) > 50  # the benchmark, quick and ablation cells


@pytest.mark.parametrize("path", SAVED, ids=[str(p.relative_to(REPO_ROOT / "benchmarks").parent) for p in SAVED])
def test_saved_config_loads_in_todays_layout(path):
    data = json.loads(path.read_text())
    config = config_from_dict(data)
    config.validate()
    # the loaded config has exactly today's keys: none left over from an older layout, none missing
    today = build_config(config.env, config.algo, config.tier, config.seed)
    assert flatten_config(to_dict(config), frozenset()).keys() == flatten_config(to_dict(today), frozenset()).keys()
