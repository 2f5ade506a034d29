"""A finished run keeps its agent's weights (agent.pt) beside results.json: with the checkpoint gone, as in a fresh
clone, the run is evaluated again from them and reproduces its recorded figures exactly."""
from __future__ import annotations

import json

import pytest
import torch

from algos.core.io import CheckpointError
from algos.core.trainer import AGENT_WEIGHTS_FILE, Trainer
from tests.conftest import train_smoke_cell


@pytest.mark.parametrize("algo", ["setformer", "pearl", "focal", "varibad"])
def test_agent_weights_alone_reproduce_the_final_evaluation(tmp_path, algo):
    run_dir = train_smoke_cell(tmp_path / "run", "point-robot", algo)
    results = json.loads((run_dir / "results.json").read_text())
    weights = torch.load(run_dir / AGENT_WEIGHTS_FILE, weights_only=False)
    assert not any(key.startswith(("qf", "vf", "critic")) for key in weights["agent"])  # the critic is not kept
    (run_dir / "checkpoint.pt").unlink()  # what a fresh clone has: results, config, metrics and agent.pt
    trainer = Trainer.from_run_dir(run_dir, progress=False, load_weights=True)
    test = trainer.final_evaluation()
    validation = trainer.final_evaluation(split="validation")
    assert test.meta_test_return == results["final_eval"]["meta_test_return"]
    assert validation.meta_test_return == results["final_eval"]["validation_return"]


def test_agent_weights_of_another_run_are_refused(tmp_path):
    first = train_smoke_cell(tmp_path / "first", "point-robot", "pearl", seed=0)
    second = train_smoke_cell(tmp_path / "second", "point-robot", "pearl", seed=1)
    (second / "checkpoint.pt").unlink()
    (second / AGENT_WEIGHTS_FILE).write_bytes((first / AGENT_WEIGHTS_FILE).read_bytes())
    with pytest.raises(CheckpointError, match="another run: seed"):
        Trainer.from_run_dir(second, progress=False, load_weights=True)


def test_the_analysis_and_reevaluation_read_a_run_that_kept_only_its_agent_weights(tmp_path):
    from experiments import analysis
    from experiments.reevaluate import reevaluate_cell

    run_dir = train_smoke_cell(tmp_path / "runs" / "point-robot" / "setformer" / "0-x", "point-robot", "setformer")
    (run_dir / "checkpoint.pt").unlink()
    assert analysis.find_latest_run("setformer", "point-robot", root=tmp_path) == run_dir
    assert "agent.pt present" in analysis.describe_run(run_dir)
    trainer = analysis.load_run(run_dir)
    test_ids = list(trainer.env.unwrapped.test_task_ids[:2])
    assert analysis.task_latents(trainer, test_ids, num_samples=2, seed=0).shape[:2] == (2, 2)
    with pytest.raises(ValueError, match="encoder buffer"):  # replay contexts need the checkpoint
        analysis.task_latents(trainer, [0], num_samples=2, seed=0, source="buffer")
    results = json.loads((run_dir / "results.json").read_text())
    entry = reevaluate_cell(run_dir, [], 1, 1)
    assert entry["meta_test_return"] == results["final_eval"]["meta_test_return"]  # as trained, 1 repeat
