"""Per-task replay buffers on numpy arrays, and the samplers that read them.

One :class:`MultiTaskReplayBuffer` holds every training task's transitions in arrays shaped
``(num_tasks, allocated, dim)``; each task is a ring buffer of its own of ``capacity`` transitions. The RL buffer
and the encoder buffer are two instances. Sampling is batched over tasks (no Python loop over tasks).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
from einops import rearrange

FIELDS = ("obs", "actions", "rewards", "sparse_rewards", "next_obs", "terminals", "episode_starts")
INITIAL_ALLOCATION = 4096  # transitions per task before the first doubling


class MultiTaskReplayBuffer:
    def __init__(self, num_tasks: int, capacity: int, obs_dim: int, action_dim: int):
        if capacity <= 0:
            raise ValueError(f"replay buffer capacity must be positive, got {capacity}")
        self.num_tasks, self.capacity = num_tasks, capacity
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.sizes = np.zeros(num_tasks, dtype=np.int64)
        self.tops = np.zeros(num_tasks, dtype=np.int64)  # next write position per task
        self.allocated = 0
        self._reserve(INITIAL_ALLOCATION)

    def _reserve(self, length: int) -> None:
        """Make the arrays hold at least ``length`` positions per task, doubling as they fill up to ``capacity``.
        The references' 1M transitions per task would be over 100 GiB on the many-task environments (ant-goal,
        humanoid-dir), more than the OS lets one process reserve even untouched; a run writes a few percent of it."""
        length = min(length, self.capacity)  # a ring that has wrapped needs no more room
        if length <= self.allocated:
            return
        allocated = min(self.capacity, max(length, 2 * self.allocated))
        shapes = {"obs": (self.obs_dim,), "actions": (self.action_dim,), "next_obs": (self.obs_dim,)}
        for name in FIELDS:
            dtype = bool if name == "episode_starts" else np.float32
            grown = np.zeros((self.num_tasks, allocated, *shapes.get(name, ())), dtype=dtype)
            if self.allocated:
                grown[:, : self.allocated] = getattr(self, name)
            setattr(self, name, grown)
        self.allocated = allocated

    # ------------------------------------------------------------------ writing
    def add_path(self, task: int, path: dict[str, np.ndarray]) -> None:
        """Append one trajectory (arrays with a leading time axis) to ``task``'s ring buffer."""
        length = len(path["rewards"])
        self._reserve(int(self.tops[task]) + length)
        positions = (self.tops[task] + np.arange(length)) % self.capacity
        self.obs[task, positions] = path["obs"]
        self.actions[task, positions] = path["actions"]
        self.rewards[task, positions] = path["rewards"]
        self.sparse_rewards[task, positions] = path["sparse_rewards"]
        self.next_obs[task, positions] = path["next_obs"]
        self.terminals[task, positions] = path["terminals"]
        starts = np.zeros(length, dtype=bool)
        starts[0] = True
        self.episode_starts[task, positions] = starts
        self.tops[task] = (self.tops[task] + length) % self.capacity
        self.sizes[task] = min(self.capacity, self.sizes[task] + length)

    def clear(self, task: int) -> None:
        self.sizes[task] = 0
        self.tops[task] = 0

    # ------------------------------------------------------------------ reading
    def _check_nonempty(self, tasks: np.ndarray) -> None:
        empty = tasks[self.sizes[tasks] == 0]
        if len(empty):
            raise RuntimeError(f"cannot sample from empty replay buffer of task(s) {sorted(set(empty.tolist()))}")

    def _oldest(self, tasks: np.ndarray) -> np.ndarray:
        """Position of each task's oldest transition (0 until the ring wraps)."""
        return np.where(self.sizes[tasks] < self.capacity, 0, self.tops[tasks])

    def random_positions(self, tasks: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
        """Uniform positions, shape ``(len(tasks), batch_size)``, each row within its task's filled region."""
        self._check_nonempty(tasks)
        return (rng.random((len(tasks), batch_size)) * self.sizes[tasks, None]).astype(np.int64)

    def sequence_positions(self, tasks: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
        """``length`` consecutive positions per task starting at a random episode start, oldest-to-newest order
        (whole trajectories in the order they were collected), wrapping within the filled region."""
        self._check_nonempty(tasks)
        rows = []
        for task in tasks:  # one start per task: trajectories are found by a mask, cheap next to a gradient step
            size, oldest = int(self.sizes[task]), int(self._oldest(np.array([task]))[0])
            chronological = (oldest + np.arange(size)) % self.capacity
            start_offsets = np.flatnonzero(self.episode_starts[task, chronological])
            offset = int(rng.choice(start_offsets)) if len(start_offsets) else 0
            rows.append(chronological[(offset + np.arange(length)) % size])
        return np.stack(rows)

    def gather(self, tasks: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
        t = tasks[:, None]
        return {
            "obs": self.obs[t, positions], "actions": self.actions[t, positions],
            "rewards": self.rewards[t, positions], "sparse_rewards": self.sparse_rewards[t, positions],
            "next_obs": self.next_obs[t, positions], "terminals": self.terminals[t, positions],
        }

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        """The filled part of every array, as tensors: ``torch.save`` writes a tensor's storage straight to the
        file, where it pickles a numpy array through several in-memory copies (gigabytes on the many-task
        environments)."""
        filled = int(self.sizes.max(initial=0))
        state = {name: torch.from_numpy(getattr(self, name)[:, :filled].copy()) for name in FIELDS}
        state.update(sizes=self.sizes.copy(), tops=self.tops.copy(), capacity=self.capacity)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Also reads checkpoints that hold the arrays as numpy arrays (as checkpoints once did)."""
        if state["capacity"] != self.capacity:
            raise ValueError(f"checkpoint buffer capacity {state['capacity']} != configured {self.capacity}")
        self._reserve(state["obs"].shape[1])
        for name in FIELDS:
            array = np.asarray(state[name])
            getattr(self, name)[:, : array.shape[1]] = array
        self.sizes[:] = state["sizes"]
        self.tops[:] = state["tops"]


def context_from_batch(batch: dict[str, np.ndarray], use_sparse_rewards: bool, use_next_obs: bool) -> torch.Tensor:
    """Context rows ``(obs, action, reward[, next_obs])`` of shape ``(num_tasks, n, context_dim)``."""
    rewards = batch["sparse_rewards"] if use_sparse_rewards else batch["rewards"]
    parts = [batch["obs"], batch["actions"], rewards[..., None]]
    if use_next_obs:
        parts.append(batch["next_obs"])
    return torch.from_numpy(np.concatenate(parts, axis=-1).astype(np.float32))


def context_dim(obs_dim: int, action_dim: int, use_next_obs: bool) -> int:
    return obs_dim + action_dim + 1 + (obs_dim if use_next_obs else 0)


def sample_context(buffer: MultiTaskReplayBuffer, tasks: np.ndarray, size: int, rng: np.random.Generator,
                   use_sparse_rewards: bool, use_next_obs: bool, sequential: bool = False) -> torch.Tensor:
    """Context for the encoder, ``(len(tasks), size, context_dim)``: random transitions of each task, or
    (``sequential``) consecutive whole trajectories for order-dependent encoders."""
    positions = (buffer.sequence_positions(tasks, size, rng) if sequential
                 else buffer.random_positions(tasks, size, rng))
    return context_from_batch(buffer.gather(tasks, positions), use_sparse_rewards, use_next_obs)


@dataclass(frozen=True)
class RLBatch:
    """One meta-batch of RL samples with a leading task dimension, ``(t, b, d)`` (scalars ``(t, b, 1)``). Which
    reward plays which part is decided once, when the batch is made: the heads that explain the context predict
    ``context_rewards`` (the sparse reward on a sparse task), the critic regresses ``critic_rewards``."""
    obs: torch.Tensor
    actions: torch.Tensor
    next_obs: torch.Tensor
    terminals: torch.Tensor
    context_rewards: torch.Tensor
    critic_rewards: torch.Tensor

    def to(self, device: torch.device) -> "RLBatch":
        return RLBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def flatten_tasks(self) -> "RLBatch":
        """Every field as ``(t*b, d)``: one row per sample, as the critic and the policy take them."""
        return RLBatch(**{f.name: rearrange(getattr(self, f.name), "t b d -> (t b) d") for f in fields(self)})


def sample_rl_batch(buffer: MultiTaskReplayBuffer, tasks: np.ndarray, batch_size: int, rng: np.random.Generator,
                    context_uses_sparse_reward: bool, critic_uses_dense_reward: bool) -> RLBatch:
    """``batch_size`` uniform samples of each task's replay data (:class:`RLBatch`). The critic's reward is the
    context's unless ``critic_uses_dense_reward`` (on a sparse task the reference trains the critic densely)."""
    sampled = buffer.gather(tasks, buffer.random_positions(tasks, batch_size, rng))
    return _rl_batch(sampled, context_uses_sparse_reward, critic_uses_dense_reward)


def sample_rl_sequences(buffer: MultiTaskReplayBuffer, tasks: np.ndarray, length: int, rng: np.random.Generator,
                        context_uses_sparse_reward: bool, critic_uses_dense_reward: bool
                        ) -> tuple[RLBatch, torch.Tensor]:
    """The sequence sampler of methods that read a history in order: per task, ``length`` consecutive transitions
    from a random episode start (whole trajectories in collection order,
    :meth:`MultiTaskReplayBuffer.sequence_positions`), as an :class:`RLBatch` with a time axis ``(t, length, d)``,
    and each transition's episode-start flag ``(t, length, 1)``."""
    positions = buffer.sequence_positions(tasks, length, rng)
    episode_starts = torch.from_numpy(buffer.episode_starts[tasks[:, None], positions].astype(np.float32))[..., None]
    return _rl_batch(buffer.gather(tasks, positions), context_uses_sparse_reward, critic_uses_dense_reward), episode_starts


def _rl_batch(sampled: dict[str, np.ndarray], context_uses_sparse_reward: bool,
              critic_uses_dense_reward: bool) -> RLBatch:
    columns = {name: torch.from_numpy(array) for name, array in sampled.items()}
    columns = {name: tensor[..., None] if tensor.dim() == 2 else tensor for name, tensor in columns.items()}
    context_rewards = columns["sparse_rewards"] if context_uses_sparse_reward else columns["rewards"]
    critic_rewards = columns["rewards"] if critic_uses_dense_reward else context_rewards
    return RLBatch(obs=columns["obs"], actions=columns["actions"], next_obs=columns["next_obs"],
                   terminals=columns["terminals"], context_rewards=context_rewards, critic_rewards=critic_rewards)
