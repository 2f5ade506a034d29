"""MLP building blocks shared by every algorithm."""
from __future__ import annotations

import torch
from torch import nn

from models.kernels import LinearReLU, fused_linear_relu_applies

# Small final-layer weights keep initial Q/V/policy outputs near zero (as in rlkit/PEARL).
FINAL_LAYER_INIT = 3e-3
# ``torch``: PyTorch's default for the hidden layers (U(+-1/sqrt(in_features)) weights and biases);
# ``rlkit``: the initialisation of PEARL's reference code (rlkit), see :func:`rlkit_init_`.
NETWORK_INITS = ("torch", "rlkit")
RLKIT_HIDDEN_BIAS = 0.1
RLKIT_POLICY_HEAD_INIT = 1e-3


class MLP(nn.Sequential):
    """Layers applied in turn, like ``nn.Sequential`` (the same parameters and state dict); under bf16 autocast on a
    CPU with native bf16, each ``Linear`` followed by a ``ReLU`` runs as one kernel (:mod:`models.kernels`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not fused_linear_relu_applies(x):
            return super().forward(x)
        layers, i = list(self), 0
        while i < len(layers):
            # a strided input goes the eager way: torch's linear adds the bias to it after rounding the product
            if (isinstance(layers[i], nn.Linear) and layers[i].bias is not None and i + 1 < len(layers)
                    and type(layers[i + 1]) is nn.ReLU and x.is_contiguous()):
                x = LinearReLU.apply(x, layers[i].weight, layers[i].bias)
                i += 2
            else:
                x = layers[i](x)
                i += 1
        return x


def build_mlp(input_dim: int, output_dim: int, hidden_dim: int = 300, num_hidden_layers: int = 3,
              activation: type[nn.Module] = nn.ReLU, small_final_init: bool = True) -> MLP:
    """``num_hidden_layers`` hidden layers of width ``hidden_dim`` then a linear output layer."""
    layers: list[nn.Module] = []
    width = input_dim
    for _ in range(num_hidden_layers):
        hidden = nn.Linear(width, hidden_dim)
        hidden.init_role = "hidden"  # read by rlkit_init_
        layers += [hidden, activation()]
        width = hidden_dim
    final = nn.Linear(width, output_dim)
    if small_final_init:
        nn.init.uniform_(final.weight, -FINAL_LAYER_INIT, FINAL_LAYER_INIT)
        nn.init.uniform_(final.bias, -FINAL_LAYER_INIT, FINAL_LAYER_INIT)
        final.init_role = "output"
    layers.append(final)
    return MLP(*layers)


@torch.no_grad()
def rlkit_init_(module: nn.Module) -> nn.Module:
    """Re-initialise, in place, the layers of ``module`` built by :func:`build_mlp` and :func:`build_policy` as
    rlkit (PEARL's reference code) initialises its MLPs: hidden weights ``U(+-1/sqrt(out_features))`` (rlkit's
    ``fanin_init`` reads ``weight.size(0)``, which for a torch ``Linear`` is the output width) and hidden biases
    0.1; output layers ``U(+-3e-3)``; the policy's mean and log-std heads ``U(+-1e-3)``. Other layers (attention
    blocks, GRUs, token embeddings) keep their initialisation. Returns ``module``."""
    for layer in module.modules():
        role = getattr(layer, "init_role", None)
        if role == "hidden":
            bound = 1.0 / layer.weight.shape[0] ** 0.5
            layer.weight.uniform_(-bound, bound)
            layer.bias.fill_(RLKIT_HIDDEN_BIAS)
        elif role in ("output", "policy_head"):
            bound = FINAL_LAYER_INIT if role == "output" else RLKIT_POLICY_HEAD_INIT
            layer.weight.uniform_(-bound, bound)
            layer.bias.uniform_(-bound, bound)
    return module


class ConcatMLP(nn.Module):
    """An MLP over the concatenation of its inputs: ``Q(obs, action, z)``, ``V(obs, z)``."""

    def __init__(self, input_dim: int, output_dim: int, hidden_dim: int, num_hidden_layers: int):
        super().__init__()
        self.net = build_mlp(input_dim, output_dim, hidden_dim, num_hidden_layers)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat(inputs, dim=-1))


def build_qf(obs_dim: int, action_dim: int, latent_dim: int, hidden_dim: int = 300,
             num_hidden_layers: int = 3) -> ConcatMLP:
    """``Q(obs, action, z) -> (batch, 1)``."""
    return ConcatMLP(obs_dim + action_dim + latent_dim, 1, hidden_dim, num_hidden_layers)


def build_vf(obs_dim: int, latent_dim: int, hidden_dim: int = 300, num_hidden_layers: int = 3) -> ConcatMLP:
    """``V(obs, z) -> (batch, 1)``."""
    return ConcatMLP(obs_dim + latent_dim, 1, hidden_dim, num_hidden_layers)


def count_parameters(*modules: nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())
