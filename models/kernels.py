"""A hidden layer's Linear and ReLU as one oneDNN kernel under bf16 autocast on a CPU with native bf16.

Eager bf16 autocast writes a hidden layer's activations three times: the bias broadcast into the output, the product
added onto it, then the ReLU of the result. On the benchmark tier's 4096 x 300 activations these passes are bound by
memory bandwidth, not arithmetic. oneDNN adds the bias and applies the ReLU as it writes the product, so
:class:`LinearReLU` writes them once. Its backward is the one autograd runs for ``relu(linear(x))`` (the ReLU's mask,
then the same matrix products), and its forward the same product rounded the same way, so the numbers match the
eager layer's (``tests/test_kernels.py``). One difference: where a step applies one network several times under one
autocast (FOCAL's encoder, on the whole context and on its halves), eager autocast casts each weight once and sums
the uses' weight gradients in bf16, while each fused use casts its own copy, so their gradients are summed in fp32.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch


@functools.cache
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


_fusion_enabled = True


@contextlib.contextmanager
def eager_layers():
    """Compute hidden layers the eager way inside this block: the baseline ``experiments.throughput`` measures the
    fused layers against."""
    global _fusion_enabled
    previous, _fusion_enabled = _fusion_enabled, False
    try:
        yield
    finally:
        _fusion_enabled = previous


def fused_linear_relu_applies(x: torch.Tensor) -> bool:
    """Whether :class:`LinearReLU` computes this input's hidden layers: a CPU tensor under bf16 autocast, on a CPU
    with native bf16 (oneDNN refuses bf16 elsewhere) and a torch built with oneDNN, outside :func:`eager_layers`."""
    return (_fusion_enabled and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and torch.backends.mkldnn.is_available() and cpu_has_native_bf16())


class LinearReLU(torch.autograd.Function):
    """``relu(x @ weight.T + bias)`` in bf16 for ``x`` ``(..., in)``; gradients for whichever inputs need them."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x, weight, bias = (t.to(torch.bfloat16) for t in (x, weight, bias))  # as autocast casts them
        rows = x.reshape(-1, x.shape[-1])
        out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "relu", [], "")  # (rows, out)
        ctx.save_for_backward(rows, weight, out)
        ctx.input_shape = x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, weight, out = ctx.saved_tensors
        grad_pre = torch.ops.aten.threshold_backward(grad.reshape(out.shape), out, 0)  # through the ReLU
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_pre @ weight).view(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_weight = grad_pre.t() @ rows
        if ctx.needs_input_grad[2]:
            grad_bias = grad_pre.sum(0)
        return grad_x, grad_weight, grad_bias  # autograd casts each to its input's dtype, as autocast's casts do
