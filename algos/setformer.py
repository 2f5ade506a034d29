"""setformer (ours): set-transformer task inference with reward and next-state heads, and Thompson-sampling
exploration over task hypotheses, conditioning a SAC actor-critic.

Encoder. Each context transition ``(obs, action, reward[, next_obs])`` is a token; an MLP embeds it once, when it
arrives (``update_context`` writes it into a preallocated buffer: constant cost per step). Induced-set attention
blocks let the tokens exchange information at O(n m) cost, and pooling by multihead attention with learned seed
queries reads out a **deterministic** latent ``z``. Nothing depends on token order, so ``z`` is
permutation-invariant by construction. The pooling weights of the last ``adapt()`` / ``infer_posterior()`` are
kept in ``attention_weights`` for plots.

Shaping. A reward head and a next-state head predict ``r`` and ``s' - s`` from ``(obs, action, z)`` on the RL
batch; each loss has its own weight (``aux.reward``, ``aux.next_state``; 0 switches it off; with
``aux.reward_shapes_z=false`` the reward head learns on detached latents, trained but shaping nothing). ``z`` also takes the
critic's gradient, stepped with the critic. The reward head predicts the reward the context carries (the sparse
one on the sparse task), which is what lets it score hypotheses below.

Task embeddings as hypotheses. A deterministic latent gives no directed exploration, and on the sparse task the
encoder cannot learn what a goal looks like before some context holds a reward: a deadlock. Meta-training knows
which task a batch came from, so every training task also owns a learned embedding ``e_j`` in the same latent
space. A share (``embedding_batch_fraction``) of every task's RL batch is conditioned on ``e_j`` instead of the
encoder's ``z``: the actor-critic learns to solve training task ``j`` from ``e_j`` with no inference problem
(the critic's reward is dense, as in the reference), and an alignment loss (``aux.align``) pulls the encoder's
``z`` toward ``e_j`` (stop-gradient on ``e_j``), so inference lands where the policy knows what to do. The
reward head is trained on both kinds of latent. Nothing about this uses more samples or gradient steps: it splits
the same batch.

Exploration. The embeddings are the hypothesis set. Each hypothesis is scored by the likelihood of the observed
rewards under the reward head, ``log p(h | c) = -sum_t (r_t - R(s_t, a_t, e_h))^2 / (2 sigma^2)``, and during
exploration the agent acts as the policy of a hypothesis sampled from that belief (Thompson sampling): one per
episode, and a fresh one as soon as the evidence makes the current one ``exp(switch_log_ratio)`` times less
likely than the best, so one exploration episode can visit several candidates. ``adapt()`` ends exploration:
from then on the agent acts on the encoder's reading ``z`` of the whole context, which is scored like one more
hypothesis. While the context refutes it (the best hypothesis explains the context ``exp(switch_log_ratio)``
times better, ``exploration.fallback``), Thompson sampling over the belief goes on instead, so an agent whose
exploration episodes found nothing keeps testing live hypotheses rather than repeating a refuted guess. With
``embedding_batch_fraction=0`` there are no task embeddings: the hypotheses are the encoder latents of the
training tasks, refreshed from every meta-batch. What the agent acts on at any moment is one state, ``Acting``.

Collecting on the task's own embedding. A hypothesis is only as good as its policy and its reward prediction, and
both are learned from the data of task ``j``. Data collected under other latents rarely reaches goal ``j`` on the
sparse task, so the reward head learns that ``e_j`` predicts no reward anywhere: a hypothesis that nothing can
refute. So a share (``embedding_collection_fraction``) of every posterior collection phase acts on the task's own
embedding: whole episodes, the phase's environment steps unchanged. A task whose data still shows no reward at all
(its goal was never reached) is left out of the hypothesis set (``exploration.min_evidence``): its reward prediction
is zero everywhere, so no evidence could refute it, and once the real hypotheses were refuted it would take the
whole belief.

What each exploration rule is worth on the trained weights (switched off one at a time, same evaluation seeds) is
measured by ``python -m experiments.reevaluate``; what the training-time parts are worth (retrained with one switch
flipped, paired by seed) by ``python -m experiments.ablations``. ``docs/DESIGN.md`` says why each default is what
it is, with the runs that show it.

Bounded latents. ``z`` and every ``e_j`` live on the sphere of radius ``sqrt(latent_dim)`` (``latent_norm``):
the encoder's raw output and the raw embeddings are rescaled to that norm, so the critic, the policy and the heads
always see latents of order one, and the critic's gradient cannot grow them without limit. ``tanh`` (squash each
coordinate) and ``none`` remain as options (``docs/DESIGN.md#bounded-latents``).
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from algos.core.agent import ContextBuffer, MetaAgent
from algos.core.config import ConfigError, grid_settings
from algos.core.meta_sac import MetaSACAlgorithm, MetaSACConfig, sac_architecture
from models.mlp import build_mlp
from models.policy import build_policy
from models.set_transformer import InducedSetAttentionBlock, PoolingByMultiheadAttention


LATENT_NORMS = ("none", "tanh", "sphere")
ENCODER_POOLINGS = ("attention", "mean")


def normalise_latent(z: torch.Tensor, how: str) -> torch.Tensor:
    """Bound latents ``(..., latent_dim)``: ``tanh`` squashes each coordinate (and saturates); ``sphere`` keeps the
    direction and fixes the norm at ``sqrt(latent_dim)`` (entries of order 1, no saturation)."""
    if how == "tanh":
        return torch.tanh(z)
    if how == "sphere":
        return F.normalize(z, dim=-1, eps=1e-6) * math.sqrt(z.shape[-1])
    return z


@dataclass
class AuxConfig:
    reward: float = 1.0       # weight of the reward head's loss; 0 switches it off
    next_state: float = 1.0   # weight of the next-state head's loss; 0 switches it off
    align: float = 1.0        # weight of ||z - sg(e_task)||^2 pulling the encoder onto the task embeddings
    reward_shapes_z: bool = True  # False: the reward head learns on detached latents, so it still scores
                                  # hypotheses but its loss no longer shapes z or the embeddings (ablation)


@dataclass
class ExplorationConfig:
    thompson: bool = True            # False: no hypotheses; explore on z = 0 (the encoder's reading of no
                                     # context) until adapt(), and posterior collection on the encoder's z
    reward_noise_std: float = 0.1    # sigma of the reward likelihood that scores hypotheses
    switch_log_ratio: float = 4.6    # resample when log p(best) - log p(current) exceeds this (100x)
    fallback: bool = True            # after adapt(): act on the encoder's z only while the context does not
                                     # falsify it (as a hypothesis), else resume Thompson sampling
    min_evidence: float = 0.01       # a training task is a hypothesis once this share of its replay data
                                     # carries a nonzero context reward (always so for dense rewards)


@dataclass
class SetFormerConfig(MetaSACConfig):
    lr: float = 3e-4                 # the references' lr; per environment the selected grid point (env_defaults)
    latent_dim: int = 8
    model_dim: int = 64              # token width
    num_heads: int = 4
    num_blocks: int = 2              # induced-set attention blocks
    num_inducing: int = 16
    num_seeds: int = 2               # pooling seed queries
    encoder_pooling: str = "attention"  # attention: induced-set attention blocks + pooling by attention; mean: the
                                        # same token embedding and read-out over a plain mean of the tokens (ablation)
    head_hidden_dim: int = 128       # reward / next-state heads
    head_num_hidden_layers: int = 2
    min_context_fraction: float = 0.25  # training contexts keep a random n in [fraction * N, N] tokens
    embedding_batch_fraction: float = 0.5  # share of each task's RL batch conditioned on the task's own embedding
                                           # e_j; 0: no task embeddings (the hypotheses are encoder latents)
    embedding_collection_fraction: float = 0.5  # share of each posterior collection phase acting on the task's own
                                                # embedding e_j (when embeddings are learned), in whole episodes
                                                # rounded half to even: 2 of 3 on cheetah-vel, 22 of 45 on sparse
    latent_norm: str = "sphere"      # how z and the embeddings e_j are kept bounded: sphere (rescale to norm
                                     # sqrt(latent_dim)) | tanh (squash each coordinate into (-1, 1)) | none
    aux: AuxConfig = field(default_factory=AuxConfig)
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)

    def validate(self) -> None:
        super().validate()
        if self.model_dim <= 0 or self.num_heads <= 0 or self.head_num_hidden_layers < 0:
            raise ConfigError(f"agent.model_dim and agent.num_heads must be positive and agent.head_num_hidden_layers "
                              f">= 0; got {self.model_dim}, {self.num_heads}, {self.head_num_hidden_layers}")
        if self.model_dim % self.num_heads:
            raise ConfigError(f"agent.model_dim ({self.model_dim}) must be divisible by agent.num_heads "
                              f"({self.num_heads})")
        if min(self.num_blocks, self.num_inducing, self.num_seeds, self.head_hidden_dim) <= 0:
            raise ConfigError("agent.num_blocks, num_inducing, num_seeds and head_hidden_dim must be positive")
        if not 0.0 < self.min_context_fraction <= 1.0:
            raise ConfigError(f"agent.min_context_fraction must lie in (0, 1], got {self.min_context_fraction}")
        if min(self.aux.reward, self.aux.next_state, self.aux.align) < 0:
            raise ConfigError("agent.aux.reward, agent.aux.next_state and agent.aux.align must be >= 0")
        if not 0.0 <= self.embedding_batch_fraction < 1.0:
            raise ConfigError(f"agent.embedding_batch_fraction must lie in [0, 1), got {self.embedding_batch_fraction}")
        if not 0.0 <= self.embedding_collection_fraction <= 1.0:
            raise ConfigError(f"agent.embedding_collection_fraction must lie in [0, 1], got "
                              f"{self.embedding_collection_fraction}")
        if self.encoder_pooling not in ENCODER_POOLINGS:
            raise ConfigError(f"agent.encoder_pooling must be one of {list(ENCODER_POOLINGS)}, got "
                              f"{self.encoder_pooling!r}")
        if self.latent_norm not in LATENT_NORMS:
            raise ConfigError(f"agent.latent_norm must be one of {list(LATENT_NORMS)}, got {self.latent_norm!r}")
        if self.exploration.reward_noise_std <= 0:
            raise ConfigError("agent.exploration.reward_noise_std must be positive")
        if not 0.0 <= self.exploration.min_evidence <= 1.0:
            raise ConfigError(f"agent.exploration.min_evidence must lie in [0, 1], got "
                              f"{self.exploration.min_evidence}")


class SetEncoder(nn.Module):
    def __init__(self, context_dim: int, latent_dim: int, config: SetFormerConfig):
        super().__init__()
        d = config.model_dim
        self.latent_norm = config.latent_norm
        self.mean_pooling = config.encoder_pooling == "mean"
        self.token_embedding = build_mlp(context_dim, d, d, 1, small_final_init=False)
        if self.mean_pooling:  # no attention at all: a DeepSets-style mean of the token embeddings
            self.to_latent = nn.Linear(d, latent_dim)
            return
        self.blocks = nn.ModuleList(InducedSetAttentionBlock(d, config.num_heads, config.num_inducing)
                                    for _ in range(config.num_blocks))
        self.pooling = PoolingByMultiheadAttention(d, config.num_heads, config.num_seeds)
        self.to_latent = nn.Linear(config.num_seeds * d, latent_dim)

    def embed(self, context: torch.Tensor) -> torch.Tensor:
        """``(tasks, n, context_dim) -> (tasks, n, model_dim)``, each token on its own."""
        return self.token_embedding(context)

    def pool(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(tasks, n, model_dim)`` -> ``z (tasks, latent)`` and pooling weights ``(tasks, heads, seeds, n)``
        (uniform ``1 / n`` with one head and one seed for mean pooling)."""
        if self.mean_pooling:
            z = self.to_latent(tokens.mean(dim=1)).float()
            weights = tokens.new_full((tokens.shape[0], 1, 1, tokens.shape[1]), 1.0 / tokens.shape[1]).float()
            return normalise_latent(z, self.latent_norm), weights
        for block in self.blocks:
            tokens = block(tokens)
        pooled, weights = self.pooling(tokens)
        z = self.to_latent(rearrange(pooled, "t k d -> t (k d)")).float()
        return normalise_latent(z, self.latent_norm), weights


class HypothesisBelief:
    """The belief over a fixed set of ``k`` task hypotheses given the context so far: each hypothesis's summed
    log-likelihood of the observed rewards, which hypotheses may be believed at all (``usable``), the one acted on
    (``current``), and the refutation rule (the best hypothesis explains the context ``exp(switch_log_ratio)``
    times better). It only keeps books; the agent computes the likelihoods with its reward head."""

    def __init__(self, num_hypotheses: int):
        self.log_likelihood = torch.zeros(num_hypotheses)                      # (k,)
        self.usable = torch.ones(num_hypotheses, dtype=torch.bool)             # (k,)
        self.switch_log_ratio = math.inf
        self.current = 0

    def reset(self, usable: torch.Tensor, switch_log_ratio: float) -> None:
        """No evidence yet. ``usable`` is read live (the agent's mask, refreshed in place as data arrives)."""
        self.log_likelihood = torch.zeros(usable.shape[0], device=usable.device)
        self.usable, self.switch_log_ratio = usable, switch_log_ratio

    def scores(self) -> torch.Tensor:
        """Log-likelihood of every hypothesis, ``-inf`` for unusable ones (unless none is usable)."""
        if not self.usable.any():
            return self.log_likelihood
        return self.log_likelihood.masked_fill(~self.usable, float("-inf"))

    def observe(self, log_likelihoods: torch.Tensor) -> None:
        """Add the log-likelihood ``(k,)`` of new evidence."""
        self.log_likelihood += log_likelihoods

    def sample(self) -> int:
        """Thompson sampling: draw ``current`` from the belief."""
        scores = self.scores()
        self.current = int(torch.multinomial((scores - scores.max()).exp(), 1))
        return self.current

    def refutes(self, log_likelihood: torch.Tensor | float) -> bool:
        """Whether the best hypothesis explains the context ``exp(switch_log_ratio)`` times better than something
        whose log-likelihood is ``log_likelihood``."""
        return bool(self.scores().max() - log_likelihood > self.switch_log_ratio)

    def current_refuted(self) -> bool:
        return self.refutes(self.log_likelihood[self.current])


class Acting(enum.Enum):
    """What the agent's latent ``z`` is, and so what it acts on and what may change it. The agent is in exactly one
    of these (``SetFormerAgent.acting``), and each is entered in one place:

    - ``EXPLORING`` (``reset_to_prior``, with every ``clear_context``): before ``adapt()``. ``z`` is a hypothesis
      drawn from the belief (Thompson sampling: redrawn after every episode and as soon as the context refutes it),
      or zeros without Thompson sampling (``exploration.thompson=false``) or for several tasks at once.
    - ``ON_ENCODER`` (``read_out``: ``adapt()``, and ``infer_posterior()`` in training): ``z`` is the encoder's
      reading of the context. After ``adapt()`` with the fallback on, the reading is scored like a hypothesis as
      the context grows.
    - ``ON_HYPOTHESIS`` (``fall_back``, after ``adapt()``): the context refutes the encoder's reading, so the agent
      acts on a hypothesis drawn from the belief, redrawn as soon as the context refutes it (until the next
      ``adapt()``).
    - ``ON_TASK_EMBEDDING`` (``act_on``): ``z`` is a given latent and nothing changes it: a training task's own
      embedding ``e_j`` while meta-training collects on it (``collecting_on_task``), or a latent handed to
      ``act_on()`` for diagnostics.
    """
    EXPLORING = "exploring"
    ON_ENCODER = "on the encoder's reading"
    ON_HYPOTHESIS = "on a hypothesis"
    ON_TASK_EMBEDDING = "on a task embedding"


class SetFormerAgent(MetaAgent):
    def __init__(self, obs_dim: int, action_dim: int, config: SetFormerConfig, num_train_tasks: int,
                 use_next_obs: bool = False):
        super().__init__(obs_dim, action_dim, config.latent_dim, use_next_obs)
        self.config = config
        self.context_encoder = SetEncoder(self.context_dim, config.latent_dim, config)
        head_input = obs_dim + action_dim + config.latent_dim
        self.reward_head = build_mlp(head_input, 1, config.head_hidden_dim, config.head_num_hidden_layers)
        self.next_state_head = build_mlp(head_input, obs_dim, config.head_hidden_dim, config.head_num_hidden_layers)
        self.policy = build_policy(obs_dim, config.latent_dim, action_dim, config.hidden_dim, config.num_hidden_layers)
        # one learned embedding per training task: conditions part of the RL batch, and the hypothesis set
        self.task_embeddings = nn.Parameter(torch.randn(num_train_tasks, config.latent_dim))
        # encoder latents of the training tasks, refreshed from every meta-batch (the hypotheses without embeddings)
        self.register_buffer("task_latents", torch.randn(num_train_tasks, config.latent_dim))
        # which training tasks' data ever revealed their reward: only those make refutable hypotheses
        self.register_buffer("hypothesis_usable", torch.ones(num_train_tasks, dtype=torch.bool))
        self._tokens = ContextBuffer(config.model_dim)          # embedded online context, preallocated
        self.attention_weights: torch.Tensor | None = None     # (tasks, heads, seeds, n) of the last pooling
        self.acting = Acting.EXPLORING
        self.belief = HypothesisBelief(num_train_tasks)
        self.encoder_z: torch.Tensor | None = None      # the encoder's reading at the last adapt()
        # log-likelihood of the online context under encoder_z while the fallback watches it (else None)
        self.encoder_log_likelihood: float | None = None
        self.collecting_on_task: int | None = None      # set only while meta-training collects on e_task
        self.clear_context()

    # ------------------------------------------------------------------ belief over hypotheses
    def embedding(self, tasks: torch.Tensor | int | None = None) -> torch.Tensor:
        """The learned embedding ``e_j`` of training task(s) ``tasks`` (all of them for ``None``), in the encoder's
        latent range: normalised like ``z`` (``latent_norm``). Differentiable."""
        raw = self.task_embeddings if tasks is None else self.task_embeddings[tasks]
        return normalise_latent(raw, self.config.latent_norm)

    @property
    def hypotheses(self) -> torch.Tensor:
        """``(num_train_tasks, latent)``: the task embeddings, or the encoder latents without embeddings."""
        return (self.embedding() if self.config.embedding_batch_fraction > 0 else self.task_latents).detach()

    def sample_hypothesis(self) -> torch.Tensor:
        """Act on a hypothesis drawn from the belief (Thompson sampling), in the current state."""
        self.z = self.hypotheses[self.belief.sample()][None].clone()
        return self.z

    def fall_back(self) -> None:
        """The context refutes the encoder's reading: act on a hypothesis drawn from the belief instead."""
        self.acting = Acting.ON_HYPOTHESIS
        self.sample_hypothesis()

    def act_on(self, latent: torch.Tensor, num_tasks: int = 1) -> torch.Tensor:
        """Act on ``latent (latent_dim,)`` from now until the next ``clear_context``: no exploration, no inference.
        Meta-training's collection on a task's own embedding comes here; so do diagnostics, e.g. the policy on a
        training task's own embedding, which bounds what any inference could reach with these weights
        (``experiments.reevaluate``). Feed it no context: ``adapt()`` would replace the latent."""
        self.acting = Acting.ON_TASK_EMBEDDING
        self.z = repeat(latent.detach(), "d -> t d", t=num_tasks).clone()
        return self.z

    @torch.no_grad()
    def log_likelihood(self, context: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """``sum_t log N(r_t; R(s_t, a_t, z), sigma^2)`` (up to a constant) of context rows ``(n, context_dim)``
        under each of ``latents (k, latent)``; returns ``(k,)``."""
        k, n = latents.shape[0], context.shape[0]
        obs_action = context[:, : self.obs_dim + self.action_dim]
        reward = context[:, self.obs_dim + self.action_dim]
        inputs = torch.cat([repeat(obs_action, "n d -> k n d", k=k), repeat(latents, "k d -> k n d", n=n)], -1)
        predicted = self.reward_head(inputs)[..., 0]                                      # (k, n)
        sigma = self.config.exploration.reward_noise_std
        return -((reward - predicted) ** 2).sum(-1) / (2 * sigma ** 2)

    def scores_evidence(self) -> bool:
        """Whether a new transition is scored against the hypotheses: while exploring by Thompson sampling, and
        after ``adapt()`` while the fallback watches the encoder's reading or acts on a hypothesis."""
        if self.acting is Acting.EXPLORING:
            return self.config.exploration.thompson
        if self.acting is Acting.ON_ENCODER:
            return self.encoder_log_likelihood is not None
        return self.acting is Acting.ON_HYPOTHESIS

    # ------------------------------------------------------------------ MetaAgent interface
    def reset_to_prior(self, num_tasks: int) -> torch.Tensor:
        self.belief.reset(self.hypothesis_usable, self.config.exploration.switch_log_ratio)
        if self.collecting_on_task is not None:
            return self.act_on(self.embedding(self.collecting_on_task), num_tasks)
        self.acting = Acting.EXPLORING
        if self.config.exploration.thompson and num_tasks == 1:
            return self.sample_hypothesis()
        return torch.zeros(num_tasks, self.latent_dim, device=self.device)

    def clear_context(self, num_tasks: int = 1) -> None:
        self._tokens.reset(num_tasks, self.device)
        super().clear_context(num_tasks)

    @torch.no_grad()
    def update_context(self, transition) -> None:
        row = self.make_context_row(transition)
        self._context.append(row)
        self._tokens.append(self.context_encoder.embed(row[None])[0])
        if not self.scores_evidence():
            return
        # the belief over the hypothesis set (and the encoder's reading, when acting on it) is kept up to date, one
        # transition at a time: one reward-head call, constant cost
        on_encoder = self.acting is Acting.ON_ENCODER
        latents = torch.cat([self.hypotheses, self.encoder_z]) if on_encoder else self.hypotheses
        scores = self.log_likelihood(row[None], latents)
        num_hypotheses = self.belief.log_likelihood.shape[0]
        self.belief.observe(scores[:num_hypotheses])
        if on_encoder:
            self.encoder_log_likelihood += float(scores[num_hypotheses])
            if self.belief.refutes(self.encoder_log_likelihood):
                self.fall_back()          # the encoder's reading no longer explains the context
        elif self.belief.current_refuted():
            self.sample_hypothesis()      # the current hypothesis is refuted: commit to a live one

    def read_out(self, tokens: torch.Tensor) -> torch.Tensor:
        """Act on the encoder's reading of embedded tokens ``(tasks, n, model_dim)``: set ``z`` (zeros for no
        tokens), with no fallback watching it yet."""
        self.acting = Acting.ON_ENCODER
        self.encoder_log_likelihood = None
        if tokens.shape[1] == 0:
            self.z = tokens.new_zeros(tokens.shape[0], self.latent_dim)
            return self.z
        self.z, weights = self.context_encoder.pool(tokens)
        self.attention_weights = weights.detach()
        return self.z

    @torch.no_grad()
    def adapt(self) -> None:
        encoder_z = self.read_out(self._tokens.tensor)  # tokens were embedded on arrival
        self.encoder_z = encoder_z.clone()
        if not (self.config.exploration.thompson and self.config.exploration.fallback) or encoder_z.shape[0] != 1:
            return
        # the encoder's reading is one more hypothesis: act on it unless the context already refutes it
        self.encoder_log_likelihood = float(self.log_likelihood(self.context[0], encoder_z)[0])
        if self.belief.refutes(self.encoder_log_likelihood):
            self.fall_back()

    def infer_posterior(self, context: torch.Tensor) -> torch.Tensor:
        # training's read-out of contexts sampled from the replay data (posterior collection acts on it): the online
        # context played no part, so no fallback watches it
        return self.read_out(self.context_encoder.embed(context))

    def end_episode(self) -> None:
        if self.acting is Acting.EXPLORING and self.config.exploration.thompson and self.z.shape[0] == 1:
            with torch.no_grad():
                self.sample_hypothesis()


class SetFormer(MetaSACAlgorithm):
    name = "setformer"
    display_name = "setformer (ours)"
    role = "ours"
    config_class = SetFormerConfig
    # per environment: the tuning grid's point with the best validation figure
    # (benchmarks/benchmark/selection/SELECTION.md); an environment not listed runs the references' settings, which
    # is also the selection on both point robots. (On cheetah-vel the validation tasks select the same settings that
    # were once chosen on test tasks: docs/DESIGN.md#choices-made-on-the-test-tasks.)
    env_defaults = {"cheetah-vel": grid_settings("fast-actor-critic")}

    @classmethod
    def architecture(cls, agent: dict) -> str:
        pooling = (f"{agent['num_blocks']} induced-set attention blocks ({agent['num_inducing']} inducing points, "
                   f"{agent['num_heads']} heads) and pooling by attention ({agent['num_seeds']} seed queries)"
                   if agent.get("encoder_pooling", "attention") == "attention" else "a mean over the tokens")
        return (f"set transformer: each transition a token (MLP to {agent['model_dim']}), {pooling}, a deterministic "
                f"z ({agent['latent_dim']}, latent_norm {agent.get('latent_norm', 'none')}); reward and next-state "
                f"heads ({agent['head_num_hidden_layers']} x {agent['head_hidden_dim']}); one learned embedding per "
                f"training task as hypotheses; " + sac_architecture(agent))
    inference_time_config = ("exploration",)

    def make_agent(self) -> SetFormerAgent:
        return SetFormerAgent(self.obs_dim, self.action_dim, self.config, len(self.train_tasks),
                              self.protocol.use_next_obs_in_context)

    def collect_initial_data(self):
        super().collect_initial_data()
        self.refresh_hypothesis_set()

    def collect_iteration_data(self):
        super().collect_iteration_data()
        self.refresh_hypothesis_set()

    def inference_config_changed(self) -> None:
        self.refresh_hypothesis_set()  # exploration.min_evidence decides the hypothesis set

    def refresh_hypothesis_set(self) -> None:
        # A training task whose data never carried a reward (its goal was never found, on the sparse task) has a
        # reward prediction of ~0 everywhere: nothing can refute it, so once the real hypotheses are refuted it
        # soaks up the belief and exploration stalls on it. It becomes a hypothesis once its data shows a reward.
        # hypotheses are indexed by training-task id, as the embeddings are in batch_latents
        rewards = self.rl_buffer.sparse_rewards if self.protocol.sparse_rewards else self.rl_buffer.rewards
        for task in self.train_tasks:
            size = int(self.rl_buffer.sizes[task])
            share = float(np.mean(rewards[task, :size] != 0)) if size else 0.0
            self.agent.hypothesis_usable[task] = share >= self.config.exploration.min_evidence

    def collect_posterior(self, task, num_samples, add_to_enc_buffer):
        # a share of the episodes acts on the task's own embedding e_j: on-policy data for the policy on e_j, and
        # rewarded transitions that teach the reward head what hypothesis j predicts (whole episodes, so the
        # phase's environment steps are unchanged)
        episodes = num_samples // self.max_path_length
        embedding_episodes = (round(self.config.embedding_collection_fraction * episodes)
                              if self.config.embedding_batch_fraction else 0)
        embedding_steps = embedding_episodes * self.max_path_length
        steps = super().collect_posterior(task, num_samples - embedding_steps, add_to_enc_buffer)
        if embedding_steps:
            self.agent.collecting_on_task = task
            try:
                steps += self.collect(task, embedding_steps, update_posterior=False,
                                      add_to_enc_buffer=add_to_enc_buffer)
            finally:
                self.agent.collecting_on_task = None
        return steps

    def batch_latents(self, tasks, task_z, batch_size):
        # the first embedding_batch_fraction of every task's RL batch acts on the task's own embedding, the rest on
        # the encoder's reading of its context
        batch_z = repeat(task_z, "t d -> t b d", b=batch_size)
        num_on_embedding = int(round(self.config.embedding_batch_fraction * batch_size))
        if num_on_embedding == 0:
            return batch_z
        embeddings = self.agent.embedding(torch.as_tensor(tasks, device=self.device))     # (t, latent)
        return torch.cat([repeat(embeddings, "t d -> t b d", b=num_on_embedding), batch_z[:, num_on_embedding:]],
                         dim=1)

    def training_context(self, context: torch.Tensor) -> torch.Tensor:
        # contexts at meta-test time are smaller than the encoder buffer's samples: train on a random size
        n = context.shape[1]
        low = max(1, math.ceil(self.config.min_context_fraction * n))
        keep = int(self.rng.integers(low, n + 1))
        return context[:, :keep]

    def encoder_losses(self, tasks, context, task_z, batch_z, batch):
        aux = self.config.aux
        task_index = torch.as_tensor(tasks, device=self.device)
        with torch.no_grad():
            self.agent.task_latents[task_index] = task_z.detach().float()
        losses = {}
        if aux.align > 0 and self.config.embedding_batch_fraction > 0:
            own_embedding = self.agent.embedding(task_index).detach()
            losses["align_loss"] = aux.align * F.mse_loss(task_z.float(), own_embedding)
        head_input = torch.cat([batch.obs, batch.actions, batch_z], dim=-1)
        if aux.reward > 0:
            reward_input = (head_input if aux.reward_shapes_z
                            else torch.cat([batch.obs, batch.actions, batch_z.detach()], dim=-1))
            losses["reward_head_loss"] = aux.reward * F.mse_loss(self.agent.reward_head(reward_input).float(),
                                                                 batch.context_rewards)
        if aux.next_state > 0:
            target = batch.next_obs - batch.obs
            predicted = self.agent.next_state_head(head_input).float()
            losses["next_state_head_loss"] = aux.next_state * F.mse_loss(predicted, target)
        return losses
