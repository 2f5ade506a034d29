"""bf16 on a CPU (``models/kernels.py``): the fused hidden layer, taken exactly where it applies, with the eager
layer's numbers and the fp32 path untouched; and the emulated products of a CPU without native bf16, rounded where
torch's bf16 kernels round."""
from __future__ import annotations

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


def test_emulated_products_round_the_operands_and_the_output_and_sum_in_fp32(emulated):
    torch.manual_seed(0)
    x, w, b = torch.randn(64, 48), torch.randn(32, 48), torch.randn(32)
    q, k = torch.randn(2, 3, 10, 8), torch.randn(2, 3, 12, 8)
    with bf16_autocast("cpu"):
        linear, product = F.linear(x, w, b), x @ w.t()
        scores = torch.einsum("bhqd,bhkd->bhqk", q, k)
        with torch.autocast("cpu", enabled=False):  # an fp32 block inside (VariBAD's GRU) stays fp32
            fp32 = F.linear(x, w, b)
    assert linear.dtype == product.dtype == scores.dtype == torch.bfloat16
    assert torch.equal(linear, F.linear(bf16_rounded(x), bf16_rounded(w), bf16_rounded(b)).to(torch.bfloat16))
    assert torch.equal(product, (bf16_rounded(x) @ bf16_rounded(w).t()).to(torch.bfloat16))
    assert torch.equal(scores, torch.einsum("bhqd,bhkd->bhqk", bf16_rounded(q), bf16_rounded(k)).to(torch.bfloat16))
    assert fp32.dtype == torch.float32 and torch.equal(fp32, F.linear(x, w, b))
    # torch's own bf16 kernel rounds the same products: only the order of the fp32 sums may differ
    with torch.autocast("cpu", dtype=torch.bfloat16):
        own = F.linear(x, w, b)
    assert own.dtype == torch.bfloat16 and (own == linear).float().mean() > 0.99
    torch.testing.assert_close(own.float(), linear.float(), rtol=1e-2, atol=1e-2)


def test_an_emulated_parameter_is_rounded_once_per_block_so_its_gradients_meet_in_bf16(emulated):
    """As autocast caches its cast of a parameter: the uses' gradients are summed in bf16, then made fp32."""
    torch.manual_seed(0)
    layer, x = nn.Linear(16, 16, bias=False), torch.randn(8, 16)
    with bf16_autocast("cpu"):
        twice = layer(x) + layer(2 * x)
    twice.float().square().sum().backward()
    weight = layer.weight.detach().clone().requires_grad_(True)
    rounded = weight.to(torch.bfloat16)  # one copy, both uses
    expected = (F.linear(bf16_rounded(x), rounded.float()).to(torch.bfloat16)
                + F.linear(bf16_rounded(2 * x), rounded.float()).to(torch.bfloat16))
    expected.float().square().sum().backward()
    assert torch.equal(layer.weight.grad, weight.grad)


def test_a_bf16_gradient_step_without_native_bf16_computes_what_torchs_own_kernels_compute(emulated, tmp_path,
                                                                                           monkeypatch):
    """The first step's losses (its forward pass) of a bf16 setformer step: emulated, and with torch's own bf16
    kernels (plain autocast, eager layers), from one seed."""
    from tests.conftest import make_trainer

    def first_step_losses(name: str) -> dict[str, float]:
        algorithm = make_trainer("point-robot", tmp_path / name, "setformer", seed=3,
                                 overrides=["bf16=true", "device=cpu"]).algorithm
        algorithm.collect_initial_data()
        return {key: float(value) for key, value in algorithm.train_step().items()}

    rounded, round_operand = [], kernels.EmulatedBf16Products.rounded_operand
    monkeypatch.setattr(kernels.EmulatedBf16Products, "rounded_operand",
                        lambda self, x: rounded.append(1) or round_operand(self, x))
    emulated_losses = first_step_losses("emulated")
    assert rounded  # the step's products went through the emulation
    monkeypatch.setattr(meta_sac_module, "bf16_autocast", lambda device_type, enabled=True: torch.autocast(
        device_type, dtype=torch.bfloat16, enabled=enabled))
    with eager_layers():
        own_losses = first_step_losses("torch")
    assert emulated_losses.keys() == own_losses.keys() and "qf_loss" in own_losses
    for key, value in own_losses.items():
        assert emulated_losses[key] == pytest.approx(value, rel=3e-2, abs=1e-3), key
