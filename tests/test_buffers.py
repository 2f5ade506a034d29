"""Per-task replay buffers and the context / RL-batch samplers (algos/core/buffers.py)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from algos.core.buffers import (MultiTaskReplayBuffer, context_dim, context_from_batch, sample_context,
                                sample_rl_batch)

OBS, ACT = 3, 2


def make_path(start: int, length: int, obs_dim: int = OBS, action_dim: int = ACT) -> dict[str, np.ndarray]:
    """A path whose transitions are numbered ``start .. start+length-1``: obs[:, 0] holds the number."""
    ids = np.arange(start, start + length, dtype=np.float32)
    obs = np.zeros((length, obs_dim), dtype=np.float32)
    obs[:, 0] = ids
    obs[:, 1:] = ids[:, None] * 0.5
    next_obs = obs + 1000.0
    actions = np.tile(ids[:, None], (1, action_dim)) * -1.0
    return {"obs": obs, "actions": actions, "rewards": -ids, "sparse_rewards": ids % 2,
            "next_obs": next_obs, "terminals": np.zeros(length, dtype=np.float32)}


def ids_in(buffer, task) -> list[int]:
    """Transition numbers of ``task`` in chronological order."""
    size, top = int(buffer.sizes[task]), int(buffer.tops[task])
    start = 0 if size < buffer.capacity else top
    order = (start + np.arange(size)) % buffer.capacity
    return buffer.obs[task, order, 0].astype(int).tolist()


def test_add_path_bookkeeping():
    buf = MultiTaskReplayBuffer(num_tasks=3, capacity=100, obs_dim=OBS, action_dim=ACT)
    buf.add_path(1, make_path(0, 7))
    buf.add_path(1, make_path(7, 5))
    buf.add_path(2, make_path(100, 4))
    assert buf.sizes.tolist() == [0, 12, 4]
    assert buf.tops.tolist() == [0, 12, 4]
    assert ids_in(buf, 1) == list(range(12))
    np.testing.assert_array_equal(buf.actions[1, :12, 0], -np.arange(12))
    np.testing.assert_array_equal(buf.rewards[2, :4], -np.arange(100, 104))
    np.testing.assert_array_equal(buf.next_obs[1, :12, 0], np.arange(12) + 1000)
    np.testing.assert_array_equal(np.flatnonzero(buf.episode_starts[1, :12]), [0, 7])
    np.testing.assert_array_equal(np.flatnonzero(buf.episode_starts[2, :4]), [0])


def test_ring_wraparound_overwrites_oldest():
    buf = MultiTaskReplayBuffer(num_tasks=2, capacity=10, obs_dim=OBS, action_dim=ACT)
    buf.add_path(0, make_path(0, 4))
    buf.add_path(0, make_path(4, 4))
    buf.add_path(0, make_path(8, 4))     # wraps: 10, 11 overwrite 0, 1
    assert buf.sizes[0] == 10 and buf.tops[0] == 2
    assert ids_in(buf, 0) == list(range(2, 12))
    buf.add_path(0, make_path(12, 6))
    assert buf.sizes[0] == 10 and buf.tops[0] == 8
    assert ids_in(buf, 0) == list(range(8, 18))
    assert buf.sizes[1] == 0            # other task untouched
    # every sampled transition is one of the 10 newest
    positions = buf.random_positions(np.array([0]), 500, np.random.default_rng(0))
    sampled = set(buf.obs[0, positions[0], 0].astype(int).tolist())
    assert sampled == set(range(8, 18))


def test_clear_resets_one_task():
    buf = MultiTaskReplayBuffer(num_tasks=2, capacity=10, obs_dim=OBS, action_dim=ACT)
    buf.add_path(0, make_path(0, 8))
    buf.add_path(1, make_path(50, 3))
    buf.clear(0)
    assert buf.sizes.tolist() == [0, 3] and buf.tops.tolist() == [0, 3]
    with pytest.raises(RuntimeError, match="empty"):
        buf.random_positions(np.array([0]), 4, np.random.default_rng(0))
    buf.add_path(0, make_path(20, 2))
    assert ids_in(buf, 0) == [20, 21]
    # only the new transitions are sampled, never stale ones beyond the new size
    positions = buf.random_positions(np.array([0]), 200, np.random.default_rng(1))
    assert set(buf.obs[0, positions[0], 0].astype(int).tolist()) == {20, 21}


def test_sample_rl_batch_shapes_and_content():
    buf = MultiTaskReplayBuffer(num_tasks=4, capacity=50, obs_dim=OBS, action_dim=ACT)
    for task in range(4):
        buf.add_path(task, make_path(100 * task, 20))
    tasks = np.array([3, 0, 3, 1, 2])
    batch = sample_rl_batch(buf, tasks, 16, np.random.default_rng(0), context_uses_sparse_reward=False,
                            critic_uses_dense_reward=True)
    assert batch.obs.shape == (5, 16, OBS)
    assert batch.next_obs.shape == (5, 16, OBS)
    assert batch.actions.shape == (5, 16, ACT)
    for key in ("context_rewards", "critic_rewards", "terminals"):
        assert getattr(batch, key).shape == (5, 16, 1)
    assert all(isinstance(getattr(batch, f.name), torch.Tensor) and getattr(batch, f.name).dtype == torch.float32
               for f in dataclasses.fields(batch))
    ids = batch.obs[..., 0].numpy().astype(int)
    for row, task in zip(ids, tasks):  # each row comes from its own task, fields aligned
        assert np.all((row >= 100 * task) & (row < 100 * task + 20))
    np.testing.assert_array_equal(batch.context_rewards[..., 0].numpy(), -ids)
    np.testing.assert_array_equal(batch.critic_rewards[..., 0].numpy(), -ids)
    np.testing.assert_array_equal(batch.actions[..., 1].numpy(), -ids)
    np.testing.assert_array_equal(batch.next_obs[..., 0].numpy(), ids + 1000)
    flat = batch.flatten_tasks()
    assert flat.obs.shape == (5 * 16, OBS) and flat.critic_rewards.shape == (5 * 16, 1)
    np.testing.assert_array_equal(flat.obs.numpy(), batch.obs.reshape(-1, OBS).numpy())


@pytest.mark.parametrize("context_sparse, critic_dense", [(True, True), (True, False), (False, False)])
def test_rl_batch_chooses_each_reward_once(context_sparse, critic_dense):
    """make_path stores the dense reward -id and the sparse reward id % 2: the batch hands each role its own."""
    buf = MultiTaskReplayBuffer(num_tasks=1, capacity=50, obs_dim=OBS, action_dim=ACT)
    buf.add_path(0, make_path(0, 20))
    batch = sample_rl_batch(buf, np.array([0]), 32, np.random.default_rng(1), context_uses_sparse_reward=context_sparse,
                            critic_uses_dense_reward=critic_dense)
    ids = batch.obs[..., 0].numpy().astype(int)
    dense, sparse = -ids, ids % 2
    np.testing.assert_array_equal(batch.context_rewards[..., 0].numpy(), sparse if context_sparse else dense)
    np.testing.assert_array_equal(batch.critic_rewards[..., 0].numpy(),
                                  dense if critic_dense else (sparse if context_sparse else dense))


def test_sampling_is_reproducible_with_same_rng():
    buf = MultiTaskReplayBuffer(num_tasks=2, capacity=50, obs_dim=OBS, action_dim=ACT)
    buf.add_path(0, make_path(0, 30))
    buf.add_path(1, make_path(100, 30))
    a = sample_rl_batch(buf, np.array([0, 1]), 8, np.random.default_rng(5), True, True)
    b = sample_rl_batch(buf, np.array([0, 1]), 8, np.random.default_rng(5), True, True)
    for field in dataclasses.fields(a):
        assert torch.equal(getattr(a, field.name), getattr(b, field.name))


@pytest.mark.parametrize("use_next_obs", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_context_shapes_and_reward_column(use_next_obs, sparse):
    buf = MultiTaskReplayBuffer(num_tasks=3, capacity=50, obs_dim=OBS, action_dim=ACT)
    for task in range(3):
        buf.add_path(task, make_path(100 * task, 25))
    tasks = np.array([2, 0])
    context = sample_context(buf, tasks, 12, np.random.default_rng(0), use_sparse_rewards=sparse,
                             use_next_obs=use_next_obs)
    dim = context_dim(OBS, ACT, use_next_obs)
    assert dim == OBS + ACT + 1 + (OBS if use_next_obs else 0)
    assert context.shape == (2, 12, dim) and context.dtype == torch.float32
    ids = context[..., 0].numpy().astype(int)
    np.testing.assert_array_equal(context[..., OBS:OBS + ACT].numpy(), -np.stack([ids, ids], -1))
    reward_column = context[..., OBS + ACT].numpy()
    np.testing.assert_array_equal(reward_column, (ids % 2) if sparse else -ids)
    if use_next_obs:
        np.testing.assert_array_equal(context[..., OBS + ACT + 1].numpy(), ids + 1000)


def test_context_from_batch_column_order():
    batch = {"obs": np.ones((1, 2, 2)), "actions": np.full((1, 2, 1), 2.0), "rewards": np.full((1, 2), 3.0),
             "sparse_rewards": np.full((1, 2), 4.0), "next_obs": np.full((1, 2, 2), 5.0)}
    np.testing.assert_array_equal(context_from_batch(batch, False, True)[0, 0].numpy(), [1, 1, 2, 3, 5, 5])
    np.testing.assert_array_equal(context_from_batch(batch, True, False)[0, 0].numpy(), [1, 1, 2, 4])


def test_sequential_context_is_consecutive_from_an_episode_start():
    buf = MultiTaskReplayBuffer(num_tasks=2, capacity=100, obs_dim=OBS, action_dim=ACT)
    starts = []
    number = 0
    for length in (5, 9, 3, 7, 6):
        starts.append(number)
        buf.add_path(1, make_path(number, length))
        number += length
    buf.add_path(0, make_path(500, 10))
    rng = np.random.default_rng(0)
    seen_starts = set()
    for _ in range(40):
        context = sample_context(buf, np.array([1, 0]), 8, rng, use_sparse_rewards=False, use_next_obs=False,
                                 sequential=True)
        ids = context[0, :, 0].numpy().astype(int)
        assert ids[0] in starts
        seen_starts.add(int(ids[0]))
        expected = [(ids[0] + k) % number for k in range(8)]   # wraps within the filled region, oldest first
        assert ids.tolist() == expected
        assert context[1, :, 0].numpy().astype(int).tolist() == [500 + (k % 10) for k in range(8)]
    assert len(seen_starts) >= 4  # the start is random among the episode starts


def test_sequential_context_after_wraparound_keeps_collection_order():
    buf = MultiTaskReplayBuffer(num_tasks=1, capacity=12, obs_dim=OBS, action_dim=ACT)
    for start in (0, 5, 10, 15):          # four episodes of 5 -> only ids 8..19 remain
        buf.add_path(0, make_path(start, 5))
    assert ids_in(buf, 0) == list(range(8, 20))
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        ids = buf.obs[0, buf.sequence_positions(np.array([0]), 6, rng)[0], 0].astype(int).tolist()
        assert ids[0] in (10, 15)   # 8 and 9 are the tail of an overwritten episode, not a start
        seen.add(ids[0])
        chronological = list(range(8, 20))
        first = chronological.index(ids[0])
        assert ids == [chronological[(first + k) % 12] for k in range(6)]
    assert seen == {10, 15}


@pytest.mark.parametrize("sequential", [False, True])
def test_sampling_empty_task_raises_clear_error(sequential):
    buf = MultiTaskReplayBuffer(num_tasks=4, capacity=10, obs_dim=OBS, action_dim=ACT)
    buf.add_path(0, make_path(0, 3))
    with pytest.raises(RuntimeError, match=r"empty replay buffer of task\(s\) \[2, 3\]"):
        sample_context(buf, np.array([0, 3, 2]), 4, np.random.default_rng(0), False, False, sequential=sequential)
    with pytest.raises(RuntimeError, match="empty"):
        sample_rl_batch(buf, np.array([1]), 4, np.random.default_rng(0), False, True)


def test_nonpositive_capacity_rejected():
    with pytest.raises(ValueError, match="capacity"):
        MultiTaskReplayBuffer(num_tasks=1, capacity=0, obs_dim=1, action_dim=1)


def test_state_dict_round_trip():
    buf = MultiTaskReplayBuffer(num_tasks=3, capacity=10, obs_dim=OBS, action_dim=ACT)
    for start in (0, 4, 8):
        buf.add_path(0, make_path(start, 4))     # task 0 wrapped
    buf.add_path(2, make_path(100, 3))
    state = buf.state_dict()
    restored = MultiTaskReplayBuffer(num_tasks=3, capacity=10, obs_dim=OBS, action_dim=ACT)
    restored.load_state_dict(state)
    for name in ("obs", "actions", "rewards", "sparse_rewards", "next_obs", "terminals", "episode_starts",
                 "sizes", "tops"):
        np.testing.assert_array_equal(getattr(restored, name), getattr(buf, name), err_msg=name)
    a = sample_context(buf, np.array([0, 2]), 5, np.random.default_rng(3), False, True, sequential=True)
    b = sample_context(restored, np.array([0, 2]), 5, np.random.default_rng(3), False, True, sequential=True)
    assert torch.equal(a, b)
    # the restored buffer keeps working as a ring
    buf.add_path(0, make_path(50, 3))
    restored.add_path(0, make_path(50, 3))
    assert ids_in(restored, 0) == ids_in(buf, 0)


def test_saved_buffers_are_tensors_and_older_numpy_checkpoints_still_load(tmp_path):
    from algos.core.io import atomic_torch_save, load_checkpoint
    buf = MultiTaskReplayBuffer(num_tasks=2, capacity=10, obs_dim=OBS, action_dim=ACT)
    buf.add_path(1, make_path(0, 7))
    state = buf.state_dict()
    # tensors: torch.save streams their storage to the file instead of pickling copies of it in memory
    assert all(isinstance(state[name], torch.Tensor) for name in ("obs", "actions", "episode_starts"))
    buf.obs[1, 0] = -1.0
    assert state["obs"][1, 0, 0] != -1.0  # a copy: the buffer's later writes do not reach a state taken earlier
    older = {key: value.numpy() if isinstance(value, torch.Tensor) else value for key, value in state.items()}
    for saved in (state, older):
        atomic_torch_save(tmp_path / "checkpoint.pt", {"iteration": 0, "algorithm": {"rl_buffer": saved}})
        restored = MultiTaskReplayBuffer(num_tasks=2, capacity=10, obs_dim=OBS, action_dim=ACT)
        restored.load_state_dict(load_checkpoint(tmp_path / "checkpoint.pt")["algorithm"]["rl_buffer"])
        assert ids_in(restored, 1) == list(range(7))
        assert restored.episode_starts.dtype == bool and restored.obs.dtype == np.float32
        assert load_checkpoint(tmp_path / "checkpoint.pt", peek=True)["iteration"] == 0  # mapped, not read


def test_state_dict_only_stores_filled_region_and_checks_capacity():
    buf = MultiTaskReplayBuffer(num_tasks=2, capacity=1000, obs_dim=OBS, action_dim=ACT)
    buf.add_path(1, make_path(0, 7))
    state = buf.state_dict()
    assert state["obs"].shape == (2, 7, OBS)
    with pytest.raises(ValueError, match="capacity"):
        MultiTaskReplayBuffer(num_tasks=2, capacity=500, obs_dim=OBS, action_dim=ACT).load_state_dict(state)


def test_capacity_beyond_memory_costs_only_what_is_written():
    # 10**12 transitions per task could never be reserved; the arrays hold what was written, doubling as they fill
    buf = MultiTaskReplayBuffer(num_tasks=2, capacity=10**12, obs_dim=OBS, action_dim=ACT)
    buf.add_path(0, make_path(0, 5000))
    assert 5000 <= buf.allocated < 10_000 and buf.obs.shape == (2, buf.allocated, OBS)
    assert ids_in(buf, 0) == list(range(5000))


def test_growing_arrays_match_preallocated_ones(monkeypatch):
    import algos.core.buffers as buffers
    rng = np.random.default_rng(0)
    lengths = [(int(rng.integers(3)), int(rng.integers(1, 9))) for _ in range(40)]   # (task, path length)

    def filled(initial_allocation):
        monkeypatch.setattr(buffers, "INITIAL_ALLOCATION", initial_allocation)
        buf, start = MultiTaskReplayBuffer(num_tasks=3, capacity=50, obs_dim=OBS, action_dim=ACT), 0
        for task, length in lengths:          # task 0 and 1 wrap around their 50 positions
            buf.add_path(task, make_path(start, length))
            start += length
        return buf

    grown, preallocated = filled(2), filled(10_000)
    assert grown.allocated == preallocated.allocated == 50
    for name in ("obs", "actions", "rewards", "sparse_rewards", "next_obs", "terminals", "episode_starts",
                 "sizes", "tops"):
        np.testing.assert_array_equal(getattr(grown, name), getattr(preallocated, name), err_msg=name)
    tasks = np.array([0, 1, 2])
    a = sample_context(grown, tasks, 6, np.random.default_rng(1), False, True, sequential=True)
    b = sample_context(preallocated, tasks, 6, np.random.default_rng(1), False, True, sequential=True)
    assert torch.equal(a, b)


def test_state_dict_restores_into_a_buffer_that_has_not_grown():
    buf = MultiTaskReplayBuffer(num_tasks=2, capacity=10**6, obs_dim=OBS, action_dim=ACT)
    buf.add_path(1, make_path(0, 9000))
    restored = MultiTaskReplayBuffer(num_tasks=2, capacity=10**6, obs_dim=OBS, action_dim=ACT)
    restored.load_state_dict(buf.state_dict())
    assert ids_in(restored, 1) == list(range(9000)) and restored.sizes.tolist() == [0, 9000]
