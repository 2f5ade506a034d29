"""Meta-World ML10 (docs/PROTOCOL.md#meta-world-ml10), an optional extra. Discovery and the one-line error without
``metaworld`` run everywhere; the environment's own tests where ``metaworld`` is installed
(``requirements-metaworld.txt``)."""
from __future__ import annotations

import json
import math
import pickle
import sys
import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs_glue import DEFAULT_ENVS, ENV_SPECS, make_env
from envs_glue.metaworld_ml1 import OptionalExtraMissingError
from envs_glue.ml10 import ml10_task_lists
from experiments.run import main as run_main
from tests.conftest import METAWORLD_SMOKE_METHODS

TRAIN_FAMILIES = ["reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-close-v3", "button-press-topdown-v3",
                  "peg-insert-side-v3", "window-open-v3", "sweep-v3", "basketball-v3"]
TEST_FAMILIES = ["drawer-open-v3", "door-close-v3", "shelf-place-v3", "sweep-into-v3", "lever-pull-v3"]


# ---------------------------------------------------------------------- without metaworld (the main environment)
def test_ml10_is_discovered_with_ml1s_protocol_and_reports_success():
    spec = ENV_SPECS["ml10"]
    assert spec.reports_success and not spec.runs_by_default and "ml10" not in DEFAULT_ENVS
    assert spec.max_episode_steps == 200 and not spec.sparse_reward
    assert spec.protocol == ENV_SPECS["ml1-reach"].protocol and spec.protocol is not ENV_SPECS["ml1-reach"].protocol


def test_building_ml10_without_metaworld_is_one_clear_error(monkeypatch):
    ml10_task_lists.cache_clear()
    monkeypatch.setitem(sys.modules, "metaworld", None)
    try:
        with pytest.raises(OptionalExtraMissingError, match="requirements-metaworld.txt"):
            make_env("ml10")
    finally:
        ml10_task_lists.cache_clear()


# ---------------------------------------------------------------------- with metaworld (its own environment)
@pytest.fixture(scope="module")
def metaworld():
    return pytest.importorskip("metaworld")


@pytest.fixture(scope="module")
def ml10(metaworld):
    env = make_env("ml10", seed=0)
    yield env
    env.close()


def _goals(tasks, family: str, count: int) -> list[np.ndarray]:
    return [pickle.loads(task.data)["rand_vec"] for task in tasks if task.env_name == family][:count]


def test_task_lists_are_ml10s_families_with_validation_goals_from_the_validation_seed(metaworld, ml10):
    meta = ml10.unwrapped
    assert (meta.num_train_tasks, meta.num_test_tasks, meta.num_validation_tasks) == (50, 50, 10)
    assert meta.families == TRAIN_FAMILIES + TEST_FAMILIES
    benchmark, other_seed = metaworld.ML10(seed=42), metaworld.ML10(seed=4242)
    expected = []
    for tasks, families, count in ((benchmark.train_tasks, TRAIN_FAMILIES, 5),
                                   (benchmark.test_tasks, TEST_FAMILIES, 10),
                                   (other_seed.train_tasks, TRAIN_FAMILIES, 1)):
        for family in families:
            for goal in _goals(tasks, family, count):
                expected.append(np.concatenate([[meta.families.index(family)], goal, np.zeros(6 - len(goal))]))
    np.testing.assert_array_equal(meta.tasks, np.array(expected))
    family_of = meta.tasks[:, 0]
    assert set(family_of[meta.train_task_ids]) == set(family_of[meta.validation_task_ids]) == set(range(10))
    assert set(family_of[meta.test_task_ids]) == set(range(10, 15))  # held-out families only
    distances = np.abs(meta.tasks[:, None] - meta.tasks[None]).max(axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert distances.min() > 1e-6  # train, test and validation tasks are pairwise distinct


def test_a_task_switch_runs_that_familys_simulator_at_that_goal(ml10):
    meta = ml10.unwrapped
    for task in (0, 17, 52, 99, 104):  # train tasks of two families, two held-out families, a validation task
        meta.reset_task(task)
        obs, info = ml10.reset()
        family = meta.families[int(meta.tasks[task, 0])]
        assert meta.sim is meta._sims[family]
        goal = np.asarray(meta.sim._last_rand_vec)
        np.testing.assert_array_equal(meta.tasks[task, 1:1 + len(goal)], goal)
        np.testing.assert_array_equal(info["task"], meta.tasks[task])
        assert obs.shape == (39,) and meta.observation_space.contains(obs)  # one space for every family
        np.testing.assert_array_equal(obs[-3:], 0.0)  # the goal is hidden
        for step in range(1, 201):
            obs, reward, terminated, truncated, info = ml10.step(ml10.action_space.sample())
            assert not terminated and truncated == (step == 200) and isinstance(info["success"], bool)
            assert 0.0 <= reward <= 10.0 and meta.observation_space.contains(obs)


def test_gymnasium_env_checker_passes(ml10):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unbounded object entries, and the hidden goal's entries fixed at 0
        check_env(ml10.unwrapped, skip_render_check=True)


@pytest.mark.parametrize("algo", METAWORLD_SMOKE_METHODS)
def test_methods_train_on_ml10_and_report_success(metaworld, tmp_path, algo):
    """A smoke run with one evaluation episode per trial, evaluated after the last iteration only (as on ML1)."""
    run_dir = tmp_path / "run"
    code = run_main(["--env", "ml10", "--algo", algo, "--tier", "smoke", "--seed", "0", "--run-dir", str(run_dir),
                     "--no-progress", "--set", "num_steps_per_eval=200", "num_exp_traj_eval=0", "eval_interval=2"])
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert math.isfinite(results["meta_test_return"]) and 0.0 <= results["meta_test_success"] <= 1.0
    assert len(results["final_eval"]["per_task_final_success"]) == 50
