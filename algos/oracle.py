"""``oracle``: an agent handed the true task. It proves the evaluation bookkeeping: run through the real
evaluation code it must reproduce the analytic known-goal optimum of the point robots (``docs/PROTOCOL.md#known-optima-and-limits``).

On the point robots it is scripted: each coordinate moves toward the goal by ``min(0.1, |gap|)`` per step,
which is optimal for ``-||position - goal||`` under a ``[-0.1, 0.1]^2`` action box. It reads the task from
the environment, so it is a reference line, never a method. There is no oracle for the other environments
(``sac-true-task`` gives their learned known-task figure).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from algos.core.agent import MetaAgent
from algos.core.algorithm import Algorithm
from algos.core.config import ConfigError, ProtocolConfig
from envs_glue.point_robot import PointRobotEnv

POINT_ROBOT_MAX_STEP = 0.1


@dataclass
class OracleConfig:
    latent_dim: int = 2  # z is the goal itself

    def validate(self) -> None:
        pass


class OracleAgent(MetaAgent):
    def __init__(self, env, config: OracleConfig):
        super().__init__(env.observation_space.shape[0], env.action_space.shape[0], config.latent_dim)
        self.env = env
        self.clear_context()

    def reset_to_prior(self, num_tasks: int) -> torch.Tensor:
        return torch.as_tensor(np.tile(self.env.unwrapped.task, (num_tasks, 1)), dtype=torch.float32)

    def infer_posterior(self, context: torch.Tensor) -> torch.Tensor:
        self.z = self.reset_to_prior(context.shape[0])
        return self.z

    @torch.no_grad()
    def get_action(self, obs: np.ndarray, deterministic: bool = False) -> tuple[np.ndarray, dict]:
        gap = self.env.unwrapped.task - np.asarray(obs, dtype=np.float64)
        # in agent units [-1, 1]: a full-speed step is 1, a final partial step is gap / 0.1
        return np.clip(gap / POINT_ROBOT_MAX_STEP, -1.0, 1.0).astype(np.float32), {}


class Oracle(Algorithm):
    """Does no training: every iteration only evaluates (the harness does that)."""

    name = "oracle"
    display_name = "oracle (true task)"
    role = "reference"
    supported_envs = ("point-robot", "sparse-point-robot")
    unsupported_reason = "the oracle exists only for the point robots, where it heads straight for the known goal"
    config_class = OracleConfig

    def __init__(self, env, protocol: ProtocolConfig, config: OracleConfig, rng: np.random.Generator,
                 bf16: bool = False, device: torch.device | str = "cpu"):
        if not isinstance(env.unwrapped, PointRobotEnv):
            raise ConfigError("the oracle exists only for the point robots (point-robot, sparse-point-robot)")
        self.env, self.protocol, self.config, self.rng = env, protocol, config, rng
        self.agent = OracleAgent(env, config)
        self.env_steps = 0
        self.grad_steps = 0

    @property
    def networks(self) -> dict:
        return {}

    def parameter_count(self) -> int:
        return 0

    def collect_initial_data(self) -> None:
        pass

    def train_iteration(self, iteration_idx: int) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "env_rng": self.env.unwrapped.np_random.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.env.unwrapped.np_random.bit_generator.state = state["env_rng"]
