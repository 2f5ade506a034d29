"""Path sampler and data collection with the prior / posterior / extra-RL semantics (docs/PROTOCOL.md#collection)."""
from __future__ import annotations

import numpy as np
import pytest

from algos.core.sampler import collect_data, num_eval_episodes, rollout
from envs_glue import make_env
from tests.conftest import RecordingAgent, make_trainer

BIG_BUFFER = "replay_buffer_size=5000"


def record_sampled_tasks(algorithm) -> list[int]:
    """Record the tasks collect_iteration_data samples: it clears each one's encoder buffer first."""
    sampled: list[int] = []
    original_clear = algorithm.enc_buffer.clear
    algorithm.enc_buffer.clear = lambda task: (sampled.append(int(task)), original_clear(task))[1]
    return sampled


def test_initial_collection_fills_every_training_task(tmp_path):
    trainer = make_trainer("point-robot", tmp_path, overrides=[BIG_BUFFER, "num_initial_steps=30"])
    algo = trainer.algorithm
    algo.collect_initial_data()
    # 30 steps per task: a 20-step episode, then one cut at the budget after 10
    assert algo.env_steps == 40 * 30
    assert algo.rl_buffer.sizes.tolist() == [30] * 40
    assert algo.enc_buffer.sizes.tolist() == [30] * 40
    np.testing.assert_array_equal(algo.rl_buffer.obs[:, :30], algo.enc_buffer.obs[:, :30])
    # each task's data was collected in that task: rewards are -||next_obs - goal||
    goals = trainer.env.unwrapped.tasks[:40]
    dist = np.linalg.norm(algo.rl_buffer.next_obs[:, :30] - goals[:, None].astype(np.float32), axis=-1)
    np.testing.assert_allclose(algo.rl_buffer.rewards[:, :30], -dist, atol=1e-5)


@pytest.mark.parametrize("prior, posterior, extra", [(40, 20, 60), (30, 0, 20), (20, 20, 0)])
def test_iteration_collection_phases(tmp_path, prior, posterior, extra):
    overrides = [BIG_BUFFER, f"num_steps_prior={prior}", f"num_steps_posterior={posterior}",
                 f"num_extra_rl_steps_posterior={extra}", "num_tasks_sample=4"]
    trainer = make_trainer("point-robot", tmp_path, overrides=overrides)
    algo = trainer.algorithm
    algo.collect_initial_data()
    steps_after_initial = algo.env_steps
    assert steps_after_initial == 40 * 20

    episodes = lambda n: -(-n // 20)   # 20-step episodes, the last one cut at the budget
    sampled = record_sampled_tasks(algo)
    infer_calls = []
    original_infer = algo.agent.infer_posterior
    algo.agent.infer_posterior = lambda context: (infer_calls.append(context.shape), original_infer(context))[1]
    algo.collect_iteration_data()
    assert len(sampled) == 4 and set(sampled) <= set(range(40))

    per_sample_rl = prior + posterior + extra
    per_sample_enc = prior + posterior
    assert algo.env_steps == steps_after_initial + len(sampled) * per_sample_rl
    for task in range(40):
        count = sampled.count(task)
        assert algo.rl_buffer.sizes[task] == 20 + count * per_sample_rl, task
        # the encoder buffer is cleared whenever the task is sampled: only its latest prior+posterior data
        assert algo.enc_buffer.sizes[task] == (per_sample_enc if count else 20), task
    # the encoder buffer of a sampled task holds exactly the prior+posterior part of its latest collection
    last = sampled[-1]
    size = int(algo.rl_buffer.sizes[last])
    latest = slice(size - per_sample_rl, size - per_sample_rl + per_sample_enc)
    np.testing.assert_array_equal(algo.enc_buffer.obs[last, :per_sample_enc], algo.rl_buffer.obs[last, latest])
    # the belief is re-inferred after every posterior and extra-RL episode, never during prior collection
    assert len(infer_calls) == len(sampled) * (episodes(posterior) + episodes(extra))
    assert all(shape[0] == 1 for shape in infer_calls)


def test_posterior_collection_reads_the_encoder_buffer(tmp_path):
    """The context of the posterior update comes from the task's encoder buffer (sparse reward on sparse envs)."""
    trainer = make_trainer("sparse-point-robot", tmp_path, overrides=[BIG_BUFFER, "num_tasks_sample=1"])
    algo = trainer.algorithm
    algo.collect_initial_data()
    sampled = record_sampled_tasks(algo)
    contexts = []
    original = algo.sample_task_context
    algo.sample_task_context = lambda t: (contexts.append((t, original(t))), contexts[-1][1])[1]
    algo.collect_iteration_data()
    assert len(sampled) == 1
    task = sampled[0]
    assert contexts and all(t == task for t, _ in contexts)
    enc_obs = {tuple(row) for row in algo.enc_buffer.obs[task, :algo.enc_buffer.sizes[task]].tolist()}
    for _, context in contexts:
        assert context.shape == (1, algo.protocol.embedding_batch_size, 2 + 2 + 1)
        assert {tuple(row) for row in context[0, :, :2].tolist()} <= enc_obs
        rewards = context[0, :, 4].numpy()
        assert np.all((rewards == 0) | ((rewards > 0.8 - 1e-6) & (rewards <= 1)))   # sparse, never dense


def test_collect_data_takes_exactly_its_budget_and_clears_context():
    env = make_env("point-robot", seed=0)
    agent = RecordingAgent(2, 2, policy="random")
    from algos.core.buffers import MultiTaskReplayBuffer
    rl, enc = MultiTaskReplayBuffer(40, 200, 2, 2), MultiTaskReplayBuffer(40, 200, 2, 2)
    n = collect_data(env, agent, 7, 45, 20, rl, enc, update_posterior=False, add_to_enc_buffer=False,
                     sample_task_context=None)
    assert n == 45 and rl.sizes[7] == 45 and enc.sizes[7] == 0 and rl.sizes.sum() == 45
    assert agent.events[0] == ("clear",)
    assert env.unwrapped.task_idx == 7
    # episodes of 20, 20 and 5: the last is cut at the budget, a time limit, so no transition is terminal
    assert sum(e[0] == "end_episode" for e in agent.events) == 3
    assert rl.episode_starts[7, :45].nonzero()[0].tolist() == [0, 20, 40] and not rl.terminals[7, :45].any()
    assert not any(e[0] == "update" for e in agent.events)   # training rollouts do not feed the online context


def test_rollout_path_fields():
    env = make_env("sparse-point-robot", seed=0)
    env.unwrapped.reset_task(4)
    agent = RecordingAgent(2, 2, policy="to_goal", env=env)
    path = rollout(env, agent, 20, deterministic=True, accum_context=True, context_uses_sparse_reward=True)
    assert {k: v.shape for k, v in path.items()} == {
        "obs": (20, 2), "actions": (20, 2), "rewards": (20,), "sparse_rewards": (20,), "next_obs": (20, 2),
        "terminals": (20,), "successes": (20,)}
    assert not path["successes"].any()  # the point robot reports no success: never counted as one
    np.testing.assert_array_equal(path["obs"][0], [0, 0])
    np.testing.assert_array_equal(path["obs"][1:], path["next_obs"][:-1])
    assert np.all(path["rewards"] <= 0) and path["sparse_rewards"].max() > 0.8
    updates = [e for e in agent.events if e[0] == "update"]
    np.testing.assert_allclose([u[1] for u in updates], path["sparse_rewards"], atol=1e-6)
    # the environment's info holds the true goal; the agent's context gets only where the episode ends
    env.reset()
    assert "task" in env.step(np.zeros(2, dtype=np.float32))[4]
    assert [u[5] for u in updates] == [{"truncated": t == 19} for t in range(20)]
    assert all(e == ("act", True) for e in agent.events if e[0] == "act")


def test_num_eval_episodes():
    assert num_eval_episodes(60, 20) == 3
    assert num_eval_episodes(400, 20) == 20
    assert num_eval_episodes(600, 200) == 3
    assert num_eval_episodes(10, 20) == 1
