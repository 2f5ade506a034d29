"""bf16 on a CPU (``models/kernels.py``): the fused hidden layer, taken exactly where it applies, with the eager
layer's numbers and the fp32 path untouched; and the emulated products of a CPU without native bf16, rounded where
torch's bf16 kernels round."""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import algos.core.meta_sac as meta_sac_module
import models.kernels as kernels
import models.mlp as mlp_module
from models.kernels import LinearReLU, bf16_autocast, cpu_has_native_bf16, eager_layers
from models.mlp import MLP, build_mlp
from models.policy import build_policy

NATIVE_BF16 = cpu_has_native_bf16() and torch.backends.mkldnn.is_available()


def eager(net: MLP, x: torch.Tensor) -> torch.Tensor:
    with eager_layers():
        return net(x)


def output_and_grads(forward, net: MLP, x: torch.Tensor, bf16: bool):
    net.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = forward(net, x).float()
    (out ** 2).sum().backward()
    return out.detach(), x.grad, [p.grad for p in net.parameters()]


@pytest.fixture
def fused_calls(monkeypatch):
    calls = []
    apply = LinearReLU.apply
    monkeypatch.setattr(LinearReLU, "apply", lambda *args: calls.append(1) or apply(*args))
    return calls


def test_the_fp32_path_is_the_eager_one_bit_for_bit(fused_calls):
    torch.manual_seed(0)
    net, x = build_mlp(7, 3, 64, 3), torch.randn(16, 10, 7)
    fused = output_and_grads(MLP.forward, net, x, bf16=False)
    plain = output_and_grads(eager, net, x, bf16=False)
    assert not fused_calls
    assert torch.equal(fused[0], plain[0]) and torch.equal(fused[1], plain[1])
    assert all(torch.equal(a, b) for a, b in zip(fused[2], plain[2]))


@pytest.fixture
def emulated(monkeypatch):
    """As on a CPU without native bf16, whatever this one has."""
    monkeypatch.setattr(kernels, "cpu_has_native_bf16", lambda: False)


@pytest.mark.parametrize("cpu", ["native", "emulated"])
@pytest.mark.parametrize("shape", [(256, 9), (4, 64, 9)])
def test_bf16_layers_fuse_and_match_the_eager_layers(request, fused_calls, shape, cpu):
    if cpu == "native" and not NATIVE_BF16:
        pytest.skip("the oneDNN kernel runs only on a CPU with native bf16")
    if cpu == "emulated":
        request.getfixturevalue("emulated")  # the fused layer in fp32 kernels, against torch's own bf16 kernels
    torch.manual_seed(0)
    net, x = build_mlp(shape[-1], 2, 128, 3), torch.randn(*shape)
    fused = output_and_grads(MLP.forward, net, x, bf16=True)
    assert len(fused_calls) == 3  # every hidden layer, not the output layer
    plain = output_and_grads(eager, net, x, bf16=True)  # torch.autocast alone: torch's own bf16 kernels
    # one product, rounded once to bf16 either way; tolerances of bf16's rounding, should a CPU's kernels differ
    for a, b in zip([fused[0], fused[1], *fused[2]], [plain[0], plain[1], *plain[2]]):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=1e-4)
        assert a.dtype == b.dtype and a.shape == b.shape
        if cpu == "emulated":  # the fp32 kernels round where torch's bf16 ones do
            assert mostly_equal(a, b)


@pytest.mark.skipif(not NATIVE_BF16, reason="the fused layer runs only on a CPU with native bf16")
def test_a_strided_input_and_frozen_weights_take_the_right_paths(fused_calls):
    torch.manual_seed(0)
    net, x = build_mlp(9, 1, 64, 2), torch.randn(8, 20, 9)
    strided = x[:, ::2]
    out = output_and_grads(MLP.forward, net, strided, bf16=True)
    assert len(fused_calls) == 1  # the first layer's input is strided: eager; the second's is not
    torch.testing.assert_close(out[0], output_and_grads(eager, net, strided, bf16=True)[0], rtol=2e-2, atol=1e-4)
    net.requires_grad_(False)  # as Q in the policy step: gradients reach the input only
    _, x_grad, grads = output_and_grads(MLP.forward, net, x, bf16=True)
    assert x_grad is not None and all(g is None for g in grads)


def test_the_policy_trunk_keeps_its_state_dict_layout():
    policy = build_policy(obs_dim=2, latent_dim=5, action_dim=2, hidden_dim=32, num_hidden_layers=3)
    assert [k for k in policy.state_dict() if k.startswith("trunk")] == [
        "trunk.0.weight", "trunk.0.bias", "trunk.2.weight", "trunk.2.bias", "trunk.4.weight", "trunk.4.bias"]
    assert isinstance(policy.trunk[-1], nn.ReLU) and policy.trunk[-2].init_role == "hidden"


def test_mlp_is_the_one_sequential_the_builders_return():
    assert type(build_mlp(3, 1, 8, 1)) is MLP and mlp_module.MLP is MLP


def test_a_torch_without_onednn_keeps_the_layers_eager_on_a_native_bf16_cpu(fused_calls, monkeypatch):
    monkeypatch.setattr(kernels, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    net = build_mlp(5, 1, 16, 2)
    with eager_layers():
        reference = net(torch.randn(4, 5))  # no autocast: nothing to fuse either way
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not kernels.fused_linear_relu_applies(torch.randn(4, 5))
    assert not fused_calls and reference.dtype == torch.float32


def bf16_rounded(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def mostly_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """The same dtype and shape, and at least 99 % of the elements equal: what two bf16 kernels that sum in fp32 in
    different orders give (a rounding left out, or added, changes far more of them)."""
    return a.dtype == b.dtype and a.shape == b.shape and (a == b).float().mean().item() >= 0.99


def products_and_grads(context, fn, *inputs):
    """``fn(*inputs)`` under ``context`` and the gradients of its squared sum with respect to every input."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    with context:
        out = fn(*inputs)
    out.float().square().sum().backward()
    return [out.detach(), *(t.grad for t in inputs)]


def torch_bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


@pytest.mark.parametrize("name, fn, shapes", [
    ("linear", F.linear, [(64, 48), (32, 48), (32,)]),
    ("linear of a 3-d input", F.linear, [(4, 16, 48), (32, 48), (32,)]),
    # a permuted input: torch's linear rounds the product, then adds the bias in bf16
    ("linear of a permuted input", lambda x, w, b: F.linear(x.transpose(0, 1), w, b), [(16, 4, 48), (32, 48), (32,)]),
    ("matmul", lambda x, w: x @ w.t(), [(64, 48), (32, 48)]),
    ("attention scores", lambda q, k: torch.einsum("bhqd,bhkd->bhqk", q, k), [(2, 3, 10, 8), (2, 3, 12, 8)]),
    ("bmm", torch.bmm, [(3, 10, 8), (3, 8, 12)]),
])
def test_emulated_products_and_their_gradients_are_torchs_bf16_ones(emulated, name, fn, shapes):
    torch.manual_seed(0)
    inputs = [torch.randn(*shape) for shape in shapes]
    emulated_out = products_and_grads(bf16_autocast("cpu"), fn, *inputs)
    torch_out = products_and_grads(torch_bf16_autocast(), fn, *inputs)
    fp32_out = products_and_grads(contextlib.nullcontext(), fn, *inputs)
    assert emulated_out[0].dtype == torch.bfloat16
    for emulated_value, torch_value, fp32_value in zip(emulated_out, torch_out, fp32_out):
        assert mostly_equal(emulated_value, torch_value), name
        assert not mostly_equal(fp32_value.to(emulated_value.dtype), torch_value)  # the comparison can fail


def test_emulated_products_round_the_operands_sum_in_fp32_and_round_the_output_once(emulated):
    torch.manual_seed(0)
    x, w, b = torch.randn(64, 48), torch.randn(32, 48), torch.randn(32)
    with bf16_autocast("cpu"):
        linear = F.linear(x, w, b)
        with torch.autocast("cpu", enabled=False):  # an fp32 block inside (VariBAD's GRU) stays fp32
            fp32 = F.linear(x, w, b)
    assert torch.equal(linear, F.linear(bf16_rounded(x), bf16_rounded(w), bf16_rounded(b)).to(torch.bfloat16))
    assert fp32.dtype == torch.float32 and torch.equal(fp32, F.linear(x, w, b))


def test_what_autocast_leaves_alone_the_emulation_leaves_alone(emulated):
    torch.manual_seed(0)
    x, w = torch.randn(8, 6), torch.randn(6, 5)
    out = torch.zeros(8, 5)
    with bf16_autocast("cpu"):
        double = x.double() @ w.double()
        torch.mm(x, w, out=out)
        outer = torch.einsum("i,j->ij", x[0], w[0])  # no index summed over both operands: no bf16 product
    assert double.dtype == torch.float64 and torch.equal(double, x.double() @ w.double())
    assert out.abs().sum() > 0  # written, as torch writes it
    assert outer.dtype == torch.float32


def test_an_emulated_parameter_is_rounded_once_per_block_so_its_gradients_meet_in_bf16(emulated):
    """As autocast caches its cast of a parameter while gradients are recorded: the uses' gradients are summed in
    bf16, then made fp32; a use under ``no_grad`` first leaves the parameter's gradient to the later use."""
    torch.manual_seed(0)
    x = torch.randn(8, 16)

    def weight_grad(context) -> torch.Tensor:
        torch.manual_seed(1)
        layer = nn.Linear(16, 16, bias=False)
        with context:
            with torch.no_grad():
                layer(x)
            twice = layer(x) + layer(2 * x)
        twice.float().square().sum().backward()
        return layer.weight.grad

    emulated_grad = weight_grad(bf16_autocast("cpu"))
    assert mostly_equal(emulated_grad, weight_grad(torch_bf16_autocast()))
    torch.manual_seed(1)  # the recipe: one rounded copy for both uses
    weight = nn.Linear(16, 16, bias=False).weight.detach().clone().requires_grad_(True)
    rounded = weight.to(torch.bfloat16)
    expected = (F.linear(bf16_rounded(x), rounded.float()).to(torch.bfloat16)
                + F.linear(bf16_rounded(2 * x), rounded.float()).to(torch.bfloat16))
    expected.float().square().sum().backward()
    assert torch.equal(emulated_grad, weight.grad)


def test_a_bf16_gradient_step_without_native_bf16_computes_what_torchs_own_kernels_compute(emulated, tmp_path,
                                                                                           monkeypatch):
    """A setformer step's losses (its forward pass) from one seed: emulated, with torch's own bf16 kernels (plain
    autocast, eager layers) and in fp32. The emulated ones sit far closer to torch's bf16 than fp32 does."""
    from tests.conftest import make_trainer

    def first_step_losses(name: str, bf16: bool) -> dict[str, float]:
        algorithm = make_trainer("point-robot", tmp_path / name, "setformer", seed=3,
                                 overrides=[f"bf16={str(bf16).lower()}", "device=cpu"]).algorithm
        algorithm.collect_initial_data()
        return {key: float(value) for key, value in algorithm.train_step().items()}

    rounded, round_operand = [], kernels.EmulatedBf16Products.rounded
    monkeypatch.setattr(kernels.EmulatedBf16Products, "rounded", lambda self, x: rounded.append(1) or round_operand(self, x))
    emulated_losses = first_step_losses("emulated", bf16=True)
    assert rounded  # the step's products went through the emulation
    fp32_losses = first_step_losses("fp32", bf16=False)
    monkeypatch.setattr(meta_sac_module, "bf16_autocast", lambda device_type, enabled=True: torch.autocast(
        device_type, dtype=torch.bfloat16, enabled=enabled))
    with eager_layers():
        own_losses = first_step_losses("torch", bf16=True)
    assert emulated_losses.keys() == own_losses.keys() and "qf_loss" in own_losses

    def largest_gap(losses: dict[str, float]) -> float:
        return max(abs(losses[key] - value) / max(abs(value), 1e-6) for key, value in own_losses.items())

    assert largest_gap(fp32_losses) > 0 and largest_gap(emulated_losses) <= 0.1 * largest_gap(fp32_losses)
