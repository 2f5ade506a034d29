"""The cell engine on a Ray cluster: ``--backend ray [--address HOST:PORT | auto]``.

Each cell is one Ray task reserving as many CPUs as its threads. The cells keep the local backend's folder
contract (a cell is finished when its folder holds ``results.json``, resumable while it holds ``checkpoint.pt``),
and the folders stay on the driver, under ``--out``: no shared filesystem is needed.

- **What travels.** The code goes to every node once, as Ray's ``working_dir`` (the repository without
  ``benchmarks/``, ``runs/`` and other outputs, ``CODE_EXCLUDES``); the Python packages must already be installed
  there (``pip install -r requirements.txt``). A cell's folder travels from the driver to the task when it starts
  (so a cell with a checkpoint resumes), and the task sends back every file that changed, every
  ``SYNC_SECONDS`` and when the run ends: the checkpoint after each iteration, ``metrics.jsonl``, ``config.json``,
  ``stderr.log``, TensorBoard events and ``results.json``. A small actor on the driver's node
  (:class:`CellFolders`) writes them into the cell's folder, each file atomically.
- **A lost node.** Ray retries the task (``NODE_LOSS_RETRIES`` times) on another node; it starts from the
  folder the driver holds, i.e. from the last checkpoint that came back, and loses at most the iteration in
  progress.
- **A dead driver.** Its tasks and the folder actor die with it (Ray ties them to their driver) and the runs on
  the nodes are stopped. Every cell's folder on the driver holds its last synced checkpoint, so running the same
  command again resumes them, on either backend.
"""
from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from algos.core.io import REPO_ROOT, atomic_write_bytes, atomic_write_json, git_commit
from experiments.engine import (STDERR_TAIL_LINES, Cell, Outcome, cell_command, child_environment,
                                raise_keyboard_interrupt, set_parent_death_signal, tail_of)

NODE_LOSS_RETRIES = 3
SYNC_SECONDS = float(os.environ.get("META_RL_RAY_SYNC_SECONDS", "5"))  # how often a cell's files come back
# not shipped to the nodes: results, runs, checkpoints and caches (the code is a few hundred kB)
CODE_EXCLUDES = ["benchmarks/", "runs/", ".git/", "**/__pycache__/", "*.pt", "**/tb/", ".pytest_cache/", "docs/",
                 "MUJOCO_LOG.TXT", "**/*.png"]


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (``HOST:PORT`` or ``auto``), or start a local Ray instance for ``None``; the
    code travels as the job's working directory, with this commit named for runs that cannot ask git."""
    import ray

    runtime_env = {"working_dir": str(REPO_ROOT), "excludes": CODE_EXCLUDES,
                   "env_vars": {"META_RL_GIT_COMMIT": git_commit(), "PYTHONWARNINGS": "ignore::DeprecationWarning"}}
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}  # the runner prints what happens to cells
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, **quiet)
    else:
        ray.init(address=address, runtime_env=runtime_env, **quiet)


def _folder_files(folder: Path, since: dict[str, tuple[int, int]] | None = None) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), or only those changed since ``since`` (which is updated)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file() or path.name.endswith((".tmp", ".lock")):  # half-written files, runner locks
            continue
        rel = str(path.relative_to(folder))
        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if since is not None and since.get(rel) == stamp:
                continue
            data = path.read_bytes()
        except OSError:  # replaced or removed while we looked: the next sync takes it
            continue
        if since is not None:
            since[rel] = stamp
        out[rel] = data
    return out


class CellFolders:
    """On the driver's node: reads and writes the cells' folders under the driver's output folder."""

    def __init__(self, root: str):
        self.root = Path(root)

    def read(self, rel: str) -> dict[str, bytes]:
        folder = self.root / rel
        return _folder_files(folder) if folder.is_dir() else {}

    def write(self, rel: str, files: dict[str, bytes]) -> None:
        folder = self.root / rel
        for name, data in files.items():
            if name in RUN_DIR_FILES:  # say where the cell's files are kept, not the node's scratch copy
                atomic_write_json(folder / name, _with_run_dir(json.loads(data), folder, name == "results.json"))
            else:
                atomic_write_bytes(folder / name, data)


RUN_DIR_FILES = ("config.json", "results.json")  # they record the run's folder (``run_dir``, not semantic)


def _with_run_dir(record: dict, folder: Path, nested: bool) -> dict:
    config = record.get("config", {}) if nested else record
    if "run_dir" in config:
        config["run_dir"] = str(folder)
    return record


@dataclass
class CellTask:
    """What a node needs to run a cell: the cell, the runner's settings, and where its folder lives."""
    cell: Cell
    tier: str
    overrides: list[str]
    threads: int
    folder: str                 # relative to the driver's root


def run_cell_on_node(task: CellTask, folders, sync_seconds: float = SYNC_SECONDS) -> int:
    """The body of a cell's Ray task: fetch the cell's folder, run ``experiments.run`` in a scratch copy of it (a
    fresh run, or a resumed one when a checkpoint came with it), and send changed files back as it goes."""
    import ray

    scratch = Path(tempfile.mkdtemp(prefix="cell-"))
    try:
        for name, data in ray.get(folders.read.remote(task.folder)).items():
            atomic_write_bytes(scratch / name, data)
        resume = (scratch / "checkpoint.pt").exists() and not (scratch / "results.json").exists()
        if not resume:  # killed before its first checkpoint, or never started: start afresh, as locally
            for path in scratch.iterdir():
                if path.is_file():
                    path.unlink()
        command = cell_command(task.cell, task.tier, task.overrides, task.threads, scratch, resume)
        sent: dict[str, tuple[int, int]] = {}
        stderr = open(scratch / "stderr.log", "ab")  # a resumed cell keeps the log of its earlier segments
        stderr.write(f"$ {shlex.join(command)}   # on Ray node {socket.gethostname()}\n".encode())
        stderr.flush()
        process = subprocess.Popen(command, cwd=scratch, env=child_environment(task.threads, Path.cwd()),
                                   stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True,
                                   preexec_fn=set_parent_death_signal)
        try:
            while process.poll() is None:
                time.sleep(sync_seconds)
                ray.get(folders.write.remote(task.folder, _folder_files(scratch, sent)))
        finally:
            if process.poll() is None:  # the task was cancelled: stop the run, keep what it checkpointed
                os.killpg(process.pid, signal.SIGTERM)
                process.wait()
            stderr.close()
        ray.get(folders.write.remote(task.folder, _folder_files(scratch, sent)))
        return process.returncode
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class RayCellRunner:
    """Runs cells as Ray tasks on the cluster the driver is connected to; the same outcome as ``CellRunner``."""

    def __init__(self, cells: list[Cell], already_done: int, tier: str, overrides: list[str], threads: int,
                 root: Path, progress: bool = True, sync_seconds: float = SYNC_SECONDS):
        self.cells, self.already_done, self.tier, self.overrides = cells, already_done, tier, overrides
        self.threads, self.root, self.progress, self.sync_seconds = threads, Path(root), progress, sync_seconds

    def run(self) -> Outcome:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        from tqdm import tqdm

        outcome = Outcome()
        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        folders = ray.remote(num_cpus=0)(CellFolders).options(scheduling_strategy=here).remote(str(self.root))
        remote = ray.remote(run_cell_on_node).options(num_cpus=self.threads, max_retries=NODE_LOSS_RETRIES)
        pending = {}
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, raise_keyboard_interrupt)
        bar = tqdm(total=self.already_done + len(self.cells), initial=self.already_done, desc="cells", unit="cell",
                   disable=not self.progress, dynamic_ncols=True)
        try:
            for cell in self.cells:
                if cell.run_dir.exists() and not cell.resumable:
                    shutil.rmtree(cell.run_dir)  # killed before its first checkpoint: nothing worth keeping
                cell.run_dir.mkdir(parents=True, exist_ok=True)
                task = CellTask(cell, self.tier, self.overrides, self.threads,
                                str(cell.run_dir.relative_to(self.root)))
                bar.write(f"{'resuming' if cell.resumable else 'starting'} {cell.label} (Ray task)")
                pending[remote.remote(task, folders, self.sync_seconds)] = (cell, time.monotonic())
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in done:
                    cell, started = pending.pop(ref)
                    try:
                        code = ray.get(ref)
                    except ray.exceptions.RayError as error:  # retries spent, or the task itself raised
                        outcome.failed.append((cell, f"Ray task failed: {type(error).__name__}"))
                        bar.write(f"FAILED {cell.label}: {error}")
                        bar.update(1)
                        continue
                    self._finish(cell, code, started, outcome, bar)
                    bar.update(1)
                bar.set_postfix_str(", ".join(f"{c.label} {c.progress()}" for c, _ in pending.values()))
        except KeyboardInterrupt:
            outcome.interrupted = True
            bar.write(f"interrupted: cancelling {len(pending)} cell(s); rerun the same command to continue from "
                      f"their checkpoints")
            for ref in pending:
                ray.cancel(ref)  # the task stops its run; the folder keeps the last checkpoint that came back
            ray.wait(list(pending), num_returns=len(pending), timeout=30.0)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            bar.close()
        return outcome

    def _finish(self, cell: Cell, code: int, started: float, outcome: Outcome, bar) -> None:
        minutes = (time.monotonic() - started) / 60.0
        if code == 0 and cell.finished:
            outcome.finished.append(cell)
            bar.write(f"finished {cell.label} in {minutes:.1f} min")
            return
        reason = f"exit code {code}" if code != 0 else "exited 0 without writing results.json"
        outcome.failed.append((cell, reason))
        log = cell.run_dir / "stderr.log"
        bar.write(f"FAILED {cell.label} ({reason}); stderr in {log}:\n{tail_of(log, STDERR_TAIL_LINES)}")
