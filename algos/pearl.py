"""PEARL (Rakelly et al., 2019) on the shared harness.

A per-transition MLP encoder emits a Gaussian factor ``N(mu_i, sigma_i^2)`` for every context transition; the
task belief is their product. ``z`` is sampled from the belief (posterior sampling) and held for an episode;
a KL term to ``N(0, I)`` weighted ``kl_lambda`` (0.1; 1.0 on sparse tasks and ant-goal, as the reference) is the
information bottleneck. The encoder learns from the critic's Q loss and the KL, stepped with the critic.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from algos.core.agent import MetaAgent
from algos.core.config import ConfigError, grid_settings
from algos.core.meta_sac import MetaSACAlgorithm, MetaSACConfig, sac_architecture
from envs_glue import env_spec
from models.mlp import build_mlp
from models.policy import build_policy

MIN_VARIANCE = 1e-7


@dataclass
class PearlConfig(MetaSACConfig):
    encoder_hidden_dim: int = 200
    encoder_num_hidden_layers: int = 3
    kl_lambda: float = 0.1           # weight of the KL to the prior; 1.0 on the sparse task (docs/PROTOCOL.md#baselines)

    def validate(self) -> None:
        super().validate()
        if self.kl_lambda < 0:
            raise ConfigError(f"agent.kl_lambda must be >= 0, got {self.kl_lambda}")
        if self.encoder_hidden_dim <= 0 or self.encoder_num_hidden_layers <= 0:
            raise ConfigError("agent.encoder_hidden_dim and agent.encoder_num_hidden_layers must be positive")


def product_of_gaussians(means: torch.Tensor, variances: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Product of ``n`` Gaussian factors per task: ``(tasks, n, d)`` each -> ``(tasks, d)`` mean and variance."""
    variances = variances.clamp(min=MIN_VARIANCE)
    precision = torch.reciprocal(variances).sum(dim=1)
    variance = torch.reciprocal(precision)
    mean = variance * (means / variances).sum(dim=1)
    return mean, variance


class PearlAgent(MetaAgent):
    def __init__(self, obs_dim: int, action_dim: int, config: PearlConfig, use_next_obs: bool = False):
        super().__init__(obs_dim, action_dim, config.latent_dim, use_next_obs)
        self.context_encoder = build_mlp(self.context_dim, 2 * config.latent_dim, config.encoder_hidden_dim,
                                         config.encoder_num_hidden_layers)
        self.policy = build_policy(obs_dim, config.latent_dim, action_dim, config.hidden_dim, config.num_hidden_layers)
        self.clear_context()

    def reset_to_prior(self, num_tasks: int) -> torch.Tensor:
        self.z_means = torch.zeros(num_tasks, self.latent_dim, device=self.device)
        self.z_vars = torch.ones(num_tasks, self.latent_dim, device=self.device)
        return self.sample_z()

    def sample_z(self) -> torch.Tensor:
        """Reparameterised sample from the current belief."""
        self.z = self.z_means + self.z_vars.sqrt() * torch.randn_like(self.z_means)
        return self.z

    def infer_posterior(self, context: torch.Tensor) -> torch.Tensor:
        if context.shape[1] == 0:
            return self.reset_to_prior(context.shape[0])
        params = self.context_encoder(context).float()                    # (tasks, n, 2 * latent)
        means, raw_variances = params.chunk(2, dim=-1)
        self.z_means, self.z_vars = product_of_gaussians(means, F.softplus(raw_variances))
        return self.sample_z()

    def end_episode(self) -> None:
        with torch.no_grad():
            self.sample_z()  # posterior sampling: a fresh z from the belief, held for the next episode

    def kl_divergence(self) -> torch.Tensor:
        """``sum_tasks KL(N(mu, var) || N(0, I))`` of the current belief."""
        return 0.5 * (self.z_vars + self.z_means ** 2 - 1.0 - torch.log(self.z_vars)).sum()


class PEARL(MetaSACAlgorithm):
    name = "pearl"
    display_name = "PEARL"
    role = "baseline"
    reference_row = "PEARL"
    report_rank = 1
    config_class = PearlConfig

    @classmethod
    def architecture(cls, agent: dict) -> str:
        return (f"MLP encoder ({agent['encoder_num_hidden_layers']} x {agent['encoder_hidden_dim']}) per transition, "
                f"Gaussian factors multiplied into the belief, z ({agent['latent_dim']}) sampled from it; "
                + sac_architecture(agent))

    # per environment: the tuning grid's point with the best validation figure
    # (benchmarks/benchmark/selection/SELECTION.md; not listed: the references' settings), and the reference's own
    # KL weight on ant-goal (PEARL's ant-goal config)
    env_defaults = {"sparse-point-robot": grid_settings("fast-actor-critic"),
                    "cheetah-vel": grid_settings("fast-actor-critic"),
                    "ant-goal": {"kl_lambda": 1.0}}

    @classmethod
    def default_config(cls, env: str) -> PearlConfig:
        config = super().default_config(env)
        if "kl_lambda" not in cls.env_defaults.get(env, {}):  # else: the KL weight the reference used on sparse tasks
            config = dataclasses.replace(config, kl_lambda=1.0 if env_spec(env).sparse_reward else 0.1)
        return config

    def make_agent(self) -> PearlAgent:
        return PearlAgent(self.obs_dim, self.action_dim, self.config, self.protocol.use_next_obs_in_context)

    def encoder_losses(self, tasks, context, task_z, batch_z, batch):
        # infer_posterior has just set the belief of this meta-batch
        return {"kl_loss": self.config.kl_lambda * self.agent.kl_divergence()}
