"""Training ablations: a real smoke run paired with a real full-method cell, and the pairing and flagging rules on
fixed records (what changed is read from the configs; unequal budgets and missing partners are called out)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import ablations

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_ablation_cells_run_and_pair_with_the_full_method(tmp_path):
    full, out = tmp_path / "full", tmp_path / "ablations"
    result = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--tier", "smoke", "--envs", "point-robot",
                             "--algos", "setformer", "--seeds", "42", "--workers", "1", "--no-progress", "--out",
                             str(full)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    code = ablations.main(["--tier", "smoke", "--ablations", "no-next-state-head", "--envs", "point-robot",
                           "--seeds", "42", "--workers", "1", "--no-progress", "--out", str(out), "--full", str(full)])
    assert code == 0
    cell = out / "no-next-state-head" / "smoke" / "cells" / "point-robot" / "setformer" / "42"
    ablated = json.loads((cell / "results.json").read_text())
    assert ablated["config"]["agent"]["aux"]["next_state"] == 0.0
    partner = json.loads((full / "smoke" / "cells" / "point-robot" / "setformer" / "42" / "results.json").read_text())

    report = json.loads((out / "ablations_smoke.json").read_text())
    entry = report["results"]["no-next-state-head"]["point-robot"]
    assert entry["config_changes"] == ["`agent.aux.next_state` 1.0 → 0.0"]
    assert entry["budget_differs"] == []
    record = entry["seeds"]["42"]
    assert record["meta_test_return"] == ablated["meta_test_return"]
    assert record["full_meta_test_return"] == partner["meta_test_return"]
    assert (out / "no-next-state-head" / "smoke" / "RESULTS.md").exists()  # the ablation's own benchmark table
    markdown = (out / "ABLATIONS_smoke.md").read_text()
    assert "[no-next-state-head](no-next-state-head/smoke/RESULTS.md)" in markdown
    delta = ablated["meta_test_return"] - partner["meta_test_return"]
    row = next(line for line in markdown.splitlines() if line.startswith("| no-next-state-head |") and "n=1" in line)
    assert f"{delta:+.2f} (n=1)" in row and "`agent.aux.next_state` 1.0 → 0.0" in row

    # rerunning finds the cell finished and starts nothing; --render-only rebuilds the same pairing
    assert ablations.main(["--tier", "smoke", "--ablations", "no-next-state-head", "--envs", "point-robot",
                           "--seeds", "42", "--no-progress", "--out", str(out), "--full", str(full)]) == 0
    assert ablations.main(["--tier", "smoke", "--render-only", "--out", str(out), "--full", str(full)]) == 0
    again = json.loads((out / "ablations_smoke.json").read_text())
    assert again["results"] == report["results"]


def fake_cell(seed: int, value: float, low_noise: float, agent: dict, protocol: dict) -> dict:
    """A ``collect_cells(..., with_config=True)`` record."""
    return {"env": "point-robot", "algo": "setformer", "seed": seed, "meta_test_return": value,
            "final_eval": {"meta_test_return": low_noise}, "git_commit": "abcdef0123",
            "config": {"agent": agent, "protocol": protocol, "num_threads": seed}}  # threads differ: must be ignored


def test_pairing_reads_changes_from_configs_and_flags_unequal_budgets():
    base_agent, base_protocol = {"lr": 0.001, "aux": {"reward": 1.0}}, {"num_iterations": 20}
    full = [fake_cell(42, -7.0, -6.5, base_agent, base_protocol), fake_cell(123, -6.0, -6.2, base_agent, base_protocol)]
    ablated = [fake_cell(42, -9.0, -8.0, {"lr": 0.0003, "aux": {"reward": 1.0}}, base_protocol),
               fake_cell(123, -10.0, -9.2, {"lr": 0.0003, "aux": {"reward": 1.0}}, {"num_iterations": 25}),
               fake_cell(456, -8.0, -8.0, {"lr": 0.0003, "aux": {"reward": 1.0}}, base_protocol)]
    by_env = ablations.compare_cells(full, ablated)
    entry = by_env["point-robot"]
    assert entry["config_changes"] == ["`agent.lr` 0.001 → 0.0003", "`protocol.num_iterations` 20 → 25"]
    assert entry["budget_differs"] == [123]
    assert "full_meta_test_return" not in entry["seeds"][456]  # no partner: no Δ

    report = {"tier": "quick", "command": "cmd", "generated_at": "now", "git_commit": "abc",
              "machine": {"cpu": "cpu", "cores": 2, "torch": "x"}, "full_dir": "benchmarks/quick",
              "ablations": ["high-lr"], "envs": ["point-robot"], "seeds": [42, 123, 456],
              "full": {"point-robot": {42: {"meta_test_return": -7.0, "low_noise": -6.5},
                                       123: {"meta_test_return": -6.0, "low_noise": -6.2}}},
              "results": {"high-lr": by_env}, "notes": []}
    markdown = ablations.render_markdown(report)
    row = next(line for line in markdown.splitlines() if line.startswith("| high-lr |") and "n=" in line)
    # paired over seeds 42 and 123 only: -2.0 and -4.0
    assert "-3.00 ± 1.41 (n=2)" in row
    assert "-9.00 ± 1.00 (n=3)" in row  # the ablation's own mean uses every seed it has
    assert "seed(s) 456" in markdown and "budget) differs from the full method's for seed(s) 123" in markdown
    # low-noise pairs -1.5 and -3.0: t = -2.25 / (1.06 / sqrt 2) = -3.0, short of 12.71 for one degree of freedom
    assert "| no (t=-3.0) |" in row
    paired = entry["paired"]["low_noise"]
    assert paired["n"] == 2 and paired["mean_delta"] == pytest.approx(-2.25)
    assert paired["t_test"]["t"] == pytest.approx(-3.0) and not paired["t_test"]["beyond_noise"]


def test_paired_test_against_seed_noise():
    from experiments.report import format_paired_test, paired_test

    consistent = paired_test([-1.0, -1.1, -0.9])  # t = -1 / (0.1 / sqrt 3) = -17.3 > 4.30
    assert consistent["t"] == pytest.approx(-17.32, abs=0.01) and consistent["critical"] == 4.303
    assert consistent["beyond_noise"]
    assert not paired_test([1.0, -1.0, 0.5])["beyond_noise"]
    assert paired_test([2.0, 2.0, 2.0])["beyond_noise"]      # identical differences: no spread, not noise
    assert format_paired_test([2.0, 2.0, 2.0]) == "**yes** (no spread)"
    assert not paired_test([0.0, 0.0, 0.0])["beyond_noise"]
    assert paired_test([1.0]) is None and format_paired_test([1.0]) == "—"
    assert format_paired_test([-1.0, -1.1, -0.9]) == "**yes** (t=-17.3)"


def test_commits_are_compared_by_the_code_a_run_imports(tmp_path):
    from experiments.report import format_commits, run_code_changes

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "algos").mkdir()
    (tmp_path / "algos" / "method.py").write_text("lr = 3e-4\n")
    (tmp_path / "README.md").write_text("v1\n")
    git("add", "."), git("commit", "-qm", "first")
    first = git("rev-parse", "HEAD")
    (tmp_path / "README.md").write_text("v2\n")  # docs only: the same run code
    git("commit", "-qam", "docs")
    docs = git("rev-parse", "HEAD")
    (tmp_path / "algos" / "method.py").write_text("lr = 1e-3\n")
    git("commit", "-qam", "code")
    code = git("rev-parse", "HEAD")

    assert run_code_changes([first, docs], tmp_path) == []
    assert run_code_changes([first, docs, code], tmp_path) == ["algos/method.py"]
    assert run_code_changes([first, code + "-dirty"], tmp_path) is None     # uncommitted code: cannot tell
    assert run_code_changes([first, "0" * 40], tmp_path) is None            # a commit this clone lacks
    assert format_commits([first, first], tmp_path) == first[:7]
    assert format_commits([first, docs, None], tmp_path) == f"{first[:7]} / {docs[:7]} (same run code)"
    assert format_commits([first, code], tmp_path) == f"{first[:7]} / {code[:7]} (run code differs: `algos/method.py`)"
    assert format_commits([first, "0" * 40], tmp_path).endswith("(differs between cells; git cannot compare them here)")
    assert format_commits([None], tmp_path) == "—"

    # a rerun check of the full method's cells (experiments.rerun_check) answers the question the note raises
    from experiments.ablations import rerun_check_sentence
    from experiments.report import descends_from
    assert descends_from(code, [first, docs], tmp_path) and not descends_from(first, [code], tmp_path)
    assert not descends_from(code + "-dirty", [first], tmp_path)
    full = {42: {"git_commit": first}, "123": {"git_commit": first}}
    check = {"env": "point-robot", "algo": "setformer", "cell_commit": first, "checked_at_commit": code,
             "iterations": 2, "identical": True}
    checks = {"a": {**check, "seed": 42}}
    sentence = rerun_check_sentence(checks, "point-robot", full, [first, docs], "Q.md", tmp_path)
    assert sentence.startswith(f"the code at `{code[:7]}` reproduces the full method's cells (seed 42) bit for bit")
    assert "descends from every commit here" in sentence and sentence.endswith("seed(s) 123 not checked.")
    checks["b"] = {**check, "seed": 123, "checked_at_commit": first}  # not a descendant of `docs`
    assert "descends" not in rerun_check_sentence(checks, "point-robot", full, [first, docs], "Q.md", tmp_path)
    checks["b"]["identical"] = False
    assert "differs for seed(s) 123" in rerun_check_sentence(checks, "point-robot", full, [first], "Q.md", tmp_path)
    # a check of another environment, or of a cell at another commit, says nothing about these cells
    assert rerun_check_sentence(checks, "cheetah-vel", full, [first], "Q.md", tmp_path).startswith("so the Δ holds")
    stale = {"c": {**check, "seed": 42, "cell_commit": docs}}
    assert rerun_check_sentence(stale, "point-robot", full, [first], "Q.md", tmp_path).startswith("so the Δ holds")


def test_unknown_ablation_is_refused_by_name(capsys):
    with pytest.raises(SystemExit):
        ablations.main(["--ablations", "no-such-thing"])
    assert "unknown ablation(s) no-such-thing" in capsys.readouterr().err


def test_every_catalogued_ablation_builds_a_valid_config():
    from algos.core.trainer import build_config
    for name, (overrides, _why) in ablations.ABLATIONS.items():
        for env in ("point-robot", "sparse-point-robot", "cheetah-vel"):
            build_config(env, "setformer", "quick", 42, list(overrides))  # raises ConfigError on a bad key
