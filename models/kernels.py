"""bf16 autocast on a CPU: a hidden layer's Linear and ReLU as one kernel, and bf16's matrix products at fp32's speed
on a CPU without native bf16.

**The fused hidden layer.** Eager bf16 autocast writes a hidden layer's activations three times: the bias broadcast
into the output, the product added onto it, then the ReLU of the result. On the benchmark tier's 4096 x 300
activations these passes are bound by memory bandwidth, not arithmetic. oneDNN adds the bias and applies the ReLU as
it writes the product, so :class:`LinearReLU` writes them once. Its backward is the one autograd runs for
``relu(linear(x))`` (the ReLU's mask, then the same matrix products), and its forward the same product rounded the
same way, so the numbers match the eager layer's (``tests/test_kernels.py``). One difference: where a step applies
one network several times under one autocast (FOCAL's encoder, on the whole context and on its halves), eager
autocast casts each weight once and sums the uses' weight gradients in bf16, while each fused use casts its own copy,
so their gradients are summed in fp32.

**Emulated bf16 products.** On a CPU without AVX512-BF16 or AMX, torch's own bf16 matrix product is slow: the
critic's 4096 x 300 x 300 product at 1.4 GFLOP/s against fp32's 31.1 (AMD EPYC with AVX2 only, one thread,
``benchmarks/dev/bf16-emulation``). A bf16 kernel multiplies bf16 operands (each product exact in fp32), sums in fp32
and rounds the output to bf16 once. :func:`bf16_autocast` computes the same with fp32 kernels on such a CPU
(:class:`EmulatedBf16Products`): each product's operands rounded to bf16, the product in fp32, its output rounded to
bf16; a parameter is rounded once per autocast block, as autocast caches it, and the hidden layers keep the fused
layer's rounding (:class:`LinearReLU` in fp32 kernels). Only the order of the fp32 sums differs, as it does between
the bf16 kernels of different CPUs. The product runs at 26.6 GFLOP/s there, and setformer's and VariBAD's
benchmark-tier steps at 0.88x and 0.93x their fp32 rate: a bf16 run started on a CPU with native bf16 can go on, in
the same arithmetic, on one without.
"""
from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves, tree_map


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
    """Whether :class:`LinearReLU` computes this input's hidden layers: a CPU tensor under bf16 autocast, outside
    :func:`eager_layers`, with oneDNN's kernel on a CPU with native bf16 (a torch built without oneDNN takes the
    eager layers there) and the emulated products on a CPU without, so that both round alike."""
    return (_fusion_enabled and x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and (torch.backends.mkldnn.is_available() or not cpu_has_native_bf16()))


class LinearReLU(torch.autograd.Function):
    """``relu(x @ weight.T + bias)`` in bf16 for ``x`` ``(..., in)``; gradients for whichever inputs need them."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x, weight, bias = (t.to(torch.bfloat16) for t in (x, weight, bias))  # as autocast casts them
        rows = x.reshape(-1, x.shape[-1])
        if cpu_has_native_bf16():
            out = torch.ops.mkldnn._linear_pointwise(rows, weight, bias, "relu", [], "")  # (rows, out)
        else:  # the same rounding in fp32 kernels: bf16 operands, fp32 sums, the output rounded once
            with torch.autocast("cpu", enabled=False):
                out = torch.addmm(bias.float(), rows.float(), weight.float().t()).relu_().to(torch.bfloat16)
        ctx.save_for_backward(rows, weight, out)
        ctx.input_shape = x.shape
        return out.view(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        rows, weight, out = ctx.saved_tensors
        grad_pre = torch.ops.aten.threshold_backward(grad.reshape(out.shape), out, 0)  # through the ReLU
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = bf16_product(grad_pre, weight).view(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_weight = bf16_product(grad_pre.t(), rows)
        if ctx.needs_input_grad[2]:
            grad_bias = grad_pre.sum(0)
        return grad_x, grad_weight, grad_bias  # autograd casts each to its input's dtype, as autocast's casts do


def bf16_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` of bf16 matrices; on a CPU without native bf16 in an fp32 kernel, rounded as a bf16 kernel rounds."""
    if cpu_has_native_bf16():
        return a @ b
    return (a.float() @ b.float()).to(torch.bfloat16)


# the products CPU autocast computes in bf16 that networks call (``F.linear`` covers ``nn.Linear``)
AUTOCAST_PRODUCTS = frozenset({
    F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.mm,
    torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.addmm, torch.Tensor.addmm, torch.baddbmm,
    torch.Tensor.baddbmm, torch.addbmm, torch.Tensor.addbmm, torch.einsum})


def einsum_contracts(equation: str, num_operands: int) -> bool:
    """Whether an einsum of two operands sums an index over both: only then does autocast reach a bf16 product
    (``bmm``); ``i,j->ij`` or ``ij->j`` stay in the input's precision. Other einsums are left to autocast."""
    inputs, arrow, output = equation.replace(" ", "").replace(".", "").partition("->")
    operands = inputs.split(",")
    if num_operands != 2 or len(operands) != 2:
        return False
    if not arrow:  # implicit output: the indices that appear once
        output = "".join(i for i in set(inputs) if inputs.count(i) == 1 and i != ",")
    return any(i in operands[1] and i not in output for i in operands[0])


class EmulatedBf16Products(TorchFunctionMode):
    """Inside CPU bf16 autocast, each of :data:`AUTOCAST_PRODUCTS` on CPU fp32/bf16 tensors computed by an fp32
    kernel on operands rounded to bf16, its output rounded to bf16: what autocast's bf16 kernel computes, up to the
    order of its fp32 sums. Everything else (other functions, float64, ``out=``) runs as autocast runs it. Autograd
    records the roundings and the fp32 product, so the backward pass rounds where autocast's does and multiplies in
    fp32 too."""

    def __init__(self):
        super().__init__()
        self.rounded_parameters: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (parameter, bf16 copy)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.emulates(func, args, kwargs):
            return func(*args, **kwargs)
        with torch.autocast("cpu", enabled=False):
            args, kwargs = tree_map(self.rounded, (args, kwargs))  # bf16 copies of the operands
            if func is F.linear and self.linear_rounds_twice(*args, **kwargs):
                # torch's linear of a non-contiguous input of 3+ dims: the product rounded, then the bias added in bf16
                x, weight, bias = (list(args) + [kwargs.get("bias")])[:3]
                return F.linear(x.float(), weight.float()).to(torch.bfloat16) + bias
            args, kwargs = tree_map(lambda t: t.float() if isinstance(t, torch.Tensor) else t, (args, kwargs))
            return func(*args, **kwargs).to(torch.bfloat16)

    @staticmethod
    def emulates(func, args, kwargs) -> bool:
        if (func not in AUTOCAST_PRODUCTS or "out" in kwargs or not torch.is_autocast_enabled("cpu")
                or torch.get_autocast_dtype("cpu") != torch.bfloat16):
            return False
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func is torch.einsum and not (isinstance(args[0], str) and einsum_contracts(args[0], len(tensors))):
            return False
        return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.bfloat16) for t in tensors)

    @staticmethod
    def linear_rounds_twice(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
        return bias is not None and x.dim() >= 3 and not x.is_contiguous()

    def rounded(self, x):
        """``x`` as autocast casts it: a bf16 copy; a parameter's once per block while gradients are recorded
        (autocast's cache: an fp32 leaf that requires grad, not a view), so its uses' gradients meet in bf16."""
        if not isinstance(x, torch.Tensor):
            return x
        if torch.is_grad_enabled() and x.dtype == torch.float32 and x.is_leaf and x.requires_grad and not x._is_view():
            if id(x) not in self.rounded_parameters:
                self.rounded_parameters[id(x)] = (x, x.to(torch.bfloat16))
            return self.rounded_parameters[id(x)][1]
        return x.to(torch.bfloat16)


@contextlib.contextmanager
def bf16_autocast(device_type: str, enabled: bool = True):
    """``torch.autocast(device_type, torch.bfloat16, enabled)``, with its products emulated
    (:class:`EmulatedBf16Products`) on a CPU without native bf16."""
    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=enabled):
        if enabled and device_type == "cpu" and not cpu_has_native_bf16():
            with EmulatedBf16Products():
                yield
        else:
            yield
