"""The agent interface (``docs/PROTOCOL.md#interfaces``) and the context machinery every agent shares.

An agent acts with ``get_action(obs, deterministic)``, collects its context one transition at a time
with ``update_context``, and turns the context into a task latent ``z`` with ``adapt()`` (online) or
``infer_posterior(context)`` (batched over tasks, used in training). A method subclasses
:class:`MetaAgent` and implements ``infer_posterior`` and ``reset_to_prior``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.policy import TanhGaussianPolicy

# transition = (obs, action, reward, next_obs, done, info)
Transition = tuple


class ContextBuffer:
    """Preallocated ``(num_tasks, capacity, context_dim)`` tensor; appending a row costs O(1) amortised."""

    def __init__(self, context_dim: int, capacity: int = 256):
        self.context_dim = context_dim
        self._data = torch.zeros(1, capacity, context_dim)
        self.length = 0

    def reset(self, num_tasks: int = 1, device: torch.device | None = None) -> None:
        device = self._data.device if device is None else torch.device(device)
        if self._data.shape[0] != num_tasks or self._data.device != device:
            self._data = torch.zeros(num_tasks, self._data.shape[1], self.context_dim, device=device)
        self.length = 0

    def append(self, row: torch.Tensor) -> None:
        """Append one row, ``(context_dim,)`` shared by all tasks or ``(num_tasks, context_dim)``."""
        if self.length == self._data.shape[1]:  # double the storage: amortised constant cost
            grown = self._data.new_zeros(self._data.shape[0], 2 * self._data.shape[1], self.context_dim)
            grown[:, : self.length] = self._data
            self._data = grown
        self._data[:, self.length] = row
        self.length += 1

    @property
    def tensor(self) -> torch.Tensor:
        return self._data[:, : self.length]


class MetaAgent(nn.Module):
    """Base class of every agent. Subclasses set ``self.policy`` and implement ``reset_to_prior`` / ``infer_posterior``."""

    def __init__(self, obs_dim: int, action_dim: int, latent_dim: int, use_next_obs: bool = False):
        super().__init__()
        self.obs_dim, self.action_dim, self.latent_dim = obs_dim, action_dim, latent_dim
        self.use_next_obs = use_next_obs
        self.context_dim = obs_dim + action_dim + 1 + (obs_dim if use_next_obs else 0)
        self._context = ContextBuffer(self.context_dim)
        self.policy: TanhGaussianPolicy | None = None
        # moves with .to(device) like the weights: tensors the agent makes itself are made where it lives
        self.register_buffer("_device_anchor", torch.zeros(0), persistent=False)
        self.z = torch.zeros(1, latent_dim)

    # ------------------------------------------------------------------ to implement
    def reset_to_prior(self, num_tasks: int) -> torch.Tensor:
        """Reset the task belief to the prior (no evidence yet) and return the latent to act on under it,
        ``(num_tasks, latent_dim)``: zeros, a draw from the prior, or a first hypothesis, as the method decides."""
        raise NotImplementedError

    def infer_posterior(self, context: torch.Tensor) -> torch.Tensor:
        """Encode ``(num_tasks, n, context_dim)`` into ``z`` (``(num_tasks, latent_dim)``), store it as ``self.z``
        and return it. Differentiable: training calls it with gradients on."""
        raise NotImplementedError

    def end_episode(self) -> None:
        """Called by the path sampler after every episode; posterior-sampling agents resample ``z`` here."""

    # ------------------------------------------------------------------ shared behaviour
    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    def clear_context(self, num_tasks: int = 1) -> None:
        self._context.reset(num_tasks, self.device)
        self.z = self.reset_to_prior(num_tasks)

    def make_context_row(self, transition: Transition) -> torch.Tensor:
        obs, action, reward, next_obs, _done, _info = transition
        parts = [np.asarray(obs, dtype=np.float32).ravel(), np.asarray(action, dtype=np.float32).ravel(),
                 np.asarray([reward], dtype=np.float32)]
        if self.use_next_obs:
            parts.append(np.asarray(next_obs, dtype=np.float32).ravel())
        return torch.from_numpy(np.concatenate(parts)).to(self.device)

    def update_context(self, transition: Transition) -> None:
        self._context.append(self.make_context_row(transition))

    @property
    def context(self) -> torch.Tensor:
        """The transitions collected since ``clear_context``, ``(num_tasks, n, context_dim)``."""
        return self._context.tensor

    @torch.no_grad()
    def adapt(self) -> None:
        self.infer_posterior(self.context)

    @torch.no_grad()
    def get_action(self, obs: np.ndarray, deterministic: bool = False) -> tuple[np.ndarray, dict]:
        obs_tensor = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device).reshape(1, -1)
        out = self.policy(obs_tensor, self.z[:1], deterministic=deterministic)
        return out.action[0].cpu().numpy(), {}

    @property
    def networks(self) -> list[nn.Module]:
        return [m for m in self.children()]
