"""Carry unfinished runs' checkpoints from one checkout of this repository to the next.

    python -m experiments.carry save        # before a session stops: copy what a new checkout would lose
    python -m experiments.carry restore     # first thing in the next session: put it back, then resume the runs
    python -m experiments.carry list        # what carry/ holds, and whether each run's files are here

A run's committed files (``config.json``, ``metrics.jsonl``) come back with any checkout, but the files git ignores
(``checkpoint.pt``, ``wall_time.json``, ``tb/``) do not, and a run without its checkpoint cannot be resumed or
re-evaluated. Where a new checkout brings back the previous one's untracked files, as this project's workplace does,
copies of the ignored files under ``carry/`` (untracked and *not* ignored, so never ``git add`` it) come back with it.

``save`` copies the ignored files of every unfinished run (a ``checkpoint.pt`` and no ``results.json``) under
``benchmarks/`` and ``runs/`` to ``carry/<the run's path>/``, in parts of at most ``PART_BYTES`` (the largest file
seen to come back whole; a cheetah-vel checkpoint is 60-100 MB) and a ``MANIFEST.json`` naming each file's parts, size
and sha256. The manifest is written last and atomically, so a save cut short leaves the previous copy whole, and a
copy that a checkout brought back incomplete is an error naming it, never a silently truncated checkpoint. The
carried checkpoint is read back at once, and a running run may be saved as it runs (the trainer replaces its
checkpoint atomically, so a copy is always one whole iteration's). It leaves alone the carried copies of runs
whose checkpoint is gone (the only copy left) and drops those of runs that have finished. ``restore`` puts carried
files back where the run's own checkpoint is missing or older than the carried one, after checking every part
against the manifest and that the checkpoint belongs to the run's ``config.json`` (env, algo, tier, seed); the
trainer's identity check still runs on resume. Copies saved before parts existed (whole files, no manifest) are
read as they are. A carried checkpoint
older than the run's ``metrics.jsonl`` is fine: resuming rewrites the metrics from the checkpoint's learning curve,
so the iterations after it are run again, not duplicated.

The benchmark and ablation runners do ``save``'s work themselves with ``--carry`` (after every new checkpoint of a
running cell, and dropping the copy when the cell finishes), and refuse to start afresh a cell whose checkpoint
``carry/`` holds unrestored.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

from algos.core.io import (REPO_ROOT, CheckpointError, atomic_write_bytes, atomic_write_json, load_checkpoint,
                           read_json)
from experiments.report import DASH, table
from experiments.status import DEFAULT_ROOTS, find_runs

CARRY_DIR = "carry"
MANIFEST = "MANIFEST.json"
LOCK = ".lock"  # held while a copy is written: a runner's --carry and a `carry save` beside it take turns
PART_BYTES = 15 * 2**20  # a 16.5 MB checkpoint came back whole on 2026-12-02; whether larger files do is unknown
IDENTITY_KEYS = ("env", "algo", "tier", "seed")
SKIPPED_SUFFIXES = (".tmp", ".lock")  # half-written files and runner locks are never worth carrying


def ignored_files(run_dir: Path, repo: Path) -> list[Path]:
    """The files under ``run_dir`` that git ignores (what a fresh checkout lacks)."""
    listing = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "-z", "--",
                              str(run_dir.relative_to(repo))], cwd=repo, capture_output=True, check=True)
    names = [Path(name) for name in listing.stdout.decode().split("\0") if name]
    return sorted(repo / name for name in names if not name.name.endswith(SKIPPED_SUFFIXES)
                  and (repo / name).is_file())


def checkpoint_iteration(path: Path) -> int:
    """The last finished iteration a checkpoint holds (a ``CheckpointError`` names a corrupt one)."""
    return int(load_checkpoint(path)["iteration"])


def write_carried(run_dir: Path, files: list[Path], carried_run: Path) -> int:
    """Copy ``files`` (under ``run_dir``) to the carried folder ``carried_run`` in parts, then its manifest, and
    remove what the manifest does not name (the previous copy's parts). Returns the bytes carried."""
    token = secrets.token_hex(4)  # new part names each save: the previous copy stays whole until the manifest moves
    manifest = {}
    for source in files:
        name = source.relative_to(run_dir).as_posix()
        digest, parts, size = hashlib.sha256(), [], 0
        with open(source, "rb") as handle:  # opened once: a checkpoint replaced meanwhile is copied whole, old or new
            while True:
                chunk = handle.read(PART_BYTES)
                if parts and not chunk:
                    break
                parts.append(f"{name}.{token}.part{len(parts):03d}")
                atomic_write_bytes(carried_run / parts[-1], chunk)
                digest.update(chunk)
                size += len(chunk)
                if len(chunk) < PART_BYTES:
                    break
        manifest[name] = {"size": size, "sha256": digest.hexdigest(), "parts": parts}
    atomic_write_json(carried_run / MANIFEST, manifest)
    keep = {carried_run / MANIFEST, carried_run / LOCK,
            *(carried_run / part for entry in manifest.values() for part in entry["parts"])}
    for path in [p for p in carried_run.rglob("*") if p.is_file() and p not in keep]:
        path.unlink()
    return sum(entry["size"] for entry in manifest.values())


@contextlib.contextmanager
def _writing(carried_run: Path):
    """Hold ``carried_run``'s write lock: two writers' parts and clean-ups must not interleave."""
    carried_run.mkdir(parents=True, exist_ok=True)
    with open(carried_run / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _manifest(carried_run: Path) -> dict | None:
    path = carried_run / MANIFEST
    return read_json(path, "carry manifest") if path.exists() else None


def carried_names(carried_run: Path) -> list[str]:
    """The run files a carried folder holds, relative to the run."""
    manifest = _manifest(carried_run)
    if manifest is None:  # a copy saved before parts existed (2026-12-02): whole files
        return sorted(p.relative_to(carried_run).as_posix() for p in carried_run.rglob("*")
                      if p.is_file() and p.name != LOCK)
    return sorted(manifest)


def read_carried(carried_run: Path, name: str) -> bytes:
    """One carried file's bytes, checked against its manifest: a copy that came back incomplete is an error."""
    manifest = _manifest(carried_run)
    if manifest is None:
        return (carried_run / name).read_bytes()
    if name not in manifest:
        raise CheckpointError(f"carry manifest {carried_run / MANIFEST} lists no {name}")
    entry, advice = manifest[name], f"delete {carried_run} to start the run afresh"
    missing = [part for part in entry["parts"] if not (carried_run / part).is_file()]
    if missing:
        raise CheckpointError(f"carried copy of {name} in {carried_run} is incomplete: {len(missing)} of its "
                              f"{len(entry['parts'])} part(s) missing, e.g. {missing[0]}; {advice}")
    data = b"".join((carried_run / part).read_bytes() for part in entry["parts"])
    if len(data) != entry["size"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise CheckpointError(f"carried copy of {name} in {carried_run} is corrupt: {len(data)} bytes against "
                              f"{entry['size']} written, or a different sha256; {advice}")
    return data


def holds_checkpoint(carried_run: Path) -> bool:
    manifest = _manifest(carried_run)
    return "checkpoint.pt" in manifest if manifest is not None else (carried_run / "checkpoint.pt").is_file()


def carried_state(carried_run: Path) -> dict:
    """The carried checkpoint, loaded (a ``CheckpointError`` names an incomplete or corrupt one)."""
    return load_checkpoint(carried_run / "checkpoint.pt", data=read_carried(carried_run, "checkpoint.pt"))


def check_belongs(carried_run: Path, config_path: Path) -> int:
    """The carried checkpoint's iteration, after checking it was written by the run ``config_path`` describes."""
    state = carried_state(carried_run)
    identity = state.get("identity") or {}
    config = json.loads(config_path.read_text())
    for key in IDENTITY_KEYS:
        if key in identity and identity[key] != config.get(key):
            raise CheckpointError(f"carried checkpoint in {carried_run} belongs to another run: {key} "
                                  f"{identity[key]!r} in the checkpoint, {config.get(key)!r} in {config_path}")
    return int(state["iteration"])


def carried_iteration(carried_run: Path) -> int:
    return int(carried_state(carried_run)["iteration"])


def unfinished(run_dir: Path) -> bool:
    return (run_dir / "checkpoint.pt").exists() and not (run_dir / "results.json").exists()


def carried_checkpoint(run_dir: Path, repo: Path = REPO_ROOT) -> Path | None:
    """The folder in ``carry/`` that holds a checkpoint of ``run_dir``, if any (None for a run outside the
    repository)."""
    try:
        path = repo / CARRY_DIR / Path(run_dir).resolve().relative_to(repo.resolve())
    except ValueError:
        return None
    return path if holds_checkpoint(path) else None


def carried_runs(carry: Path) -> list[Path]:
    """Every run folder under ``carry`` (one holding a carried checkpoint), relative to ``carry``."""
    if not carry.exists():
        return []
    folders = {path.parent for name in (MANIFEST, "checkpoint.pt") for path in carry.rglob(name)}
    return sorted(folder.relative_to(carry) for folder in folders if holds_checkpoint(folder))


def save_run(run_dir: Path, repo: Path = REPO_ROOT) -> list[str] | None:
    """Carry one unfinished run's ignored files to ``carry/``; its row of ``save``'s table, or None where there is
    nothing to carry (no checkpoint yet, or nothing of it ignored)."""
    relative = Path(run_dir).resolve().relative_to(Path(repo).resolve())
    run_dir, carried_run = repo / relative, repo / CARRY_DIR / relative
    files = ignored_files(run_dir, repo)
    if not files:  # the run's checkpoint is tracked or beside the repository's rules: nothing to lose
        return None
    with _writing(carried_run):
        if holds_checkpoint(carried_run) and (ahead := carried_iteration(carried_run)) > checkpoint_iteration(
                run_dir / "checkpoint.pt"):
            # the run started afresh beside an unrestored copy: overwriting it would lose the iterations
            return [str(relative), "kept (the carried copy is ahead of the run's: restore it)", str(ahead + 1), DASH]
        size = write_carried(run_dir, files, carried_run)
        iteration = carried_iteration(carried_run)  # read back now: a copy that does not load fails here, not later
    return [str(relative), "saved", str(iteration + 1), f"{size / 2**20:.1f}"]


def drop_run(run_dir: Path, repo: Path = REPO_ROOT) -> bool:
    """Remove ``carry/``'s copy of a run (one that finished); whether there was one."""
    relative = Path(run_dir).resolve().relative_to(Path(repo).resolve())
    if not (repo / CARRY_DIR / relative).exists():
        return False
    shutil.rmtree(repo / CARRY_DIR / relative)
    _remove_empty_dirs(repo / CARRY_DIR)
    return True


def save(repo: Path, roots: list[str]) -> list[list[str]]:
    carry = repo / CARRY_DIR
    rows = []
    for run_dir in find_runs([repo / root for root in roots]):
        relative = run_dir.relative_to(repo)
        if unfinished(run_dir):
            row = save_run(run_dir, repo)
            if row:
                rows.append(row)
        elif (run_dir / "results.json").exists() and drop_run(run_dir, repo):
            rows.append([str(relative), "dropped (finished)", DASH, DASH])
    for relative in carried_runs(carry):
        if not (repo / relative / "checkpoint.pt").exists():
            rows.append([str(relative), "kept (the run's own checkpoint is gone)",
                         str(carried_iteration(carry / relative) + 1), DASH])
    _remove_empty_dirs(carry)
    return rows


def restore(repo: Path) -> list[list[str]]:
    carry = repo / CARRY_DIR
    rows = []
    for relative in carried_runs(carry):
        run_dir, source = repo / relative, carry / relative
        if (run_dir / "results.json").exists():
            shutil.rmtree(source)
            rows.append([str(relative), "dropped (the run finished)", DASH])
            continue
        # a run under runs/ is ignored whole, so its config.json travels with the checkpoint
        config_path = next((d / "config.json" for d in (run_dir, source) if (d / "config.json").exists()), None)
        if config_path is None:
            rows.append([str(relative), "not restored: the run's config.json is not here", DASH])
            continue
        iteration = check_belongs(source, config_path)
        own = run_dir / "checkpoint.pt"
        if own.exists() and checkpoint_iteration(own) >= iteration:
            shutil.rmtree(source)
            rows.append([str(relative), "dropped (the run's own checkpoint is as new)", str(iteration + 1)])
            continue
        contents = {name: read_carried(source, name) for name in carried_names(source)}  # all checked before any write
        # the checkpoint last: a restore cut short leaves a run that starts afresh, not one resuming from half its files
        for name in sorted(contents, key=lambda name: name == "checkpoint.pt"):
            atomic_write_bytes(run_dir / name, contents[name])
        shutil.rmtree(source)
        rows.append([str(relative), "restored", str(iteration + 1)])
    _remove_empty_dirs(carry)
    return rows


def listing(repo: Path) -> list[list[str]]:
    carry = repo / CARRY_DIR
    rows = []
    for relative in carried_runs(carry):
        here = repo / relative
        state = next((label for name, label in (("results.json", "finished"), ("checkpoint.pt", "checkpoint here"),
                                                ("config.json", "checkpoint missing")) if (here / name).exists()),
                     "run files missing")
        size = sum(p.stat().st_size for p in (carry / relative).rglob("*") if p.is_file())
        rows.append([str(relative), state, str(carried_iteration(carry / relative) + 1), f"{size / 2**20:.1f}"])
    return rows


def _remove_empty_dirs(carry: Path) -> None:
    if not carry.exists():
        return
    for path in sorted((p for p in carry.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(path.iterdir()):
            path.rmdir()
    if not any(carry.iterdir()):
        carry.rmdir()


def carry_is_ignored(repo: Path) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", f"{CARRY_DIR}/x/checkpoint.pt"], cwd=repo).returncode == 0


def main(argv=None, repo: Path = REPO_ROOT) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.carry", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("save", "restore", "list"))
    parser.add_argument("roots", nargs="*", default=list(DEFAULT_ROOTS),
                        help="folders whose unfinished runs save copies (default: benchmarks runs)")
    args = parser.parse_args(argv)
    if args.action == "save":
        if carry_is_ignored(repo):
            parser.error(f"git ignores {CARRY_DIR}/: a new checkout would not bring it back; take it out of .gitignore")
        rows = save(repo, args.roots)
        print(table(["run", "carry", "iterations", "MiB"], rows) if rows else "no unfinished runs to carry")
        if rows:
            print(f"\n{CARRY_DIR}/ is untracked on purpose: never `git add` it. "
                  "Next session: python -m experiments.carry restore")
    elif args.action == "restore":
        try:
            rows = restore(repo)
        except CheckpointError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(table(["run", "carry", "iterations"], rows) if rows else f"nothing carried ({CARRY_DIR}/ is empty)")
    else:
        rows = listing(repo)
        print(table(["run", "here", "iterations carried", "MiB"], rows) if rows else
              f"nothing carried ({CARRY_DIR}/ is empty)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
