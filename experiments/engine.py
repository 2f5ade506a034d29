"""The cell engine: one (environment, method, seed) run in its own subprocess and its own folder, run
``workers`` at a time; which cells exist, which are finished or resumable, and the per-cell claim that keeps two
runners from running one cell (two runners may share a tier folder, each running its own cells). The benchmark
and ablation commands plan cells and hand them to a runner from :func:`make_runner`: :class:`CellRunner` here,
or ``experiments.ray_backend.RayCellRunner`` on a Ray cluster, which takes the same :class:`Cell` list and honours
the same folder contract: a cell is finished when its ``results.json`` exists and resumable while its
``checkpoint.pt`` does.
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
from typing import IO

from algos import ALGORITHMS, algorithm_class
from algos.core.config import NON_SEMANTIC_KEYS, SEEDS, flatten_config, upgrade_flat_config
from algos.core.io import REPO_ROOT, CheckpointError
from experiments.carry import carried_checkpoint, drop_run, save_run

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

    def progress(self) -> str:
        """Latest finished iteration out of the run's total, read from the files the run writes as it goes."""
        try:
            total = json.loads((self.run_dir / "config.json").read_text())["protocol"]["num_iterations"]
        except (OSError, ValueError, KeyError, TypeError):
            return "starting"  # config.json appears once the run has been built
        done = 0
        last = _last_line(self.run_dir / "metrics.jsonl")
        if last:
            try:
                done = int(json.loads(last)["iteration"]) + 1
            except (ValueError, KeyError, TypeError):  # a line being written right now
                pass
        return f"it {done}/{total}"


def _last_line(path: Path, chunk: int = 65536) -> str | None:
    """The last complete line of a growing text file, reading only its end."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - chunk))
            data = handle.read().decode(errors="replace")
    except OSError:
        return None
    lines = [line for line in data.split("\n") if line.strip()]
    if not lines:
        return None
    return lines[-1] if data.endswith("\n") else (lines[-2] if len(lines) > 1 else None)


def cell_dir(tier_dir: Path, env: str, algo: str, seed: int) -> Path:
    return tier_dir / "cells" / env / algo / str(seed)


def unsupported_reason(algo: str, env: str) -> str | None:
    """Why ``algo`` cannot run on ``env`` at all (not a failure: the combination does not exist); the method's
    own facts say (``supported_envs``)."""
    return algorithm_class(algo).supports(env) if algo in ALGORITHMS else None


def unsupported_combinations(envs: list[str], algos: list[str]) -> list[dict]:
    """The (env, algo) combinations that cannot exist, each with its reason: the plan's ``skipped`` list."""
    return [{"env": env, "algo": algo, "reason": reason} for env in envs for algo in algos
            if (reason := unsupported_reason(algo, env))]


def check_available(env: str, algo: str, tier: str, overrides: list[str]) -> str | None:
    """Build the cell's config in-process: an algorithm that does not import yet or an override it does not
    know fails here once, clearly, instead of once per seed in a subprocess."""
    from algos.core.trainer import build_config
    try:
        build_config(env, algo, tier, SEEDS[0], overrides)
    except Exception as error:  # import errors of half-written algorithms included
        return f"{type(error).__name__}: {error}"
    return None


def config_mismatch(cell: Cell, tier: str, overrides: list[str]) -> list[str]:
    """Config keys where an existing cell differs from what this invocation asks for (thread count and paths
    aside). Such a cell is kept, with a warning, so a rerun with new ``--set`` values never silently mixes
    budgets into one table."""
    from algos.core.config import to_dict
    from algos.core.trainer import build_config
    try:
        saved = json.loads((cell.run_dir / "config.json").read_text())
        # through JSON, as config.json was written: tuples become lists
        wanted = json.loads(json.dumps(to_dict(build_config(cell.env, cell.algo, tier, cell.seed, overrides))))
    except Exception:
        return []
    return config_differences(saved, wanted)


NON_SEMANTIC_CONFIG_KEYS = NON_SEMANTIC_KEYS  # where and how fast a run ran, not what it computed


def config_changes(first: dict, second: dict, ignored: frozenset[str] = NON_SEMANTIC_CONFIG_KEYS) -> dict:
    """``{flattened key: (value in first, value in second)}`` for every key whose value differs between two saved
    configs, sorted by key; a key missing on one side has ``None`` there."""
    a, b = flatten_config(first, ignored), flatten_config(second, ignored)
    # one written before a setting moved or existed: read as what its run computed
    a, b = upgrade_flat_config(a, b, _defaults_of(first)), upgrade_flat_config(b, a, _defaults_of(second))
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def _defaults_of(saved: dict) -> dict | None:
    """The flattened default config of the run a saved config belongs to, or ``None`` if it names no buildable
    run (then settings it predates stay missing and count as differences). Only the keys the other side has are
    read from it, so what that side left out stays out."""
    from algos.core.trainer import default_semantic_config
    try:
        return default_semantic_config(saved["env"], saved["algo"], saved["tier"], saved["seed"])
    except Exception:
        return None


def config_differences(first: dict, second: dict, ignored: frozenset[str] = NON_SEMANTIC_CONFIG_KEYS) -> list[str]:
    """The flattened keys whose values differ between two saved configs (keys missing on one side included)."""
    return list(config_changes(first, second, ignored))


def cell_command(cell: Cell, tier: str, overrides: list[str], threads: int, run_dir: Path, resume: bool) -> list[str]:
    """The ``experiments.run`` command of ``cell`` writing into ``run_dir`` (its folder here, or a scratch folder on
    a cluster node); ``overrides`` are the runner's, used unless the cell has its own."""
    base = [sys.executable, "-m", "experiments.run"]
    if resume:
        # a resumed run keeps its saved config (experiments.run refuses --set with --resume)
        return [*base, "--resume", str(run_dir), "--no-progress"]
    own = overrides if cell.overrides is None else cell.overrides
    user_sets_threads = any(item.split("=", 1)[0].strip() == "num_threads" for item in own)
    sets = [*([] if user_sets_threads else [f"num_threads={threads}"]), *own]  # the user's num_threads wins
    return [*base, "--env", cell.env, "--algo", cell.algo, "--tier", tier, "--seed", str(cell.seed),
            "--run-dir", str(run_dir), "--no-progress", *(arg for s in sets for arg in ("--set", s))]


def child_environment(threads: int, code_root: Path) -> dict[str, str]:
    """A cell's environment: the code on PYTHONPATH and ``threads`` for every thread pool. Children run inside
    their cell directory so files that libraries drop into the working directory, such as MuJoCo's
    MUJOCO_LOG.TXT, stay with the cell."""
    python_path = os.pathsep.join(p for p in (str(code_root), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}


# ---------------------------------------------------------------------- subprocesses
try:  # loaded once here, not in the forked child
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _LIBC = None
PR_SET_PDEATHSIG = 1


def set_parent_death_signal() -> None:
    """In the child before exec: die with SIGTERM if the runner dies without cleaning up (e.g. SIGKILL), so no
    orphaned run keeps writing into a cell that the next runner will resume."""
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))


@dataclass
class RunningCell:
    cell: Cell
    process: subprocess.Popen
    stderr: IO[bytes]
    started: float = field(default_factory=time.monotonic)
    carried_checkpoint_ns: int = 0  # the mtime of the checkpoint last copied to carry/


@dataclass
class Outcome:
    finished: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    interrupted: bool = False


class CellRunner:
    """Runs cells as subprocesses, ``workers`` at a time, with a progress bar; stops them all on interrupt."""

    def __init__(self, cells: list[Cell], already_done: int, workers: int, tier: str, overrides: list[str],
                 threads: int, progress: bool = True, carry_repo: Path | None = None):
        self.carry_repo = carry_repo  # with a repository: keep carry/ copies of the running cells' checkpoints
        self.queue = deque(cells)
        self.already_done = already_done
        self.workers = workers
        self.tier = tier
        self.overrides = overrides
        self.threads = threads
        self.progress = progress
        self.running: list[RunningCell] = []
        self.child_env = child_environment(threads, REPO_ROOT)

    def command(self, cell: Cell) -> list[str]:
        return cell_command(cell, self.tier, self.overrides, self.threads, cell.run_dir, cell.resumable)

    def start(self, cell: Cell) -> RunningCell:
        if cell.run_dir.exists() and not cell.resumable:
            shutil.rmtree(cell.run_dir)  # killed before its first checkpoint: nothing worth keeping
        cell.run_dir.mkdir(parents=True, exist_ok=True)
        command = self.command(cell)
        # a resumed cell keeps the log of its earlier segments
        stderr = open(cell.run_dir / "stderr.log", "ab" if cell.resumable else "wb")
        stderr.write(f"$ {shlex.join(command)}\n".encode())
        stderr.flush()
        process = subprocess.Popen(command, cwd=cell.run_dir, env=self.child_env, stdout=subprocess.DEVNULL,
                                   stderr=stderr, start_new_session=True, preexec_fn=set_parent_death_signal)
        return RunningCell(cell, process, stderr)

    def stop_all(self) -> None:
        """SIGTERM every running cell's process group, then SIGKILL what is left after a grace period. Runs
        only lose the iteration in progress: their checkpoints are written atomically after every iteration."""
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
        total = self.already_done + len(self.queue)
        bar = tqdm(total=total, initial=self.already_done, desc="cells", unit="cell", disable=not self.progress,
                   dynamic_ncols=True)
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
        signal.signal(signal.SIGINT, raise_keyboard_interrupt)
        try:
            while self.queue or self.running:
                while self.queue and len(self.running) < self.workers:
                    cell = self.queue.popleft()
                    how = "resuming" if cell.resumable else "starting"
                    bar.write(f"{how} {cell.label}")
                    self.running.append(self.start(cell))
                for running in list(self.running):
                    code = running.process.poll()
                    if code is None:
                        self._carry(running, bar)
                        continue
                    running.stderr.close()
                    self.running.remove(running)
                    self._finish(running, code, outcome, bar)
                    bar.update(1)
                bar.set_postfix_str(", ".join(f"{r.cell.label} {r.cell.progress()}" for r in self.running))
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:
            outcome.interrupted = True
            bar.write(f"interrupted: stopping {len(self.running)} running cell(s); rerun the same command to "
                      f"continue from their checkpoints")
        finally:
            for sig in previous:  # a second Ctrl-C must not cut the cleanup short
                signal.signal(sig, signal.SIG_IGN)
            self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            bar.close()
        return outcome

    def _carry(self, running: RunningCell, bar) -> None:
        """Copy a running cell's git-ignored files to carry/ once after each new checkpoint (``--carry``)."""
        if self.carry_repo is None:
            return
        try:
            written = (running.cell.run_dir / "checkpoint.pt").stat().st_mtime_ns
        except FileNotFoundError:  # before its first checkpoint
            return
        if written == running.carried_checkpoint_ns:
            return
        running.carried_checkpoint_ns = written
        try:
            save_run(running.cell.run_dir, self.carry_repo)
        except (OSError, ValueError, CheckpointError, subprocess.CalledProcessError) as error:
            bar.write(f"warning: could not copy {running.cell.label}'s checkpoint to carry/ ({error})")

    def _finish(self, running: RunningCell, code: int, outcome: Outcome, bar) -> None:
        cell = running.cell
        log = cell.run_dir / "stderr.log"
        minutes = (time.monotonic() - running.started) / 60.0
        if code == 0 and cell.finished:
            if self.carry_repo is not None:
                drop_run(cell.run_dir, self.carry_repo)
            outcome.finished.append(cell)
            bar.write(f"finished {cell.label} in {minutes:.1f} min")
            return
        reason = f"exit code {code}" if code != 0 else "exited 0 without writing results.json"
        tail = tail_of(log, STDERR_TAIL_LINES)
        outcome.failed.append((cell, reason))
        bar.write(f"FAILED {cell.label} ({reason}); stderr in {log}:\n{tail}")


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    if process.poll() is not None:
        return
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


# ---------------------------------------------------------------------- plan, run, render
def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


BACKENDS = ("local", "ray")


def add_backend_arguments(parser) -> None:
    """``--backend`` and ``--address``: where cells run (the benchmark and ablation commands share them)."""
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="local: subprocesses on this machine, --workers at a time (default); ray: one Ray task "
                             "per cell on a Ray cluster, as many at once as its CPUs allow")
    parser.add_argument("--carry", action="store_true",
                        help="local backend: after each checkpoint, copy the running cell's git-ignored files "
                             "(checkpoint, clock, TensorBoard) to carry/ (see experiments.carry), for a workplace "
                             "whose next checkout keeps untracked files but loses ignored ones")
    parser.add_argument("--address", default=None, metavar="HOST:PORT",
                        help="with --backend ray: the cluster to join (HOST:PORT of `ray start --head`, or auto); "
                             "without it a local Ray instance is started")


def make_runner(args, cells: list[Cell], done: int, tier: str, overrides: list[str], root: Path,
                progress: bool = True):
    """The runner of ``args.backend`` for ``cells``: ``CellRunner`` here, or ``RayCellRunner`` on a cluster (one
    thread per cell unless ``num_threads`` is set, each Ray task reserving that many CPUs)."""
    if args.backend == "ray":
        if args.carry:
            print("note: --carry applies to the local backend; Ray cells keep their checkpoints on the driver")
        from experiments.ray_backend import RayCellRunner, connect
        connect(args.address, num_cpus=available_cpus() if args.address is None else None)
        return RayCellRunner(cells, done, tier, overrides, threads_per_cell(available_cpus(), overrides), root,
                             progress=progress)
    return CellRunner(cells, done, args.workers, tier, overrides, threads_per_cell(args.workers, overrides),
                      progress=progress, carry_repo=REPO_ROOT if args.carry else None)


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
    """The plan a runner's table is rendered with: the tier folder's previous plan widened by this run's, so a
    runner of a few cells updates the tier's table (every method, environment and seed it showed, run or not)
    instead of narrowing it to those cells."""
    def union(key: str) -> list:
        return list(dict.fromkeys([*previous.get(key, []), *current.get(key, [])]))

    envs, algos = union("envs"), union("algos")
    return {"envs": envs, "algos": algos, "seeds": sorted(set(union("seeds"))),
            "skipped": unsupported_combinations(envs, algos)}


def refuse_unrestored_carries(cells: list[Cell]) -> bool:
    """Print an error and return True if the runner would start a cell afresh (no checkpoint of its own) while
    ``carry/`` holds one of its checkpoints: starting it would redo the carried iterations, and a later ``carry
    save`` could lose them. A runner that refuses starts nothing."""
    unrestored = [(cell, carried) for cell in cells if not cell.finished and not cell.resumable
                  and (carried := carried_checkpoint(cell.run_dir)) is not None]
    for cell, carried in unrestored:
        print(f"error: carry/ holds a checkpoint of {cell.label} ({carried}) that was not restored: run "
              f"`python -m experiments.carry restore` first, or delete it to start the cell afresh", file=sys.stderr)
    return bool(unrestored)


def claim_cell(cell: Cell) -> IO[str] | None:
    """Take ``cell``'s runner lock, or return None while another runner holds it (it is running that cell). The
    lock is an ``flock`` on a hidden file beside the run directory (``.<seed>.lock``, git-ignored), outside it
    because a cell killed before its first checkpoint has its folder deleted; it is released when the returned
    file is closed or the process ends, so a killed runner never leaves a cell claimed."""
    cell.run_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = open(cell.run_dir.parent / f".{cell.run_dir.name}.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def claim_cells(cells: list[Cell]) -> tuple[list[Cell], list[Cell], list[IO[str]]]:
    """Claim every cell a runner plans to run: ``(claimed, held_elsewhere, locks)``. Keep ``locks`` open for as
    long as the runner runs. A cell another runner finished between planning and claiming is neither: it is done
    (whether it finished is read again once the claim is held, so no finished cell is ever started again)."""
    claimed, held_elsewhere, locks = [], [], []
    for cell in cells:
        lock = claim_cell(cell)
        if lock is None:
            held_elsewhere.append(cell)
            continue
        if cell.finished:
            lock.close()
        else:
            claimed.append(cell)
            locks.append(lock)
    return claimed, held_elsewhere, locks


