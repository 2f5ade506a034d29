"""Shared helpers for the harness tests: tiny runs built through the real config path."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from algos.core.agent import MetaAgent
from algos.core.trainer import Trainer, build_config
from experiments.rerun_check import TIMING_METRICS

# Keys of a metrics row that legitimately differ between two identical runs.
NONDETERMINISTIC_KEYS = TIMING_METRICS

# every method that runs on Meta-World, for its smoke runs: setformer and PEARL by default, the others with
# INCONTEXT_SLOW_TESTS=1 (a smoke run on Meta-World takes minutes on a busy 2-core machine)
METAWORLD_SMOKE_METHODS = [
    pytest.param(algo, marks=pytest.mark.skipif(
        algo not in ("setformer", "pearl") and os.environ.get("INCONTEXT_SLOW_TESTS") != "1",
        reason="slow: INCONTEXT_SLOW_TESTS=1"))
    for algo in ("setformer", "pearl", "sac-no-context", "focal", "varibad", "transformer", "sac-true-task")]


@pytest.fixture(autouse=True)
def _run_in_tmp_dir(tmp_path, monkeypatch):
    """MuJoCo appends its warnings to ./MUJOCO_LOG.TXT: keep tests from writing into the repository."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _single_torch_thread():
    """Tests run small ops, fastest on one thread (and immune to another job spinning on the other core); the
    Trainer also sets the thread count, so restore it after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_trainer(env: str, run_dir: Path, algo: str = "sac-no-context", seed: int = 0,
                 overrides: list[str] | None = None) -> Trainer:
    config = build_config(env, algo, "smoke", seed, overrides or [])
    return Trainer(config, run_dir=run_dir, progress=False)


def train_smoke_cell(run_dir: Path, env: str, algo: str, seed: int = 0) -> Path:
    """A finished smoke-tier run in ``run_dir`` (results.json and checkpoint.pt), trained through the real CLI."""
    from experiments.run import main as run_main
    threads = torch.get_num_threads()  # the Trainer sets it; do not leak that into other tests
    try:
        code = run_main(["--env", env, "--algo", algo, "--tier", "smoke", "--seed", str(seed),
                         "--run-dir", str(run_dir), "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    return run_dir


def read_metrics(run_dir: Path) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def strip_nondeterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in NONDETERMINISTIC_KEYS} for row in rows]


class RecordingAgent(MetaAgent):
    """A MetaAgent that records every call the harness makes on it.

    ``policy`` decides the actions: ``"zero"`` stands still, ``"to_goal"`` moves toward the env's current goal
    (needs ``env``), ``"random"`` draws from its own generator.
    """

    def __init__(self, obs_dim: int, action_dim: int, policy: str = "zero", env=None, seed: int = 0):
        super().__init__(obs_dim, action_dim, latent_dim=3)
        self.mode, self.env = policy, env
        self.np_rng = np.random.default_rng(seed)
        self.events: list[tuple] = []
        self.clear_context()
        self.events.clear()

    def reset_to_prior(self, num_tasks: int) -> torch.Tensor:
        return torch.zeros(num_tasks, self.latent_dim)

    def infer_posterior(self, context: torch.Tensor) -> torch.Tensor:
        self.events.append(("infer", int(context.shape[1])))
        self.z = torch.full((context.shape[0], self.latent_dim), float(context.shape[1]))
        return self.z

    def clear_context(self, num_tasks: int = 1) -> None:
        self.events.append(("clear",))
        super().clear_context(num_tasks)

    def adapt(self) -> None:
        self.events.append(("adapt", int(self.context.shape[1])))
        super().adapt()

    def update_context(self, transition) -> None:
        obs, action, reward, next_obs, done, info = transition
        self.events.append(("update", float(reward), np.array(obs, dtype=np.float64),
                            np.array(next_obs, dtype=np.float64), bool(done), dict(info)))
        super().update_context(transition)

    def get_action(self, obs, deterministic: bool = False):
        self.events.append(("act", bool(deterministic)))
        if self.mode == "zero":
            action = np.zeros(self.action_dim, dtype=np.float32)
        elif self.mode == "to_goal":
            gap = self.env.unwrapped.task - np.asarray(obs, dtype=np.float64)
            action = np.clip(gap / 0.1, -1.0, 1.0).astype(np.float32)
        else:
            action = self.np_rng.uniform(-1, 1, size=self.action_dim).astype(np.float32)
        return action, {}

    def end_episode(self) -> None:
        self.events.append(("end_episode",))


def record_trial_tasks(trainer: Trainer) -> tuple["RecordingAgent", list[int]]:
    """Put a random-acting ``RecordingAgent`` into ``trainer``; the list records the task of every trial it runs
    (read when the trial clears its context)."""
    env = trainer.env
    agent = RecordingAgent(2, 2, policy="random", env=env, seed=0)
    visited: list[int] = []
    original_clear = agent.clear_context
    agent.clear_context = lambda num_tasks=1: (visited.append(env.unwrapped.task_idx), original_clear(num_tasks))
    trainer.algorithm.agent = agent
    return agent, visited
