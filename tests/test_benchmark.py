"""The benchmark runner and its results tables: a real two-cell run, kill-and-resume of the runner, and the
renderer on fixed numbers (so the table's figures are checked exactly, not just that something rendered)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import benchmark
from experiments.engine import Cell, claim_cell, merged_plan
from experiments.results_table import REFERENCE_LABEL, cell_record, render_markdown

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "experiments.benchmark", "--no-progress", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=timeout)


def cell_path(out: Path, algo: str, seed: int = 42, tier: str = "smoke", env: str = "point-robot") -> Path:
    return out / tier / "cells" / env / algo / str(seed)


def processes_mentioning(text: str) -> list[int]:
    """Our own processes whose command line contains ``text`` (to prove no cell outlives its runner)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(proc.name))
    return found


def test_two_cell_smoke_benchmark_runs_and_renders(tmp_path):
    result = run_benchmark(["--tier", "smoke", "--envs", "point-robot", "--algos", "oracle", "sac-no-context",
                            "--seeds", "42", "--workers", "2", "--out", str(tmp_path)])
    assert result.returncode == 0, result.stdout + result.stderr
    for algo in ("oracle", "sac-no-context"):
        assert (cell_path(tmp_path, algo) / "results.json").exists()
    summary = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert summary["tier"] == "smoke" and "experiments.benchmark" in summary["command"]
    assert {(c["algo"], c["seed"]) for c in summary["cells"]} == {("oracle", 42), ("sac-no-context", 42)}
    for cell in summary["cells"]:
        for key in ("meta_test_return", "final_eval", "online_returns", "learning_curve", "env_steps", "grad_steps",
                    "wall_time_s", "parameter_count", "git_commit", "machine"):
            assert key in cell, key
        assert cell["final_eval"]["num_repeats"] >= 1
    markdown = (tmp_path / "smoke" / "RESULTS.md").read_text()
    assert "SAC (no context)" in markdown and "oracle (true task)" in markdown
    assert "curves_point-robot.png" in markdown and (tmp_path / "smoke" / "curves_point-robot.png").exists()
    assert REFERENCE_LABEL in markdown

    # --render-only reuses the last run's plan and renders the same cells again (in-process: no second start-up)
    assert benchmark.main(["--tier", "smoke", "--out", str(tmp_path), "--render-only"]) == 0
    again = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert again["plan"]["algos"] == ["oracle", "sac-no-context"] and len(again["cells"]) == 2


def test_oracle_on_cheetah_is_skipped_with_a_note(tmp_path, capsys):
    # --algos oracle on cheetah-vel only: nothing to run, a note, success
    code = benchmark.main(["--tier", "smoke", "--envs", "cheetah-vel", "--algos", "oracle", "--seeds", "42",
                           "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    assert "skipping oracle on cheetah-vel" in capsys.readouterr().out
    assert not (tmp_path / "smoke" / "cells" / "cheetah-vel").exists()
    assert "not run" in (tmp_path / "smoke" / "RESULTS.md").read_text()


def test_killed_runner_resumes_without_rerunning_finished_cells(tmp_path, capsys):
    oracle_dir, sac_dir = cell_path(tmp_path, "oracle"), cell_path(tmp_path, "sac-no-context")
    # a leftover of a run killed before its first checkpoint: must be discarded, not resumed
    sac_dir.mkdir(parents=True)
    (sac_dir / "stale.txt").write_text("left over")
    # enough gradient steps that the sac cell is still mid-run after its first checkpoint
    args = ["--tier", "smoke", "--envs", "point-robot", "--algos", "oracle", "sac-no-context", "--seeds", "42",
            "--workers", "1", "--out", str(tmp_path), "--set", "num_iterations=3", "--set",
            "num_train_steps_per_itr=30"]
    runner = subprocess.Popen([sys.executable, "-m", "experiments.benchmark", "--no-progress", *args], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # a liveness guard, not a speed target: generous, for a machine busy with other work
    deadline = time.monotonic() + 180
    try:
        while not ((oracle_dir / "results.json").exists() and (sac_dir / "checkpoint.pt").exists()):
            assert runner.poll() is None, runner.stdout.read()
            assert time.monotonic() < deadline, "the runner did not get halfway in time"
            time.sleep(0.05)
        assert not (sac_dir / "results.json").exists(), "the second cell finished before the kill"
        runner.send_signal(signal.SIGTERM)
        output, _ = runner.communicate(timeout=30)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode != 0
    assert "interrupted" in output
    assert not processes_mentioning(str(sac_dir)), "a cell process outlived the killed runner"
    assert not (sac_dir / "stale.txt").exists()
    assert not (sac_dir / "results.json").exists() and (sac_dir / "checkpoint.pt").exists()
    # the report said what the runner was asked for from its start, though it never finished
    assert json.loads((tmp_path / "smoke" / "results.json").read_text())["plan"]["algos"] == ["oracle", "sac-no-context"]
    oracle_mtime = (oracle_dir / "results.json").stat().st_mtime_ns

    assert benchmark.main(["--no-progress", *args]) == 0  # the rerun, in-process
    assert (oracle_dir / "results.json").stat().st_mtime_ns == oracle_mtime, "the finished cell was rerun"
    assert "resuming point-robot/sac-no-context/42" in capsys.readouterr().out
    assert "--resume" in (sac_dir / "stderr.log").read_text()
    iterations = [json.loads(line)["iteration"] for line in (sac_dir / "metrics.jsonl").read_text().splitlines()]
    assert iterations == [0, 1, 2]
    sac_results = json.loads((sac_dir / "results.json").read_text())
    assert sac_results["grad_steps"] == 3 * 30

    summary = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert {(c["env"], c["algo"], c["seed"]) for c in summary["cells"]} == {
        ("point-robot", "oracle", 42), ("point-robot", "sac-no-context", 42)}
    markdown = (tmp_path / "smoke" / "RESULTS.md").read_text()
    assert f"{sac_results['meta_test_return']:.2f} (n=1)" in markdown
    assert "| 3 | 30 |" in markdown  # the budget row: iterations, gradient steps per iteration
    # the validation figure stands beside the test figures, in its own column
    assert "| validation tasks (low-noise) |" in markdown
    # every method's networks are stated, read from its cells' saved configs (the scripted oracle has none)
    assert "**Architectures.** SAC (no context): no encoder, z = 0; actor and critic 3 x 300" in markdown
    assert f"| point-robot | SAC (no context) | 42 | `{sac_results['git_commit'][:7]}" in markdown  # the Cells section
    assert f"**Machines** (the CPU each cell ran on; each cell's under [Cells](#cells)). " \
           f"{sac_results['machine']['cpu']}" in markdown
    assert f"| {sac_results['final_eval']['validation_return']:.2f} (n=1) |" in markdown


def test_reports_name_whether_a_cpu_computes_bf16_natively():
    from experiments.report import cpu_label
    assert cpu_label({"cpu": "AMD EPYC", "cpu_native_bf16": True}) == "AMD EPYC (native bf16)"
    assert cpu_label({"cpu": "AMD EPYC", "cpu_native_bf16": False}) == "AMD EPYC (no native bf16)"
    assert cpu_label({"cpu": "AMD EPYC"}) == "AMD EPYC"  # recorded before the flag existed: the model alone
    assert cpu_label(None) == "unknown CPU"


def test_failed_cell_is_reported_and_the_others_still_run(tmp_path, capsys):
    from algos.core.config import to_dict
    from algos.core.trainer import build_config

    # a cell whose checkpoint is corrupt: the runner resumes it, the run fails, the oracle cell still finishes
    broken = cell_path(tmp_path, "sac-no-context")
    broken.mkdir(parents=True)
    config = build_config("point-robot", "sac-no-context", "smoke", 42)
    (broken / "config.json").write_text(json.dumps(to_dict(config)))
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")
    code = benchmark.main(["--tier", "smoke", "--envs", "point-robot", "--algos", "oracle", "sac-no-context",
                           "--seeds", "42", "--workers", "2", "--out", str(tmp_path), "--no-progress"])
    assert code == 1
    assert "FAILED point-robot/sac-no-context/42" in capsys.readouterr().out
    assert "corrupt" in (broken / "stderr.log").read_text()
    assert (cell_path(tmp_path, "oracle") / "results.json").exists()
    markdown = (tmp_path / "smoke" / "RESULTS.md").read_text()
    assert "cell point-robot/sac-no-context/42 failed" in markdown
    assert "— (0/1 seeds)" in table_row(markdown, "SAC (no context)")


def test_claims_are_per_cell_and_released_with_their_file(tmp_path):
    cell = Cell("point-robot", "oracle", 42, cell_path(tmp_path, "oracle"))
    other_runner = claim_cell(cell)
    assert other_runner is not None
    assert not cell.run_dir.exists(), "the claim lives beside the run folder, which a fresh start deletes"
    assert claim_cell(cell) is None  # held by the other runner
    other_runner.close()  # the other runner exits (or is killed): its claims go with it
    this_runner = claim_cell(cell)
    assert this_runner is not None
    this_runner.close()


def test_a_runner_claims_each_cell_as_it_starts_it(tmp_path):
    # one worker, two cells: while the first runs, the second is unclaimed, so another runner can take it
    args = ["--tier", "smoke", "--envs", "point-robot", "--algos", "sac-no-context", "oracle", "--seeds", "42",
            "--workers", "1", "--out", str(tmp_path), "--set", "num_iterations=2"]
    first, second = (Cell("point-robot", algo, 42, cell_path(tmp_path, algo)) for algo in ("sac-no-context", "oracle"))
    runner = subprocess.Popen([sys.executable, "-m", "experiments.benchmark", "--no-progress", *args], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    other_runner = None
    deadline = time.monotonic() + 180  # a liveness guard, not a speed target
    try:
        while not (first.run_dir / "config.json").exists():
            assert runner.poll() is None, runner.stdout.read()
            assert time.monotonic() < deadline, "the first cell did not start in time"
            time.sleep(0.05)
        assert claim_cell(first) is None, "the running cell is not claimed"
        other_runner = claim_cell(second)
        assert other_runner is not None, "a cell the runner has not started yet is claimed already"
        output, _ = runner.communicate(timeout=180)
    finally:
        if runner.poll() is None:
            runner.kill()
        if other_runner is not None:
            other_runner.close()
    assert runner.returncode == 0, output
    assert (first.run_dir / "results.json").exists() and not second.run_dir.exists()
    assert "point-robot/oracle/42 is being run by another runner; left to it" in output


def test_two_runners_share_a_tier_folder_and_the_table_keeps_both_plans(tmp_path, capsys):
    args = ["--tier", "smoke", "--envs", "point-robot", "--seeds", "42", "--out", str(tmp_path), "--no-progress"]
    oracle = Cell("point-robot", "oracle", 42, cell_path(tmp_path, "oracle"))
    other_runner = claim_cell(oracle)  # another runner is running the oracle cell
    try:
        assert benchmark.main([*args, "--algos", "oracle", "sac-no-context"]) == 0
    finally:
        other_runner.close()
    assert "point-robot/oracle/42 is being run by another runner; left to it" in capsys.readouterr().out
    assert not oracle.run_dir.exists(), "a cell another runner holds was started"
    sac_results = cell_path(tmp_path, "sac-no-context") / "results.json"
    sac_mtime = sac_results.stat().st_mtime_ns

    # the other runner's own command, run once the cell is free: it runs only its cell, and its table keeps the
    # sac-no-context row the first runner's plan had
    assert benchmark.main([*args, "--algos", "oracle"]) == 0
    assert (oracle.run_dir / "results.json").exists() and sac_results.stat().st_mtime_ns == sac_mtime
    summary = json.loads((tmp_path / "smoke" / "results.json").read_text())
    assert summary["plan"]["algos"] == ["oracle", "sac-no-context"] and len(summary["cells"]) == 2
    assert "SAC (no context)" in (tmp_path / "smoke" / "RESULTS.md").read_text()


def test_merged_plan_widens_and_recomputes_what_cannot_exist():
    previous = {"envs": ["point-robot"], "algos": ["pearl", "oracle"], "seeds": [123, 42], "skipped": []}
    current = {"envs": ["cheetah-vel"], "algos": ["oracle"], "seeds": [456], "skipped": []}
    plan = merged_plan(previous, current)
    assert plan["envs"] == ["point-robot", "cheetah-vel"] and plan["algos"] == ["pearl", "oracle"]
    assert plan["seeds"] == [42, 123, 456]
    assert [(s["env"], s["algo"]) for s in plan["skipped"]] == [("cheetah-vel", "oracle")]
    assert merged_plan({}, current)["envs"] == ["cheetah-vel"]


def test_a_runner_of_other_methods_on_other_environments_adds_only_its_own_combinations():
    # a plan written before plans listed their combinations stands for envs x algos
    previous = {"envs": ["point-robot"], "algos": ["pearl", "setformer"], "seeds": [42], "skipped": []}
    current = {"envs": ["cheetah-vel"], "algos": ["setformer"], "seeds": [42],
               "combinations": [["cheetah-vel", "setformer"]], "skipped": []}
    plan = merged_plan(previous, current)
    assert plan["combinations"] == [["point-robot", "pearl"], ["point-robot", "setformer"], ["cheetah-vel", "setformer"]]
    assert merged_plan(plan, {})["combinations"] == plan["combinations"]
    cells = [synthetic_cell("pearl", 42, -10.0, -11.0), synthetic_cell("setformer", 42, -6.0, -5.0)]
    summary = {"tier": "quick", "command": "c", "generated_at": "now", "git_commit": "abc", "std_ddof": 1,
               "machine": {"cpu": "test cpu", "cores": 2, "torch": "x"}, "plan": plan, "notes": [], "cells": cells}
    markdown = render_markdown(summary)
    assert "setformer (ours) on cheetah-vel: seed(s) 42 not finished" in markdown
    assert "PEARL on cheetah-vel" not in markdown
    cheetah_section = markdown.split("## cheetah-vel")[1].split("\n## ")[0]
    assert "| setformer (ours) |" in cheetah_section and "| PEARL |" not in cheetah_section


# ---------------------------------------------------------------------- the renderer on fixed numbers
def synthetic_cell(algo: str, seed: int, protocol_return: float, final_return: float) -> dict:
    return {
        "env": "point-robot", "algo": algo, "seed": seed, "tier": "quick",
        "meta_test_return": protocol_return,
        "final_eval": {"meta_test_return": final_return, "num_repeats": 10, "online_returns": [-20.0, -15.0, -12.0]},
        "online_returns": [-20.0, -16.0, protocol_return],
        "learning_curve": [{"iteration": 0, "meta_test_return": -18.0}, {"iteration": 1,
                                                                         "meta_test_return": protocol_return}],
        "env_steps": 10_400, "grad_steps": 400, "wall_time_s": 120.0, "parameter_count": 818_917,
        "git_commit": "abc", "machine": {"cpu": "test cpu", "cores": 2},
        "protocol": {"num_iterations": 2, "num_train_steps_per_itr": 200, "meta_batch": 16, "batch_size": 64,
                     "embedding_batch_size": 64, "num_steps_per_eval": 60, "num_exp_traj_eval": 1, "num_evals": 2},
    }


@pytest.fixture
def synthetic_summary() -> dict:
    cells = [synthetic_cell("pearl", 42, -10.0, -11.5), synthetic_cell("pearl", 123, -12.0, -12.5),
             synthetic_cell("setformer", 42, -6.0, -5.0)]
    return {"tier": "quick", "command": "python -m experiments.benchmark --tier quick", "generated_at": "now",
            "machine": {"cpu": "test cpu", "cores": 2, "torch": "x"}, "git_commit": "abc", "std_ddof": 1,
            "plan": {"envs": ["point-robot"], "algos": ["pearl", "varibad", "setformer"], "seeds": [42, 123],
                     "skipped": []},
            "notes": [], "cells": cells}


def table_row(markdown: str, name: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))


def test_renderer_states_exact_figures(synthetic_summary):
    markdown = render_markdown(synthetic_summary, {"point-robot": "curves_point-robot.png"})
    pearl = table_row(markdown, "PEARL")
    assert "-11.00 ± 1.41 (n=2)" in pearl                 # protocol: mean, sample std (ddof=1), seeds
    assert "-12.00 ± 0.71 (n=2)" in pearl                 # low-noise final eval
    assert "42: -10.00 · 123: -12.00" in pearl            # per seed
    assert "-20.0 / -16.0 / -11.0" in pearl               # online returns per episode, mean over seeds
    assert "| 818,917 |" in pearl and "| 2.00 |" in pearl  # parameters, wall time in minutes (120 s)
    assert "-15.468†" in pearl                            # the reference's PEARL beside ours
    ours = table_row(markdown, "setformer (ours)")
    assert "-6.00 (n=1/2)" in ours and "-5.00 (n=1/2)" in ours and "123: —" in ours
    varibad = table_row(markdown, "VariBAD (online SAC variant)")
    assert "— (0/2 seeds)" in varibad and "-12.494†" in varibad
    # every reference number (docs/PROTOCOL.md#reference-numbers) for this env, labelled as not comparable
    for number in ("-12.862", "-15.468", "-12.494", "-9.803"):
        assert number in markdown
    assert REFERENCE_LABEL in markdown
    assert "-4.60" in markdown                            # known-task optimum
    # ours minus the strongest baseline (PEARL) on the seeds both ran: seed 42 only, not ours' 42 against PEARL's mean
    assert ("setformer (ours) minus the strongest baseline run here at equal budget (PEARL): +4.00 on the protocol "
            "figure (on seed 42, the ones both have run), +6.50 on the low-noise figure (on seed 42, the ones both "
            "have run).") in markdown
    # where another baseline is strongest on the low-noise figure, each figure names its own
    focal = synthetic_cell("focal", 42, -13.0, -4.0)
    markdown = render_markdown({**synthetic_summary, "cells": synthetic_summary["cells"] + [focal]},
                               {"point-robot": "curves_point-robot.png"})
    assert ("setformer (ours) minus the strongest baseline run here at equal budget (PEARL on the protocol figure, "
            "FOCAL (online SAC variant) on the low-noise one): +4.00 on the protocol figure (on seed 42, the ones both "
            "have run), -1.00 on the low-noise figure.") in markdown
    assert "ddof = 1" in markdown
    assert "| point-robot | 2 | 200 | 16 × 64 | 64 | 10,400 | 400 |" in markdown
    assert "![Learning curves on point-robot](curves_point-robot.png)" in markdown
    assert "VariBAD (online SAC variant) on point-robot: seed(s) 42, 123 not finished." in markdown


def test_reference_numbers_are_equals_only_at_the_benchmark_tier(synthetic_summary):
    from experiments.results_table import REFERENCE_LABEL_SAME_BUDGET
    quick = render_markdown(synthetic_summary)
    assert REFERENCE_LABEL in quick and "not comparable budget" in quick
    full = render_markdown({**synthetic_summary, "tier": "benchmark"})
    assert REFERENCE_LABEL_SAME_BUDGET in full and "not comparable" not in full
    assert "(-9.803, same budget)" in full


def test_renderer_links_the_companion_files_that_exist(synthetic_summary, tmp_path):
    from experiments.results_table import write_report
    assert "See also" not in render_markdown(synthetic_summary)
    tier_dir = tmp_path / "quick"
    tier_dir.mkdir()
    (tier_dir / "REEVALUATIONS_setformer.md").write_text("# Re-evaluations\n")
    (tier_dir / "RERUN_CHECKS.md").write_text("# Rerun checks\n")
    (tmp_path / "ablations").mkdir()
    (tmp_path / "ablations" / "ABLATIONS_quick.md").write_text("# Training ablations\n")
    (tmp_path / "ablations" / "ABLATIONS_benchmark.md").write_text("# another tier's\n")
    _results, markdown_path = write_report(tier_dir, synthetic_summary)
    see_also = next(line for line in markdown_path.read_text().splitlines() if line.startswith("**See also.**"))
    assert "[REEVALUATIONS_setformer.md](REEVALUATIONS_setformer.md)" in see_also
    assert "REEVALUATIONS_pearl" not in see_also          # no PEARL re-evaluation here: not linked
    assert "[RERUN_CHECKS.md](RERUN_CHECKS.md)" in see_also
    assert "[../ablations/ABLATIONS_quick.md](../ablations/ABLATIONS_quick.md)" in see_also  # this tier's only
    assert "ABLATIONS_benchmark" not in see_also
    assert "THROUGHPUT" not in see_also                   # no ../THROUGHPUT.md here: not linked


def cells_row(markdown: str, method: str, seed: int) -> list[str]:
    """The Cells section's row of one point-robot cell, split into its columns."""
    rows = markdown.split("## Cells", 1)[1].splitlines()
    return next(r for r in rows if r.startswith(f"| point-robot | {method} | {seed} |")).strip("| ").split(" | ")


def test_renderer_names_the_code_each_method_ran(synthetic_summary):
    synthetic_summary["cells"][1]["git_commit"] = "0123456789abcdef-dirty"
    markdown = render_markdown(synthetic_summary)
    code = next(line for line in markdown.splitlines() if line.startswith("**Code.**"))
    assert "PEARL 2 commits over 2 cells" in code  # mixed versions of one method are flagged in the setup
    assert "setformer (ours) `abc`" in code
    assert cells_row(markdown, "PEARL", 42)[3] == "`abc`" and cells_row(markdown, "PEARL", 123)[3] == "`0123456-dirty`"
    assert cells_row(markdown, "PEARL", 42)[6] == "2.0"  # wall time in minutes (120 s)
    # a cell resumed at another commit names both, in order
    synthetic_summary["cells"][2]["git_commits"] = ["abc", "fedcba9876543210"]
    markdown = render_markdown(synthetic_summary)
    assert "setformer (ours) `abc → fedcba9`" in next(l for l in markdown.splitlines() if l.startswith("**Code.**"))
    assert cells_row(markdown, "setformer (ours)", 42)[3] == "`abc → fedcba9`"


def test_renderer_names_the_arithmetic_of_each_cell(synthetic_summary):
    def line() -> str:
        return next(l for l in render_markdown(synthetic_summary).splitlines() if l.startswith("**Arithmetic.**"))
    assert "fp32 in every cell" in line()  # no bf16 recorded: a cell from before the option ran fp32
    for cell in synthetic_summary["cells"]:
        cell["bf16"] = True
    assert "bf16 autocast in every cell" in line()
    # a cell filled on a machine without native bf16 ran fp32 (bf16=auto): the table says which
    synthetic_summary["cells"][1]["bf16"] = False
    text = line()
    assert "PEARL bf16 autocast (1 cell), fp32 (1 cell)" in text
    assert "setformer (ours) bf16 autocast" in text and "every cell" not in text
    markdown = render_markdown(synthetic_summary)
    assert cells_row(markdown, "PEARL", 42)[4] == "bf16 autocast" and cells_row(markdown, "PEARL", 123)[4] == "fp32"
    assert text.index("PEARL") < text.index("setformer")  # the tables' method order
    # a method that takes no gradient steps (the oracle) has no arithmetic to name
    synthetic_summary["cells"][1]["bf16"] = True
    synthetic_summary["cells"].append({**synthetic_summary["cells"][2], "algo": "oracle", "grad_steps": 0,
                                       "bf16": False})
    assert "bf16 autocast in every cell" in line()


def test_cell_record_reads_the_resolved_precision_from_the_config():
    assert cell_record({"config": {"bf16": True}}, "cells/x")["bf16"] is True
    assert cell_record({"config": {"bf16": False}}, "cells/x")["bf16"] is False
    assert cell_record({"config": {}}, "cells/x")["bf16"] is False  # saved before the option existed: fp32


def test_setup_table_counts_the_test_tasks_each_figure_averages(synthetic_summary):
    def setup_row() -> str:
        return table_row(render_markdown(synthetic_summary), "point-robot")
    assert setup_row().endswith("| — |")  # cells that kept no per-task figures
    for cell in synthetic_summary["cells"]:
        cell["final_eval"]["per_task_final_returns"] = [-10.0] * 30
    assert setup_row().endswith("| 30 |")
    synthetic_summary["cells"][0]["final_eval"]["per_task_final_returns"] = [-10.0] * 2
    assert "2 / 30 (differs between cells!)" in setup_row()


def test_renderer_flags_unequal_budgets(synthetic_summary):
    synthetic_summary["cells"][2]["grad_steps"] = 800
    markdown = render_markdown(synthetic_summary)
    assert "Unequal budget on point-robot" in markdown


# ---------------------------------------------------------------------- throughput
def test_throughput_measures_and_skips_unimportable_methods(tmp_path, monkeypatch):
    from experiments import throughput

    real_algorithm_class = throughput.algorithm_class

    def half_written(name: str):
        if name == "oracle":
            raise ImportError("still being written")
        return real_algorithm_class(name)

    monkeypatch.setattr(throughput, "algorithm_class", half_written)
    code = throughput.main(["--tier", "smoke", "--algos", "sac-no-context", "oracle", "--grad-steps", "2",
                            "--warmup", "1", "--adapt-repeats", "3", "--context-sizes", "10", "100",
                            "--threads", "1", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "throughput.json").read_text())
    assert report["threads"] == 1 and report["git_commit"] and report["machine"]["cores"]
    by_algo = {r["algo"]: r for r in report["results"]}
    sac = by_algo["sac-no-context"]
    assert sac["status"] == "ok"
    gradient = sac["gradient"]
    assert all(gradient[name]["grad_steps_per_s"] > 0 for name in ("default", "bf16", "fp32", "bf16_eager"))
    # the fused hidden layers compared with the eager ones weight for weight where they apply (whether the two agree
    # bit for bit is the CPU's kernels' business: THROUGHPUT.md reports it per machine)
    from models.kernels import cpu_has_native_bf16
    if cpu_has_native_bf16():
        assert isinstance(sac["fused_matches_eager"], bool)
    else:
        assert sac["fused_matches_eager"] is None
    assert gradient["flops_per_step"] > 0 and gradient["default"]["gflop_per_s"] > 0
    assert sac["initial_collection"]["env_steps_per_s"] > 0 and sac["iteration_collection"]["env_steps"] > 0
    assert set(sac["adapt"]) == {"10", "100"} and sac["adapt"]["100"]["adapt_ms_median"] > 0
    assert by_algo["oracle"]["status"] == "skipped"
    markdown = (tmp_path / "THROUGHPUT.md").read_text()
    assert "| sac-no-context |" in markdown and "still being written" in markdown
    # GFLOP/step is the counted FLOPs of one step
    assert f"| {gradient['flops_per_step'] / 1e9:,.2f} |" in markdown
    # the peaks the rates are set against were measured in the same run, and each rate's share of its own peak shown
    peak = report["matmul_peak"]
    assert peak["shape"] == [4 * 32, 300, 300] and peak["fp32_gflop_per_s"] > 0 and peak["bf16_gflop_per_s"] > 0
    fp32_share = 100 * gradient["fp32"]["gflop_per_s"] / peak["fp32_gflop_per_s"]
    assert f"| {fp32_share:.0f} % |" in markdown and "Matrix-multiply peak in this process" in markdown
    # without native bf16, the bf16 rate is set against the emulated products' peak, measured beside torch's own
    bf16_ceiling = peak["bf16_gflop_per_s"] if cpu_has_native_bf16() else peak["bf16_emulated_gflop_per_s"]
    assert ("bf16_emulated_gflop_per_s" in peak) is (not cpu_has_native_bf16())
    assert f"| {100 * gradient['bf16']['gflop_per_s'] / bf16_ceiling:.0f} % |" in markdown


def test_throughput_skips_combinations_that_do_not_exist(tmp_path):
    from experiments import throughput

    code = throughput.main(["--tier", "smoke", "--algos", "oracle", "--envs", "cheetah-vel", "--threads", "1",
                            "--out", str(tmp_path)])
    assert code == 0  # not a failure: the oracle exists only for the point robots
    (result,) = json.loads((tmp_path / "throughput.json").read_text())["results"]
    assert result["status"] == "not run" and "point robots" in result["notes"][0]


def test_renderer_names_hyperparameters_that_differ_between_methods(synthetic_summary):
    assert "Hyperparameters that differ" not in render_markdown(synthetic_summary)  # nothing recorded: no line
    for cell in synthetic_summary["cells"]:
        ours = cell["algo"] == "setformer"
        cell["shared_hyperparameters"] = {"lr": 0.001 if ours else 0.0003, "tau": 0.005}
    line = next(l for l in render_markdown(synthetic_summary).splitlines() if "Hyperparameters that differ" in l)
    assert "`lr`: PEARL 0.0003; setformer (ours) 0.001" in line
    assert "tau" not in line  # the same everywhere: not listed
    # a cell saved before an option existed ran at its default: a method that switched it on later still shows
    for cell in synthetic_summary["cells"]:
        if cell["algo"] == "setformer":
            cell["shared_hyperparameters"]["learn_temperature"] = True
    line = next(l for l in render_markdown(synthetic_summary).splitlines() if "Hyperparameters that differ" in l)
    assert "`learn_temperature`: PEARL False; setformer (ours) True" in line


def test_hand_written_findings_are_included_and_labelled(synthetic_summary):
    assert "## Findings" not in render_markdown(synthetic_summary)
    synthetic_summary["findings"] = "PEARL lands below its reference on sparse-point-robot.\n"
    markdown = render_markdown(synthetic_summary)
    assert "## Findings" in markdown and "Written by hand in `FINDINGS.md`" in markdown
    # included as written, right before the provenance appendix
    assert markdown.split("\n## Cells")[0].rstrip().endswith("PEARL lands below its reference on sparse-point-robot.")


def test_margin_over_a_baseline_pairs_seeds():
    from experiments.results_table import _paired_difference
    both = _paired_difference({42: -6.0, 123: -8.0}, {42: -10.0, 123: -9.0}, "protocol")
    assert both == "+2.50 on the protocol figure"
    assert _paired_difference({42: -6.0, 123: -8.0}, {123: -9.0}, "protocol") == (
        "+1.00 on the protocol figure (on seed 123, the ones both have run)")
    assert _paired_difference({42: -6.0}, {123: -9.0}, "low-noise") == "no low-noise figure on a seed both have run"


def test_renderer_adds_a_success_rate_column_only_where_cells_report_success(synthetic_summary):
    header = next(line for line in render_markdown(synthetic_summary).splitlines() if line.startswith("| method |"))
    assert "success rate" not in header  # environments without a success flag: the table as before
    reach = []
    for cell, success in zip(synthetic_summary["cells"], (0.5, 0.7, 0.2)):
        reach.append({**cell, "env": "ml1-reach", "final_eval": {**cell["final_eval"], "meta_test_success": success}})
    markdown = render_markdown({**synthetic_summary, "plan": {**synthetic_summary["plan"], "envs": ["ml1-reach"]},
                                "cells": reach})
    header = next(line for line in markdown.splitlines() if line.startswith("| method |")).split(" | ")
    pearl = table_row(markdown, "PEARL").split(" | ")
    assert pearl[header.index("success rate (low-noise)")] == "0.60 ± 0.14 (n=2)"
    assert table_row(markdown, "setformer (ours)").split(" | ")[header.index("success rate (low-noise)")] \
        == "0.20 (n=1/2)"


def test_renderer_of_a_tier_with_no_cells_says_so(synthetic_summary):
    markdown = render_markdown({**synthetic_summary, "plan": {}, "cells": []})
    assert "No cell of this tier has finished yet" in markdown and "## Setup" not in markdown


def test_renderer_names_every_cpu_a_resumed_cell_ran_on(synthetic_summary):
    def line() -> str:
        return next(l for l in render_markdown(synthetic_summary).splitlines() if l.startswith("**Machines**"))
    for cell in synthetic_summary["cells"]:
        cell["machine"] = {"cpu": "CPU A", "cpu_native_bf16": True}
    assert "CPU A (native bf16): 3 cells (PEARL 2, setformer (ours) 1)." in line()
    # resumed on another CPU, and (a checkpoint from before segments were recorded) started on one not on record
    synthetic_summary["cells"][1]["machines"] = [{"cpu": "CPU A", "cpu_native_bf16": True},
                                                 {"cpu": "CPU B", "cpu_native_bf16": False}]
    synthetic_summary["cells"][2]["machines"] = [None, {"cpu": "CPU B", "cpu_native_bf16": False}]
    text = line()
    assert "CPU A (native bf16): 1 cell (PEARL 1) · " in text
    assert "CPU A (native bf16) then CPU B (no native bf16): 1 cell (PEARL 1)" in text
    assert "a CPU not recorded then CPU B (no native bf16): 1 cell (setformer (ours) 1)." in text
    markdown = render_markdown(synthetic_summary)
    assert cells_row(markdown, "PEARL", 42)[5] == "CPU A (native bf16)"
    assert cells_row(markdown, "PEARL", 123)[5] == "CPU A (native bf16) then CPU B (no native bf16)"
    assert cells_row(markdown, "setformer (ours)", 42)[5] == "a CPU not recorded then CPU B (no native bf16)"
