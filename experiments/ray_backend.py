"""The cell engine on a Ray cluster (``--backend ray [--address HOST:PORT | auto]``): each cell is one Ray task
reserving as many CPUs as its threads; the cells' folders stay on the driver, under ``--out``. The code goes to the
nodes as Ray's ``working_dir`` (packages must be installed there); a cell's folder goes to its task when it starts,
and changed files come back every ``SYNC_SECONDS`` and at the end. A lost node's task is retried elsewhere
(``NODE_LOSS_RETRIES``) from the last checkpoint that came back; after a dead driver, the same command resumes the
cells on either backend.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from pathlib import Path

from algos.core.io import REPO_ROOT, atomic_write_bytes, atomic_write_json, git_commit
from experiments.engine import Cell, CellRunner, RunningCell, cell_command, child_environment, start_process

NODE_LOSS_RETRIES = 3
SYNC_SECONDS = float(os.environ.get("META_RL_RAY_SYNC_SECONDS", "5"))  # how often a cell's files come back
CODE_EXCLUDES = ["benchmarks/", "runs/", ".git/", "**/__pycache__/", "*.pt", "**/tb/", ".pytest_cache/", "docs/",
                 "MUJOCO_LOG.TXT", "**/*.png", "carry/"]
RUN_DIR_FILES = ("config.json", "results.json")  # they record the run's folder (``run_dir``, not semantic)


def connect(address: str | None, num_cpus: int | None = None) -> None:
    """Join the cluster at ``address`` (``HOST:PORT`` or ``auto``), or start a local Ray instance for ``None``; the
    code travels as the job's working directory, with this commit named for runs that cannot ask git."""
    import ray

    if ray.is_initialized():
        return
    runtime_env = {"working_dir": str(REPO_ROOT), "excludes": CODE_EXCLUDES,
                   "env_vars": {"META_RL_GIT_COMMIT": git_commit(), "PYTHONWARNINGS": "ignore::DeprecationWarning"}}
    quiet = {"log_to_driver": False, "logging_level": logging.WARNING}  # the runner prints what happens to cells
    if address is None:
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env=runtime_env, **quiet)
    else:
        ray.init(address=address, runtime_env=runtime_env, **quiet)


def _folder_files(folder: Path, since: dict[str, tuple[int, int]] | None = None) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes), or only those changed since ``since`` (updated)."""
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
            if name in RUN_DIR_FILES:  # name the cell's folder, not the node's scratch copy
                record = json.loads(data)
                config = record.get("config", {}) if name == "results.json" else record
                if "run_dir" in config:
                    config["run_dir"] = str(folder)
                atomic_write_json(folder / name, record)
            else:
                atomic_write_bytes(folder / name, data)


def run_cell_on_node(cell: Cell, tier: str, overrides: list[str], threads: int, folder: str, folders,
                     sync_seconds: float = SYNC_SECONDS) -> int:
    """The body of a cell's Ray task: fetch the cell's folder (``folder``, under the driver's root), run
    ``experiments.run`` in a scratch copy (resumed when a checkpoint came with it), and send changed files back."""
    import ray

    scratch = Path(tempfile.mkdtemp(prefix="cell-"))
    try:
        for name, data in ray.get(folders.read.remote(folder)).items():
            atomic_write_bytes(scratch / name, data)
        resume = (scratch / "checkpoint.pt").exists() and not (scratch / "results.json").exists()
        if not resume:  # killed before its first checkpoint, or never started: start afresh, as locally
            for path in scratch.iterdir():
                if path.is_file():
                    path.unlink()
        command = cell_command(cell, tier, overrides, threads, scratch, resume)
        process, stderr = start_process(command, scratch, child_environment(threads, Path.cwd()),
                                        f"   # on Ray node {socket.gethostname()}")
        sent: dict[str, tuple[int, int]] = {}
        try:
            while process.poll() is None:
                time.sleep(sync_seconds)
                ray.get(folders.write.remote(folder, _folder_files(scratch, sent)))
        finally:
            if process.poll() is None:  # the task was cancelled: stop the run, keep what it checkpointed
                os.killpg(process.pid, signal.SIGTERM)
                process.wait()
            stderr.close()
        ray.get(folders.write.remote(folder, _folder_files(scratch, sent)))
        return process.returncode
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


class RayCellRunner(CellRunner):
    """Runs cells as Ray tasks on the cluster the driver is connected to, all submitted at once."""
    where = " (Ray task)"

    def __init__(self, cells: list[Cell], already_done: int, tier: str, overrides: list[str], threads: int,
                 root: Path, progress: bool = True, sync_seconds: float = SYNC_SECONDS):
        super().__init__(cells, already_done, max(1, len(cells)), tier, overrides, threads, progress)
        self.root, self.sync_seconds, self.folders = Path(root), sync_seconds, None

    def start(self, cell: Cell) -> RunningCell:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        if self.folders is None:
            here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
            self.folders = ray.remote(num_cpus=0)(CellFolders).options(scheduling_strategy=here).remote(str(self.root))
            self.task = ray.remote(run_cell_on_node).options(num_cpus=self.threads, max_retries=NODE_LOSS_RETRIES)
        self.prepare(cell)
        return RunningCell(cell, self.task.remote(cell, self.tier, self.overrides, self.threads,
                                                  str(cell.run_dir.relative_to(self.root)), self.folders,
                                                  self.sync_seconds))

    def poll(self, running: RunningCell, bar) -> int | str | None:
        import ray

        if not ray.wait([running.process], timeout=0)[0]:
            return None
        try:
            return ray.get(running.process)
        except ray.exceptions.RayError as error:  # retries spent, or the task itself raised
            bar.write(f"Ray task of {running.cell.label} failed: {error}")
            return f"Ray task failed: {type(error).__name__}"

    def stop_all(self) -> None:
        import ray

        for running in self.running:
            ray.cancel(running.process)  # the task stops its run; the folder keeps the last checkpoint synced
        if self.running:
            ray.wait([r.process for r in self.running], num_returns=len(self.running), timeout=30.0)
        self.running = []
