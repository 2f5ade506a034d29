"""Run the benchmark: every (environment, method, seed) cell in its own subprocess, then the results tables.

    python -m experiments.benchmark --tier quick --workers 2
    python -m experiments.benchmark --tier quick --envs point-robot --algos pearl setformer --seeds 42 123 456
    python -m experiments.benchmark --tier smoke --envs point-robot --algos oracle sac-no-context --seeds 42 \\
        --set num_iterations=3 --out /tmp/bench
    python -m experiments.benchmark --tier quick --render-only      # re-render results.json / RESULTS.md

Each cell is ``python -m experiments.run ... --run-dir <out>/<tier>/cells/<env>/<algo>/<seed>``. A cell with a
``results.json`` is finished and skipped; one with a ``checkpoint.pt`` is continued with ``--resume`` (runs
checkpoint after every iteration), so killing the runner and starting it again loses at most one iteration
per running cell; any other leftover directory is a run killed before its first checkpoint and is started
afresh. Cells run ``--workers`` at a time with ``cpu_count // workers`` threads each, and a failing cell does
not stop the others (its stderr is kept in ``stderr.log`` in the cell directory; the runner exits nonzero).
Combinations that cannot exist (the oracle on cheetah-vel) are skipped with a note.

Results: ``<out>/<tier>/results.json``, ``RESULTS.md`` and ``curves_<env>.png`` (see experiments.results_table).
"""
from __future__ import annotations

import argparse
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

from algos import ALGORITHMS
from algos.core.config import NON_SEMANTIC_KEYS, SEEDS, TIERS, flatten_config
from envs_glue import ENV_SPECS

REPO_ROOT = Path(__file__).resolve().parents[1]
POLL_SECONDS = 0.5
TERMINATE_GRACE_SECONDS = 10.0
STDERR_TAIL_LINES = 25

# Combinations that do not exist, used when the algorithm class does not say so itself with a
# ``supported_envs`` attribute: the oracle is scripted for the point robots only (algos/oracle.py).
UNSUPPORTED = {("oracle", "cheetah-vel"): "the oracle exists only for the point robots; cheetah-vel has no "
                                          "closed-form optimum"}


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
    """Why ``algo`` cannot run on ``env`` at all (not a failure: the combination does not exist)."""
    try:
        from algos import algorithm_class
        supported = getattr(algorithm_class(algo), "supported_envs", None)
    except Exception:  # an algorithm that does not import yet is reported by check_available instead
        supported = None
    if supported is not None:
        return None if env in supported else f"{algo} supports only {', '.join(supported)}"
    return UNSUPPORTED.get((algo, env))


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
    return {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}


def config_differences(first: dict, second: dict, ignored: frozenset[str] = NON_SEMANTIC_CONFIG_KEYS) -> list[str]:
    """The flattened keys whose values differ between two saved configs (keys missing on one side included)."""
    return list(config_changes(first, second, ignored))


# ---------------------------------------------------------------------- subprocesses
try:  # loaded once here, not in the forked child
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True)
except OSError:
    _LIBC = None
PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:
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


@dataclass
class Outcome:
    finished: list[Cell] = field(default_factory=list)
    failed: list[tuple[Cell, str]] = field(default_factory=list)
    interrupted: bool = False


class CellRunner:
    """Runs cells as subprocesses, ``workers`` at a time, with a progress bar; stops them all on interrupt."""

    def __init__(self, cells: list[Cell], already_done: int, workers: int, tier: str, overrides: list[str],
                 threads: int, progress: bool = True):
        self.queue = deque(cells)
        self.already_done = already_done
        self.workers = workers
        self.tier = tier
        self.overrides = overrides
        self.threads = threads
        self.progress = progress
        self.running: list[RunningCell] = []
        # Children run inside their cell directory (with the repository on PYTHONPATH) so files that libraries
        # drop into the working directory, such as MuJoCo's MUJOCO_LOG.TXT, stay with the cell.
        python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        self.child_env = {**os.environ, "PYTHONPATH": python_path, "OMP_NUM_THREADS": str(threads),
                          "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}

    def command(self, cell: Cell) -> list[str]:
        base = [sys.executable, "-m", "experiments.run"]
        if cell.resumable:
            # a resumed run keeps its saved config (experiments.run refuses --set with --resume)
            return [*base, "--resume", str(cell.run_dir), "--no-progress"]
        own = self.overrides if cell.overrides is None else cell.overrides
        user_sets_threads = any(item.split("=", 1)[0].strip() == "num_threads" for item in own)
        sets = [*([] if user_sets_threads else [f"num_threads={self.threads}"]), *own]  # the user's num_threads wins
        return [*base, "--env", cell.env, "--algo", cell.algo, "--tier", self.tier, "--seed", str(cell.seed),
                "--run-dir", str(cell.run_dir), "--no-progress", *(arg for s in sets for arg in ("--set", s))]

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
                                   stderr=stderr, start_new_session=True, preexec_fn=_set_parent_death_signal)
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
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
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

    def _finish(self, running: RunningCell, code: int, outcome: Outcome, bar) -> None:
        cell = running.cell
        log = cell.run_dir / "stderr.log"
        minutes = (time.monotonic() - running.started) / 60.0
        if code == 0 and cell.finished:
            outcome.finished.append(cell)
            bar.write(f"finished {cell.label} in {minutes:.1f} min")
            return
        reason = f"exit code {code}" if code != 0 else "exited 0 without writing results.json"
        tail = _tail(log, STDERR_TAIL_LINES)
        outcome.failed.append((cell, reason))
        bar.write(f"FAILED {cell.label} ({reason}); stderr in {log}:\n{tail}")


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)  # the child leads its own session: this reaches anything it started too
    except ProcessLookupError:
        pass


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no stderr.log)"
    return "\n".join("    " + line for line in text.rstrip().splitlines()[-lines:])


# ---------------------------------------------------------------------- plan, run, render
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="quick", choices=TIERS, help="protocol tier (default: quick)")
    parser.add_argument("--envs", nargs="+", choices=list(ENV_SPECS), default=None,
                        help="environments (default: all three; with --render-only: those of the last run)")
    parser.add_argument("--algos", nargs="+", choices=list(ALGORITHMS), default=None,
                        help="methods (default: every registered one; with --render-only: those of the last run)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help=f"seeds (default: {' '.join(map(str, SEEDS))})")
    parser.add_argument("--workers", type=int, default=2, help="cells run in parallel (default: 2)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="config override passed to every cell, e.g. --set num_iterations=5")
    parser.add_argument("--out", default="benchmarks", help="output root; cells go to <out>/<tier>/cells")
    parser.add_argument("--render-only", action="store_true", help="only collect finished cells and render")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


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


def lock_tier_dir(tier_dir: Path) -> IO[str] | None:
    """Take the tier directory's runner lock, or return None while another runner holds it: two runners would
    start the same cells twice. The lock is released when the returned file is closed or the process ends
    (``.runner.lock`` is git-ignored)."""
    (tier_dir / "cells").mkdir(parents=True, exist_ok=True)
    lock = open(tier_dir / "cells" / ".runner.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        return None
    return lock


def command_line(argv) -> str:
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", "-m", "experiments.benchmark", *args])


def render(tier_dir: Path, tier: str, plan: dict, command: str, notes: list[str]) -> Path:
    from algos.core.io import git_commit, machine_description
    from experiments.results_table import FINDINGS_FILE, build_summary, collect_cells, write_report

    cells, problems = collect_cells(tier_dir)
    summary = build_summary(tier, cells, plan, command, machine_description(), git_commit(), [*notes, *problems])
    findings = tier_dir / FINDINGS_FILE
    if findings.exists():
        summary["findings"] = findings.read_text()
    _results, markdown = write_report(tier_dir, summary)
    return markdown


def main(argv=None) -> int:
    args = parse_args(argv)
    tier_dir = Path(args.out).resolve() / args.tier
    command = command_line(argv)

    if args.render_only:
        last = previous_plan(tier_dir)
        envs, algos = args.envs or last.get("envs", []), args.algos or last.get("algos", [])
        plan = {"envs": envs, "algos": algos, "seeds": args.seeds or last.get("seeds", []),
                "skipped": unsupported_combinations(envs, algos)}
        markdown = render(tier_dir, args.tier, plan, command, [])
        print(f"rendered {markdown}")
        return 0

    envs = args.envs or list(ENV_SPECS)
    algos = args.algos or list(ALGORITHMS)
    seeds = args.seeds or list(SEEDS)
    threads = threads_per_cell(args.workers, args.overrides)
    lock = lock_tier_dir(tier_dir)
    if lock is None:
        print(f"error: another benchmark runner is using {tier_dir}", file=sys.stderr)
        return 2

    # which combinations exist, and which of those the code can build right now
    skipped, notes, problems = unsupported_combinations(envs, algos), [], 0
    for combination in skipped:
        print(f"note: skipping {combination['algo']} on {combination['env']}: {combination['reason']}")
    unsupported = {(combination["env"], combination["algo"]) for combination in skipped}
    runnable: set[tuple[str, str]] = set()
    for env in envs:
        for algo in algos:
            if (env, algo) in unsupported:
                continue
            error = check_available(env, algo, args.tier, args.overrides)
            if error:
                problems += 1
                notes.append(f"{algo} on {env} could not be set up, no cell started: {error}")
                print(f"error: {algo} on {env} cannot be set up: {error}", file=sys.stderr)
                continue
            runnable.add((env, algo))

    if problems and not runnable:  # e.g. a mistyped --set key: change nothing, not even the report
        return 2

    cells, done = [], 0
    for seed in seeds:  # seed-major: one seed of everything first, so a complete comparison exists early
        for env in envs:
            for algo in algos:
                if (env, algo) not in runnable:
                    continue
                cell = Cell(env, algo, seed, cell_dir(tier_dir, env, algo, seed))
                if cell.finished or cell.resumable:
                    differing = config_mismatch(cell, args.tier, args.overrides)
                    if differing:
                        print(f"warning: existing cell {cell.label} was configured differently "
                              f"({', '.join(differing)}); it is kept. Delete {cell.run_dir} to rerun it.")
                if cell.finished:
                    done += 1
                else:
                    cells.append(cell)
    plan = {"envs": envs, "algos": algos, "seeds": seeds, "skipped": skipped}
    print(f"{done + len(cells)} cells ({done} already finished, {sum(c.resumable for c in cells)} to resume), "
          f"{args.workers} worker(s) × {threads} thread(s), tier {args.tier}, output {tier_dir}")

    runner = CellRunner(cells, done, args.workers, args.tier, args.overrides, threads, progress=not args.no_progress)
    outcome = runner.run()
    if outcome.interrupted:
        print(f"stopped; finished cells are kept. Rerun to continue, or render what is done with "
              f"`python -m experiments.benchmark --tier {args.tier} --out {args.out} --render-only`.")
        return 130
    notes += [f"cell {cell.label} failed ({reason}); see {cell.run_dir / 'stderr.log'}"
              for cell, reason in outcome.failed]
    markdown = render(tier_dir, args.tier, plan, command, notes)
    print(f"{len(outcome.finished)} cell(s) finished now, {len(outcome.failed)} failed; results in {markdown}")
    return 1 if (outcome.failed or problems) else 0


if __name__ == "__main__":
    sys.exit(main())
