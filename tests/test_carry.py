"""experiments.carry: a killed run's git-ignored files move to another checkout through carry/, and it resumes
exactly."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from algos.core.io import REPO_ROOT, CheckpointError, atomic_torch_save, load_checkpoint
from algos.core.trainer import Trainer
from experiments import carry
from tests.conftest import make_trainer, read_metrics, strip_nondeterministic

CELL = Path("benchmarks/benchmark/cells/point-robot/sac-no-context/7")


@pytest.fixture
def repo(tmp_path) -> Path:
    """A git repository with this project's ignore rules."""
    root = tmp_path / "repo"
    root.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    shutil.copy(REPO_ROOT / ".gitignore", root / ".gitignore")
    return root


def fake_cell(repo: Path, relative: Path, iteration: int, seed: int = 7, finished: bool = False) -> Path:
    """A cell folder as the runner leaves it, with a checkpoint that holds only what carry reads."""
    run_dir = repo / relative
    run_dir.mkdir(parents=True)
    identity = {"env": "point-robot", "algo": "sac-no-context", "tier": "benchmark", "seed": seed}
    (run_dir / "config.json").write_text(json.dumps({**identity, "protocol": {"num_iterations": 20}}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"iteration": i, "wall_time_s": 100.0 * (i + 1)}) + "\n"
                                              for i in range(iteration + 1)))
    (run_dir / "wall_time.json").write_text(json.dumps({"elapsed": 100.0 * (iteration + 1)}))
    (run_dir / "tb").mkdir()
    (run_dir / "tb" / "events.out.tfevents.1").write_bytes(b"events")
    atomic_torch_save(run_dir / "checkpoint.pt", {"iteration": iteration, "algorithm": {}, "identity": identity})
    if finished:
        (run_dir / "results.json").write_text("{}")
    return run_dir


def lose_ignored_files(repo: Path) -> None:
    """What a fresh checkout does to the working tree: every file git ignores is gone, the rest stays."""
    subprocess.run(["git", "clean", "-q", "-fdX"], cwd=repo, check=True)


def carried(repo: Path) -> list[str]:
    """The run files carry/ holds, as ``<run path>/<file>``."""
    root = repo / carry.CARRY_DIR
    return sorted(f"{run}/{name}" for run in carry.carried_runs(root) for name in carry.manifest_of(root / run))


def test_save_copies_exactly_the_files_a_checkout_loses(repo):
    cell = fake_cell(repo, CELL, iteration=4)
    fake_cell(repo, CELL.parent / "8", iteration=19, finished=True)
    (repo / "runs/point-robot/setformer").mkdir(parents=True)  # an experiments.run folder: ignored whole
    fake_cell(repo, Path("runs/point-robot/setformer/1-stamp"), iteration=2)
    rows = carry.save(repo, ["benchmarks", "runs"])
    assert [row[:3] for row in rows] == [[str(CELL), "saved", "5"],
                                         ["runs/point-robot/setformer/1-stamp", "saved", "3"]]
    assert carried(repo) == [f"{CELL}/checkpoint.pt", f"{CELL}/tb/events.out.tfevents.1", f"{CELL}/wall_time.json",
                             *(f"runs/point-robot/setformer/1-stamp/{name}" for name in
                               ("checkpoint.pt", "config.json", "metrics.jsonl", "tb/events.out.tfevents.1",
                                "wall_time.json"))]
    carried_run = repo / carry.CARRY_DIR / CELL
    assert carry.read_carried(carried_run, "checkpoint.pt") == (cell / "checkpoint.pt").read_bytes()
    # small files are one part each, beside the manifest that names them
    assert sorted(p.name.split(".")[0] for p in carried_run.rglob("*") if p.is_file() and p.name != carry.LOCK) == [
        "MANIFEST", "checkpoint", "events", "wall_time"]
    # carry/ is untracked and not ignored: it goes wherever the working tree's untracked files go
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo,
                            capture_output=True, text=True, check=True).stdout
    assert f"?? carry/{CELL}/MANIFEST.json" in status and ".part000" in status
    assert not carry.carry_is_ignored(repo)


def test_restore_after_a_fresh_checkout(repo):
    cell = fake_cell(repo, CELL, iteration=4)
    checkpoint_bytes = (cell / "checkpoint.pt").read_bytes()
    carry.save(repo, ["benchmarks"])
    lose_ignored_files(repo)
    assert not (cell / "checkpoint.pt").exists() and (cell / "metrics.jsonl").exists()
    assert carry.listing(repo)[0][1:3] == ["checkpoint missing", "5"]
    # saving again now must keep the only copy left
    assert carry.save(repo, ["benchmarks"]) == [[str(CELL), "kept (the run's own checkpoint is gone)", "5", "—"]]
    assert carry.restore(repo) == [[str(CELL), "restored", "5"]]
    assert (cell / "checkpoint.pt").read_bytes() == checkpoint_bytes
    assert (cell / "tb" / "events.out.tfevents.1").read_bytes() == b"events"
    assert json.loads((cell / "wall_time.json").read_text()) == {"elapsed": 500.0}
    assert not (repo / carry.CARRY_DIR).exists()  # restored copies are removed: the tree is clean again


def test_restore_never_replaces_a_newer_checkpoint_and_drops_finished_runs(repo):
    cell = fake_cell(repo, CELL, iteration=4)
    done = fake_cell(repo, CELL.parent / "8", iteration=6)
    carry.save(repo, ["benchmarks"])
    atomic_torch_save(cell / "checkpoint.pt", {"iteration": 9, "algorithm": {}, "identity": {"seed": 7}})
    (done / "results.json").write_text("{}")
    rows = carry.restore(repo)
    assert rows == [[str(CELL), "dropped (the run's own checkpoint is as new)", "5"],
                    [str(CELL.parent / "8"), "dropped (the run finished)", "—"]]
    assert load_checkpoint(cell / "checkpoint.pt")["iteration"] == 9
    assert not (repo / carry.CARRY_DIR).exists()


def test_restore_refuses_another_runs_checkpoint(repo, capsys):
    cell = fake_cell(repo, CELL, iteration=4)
    carry.save(repo, ["benchmarks"])
    lose_ignored_files(repo)
    config = json.loads((cell / "config.json").read_text())
    (cell / "config.json").write_text(json.dumps({**config, "seed": 8}))
    with pytest.raises(CheckpointError, match="seed 7 in the checkpoint, 8 in"):
        carry.restore(repo)
    assert carry.main(["restore"], repo=repo) == 1
    assert "belongs to another run" in capsys.readouterr().err
    assert not (cell / "checkpoint.pt").exists() and carried(repo)  # nothing restored, nothing thrown away


def test_save_refuses_an_ignored_carry_folder(repo):
    fake_cell(repo, CELL, iteration=1)
    with open(repo / ".gitignore", "a") as handle:
        handle.write("carry/\n")
    with pytest.raises(SystemExit):
        carry.main(["save"], repo=repo)
    assert not carried(repo)


def test_killed_run_carried_through_a_fresh_checkout_resumes_exactly(repo, monkeypatch):
    """End to end: a real run killed after two of four iterations, its ignored files lost and restored from carry/
    (the checkpoint in several parts), resumes to the very numbers of an uninterrupted run."""
    monkeypatch.setattr(carry, "PART_BYTES", 256 * 1024)
    overrides = ["num_iterations=4"]
    reference = make_trainer("point-robot", repo.parent / "reference", seed=7, overrides=overrides)
    reference_results = reference.run()
    run_dir = repo / CELL
    trainer = make_trainer("point-robot", run_dir, seed=7, overrides=overrides)
    original, calls = trainer.algorithm.train_iteration, []

    def killed_at_third(iteration_idx):
        calls.append(iteration_idx)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(iteration_idx)

    trainer.algorithm.train_iteration = killed_at_third
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert carry.save(repo, ["benchmarks"])[0][:3] == [str(CELL), "saved", "2"]
    assert len(json.loads((repo / carry.CARRY_DIR / CELL / carry.MANIFEST).read_text())["checkpoint.pt"]["parts"]) > 2
    lose_ignored_files(repo)
    assert not (run_dir / "checkpoint.pt").exists()
    carry.restore(repo)
    results = Trainer.from_run_dir(run_dir, progress=False).run(resume=True)
    assert strip_nondeterministic(read_metrics(run_dir)) == strip_nondeterministic(read_metrics(repo.parent /
                                                                                                "reference"))
    assert results["final_eval"] == reference_results["final_eval"]


def test_save_keeps_a_carried_copy_ahead_of_a_run_started_afresh(repo):
    fake_cell(repo, CELL, iteration=9)
    carry.save(repo, ["benchmarks"])
    shutil.rmtree(repo / CELL)
    fake_cell(repo, CELL, iteration=0)  # restarted from scratch without a restore
    assert carry.save(repo, ["benchmarks"]) == [
        [str(CELL), "kept (the carried copy is ahead of the run's: restore it)", "10", "—"]]
    assert carry.carried_iteration(repo / carry.CARRY_DIR / CELL) == 9
    assert not list((repo / carry.CARRY_DIR / CELL).glob("*.tmp"))  # the joined copy it mapped is gone


@pytest.mark.parametrize("runner", ["benchmark", "ablations"])
def test_runners_refuse_to_start_afresh_a_cell_whose_checkpoint_is_carried(repo, monkeypatch, capsys, runner):
    from experiments import ablations, benchmark, engine

    monkeypatch.setattr(engine, "carried_checkpoint", lambda run_dir: carry.carried_checkpoint(run_dir, repo=repo))
    out = repo / "benchmarks" / ("ablations" if runner == "ablations" else "")
    if runner == "benchmark":
        cell = out / "smoke" / "cells" / "point-robot" / "setformer" / "42"
        main, args = benchmark.main, ["--tier", "smoke", "--envs", "point-robot", "--algos", "setformer",
                                      "--seeds", "42", "--out", str(out), "--no-progress"]
    else:
        cell = out / "no-reward-head" / "smoke" / "cells" / "point-robot" / "setformer" / "42"
        main, args = ablations.main, ["--tier", "smoke", "--ablations", "no-reward-head", "--envs", "point-robot",
                                      "--seeds", "42", "--out", str(out), "--no-progress"]
    cell.mkdir(parents=True)
    atomic_torch_save(cell / "checkpoint.pt", {"iteration": 3, "algorithm": {}})
    carry.write_carried(cell, [cell / "checkpoint.pt"], repo / carry.CARRY_DIR / cell.relative_to(repo))
    (cell / "checkpoint.pt").unlink()
    (cell / "metrics.jsonl").write_text('{"iteration": 0}\n')  # what a checkout leaves of it: no checkpoint
    assert main(args) == 2
    assert "carry/ holds a checkpoint of point-robot" in capsys.readouterr().err
    assert sorted(p.name for p in cell.iterdir()) == ["metrics.jsonl"]  # nothing started, nothing discarded


def test_status_shows_a_run_whose_checkpoint_only_carry_holds(repo, monkeypatch, capsys):
    from experiments import status

    monkeypatch.setattr(status, "carried_checkpoint", lambda run_dir: carry.carried_checkpoint(run_dir, repo=repo))
    fake_cell(repo, CELL, iteration=4)
    fake_cell(repo, CELL.parent / "8", iteration=2)
    carry.save(repo, ["benchmarks"])
    lose_ignored_files(repo)
    shutil.rmtree(repo / carry.CARRY_DIR / CELL.parent / "8")  # seed 8 was not carried: no checkpoint here
    assert status.main([str(repo / "benchmarks")]) == 0
    out = capsys.readouterr().out
    assert f"| {repo / CELL} | carried | 5/20 |" in out and "carry restore` first" in out
    assert f"{CELL.parent / '8'}" not in out


class _Bar:
    def __init__(self):
        self.lines = []

    def write(self, line):
        self.lines.append(line)


def test_runner_with_carry_copies_each_new_checkpoint_once_and_drops_the_copy_when_the_cell_finishes(repo):
    import os

    from experiments.engine import Cell, CellRunner, Outcome, RunningCell

    run_dir = fake_cell(repo, CELL, iteration=4)
    cell = Cell("point-robot", "sac-no-context", 7, run_dir)
    runner, bar = CellRunner([], 0, 1, "benchmark", [], 1, progress=False, carry_repo=repo), _Bar()
    running = RunningCell(cell, process=None, stderr=None)
    runner._carry(running, bar)
    carried_run = repo / carry.CARRY_DIR / CELL
    assert carry.carried_iteration(carried_run) == 4
    shutil.rmtree(carried_run)
    runner._carry(running, bar)  # the same checkpoint: not copied again
    assert not carried_run.exists()
    atomic_torch_save(run_dir / "checkpoint.pt", {"iteration": 5, "algorithm": {}, "identity": {"seed": 7}})
    os.utime(run_dir / "checkpoint.pt", ns=(running.carried_checkpoint_ns + 1, running.carried_checkpoint_ns + 1))
    runner._carry(running, bar)
    assert carry.carried_iteration(carried_run) == 5 and not bar.lines
    (run_dir / "results.json").write_text("{}")
    outcome = Outcome()
    runner._finish(running, 0, outcome, bar)
    assert outcome.finished == [cell] and not (repo / carry.CARRY_DIR).exists()


def test_runner_without_carry_copies_nothing(repo):
    from experiments.engine import Cell, CellRunner, RunningCell

    run_dir = fake_cell(repo, CELL, iteration=4)
    runner = CellRunner([], 0, 1, "benchmark", [], 1, progress=False)
    runner._carry(RunningCell(Cell("point-robot", "sac-no-context", 7, run_dir), process=None, stderr=None), _Bar())
    assert not (repo / carry.CARRY_DIR).exists()


def test_carry_flag_reaches_the_local_runner():
    from experiments import benchmark
    from experiments.benchmark import make_runner

    args = benchmark.parse_args(["--tier", "smoke", "--carry"])
    assert make_runner(args, [], 0, "smoke", [], REPO_ROOT).carry_repo == REPO_ROOT
    args = benchmark.parse_args(["--tier", "smoke"])
    assert make_runner(args, [], 0, "smoke", [], REPO_ROOT).carry_repo is None


@pytest.mark.parametrize("size, parts", [(0, 1), (1000, 1), (1001, 2), (2500, 3)])
def test_files_go_in_parts_of_at_most_part_bytes_and_come_back_byte_for_byte(tmp_path, monkeypatch, size, parts):
    monkeypatch.setattr(carry, "PART_BYTES", 1000)
    run_dir, carried_run = tmp_path / "run", tmp_path / "carry" / "run"
    (run_dir / "tb").mkdir(parents=True)
    data = bytes(range(256)) * 10
    (run_dir / "tb" / "events").write_bytes(data[:size])
    assert carry.write_carried(run_dir, [run_dir / "tb" / "events"], carried_run) == size
    entry = json.loads((carried_run / carry.MANIFEST).read_text())["tb/events"]
    assert len(entry["parts"]) == parts and entry["size"] == size
    assert all((carried_run / part).stat().st_size <= 1000 for part in entry["parts"])
    assert carry.read_carried(carried_run, "tb/events") == data[:size]


def test_a_new_save_replaces_the_previous_parts_and_leaves_no_strays(repo, monkeypatch):
    monkeypatch.setattr(carry, "PART_BYTES", 200)
    cell = fake_cell(repo, CELL, iteration=4)
    carry.save(repo, ["benchmarks"])
    atomic_torch_save(cell / "checkpoint.pt", {"iteration": 5, "algorithm": {"pad": b"x" * 500}, "identity": {}})
    carry.save(repo, ["benchmarks"])
    carried_run = repo / carry.CARRY_DIR / CELL
    manifest = json.loads((carried_run / carry.MANIFEST).read_text())
    named = {carry.MANIFEST, carry.LOCK, *(part for entry in manifest.values() for part in entry["parts"])}
    assert {p.relative_to(carried_run).as_posix() for p in carried_run.rglob("*") if p.is_file()} == named
    assert len(manifest["checkpoint.pt"]["parts"]) > 2 and carry.carried_iteration(carried_run) == 5


@pytest.mark.parametrize("damage, message", [("missing", "is incomplete: 1 of its"), ("flipped", "is corrupt")])
def test_a_carried_copy_that_came_back_damaged_is_an_error_naming_it(repo, monkeypatch, capsys, damage, message):
    monkeypatch.setattr(carry, "PART_BYTES", 200)
    cell = fake_cell(repo, CELL, iteration=4)
    atomic_torch_save(cell / "checkpoint.pt", {"iteration": 4, "algorithm": {"pad": b"x" * 500}, "identity": {}})
    carry.save(repo, ["benchmarks"])
    lose_ignored_files(repo)
    carried_run = repo / carry.CARRY_DIR / CELL
    part = carried_run / json.loads((carried_run / carry.MANIFEST).read_text())["checkpoint.pt"]["parts"][1]
    if damage == "missing":
        part.unlink()
    else:
        part.write_bytes(bytes([part.read_bytes()[0] ^ 1]) + part.read_bytes()[1:])
    with pytest.raises(CheckpointError, match=message):
        carry.restore(repo)
    assert carry.main(["restore"], repo=repo) == 1
    assert f"of checkpoint.pt in {carried_run}" in capsys.readouterr().err
    assert not (cell / "checkpoint.pt").exists() and not (cell / "wall_time.json").exists()  # nothing half-restored


def test_two_writers_of_one_carried_copy_take_turns(repo, monkeypatch):
    """A `carry save` beside a runner's --carry: each copy is written whole under the lock, never interleaved."""
    import threading

    monkeypatch.setattr(carry, "PART_BYTES", 100)
    cell = fake_cell(repo, CELL, iteration=4)
    atomic_torch_save(cell / "checkpoint.pt", {"iteration": 4, "algorithm": {"pad": b"x" * 2000}, "identity": {}})
    errors = []

    def save_repeatedly():
        try:
            for _ in range(5):
                carry.save_run(cell, repo)
        except Exception as error:  # noqa: BLE001 - any failure of a writer fails the test below
            errors.append(error)

    writers = [threading.Thread(target=save_repeatedly) for _ in range(3)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert not errors
    carried_run = repo / carry.CARRY_DIR / CELL
    assert carry.read_carried(carried_run, "checkpoint.pt") == (cell / "checkpoint.pt").read_bytes()
