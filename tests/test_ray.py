"""The Ray backend and sweeps, through a real Ray cluster started here on 127.0.0.1 (never another address) and
stopped at the end: smoke cells through the cell engine, a cell whose node is lost, and a two-trial sweep."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from algos.core.config import ConfigError
from experiments import sweep



REPO_ROOT = Path(__file__).resolve().parents[1]
HEAD_START_TIMEOUT = 90
RAY_CLI = [sys.executable, "-m", "ray.scripts.scripts"]  # this interpreter's Ray, whatever is on PATH


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """``ray start --head --block`` on 127.0.0.1 with two CPUs, in its own process group: stopping the group stops
    this cluster and nothing else."""
    port = _free_port()
    log = open(tmp_path_factory.mktemp("ray") / "head.log", "w")
    head = subprocess.Popen([*RAY_CLI, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
                             "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats",
                             "--object-store-memory=100000000"], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,
                            # recent Ray (2.60 here) drains a node for 30 s on SIGTERM, for Serve; this cluster serves nothing
                            env={**os.environ, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + HEAD_START_TIMEOUT
    while subprocess.run([*RAY_CLI, "status", f"--address={address}"], capture_output=True).returncode != 0:
        if head.poll() is not None or time.monotonic() > deadline:
            os.killpg(head.pid, signal.SIGTERM)
            pytest.fail(f"the Ray head did not start; see {log.name}")
        time.sleep(1.0)
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
    log.close()


def _run(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_benchmark_cells_run_as_ray_tasks_and_match_the_local_backend(cluster, tmp_path):
    # both backends run the cell on one thread: results are deterministic per seed, thread count and CPU kind, and
    # on some CPUs (Intel with AMX) one and two threads differ in the last digits
    args = ["--tier", "smoke", "--envs", "point-robot", "--algos", "pearl", "sac-no-context", "--seeds", "1",
            "--no-progress", "--set", "num_threads=1"]
    on_ray = _run("experiments.benchmark", *args, "--backend", "ray", "--address", cluster, "--out",
                  str(tmp_path / "ray"))
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    cells = tmp_path / "ray" / "smoke" / "cells" / "point-robot"
    for algo in ("pearl", "sac-no-context"):
        assert {"results.json", "metrics.jsonl", "config.json", "checkpoint.pt", "stderr.log"} <= {
            p.name for p in (cells / algo / "1").iterdir()}
        # the saved run folder is the cell's folder here, not the node's scratch copy it ran in
        config = json.loads((cells / algo / "1" / "config.json").read_text())
        results = json.loads((cells / algo / "1" / "results.json").read_text())
        assert config["run_dir"] == results["config"]["run_dir"] == str(cells / algo / "1")
    markdown = (tmp_path / "ray" / "smoke" / "RESULTS.md").read_text()
    assert "| PEARL |" in markdown and "| SAC (no context) |" in markdown
    # the same cell on the local backend computes the same numbers
    local = _run("experiments.benchmark", *args[:5], "pearl", "--seeds", "1", "--no-progress", "--set", "num_threads=1",
                 "--workers", "1", "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr[-3000:]

    def figures(root: Path) -> tuple:
        results = json.loads((root / "smoke" / "cells" / "point-robot" / "pearl" / "1" / "results.json").read_text())
        return results["meta_test_return"], results["final_eval"]["meta_test_return"], results["grad_steps"]
    assert figures(tmp_path / "ray") == figures(tmp_path / "local")


def _cell_processes(marker: str) -> list[tuple[int, int]]:
    """``(pid, parent pid)`` of every running ``experiments.run`` whose command line holds ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if "experiments.run" in command and marker in command:
            found.append((int(proc.name), parent))
    return found


SEED = 90817  # a seed no other run on the machine uses: the cell's process is found by it


def test_a_cell_whose_node_is_lost_resumes_from_its_last_checkpoint(cluster, tmp_path):
    """Killing the Ray worker that runs a cell (as a lost node would) makes Ray retry the task, which resumes from
    the checkpoint the driver holds."""
    out = tmp_path / "bench"
    runner = subprocess.Popen(
        [sys.executable, "-m", "experiments.benchmark", "--tier", "smoke", "--envs", "point-robot", "--algos",
         "sac-no-context", "--seeds", str(SEED), "--set", "num_iterations=8", "--no-progress", "--backend", "ray",
         "--address", cluster, "--out", str(out)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "META_RL_RAY_SYNC_SECONDS": "0.3"})
    cell = out / "smoke" / "cells" / "point-robot" / "sac-no-context" / str(SEED)
    deadline = time.monotonic() + 120
    while not (cell / "checkpoint.pt").exists():  # the first checkpoint came back to the driver
        assert runner.poll() is None and time.monotonic() < deadline, runner.communicate()[1][-3000:]
        time.sleep(0.2)
    processes = _cell_processes(f"--seed {SEED} ")
    assert len(processes) == 1
    os.kill(processes[0][1], signal.SIGKILL)  # the Ray worker: its run dies with it, like a lost node
    _stdout, stderr = runner.communicate(timeout=240)
    assert runner.returncode == 0, stderr[-3000:]
    results = json.loads((cell / "results.json").read_text())
    assert len(results["learning_curve"]) == 8
    commands = [line for line in (cell / "stderr.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and "--resume" in commands[1], commands


def test_two_point_sweep_runs_its_cells_on_ray_and_selects_on_validation(cluster, tmp_path):
    out = tmp_path / "sweep"
    result = _run("experiments.sweep", "--envs", "point-robot", "--algos", "pearl", "--tier", "smoke", "--grid",
                  "lr=0.0003,0.001", "--seeds", "1", "--no-progress", "--backend", "ray", "--address", cluster,
                  "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "selection.json").read_text())
    assert sorted(t["point"] for t in report["trials"]) == ["lr-0.0003", "lr-0.001"]
    assert all(t["validation_low_noise"] is not None and t["test_low_noise"] is not None for t in report["trials"])
    for trial in report["trials"]:  # the cells are ordinary benchmark cells, one folder per point
        assert (out / trial["cell"] / "results.json").exists() and (out / trial["cell"] / "checkpoint.pt").exists()
    [selection] = report["selections"]
    best = max(report["trials"], key=lambda t: t["validation_low_noise"])
    assert selection["selected"] == best["point"] and selection["selected_overrides"] == best["overrides"]
    markdown = (out / "SELECTION.md").read_text()
    assert "| `lr-0.0003` | 1 |" in markdown and "| `lr-0.001` | 1 |" in markdown


# ---------------------------------------------------------------------- without a cluster
def test_grid_parsing_and_bad_sweeps_are_refused_before_anything_runs():
    assert sweep.parse_grid(["lr=0.0003, 0.001", "aux.reward=0,1"]) == {"lr": ["0.0003", "0.001"],
                                                                      "aux.reward": ["0", "1"]}
    assert sweep.configurations({"a": ["1", "2"], "b": ["x"]}) == [("a=1", "b=x"), ("a=2", "b=x")]
    assert sweep.point_name(("lr=0.001", "aux.reward=0")) == "lr-0.001_aux.reward-0"
    for bad, named in ((["lr"], "key=value1"), (["lr=1", "lr=2"], "twice")):
        with pytest.raises(ConfigError, match=named):
            sweep.parse_grid(bad)
    with pytest.raises(ConfigError, match="unknown config key 'no_such_key'"):
        sweep.check_configurations(["point-robot"], ["pearl"], "smoke", {"p": ("no_such_key=1",)}, [])
    with pytest.raises(ConfigError, match="both swept"):
        sweep.check_configurations(["point-robot"], ["pearl"], "smoke", {"p": ("lr=0.1",)}, ["lr=0.2"])
    # the tuning grid builds for every method that learns, on every environment
    sweep.check_configurations(["point-robot", "cheetah-vel"], ["setformer", "pearl", "focal", "varibad"], "smoke",
                               sweep.TUNING_GRID, [])
    assert not set(sweep.TUNING_SEEDS) & {42, 123, 456}
    result = _run("experiments.sweep", "--envs", "point-robot", "--algos", "pearl", "--tier", "smoke", "--grid",
                  "lr=abc", "--out", "/tmp/never-written-sweep")
    assert result.returncode == 2 and "expects a float" in result.stderr
    assert not Path("/tmp/never-written-sweep").exists()


def _trial(point: str, seed: int, validation: float | None, test: float) -> dict:
    return {"point": point, "overrides": [point], "env": "point-robot", "algo": "pearl", "tier": "quick",
            "seed": seed, "validation_low_noise": validation, "test_low_noise": test}


def test_selection_reads_the_validation_figure_only_once_every_point_has_finished():
    trials = [_trial("a", 1, -6.0, -9.0), _trial("a", 2, -6.0, -9.0),       # best on validation
              _trial("b", 1, -7.0, -1.0), _trial("b", 2, -7.0, -1.0),       # far better on test: not read
              _trial("c", 1, -1.0, -9.0)]                                    # seed 2 has not finished
    [pending] = sweep.select(trials, ["b", "a", "c"])
    assert pending["selected"] is None  # no selection while a point is unfinished, however good it looks
    by_point = {p["point"]: p for p in pending["points"]}
    assert by_point["a"]["mean"] == -6.0 and by_point["a"]["complete"] and not by_point["c"]["complete"]
    assert [p["point"] for p in pending["points"]] == ["b", "a", "c"]  # in grid order
    finished = trials + [_trial("c", 2, -13.0, 0.0)]                        # c's mean: -7.0
    assert sweep.select(finished, ["b", "a", "c"])[0]["selected"] == "a"
    assert sweep.select(finished, ["b", "a", "c", "d"])[0]["selected"] is None  # d has not run at all
    # equal validation figures: the point listed first wins
    tie = [_trial("a", 1, -5.0, 0.0), _trial("b", 1, -5.0, 1.0)]
    assert sweep.select(tie, ["b", "a"])[0]["selected"] == "b"
    assert sweep.select(tie, ["a", "b"])[0]["selected"] == "a"


def test_address_needs_the_ray_backend():
    result = _run("experiments.benchmark", "--tier", "smoke", "--address", "127.0.0.1:1", "--out", "/tmp/x-never")
    assert result.returncode == 2 and "--address is for --backend ray" in result.stderr


def test_an_interrupted_sweep_stops_instead_of_starting_the_next_grid_point(tmp_path, monkeypatch):
    from experiments.engine import Outcome
    calls = []

    def interrupted(args, cells, done, tier, overrides, point_dir):
        calls.append(point_dir.name)
        return Outcome(interrupted=True)

    monkeypatch.setattr(sweep, "run_cells", interrupted)
    code = sweep.main(["--envs", "point-robot", "--algos", "pearl", "--tier", "smoke", "--grid", "lr=0.0003,0.001",
                       "--out", str(tmp_path), "--no-progress"])
    assert code == 1 and calls == ["lr-0.0003"]
