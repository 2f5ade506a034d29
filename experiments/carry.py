"""Move unfinished runs to another machine or checkout.

    python -m experiments.carry save [ROOT ...]   # copy unfinished runs' git-ignored files into carry/
    python -m experiments.carry restore           # there: put them back, then resume the runs
    python -m experiments.carry list              # what carry/ holds, and whether each run's files are here

Git carries a run's ``config.json`` and ``metrics.jsonl`` but not the files it ignores (``checkpoint.pt``,
``wall_time.json``, ``tb/``), without which a run can be neither resumed nor re-evaluated. ``save`` copies those of
every unfinished run (a checkpoint, no ``results.json``) under ``benchmarks/`` and ``runs/`` to
``carry/<run path>/``, a folder git neither ignores nor should commit: take it along with the working tree. Each
file goes in parts of at most ``PART_BYTES`` with a ``MANIFEST.json`` (parts, size, sha256) written last, so a save
cut short leaves the previous copy whole and a copy that arrived incomplete is an error naming it. ``restore`` puts
the files back where a run's own checkpoint is missing or older, once the checkpoint is shown to belong to the
run's ``config.json``. The cell runners' ``--carry`` (benchmark, ablations, sweep) refreshes the copy after every
checkpoint and drops it when the cell finishes; they refuse to start afresh a cell whose checkpoint ``carry/`` holds.
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
from typing import Iterator

from algos.core.io import (REPO_ROOT, CheckpointError, atomic_write_bytes, atomic_write_json, atomic_write_parts,
                           load_checkpoint, read_json)
from experiments.report import DASH, table

CARRY_DIR = "carry"
DEFAULT_ROOTS = ("benchmarks", "runs")
MANIFEST = "MANIFEST.json"
LOCK = ".lock"  # held while a copy is written: a runner's --carry and a `carry save` beside it take turns
PART_BYTES = 15 * 2**20  # small enough for transfers that limit a file's size; each part is checked on restore
IDENTITY_KEYS = ("env", "algo", "tier", "seed")


def find_runs(roots: list[Path]) -> list[Path]:
    """Every run directory (one holding ``config.json``) under ``roots``, sorted."""
    return sorted({path.parent for root in roots if root.exists() for path in root.rglob("config.json")})


def ignored_files(run_dir: Path, repo: Path) -> list[Path]:
    """The files under ``run_dir`` that git ignores, without half-written files and runner locks."""
    listing = subprocess.run(["git", "ls-files", "--others", "--ignored", "--exclude-standard", "-z", "--",
                              str(run_dir.relative_to(repo))], cwd=repo, capture_output=True, check=True)
    paths = (repo / name for name in listing.stdout.decode().split("\0") if name)
    return sorted(path for path in paths if not path.name.endswith((".tmp", ".lock")) and path.is_file())


def write_carried(run_dir: Path, files: list[Path], carried_run: Path) -> int:
    """Copy ``files`` (under ``run_dir``) to ``carried_run`` in parts, then its manifest, then remove what the
    manifest does not name (the previous copy). Returns the bytes carried."""
    token = secrets.token_hex(4)  # new part names: the previous copy stays whole until the manifest is replaced
    manifest = {}
    for source in files:
        name = source.relative_to(run_dir).as_posix()
        digest, parts, size = hashlib.sha256(), [], 0
        with open(source, "rb") as handle:  # opened once: a checkpoint replaced meanwhile is copied whole
            while (chunk := handle.read(PART_BYTES)) or not parts:
                parts.append(f"{name}.{token}.part{len(parts):03d}")
                atomic_write_bytes(carried_run / parts[-1], chunk)
                digest.update(chunk)
                size += len(chunk)
                if len(chunk) < PART_BYTES:
                    break
        manifest[name] = {"size": size, "sha256": digest.hexdigest(), "parts": parts}
    atomic_write_json(carried_run / MANIFEST, manifest)
    keep = {MANIFEST, LOCK, *(part for entry in manifest.values() for part in entry["parts"])}
    for path in [p for p in carried_run.rglob("*") if p.is_file()]:
        if path.relative_to(carried_run).as_posix() not in keep:
            path.unlink()
    return sum(entry["size"] for entry in manifest.values())


@contextlib.contextmanager
def _writing(carried_run: Path):
    """Hold ``carried_run``'s write lock: two writers' parts and clean-ups must not interleave."""
    carried_run.mkdir(parents=True, exist_ok=True)
    with open(carried_run / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def manifest_of(carried_run: Path) -> dict:
    """A carried folder's manifest (file name -> size, sha256, parts); empty where there is none."""
    path = carried_run / MANIFEST
    return read_json(path, "carry manifest") if path.exists() else {}


def carried_parts(carried_run: Path, name: str) -> Iterator[bytes]:
    """One carried file's parts in order, checked against the manifest as they are read (a copy that arrived
    incomplete or changed is an error, raised at the latest after the last part)."""
    entry, advice = manifest_of(carried_run).get(name), f"delete {carried_run} to start the run afresh"
    if entry is None:
        raise CheckpointError(f"carry manifest {carried_run / MANIFEST} lists no {name}")
    missing = [part for part in entry["parts"] if not (carried_run / part).is_file()]
    if missing:
        raise CheckpointError(f"carried copy of {name} in {carried_run} is incomplete: {len(missing)} of its "
                              f"{len(entry['parts'])} part(s) missing, e.g. {missing[0]}; {advice}")
    digest, size = hashlib.sha256(), 0
    for part in entry["parts"]:
        data = (carried_run / part).read_bytes()
        digest.update(data)
        size += len(data)
        yield data
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        raise CheckpointError(f"carried copy of {name} in {carried_run} is corrupt: {size} bytes against "
                              f"{entry['size']} written, or a different sha256; {advice}")


def read_carried(carried_run: Path, name: str) -> bytes:
    """One carried file's bytes, checked against the manifest."""
    return b"".join(carried_parts(carried_run, name))


def carried_iteration(carried_run: Path, config_path: Path | None = None) -> int:
    """The carried checkpoint's last iteration, checked to belong to the run ``config_path`` describes if given.
    The parts are joined into a temporary file and mapped, not read into memory: a checkpoint holds gigabytes of
    replay buffers."""
    joined = carried_run / f".checkpoint.{secrets.token_hex(4)}.tmp"
    try:
        with open(joined, "wb") as handle:
            for data in carried_parts(carried_run, "checkpoint.pt"):
                handle.write(data)
        try:
            state = load_checkpoint(joined, peek=True)
        except CheckpointError as error:  # named as the carried copy it is
            raise CheckpointError(str(error).replace(str(joined), str(carried_run / "checkpoint.pt"))) from None
    finally:
        joined.unlink(missing_ok=True)
    if config_path is not None:
        identity, config = state.get("identity") or {}, json.loads(config_path.read_text())
        for key in IDENTITY_KEYS:
            if key in identity and identity[key] != config.get(key):
                raise CheckpointError(f"carried checkpoint in {carried_run} belongs to another run: {key} "
                                      f"{identity[key]!r} in the checkpoint, {config.get(key)!r} in {config_path}")
    return int(state["iteration"])


def carried_checkpoint(run_dir: Path, repo: Path = REPO_ROOT) -> Path | None:
    """The folder under ``carry/`` that holds a checkpoint of ``run_dir``, if any."""
    try:
        path = repo / CARRY_DIR / Path(run_dir).resolve().relative_to(repo.resolve())
    except ValueError:  # a run outside the repository
        return None
    return path if "checkpoint.pt" in manifest_of(path) else None


def carried_runs(carry: Path) -> list[Path]:
    """Every run folder under ``carry`` that holds a checkpoint, relative to ``carry``."""
    folders = {path.parent for path in carry.rglob(MANIFEST)} if carry.exists() else set()
    return sorted(folder.relative_to(carry) for folder in folders if "checkpoint.pt" in manifest_of(folder))


def save_run(run_dir: Path, repo: Path = REPO_ROOT) -> list[str] | None:
    """Carry one unfinished run's ignored files; its row of ``save``'s table, or None when git ignores none."""
    relative = Path(run_dir).resolve().relative_to(Path(repo).resolve())
    run_dir, carried_run = repo / relative, repo / CARRY_DIR / relative
    files = ignored_files(run_dir, repo)
    if not files:
        return None
    with _writing(carried_run):
        ahead = carried_iteration(carried_run) if "checkpoint.pt" in manifest_of(carried_run) else -1
        if ahead > int(load_checkpoint(run_dir / "checkpoint.pt", peek=True)["iteration"]):
            # the run started afresh beside an unrestored copy: overwriting the copy would lose its iterations
            return [str(relative), "kept (the carried copy is ahead of the run's: restore it)", str(ahead + 1), DASH]
        size = write_carried(run_dir, files, carried_run)
        iteration = carried_iteration(carried_run)  # read back now: a copy that does not load fails here
    return [str(relative), "saved", str(iteration + 1), f"{size / 2**20:.1f}"]


def drop_run(run_dir: Path, repo: Path = REPO_ROOT) -> bool:
    """Remove the carried copy of a run (one that finished); whether there was one."""
    carried_run = repo / CARRY_DIR / Path(run_dir).resolve().relative_to(Path(repo).resolve())
    if not carried_run.exists():
        return False
    shutil.rmtree(carried_run)
    _remove_empty_dirs(repo / CARRY_DIR)
    return True


def save(repo: Path, roots: list[str]) -> list[list[str]]:
    rows = []
    for run_dir in find_runs([repo / root for root in roots]):
        if (run_dir / "results.json").exists():
            if drop_run(run_dir, repo):
                rows.append([str(run_dir.relative_to(repo)), "dropped (finished)", DASH, DASH])
        elif (run_dir / "checkpoint.pt").exists() and (row := save_run(run_dir, repo)):
            rows.append(row)
    for relative in carried_runs(repo / CARRY_DIR):
        if not (repo / relative / "checkpoint.pt").exists():  # the only copy left: keep it
            rows.append([str(relative), "kept (the run's own checkpoint is gone)",
                         str(carried_iteration(repo / CARRY_DIR / relative) + 1), DASH])
    _remove_empty_dirs(repo / CARRY_DIR)
    return rows


def restore(repo: Path) -> list[list[str]]:
    rows = []
    for relative in carried_runs(repo / CARRY_DIR):
        run_dir, source = repo / relative, repo / CARRY_DIR / relative
        # a run under runs/ is ignored whole, so its config.json travels with the checkpoint
        config_path = next((d / "config.json" for d in (run_dir, source) if (d / "config.json").exists()), None)
        if (run_dir / "results.json").exists():
            row = [str(relative), "dropped (the run finished)", DASH]
        elif config_path is None:
            rows.append([str(relative), "not restored: the run's config.json is not here", DASH])
            continue
        else:
            iteration = carried_iteration(source, config_path)
            own = run_dir / "checkpoint.pt"
            if own.exists() and int(load_checkpoint(own, peek=True)["iteration"]) >= iteration:
                row = [str(relative), "dropped (the run's own checkpoint is as new)", str(iteration + 1)]
            else:
                names = sorted(manifest_of(source), key=lambda name: name == "checkpoint.pt")
                for name in names:  # all checked first, a part at a time: a checkpoint is gigabytes
                    for _ in carried_parts(source, name):
                        pass
                # the checkpoint last: a restore cut short leaves a run that starts afresh, not a half-restored one
                for name in names:
                    atomic_write_parts(run_dir / name, carried_parts(source, name))
                row = [str(relative), "restored", str(iteration + 1)]
        shutil.rmtree(source)
        rows.append(row)
    _remove_empty_dirs(repo / CARRY_DIR)
    return rows


def listing(repo: Path) -> list[list[str]]:
    rows = []
    for relative in carried_runs(repo / CARRY_DIR):
        here, carried_run = repo / relative, repo / CARRY_DIR / relative
        state = next((label for name, label in (("results.json", "finished"), ("checkpoint.pt", "checkpoint here"),
                                                ("config.json", "checkpoint missing")) if (here / name).exists()),
                     "run files missing")
        size = sum(p.stat().st_size for p in carried_run.rglob("*") if p.is_file())
        rows.append([str(relative), state, str(carried_iteration(carried_run) + 1), f"{size / 2**20:.1f}"])
    return rows


def _remove_empty_dirs(carry: Path) -> None:
    for path in sorted((p for p in carry.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(path.iterdir()):
            path.rmdir()
    if carry.exists() and not any(carry.iterdir()):
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
    empty = f"nothing carried ({CARRY_DIR}/ is empty)"
    if args.action == "save":
        if carry_is_ignored(repo):
            parser.error(f"git ignores {CARRY_DIR}/, so it would be left behind with the other ignored files; "
                         "take it out of .gitignore")
        rows = save(repo, args.roots)
        print(table(["run", "carry", "iterations", "MiB"], rows) if rows else "no unfinished runs to carry")
        if rows:
            print(f"\nDo not commit {CARRY_DIR}/: take it along with the working tree, then run "
                  "`python -m experiments.carry restore` there.")
    elif args.action == "restore":
        try:
            rows = restore(repo)
        except CheckpointError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(table(["run", "carry", "iterations"], rows) if rows else empty)
    else:
        rows = listing(repo)
        print(table(["run", "here", "iterations carried", "MiB"], rows) if rows else empty)
    return 0


if __name__ == "__main__":
    sys.exit(main())
