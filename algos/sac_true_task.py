"""``sac-true-task``: SAC handed the true task, a learned known-task reference where no closed-form optimum exists.

The latent is not inferred: it is the task's own row of the environment's task list (a goal position, a goal
velocity, a direction angle, a model's scales), both when acting (read from the environment, like the oracle's
goal) and for every replayed sample (its task's row). Everything else is the shared SAC on the same protocol,
collection and budget as the methods, so its figure says what a policy that knows the task reaches at this
budget: an upper reference for the context methods, never a method (``docs/PROTOCOL.md#baselines``). The row is
the task as the environment holds it, not re-encoded (a direction angle jumps at 0 / 2 pi).
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import numpy as np
import torch
from einops import repeat

import envs_glue
from algos.core.agent import MetaAgent
from algos.core.buffers import sample_rl_batch
from algos.core.config import ConfigError, ProtocolConfig
from algos.core.meta_sac import MetaSACAlgorithm, MetaSACConfig, sac_architecture
from models.policy import build_policy


@functools.lru_cache(maxsize=None)
def task_row_width(env: str) -> int:
    """How many numbers describe one task of ``env`` (the environment is built once to read its task list)."""
    built = envs_glue.make_env(env)
    try:
        return int(built.unwrapped.tasks.shape[1])
    finally:
        built.close()


@dataclass
class SACTrueTaskConfig(MetaSACConfig):
    latent_dim: int = 0  # the width of the environment's task rows, set from the environment


class TrueTaskAgent(MetaAgent):
    """Acts on ``z`` = the current task's row, read from the environment whenever its belief is (re)set."""

    def __init__(self, env, config: SACTrueTaskConfig):
        super().__init__(env.observation_space.shape[0], env.action_space.shape[0], config.latent_dim)
        self.env = env
        self.policy = build_policy(self.obs_dim, config.latent_dim, self.action_dim, config.hidden_dim,
                                   config.num_hidden_layers)
        self.clear_context()

    def reset_to_prior(self, num_tasks: int) -> torch.Tensor:
        row = torch.as_tensor(self.env.unwrapped.task, dtype=torch.float32)
        return repeat(row, "d -> t d", t=num_tasks).to(self.device)

    def infer_posterior(self, context: torch.Tensor) -> torch.Tensor:
        self.z = self.reset_to_prior(context.shape[0])  # the context is not needed: the task is known
        return self.z


class SACTrueTask(MetaSACAlgorithm):
    name = "sac-true-task"
    display_name = "SAC (true task)"
    role = "reference"
    report_rank = 1
    config_class = SACTrueTaskConfig

    @classmethod
    def default_config(cls, env: str) -> SACTrueTaskConfig:
        return dataclasses.replace(super().default_config(env), latent_dim=task_row_width(env))

    @classmethod
    def architecture(cls, agent: dict) -> str:
        return f"no encoder, z = the true task's row ({agent['latent_dim']}); " + sac_architecture(agent)

    def __init__(self, env, protocol: ProtocolConfig, config: SACTrueTaskConfig, rng: np.random.Generator,
                 bf16: bool = False, device: torch.device | str = "cpu"):
        width = env.unwrapped.tasks.shape[1]
        if config.latent_dim != width:
            raise ConfigError(f"sac-true-task's latent is the task row: agent.latent_dim must be {width} on this "
                              f"environment, got {config.latent_dim}")
        super().__init__(env, protocol, config, rng, bf16, device)
        self.task_rows = torch.as_tensor(env.unwrapped.tasks, dtype=torch.float32, device=self.device)

    def make_agent(self) -> TrueTaskAgent:
        return TrueTaskAgent(self.env, self.config)

    def train_step(self) -> dict[str, torch.Tensor]:
        p, c = self.protocol, self.config
        tasks = self.rng.choice(self.train_tasks, size=p.meta_batch)  # with replacement, as every method
        batch = sample_rl_batch(self.rl_buffer, tasks, p.batch_size, self.rng, context_uses_sparse_reward=p.sparse_rewards,
                                critic_uses_dense_reward=c.critic_uses_dense_reward).to(self.device)  # (t, b, d)
        z = repeat(self.task_rows[torch.from_numpy(np.asarray(tasks))], "t d -> (t b) d", b=p.batch_size)
        return self.sac_update(batch.flatten_tasks(), z, z, {})
