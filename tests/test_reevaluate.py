"""experiments.reevaluate on a real smoke cell: the as-trained variant reproduces the cell's recorded final
evaluation, variants change only acting, overrides outside the inference-time groups are refused, and a rerun
skips what is done."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from algos.core.config import ConfigError
from algos.setformer import Acting
from experiments import reevaluate
from tests.conftest import train_smoke_cell


@pytest.fixture(scope="module")
def smoke_root(tmp_path_factory) -> Path:
    """A benchmark root holding one finished setformer cell, laid out as the benchmark runner writes it."""
    root = tmp_path_factory.mktemp("reeval")
    train_smoke_cell(root / "smoke" / "cells" / "sparse-point-robot" / "setformer" / "0", "sparse-point-robot",
                     "setformer")
    return root


def _run(root: Path, *extra: str) -> dict:
    threads = torch.get_num_threads()
    try:
        assert reevaluate.main(["--tier", "smoke", "--envs", "sparse-point-robot", "--seeds", "0",
                                "--root", str(root), *extra]) == 0
    finally:
        torch.set_num_threads(threads)
    return json.loads((root / "smoke" / "reevaluations_setformer.json").read_text())


def test_as_trained_reproduces_the_recorded_final_eval_and_variants_are_paired(smoke_root):
    report = _run(smoke_root)
    entries = report["cells"]["sparse-point-robot"]["0"]
    assert list(entries) == list(reevaluate.SETFORMER_VARIANTS)
    as_trained = entries["as-trained"]
    assert as_trained["recorded_final_eval"] is not None
    assert as_trained["meta_test_return"] == pytest.approx(as_trained["recorded_final_eval"], abs=1e-9)
    # without the fallback (or without hypotheses) the agent never acts on a hypothesis after adapt()
    assert entries["no-fallback"]["fallback_share"] == 0.0
    assert entries["no-thompson"]["fallback_share"] == 0.0
    assert 0.0 <= as_trained["fallback_share"] <= 1.0
    for entry in entries.values():
        assert entry["num_repeats"] == 1  # the smoke tier's final_eval_repeats
        assert len(entry["per_task_final_returns"]) == 10
    markdown = (smoke_root / "smoke" / "REEVALUATIONS_setformer.md").read_text()
    assert "| no-fallback | `exploration.fallback=false` |" in markdown
    assert "## sparse-point-robot" in markdown
    # one seed: a paired difference but no test of it against seed noise
    row = next(line for line in markdown.splitlines() if line.startswith("| no-fallback |") and "`" not in line)
    assert row.split(" | ")[3] == "—" and "| beyond seed noise |" in markdown


def test_rerun_skips_finished_entries(smoke_root, monkeypatch):
    _run(smoke_root)
    calls = []
    monkeypatch.setattr(reevaluate, "reevaluate_cell", lambda *a, **k: calls.append(a))
    _run(smoke_root)
    assert calls == []
    # the default repeats are the cell's own, so asking for them explicitly is the same request
    _run(smoke_root, "--repeats", "1")
    assert calls == []


def test_a_rerun_cell_is_reevaluated_and_a_removed_one_forgotten(smoke_root, tmp_path, monkeypatch):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(smoke_root, root)
    report = _run(root)
    cell = root / "smoke" / "cells" / "sparse-point-robot" / "setformer" / "0"
    entries = report["cells"]["sparse-point-robot"]["0"]
    results = json.loads((cell / "results.json").read_text())
    assert all(e["cell"] == {"git_commit": results["git_commit"], "finished_at": results["finished_at"]}
               for e in entries.values())

    calls = []
    monkeypatch.setattr(reevaluate, "reevaluate_cell",
                        lambda *a, **k: calls.append(a) or {**entries["as-trained"], "cell": "new"})
    # entries made before cells were identified still describe the cell that reproduces their figures
    legacy = {**report, "cells": {"sparse-point-robot": {"0": {
        name: {k: v for k, v in e.items() if k != "cell"} for name, e in entries.items()}}}}
    (root / "smoke" / "reevaluations_setformer.json").write_text(json.dumps(legacy))
    _run(root)
    assert calls == []
    # the same seed rerun (another finished_at): every variant is evaluated again on the new weights
    (root / "smoke" / "reevaluations_setformer.json").write_text(json.dumps(report))
    (cell / "results.json").write_text(json.dumps({**results, "finished_at": "2099-01-01T00:00:00+00:00"}))
    _run(root)
    assert len(calls) == len(reevaluate.SETFORMER_VARIANTS)
    # a cell that is gone: its figures are dropped rather than reported for weights nobody has
    shutil.rmtree(cell)
    assert "0" not in _run(root)["cells"].get("sparse-point-robot", {})
    assert "0" not in _run(root)["own_embedding"].get("sparse-point-robot", {})


def test_other_repeats_are_a_new_request(smoke_root):
    report = _run(smoke_root, "--repeats", "2", "--variant", "as-trained")
    entry = report["cells"]["sparse-point-robot"]["0"]["as-trained"]
    assert entry["num_repeats"] == 2
    assert entry["recorded_final_eval"] is None  # the cell's own figure used 1 repeat: not comparable


def test_training_overrides_are_refused(smoke_root):
    run_dir = smoke_root / "smoke" / "cells" / "sparse-point-robot" / "setformer" / "0"
    with pytest.raises(ConfigError, match="embedding_batch_fraction=0.*not an inference-time setting"):
        reevaluate.reevaluate_cell(run_dir, ["embedding_batch_fraction=0"], None, 1)
    with pytest.raises(ConfigError, match="unknown config key"):
        reevaluate.reevaluate_cell(run_dir, ["exploration.no_such_key=1"], None, 1)
    with pytest.raises(ConfigError, match="protocol.batch_size=8.*not an inference-time setting"):
        reevaluate.reevaluate_cell(run_dir, ["protocol.batch_size=8"], None, 1)


def test_deterministic_exploration_is_an_evaluation_only_setting(smoke_root, monkeypatch):
    """Accepted as an override, and it makes the exploration episodes act on the mean action: as trained, the
    protocol's exploration episodes act stochastically and only the later ones deterministically."""
    from algos.core import evaluation
    run_dir = smoke_root / "smoke" / "cells" / "sparse-point-robot" / "setformer" / "0"
    flags: list[bool] = []
    rollout = evaluation.rollout

    def recording_rollout(*args, deterministic, **kwargs):
        flags.append(deterministic)
        return rollout(*args, deterministic=deterministic, **kwargs)

    monkeypatch.setattr(evaluation, "rollout", recording_rollout)
    threads = torch.get_num_threads()
    try:
        reevaluate.reevaluate_cell(run_dir, [], None, 1)
        as_trained_flags, flags[:] = flags[:], []
        entry = reevaluate.reevaluate_cell(run_dir, ["protocol.deterministic_exploration=true"], None, 1)
    finally:
        torch.set_num_threads(threads)
    assert len(entry["per_task_final_returns"]) == 10 and entry["num_repeats"] == 1
    assert len(flags) == len(as_trained_flags) > 10  # the same episodes, several per task
    assert all(flags) and True in as_trained_flags and False in as_trained_flags


def test_variant_arguments_are_checked():
    with pytest.raises(SystemExit):
        reevaluate.parse_args(["--variant", "a", "--variant", "a", "exploration.fallback=false"])
    with pytest.raises(SystemExit):
        reevaluate.parse_args(["--variant", "exploration.fallback=false"])
    args = reevaluate.parse_args(["--algo", "pearl"])
    assert args.variants == [["as-trained"]]


def test_own_embedding_figure_acts_on_each_training_tasks_latent(smoke_root):
    from algos.core.sampler import rollout
    from experiments.analysis import load_run
    run_dir = smoke_root / "smoke" / "cells" / "sparse-point-robot" / "setformer" / "0"
    threads = torch.get_num_threads()
    try:
        first = reevaluate.own_embedding_return(run_dir, episodes=1, threads=1)
        again = reevaluate.own_embedding_return(run_dir, episodes=1, threads=1)
        trainer = load_run(run_dir)
    finally:
        torch.set_num_threads(threads)
    assert first["per_task_returns"] == again["per_task_returns"]  # seeded: the same episodes
    assert first["num_tasks"] == len(trainer.algorithm.train_tasks)
    # acting on a latent: no exploration sampling, no inference; z stays the given latent through an episode
    agent = trainer.algorithm.agent
    latent = agent.hypotheses[3]
    trainer.env.unwrapped.reset_task(3)
    agent.clear_context()
    agent.act_on(latent)
    rollout(trainer.env, agent, trainer.algorithm.max_path_length, deterministic=True)
    assert torch.equal(agent.z, latent[None]) and agent.acting is Acting.ON_TASK_EMBEDDING

    report = _run(smoke_root, "--own-embedding-episodes", "1")
    assert report["own_embedding"]["sparse-point-robot"]["0"]["per_task_returns"] == first["per_task_returns"]
    assert "**Known task, no inference**" in (smoke_root / "smoke" / "REEVALUATIONS_setformer.md").read_text()
