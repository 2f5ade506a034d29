"""Tanh-Gaussian policy over ``(obs, z)``."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.mlp import FINAL_LAYER_INIT, build_mlp

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


@dataclass
class PolicyOutput:
    action: torch.Tensor       # (batch, action_dim), in [-1, 1]
    mean: torch.Tensor         # (batch, action_dim), pre-tanh
    log_std: torch.Tensor      # (batch, action_dim)
    log_prob: torch.Tensor     # (batch, 1); zeros when deterministic
    pre_tanh: torch.Tensor     # (batch, action_dim)


class TanhGaussianPolicy(nn.Module):
    def __init__(self, obs_dim: int, latent_dim: int, action_dim: int, hidden_dim: int = 300,
                 num_hidden_layers: int = 3):
        super().__init__()
        # all hidden layers: the MLP's last Linear gets a ReLU too (no parameters: the state dict is unchanged)
        self.trunk = build_mlp(obs_dim + latent_dim, hidden_dim, hidden_dim, num_hidden_layers - 1,
                               small_final_init=False)
        self.trunk[-1].init_role = "hidden"
        self.trunk.append(nn.ReLU())
        self.mean_head = nn.Linear(hidden_dim, action_dim)
        self.log_std_head = nn.Linear(hidden_dim, action_dim)
        for head in (self.mean_head, self.log_std_head):
            nn.init.uniform_(head.weight, -FINAL_LAYER_INIT, FINAL_LAYER_INIT)
            nn.init.uniform_(head.bias, -FINAL_LAYER_INIT, FINAL_LAYER_INIT)
            head.init_role = "policy_head"

    def forward(self, obs: torch.Tensor, z: torch.Tensor, deterministic: bool = False) -> PolicyOutput:
        hidden = self.trunk(torch.cat([obs, z], dim=-1))
        mean = self.mean_head(hidden).float()
        log_std = self.log_std_head(hidden).float().clamp(LOG_STD_MIN, LOG_STD_MAX)
        if deterministic:
            pre_tanh = mean
            log_prob = torch.zeros(mean.shape[0], 1, device=mean.device)
        else:
            std = log_std.exp()
            pre_tanh = mean + std * torch.randn_like(mean)  # reparameterised sample
            gaussian_log_prob = (-0.5 * ((pre_tanh - mean) / std) ** 2 - log_std
                                 - 0.5 * math.log(2 * math.pi)).sum(-1, keepdim=True)
            # log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), the numerically stable form.
            tanh_log_det = (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1, keepdim=True)
            log_prob = gaussian_log_prob - tanh_log_det
        return PolicyOutput(torch.tanh(pre_tanh), mean, log_std, log_prob, pre_tanh)


def build_policy(obs_dim: int, latent_dim: int, action_dim: int, hidden_dim: int = 300,
                 num_hidden_layers: int = 3) -> TanhGaussianPolicy:
    return TanhGaussianPolicy(obs_dim, latent_dim, action_dim, hidden_dim, num_hidden_layers)
