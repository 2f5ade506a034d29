"""Meta-test evaluation exactly as ``docs/PROTOCOL.md#meta-test-evaluation`` defines it.

Per held-out task: clear the context; run whole episodes back to back in the task until the trial holds
``num_steps_per_eval`` transitions (``ceil(num_steps_per_eval / episode_length)`` episodes where each runs its full
length, more where episodes end early, as PEARL's ``collect_paths``), every transition fed to ``update_context``
(with the sparse reward on sparse tasks); the first ``num_exp_traj_eval`` episodes explore
(``deterministic=False``); ``adapt()`` runs after the last exploration episode and after every later one; later
episodes act deterministically. The task's score is the return of the final episode (averaged over ``num_evals``
repeats) and ``meta_test_return`` is the mean over tasks.

Where the environment reports task success (``EnvSpec.reports_success``: ``info["success"]``, Meta-World), the
scored episode succeeds when any of its steps does, and ``meta_test_success`` is the share of (task, repeat) trials
whose scored episode succeeded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import gymnasium as gym

from algos.core.agent import MetaAgent
from algos.core.sampler import num_eval_episodes, rollout


@dataclass
class EvalResult:
    meta_test_return: float
    online_returns: list[float]                 # per episode index that every trial ran, mean over tasks and repeats
    per_task_final_returns: list[float]         # per held-out task, mean over repeats
    # (num_tasks, num_repeats, most episodes of a trial); NaN after a trial's last episode where trials differ
    episode_returns: np.ndarray = field(repr=False)
    exploration_episodes: list[int] = field(default_factory=list)  # which episode indices explored
    env_steps: int = 0
    # only where the environment reports success: the share of trials whose scored episode succeeded, and per task
    meta_test_success: float | None = None
    per_task_final_success: list[float] | None = None

    def scalars(self) -> dict[str, float]:
        out = {"meta_test_return": self.meta_test_return}
        out.update({f"online_return/episode_{i}": r for i, r in enumerate(self.online_returns)})
        if self.meta_test_success is not None:
            out["meta_test_success"] = self.meta_test_success
        return out


@dataclass
class Episode:
    """One episode of a meta-test trial, as the protocol ran and scores it."""
    path: dict[str, np.ndarray]        # the rollout's arrays (``obs``, ``actions``, ``rewards``, ...), ``(T, ...)``
    exploring: bool                    # acted stochastically, before any ``adapt()``
    adapted: bool                      # ``adapt()`` ran after it (the agent's state now reflects that)
    scored_rewards: np.ndarray         # ``(T,)``: the rewards the agent saw and is scored on (sparse on sparse tasks)

    @property
    def scored_return(self) -> float:
        return float(np.sum(self.scored_rewards, dtype=np.float64))

    @property
    def succeeded(self) -> bool:
        """The task was solved at some step of the episode (Meta-World's criterion; never on environments that
        report no success)."""
        return bool(np.any(self.path["successes"]))


def meta_test_episodes(env: gym.Env, agent: MetaAgent, num_steps: int, num_exp_traj_eval: int,
                       max_path_length: int, sparse_rewards: bool,
                       deterministic_exploration: bool = False) -> Iterator[Episode]:
    """One meta-test trial in the env's current task: the context is cleared, then whole episodes run back to
    back until the trial holds ``num_steps`` transitions, every transition fed to the context; the first
    ``num_exp_traj_eval`` explore and
    ``adapt()`` follows the last of them and every later episode. Each episode is yielded after its
    ``adapt()``, so a caller can read what the agent inferred from it (evaluation sums the returns; the
    notebooks also keep attention and latents). ``deterministic_exploration`` makes the exploration episodes act
    deterministically too (``protocol.deterministic_exploration``: oyster's evaluation, not the protocol's)."""
    agent.clear_context()
    index = steps = 0
    while steps < num_steps:
        exploring = index < num_exp_traj_eval
        path = rollout(env, agent, max_path_length, deterministic=deterministic_exploration or not exploring,
                       accum_context=True,
                       context_uses_sparse_reward=sparse_rewards)
        adapted = index + 1 >= num_exp_traj_eval
        if adapted:
            agent.adapt()
        yield Episode(path, exploring, adapted, path["sparse_rewards"] if sparse_rewards else path["rewards"])
        index, steps = index + 1, steps + len(path["rewards"])


def evaluate(env: gym.Env, agent: MetaAgent, task_ids: list[int], num_steps_per_eval: int,
             num_exp_traj_eval: int, num_repeats: int, max_path_length: int, sparse_rewards: bool,
             deterministic_exploration: bool = False, reports_success: bool = False) -> EvalResult:
    fewest_episodes = num_eval_episodes(num_steps_per_eval, max_path_length)  # every episode at full length
    if not 0 <= num_exp_traj_eval < fewest_episodes:
        raise ValueError(f"num_exp_traj_eval={num_exp_traj_eval} leaves no scored episode out of {fewest_episodes}")
    trials: list[list[float]] = []  # per (task, repeat), in that order: each episode's return
    successes = np.zeros((len(task_ids), num_repeats), dtype=bool)  # of the scored (last) episode
    env_steps = 0
    for t, task in enumerate(task_ids):
        env.unwrapped.reset_task(task)
        for repeat in range(num_repeats):
            trials.append([])
            for episode in meta_test_episodes(env, agent, num_steps_per_eval, num_exp_traj_eval, max_path_length,
                                              sparse_rewards, deterministic_exploration):
                trials[-1].append(episode.scored_return)
                env_steps += len(episode.scored_rewards)
            successes[t, repeat] = episode.succeeded
    returns = np.full((len(task_ids), num_repeats, max(map(len, trials), default=0)), np.nan)
    for index, trial in enumerate(trials):
        returns[index // num_repeats, index % num_repeats, :len(trial)] = trial
    every_trial_ran = min(map(len, trials), default=0)  # the episode indices to average online (PEARL's logging too)
    final = np.array([trial[-1] for trial in trials]).reshape(len(task_ids), num_repeats).mean(axis=1)
    final_success = successes.mean(axis=1)
    return EvalResult(
        meta_test_return=float(final.mean()),
        online_returns=returns[:, :, :every_trial_ran].mean(axis=(0, 1)).tolist(),
        per_task_final_returns=final.tolist(),
        episode_returns=returns,
        exploration_episodes=list(range(num_exp_traj_eval)),
        env_steps=env_steps,
        meta_test_success=float(final_success.mean()) if reports_success else None,
        per_task_final_success=final_success.tolist() if reports_success else None,
    )
