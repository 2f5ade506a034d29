"""``sac-no-context``: plain SAC conditioned on a zero latent. The floor every context method must beat."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from algos.core.agent import MetaAgent
from algos.core.meta_sac import MetaSACAlgorithm, MetaSACConfig, sac_architecture
from models.policy import build_policy


@dataclass
class SACNoContextConfig(MetaSACConfig):
    pass


class SACNoContextAgent(MetaAgent):
    def __init__(self, obs_dim: int, action_dim: int, config: SACNoContextConfig):
        super().__init__(obs_dim, action_dim, config.latent_dim)
        self.policy = build_policy(obs_dim, config.latent_dim, action_dim, config.hidden_dim, config.num_hidden_layers)
        self.clear_context()

    def reset_to_prior(self, num_tasks: int) -> torch.Tensor:
        return torch.zeros(num_tasks, self.latent_dim, device=self.device)

    def infer_posterior(self, context: torch.Tensor) -> torch.Tensor:
        self.z = self.reset_to_prior(context.shape[0])  # the context is ignored by design
        return self.z


class SACNoContext(MetaSACAlgorithm):
    name = "sac-no-context"
    display_name = "SAC (no context)"
    role = "floor"
    config_class = SACNoContextConfig

    @classmethod
    def architecture(cls, agent: dict) -> str:
        return "no encoder, z = 0; " + sac_architecture(agent)

    def make_agent(self) -> SACNoContextAgent:
        return SACNoContextAgent(self.obs_dim, self.action_dim, self.config)
