"""Trust at the edges: a run resumes only from its own checkpoint, bad input is refused before anything is written,
the outside world's failures are one-line errors, and a killed run leaves nothing behind and loses no time."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from algos.core.config import ConfigError
from algos.core.trainer import Trainer, build_config
from experiments import run as cli
from tests.conftest import make_trainer, read_metrics

ONE_ITERATION = ["num_iterations=1"]


def finished_run(tmp_path, name, env="point-robot", algo="sac-no-context", overrides=(), seed=0):
    run_dir = tmp_path / name
    make_trainer(env, run_dir, algo, seed=seed, overrides=[*ONE_ITERATION, *overrides]).run()
    return run_dir


def resume_as_cli(run_dir, capsys, more_iterations: bool = True) -> tuple[int, str]:
    """Reopen a finished run for one more iteration (as a killed run would be) and resume it through the CLI."""
    if more_iterations:
        config = json.loads((run_dir / "config.json").read_text())
        config["protocol"]["num_iterations"] += 1
        (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "results.json").unlink(missing_ok=True)
    capsys.readouterr()
    code = cli.main(["--resume", str(run_dir), "--no-progress"])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------------- identity on resume
def test_checkpoint_of_another_env_is_refused(tmp_path, capsys):
    mine = finished_run(tmp_path, "mine", "point-robot")
    other = finished_run(tmp_path, "other", "sparse-point-robot")
    shutil.copy(other / "checkpoint.pt", mine / "checkpoint.pt")
    code, err = resume_as_cli(mine, capsys, more_iterations=False)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "belongs to another run: env 'sparse-point-robot' in the checkpoint, 'point-robot' in" in err


def test_checkpoint_of_another_algo_is_refused_in_one_line(tmp_path, capsys):
    mine = finished_run(tmp_path, "mine", algo="sac-no-context")
    other = finished_run(tmp_path, "other", algo="pearl")
    shutil.copy(other / "checkpoint.pt", mine / "checkpoint.pt")
    code, err = resume_as_cli(mine, capsys, more_iterations=False)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "algo 'pearl' in the checkpoint, 'sac-no-context' in" in err


@pytest.mark.parametrize("key, value, named", [(("seed",), 99, "seed 0 in the checkpoint, 99 in"),
                                               (("agent", "lr"), 0.01, "agent.lr: 0.0003 -> 0.01")])
def test_edited_config_json_is_refused(tmp_path, capsys, key, value, named):
    run_dir = finished_run(tmp_path, "run")
    config = json.loads((run_dir / "config.json").read_text())
    target = config
    for part in key[:-1]:
        target = target[part]
    target[key[-1]] = value
    (run_dir / "config.json").write_text(json.dumps(config))
    code, err = resume_as_cli(run_dir, capsys, more_iterations=False)
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1


def test_where_and_how_fast_may_change_on_resume(tmp_path, capsys):
    run_dir = finished_run(tmp_path, "run")
    config = json.loads((run_dir / "config.json").read_text())
    config["num_threads"] = 2
    (run_dir / "config.json").write_text(json.dumps(config))
    (run_dir / "results.json").unlink()
    assert cli.main(["--resume", str(run_dir), "--no-progress"]) == 0


# ---------------------------------------------------------------------- validation up front
@pytest.mark.parametrize("algo, override, named", [
    ("setformer", "aux.reward=nan", "agent.aux.reward"),
    ("setformer", "num_heads=0", "num_heads"),
    ("setformer", "model_dim=0", "model_dim"),
    ("pearl", "latent_dim=0", "latent_dim"),
    ("varibad", "latent_dim=0", "latent_dim"),
    ("pearl", "policy_mean_reg=-1", "policy_mean_reg"),
    ("focal", "metric_power=-3", "metric_power"),
    ("pearl", "lr=inf", "agent.lr"),
    ("pearl", "reward_scale=nan", "protocol.reward_scale"),
    ("setformer", "exploration.reward_noise_std=nan", "reward_noise_std"),
    ("pearl", "num_iterations=1e20", "num_iterations"),
])
def test_bad_values_are_refused_by_name(algo, override, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        build_config("point-robot", algo, "smoke", 0, [override])


def test_duplicate_keys_are_refused():
    with pytest.raises(ConfigError, match="set twice"):
        build_config("point-robot", "pearl", "smoke", 0, ["lr=1e-3", "agent.lr=2e-3"])


@pytest.mark.parametrize("override, named", [
    ("sparse_rewards=true", "does not apply to point-robot"),
    ("replay_buffer_size=1", "must hold at least one episode"),
    ("batch_size=100000000", "GiB available"),
])
def test_settings_the_env_or_machine_cannot_take_are_refused_before_anything_is_written(tmp_path, capsys, override,
                                                                                        named):
    run_dir = tmp_path / "run"
    code = cli.main(["--env", "point-robot", "--algo", "pearl", "--tier", "smoke", "--set", override,
                     "--run-dir", str(run_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and named in err and len(err.strip().splitlines()) == 1
    assert not run_dir.exists()


NUMERIC_FIELDS = {  # (algo, key): a sensible value; the fuzz loop also tries bad ones
    ("pearl", "lr"): 3e-4, ("pearl", "latent_dim"): 5, ("pearl", "kl_lambda"): 0.1, ("pearl", "tau"): 0.005,
    ("focal", "metric_power"): 2.0, ("focal", "metric_eps"): 1e-3, ("setformer", "aux.next_state"): 1.0,
    ("setformer", "num_heads"): 4, ("setformer", "embedding_batch_fraction"): 0.5, ("varibad", "gru_hidden_dim"): 16,
    ("sac-no-context", "discount"): 0.99, ("sac-no-context", "batch_size"): 8, ("sac-no-context", "meta_batch"): 2,
    ("sac-no-context", "embedding_batch_size"): 4, ("sac-no-context", "num_steps_per_eval"): 40,
}
BAD_OR_ODD = ["nan", "inf", "-inf", "-1", "0", "1e30", "2", "0.5", "3"]


def test_fuzzed_configs_either_fail_in_one_line_or_complete_an_iteration(tmp_path, capsys):
    """A seeded fuzz loop over the config space: each draw is either refused with a one-line error (exit 2,
    nothing written) or completes a smoke iteration (exit 0)."""
    rng = np.random.default_rng(0)
    keys = list(NUMERIC_FIELDS)
    outcomes = {0: 0, 2: 0}
    for draw in range(14):
        algo, key = keys[rng.integers(len(keys))]
        value = BAD_OR_ODD[rng.integers(len(BAD_OR_ODD))]
        run_dir = tmp_path / f"draw{draw}"
        code = cli.main(["--env", "point-robot", "--algo", algo, "--tier", "smoke", "--set", "num_iterations=1",
                         f"{key}={value}", "--run-dir", str(run_dir), "--no-progress"])
        captured = capsys.readouterr()
        assert code in (0, 2), (algo, key, value, captured.err)
        if code == 2:
            assert len(captured.err.strip().splitlines()) == 1 and captured.err.startswith("error: ")
            assert not run_dir.exists(), (algo, key, value)
        else:
            assert (run_dir / "results.json").exists()
        outcomes[code] += 1
    assert outcomes[0] and outcomes[2]  # the draws covered both outcomes


# ---------------------------------------------------------------------- the outside world
def test_run_dir_naming_a_file_is_a_one_line_error(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("not a folder")
    code = cli.main(["--env", "point-robot", "--algo", "sac-no-context", "--tier", "smoke", "--run-dir",
                     str(target / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(target) in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_runs_folder_is_a_one_line_error(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    code = cli.main(["--env", "point-robot", "--algo", "sac-no-context", "--tier", "smoke", "--run-dir",
                     str(folder / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "ermission" in err


def test_unknown_env_is_a_config_error_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    assert cli.main(["--env", "moon-robot", "--algo", "pearl"]) == 2
    assert "unknown env 'moon-robot'" in capsys.readouterr().err
    from algos.core.meta_sac import MetaSACAlgorithm

    def broken(self, iteration_idx):
        raise ValueError("a bug deep in training")

    monkeypatch.setattr(MetaSACAlgorithm, "train_iteration", broken)
    with pytest.raises(ValueError, match="a bug deep in training"):
        cli.main(["--env", "point-robot", "--algo", "sac-no-context", "--tier", "smoke", "--no-progress",
                  "--run-dir", str(os.path.join(os.getcwd(), "bug"))])


# ---------------------------------------------------------------------- no leftovers, no lost time
def test_stale_temp_files_are_removed_on_resume(tmp_path):
    run_dir = finished_run(tmp_path, "run")
    stale = run_dir / ".checkpoint.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    (run_dir / "results.json").unlink()
    config = json.loads((run_dir / "config.json").read_text())
    Trainer(build_config(config["env"], config["algo"], config["tier"], config["seed"], ONE_ITERATION),
            run_dir=run_dir, progress=False).run(resume=True)
    assert not stale.exists()


def test_time_of_a_killed_partial_iteration_is_counted(tmp_path, monkeypatch):
    from algos.core.trainer import Trainer
    from tests.test_training import interrupt_on_call

    run_dir = tmp_path / "run"
    trainer = make_trainer("point-robot", run_dir, "sac-no-context", overrides=["num_iterations=2"])
    interrupt_on_call(monkeypatch, trainer.algorithm, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    (checkpointed,) = read_metrics(run_dir)
    # as if the killed process had worked 500 s past its last checkpoint: its clock file says so
    (run_dir / "wall_time.json").write_text(json.dumps({"elapsed_s": checkpointed["wall_time_s"] + 500.0}))
    results = Trainer.from_run_dir(run_dir, progress=False).run(resume=True)
    assert results["wall_time_s"] > checkpointed["wall_time_s"] + 500.0
    assert read_metrics(run_dir)[-1]["wall_time_s"] > checkpointed["wall_time_s"] + 500.0


def test_runner_appends_to_a_resumed_cells_stderr_log(tmp_path):
    from experiments.engine import Cell, CellRunner

    run_dir = finished_run(tmp_path, "cell")
    (run_dir / "results.json").unlink()
    (run_dir / "stderr.log").write_text("first segment\n")
    cell = Cell("point-robot", "sac-no-context", 0, run_dir)
    runner = CellRunner([cell], 0, 1, "smoke", [], 1, progress=False)
    running = runner.start(cell)
    running.process.wait()
    running.stderr.close()
    log = (run_dir / "stderr.log").read_text()
    assert log.startswith("first segment\n") and "--resume" in log


def test_final_figure_is_in_tensorboard_and_the_clock_file_goes_away(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = finished_run(tmp_path, "run", algo="pearl")
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    assert "final_eval/meta_test_return" in events.Tags()["scalars"]
    results = json.loads((run_dir / "results.json").read_text())
    (value,) = [e.value for e in events.Scalars("final_eval/meta_test_return")]
    assert value == pytest.approx(results["final_eval"]["meta_test_return"])
    assert not (run_dir / "wall_time.json").exists()


def test_runner_passes_the_users_thread_count_once():
    """The runner gives each cell its thread share unless the user set num_threads, which then wins (passing both
    would be a duplicate key)."""
    from pathlib import Path

    from experiments.engine import Cell, CellRunner

    cell = Cell("point-robot", "pearl", 0, Path("/tmp/nowhere"))
    for overrides, expected in ((["lr=0.001"], ["num_threads=2", "lr=0.001"]), (["num_threads=1"], ["num_threads=1"])):
        command = CellRunner([cell], 0, 1, "smoke", overrides, 2, progress=False).command(cell)
        sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
        assert sets == expected
        build_config("point-robot", "pearl", "smoke", 0, sets)  # no duplicate


def test_a_setting_added_to_the_code_later_at_its_default_does_not_block_resume(tmp_path, monkeypatch, capsys):
    """A run resumes while the code gains settings: a new field at its default is the same run; the same field at
    another value is not."""
    import torch as torch_module

    run_dir = finished_run(tmp_path, "run", algo="pearl")
    checkpoint = torch_module.load(run_dir / "checkpoint.pt", weights_only=False)
    del checkpoint["config"]["agent.encoder_hidden_dim"]  # as if written before the field existed
    checkpoint["identity"]["config_sha256"] = "0" * 16
    torch_module.save(checkpoint, run_dir / "checkpoint.pt")
    code, err = resume_as_cli(run_dir, capsys, more_iterations=False)
    assert code == 0, err
    config = json.loads((run_dir / "config.json").read_text())
    config["agent"]["encoder_hidden_dim"] = 64
    (run_dir / "config.json").write_text(json.dumps(config))
    code, err = resume_as_cli(run_dir, capsys, more_iterations=False)
    assert code == 2 and "agent.encoder_hidden_dim: 200 -> 64" in err  # read as the default it ran with


def test_a_run_saved_with_setformers_teacher_settings_resumes_under_their_new_names(tmp_path, monkeypatch, capsys):
    """setformer's ``teacher_fraction`` / ``teacher_collection`` are ``embedding_batch_fraction`` /
    ``embedding_collection_fraction`` today (``MOVED_KEYS``): a run killed after its first checkpoint, whose
    config.json and checkpoint (identity hash included) were written under the old names, resumes; a value changed
    since is refused by its new name."""
    import hashlib

    import torch as torch_module

    from tests.test_training import interrupt_on_call

    run_dir = tmp_path / "run"
    trainer = make_trainer("point-robot", run_dir, "setformer", overrides=["num_iterations=2"])
    interrupt_on_call(monkeypatch, trainer.algorithm, 2)
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    old_names = {"embedding_batch_fraction": "teacher_fraction", "embedding_collection_fraction": "teacher_collection"}
    config = json.loads((run_dir / "config.json").read_text())
    config["agent"] = {old_names.get(k, k): v for k, v in config["agent"].items()}
    (run_dir / "config.json").write_text(json.dumps(config))
    checkpoint = torch_module.load(run_dir / "checkpoint.pt", weights_only=False)
    checkpoint["config"] = {f"agent.{old_names[k[6:]]}" if k[6:] in old_names else k: v
                            for k, v in checkpoint["config"].items()}
    # the identity the old code wrote: the hash of its flattened config, old names and all
    old_hash = hashlib.sha256(json.dumps(checkpoint["config"], sort_keys=True).encode()).hexdigest()[:16]
    checkpoint["identity"]["config_sha256"] = old_hash
    torch_module.save(checkpoint, run_dir / "checkpoint.pt")
    assert "agent.teacher_fraction" in checkpoint["config"] and "teacher_collection" in config["agent"]
    code, err = resume_as_cli(run_dir, capsys, more_iterations=False)
    assert code == 0, err
    assert [m["iteration"] for m in read_metrics(run_dir)] == [0, 1]
    config["agent"]["teacher_collection"] = 0.25
    (run_dir / "config.json").write_text(json.dumps(config))
    code, err = resume_as_cli(run_dir, capsys, more_iterations=False)
    assert code == 2 and "agent.embedding_collection_fraction: 0.5 -> 0.25" in err
