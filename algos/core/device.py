"""Where a run computes and in what precision: the ``device`` and ``bf16`` run settings, resolved once when the run
is built and saved resolved in its config, so a resumed run keeps what it started with.

- ``device``: ``auto`` (CUDA when torch sees a GPU, else the CPU), ``cpu`` or ``cuda``.
- ``bf16``: ``auto`` turns bfloat16 autocast on where it is native: any CUDA GPU torch supports it on, or a CPU
  with AVX512-BF16 or AMX (where bf16 matrix products run about 2.7x faster than fp32). On a CPU without them
  torch emulates bf16 and a step is about 2.7x *slower*, so ``auto`` leaves it off there. ``true``/``false``
  force it.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from algos.core.config import DEVICES, ConfigError


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), as torch's CPU dispatch sees it."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without these helpers: read the kernel's flags instead
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return "avx512_bf16" in flags or "amx_bf16" in flags


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


def warn_if_slow(bf16: bool, device: str) -> None:
    """A run (typically a resumed one) keeps its precision; say so when this machine only emulates it."""
    if bf16 and not native_bf16(device):
        print(f"warning: this run uses bf16 autocast, which this {device.upper()} only emulates (no AVX512-BF16/AMX): "
              f"gradient steps run about 2.7x slower than fp32. A resumed run keeps the precision it started with; "
              f"start a new run with --set bf16=false for speed.", file=sys.stderr)
