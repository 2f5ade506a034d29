"""Validation tasks through the harness: every evaluation also scores the validation tasks, with their own seeds,
without changing a number the test evaluation or training computes (docs/PROTOCOL.md#validation-evaluation)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import make_trainer, read_metrics, record_trial_tasks


def test_validation_evaluation_visits_only_validation_tasks_with_its_own_seeds(tmp_path):
    trainer = make_trainer("point-robot", tmp_path, algo="oracle")
    agent, visited = record_trial_tasks(trainer)
    starts = []  # every episode's start position (drawn from the evaluation's seed, whatever the task)
    reset = trainer.env.reset
    trainer.env.reset = lambda **kwargs: (result := reset(**kwargs), starts.append(result[0].copy()))[0]
    validation = trainer.evaluate(eval_seed=11, num_repeats=2, split="validation")
    assert visited == [t for t in range(50, 60) for _ in range(2)]
    assert validation.episode_returns.shape == (10, 2, 3)
    validation_starts, starts[:] = list(starts), []
    # the same seed on the test tasks starts elsewhere: the validation evaluation has seeds of its own
    visited.clear()
    test = trainer.evaluate(eval_seed=11, num_repeats=2, split="test")
    assert visited == [t for t in range(40, 50) for _ in range(2)]
    assert len(starts) == len(validation_starts) >= 60  # 10 tasks x 2 repeats x 3 episodes
    assert not any(np.array_equal(a, b) for a, b in zip(validation_starts, starts))
    assert not np.array_equal(validation.episode_returns, test.episode_returns)


def test_the_test_evaluation_is_the_same_with_or_without_validation_before_it(tmp_path):
    trainer = make_trainer("point-robot", tmp_path, algo="pearl", seed=5)
    trainer.run()
    alone = trainer.evaluate(eval_seed=7, num_repeats=2).episode_returns
    validation, test = trainer.evaluate_validation_then_test(eval_seed=7, num_repeats=2)
    np.testing.assert_array_equal(test.episode_returns, alone)
    assert validation.per_task_final_returns != test.per_task_final_returns


def test_runs_record_the_validation_figure_beside_the_test_figure(tmp_path):
    trainer = make_trainer("point-robot", tmp_path / "run", algo="oracle", seed=42,
                           overrides=["num_iterations=2", "final_eval_repeats=20"])
    results = trainer.run()
    rows = read_metrics(tmp_path / "run")
    assert all("validation_return" in row and "meta_test_return" in row for row in rows)
    assert [r["validation_return"] for r in results["learning_curve"]] == [r["validation_return"] for r in rows]
    assert results["validation_return"] == rows[-1]["validation_return"]
    final = results["final_eval"]
    assert len(final["per_validation_task_final_returns"]) == 10
    assert final["validation_return"] == pytest.approx(np.mean(final["per_validation_task_final_returns"]))
    # the oracle knows every goal: near the known-goal optimum on validation goals too, never on the test list's
    assert abs(final["validation_return"] - (-4.60)) < 1.0
    assert final["validation_return"] != final["meta_test_return"]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["final_eval"] == final


def test_tables_name_the_grid_point_each_cell_ran_at():
    from experiments.results_table import grid_point_of
    assert grid_point_of({}) == "reference-settings"  # the shared defaults are the references' settings
    assert grid_point_of({"lr": 0.001, "encoder_lr": 0.0003, "learn_temperature": True}) == "fast-actor-critic"
    assert grid_point_of({"lr": 0.001, "encoder_lr": 0.0003, "learn_temperature": False}) == "other"
