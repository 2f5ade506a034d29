"""experiments.status on run directories laid out as runs write them: state, progress and pace."""
from __future__ import annotations

import json
from pathlib import Path

from experiments import status


def make_run(run_dir: Path, wall_times: list[float], planned: int = 20, torn_tail: bool = False) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"env": "cheetah-vel", "algo": "setformer", "tier": "benchmark",
                                                     "seed": 7, "protocol": {"num_iterations": planned}}))
    lines = [json.dumps({"iteration": i, "wall_time_s": t, "meta_test_return": -100.0 + i})
             for i, t in enumerate(wall_times)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + ("\n{\"iteration\": 9" if torn_tail else "\n"))
    return run_dir


def test_state_and_pace(tmp_path):
    # iterations took 300 (the first, with the initial collection), 100, 110 and 400 s: median of the last three 110
    running = make_run(tmp_path / "a", [300.0, 400.0, 510.0, 910.0], torn_tail=True)
    report = status.run_status(running, {running.resolve()})
    assert report["state"] == "running" and report["iterations_done"] == 4 and report["iterations_planned"] == 20
    assert report["meta_test_return"] == -97.0
    assert report["seconds_per_iteration"] == 110.0
    assert report["minutes_left"] == 16 * 110.0 / 60  # 16 iterations still to run at that pace

    stopped = make_run(tmp_path / "b", [300.0])
    assert status.run_status(stopped, set())["state"] == "no checkpoint"
    assert status.run_status(stopped, set())["seconds_per_iteration"] == 300.0
    assert status.run_status(stopped, set())["minutes_left"] == 20 * 300.0 / 60  # no checkpoint: starts afresh
    (stopped / "checkpoint.pt").write_bytes(b"")
    assert status.run_status(stopped, set())["state"] == "resumable"
    (stopped / "results.json").write_text("{}")
    assert status.run_status(stopped, set())["state"] == "finished"
    assert status.run_status(stopped, set())["minutes_left"] is None


def test_running_runs_are_found_from_process_command_lines(tmp_path):
    proc = tmp_path / "proc"
    (proc / "123").mkdir(parents=True)
    (proc / "123" / "cmdline").write_bytes(b"python\0-m\0experiments.run\0--run-dir\0/x/cells/a\0--no-progress\0")
    (proc / "124").mkdir()
    (proc / "124" / "cmdline").write_bytes(b"bash\0")
    (proc / "125").mkdir()
    (proc / "125" / "cmdline").write_bytes(b"python\0-m\0experiments.run\0--resume\0cells/b\0")
    (proc / "125" / "cwd").symlink_to(tmp_path / "work")   # a relative path is the process's, not ours
    assert status.running_run_dirs(proc) == {Path("/x/cells/a").resolve(), (tmp_path / "work" / "cells" / "b").resolve()}


def test_cli_lists_runs_that_can_continue_and_the_rest_only_with_all(tmp_path, capsys):
    make_run(tmp_path / "cells" / "a", [300.0, 400.0])          # committed metrics, no checkpoint (a fresh clone)
    resumable = make_run(tmp_path / "cells" / "c", [300.0, 400.0, 500.0])
    (resumable / "checkpoint.pt").write_bytes(b"")
    finished = make_run(tmp_path / "cells" / "b", [300.0])
    (finished / "results.json").write_text("{}")
    assert status.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cells/c" in out and "| resumable | 3/20 |" in out
    assert "cells/a" not in out and "cells/b" not in out and "lost" not in out
    assert status.main([str(tmp_path), "--all", "--json"]) == 0
    assert [s["state"] for s in json.loads(capsys.readouterr().out)] == ["resumable", "finished", "no checkpoint"]
    assert status.main([str(tmp_path), "--all"]) == 0
    assert "| no checkpoint | 2/20 |" in capsys.readouterr().out
    (resumable / "checkpoint.pt").unlink()
    assert status.main([str(tmp_path)]) == 0
    assert "no running, resumable or carried runs" in capsys.readouterr().out


def test_a_missing_folder_is_named(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit):
        status.main([str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert "no such folder" in err and "nowhere" in err
