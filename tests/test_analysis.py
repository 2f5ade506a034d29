"""The analysis helpers behind the notebooks, and the notebooks themselves, on real smoke runs.

Two smoke runs (setformer and PEARL on point-robot) are trained once per module through the real CLI; every test
then loads them the way a notebook does. The notebooks' code cells are executed in order without Jupyter, with
``RUN_DIR`` pointed at the smoke run, so a notebook that drifts from ``experiments.analysis`` fails here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from experiments import analysis  # noqa: E402
from tests.conftest import train_smoke_cell  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {name: REPO_ROOT / "experiments" / "notebooks" / f"{name}.ipynb"
             for name in ("attention_maps", "latent_space")}
NUM_STEPS_PER_EVAL, EPISODE_LENGTH = 60, 20  # point-robot protocol: 3 episodes, the first explores


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analysis_runs")
    return {algo: train_smoke_cell(root / algo, "point-robot", algo) for algo in ("setformer", "pearl")}


@pytest.fixture(scope="module")
def setformer_trainer(smoke_runs):
    return analysis.load_run(smoke_runs["setformer"])


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ---------------------------------------------------------------------------------------------- loading
def test_load_run_restores_the_checkpointed_weights(smoke_runs):
    run_dir = smoke_runs["setformer"]
    metrics_before = (run_dir / "metrics.jsonl").read_bytes()
    trainer = analysis.load_run(run_dir)
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=False)["algorithm"]["agent"]
    for name, tensor in trainer.algorithm.agent.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    assert trainer.config.algo == "setformer" and trainer.start_iteration == 2
    assert (run_dir / "metrics.jsonl").read_bytes() == metrics_before  # analysis never writes into the run


def test_load_run_errors_name_what_is_missing(tmp_path, smoke_runs):
    with pytest.raises(FileNotFoundError, match="run directory not found"):
        analysis.load_run(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        analysis.load_run(tmp_path)
    cleaned = tmp_path / "cleaned"
    cleaned.mkdir()
    for name in ("config.json", "results.json"):
        (cleaned / name).write_bytes((smoke_runs["setformer"] / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        analysis.load_run(cleaned)
    assert "no checkpoint.pt or agent.pt" in analysis.describe_run(cleaned)
    with pytest.raises(FileNotFoundError, match="no run directory given"):
        analysis.load_run(None)


def test_find_latest_run_prefers_runs_that_still_have_their_checkpoint(tmp_path, smoke_runs):
    older = tmp_path / "runs" / "point-robot" / "setformer" / "0-a"
    newer = tmp_path / "benchmarks" / "quick" / "cells" / "point-robot" / "setformer" / "42"
    for run_dir in (older, newer):
        run_dir.mkdir(parents=True)
        (run_dir / "config.json").write_text("{}")
    (older / "checkpoint.pt").write_bytes(b"")
    assert analysis.find_latest_run("setformer", root=tmp_path) == older   # newer lost its checkpoint
    (older / "checkpoint.pt").unlink()
    os.utime(older / "config.json", (1_000_000, 1_000_000))  # neither has weights: the newest config wins
    assert analysis.find_latest_run("setformer", "point-robot", root=tmp_path) == newer
    os.utime(newer / "config.json", (500_000, 500_000))
    assert analysis.find_latest_run("setformer", "point-robot", root=tmp_path) == older
    assert analysis.find_latest_run("pearl", root=tmp_path) is None


# ---------------------------------------------------------------------------------------------- replaying
def test_record_episodes_follows_the_protocol_and_keeps_the_trajectories(setformer_trainer):
    trainer = setformer_trainer
    task = trainer.env.unwrapped.test_task_ids[0]
    record = analysis.record_episodes(trainer, task, seed=3)
    num_episodes = NUM_STEPS_PER_EVAL // EPISODE_LENGTH
    assert len(record["obs"]) == len(record["rewards"]) == len(record["attention"]) == num_episodes == 3
    assert record["exploring"] == [True, False, False] and record["adapted"] == [True, True, True]
    for episode in range(num_episodes):
        assert record["obs"][episode].shape == (EPISODE_LENGTH, 2)
        assert record["next_obs"][episode].shape == (EPISODE_LENGTH, 2)
        assert record["actions"][episode].shape == (EPISODE_LENGTH, 2)
        assert record["rewards"][episode].shape == (EPISODE_LENGTH,)
        # pooling weights after the adapt() that followed this episode: (heads, seeds, tokens so far)
        config = trainer.config.agent
        assert record["attention"][episode].shape == (config.num_heads, config.num_seeds,
                                                      EPISODE_LENGTH * (episode + 1))
        assert record["z"][episode].shape == (config.latent_dim,)
    assert record["context"].shape == (1, NUM_STEPS_PER_EVAL, trainer.algorithm.agent.context_dim)
    # the context's reward column is what the agent saw, in order
    context_rewards = record["context"][0, :, -1].numpy()
    np.testing.assert_allclose(context_rewards, analysis.context_rewards(record, num_episodes), rtol=1e-6)
    np.testing.assert_allclose(record["returns"], [r.sum() for r in record["rewards"]], rtol=1e-6)
    np.testing.assert_allclose(record["task"], trainer.env.unwrapped.tasks[task])
    # same seed, same replay; and the trainer's own random streams are left where they were
    env_state = trainer.env.unwrapped.np_random.bit_generator.state
    again = analysis.record_episodes(trainer, task, seed=3)
    np.testing.assert_array_equal(np.concatenate(again["obs"]), np.concatenate(record["obs"]))
    assert trainer.env.unwrapped.np_random.bit_generator.state == env_state


def test_attention_is_a_distribution_over_the_context(setformer_trainer):
    trainer = setformer_trainer
    record = analysis.record_episodes(trainer, trainer.env.unwrapped.test_task_ids[1], seed=0)
    weights = analysis.mean_attention(trainer.algorithm.agent.attention_weights[0])  # the last adapt(): whole context
    assert weights.shape == (record["context"].shape[1],) == (NUM_STEPS_PER_EVAL,)
    assert weights.sum() == pytest.approx(1.0, abs=1e-5) and (weights >= 0).all()
    np.testing.assert_allclose(weights, analysis.attention_after(record, 3), rtol=1e-6)
    stages = analysis.attention_stages(record)
    assert stages == {"after exploration": 1, "after the final episode": 3}
    assert analysis.attention_after(record, 1).shape == (EPISODE_LENGTH,)
    shares = analysis.attention_per_episode(weights, EPISODE_LENGTH)
    assert shares.shape == (3,) and shares.sum() == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------------------------- latents
@pytest.mark.parametrize("algo", ["setformer", "pearl"])
def test_task_latents_shapes_for_any_agent(smoke_runs, algo):
    trainer = analysis.load_run(smoke_runs[algo])
    meta_env = trainer.env.unwrapped
    latent_dim = trainer.config.agent.latent_dim
    tasks = [meta_env.train_task_ids[0], meta_env.train_task_ids[1], meta_env.test_task_ids[0]]
    latents = analysis.task_latents(trainer, tasks, context_size=EPISODE_LENGTH, num_samples=3, seed=1)
    assert latents.shape == (3, 3, latent_dim) and np.isfinite(latents).all()
    buffered = analysis.task_latents(trainer, tasks[:2], context_size=16, num_samples=2, seed=1, source="buffer")
    assert buffered.shape == (2, 2, latent_dim) and np.isfinite(buffered).all()
    with pytest.raises(ValueError, match="held out"):
        analysis.task_latents(trainer, tasks, source="buffer")
    # posterior_mean drops PEARL's sampling of z from its belief; setformer's z is deterministic anyway
    means = analysis.task_latents(trainer, tasks[:2], context_size=16, num_samples=2, seed=1, source="buffer",
                                  posterior_mean=True)
    assert np.allclose(means, buffered) == (algo == "setformer")
    assert trainer.algorithm.agent.context.shape[1] == 0  # left with a cleared context, as the harness expects


def test_task_latents_respond_to_the_context(setformer_trainer):
    """A deterministic encoder maps one context to one z, and different tasks to different ones."""
    latents = analysis.task_latents(setformer_trainer, [0, 1], num_samples=2, seed=5, source="buffer")
    assert not np.allclose(latents[0, 0], latents[1, 0])
    again = analysis.task_latents(setformer_trainer, [0, 1], num_samples=2, seed=5, source="buffer")
    np.testing.assert_allclose(again, latents, rtol=1e-6)


def test_project_2d_is_pca():
    rng = np.random.default_rng(0)
    # latents on a tilted plane in 6-D plus tiny noise: PCA must recover the plane's 2 dimensions
    basis = np.linalg.qr(rng.normal(size=(6, 2)))[0].T                  # (2, 6), orthonormal rows
    coords = rng.normal(size=(4, 5, 2)) * np.array([3.0, 1.0])
    latents = coords @ basis + 1e-6 * rng.normal(size=(4, 5, 6)) + 7.0
    projected, explained = analysis.project_2d(latents, return_explained=True)
    assert projected.shape == (4, 5, 2)
    assert explained.sum() == pytest.approx(1.0, abs=1e-6) and explained[0] > explained[1]
    # distances are preserved (up to the noise)
    flat_p, flat_c = projected.reshape(-1, 2), coords.reshape(-1, 2)
    dist = lambda x: np.linalg.norm(x[:, None] - x[None], axis=-1)  # noqa: E731
    np.testing.assert_allclose(dist(flat_p), dist(flat_c), atol=1e-4)
    assert analysis.project_2d(np.zeros((3, 2, 5))).shape == (3, 2, 2)   # a zero latent (sac-no-context)
    assert analysis.project_2d(rng.normal(size=(7, 1))).shape == (7, 2)   # width 1: padded


def test_linear_probe_and_spread():
    rng = np.random.default_rng(1)
    goals = rng.uniform(-1, 1, size=(10, 2))
    latents = np.repeat(goals @ rng.normal(size=(2, 4)), 3, axis=0).reshape(10, 3, 4)
    assert analysis.linear_probe_r2(latents, goals) == pytest.approx(1.0)
    assert analysis.linear_probe_r2(latents[:6], goals[:6], latents[6:], goals[6:]) == pytest.approx(1.0)
    assert analysis.linear_probe_r2(rng.normal(size=(10, 3, 4)), goals) < 0.5
    within, between = analysis.latent_spread(latents)
    assert within == pytest.approx(0.0, abs=1e-12) and between > 0


# ---------------------------------------------------------------------------------------------- plots
def test_plotting_functions_draw(setformer_trainer):
    trainer = setformer_trainer
    task_ids = trainer.env.unwrapped.test_task_ids[:2]
    record = analysis.record_episodes(trainer, task_ids[0], seed=0)
    weights = analysis.attention_after(record, 3)
    fig, axes = plt.subplots(1, 3)
    analysis.plot_attention_on_plane(axes[0], analysis.context_positions(record, 3), weights, record["task"],
                                     goal_radius=0.2, episode_length=EPISODE_LENGTH, title="plane")
    _, reward_ax = analysis.plot_attention_bars(axes[1], weights, analysis.context_rewards(record, 3),
                                                episode_length=EPISODE_LENGTH, title="bars")
    projected = analysis.project_2d(analysis.task_latents(trainer, task_ids, num_samples=2))
    goals = trainer.env.unwrapped.tasks[task_ids]
    angles = analysis.task_parameters(trainer, task_ids)                 # point-robot: the goal's angle
    np.testing.assert_allclose(angles, np.arctan2(goals[:, 1], goals[:, 0]))
    analysis.plot_latents(axes[2], projected, angles,
                          analysis.task_parameter_label(trainer), cmap=analysis.task_parameter_cmap(trainer))
    fig.canvas.draw()
    assert len(axes[0].collections) >= 2 and len(axes[1].patches) == NUM_STEPS_PER_EVAL
    assert len(reward_ax.lines) == 1 and len(axes[2].collections) == 1
    with pytest.raises(ValueError):
        analysis.plot_attention_bars(axes[1], weights, np.zeros(3))
    with pytest.raises(ValueError):
        analysis.plot_attention_on_plane(axes[0], np.zeros((3, 2)), weights, record["task"])


# ---------------------------------------------------------------------------------------------- notebooks
def _code_cells(path: Path) -> list[tuple[list[str], str]]:
    notebook = json.loads(path.read_text())
    assert notebook["nbformat"] == 4
    cells = [(cell.get("metadata", {}).get("tags", []),
              "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"])
             for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert any(cell["cell_type"] == "markdown" for cell in notebook["cells"])
    return cells


@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_notebook_runs_under_a_real_kernel(name, smoke_runs, tmp_path, monkeypatch):
    """Each notebook executed top to bottom by nbclient in a real IPython kernel (magics and all), with the run
    injected papermill-style right after the cell tagged ``parameters``."""
    import nbformat
    from nbclient import NotebookClient

    cells = _code_cells(NOTEBOOKS[name])
    assert cells and any("parameters" in tags for tags, _ in cells), "a cell tagged 'parameters' sets RUN_DIR"
    assert "import experiments.analysis" in cells[0][1], "the notebooks' logic lives in experiments.analysis"
    notebook = nbformat.read(NOTEBOOKS[name], as_version=4)
    position = next(i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", []))
    injected = f"RUN_DIR = {str(smoke_runs['setformer'])!r}\nNUM_SAMPLES = 2\nSEED = 0\n"
    notebook.cells.insert(position + 1, nbformat.v4.new_code_cell(injected))
    notebook.cells.append(nbformat.v4.new_code_cell("print('RUN_DIR_USED', run_dir)\nprint('FIGURES', len(plt.get_fignums()))"))
    # the kernel starts in a scratch folder, as a notebook opened from anywhere: its first cell finds the repository
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    NotebookClient(notebook, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    output = "".join(out.get("text", "") for out in notebook.cells[-1].outputs)
    assert f"RUN_DIR_USED {smoke_runs['setformer'].resolve()}" in output
    figures = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
               if "image/png" in out.get("data", {})]
    assert figures or int(output.split("FIGURES")[1].split()[0]) > 0, "the notebook drew no figure"


def test_fresh_clone_notebook_trains_a_smoke_run(tmp_path, capsys):
    """With no run that has a checkpoint (a fresh clone), the notebooks' finder trains a smoke run to show."""
    run_dir = analysis.find_or_train_run("setformer", None, root=tmp_path)
    assert (run_dir / "checkpoint.pt").exists() and run_dir.is_relative_to(tmp_path / "runs")
    assert "training a smoke-tier run" in capsys.readouterr().out
    assert analysis.find_or_train_run("setformer", None, root=tmp_path) == run_dir  # found, not trained again
