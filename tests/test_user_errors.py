"""``python -m experiments.run``: every user mistake is one line on stderr and a non-zero exit, before any file is
written; resuming a finished run says so and touches nothing."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from algos.core.config import ConfigError
from algos.core.io import RunDirError, make_run_dir
from algos.core.trainer import build_config
from experiments import run as cli

NEW_RUN = ["--env", "point-robot", "--algo", "sac-no-context", "--tier", "smoke", "--no-progress"]


def run_cli(capsys, argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``folder`` with its modification time and size."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in [folder, *folder.rglob("*")]}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("user_errors") / "finished"
    assert cli.main([*NEW_RUN, "--run-dir", str(run_dir), "--set", "num_iterations=1"]) == 0
    return run_dir


@pytest.fixture
def copy_of_finished_run(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "copy"))


# ---------------------------------------------------------------------- arguments
@pytest.mark.parametrize("seed, named", [("-1", "--seed must be a non-negative integer below 2**32, got -1"),
                                         (str(2**32), f"got {2**32}"),
                                         ("abc", "argument --seed: invalid int value: 'abc'"),
                                         ("1.5", "argument --seed: invalid int value: '1.5'")])
def test_a_seed_numpy_or_torch_would_refuse_is_one_line(capsys, tmp_path, seed, named):
    code, out, err = run_cli(capsys, [*NEW_RUN, "--seed", seed, "--run-dir", str(tmp_path / "run")])
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith("error: ") and named in line
    assert not (tmp_path / "run").exists()


def test_the_largest_seed_is_accepted_and_the_config_refuses_what_the_cli_would():
    assert build_config("point-robot", "sac-no-context", "smoke", 2**32 - 1).seed == 2**32 - 1
    for seed in (-1, 2**32, True, 1.0):
        with pytest.raises(ConfigError, match="seed must be a non-negative integer"):
            build_config("point-robot", "sac-no-context", "smoke", seed)


@pytest.mark.parametrize("argv, named", [(["--bogus"], "unrecognized arguments: --bogus"),
                                         (["--set"], "argument --set: expected at least one argument"),
                                         (["--tier"], "argument --tier: expected one argument")])
def test_argument_mistakes_are_one_line_not_a_usage_block(capsys, tmp_path, argv, named):
    code, out, err = run_cli(capsys, [*NEW_RUN, "--run-dir", str(tmp_path / "run"), *argv])
    assert code == 2 and out == "" and named in one_line(err)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------- the run directory
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a /proc file system")
def test_a_run_dir_that_cannot_be_created_is_one_line_naming_it(capsys):
    code, out, err = run_cli(capsys, [*NEW_RUN, "--run-dir", "/proc/meta-rl-run"])
    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith("error: cannot create run directory /proc/meta-rl-run: ")
    assert not Path("/proc/meta-rl-run").exists()


def test_a_failed_run_dir_leaves_no_parent_folders_behind(tmp_path, monkeypatch):
    real_mkdir = Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self.name == "run":
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(RunDirError, match=r"cannot create run directory .*/new/deeper/run: Permission denied"):
        make_run_dir(tmp_path / "new" / "deeper" / "run")
    assert not (tmp_path / "new").exists()


def test_a_run_dir_below_a_file_is_one_line(capsys, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    code, _, err = run_cli(capsys, [*NEW_RUN, "--run-dir", str(tmp_path / "a-file" / "run")])
    assert code == 2 and f"{tmp_path / 'a-file'} is not a folder" in one_line(err)


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "unfinished"])
def test_a_run_dir_that_holds_another_run_is_refused_and_left_alone(capsys, copy_of_finished_run, finished):
    if not finished:
        (copy_of_finished_run / "results.json").unlink()
    before = snapshot(copy_of_finished_run)
    code, out, err = run_cli(capsys, [*NEW_RUN, "--seed", "7", "--run-dir", str(copy_of_finished_run)])
    assert code == 2 and out == ""
    line = one_line(err)
    assert str(copy_of_finished_run) in line
    assert ("finished run (results.json)" if finished else f"--resume {copy_of_finished_run}") in line
    assert snapshot(copy_of_finished_run) == before


# ---------------------------------------------------------------------- --resume
def test_resuming_a_finished_run_says_so_and_touches_nothing(capsys, copy_of_finished_run):
    before = snapshot(copy_of_finished_run)
    code, out, err = run_cli(capsys, ["--resume", str(copy_of_finished_run), "--no-progress"])
    assert code == 0 and out == ""
    assert one_line(err) == f"run {copy_of_finished_run} already finished (results.json); nothing to resume"
    assert snapshot(copy_of_finished_run) == before
    with pytest.raises(SystemExit):  # and --help says so
        cli.main(["--help"])
    assert "a finished run is left as it is (exit code 0)" in " ".join(capsys.readouterr().out.split())


def test_resume_with_settings_of_a_new_run_is_refused(capsys, copy_of_finished_run):
    before = snapshot(copy_of_finished_run)
    code, _, err = run_cli(capsys, ["--resume", str(copy_of_finished_run), "--seed", "3", "--env", "cheetah-vel"])
    assert code == 2
    assert one_line(err) == ("error: --resume continues a run with its saved config: --env, --seed cannot be given "
                             "with it")
    assert snapshot(copy_of_finished_run) == before


def test_resume_of_a_missing_or_foreign_dir_is_one_line(capsys, tmp_path):
    code, _, err = run_cli(capsys, ["--resume", str(tmp_path / "never-ran")])
    assert code == 2 and one_line(err) == f"error: run directory not found: {tmp_path / 'never-ran'}"
    (tmp_path / "not-a-run").mkdir()
    code, _, err = run_cli(capsys, ["--resume", str(tmp_path / "not-a-run")])
    assert code == 2 and "holds no config.json" in one_line(err)
    assert list((tmp_path / "not-a-run").iterdir()) == []


def test_resume_of_a_run_that_lost_its_checkpoint_is_one_line(capsys, copy_of_finished_run):
    (copy_of_finished_run / "results.json").unlink()
    (copy_of_finished_run / "checkpoint.pt").unlink()
    before = snapshot(copy_of_finished_run)
    code, _, err = run_cli(capsys, ["--resume", str(copy_of_finished_run), "--no-progress"])
    assert code == 2 and "has no checkpoint.pt to resume from" in one_line(err)
    assert snapshot(copy_of_finished_run) == before
