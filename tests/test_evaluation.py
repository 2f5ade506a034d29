"""Meta-test evaluation bookkeeping (docs/PROTOCOL.md#meta-test-evaluation) and the oracle's analytic optima
(docs/PROTOCOL.md#known-optima-and-limits)."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from algos.core.buffers import MultiTaskReplayBuffer
from algos.core.evaluation import evaluate, meta_test_episodes
from algos.core.sampler import collect_data, longest_trial
from algos.oracle import OracleAgent, OracleConfig
from algos.core.config import ConfigError
from envs_glue import make_env
from tests.conftest import RecordingAgent, make_trainer, record_trial_tasks


class EndsEarly(gym.Wrapper):
    """point-robot whose episodes end after ``lengths[task]`` steps (a body that falls, in a MuJoCo locomotion task)."""

    def __init__(self, env, lengths: dict[int, int]):
        super().__init__(env)
        self.lengths, self.steps = lengths, 0

    def reset(self, **kwargs):
        self.steps = 0
        return self.env.reset(**kwargs)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.steps += 1
        return obs, reward, terminated or self.steps >= self.lengths.get(self.env.unwrapped.task_idx, 10**9), \
            truncated, info


def test_a_trial_runs_whole_episodes_until_it_holds_the_steps_per_eval():
    # PEARL's collect_paths: episodes of 7 steps, 60 steps per trial -> 9 episodes (63 transitions), the last scored
    env = EndsEarly(make_env("point-robot", seed=0), {41: 7})
    agent = RecordingAgent(2, 2, policy="random")
    env.unwrapped.reset_task(41)
    episodes = list(meta_test_episodes(env, agent, num_steps=60, num_exp_traj_eval=2, max_path_length=20,
                                       sparse_rewards=False))
    assert [len(e.scored_rewards) for e in episodes] == [7] * 9
    assert [e.exploring for e in episodes] == [True, True] + [False] * 7
    assert [e.adapted for e in episodes] == [False] + [True] * 8
    assert agent.context.shape[1] == 63 <= longest_trial(60, 20, episodes_end_early=True)

    # trials of unequal length: task 41's has 9 episodes, task 47's runs full-length ones, 3
    result = evaluate(env, agent, [41, 47], 60, 2, num_repeats=2, max_path_length=20, sparse_rewards=False)
    assert result.episode_returns.shape == (2, 2, 9)
    assert np.isnan(result.episode_returns[1, :, 3:]).all() and not np.isnan(result.episode_returns[0]).any()
    assert result.env_steps == 2 * 63 + 2 * 60
    last = [result.episode_returns[0, :, 8], result.episode_returns[1, :, 2]]  # each trial's own last episode
    assert result.per_task_final_returns == pytest.approx([float(np.mean(r)) for r in last])
    assert result.online_returns == pytest.approx(result.episode_returns[:, :, :3].mean(axis=(0, 1)).tolist())


def test_an_in_context_agent_collects_in_trials_of_the_steps_per_eval():
    env = EndsEarly(make_env("point-robot", seed=0), {3: 7})
    agent = RecordingAgent(2, 2, policy="random")
    buffers = [MultiTaskReplayBuffer(5, 1000, 2, 2) for _ in range(2)]
    collected = collect_data(env, agent, 3, 130, 20, *buffers, update_posterior=False, add_to_enc_buffer=False,
                             sample_task_context=None, trial_steps=60)
    assert collected == 130  # 18 episodes of 7, then one cut at the budget after 4 steps
    rl = buffers[0]
    ends = rl.terminals[3, :130].nonzero()[0]
    assert ends.tolist() == [7 * i + 6 for i in range(18)]   # the cut episode's last step is not a termination
    # the context is cleared after the 9th episode (63 transitions), as a meta-test trial ends
    clears = [i for i, event in enumerate(agent.events) if event == ("clear",)]
    updates_before_second_clear = sum(event[0] == "update" for event in agent.events[clears[0]:clears[1]])
    assert len(clears) == 3 and updates_before_second_clear == 63


def split_episodes(events: list[tuple], episode_length: int):
    """Split one repeat's events (after its clear) into per-episode lists of (act flags, update events, adapted)."""
    episodes = []
    i = 0
    while i < len(events):
        acts, updates = [], []
        for _ in range(episode_length):
            assert events[i][0] == "act", events[i]
            acts.append(events[i][1])
            assert events[i + 1][0] == "update", events[i + 1]
            updates.append(events[i + 1])
            i += 2
        assert events[i] == ("end_episode",)
        i += 1
        adapted = i < len(events) and events[i][0] == "adapt"
        if adapted:
            adapt_event = events[i]
            i += 1
            assert events[i][0] == "infer"      # MetaAgent.adapt encodes the context collected so far
            i += 1
        else:
            adapt_event = None
        episodes.append((acts, updates, adapt_event))
    return episodes


def split_repeats(events: list[tuple]) -> list[list[tuple]]:
    repeats = []
    for event in events:
        if event == ("clear",):
            repeats.append([])
        else:
            repeats[-1].append(event)
    return repeats


@pytest.mark.parametrize("steps_per_eval, num_exp", [(60, 1), (100, 2), (80, 0), (60, 2)])
def test_evaluation_call_sequence(steps_per_eval, num_exp):
    env = make_env("point-robot", seed=0)
    agent = RecordingAgent(2, 2, policy="random")
    tasks = [41, 47]
    result = evaluate(env, agent, tasks, steps_per_eval, num_exp, num_repeats=2, max_path_length=20,
                      sparse_rewards=False)
    num_episodes = steps_per_eval // 20
    repeats = split_repeats(agent.events)
    assert len(repeats) == len(tasks) * 2          # context cleared once per task and repeat
    assert result.episode_returns.shape == (2, 2, num_episodes)
    assert result.exploration_episodes == list(range(num_exp))
    assert result.env_steps == len(tasks) * 2 * num_episodes * 20
    for r, events in enumerate(repeats):
        episodes = split_episodes(events, 20)
        assert len(episodes) == num_episodes
        for e, (acts, updates, adapt_event) in enumerate(episodes):
            # exploration episodes sample, later ones act deterministically
            assert acts == [e >= num_exp] * 20
            # adapt() after the last exploration episode and after every later one, never before
            if e >= num_exp - 1:
                assert adapt_event == ("adapt", 20 * (e + 1)), (e, adapt_event)  # sees every step so far
            else:
                assert adapt_event is None, e
            # each update carries a well-formed transition; returns are the sums of the fed rewards
            for a, b in zip(updates, updates[1:]):
                np.testing.assert_array_equal(a[3], b[2])
            assert result.episode_returns[r // 2, r % 2, e] == pytest.approx(sum(u[1] for u in updates), abs=1e-4)
    # the score is the final episode's return, averaged over repeats then tasks
    final = result.episode_returns[:, :, -1]
    assert result.per_task_final_returns == pytest.approx(final.mean(axis=1).tolist())
    assert result.meta_test_return == pytest.approx(final.mean())
    assert result.online_returns == pytest.approx(result.episode_returns.mean(axis=(0, 1)).tolist())
    scalars = result.scalars()
    assert scalars["meta_test_return"] == result.meta_test_return
    assert sorted(k for k in scalars if k.startswith("online_return/")) == \
        sorted(f"online_return/episode_{i}" for i in range(num_episodes))


def test_evaluation_runs_in_each_held_out_task():
    env = make_env("point-robot", seed=0)
    agent = RecordingAgent(2, 2, policy="zero")   # standing still: return = 20 * -||start - goal||
    tasks = env.unwrapped.test_task_ids
    result = evaluate(env, agent, tasks, 20, 0, num_repeats=1, max_path_length=20, sparse_rewards=False)
    repeats = split_repeats(agent.events)
    for t, (task, events) in enumerate(zip(tasks, repeats)):
        start = split_episodes(events, 20)[0][1][0][2]
        expected = -20 * np.linalg.norm(start - env.unwrapped.tasks[task])
        assert result.per_task_final_returns[t] == pytest.approx(expected, abs=1e-4)


def test_no_scored_episode_is_an_error():
    env = make_env("point-robot", seed=0)
    agent = RecordingAgent(2, 2)
    with pytest.raises(ValueError, match="num_exp_traj_eval"):
        evaluate(env, agent, [45], 60, 3, 1, 20, False)


def test_sparse_env_hands_agent_sparse_rewards_only():
    env = make_env("sparse-point-robot", seed=0)
    agent = RecordingAgent(2, 2, policy="to_goal", env=env)
    result = evaluate(env, agent, [40, 44, 49], 100, 2, num_repeats=1, max_path_length=20, sparse_rewards=True)
    rewards = np.array([e[1] for e in agent.events if e[0] == "update"])
    assert len(rewards) == 3 * 100
    assert np.all((rewards == 0.0) | ((rewards > 0.8) & (rewards <= 1.0)))
    assert rewards.max() > 0.8                 # the agent did reach the goals
    # the scored return is the sparse return too
    assert result.meta_test_return == pytest.approx(rewards.reshape(3, 5, 20)[:, -1].sum(-1).mean(), abs=1e-5)


def test_oracle_point_robot_matches_analytic_optimum():
    env = make_env("point-robot", seed=123)
    agent = OracleAgent(env, OracleConfig())
    # one scored episode per repeat: 1500 episodes, standard error about 0.1
    result = evaluate(env, agent, env.unwrapped.test_task_ids, 20, 0, num_repeats=150, max_path_length=20,
                      sparse_rewards=False)
    assert abs(result.meta_test_return - (-4.60)) < 0.3, result.meta_test_return
    # and per task: from uniform starts the known-goal return is far above standing still
    assert all(-12.0 < r < -1.0 for r in result.per_task_final_returns)


def test_oracle_sparse_point_robot_ceiling():
    env = make_env("sparse-point-robot", seed=0)
    agent = OracleAgent(env, OracleConfig())
    result = evaluate(env, agent, env.unwrapped.test_task_ids, 400, 5, num_repeats=1, max_path_length=20,
                      sparse_rewards=True)
    assert result.episode_returns.shape == (10, 1, 20)
    assert result.meta_test_return == pytest.approx(13.07, abs=0.01)


def test_oracle_through_trainer_sparse(tmp_path):
    """Through the full harness: protocol evaluation (400 steps, 5 exploration episodes) every iteration."""
    trainer = make_trainer("sparse-point-robot", tmp_path, algo="oracle",
                           overrides=["num_steps_per_eval=400", "num_exp_traj_eval=5", "final_eval_repeats=2"])
    results = trainer.run()
    assert results["meta_test_return"] == pytest.approx(13.07, abs=0.01)
    assert results["final_eval"]["meta_test_return"] == pytest.approx(13.07, abs=0.01)
    assert results["final_eval"]["num_repeats"] == 2
    assert len(results["online_returns"]) == 20
    assert results["env_steps"] == 0 and results["grad_steps"] == 0 and results["parameter_count"] == 0


def test_oracle_through_trainer_point_robot(tmp_path):
    trainer = make_trainer("point-robot", tmp_path, algo="oracle", seed=42,
                           overrides=["num_iterations=1", "num_evals=2", "final_eval_repeats=100"])
    results = trainer.run()
    assert len(results["online_returns"]) == 3       # 60 steps / 20 = 3 episodes
    assert len(results["final_eval"]["per_task_final_returns"]) == 10
    assert abs(results["final_eval"]["meta_test_return"] - (-4.60)) < 0.3
    # a 2-repeat protocol figure is noisy but must be near the optimum and far above standing still (-19.67)
    assert -8.0 < results["meta_test_return"] < -2.0


def test_oracle_rejects_cheetah(tmp_path):
    with pytest.raises(ConfigError, match="point robots"):
        make_trainer("cheetah-vel", tmp_path, algo="oracle")


def test_trainer_evaluate_uses_held_out_tasks_protocol_and_seed(tmp_path):
    trainer = make_trainer("sparse-point-robot", tmp_path, algo="oracle",
                           overrides=["num_steps_per_eval=400", "num_exp_traj_eval=5"])
    agent, visited = record_trial_tasks(trainer)
    result = trainer.evaluate(eval_seed=11, num_repeats=2)
    assert visited == [t for t in range(40, 50) for _ in range(2)]
    assert result.episode_returns.shape == (10, 2, 20)
    acts = [e[1] for e in agent.events if e[0] == "act"]
    per_episode = np.array(acts).reshape(10 * 2, 20, 20)[:, :, 0]
    assert np.all(per_episode[:, :5] == False) and np.all(per_episode[:, 5:] == True)  # noqa: E712
    rewards = np.array([e[1] for e in agent.events if e[0] == "update"])
    assert np.all((rewards == 0.0) | ((rewards > 0.8) & (rewards <= 1.0)))
    assert result.meta_test_return >= 0


def test_trainer_evaluate_is_seeded(tmp_path):
    trainer = make_trainer("point-robot", tmp_path, algo="oracle")
    a = trainer.evaluate(eval_seed=3, num_repeats=2).episode_returns
    b = trainer.evaluate(eval_seed=3, num_repeats=2).episode_returns
    c = trainer.evaluate(eval_seed=4, num_repeats=2).episode_returns
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_deterministic_exploration_acts_deterministically_in_every_episode(tmp_path):
    # protocol.deterministic_exploration is oyster's evaluation (every episode deterministic): exploration still
    # ends at the same episode (adapt() after it), only how the exploration episodes act changes
    trainer = make_trainer("point-robot", tmp_path, algo="oracle",
                           overrides=["num_steps_per_eval=60", "num_exp_traj_eval=1",
                                      "protocol.deterministic_exploration=true"])
    agent = RecordingAgent(2, 2, policy="random", env=trainer.env, seed=0)
    trainer.algorithm.agent = agent
    result = trainer.evaluate(eval_seed=5, num_repeats=1)
    assert result.exploration_episodes == [0]
    acts = [e[1] for e in agent.events if e[0] == "act"]
    assert len(acts) == 10 * 3 * 20 and all(acts)
    for events in split_repeats(agent.events):
        adapts = [e for e in events if e[0] == "adapt"]
        assert [e[1] for e in adapts] == [20, 40, 60]
