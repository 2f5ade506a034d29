"""An in-context transformer: a black-box sequence model over the raw history, RL²-style, trained off-policy.

No task-inference module, no auxiliary loss: a causal transformer reads the current task's transitions in the
order they happened, across the episodes of a trial, and its output after each transition is the belief ``z``
the SAC actor and critic act on at the next step. The agent's state follows every transition (``update_context``
advances the transformer by one token); ``adapt()`` has nothing left to do.

A token is one transition ``(obs, action, reward, next_obs, opens_episode)``, the reward the sparse one on sparse
tasks (what the agent sees at meta-test time). The belief before the first transition is a learned vector.

Training, per gradient step: ``meta_batch`` tasks, and for each ``ceil(batch_size / L)`` windows of ``L``
consecutive replayed transitions starting at an episode start (``sample_rl_sequences``), ``L`` being the
longest meta-test trial (``longest_trial``: 60, 400 and 600 steps on point-robot, sparse-point-robot and
cheetah-vel, whose episodes run their full length; ``num_steps_per_eval + 199`` where a 200-step episode can end
early). The transformer reads every window causally in one pass, giving at each
step ``t`` the belief before it ``z_t`` and after it ``z_{t+1}``; ``batch_size`` of each task's steps, drawn
uniformly, form the SAC batch (the same ``meta_batch x batch_size`` samples as every other method), with
``Q(o_t, a_t, z_t)`` regressing ``r_t + gamma V_target(o_{t+1}, z_{t+1})``. The shared SAC update trains the
transformer through the Q loss only (``z`` is detached in the V and policy losses), as it trains every other
method's encoder. Collection acts in context too: trials as a meta-test trial runs them, context cleared before
each, over the protocol's prior, posterior and extra-RL steps (``collect_data``).

Taken from the published recipes (``docs/DESIGN.md#the-in-context-transformer``): from AMAGO (Grigsby et al.,
2024), one shared sequence model under actor and critic, trained off-policy over whole replayed windows in
parallel with causal masking, an episode-boundary flag in every token, and pre-LayerNorm blocks for stable
off-policy training; from TrMRL (Melo, 2022), the task representation read at the last position of a
transformer over the recent transitions spanning episodes. Not taken: AMAGO's multi-discount critics and
filtered behaviour cloning, and its actor gradient into the sequence model (here the encoder learns from the
critic as every method's does), so that the comparison differs from the task-inference methods in the encoder
alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from einops import rearrange, repeat
from torch import nn

from algos.core.agent import ContextBuffer, MetaAgent
from algos.core.buffers import RLBatch, sample_rl_sequences
from algos.core.config import ConfigError, grid_settings
from algos.core.meta_sac import MetaSACAlgorithm, MetaSACConfig, sac_architecture
from models.causal_transformer import CausalTransformer
from models.policy import build_policy


@dataclass
class TransformerConfig(MetaSACConfig):
    latent_dim: int = 32           # the belief the actor and critic read: the transformer's output, projected
    model_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4

    def validate(self) -> None:
        super().validate()
        if min(self.model_dim, self.num_layers, self.num_heads) <= 0 or self.model_dim % self.num_heads:
            raise ConfigError(f"agent.model_dim ({self.model_dim}), num_layers ({self.num_layers}) and num_heads "
                              f"({self.num_heads}) must be positive, model_dim a multiple of num_heads")


class InContextAgent(MetaAgent):
    def __init__(self, obs_dim: int, action_dim: int, config: TransformerConfig, context_length: int):
        super().__init__(obs_dim, action_dim, config.latent_dim, use_next_obs=True)
        self.context_dim += 1  # the episode-start flag
        self._context = ContextBuffer(self.context_dim)
        self.context_length = context_length
        self.sequence_model = CausalTransformer(self.context_dim, config.model_dim, config.num_layers,
                                                config.num_heads, context_length)
        self.belief_head = nn.Linear(config.model_dim, config.latent_dim)
        self.prior_belief = nn.Parameter(torch.zeros(config.latent_dim))
        self.policy = build_policy(obs_dim, config.latent_dim, action_dim, config.hidden_dim, config.num_hidden_layers)
        self.attention_weights: torch.Tensor | None = None  # (tasks, heads, 1, n): the last read-out, for plots
        self.clear_context()

    # ------------------------------------------------------------------ training
    @staticmethod
    def tokens(sequences: RLBatch, episode_starts: torch.Tensor) -> torch.Tensor:
        """Replayed windows ``(b, L, d)`` as tokens ``(b, L, context_dim)``, in ``make_context_row``'s layout."""
        return torch.cat([sequences.obs, sequences.actions, sequences.context_rewards, sequences.next_obs,
                          episode_starts], dim=-1)

    def beliefs(self, tokens: torch.Tensor) -> torch.Tensor:
        """``(b, L, context_dim)`` -> ``(b, L + 1, latent)``: the belief before each transition, then after the last."""
        outputs, _ = self.sequence_model(tokens)
        after = self.belief_head(outputs)
        prior = repeat(self.prior_belief, "d -> b 1 d", b=tokens.shape[0])
        return torch.cat([prior.to(after.dtype), after], dim=1)

    # ------------------------------------------------------------------ acting
    def reset_to_prior(self, num_tasks: int) -> torch.Tensor:
        self._cache = None              # keys and values of the transitions read so far
        self._opens_episode = True      # the next transition is the first of an episode
        self.attention_weights = None
        return self.prior_belief.detach().expand(num_tasks, -1).clone()

    def make_context_row(self, transition) -> torch.Tensor:
        flag = torch.tensor([float(self._opens_episode)], device=self.device)
        _obs, _action, _reward, _next_obs, done, info = transition
        self._opens_episode = bool(done or info.get("truncated", False))
        return torch.cat([super().make_context_row(transition), flag])

    @torch.no_grad()
    def update_context(self, transition) -> None:
        """Read one transition: the belief now reflects it (one transformer step against the cached history)."""
        row = self.make_context_row(transition)
        if self._context.length == self.context_length:
            # longer than one trial (only when a caller feeds more): keep the most recent part, read afresh
            history = self.context[:, 1:].clone()
            self._context.reset(history.shape[0], self.device)
            self._cache = None
            for step in range(history.shape[1]):
                self._context.append(history[:, step])
                self._step(history[:, step])
        self._context.append(row)
        self._step(row.expand(self._context.tensor.shape[0], -1))

    def _step(self, rows: torch.Tensor) -> None:
        output, weights, self._cache = self.sequence_model.step(rows, self._cache)
        self.z = self.belief_head(output)
        self.attention_weights = weights

    def adapt(self) -> None:
        """Nothing to do: the belief already follows every transition read."""

    def infer_posterior(self, context: torch.Tensor) -> torch.Tensor:
        """The belief after reading ``context`` ``(tasks, n, context_dim)`` in order (its last ``context_length``
        transitions), with its last read-out's attention kept when no gradient is taken."""
        if context.shape[-1] != self.context_dim:
            raise ValueError(f"the in-context transformer reads its own ordered history ({self.context_dim} "
                             f"features per transition, with episode-start flags), not rows of {context.shape[-1]}")
        context = context[:, -self.context_length:]
        if context.shape[1] == 0:
            self.z = self.reset_to_prior(context.shape[0])
            return self.z
        outputs, weights = self.sequence_model(context, need_weights=not torch.is_grad_enabled())
        self.z = self.belief_head(outputs[:, -1])
        if weights is not None:
            self.attention_weights = weights[:, :, -1:]
        return self.z


class InContextTransformer(MetaSACAlgorithm):
    name = "transformer"
    display_name = "in-context transformer"
    role = "baseline"
    report_rank = 4
    # the tuning grid's point with the best validation figure, per environment
    # (benchmarks/benchmark/selection/SELECTION.md); an environment not listed runs the references' settings, which
    # is also the selection on sparse-point-robot
    env_defaults = {env: grid_settings("fast-actor-critic") for env in ("point-robot", "cheetah-vel")}
    config_class = TransformerConfig
    acts_in_context = True

    @classmethod
    def architecture(cls, agent: dict) -> str:
        return (f"causal transformer ({agent['num_layers']} x {agent['model_dim']}, {agent['num_heads']} heads) over "
                f"the trial's transitions in order, its output after each read out as the belief ({agent['latent_dim']}); "
                + sac_architecture(agent))

    def make_agent(self) -> InContextAgent:
        return InContextAgent(self.obs_dim, self.action_dim, self.config, self.trial_length)

    def train_step(self) -> dict[str, torch.Tensor]:
        p, c = self.protocol, self.config
        length = self.agent.context_length
        windows = math.ceil(p.batch_size / length)  # per task, enough steps for batch_size samples
        tasks = self.rng.choice(self.train_tasks, size=p.meta_batch)
        sequences, episode_starts = sample_rl_sequences(
            self.rl_buffer, np.repeat(tasks, windows), length, self.rng, context_uses_sparse_reward=p.sparse_rewards,
            critic_uses_dense_reward=c.critic_uses_dense_reward)                          # (t*w, L, d)
        sequences, episode_starts = sequences.to(self.device), episode_starts.to(self.device)
        # the SAC samples: batch_size of each task's w*L steps, uniformly without replacement
        picks = np.argsort(self.rng.random((p.meta_batch, windows * length)), axis=1)[:, : p.batch_size]
        picks = torch.from_numpy(picks).to(self.device)                                   # (t, b)

        def picked(x: torch.Tensor) -> torch.Tensor:
            """``(t*w, L, d)`` -> the picked steps, flat ``(t*b, d)``."""
            per_task = rearrange(x, "(t w) l d -> t (w l) d", t=p.meta_batch)
            chosen = torch.gather(per_task, 1, repeat(picks, "t b -> t b d", d=x.shape[-1]))
            return rearrange(chosen, "t b d -> (t b) d")

        with self.autocast():
            beliefs = self.agent.beliefs(self.agent.tokens(sequences, episode_starts))  # (t*w, L + 1, latent)
        batch = RLBatch(**{f.name: picked(getattr(sequences, f.name)) for f in fields(RLBatch)})
        return self.sac_update(batch, picked(beliefs[:, :-1]), picked(beliefs[:, 1:]), {})
