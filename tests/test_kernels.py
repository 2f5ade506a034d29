"""The fused hidden layer (``models/kernels.py``): taken exactly where it applies, the eager layer's numbers under
bf16 autocast, and the fp32 path untouched."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import models.mlp as mlp_module
from models.kernels import LinearReLU, cpu_has_native_bf16, eager_layers
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


@pytest.mark.skipif(not NATIVE_BF16, reason="the fused layer runs only on a CPU with native bf16")
@pytest.mark.parametrize("shape", [(256, 9), (4, 64, 9)])
def test_bf16_layers_fuse_and_match_the_eager_layers(fused_calls, shape):
    torch.manual_seed(0)
    net, x = build_mlp(shape[-1], 2, 128, 3), torch.randn(*shape)
    fused = output_and_grads(MLP.forward, net, x, bf16=True)
    assert len(fused_calls) == 3  # every hidden layer, not the output layer
    plain = output_and_grads(eager, net, x, bf16=True)
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


def test_without_native_bf16_the_layers_stay_eager(fused_calls, monkeypatch):
    import models.kernels as kernels
    monkeypatch.setattr(kernels, "cpu_has_native_bf16", lambda: False)  # oneDNN would refuse bf16 on such a CPU
    net = build_mlp(5, 1, 16, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(torch.randn(4, 5))
    assert not fused_calls and out.dtype == torch.bfloat16
