"""End-to-end training runs: outputs, determinism, kill-and-resume, corrupt checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import algos.core.trainer as trainer_module
from algos.core.config import ConfigError
from algos.core.io import CheckpointError, load_checkpoint
from algos.core.trainer import Trainer, build_config
from experiments import run as cli
from tests.conftest import make_trainer, read_metrics, strip_nondeterministic

RESULT_KEYS = {"meta_test_return", "env_steps", "grad_steps", "wall_time_s", "parameter_count", "final_eval",
               "online_returns", "learning_curve", "config", "git_commit", "machine"}
RESUME_OVERRIDES = ["num_iterations=4"]


def tb_scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def check_run_dir(run_dir: Path, num_iterations: int, env_steps: int, grad_steps: int) -> dict:
    assert (run_dir / "config.json").is_file()
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["protocol"]["num_iterations"] == num_iterations and saved["run_dir"] == str(run_dir)
    rows = read_metrics(run_dir)
    assert [row["iteration"] for row in rows] == list(range(num_iterations))
    for row in rows:
        assert {"env_steps", "grad_steps", "wall_time_s", "meta_test_return", "train/qf_loss"} <= set(row)
        assert np.isfinite(row["meta_test_return"]) and np.isfinite(row["train/qf_loss"])
    assert rows[-1]["env_steps"] == env_steps and rows[-1]["grad_steps"] == grad_steps
    assert [row["wall_time_s"] for row in rows] == sorted(row["wall_time_s"] for row in rows)
    events = list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert events and all(e.stat().st_size > 0 for e in events)
    assert [step for step, _ in tb_scalars(run_dir, "meta_test_return")] == list(range(num_iterations))
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert checkpoint["iteration"] == num_iterations - 1
    results = json.loads((run_dir / "results.json").read_text())
    assert RESULT_KEYS <= set(results)
    assert results["meta_test_return"] == rows[-1]["meta_test_return"]
    assert results["env_steps"] == env_steps and results["grad_steps"] == grad_steps
    assert results["wall_time_s"] > 0 and isinstance(results["parameter_count"], int)
    assert [r["iteration"] for r in results["learning_curve"]] == list(range(num_iterations))
    return results


# ---------------------------------------------------------------------- end-to-end through the CLI
# smoke: initial = every training task x one episode; each iteration 2 tasks x (prior + posterior + extra)
@pytest.mark.parametrize("env, extra_args, env_steps, obs_dim", [
    ("point-robot", [], 40 * 20 + 2 * 2 * (20 + 0 + 20), 2),
    ("sparse-point-robot", [], 40 * 20 + 2 * 2 * (20 + 20 + 0), 2),
    # cheetah: shorter evaluation (one scored episode per task) keeps this test to a few seconds
    ("cheetah-vel", ["--set", "num_steps_per_eval=200", "--set", "num_exp_traj_eval=0"],
     30 * 200 + 2 * 2 * (200 + 0 + 200), 20),
])
def test_smoke_run_end_to_end(capsys, tmp_path, env, extra_args, env_steps, obs_dim):
    run_dir = tmp_path / env
    code = cli.main(["--env", env, "--algo", "sac-no-context", "--tier", "smoke", "--seed", "3", "--no-progress",
                     "--run-dir", str(run_dir), *extra_args])
    out = capsys.readouterr().out
    assert code == 0
    results = check_run_dir(run_dir, num_iterations=2, env_steps=env_steps, grad_steps=2 * 3)
    summary = json.loads(out.splitlines()[0])
    assert summary["env"] == env and summary["seed"] == 3 and summary["env_steps"] == env_steps
    assert summary["final_eval_meta_test_return"] == results["final_eval"]["meta_test_return"]
    assert str(run_dir) in out
    assert results["config"]["env"] == env and results["tier"] == "smoke"
    if env == "sparse-point-robot":   # reported returns are sparse: never negative
        assert results["meta_test_return"] >= 0
    if env == "point-robot":
        # actor/critic width 300, 3 hidden layers, latent 5: policy + 2 Q + V (the target V is not counted)
        policy = (2 + 5) * 300 + 300 + 2 * (300 * 300 + 300) + 2 * (300 * 2 + 2)
        qf = (2 + 2 + 5) * 300 + 300 + 2 * (300 * 300 + 300) + 301
        vf = (2 + 5) * 300 + 300 + 2 * (300 * 300 + 300) + 301
        assert results["parameter_count"] == policy + 2 * qf + vf == 735307


def test_default_run_dir_layout(tmp_path):
    config = build_config("point-robot", "sac-no-context", "smoke", 42, [f"run_root={tmp_path}"])
    trainer = Trainer(config, progress=False)
    assert trainer.run_dir.parent == tmp_path / "point-robot" / "sac-no-context"
    assert trainer.run_dir.name.startswith("42-")
    assert config.run_dir == str(trainer.run_dir)


# ---------------------------------------------------------------------- determinism and resume
@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """An uninterrupted 4-iteration point-robot smoke run."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    results = make_trainer("point-robot", run_dir, seed=7, overrides=RESUME_OVERRIDES).run()
    return run_dir, results


def test_identical_runs_are_identical(reference_run, tmp_path):
    ref_dir, ref_results = reference_run
    results = make_trainer("point-robot", tmp_path / "again", seed=7, overrides=RESUME_OVERRIDES).run()
    assert strip_nondeterministic(read_metrics(tmp_path / "again")) == strip_nondeterministic(read_metrics(ref_dir))
    assert results["final_eval"] == ref_results["final_eval"]
    ref_ckpt = load_checkpoint(ref_dir / "checkpoint.pt")["algorithm"]["agent"]
    new_ckpt = load_checkpoint(tmp_path / "again" / "checkpoint.pt")["algorithm"]["agent"]
    assert all(torch.equal(ref_ckpt[k], new_ckpt[k]) for k in ref_ckpt)


def test_different_seed_differs(reference_run, tmp_path):
    ref_dir, _ = reference_run
    make_trainer("point-robot", tmp_path / "other", seed=8, overrides=["num_iterations=1"]).run()
    a, b = read_metrics(tmp_path / "other")[0], read_metrics(ref_dir)[0]
    assert a["train/qf_loss"] != b["train/qf_loss"]


def test_evaluation_does_not_shift_training(tmp_path):
    """Evaluating (or not) must not change the training streams: same losses with eval every 1 or 2 iterations."""
    every = make_trainer("point-robot", tmp_path / "every", seed=5, overrides=["eval_interval=1"])
    every.run()
    sparse = make_trainer("point-robot", tmp_path / "sparse", seed=5, overrides=["eval_interval=2"])
    sparse.run()
    rows_every, rows_sparse = read_metrics(tmp_path / "every"), read_metrics(tmp_path / "sparse")
    assert "meta_test_return" in rows_every[0] and "meta_test_return" not in rows_sparse[0]
    assert rows_every[1]["meta_test_return"] == rows_sparse[1]["meta_test_return"]
    for a, b in zip(rows_every, rows_sparse):
        train = lambda row: {k: v for k, v in row.items() if k.startswith("train/") or k.endswith("_steps")}
        assert train(a) == train(b)


def interrupt_on_call(monkeypatch, algorithm, call_number: int):
    original = algorithm.train_iteration
    calls = []

    def train_iteration(iteration_idx):
        calls.append(iteration_idx)
        if len(calls) == call_number:
            raise KeyboardInterrupt
        return original(iteration_idx)

    monkeypatch.setattr(algorithm, "train_iteration", train_iteration)


def test_kill_and_resume_matches_uninterrupted(reference_run, tmp_path, monkeypatch):
    ref_dir, ref_results = reference_run
    run_dir = tmp_path / "killed"
    trainer = make_trainer("point-robot", run_dir, seed=7, overrides=RESUME_OVERRIDES)
    interrupt_on_call(monkeypatch, trainer.algorithm, 3)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert [row["iteration"] for row in read_metrics(run_dir)] == [0, 1]
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 1
    assert not (run_dir / "results.json").exists()
    # a fresh process would know nothing of the old objects: disturb the global torch stream too
    torch.manual_seed(12345)

    resumed = Trainer.from_run_dir(run_dir, progress=False)
    assert resumed.config == trainer.config
    resumed.git_commits = ["commit-of-the-resumed-process"]   # as if the tree had moved on in between
    first_machine = trainer_module.machine_description("cpu")
    other_machine = {**first_machine, "cpu": "another CPU", "cpu_native_bf16": not first_machine["cpu_native_bf16"]}
    monkeypatch.setattr(trainer_module, "machine_description", lambda device="cpu": dict(other_machine))
    results = resumed.run(resume=True)
    # the code and the machine of both segments are on record, the starting ones first
    assert results["git_commits"] == [trainer.git_commits[0], "commit-of-the-resumed-process"]
    assert results["git_commit"] == trainer.git_commits[0]
    assert results["machines"] == [first_machine, other_machine] and results["machine"] == other_machine
    assert resumed.start_iteration == 2
    assert strip_nondeterministic(read_metrics(run_dir)) == strip_nondeterministic(read_metrics(ref_dir))
    assert results["final_eval"] == ref_results["final_eval"]
    assert results["env_steps"] == ref_results["env_steps"] and results["grad_steps"] == ref_results["grad_steps"]
    assert [step for step, _ in tb_scalars(run_dir, "meta_test_return")] == [0, 1, 2, 3]


def test_resume_through_cli(reference_run, tmp_path, monkeypatch, capsys):
    ref_dir, _ = reference_run
    run_dir = tmp_path / "killed-cli"
    trainer = make_trainer("point-robot", run_dir, seed=7, overrides=RESUME_OVERRIDES)
    interrupt_on_call(monkeypatch, trainer.algorithm, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert cli.main(["--resume", str(run_dir), "--no-progress"]) == 0
    capsys.readouterr()
    assert strip_nondeterministic(read_metrics(run_dir)) == strip_nondeterministic(read_metrics(ref_dir))


def test_resume_of_finished_run_adds_nothing(tmp_path):
    run_dir = tmp_path / "done"
    make_trainer("point-robot", run_dir, seed=1, overrides=["num_iterations=1"]).run()
    before = read_metrics(run_dir)
    results = Trainer.from_run_dir(run_dir, progress=False).run(resume=True)
    assert read_metrics(run_dir) == before
    assert results["meta_test_return"] == before[-1]["meta_test_return"]


@pytest.mark.parametrize("cut_line", [False, True], ids=["killed-before-metrics-write", "killed-mid-metrics-line"])
def test_kill_around_the_metrics_write_loses_nothing(reference_run, tmp_path, monkeypatch, cut_line):
    """A kill after the checkpoint but before (or halfway through) that iteration's metrics line."""
    ref_dir, _ = reference_run
    run_dir = tmp_path / "killed"
    trainer = make_trainer("point-robot", run_dir, seed=7, overrides=RESUME_OVERRIDES)
    original_save = trainer.save_checkpoint

    def save_then_die(iteration):
        original_save(iteration)
        if iteration == 1:
            if cut_line:
                with open(run_dir / "metrics.jsonl", "a") as handle:
                    handle.write('{"iteration": 1, "env_st')       # the kill cut this line short
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    Trainer.from_run_dir(run_dir, progress=False).run(resume=True)
    assert strip_nondeterministic(read_metrics(run_dir)) == strip_nondeterministic(read_metrics(ref_dir))


def test_fresh_run_into_used_dir_does_not_mix_runs(tmp_path):
    run_dir = tmp_path / "reused"
    make_trainer("point-robot", run_dir, seed=1, overrides=["num_iterations=1"]).run()
    before = {name: (run_dir / name).read_bytes() for name in ("config.json", "metrics.jsonl", "results.json")}
    with pytest.raises(CheckpointError, match="already holds a run"):
        make_trainer("point-robot", run_dir, seed=2, overrides=["num_iterations=1"]).run()
    # refused before writing anything: the first run is intact
    assert {name: (run_dir / name).read_bytes() for name in before} == before


# ---------------------------------------------------------------------- corrupt or missing checkpoints
@pytest.fixture
def corrupt_run(tmp_path, monkeypatch):
    run_dir = tmp_path / "corrupt"
    trainer = make_trainer("point-robot", run_dir, seed=2, overrides=["num_iterations=2"])
    interrupt_on_call(monkeypatch, trainer.algorithm, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    (run_dir / "checkpoint.pt").write_bytes(b"\x00garbage\xffnot a torch file" * 10)
    return run_dir


def test_corrupt_checkpoint_raises_clear_error(corrupt_run):
    with pytest.raises(RuntimeError, match="corrupt"):
        Trainer.from_run_dir(corrupt_run, progress=False).run(resume=True)


def test_cli_resume_corrupt_checkpoint_exits_2(corrupt_run, capsys):
    code = cli.main(["--resume", str(corrupt_run), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "corrupt" in err and len(err.strip().splitlines()) == 1


def test_corrupt_config_json_is_a_clear_error(tmp_path, capsys):
    run_dir = tmp_path / "bad-config"
    run_dir.mkdir()
    (run_dir / "config.json").write_text("{ not json")
    code = cli.main(["--resume", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "corrupt" in err


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"something": 1}, tmp_path / "foreign.pt")
    with pytest.raises(RuntimeError, match="missing keys"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_diverged_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, capsys):
    """A NaN loss ends the run with a clear error (exit 3) before the broken weights are checkpointed."""
    from algos.core.meta_sac import MetaSACAlgorithm
    original = MetaSACAlgorithm.train_step

    def train_step(self):
        losses = original(self)
        if self.grad_steps > self.protocol.num_train_steps_per_itr + 1:  # second step of iteration 1
            losses["qf_loss"] = torch.tensor(float("nan"))
        return losses

    monkeypatch.setattr(MetaSACAlgorithm, "train_step", train_step)
    run_dir = tmp_path / "diverged"
    code = cli.main(["--env", "point-robot", "--algo", "sac-no-context", "--tier", "smoke", "--seed", "3",
                     "--set", "num_iterations=3", "--run-dir", str(run_dir), "--no-progress"])
    assert code == 3
    error = capsys.readouterr().err
    assert "training diverged: train/qf_loss became nan at gradient step 5 (iteration 1; that step's losses: " in error
    assert "qf_loss=nan" in error and "the last checkpoint (after iteration 0) is intact" in error
    assert [row["iteration"] for row in read_metrics(run_dir)] == [0]
    assert load_checkpoint(run_dir / "checkpoint.pt")["iteration"] == 0
    assert not (run_dir / "results.json").exists()


def test_divergence_in_the_first_iteration_says_no_checkpoint_exists(tmp_path, monkeypatch, capsys):
    from algos.core.meta_sac import MetaSACAlgorithm
    original = MetaSACAlgorithm.train_step

    def train_step(self):
        losses = original(self)
        losses["vf_loss"] = torch.tensor(float("inf"))
        return losses

    monkeypatch.setattr(MetaSACAlgorithm, "train_step", train_step)
    run_dir = tmp_path / "diverged"
    code = cli.main(["--env", "point-robot", "--algo", "sac-no-context", "--tier", "smoke", "--run-dir", str(run_dir),
                     "--no-progress"])
    assert code == 3
    error = capsys.readouterr().err
    assert "train/vf_loss became inf at gradient step 1 (iteration 0" in error
    assert "no checkpoint was written" in error and "is intact" not in error
    assert not (run_dir / "checkpoint.pt").exists()


@pytest.mark.parametrize("target, direction", [(5.0, 1), (-20.0, -1)], ids=["entropy-below-target", "above"])
def test_learned_temperature_moves_toward_the_target_entropy(tmp_path, target, direction):
    """SAC's temperature rule: it rises while the policy's entropy is below the target and falls while above (a
    fresh policy's entropy lies between the two targets: +5 nats per action dimension is far above any
    tanh-Gaussian's, -20 far below)."""
    trainer = make_trainer("point-robot", tmp_path / "run", seed=3,
                           overrides=["agent.learn_temperature=true", f"agent.target_entropy_per_dim={target}"])
    algorithm = trainer.algorithm
    assert float(algorithm.log_temperature.detach()) == 0.0 and "temperature" in algorithm.optimizers
    algorithm.collect_initial_data()
    temperatures = [float(algorithm.train_step()["temperature"]) for _ in range(3)]
    assert np.all(np.sign(np.diff([1.0, *temperatures])) == direction)
    # Adam's steps are lr-sized at first: exp(+-lr) per step
    assert temperatures[0] == pytest.approx(np.exp(direction * algorithm.config.lr), rel=1e-5)


def test_learned_temperature_resumes_where_it_stopped(tmp_path, monkeypatch):
    """The temperature and its optimiser are checkpointed: a killed run resumes to the uninterrupted run's numbers."""
    overrides = [*RESUME_OVERRIDES, "agent.learn_temperature=true"]
    reference = make_trainer("point-robot", tmp_path / "whole", seed=7, overrides=overrides)
    reference.run()
    trainer = make_trainer("point-robot", tmp_path / "killed", seed=7, overrides=overrides)
    interrupt_on_call(monkeypatch, trainer.algorithm, 3)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert "log_temperature" in load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["algorithm"]
    torch.manual_seed(12345)
    Trainer.from_run_dir(tmp_path / "killed", progress=False).run(resume=True)
    rows = strip_nondeterministic(read_metrics(tmp_path / "killed"))
    assert rows == strip_nondeterministic(read_metrics(tmp_path / "whole"))
    assert all(row["train/temperature"] != 1.0 for row in rows)


def test_fixed_temperature_has_no_state_and_a_bad_target_is_named(tmp_path):
    trainer = make_trainer("point-robot", tmp_path / "run", seed=3)
    assert trainer.algorithm.log_temperature is None and "temperature" not in trainer.algorithm.optimizers
    with pytest.raises(ConfigError, match="target_entropy_per_dim"):
        build_config("point-robot", "sac-no-context", "smoke", 0, ["agent.target_entropy_per_dim=nan"])
