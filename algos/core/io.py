"""Atomic file writes, run directories and checkpoint loading with clear errors: no run loses data."""
from __future__ import annotations

import errno
import io
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]  # the repository: git commands and the benchmark files use it


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; results should read like any other file
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data) -> None:
    _atomic_write(path, lambda h: h.write((json.dumps(data, indent=2, default=_json_default) + "\n").encode()))


def atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda h: h.write(text.encode()))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    _atomic_write(path, lambda h: h.write(data))


def atomic_write_parts(path: Path, parts: Iterable[bytes]) -> None:
    """``parts`` written in order, never all held at once; an error while they are produced leaves no file."""
    _atomic_write(path, lambda h: h.writelines(parts))


def atomic_torch_save(path: Path, obj) -> None:
    _atomic_write(path, lambda h: torch.save(obj, h))


def atomic_savefig(fig, path: Path, dpi: int = 110) -> None:
    """A matplotlib figure as a PNG, atomically."""
    _atomic_write(path, lambda h: fig.savefig(h, format="png", dpi=dpi))


class CheckpointError(RuntimeError):
    """A missing, corrupt or foreign checkpoint or run file; the message names the file."""


class RunDirError(RuntimeError):
    """A run directory that cannot be created or written; the message names it and says why."""


def make_run_dir(path: Path) -> None:
    """Create the run directory ``path`` (and missing parents) and check it is writable, or raise
    :class:`RunDirError`; on failure, folders this call created are removed again, so nothing is left behind."""
    path = Path(path)
    missing = [p for p in (path, *path.parents) if not p.exists()][::-1]  # outermost first
    base = missing[0].parent if missing else path
    if not base.is_dir():
        raise RunDirError(f"cannot create run directory {path}: {base} is not a folder")
    created: list[Path] = []
    try:
        for folder in missing:
            folder.mkdir()
            created.append(folder)
    except OSError as error:
        why = error.strerror or str(error)
        if error.errno == errno.ENOENT:  # the parent exists but refuses new entries (e.g. /proc, /sys)
            why = f"{folder.parent} does not accept new folders"
        for made in reversed(created):
            made.rmdir()
        raise RunDirError(f"cannot create run directory {path}: {why}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        for made in reversed(created):
            made.rmdir()
        raise RunDirError(f"run directory {path} is not writable (permission denied or a read-only file system)")


def load_checkpoint(path: Path, data: bytes | None = None, required: tuple[str, ...] = ("iteration", "algorithm"),
                    peek: bool = False) -> dict:
    """The checkpoint at ``path`` (or another torch file of a run holding the ``required`` keys, e.g. a finished
    run's agent weights); ``data`` holds its bytes where they are not one file there (a copy carried in parts,
    ``experiments.carry``), and ``path`` then only names it in errors. ``peek`` maps the file's tensors instead of
    reading them (a few GB of replay buffers), for a caller that reads only the small entries (the iteration)."""
    path = Path(path)
    if data is None and not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        source = path if data is None else io.BytesIO(data)
        state = torch.load(source, map_location="cpu", weights_only=False, mmap=peek and data is None)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {error})") from None
    if not isinstance(state, dict) or any(key not in state for key in required):
        raise CheckpointError(f"checkpoint {path} is not a checkpoint of this project (missing keys)")
    return state


def read_json(path: Path, what: str = "file"):
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{what} {path} is corrupt: {error}") from None


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def git_commit() -> str:
    """The commit this code is at (``-dirty`` with uncommitted code changes). Where the tree travelled without its
    git metadata (a cluster node, a copy on another machine), the driver states it in ``META_RL_GIT_COMMIT``."""
    if os.environ.get("META_RL_GIT_COMMIT") and not (REPO_ROOT / ".git").exists():
        return os.environ["META_RL_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=REPO_ROOT)
        commit = out.stdout.strip() or "unknown"
        # results files under benchmarks/ change while runs go on; only a change to the code makes a run dirty
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)benchmarks"], capture_output=True, text=True, timeout=5,
                               cwd=REPO_ROOT).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_description(device: torch.device | str = "cpu") -> dict:
    """What a result was computed on: CPU, cores, the CPU's native bf16 support, the GPU if one was used, and the
    versions of the libraries that decide the numbers."""
    from algos.core.device import cpu_allocator, cpu_has_native_bf16, subnormals_flushed

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    out = {"cpu": cpu, "cores": os.cpu_count(), "cpu_native_bf16": cpu_has_native_bf16(),
           "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
           "versions": _library_versions(), "allocator": cpu_allocator(),
           "subnormals_flushed": subnormals_flushed()}
    if torch.device(device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def _library_versions() -> dict:
    from importlib import metadata

    versions = {}
    for name in ("torch", "numpy", "gymnasium", "mujoco", "einops"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions
