"""Where a run computes and in what precision: the ``device`` and ``bf16`` run settings, resolved once when the run
is built and saved resolved in its config, so a resumed run keeps what it started with.

- ``device``: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu`` or ``cuda``.
- ``bf16``: ``auto`` turns bfloat16 autocast on where it is native: any CUDA GPU torch supports it on, or a CPU
  with AVX512-BF16 or AMX (where bf16 matrix products run about 2.7x faster than fp32). On a CPU without them the
  products are computed in fp32 kernels and rounded as bf16's are (``models.kernels``): the same arithmetic, a
  step a little slower than fp32's, so ``auto`` leaves it off there. ``true``/``false`` force it.

And how the CPU allocates and rounds: ``tune_cpu_allocator`` keeps glibc's malloc from handing every freed activation
back to the kernel, and ``flush_subnormals`` keeps subnormal floats off the CPU's slow path (see each).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys

import torch

from algos.core.config import DEVICES, ConfigError
from models.kernels import cpu_has_native_bf16


# glibc mallopt parameters
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 * 2 ** 20   # glibc's own upper bound for its dynamic threshold
TRIM_THRESHOLD_BYTES = 2 ** 30
_allocator: dict | None = None


def tune_cpu_allocator() -> dict:
    """Keep freed tensor memory in the process (glibc only; once per process; the numbers are unchanged).

    A gradient step allocates and frees hundreds of activations of a few MB (4096 x 300 at the benchmark tier).
    glibc's malloc serves blocks above its mmap threshold with fresh pages and unmaps them on free, and trims
    the heap above its trim threshold, so every step the kernel zero-fills the same memory again: about 20,000
    page faults per PEARL step, 29 ms of its 124 ms of CPU time (AMD EPYC, benchmark tier, one thread). With the
    mmap threshold fixed at 32 MiB and trimming only above 1 GiB, the memory is reused: 150 faults and 90 ms of
    CPU per step. The cost is that a process keeps its peak heap until it exits. Returns what was set, recorded
    in each run's ``machine`` description; ``{"tuned": False}`` where there is no glibc ``mallopt``."""
    global _allocator
    if _allocator is None:
        try:
            mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
        except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
            _allocator = {"tuned": False}
        else:
            mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
            tuned = (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
                     and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
            _allocator = ({"tuned": True, "mmap_threshold_bytes": MMAP_THRESHOLD_BYTES,
                           "trim_threshold_bytes": TRIM_THRESHOLD_BYTES} if tuned else {"tuned": False})
    return dict(_allocator)


def cpu_allocator() -> dict:
    """What ``tune_cpu_allocator`` set in this process (``{"tuned": False}`` before it ran), without setting it."""
    return dict(_allocator or {"tuned": False})


_subnormals_flushed: bool | None = None


def flush_subnormals() -> bool:
    """Treat subnormal floats (magnitudes below 1.2e-38) as zero in this thread's CPU arithmetic and the threads it
    starts afterwards (x86's flush-to-zero and denormals-are-zero modes); returns whether the CPU supports it.

    Early in training the gradient that VariBAD's GRU carries back over sparse-point-robot's 1,024-transition context
    decays into subnormals, and an x86 core computes on them through a slow microcode path: kept, its first 48
    gradient steps run 1.9-6.5x slower, later ones as fast (``benchmarks/dev/subnormals/OVER_TRAINING.md``; short
    timings such as ``experiments.throughput``'s are what it distorts most). Subnormals are too small to move a weight:
    a sum holding one beside normal-sized terms rounds to the same bits without it. Flushing them has left every
    weight and logged number bit for bit as it was in every check (the benchmark cells' rerun checks,
    ``benchmarks/dev/subnormals/THROUGHPUT.md``, ``tests/test_device.py``); that is evidence, not proof: a comparison
    reads a subnormal as zero, so one could in principle flip a ReLU."""
    global _subnormals_flushed
    if _subnormals_flushed is None:  # once per process, like the allocator
        _subnormals_flushed = bool(torch.set_flush_denormal(True))
    return _subnormals_flushed


def subnormals_flushed() -> bool | None:
    """What ``flush_subnormals`` found in this process (None before it ran), recorded with each run's machine."""
    return _subnormals_flushed


@contextlib.contextmanager
def subnormals_kept():
    """Compute with subnormals inside this block (after it, as before): what flushing is measured against."""
    torch.set_flush_denormal(False)
    try:
        yield
    finally:
        torch.set_flush_denormal(bool(_subnormals_flushed))


def resolve_device(requested: str) -> str:
    if requested not in DEVICES:
        raise ConfigError(f"config key 'device' must be one of {list(DEVICES)}, got {requested!r}")
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device' is 'cuda' but torch sees no CUDA GPU (torch "
                          f"{torch.__version__}); use device=cpu or device=auto")
    return requested


def native_bf16(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def resolve_bf16(requested: bool | str, device: str) -> bool:
    if isinstance(requested, bool):
        return requested
    if requested == "auto":
        return native_bf16(device)
    raise ConfigError(f"config key 'bf16' must be true, false or auto, got {requested!r}")


def warn_if_emulated(bf16: bool, device: str) -> None:
    """A run (typically a resumed one) keeps its precision; say so when this machine only emulates it."""
    if bf16 and not native_bf16(device):
        how = ("(no AVX512-BF16/AMX): its products run in fp32 kernels, rounded as bf16's are, a little slower than "
               "fp32" if device == "cpu" else "(no native bf16): gradient steps may run slower than in fp32")
        print(f"note: this run uses bf16 autocast, which this {device.upper()} only emulates {how}. A resumed run "
              f"keeps the precision it started with; start a new run with --set bf16=false for speed.",
              file=sys.stderr)
