"""``sac-true-task``: the latent is the task's row of the environment's task list, when acting and in training."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from algos import algorithm_class
from algos.core.config import ConfigError
from tests.conftest import make_trainer


@pytest.mark.parametrize("env, width", [("point-robot", 2), ("cheetah-vel", 1), ("walker-rand-params", None)])
def test_the_latent_is_as_wide_as_the_environments_task_rows(env, width):
    from envs_glue import make_env
    rows = make_env(env).unwrapped.tasks
    assert algorithm_class("sac-true-task").default_config(env).latent_dim == rows.shape[1] == (width or rows.shape[1])


def test_acting_reads_the_current_tasks_row(tmp_path):
    trainer = make_trainer("point-robot", tmp_path / "run", "sac-true-task")
    env, agent = trainer.env.unwrapped, trainer.algorithm.agent
    for task in (0, 7, env.test_task_ids[3], env.validation_task_ids[-1]):
        env.reset_task(task)
        agent.clear_context()
        np.testing.assert_array_equal(agent.z.numpy(), env.tasks[task][None].astype(np.float32))
        agent.infer_posterior(torch.zeros(1, 5, agent.context_dim))  # after an episode: still the task, not the context
        np.testing.assert_array_equal(agent.z.numpy(), env.tasks[task][None].astype(np.float32))


def test_each_replayed_sample_is_conditioned_on_its_own_tasks_row(tmp_path, monkeypatch):
    trainer = make_trainer("point-robot", tmp_path / "run", "sac-true-task")
    algorithm = trainer.algorithm
    algorithm.collect_initial_data()
    # the step's first draw is its meta-batch of tasks: the same draw from a copy of the generator gives them
    tasks = copy.deepcopy(algorithm.rng).choice(algorithm.train_tasks, size=algorithm.protocol.meta_batch)
    seen = {}
    update = algorithm.sac_update
    monkeypatch.setattr(algorithm, "sac_update",
                        lambda batch, z, next_z, losses: seen.update(z=z, next_z=next_z) or update(batch, z, next_z, losses))
    algorithm.train_step()
    batch_size = algorithm.protocol.batch_size
    expected = np.repeat(trainer.env.unwrapped.tasks[tasks], batch_size, axis=0).astype(np.float32)
    np.testing.assert_array_equal(seen["z"].numpy(), expected)
    assert seen["next_z"] is seen["z"]  # the task does not change within a transition
    assert "encoder" not in algorithm.optimizers  # nothing to infer, nothing to train but SAC


def test_a_latent_width_other_than_the_task_rows_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="latent_dim must be 2"):
        make_trainer("point-robot", tmp_path / "run", "sac-true-task", overrides=["latent_dim=5"])


def test_it_trains_and_is_a_reference_line(tmp_path):
    results = make_trainer("cheetah-vel", tmp_path / "run", "sac-true-task").run()
    assert np.isfinite(results["meta_test_return"]) and np.isfinite(results["final_eval"]["validation_return"])
    assert algorithm_class("sac-true-task").role == "reference"


def test_latents_read_from_the_buffer_are_each_tasks_own_row(tmp_path):
    from experiments.analysis import task_latents
    trainer = make_trainer("point-robot", tmp_path / "run", "sac-true-task")
    trainer.algorithm.collect_initial_data()
    latents = task_latents(trainer, [0, 3, 5], context_size=4, num_samples=2, source="buffer")
    rows = trainer.env.unwrapped.tasks[[0, 3, 5]].astype(np.float32)
    np.testing.assert_array_equal(latents, np.repeat(rows[:, None], 2, axis=1))
