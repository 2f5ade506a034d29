"""FOCAL (Li et al., 2021), online SAC variant, on the shared harness.

The original FOCAL is an offline method (fixed datasets, behaviour-regularised actor-critic). This is the
reference benchmark's online adaptation: a deterministic per-transition MLP encoder averaged over the context,
shaped by FOCAL's distance-metric loss on two halves of each task's context (same task: squared distance;
different tasks: ``beta / (dist^n + eps)``), plus the critic's Q loss, and a SAC actor-critic on ``z``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from algos.core.agent import MetaAgent
from algos.core.config import ConfigError, grid_settings
from algos.core.meta_sac import MetaSACAlgorithm, MetaSACConfig, sac_architecture
from models.mlp import build_mlp
from models.policy import build_policy


@dataclass
class FocalConfig(MetaSACConfig):
    encoder_hidden_dim: int = 200
    encoder_num_hidden_layers: int = 3
    metric_loss_weight: float = 1.0
    metric_beta: float = 1.0
    metric_power: float = 2.0
    metric_eps: float = 1e-3

    def validate(self) -> None:
        super().validate()
        if self.metric_loss_weight < 0 or self.metric_eps <= 0:
            raise ConfigError("agent.metric_loss_weight must be >= 0 and agent.metric_eps > 0")
        if self.metric_beta < 0 or self.metric_power <= 0:
            raise ConfigError(f"agent.metric_beta must be >= 0 and agent.metric_power > 0 (an inverse power of the "
                              f"distance); got beta={self.metric_beta}, power={self.metric_power}")


def distance_metric_loss(latents: torch.Tensor, task_ids: torch.Tensor, beta: float, power: float,
                         eps: float) -> torch.Tensor:
    """FOCAL's loss over all pairs of latents ``(m, d)`` labelled by ``task_ids`` ``(m,)``: mean squared distance
    over same-task pairs plus mean ``beta / (dist^power + eps)`` over different-task pairs."""
    distances = torch.cdist(latents.float(), latents.float())               # (m, m)
    same = task_ids[:, None] == task_ids[None, :]
    upper = torch.triu(torch.ones_like(same), diagonal=1)
    positive, negative = same & upper, ~same & upper
    loss = latents.new_zeros((), dtype=torch.float32)
    if positive.any():
        loss = loss + (distances[positive] ** 2).mean()
    if negative.any():
        loss = loss + (beta / (distances[negative] ** power + eps)).mean()
    return loss


class FocalAgent(MetaAgent):
    def __init__(self, obs_dim: int, action_dim: int, config: FocalConfig, use_next_obs: bool = False):
        super().__init__(obs_dim, action_dim, config.latent_dim, use_next_obs)
        self.context_encoder = build_mlp(self.context_dim, config.latent_dim, config.encoder_hidden_dim,
                                         config.encoder_num_hidden_layers)
        self.policy = build_policy(obs_dim, config.latent_dim, action_dim, config.hidden_dim, config.num_hidden_layers)
        self.clear_context()

    def reset_to_prior(self, num_tasks: int) -> torch.Tensor:
        return torch.zeros(num_tasks, self.latent_dim, device=self.device)

    def encode(self, context: torch.Tensor) -> torch.Tensor:
        """Mean of per-transition embeddings: ``(tasks, n, context_dim) -> (tasks, latent)``."""
        return self.context_encoder(context).float().mean(dim=1)

    def infer_posterior(self, context: torch.Tensor) -> torch.Tensor:
        self.z = self.reset_to_prior(context.shape[0]) if context.shape[1] == 0 else self.encode(context)
        return self.z


class FOCAL(MetaSACAlgorithm):
    name = "focal"
    display_name = "FOCAL (online SAC variant)"  # the reference's online adaptation: docs/PROTOCOL.md#baselines
    role = "baseline"
    reference_row = "FOCAL"
    report_rank = 2
    # the tuning grid's point with the best validation figure, per environment
    # (benchmarks/benchmark/selection/SELECTION.md); an environment not listed runs the references' settings
    env_defaults = {env: grid_settings("fast-actor-critic")
                    for env in ("point-robot", "sparse-point-robot", "cheetah-vel")}
    config_class = FocalConfig

    @classmethod
    def architecture(cls, agent: dict) -> str:
        return (f"deterministic MLP encoder ({agent['encoder_num_hidden_layers']} x {agent['encoder_hidden_dim']}) "
                f"averaged over the context, z ({agent['latent_dim']}) shaped by the distance-metric loss; "
                + sac_architecture(agent))

    def make_agent(self) -> FocalAgent:
        return FocalAgent(self.obs_dim, self.action_dim, self.config, self.protocol.use_next_obs_in_context)

    def encoder_losses(self, tasks, context, task_z, batch_z, batch):
        c = self.config
        if c.metric_loss_weight == 0 or context.shape[1] < 2:
            return {}
        half = context.shape[1] // 2
        halves = torch.cat([self.agent.encode(context[:, :half]), self.agent.encode(context[:, half:])])  # (2t, d)
        task_ids = torch.as_tensor(np.concatenate([tasks, tasks]), device=context.device)
        loss = distance_metric_loss(halves, task_ids, c.metric_beta, c.metric_power, c.metric_eps)
        return {"metric_loss": c.metric_loss_weight * loss}
