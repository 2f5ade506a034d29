"""The cell engine. A cell is one (environment, method, seed) run: ``experiments.run`` in a subprocess of its own,
writing into its own folder. It is finished when that folder holds ``results.json`` and resumable while it holds
``checkpoint.pt``; a per-cell lock, taken as the cell starts, lets several runners share a tier folder and its
cells. :class:`CellRunner` runs cells here,
``workers`` at a time; ``experiments.ray_backend`` runs the same cells on a Ray cluster.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from algos import ALGORITHMS, algorithm_class
from algos.core.config import NON_SEMANTIC_KEYS, SEEDS, flatten_config, to_dict
from algos.core.io import REPO_ROOT, CheckpointError
from algos.core.saved_config import upgrade_flat_config
from algos.core.trainer import build_config, default_semantic_config
from experiments.carry import carried_checkpoint, drop_run, save_run
from experiments.results_table import asked_combinations

POLL_SECONDS = 0.5
TERMINATE_GRACE_SECONDS = 10.0
STDERR_TAIL_LINES = 25


# ---------------------------------------------------------------------- cells
@dataclass
class Cell:
    env: str
    algo: str
    seed: int
    run_dir: Path
    overrides: list[str] | None = None  # this cell's own --set values; None: the runner's

    @property
    def label(self) -> str:
        return f"{self.env}/{self.algo}/{self.seed}"

    @property
    def finished(self) -> bool:
        return (self.run_dir / "results.json").exists()

    @property
    def resumable(self) -> bool:
        return (self.run_dir / "checkpoint.pt").exists() and not self.finished


def cell_dir(tier_dir: Path, env: str, algo: str, seed: int) -> Path:
    return tier_dir / "cells" / env / algo / str(seed)


def unsupported_reason(algo: str, env: str) -> str | None:
    """Why ``algo`` cannot run on ``env`` at all (its ``supported_envs``): not a failure, the cell does not exist."""
    return algorithm_class(algo).supports(env) if algo in ALGORITHMS else None


def unsupported_combinations(combinations: list[tuple[str, str]]) -> list[dict]:
    """The (env, algo) combinations that cannot exist, each with its reason: the plan's ``skipped`` list."""
    return [{"env": env, "algo": algo, "reason": reason} for env, algo in combinations
            if (reason := unsupported_reason(algo, env))]


def check_available(env: str, algo: str, tier: str, overrides: list[str]) -> str | None:
    """Why the cell's config cannot be built (a method that does not import, an unknown override), or None."""
    try:
        build_config(env, algo, tier, SEEDS[0], overrides)
    except Exception as error:  # import errors of half-written methods included
        return f"{type(error).__name__}: {error}"
    return None


def config_mismatch(cell: Cell, tier: str, overrides: list[str]) -> list[str]:
    """The config keys where an existing cell differs from what this invocation asks for."""
    try:
        saved = json.loads((cell.run_dir / "config.json").read_text())
        # through JSON, as config.json was written: tuples become lists
        wanted = json.loads(json.dumps(to_dict(build_config(cell.env, cell.algo, tier, cell.seed, overrides))))
    except Exception:
        return []
    return list(config_changes(saved, wanted))


def config_changes(first: dict, second: dict, ignored: frozenset[str] = NON_SEMANTIC_KEYS) -> dict:
    """``{flattened key: (value in first, value in second)}`` for every key that differs between two saved configs
    (where and how fast a run ran aside), sorted; a key missing on one side has ``None`` there."""
    a, b = flatten_config(first, ignored), flatten_config(second, ignored)
    # a config written before a setting moved or existed is read as what its run computed
    a, b = upgrade_flat_config(a, b, _defaults_of(first)), upgrade_flat_config(b, a, _defaults_of(second))
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def _defaults_of(saved: dict) -> dict | None:
    """The flattened default config of the run ``saved`` belongs to, or None where it names no buildable run."""
    try:
        return default_semantic_config(saved["env"], saved["algo"], saved["tier"], saved["seed"])
    except Exception:
        return None


def cell_command(cell: Cell, tier: str, overrides: list[str], threads: int, run_dir: Path, resume: bool) -> list[str]:
    """The ``experiments.run`` command of ``cell`` into ``run_dir`` (the runner's ``overrides`` unless its own)."""
    base = [sys.executable, "-m", "experiments.run"]
    if resume:
        return [*base, "--resume", str(run_dir), "--no-progress"]
    own = overrides if cell.overrides is None else cell.overrides
    user_sets_threads = any(item.split("=", 1)[0].strip() == "num_threads" for item in own)
    sets = [*([] if user_sets_threads else [f"num_threads={threads}"]), *own]  # the user's num_threads wins
    return [*base, "--env", cell.env, "--algo", cell.algo, "--tier", tier, "--seed", str(cell.seed),
            "--run-dir", str(run_dir), "--no-progress", *(arg for s in sets for arg in ("--set", s))]


def child_environment(threads: int, code_root: Path) -> dict[str, str]:
    """A cell's environment: the code on PYTHONPATH and ``threads`` for every thread pool."""
    python_path = os.pathsep.join(p for p in (str(code_root), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}


# ---------------------------------------------------------------------- subprocesses
try:  # loaded once here, not in the forked child
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _LIBC = None


def set_parent_death_signal() -> None:
    """In the child: die with the runner, so no orphaned run writes into a cell the next runner resumes."""
    if _LIBC is not None:
        _LIBC.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def start_process(command: list[str], run_dir: Path, env: dict[str, str], note: str = "") -> tuple:
    """Start ``command`` in ``run_dir`` and a session of its own, appending to ``stderr.log``: ``(process, log)``."""
    stderr = open(run_dir / "stderr.log", "ab")
    stderr.write(f"$ {shlex.join(command)}{note}\n".encode())
    stderr.flush()
    process = subprocess.Popen(command, cwd=run_dir, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                               start_new_session=True, preexec_fn=set_parent_death_signal)
    return process, stderr


@dataclass
class RunningCell:
    cell: Cell
    process: Any  # a subprocess.Popen here, a Ray task's ObjectRef on a cluster
    stderr: IO[bytes] | None = None
    started: float = field(default_factory=time.monotonic)
    carried_checkpoint_ns: int = 0  # the mtime of the checkpoint last copied to carry/


@dataclass
class Outcome:
    finished: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    interrupted: bool = False


class CellRunner:
    """Runs cells as subprocesses, ``workers`` at a time; an interrupt stops them (losing the iteration in progress).
    Each cell is claimed as it starts, so a cell that another runner started (or finished) meanwhile is left to it:
    runners given overlapping lists share the cells between them."""
    where = ""  # how a started cell is announced

    def __init__(self, cells: list[Cell], already_done: int, workers: int, tier: str, overrides: list[str],
                 threads: int, progress: bool = True, carry_repo: Path | None = None):
        self.queue, self.already_done, self.workers = deque(cells), already_done, workers
        self.tier, self.overrides, self.threads, self.progress = tier, overrides, threads, progress
        self.carry_repo = carry_repo  # with a repository: keep carry/ copies of the running cells' ignored files
        self.running: list[RunningCell] = []

    def command(self, cell: Cell) -> list[str]:
        return cell_command(cell, self.tier, self.overrides, self.threads, cell.run_dir, cell.resumable)

    @staticmethod
    def prepare(cell: Cell) -> None:
        if cell.run_dir.exists() and not cell.resumable:
            shutil.rmtree(cell.run_dir)  # killed before its first checkpoint: nothing worth keeping
        cell.run_dir.mkdir(parents=True, exist_ok=True)

    def start(self, cell: Cell) -> RunningCell:
        self.prepare(cell)
        return RunningCell(cell, *start_process(self.command(cell), cell.run_dir,
                                                child_environment(self.threads, REPO_ROOT)))

    def poll(self, running: RunningCell, bar) -> int | str | None:
        """None while the cell runs, then its exit code (or why it failed)."""
        code = running.process.poll()
        if code is None:
            self._carry(running, bar)
        else:
            running.stderr.close()
        return code

    def stop_all(self) -> None:
        """SIGTERM every running cell's process group, then SIGKILL what is left after a grace period."""
        for running in self.running:
            _signal_group(running.process, signal.SIGTERM)
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        for running in self.running:
            try:
                running.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(running.process, signal.SIGKILL)
                running.process.wait()
            running.stderr.close()
        self.running = []

    def run(self) -> Outcome:
        from tqdm import tqdm

        outcome = Outcome()
        bar = tqdm(total=self.already_done + len(self.queue), initial=self.already_done, desc="cells", unit="cell",
                   disable=not self.progress, dynamic_ncols=True)
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            signal.signal(sig, raise_keyboard_interrupt)
        # the claims of the cells this runner started, held until it exits: another runner does not start one of
        # them afresh meanwhile (a failed cell's report points at its stderr.log, which a fresh start would delete)
        claims: list[IO[str]] = []
        try:
            while self.queue or self.running:
                while self.queue and len(self.running) < self.workers:
                    cell = self.queue.popleft()
                    claim = None if cell.finished else claim_cell(cell)
                    if claim is None or cell.finished:  # whether it finished is read again under the claim
                        if claim is not None:
                            claim.close()
                        bar.write(f"note: {cell.label} is {'finished' if cell.finished else 'being run'} by another "
                                  f"runner; left to it")
                        bar.update(1)
                        continue
                    claims.append(claim)
                    bar.write(f"{'resuming' if cell.resumable else 'starting'} {cell.label}{self.where}")
                    self.running.append(self.start(cell))
                for running in list(self.running):
                    code = self.poll(running, bar)
                    if code is not None:
                        self.running.remove(running)
                        self._finish(running, code, outcome, bar)
                        bar.update(1)
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            outcome.interrupted = True
            bar.write(f"interrupted: stopping {len(self.running)} running cell(s); rerun the same command to "
                      f"continue from their checkpoints")
        finally:
            for sig in previous:  # a second Ctrl-C must not cut the cleanup short
                signal.signal(sig, signal.SIG_IGN)
            self.stop_all()
            for claim in claims:
                claim.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            bar.close()
        return outcome

    def _carry(self, running: RunningCell, bar) -> None:
        """With ``--carry``: copy a running cell's git-ignored files to carry/ once after each new checkpoint."""
        checkpoint = running.cell.run_dir / "checkpoint.pt"
        if self.carry_repo is None or not checkpoint.exists():
            return
        if (written := checkpoint.stat().st_mtime_ns) != running.carried_checkpoint_ns:
            running.carried_checkpoint_ns = written
            try:
                save_run(running.cell.run_dir, self.carry_repo)
            except (OSError, ValueError, CheckpointError, subprocess.CalledProcessError) as error:
                bar.write(f"warning: could not copy {running.cell.label}'s checkpoint to carry/ ({error})")

    def _finish(self, running: RunningCell, code: int | str, outcome: Outcome, bar) -> None:
        cell, log = running.cell, running.cell.run_dir / "stderr.log"
        if code == 0 and cell.finished:
            if self.carry_repo is not None:
                drop_run(cell.run_dir, self.carry_repo)
            outcome.finished.append(cell)
            bar.write(f"finished {cell.label} in {(time.monotonic() - running.started) / 60.0:.1f} min")
            return
        reason = code if isinstance(code, str) else (f"exit code {code}" if code != 0
                                                     else "exited 0 without writing results.json")
        outcome.failed.append((cell, reason))
        bar.write(f"FAILED {cell.label} ({reason}); stderr in {log}:\n{tail_of(log, STDERR_TAIL_LINES)}")


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, sig)  # the child leads its own session: this reaches anything it started too
        except ProcessLookupError:
            pass


def raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def tail_of(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no stderr.log)"
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


# ---------------------------------------------------------------------- planning and claims
def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def threads_per_cell(workers: int, overrides: list[str]) -> int:
    for item in reversed(overrides):
        key, _, value = item.partition("=")
        if key.strip() == "num_threads" and value.strip().isdigit():
            return max(1, int(value))
    return max(1, available_cpus() // workers)


def previous_plan(tier_dir: Path) -> dict:
    try:
        return json.loads((tier_dir / "results.json").read_text()).get("plan") or {}
    except (OSError, ValueError):
        return {}


def merged_plan(previous: dict, current: dict) -> dict:
    """The tier folder's previous plan widened by this run's: a runner of a few cells keeps the whole table, and
    its methods are added on its environments only."""
    def union(key: str) -> list:
        return list(dict.fromkeys([*previous.get(key, []), *current.get(key, [])]))

    combinations = list(dict.fromkeys([*asked_combinations(previous), *asked_combinations(current)]))
    return {"envs": union("envs"), "algos": union("algos"), "seeds": sorted(set(union("seeds"))),
            "combinations": [list(combination) for combination in combinations],
            "skipped": unsupported_combinations(combinations)}


def refuse_unrestored_carries(cells: list[Cell]) -> bool:
    """Print an error and return True if a cell would start afresh while ``carry/`` holds a checkpoint of it:
    starting it would redo the carried iterations, and a later ``carry save`` could lose them."""
    unrestored = [(cell, carried) for cell in cells if not cell.finished and not cell.resumable
                  and (carried := carried_checkpoint(cell.run_dir)) is not None]
    for cell, carried in unrestored:
        print(f"error: carry/ holds a checkpoint of {cell.label} ({carried}) that was not restored: run "
              f"`python -m experiments.carry restore` first, or delete it to start the cell afresh", file=sys.stderr)
    return bool(unrestored)


def claim_cell(cell: Cell) -> IO[str] | None:
    """``cell``'s runner lock (an ``flock`` on ``.<seed>.lock`` beside its folder, released with the returned file or
    the process), or None while another runner holds it."""
    cell.run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = open(cell.run_dir.parent / f".{cell.run_dir.name}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock
