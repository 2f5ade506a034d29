"""Configuration: tiers, overrides, validation, and the ``python -m experiments.run`` command line."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch

from algos.core.config import (BENCHMARK, QUICK_BATCH_SIZE, ConfigError, RunConfig, protocol_for,
                               set_value, to_dict)
from algos.core.trainer import build_config, config_from_dict
from experiments import run as cli


# ---------------------------------------------------------------------- protocol tables (docs/PROTOCOL.md#benchmark-tier)
def test_benchmark_protocol_matches_spec():
    expected = {
        "point-robot": dict(num_iterations=20, num_initial_steps=200, num_tasks_sample=5, num_steps_prior=200,
                            num_steps_posterior=0, num_extra_rl_steps_posterior=200, num_train_steps_per_itr=1000,
                            meta_batch=16, batch_size=256, embedding_batch_size=64, discount=0.99, reward_scale=100,
                            num_steps_per_eval=60, num_exp_traj_eval=1, num_evals=2, sparse_rewards=False),
        "sparse-point-robot": dict(num_iterations=20, num_initial_steps=200, num_tasks_sample=10,
                                   num_steps_prior=100, num_steps_posterior=900, num_extra_rl_steps_posterior=0,
                                   num_train_steps_per_itr=1000, meta_batch=16, batch_size=256,
                                   embedding_batch_size=1024, discount=0.90, reward_scale=100,
                                   num_steps_per_eval=400, num_exp_traj_eval=5, num_evals=2, sparse_rewards=True),
        "cheetah-vel": dict(num_iterations=20, num_initial_steps=2000, num_tasks_sample=5, num_steps_prior=400,
                            num_steps_posterior=0, num_extra_rl_steps_posterior=600, num_train_steps_per_itr=2000,
                            meta_batch=16, batch_size=256, embedding_batch_size=100, discount=0.99, reward_scale=5,
                            num_steps_per_eval=600, num_exp_traj_eval=2, num_evals=1, sparse_rewards=False),
    }
    for env, values in expected.items():
        protocol = protocol_for(env, "benchmark")
        for key, value in values.items():
            assert getattr(protocol, key) == value, (env, key)
        assert protocol.final_eval_repeats >= 10
    # PEARL's KL weight is PEARL's own setting, with a per-environment default (docs/PROTOCOL.md#baselines)
    assert build_config("sparse-point-robot", "pearl", "benchmark", 0).agent.kl_lambda == 1.0
    assert build_config("point-robot", "pearl", "benchmark", 0).agent.kl_lambda == 0.1
    assert build_config("cheetah-vel", "pearl", "benchmark", 0).agent.kl_lambda == 0.1
    assert not hasattr(protocol_for("point-robot", "benchmark"), "kl_lambda")


def test_quick_tier_keeps_collection_and_evaluation():
    for env in BENCHMARK:
        bench, quick = protocol_for(env, "benchmark"), protocol_for(env, "quick")
        changed = {f.name for f in dataclasses.fields(bench) if getattr(bench, f.name) != getattr(quick, f.name)}
        assert changed <= {"num_train_steps_per_itr", "batch_size"}
        assert quick.num_train_steps_per_itr < bench.num_train_steps_per_itr
        assert quick.batch_size == QUICK_BATCH_SIZE


def test_tiers_do_not_mutate_the_benchmark_table():
    before = to_dict(BENCHMARK["cheetah-vel"])
    protocol_for("cheetah-vel", "quick").num_iterations = 999
    protocol_for("cheetah-vel", "smoke")
    config = build_config("cheetah-vel", "sac-no-context", "benchmark", 0, ["num_iterations=7"])
    assert config.protocol.num_iterations == 7
    assert to_dict(BENCHMARK["cheetah-vel"]) == before


# ---------------------------------------------------------------------- overrides
def test_overrides_resolve_into_protocol_and_agent():
    config = build_config("point-robot", "sac-no-context", "smoke", 1,
                          ["num_iterations=3", "protocol.batch_size=8", "agent.hidden_dim=64", "latent_dim=4",
                           "bf16=false", "lr=1e-3", "num_threads=2", "discount=0.5", "num_initial_steps=1e2"])
    assert config.protocol.num_iterations == 3 and isinstance(config.protocol.num_iterations, int)
    assert config.protocol.batch_size == 8
    assert config.agent.hidden_dim == 64 and config.agent.latent_dim == 4
    assert config.bf16 is False
    assert config.agent.lr == pytest.approx(1e-3)
    assert config.num_threads == 2
    assert config.protocol.discount == 0.5
    assert config.protocol.num_initial_steps == 100


@pytest.mark.parametrize("text, value", [("true", True), ("1", True), ("on", True), ("yes", True),
                                         ("False", False), ("0", False), ("off", False), ("no", False)])
def test_bool_coercion(text, value):
    assert build_config("point-robot", "sac-no-context", "smoke", 0, [f"bf16={text}"]).bf16 is value


@pytest.mark.parametrize("override, fragment", [
    ("num_iterations=abc", "num_iterations"),
    ("num_iterations=2.5", "num_iterations"),
    ("bf16=maybe", "bf16"),
    ("lr=fast", "lr"),
    ("no_such_key=1", "no_such_key"),
    ("protocol.no_such_key=1", "no_such_key"),
    ("num_iterations", "key=value"),
    ("protocol=3", "group"),
    ("num_iterations=0", "num_iterations"),
    ("discount=1.5", "discount"),
    ("num_threads=0", "num_threads"),
    ("hidden_dim=0", "hidden_dim"),
])
def test_bad_overrides_raise_config_error(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        build_config("point-robot", "sac-no-context", "smoke", 0, [override])


def test_ambiguous_key_is_an_error():
    @dataclass
    class AgentWithDiscount:
        discount: float = 0.3
        width: int = 4

    config = RunConfig(env="point-robot", algo="custom", tier="smoke", seed=0,
                       protocol=protocol_for("point-robot", "smoke"), agent=AgentWithDiscount())
    with pytest.raises(ConfigError, match="ambiguous"):
        set_value(config, "discount", "0.7")
    set_value(config, "agent.discount", "0.7")
    set_value(config, "protocol.discount", "0.8")
    set_value(config, "width", "9")
    assert (config.agent.discount, config.protocol.discount, config.agent.width) == (0.7, 0.8, 9)


def test_config_dict_round_trip():
    config = build_config("sparse-point-robot", "sac-no-context", "quick", 123, ["hidden_dim=32"])
    data = json.loads(json.dumps(to_dict(config)))
    assert config_from_dict(data) == config
    data["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        config_from_dict(data)


def test_identity_fields_cannot_be_overridden():
    with pytest.raises(ConfigError):
        build_config("point-robot", "sac-no-context", "smoke", 0, ["env=cheetah-vel"])


# ---------------------------------------------------------------------- the command line
BASE = ["--tier", "smoke", "--no-progress"]


def run_cli(capsys, argv):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("argv, fragment", [
    (["--env", "no-such-env", "--algo", "sac-no-context"], "no-such-env"),
    (["--env", "point-robot", "--algo", "no-such-algo"], "no-such-algo"),
    (["--env", "point-robot", "--algo", "sac-no-context", "--tier", "huge"], "huge"),
    (["--env", "point-robot", "--algo", "sac-no-context", "--set", "no_such_key=1"], "no_such_key"),
    (["--env", "point-robot", "--algo", "sac-no-context", "--set", "num_iterations=abc"], "num_iterations"),
    (["--env", "point-robot", "--algo", "sac-no-context", "--set", "bf16=maybe"], "bf16"),
    (["--env", "point-robot", "--algo", "sac-no-context", "--set", "num_iterations=-1"], "num_iterations"),
    (["--env", "cheetah-vel", "--algo", "oracle"], "point robots"),
    (["--algo", "sac-no-context"], "--env"),
])
def test_cli_errors_exit_2_with_one_line(capsys, tmp_path, argv, fragment):
    tier_given = "--tier" in argv
    argv = argv + (BASE if not tier_given else ["--no-progress"]) + ["--run-dir", str(tmp_path / "run")]
    code, out, err = run_cli(capsys, argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert fragment in lines[0]
    assert out == ""
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_cli_resume_missing_dir(capsys, tmp_path):
    missing = tmp_path / "never-ran"
    code, _, err = run_cli(capsys, ["--resume", str(missing), "--no-progress"])
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "not found" in err and str(missing) in err


def test_cli_resume_rejects_set(capsys, tmp_path):
    code, _, err = run_cli(capsys, ["--resume", str(tmp_path), "--set", "num_iterations=3"])
    assert code == 2 and "num_iterations cannot be changed" in err


def test_cli_resume_may_change_only_the_thread_count(capsys, tmp_path, monkeypatch):
    """A resumed run may continue on more threads (what it computes stays its saved config's)."""
    threads_set = []
    monkeypatch.setattr(torch, "set_num_threads", threads_set.append)  # record, and keep this process on its threads
    run_dir = tmp_path / "run"
    code, _, _ = run_cli(capsys, ["--env", "point-robot", "--algo", "sac-no-context", *BASE, "--run-dir", str(run_dir),
                                  "--set", "num_iterations=1"])
    assert code == 0
    first = json.loads((run_dir / "results.json").read_text())
    (run_dir / "results.json").unlink()  # as if killed before its final evaluation: a finished run is left alone
    code, _, err = run_cli(capsys, ["--resume", str(run_dir), "--no-progress", "--set", "num_threads=2"])
    assert code == 0, err
    assert json.loads((run_dir / "config.json").read_text())["num_threads"] == 2
    assert threads_set == [1, 2]  # the first run's thread count, then the resumed run's
    assert json.loads((run_dir / "results.json").read_text())["meta_test_return"] == first["meta_test_return"]
    code, _, err = run_cli(capsys, ["--resume", str(run_dir), "--no-progress", "--set", "num_threads=1", "lr=0.1"])
    assert code == 2 and "lr cannot be changed" in err


def test_set_takes_several_overrides_at_once_or_repeated():
    from experiments import benchmark
    expected = ["num_iterations=5", "aux.reward=0", "lr=1e-3"]
    argv = ["--set", "num_iterations=5", "aux.reward=0", "--set", "lr=1e-3"]
    assert cli.parse_args(argv).overrides == expected
    assert benchmark.parse_args(argv).overrides == expected
