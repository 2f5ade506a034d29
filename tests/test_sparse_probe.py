"""experiments.sparse_probe: exact bookkeeping of the split (found / not found, training contexts with and without
reward), and an end-to-end run on a real smoke cell whose meta-test trials are the protocol's episodes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from experiments import sparse_probe
from tests.conftest import train_smoke_cell


def test_summarize_splits_trials_by_whether_exploration_found_the_goal():
    trials = [  # two exploration episodes, then two scored ones
        {"returns": [0.0, 5.0, 9.0, 11.0], "end_angles": [10.0, 50.0, 50.0, 50.0], "end_radii": [1.0, 1.0, 1.0, 1.0]},
        {"returns": [0.0, 0.0, 0.0, 0.0], "end_angles": [100.0, 140.0, 90.0, 90.0], "end_radii": [0.5, 0.5, 0.7, 0.7]},
        {"returns": [0.0, 0.0, 0.0, 3.0], "end_angles": [30.0, 170.0, 60.0, 60.0], "end_radii": [1.0, 0.5, 1.0, 1.0]},
    ]
    probe = [{"rewarding_share": 0.6, "return": 12.0, "angle_error": 4.0},
             {"rewarding_share": 0.0, "return": 0.0, "angle_error": 40.0},
             {"rewarding_share": 0.0, "return": 2.0, "angle_error": 20.0}]
    s = sparse_probe.summarize(trials, probe, num_exp_traj_eval=2)
    assert s["trials"] == 3
    assert s["meta_test_return"] == pytest.approx((11.0 + 0.0 + 3.0) / 3)
    assert s["found_share"] == pytest.approx(1 / 3)
    assert s["final_return_if_found"] == pytest.approx(11.0)
    assert s["final_return_if_not_found"] == pytest.approx(1.5)   # a lucky final episode counts as not found
    assert s["final_scored_share"] == pytest.approx(2 / 3)
    assert s["exploration_end_radius"] == pytest.approx((1 + 1 + 0.5 + 0.5 + 1 + 0.5) / 6)
    assert s["train_tasks_with_reward_in_context"] == 1
    assert s["train_return_with_reward"] == 12.0 and s["train_return_without_reward"] == 1.0
    assert s["train_angle_error_with_reward"] == 4.0 and s["train_angle_error_without_reward"] == 30.0


def test_summarize_leaves_empty_groups_empty():
    trials = [{"returns": [0.0, 0.0], "end_angles": [0.0, 0.0], "end_radii": [0.0, 0.0]}]
    s = sparse_probe.summarize(trials, [{"rewarding_share": 0.0, "return": 0.0, "angle_error": 1.0}], 1)
    assert s["final_return_if_found"] is None and s["train_return_with_reward"] is None


def test_arc_angle():
    assert sparse_probe.arc_angle([1.0, 0.0]) == 0.0
    assert sparse_probe.arc_angle([0.0, 1.0]) == pytest.approx(90.0)
    assert sparse_probe.arc_angle([-1.0, 0.0]) == pytest.approx(180.0)


@pytest.fixture(scope="module")
def pearl_cell(tmp_path_factory) -> Path:
    return train_smoke_cell(tmp_path_factory.mktemp("probe") / "cell", "sparse-point-robot", "pearl")

def test_probe_on_a_smoke_cell(pearl_cell, tmp_path):
    out = tmp_path / "out"
    threads = torch.get_num_threads()
    try:
        assert sparse_probe.main([str(pearl_cell), "--out", str(out), "--repeats", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    report = json.loads((out / "sparse_probe.json").read_text())
    assert {"command", "git_commit", "machine", "generated_at"} <= set(report)
    cell = report["cells"][0]
    config = json.loads((pearl_cell / "config.json").read_text())
    assert cell["algo"] == "pearl" and cell["seed"] == 0
    assert len(cell["meta_test_trials"]) == 10 * 2                           # 10 held-out tasks x 2 trials
    assert all(len(t["returns"]) == 400 // 20 for t in cell["meta_test_trials"])
    assert [row["task"] for row in cell["training_context_probe"]] == list(range(40))
    shares = [row["rewarding_share"] for row in cell["training_context_probe"]]
    assert all(0.0 <= share <= 1.0 for share in shares)
    assert cell["summary"]["train_tasks"] == 40
    assert config["protocol"]["num_exp_traj_eval"] == 5
    assert "pearl seed 0" in (out / "SPARSE_PROBE.md").read_text()


def test_probe_refuses_a_cell_without_checkpoint(tmp_path):
    with pytest.raises(SystemExit):
        sparse_probe.main([str(tmp_path), "--out", str(tmp_path / "out")])
