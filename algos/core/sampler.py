"""The path sampler and data collection with the prior / posterior / extra-RL semantics of ``docs/PROTOCOL.md#collection``."""
from __future__ import annotations

import math

import numpy as np
import gymnasium as gym
import torch

from algos.core.agent import MetaAgent
from algos.core.buffers import MultiTaskReplayBuffer


def rollout(env: gym.Env, agent: MetaAgent, max_path_length: int, deterministic: bool = False,
            accum_context: bool = False, context_uses_sparse_reward: bool = False) -> dict[str, np.ndarray]:
    """Run one episode in the env's current task. With ``accum_context`` every transition is fed to
    ``agent.update_context``; its reward is the sparse one when ``context_uses_sparse_reward``, so an agent
    at meta-test time never sees the dense reward of a sparse task."""
    obs_list, action_list, reward_list, sparse_list, next_obs_list, terminal_list = [], [], [], [], [], []
    success_list = []  # ``info["success"]`` where the environment reports one (Meta-World); False elsewhere
    obs, _ = env.reset()
    for step in range(max_path_length):
        action, _ = agent.get_action(obs, deterministic=deterministic)
        next_obs, reward, terminated, truncated, info = env.step(action)
        sparse_reward = info.get("sparse_reward", reward)
        if accum_context:
            context_reward = sparse_reward if context_uses_sparse_reward else reward
            last = terminated or truncated or step == max_path_length - 1
            # not the environment's info: it carries the true task, which no agent may read
            agent.update_context((obs, action, context_reward, next_obs, terminated, {"truncated": last}))
        obs_list.append(obs); action_list.append(action); reward_list.append(reward)
        sparse_list.append(sparse_reward); next_obs_list.append(next_obs); terminal_list.append(terminated)
        success_list.append(bool(info.get("success", False)))
        obs = next_obs
        if terminated or truncated:
            break
    agent.end_episode()
    return {
        "obs": np.asarray(obs_list, dtype=np.float32), "actions": np.asarray(action_list, dtype=np.float32),
        "rewards": np.asarray(reward_list, dtype=np.float32),
        "sparse_rewards": np.asarray(sparse_list, dtype=np.float32),
        "next_obs": np.asarray(next_obs_list, dtype=np.float32),
        "terminals": np.asarray(terminal_list, dtype=np.float32),
        "successes": np.asarray(success_list, dtype=bool),
    }


def collect_data(env: gym.Env, agent: MetaAgent, task: int, num_samples: int, max_path_length: int,
                 rl_buffer: MultiTaskReplayBuffer, enc_buffer: MultiTaskReplayBuffer,
                 update_posterior: bool, add_to_enc_buffer: bool, sample_task_context,
                 trial_steps: int = 0, context_uses_sparse_reward: bool = False) -> int:
    """Collect exactly ``num_samples`` transitions in ``task``: episodes back to back, the last one cut at the
    budget (a time limit, not a termination). The belief starts at the prior; with
    ``update_posterior`` it is re-inferred after every episode from ``sample_task_context(task)`` (the encoder
    buffer). An agent that acts in context (``trial_steps > 0``) instead reads its own transitions as they
    happen, in trials as a meta-test trial runs them (whole episodes until the trial holds ``trial_steps``
    transitions), its context cleared before each: it never re-infers from the encoder buffer. Returns the number
    of transitions collected."""
    env.unwrapped.reset_task(task)
    agent.clear_context()
    collected = in_trial = 0
    while collected < num_samples:
        if trial_steps and in_trial >= trial_steps:
            agent.clear_context()
            in_trial = 0
        # PEARL's sampler lets the last episode run out; where episodes end early that adds a policy-dependent
        # overrun to every phase, so methods would differ in environment steps. Where they never end early the
        # budgets are whole episodes and the cut never binds.
        path = rollout(env, agent, min(max_path_length, num_samples - collected), accum_context=trial_steps > 0,
                       context_uses_sparse_reward=context_uses_sparse_reward)
        collected += len(path["rewards"])
        in_trial += len(path["rewards"])
        rl_buffer.add_path(task, path)
        if add_to_enc_buffer:
            enc_buffer.add_path(task, path)
        if update_posterior and not trial_steps:
            with torch.no_grad():
                agent.infer_posterior(sample_task_context(task))
    return collected


def num_eval_episodes(num_steps_per_eval: int, max_path_length: int) -> int:
    """The episodes of a meta-test trial where every episode runs its full length (more where episodes end early)."""
    return max(1, math.ceil(num_steps_per_eval / max_path_length))


def longest_trial(num_steps_per_eval: int, max_path_length: int, episodes_end_early: bool) -> int:
    """The most transitions a meta-test trial can hold: whole episodes run until it holds ``num_steps_per_eval``,
    so the last one can start one step short of that and run its full length where episodes can end early."""
    if episodes_end_early:
        return num_steps_per_eval - 1 + max_path_length
    return num_eval_episodes(num_steps_per_eval, max_path_length) * max_path_length
