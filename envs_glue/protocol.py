"""The training and evaluation protocol of one environment, as a typed record its module declares.

It lives beside the environments (not in ``algos.core.config``, which reads it) so that an environment module can
state its own protocol without importing the layer above it (``docs/ARCHITECTURE.md``).
"""
from __future__ import annotations

from dataclasses import dataclass


class ConfigError(ValueError):
    """A bad configuration key or value; the message names it."""


MAX_ITERATIONS = 1_000_000  # the protocol runs 20; anything near this is a typo, not an experiment


@dataclass
class ProtocolConfig:
    """The training and evaluation protocol of one environment (``docs/PROTOCOL.md#training-protocol``)."""
    num_iterations: int
    num_initial_steps: int
    num_tasks_sample: int
    num_steps_prior: int
    num_steps_posterior: int
    num_extra_rl_steps_posterior: int
    num_train_steps_per_itr: int
    meta_batch: int
    batch_size: int
    embedding_batch_size: int
    discount: float
    reward_scale: float
    num_steps_per_eval: int
    num_exp_traj_eval: int
    num_evals: int
    sparse_rewards: bool = False          # the encoder's context and every reported return use the sparse reward
    use_next_obs_in_context: bool = False
    replay_buffer_size: int = 1_000_000   # per task; the arrays grow as they fill, so only what is written costs
    eval_interval: int = 1                # evaluate every this many iterations (and always after the last)
    final_eval_repeats: int = 10          # low-noise evaluation of the final policy
    deterministic_exploration: bool = False  # the protocol's exploration episodes act stochastically. True acts
                                             # deterministically in every meta-test episode, as PEARL's own code
                                             # (oyster, eval_deterministic) does: a diagnostic, not the protocol

    def validate(self) -> None:
        positive = ["num_iterations", "num_tasks_sample", "meta_batch", "batch_size", "embedding_batch_size",
                    "num_steps_per_eval", "num_evals", "replay_buffer_size", "eval_interval"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"protocol.{name} must be positive, got {getattr(self, name)}")
        nonnegative = ["num_initial_steps", "num_steps_prior", "num_steps_posterior",
                       "num_extra_rl_steps_posterior", "num_train_steps_per_itr", "num_exp_traj_eval",
                       "final_eval_repeats", "reward_scale"]
        for name in nonnegative:
            if getattr(self, name) < 0:
                raise ConfigError(f"protocol.{name} must be >= 0, got {getattr(self, name)}")
        if self.num_iterations > MAX_ITERATIONS:
            raise ConfigError(f"protocol.num_iterations must be at most {MAX_ITERATIONS:,}, got {self.num_iterations:,}")
        if not 0.0 <= self.discount <= 1.0:
            raise ConfigError(f"protocol.discount must lie in [0, 1], got {self.discount}")
