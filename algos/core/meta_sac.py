"""The shared meta-training algorithm: data collection (``docs/PROTOCOL.md#collection``) and the SAC update with a task latent.

Every context-based method in this project is a :class:`MetaSACAlgorithm` whose agent encodes context into
``z``. A method adds its own encoder losses by overriding :meth:`MetaSACAlgorithm.encoder_losses`; the SAC
losses below are written once:

- ``Q_i(o, a, z)`` regresses ``r * reward_scale + (1 - done) * discount * V_target(o', z)``; ``z`` is *not*
  detached here, so the encoder learns from the critic and is stepped with it.
- ``V(o, z.detach())`` regresses ``min_i Q_i(o, a~pi, z.detach()) - alpha log pi``.
- ``pi(.|o, z.detach())`` minimises ``alpha log pi - min_i Q_i`` plus mean/std regularisers.
- ``alpha``, the entropy temperature, is 1 (the reward scale sets the trade-off, as in the reference) unless
  ``learn_temperature``: then ``log alpha`` minimises ``-log alpha * (log pi + target entropy)``.
"""
from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from algos.core.agent import MetaAgent
from algos.core.algorithm import Algorithm
from algos.core.buffers import MultiTaskReplayBuffer, RLBatch, sample_context, sample_rl_batch
from algos.core.config import ConfigError, ProtocolConfig
from algos.core.sampler import collect_data, longest_trial
from models.kernels import bf16_autocast
from models.mlp import NETWORK_INITS, build_qf, build_vf, count_parameters, rlkit_init_


class TrainingDivergedError(RuntimeError):
    """A training loss became NaN or infinite."""


@dataclass
class MetaSACConfig:
    """Hyperparameters common to every SAC-based method (``docs/PROTOCOL.md#baselines``)."""
    latent_dim: int = 5
    hidden_dim: int = 300          # actor/critic width
    num_hidden_layers: int = 3
    lr: float = 3e-4
    encoder_lr: float = 0.0        # the encoder optimiser's lr (context encoder, heads, task embeddings); 0: lr
    tau: float = 0.005             # soft target update of V
    policy_mean_reg: float = 1e-3
    policy_std_reg: float = 1e-3
    policy_pre_tanh_reg: float = 0.0
    critic_uses_dense_reward: bool = True  # on sparse tasks the reference trains the critic on dense rewards
    network_init: str = "torch"    # the MLPs' initialisation: "torch" (PyTorch's default) or "rlkit" (PEARL's code)
    # SAC's entropy temperature, on the scaled reward: fixed at 1 (the reference's SAC, whose reward_scale sets it),
    # or learned (Haarnoja et al. 2018b) from 1 so the policy's entropy holds at target_entropy_per_dim x action_dim
    learn_temperature: bool = False
    target_entropy_per_dim: float = -1.0

    def validate(self) -> None:
        for name in ("latent_dim", "hidden_dim", "num_hidden_layers"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"agent.{name} must be positive, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 < self.tau <= 1:
            raise ConfigError(f"agent.lr must be > 0 and agent.tau in (0, 1]; got lr={self.lr}, tau={self.tau}")
        if self.encoder_lr < 0:
            raise ConfigError(f"agent.encoder_lr must be >= 0 (0: the same as agent.lr), got {self.encoder_lr}")
        for name in ("policy_mean_reg", "policy_std_reg", "policy_pre_tanh_reg"):
            if getattr(self, name) < 0:
                raise ConfigError(f"agent.{name} must be >= 0, got {getattr(self, name)}")
        if not math.isfinite(self.target_entropy_per_dim):
            raise ConfigError(f"agent.target_entropy_per_dim must be finite, got {self.target_entropy_per_dim}")
        if self.network_init not in NETWORK_INITS:
            raise ConfigError(f"agent.network_init must be one of {list(NETWORK_INITS)}, got {self.network_init!r}")


def sac_architecture(agent: dict) -> str:
    """The SAC networks of a saved ``agent`` config, as tables describe them."""
    return f"actor and critic {agent['num_hidden_layers']} x {agent['hidden_dim']} (twin Q, V, target V)"


class TwinCritic(nn.Module):
    """Twin Q functions, a state value function and its soft-updated target."""

    def __init__(self, obs_dim: int, action_dim: int, latent_dim: int, hidden_dim: int, num_hidden_layers: int):
        super().__init__()
        self.qf1 = build_qf(obs_dim, action_dim, latent_dim, hidden_dim, num_hidden_layers)
        self.qf2 = build_qf(obs_dim, action_dim, latent_dim, hidden_dim, num_hidden_layers)
        self.vf = build_vf(obs_dim, latent_dim, hidden_dim, num_hidden_layers)
        self.target_vf = copy.deepcopy(self.vf).requires_grad_(False)

    def min_q(self, obs, actions, z):
        return torch.min(self.qf1(obs, actions, z), self.qf2(obs, actions, z))

    @torch.no_grad()
    def soft_update_target(self, tau: float) -> None:
        for target, source in zip(self.target_vf.parameters(), self.vf.parameters()):
            target.lerp_(source, tau)


def check_one_optimizer_each(modules: list[nn.Module], optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """Every trainable parameter is stepped by exactly one optimiser: one left out never trains, one in two is
    stepped twice. (The target V is frozen, so it needs none.)"""
    owners: dict[int, list[str]] = {}
    for key, optimizer in optimizers.items():
        for group in optimizer.param_groups:
            for param in group["params"]:
                owners.setdefault(id(param), []).append(key)
    for module in modules:
        for name, param in module.named_parameters():
            if param.requires_grad and len(owners.get(id(param), [])) != 1:
                where = owners.get(id(param)) or "no optimiser"
                raise RuntimeError(f"parameter {type(module).__name__}.{name} is stepped by {where}: every trainable "
                                   "parameter needs exactly one optimiser")


class MetaSACAlgorithm(Algorithm):
    """Collection + SAC meta-training around a :class:`MetaAgent`. Subclasses set ``config_class`` and their facts
    (``name``, ...: :class:`~algos.core.algorithm.Algorithm`) and implement ``make_agent``; context encoders also
    override ``encoder_losses``. Every agent module other than the policy (context encoder, auxiliary heads,
    task embeddings) is stepped with the critic by the encoder optimiser: a new head trains without being listed."""

    config_class = MetaSACConfig
    sequential_context = False  # True for order-dependent encoders: context = consecutive trajectories
    # True for agents that read their own transitions as they act (a black-box history model): collection runs
    # them in trials as a meta-test trial runs them instead of re-inferring from the encoder buffer
    acts_in_context = False
    # skip Q's weight gradients in the policy/V pass (identical math, which tests/test_device.py checks against False)
    freeze_q_in_policy_step = True

    def __init__(self, env, protocol: ProtocolConfig, config: MetaSACConfig, rng: np.random.Generator,
                 bf16: bool = False, device: torch.device | str = "cpu"):
        self.env, self.protocol, self.config, self.rng, self.bf16 = env, protocol, config, rng, bf16
        self.device = torch.device(device)
        meta_env = env.unwrapped
        self.obs_dim = env.observation_space.shape[0]
        self.action_dim = env.action_space.shape[0]
        self.max_path_length = meta_env.max_episode_steps
        # the most transitions one meta-test trial holds (an in-context agent's context length)
        self.trial_length = longest_trial(protocol.num_steps_per_eval, self.max_path_length,
                                          meta_env.episodes_end_early)
        self.train_tasks = np.asarray(meta_env.train_task_ids)
        buffer_args = (len(self.train_tasks), protocol.replay_buffer_size, self.obs_dim, self.action_dim)
        self.rl_buffer = MultiTaskReplayBuffer(*buffer_args)
        self.enc_buffer = MultiTaskReplayBuffer(*buffer_args)
        # every use of the agent starts with clear_context(), which makes its context and prior latent on its device
        self.agent = self.make_agent().to(self.device)
        self.critic = TwinCritic(self.obs_dim, self.action_dim, config.latent_dim, config.hidden_dim,
                                 config.num_hidden_layers).to(self.device)
        if config.network_init == "rlkit":
            rlkit_init_(self.agent)
            rlkit_init_(self.critic)
            self.critic.target_vf.load_state_dict(self.critic.vf.state_dict())  # the target starts as V's copy
        # log of the learned entropy temperature (a scalar), None when it is fixed at 1
        self.log_temperature = (torch.zeros((), device=self.device, requires_grad=True) if config.learn_temperature
                                else None)
        self.optimizers = self.make_optimizers()
        self.env_steps = 0
        self.grad_steps = 0
        # wall time by phase, summed over the run (checkpointed): where a run's time goes
        self.timings = {"collection_s": 0.0, "gradient_s": 0.0}

    # ------------------------------------------------------------------ to implement
    def make_agent(self) -> MetaAgent:
        raise NotImplementedError

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Parameters stepped with the critic: every trainable agent parameter outside the policy, submodules in
        registration order, then the agent's own parameters (the order the optimiser state is saved in)."""
        modules = [module for name, module in self.agent.named_children() if name != "policy"]
        params = [*(p for module in modules for p in module.parameters()), *self.agent.parameters(recurse=False)]
        return [p for p in params if p.requires_grad]

    def encoder_losses(self, tasks: np.ndarray, context: torch.Tensor, task_z: torch.Tensor,
                       batch_z: torch.Tensor, batch: RLBatch) -> dict[str, torch.Tensor]:
        """Method-specific losses on the encoder, already weighted, summed into the critic step. ``tasks`` are the
        meta-batch's task ids ``(t,)``, ``context`` ``(t, n, context_dim)``, ``task_z`` ``(t, latent)`` the encoder's
        latents, ``batch_z`` ``(t, b, latent)`` the latent each RL sample is conditioned on, and ``batch`` the RL
        batch with a leading task dimension."""
        return {}

    def batch_latents(self, tasks: np.ndarray, task_z: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The latent each RL sample is conditioned on, ``(t, b, latent)``: by default its task's encoder latent."""
        return repeat(task_z, "t d -> t b d", b=batch_size)

    def training_context(self, context: torch.Tensor) -> torch.Tensor:
        """The context a gradient step encodes (a method may subsample it); default: all of it."""
        return context

    # ------------------------------------------------------------------ construction helpers
    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        # on a GPU, one fused kernel per optimiser step instead of a few per parameter (the CPU keeps the default)
        adam = functools.partial(torch.optim.Adam, lr=self.config.lr, fused=True if self.device.type == "cuda" else None)
        optimizers = {
            "policy": adam(self.agent.policy.parameters()),
            "qf": adam([*self.critic.qf1.parameters(), *self.critic.qf2.parameters()]),
            "vf": adam(self.critic.vf.parameters()),
        }
        encoder_params = self.encoder_parameters()
        if encoder_params:
            optimizers["encoder"] = adam(encoder_params, lr=self.config.encoder_lr or self.config.lr)
        if self.log_temperature is not None:
            optimizers["temperature"] = adam([self.log_temperature])
        check_one_optimizer_each([self.agent, self.critic], optimizers)
        return optimizers

    @property
    def networks(self) -> dict[str, nn.Module]:
        return {"agent": self.agent, "critic": self.critic}

    def parameter_count(self) -> int:
        # the target V is a copy, not a learned network of its own
        return count_parameters(self.agent) + count_parameters(self.critic) - count_parameters(self.critic.target_vf)

    # ------------------------------------------------------------------ context
    def sample_task_context(self, task) -> torch.Tensor:
        tasks = np.atleast_1d(np.asarray(task))
        return sample_context(self.enc_buffer, tasks, self.protocol.embedding_batch_size, self.rng,
                              use_sparse_rewards=self.protocol.sparse_rewards,
                              use_next_obs=self.protocol.use_next_obs_in_context,
                              sequential=self.sequential_context).to(self.device)

    # ------------------------------------------------------------------ data collection
    def collect(self, task: int, num_samples: int, update_posterior: bool, add_to_enc_buffer: bool) -> int:
        if num_samples <= 0:
            return 0
        started = time.perf_counter()
        steps = collect_data(self.env, self.agent, task, num_samples, self.max_path_length, self.rl_buffer,
                             self.enc_buffer, update_posterior, add_to_enc_buffer, self.sample_task_context,
                             trial_steps=self.protocol.num_steps_per_eval if self.acts_in_context else 0,
                             context_uses_sparse_reward=self.protocol.sparse_rewards)
        self.env_steps += steps
        self.timings["collection_s"] += time.perf_counter() - started
        return steps

    def collect_initial_data(self) -> None:
        for task in self.train_tasks:
            self.collect(int(task), self.protocol.num_initial_steps, update_posterior=False, add_to_enc_buffer=True)

    def collect_iteration_data(self) -> None:
        p = self.protocol
        for task in self.rng.choice(self.train_tasks, size=p.num_tasks_sample):
            task = int(task)
            self.enc_buffer.clear(task)  # the encoder sees recent data
            self.collect(task, p.num_steps_prior, update_posterior=False, add_to_enc_buffer=True)
            self.collect_posterior(task, p.num_steps_posterior, add_to_enc_buffer=True)
            self.collect_posterior(task, p.num_extra_rl_steps_posterior, add_to_enc_buffer=False)

    def collect_posterior(self, task: int, num_samples: int, add_to_enc_buffer: bool) -> int:
        """A posterior phase of an iteration's collection (acting on the belief re-inferred after every episode);
        a method may split it, as long as the number of environment steps stays the same."""
        return self.collect(task, num_samples, update_posterior=True, add_to_enc_buffer=add_to_enc_buffer)

    # ------------------------------------------------------------------ training
    def train_iteration(self, iteration_idx: int) -> dict[str, float]:
        self.collect_iteration_data()
        started = time.perf_counter()
        num_steps = self.protocol.num_train_steps_per_itr
        names, rows = None, []
        for _ in range(num_steps):
            losses = self.train_step()
            names = names or list(losses)
            # one (num_losses,) tensor per step, read back once per iteration: no device sync per step
            rows.append(torch.stack([losses[name].detach().double() for name in names]))
        totals: dict[str, float] = {}
        if rows:
            table = torch.stack(rows).cpu().numpy()                                  # (steps, num_losses)
            finite = np.isfinite(table)
            if not finite.all():
                step, column = map(int, np.argwhere(~finite)[0])
                values = ", ".join(f"{name}={value:.4g}" for name, value in zip(names, table[step]))
                # raised before the trainer checkpoints the broken weights
                raise TrainingDivergedError(
                    f"train/{names[column]} became {table[step, column]} at gradient step "
                    f"{self.grad_steps - num_steps + step + 1} (iteration {iteration_idx}; that step's losses: {values})")
            for column, name in enumerate(names):
                total = 0.0
                for value in table[:, column]:  # summed in step order, as floats: the logged means are exact
                    total += float(value)
                totals[name] = total
        self.timings["gradient_s"] += time.perf_counter() - started
        n = max(1, num_steps)
        return {f"train/{k}": v / n for k, v in totals.items()}

    def autocast(self):
        return bf16_autocast(self.device.type, enabled=self.bf16)

    def train_step(self) -> dict[str, torch.Tensor]:
        p, c = self.protocol, self.config
        tasks = self.rng.choice(self.train_tasks, size=p.meta_batch)  # with replacement, as the reference
        context = self.training_context(self.sample_task_context(tasks))  # (tasks, n, context_dim)
        batch = sample_rl_batch(self.rl_buffer, tasks, p.batch_size, self.rng, context_uses_sparse_reward=p.sparse_rewards,
                                critic_uses_dense_reward=c.critic_uses_dense_reward).to(self.device)  # (t, b, d)
        with self.autocast():
            task_z = self.agent.infer_posterior(context)                              # (tasks, latent)
            batch_z = self.batch_latents(tasks, task_z, p.batch_size)                # (tasks, batch, latent)
            encoder_losses = self.encoder_losses(tasks, context, task_z, batch_z, batch)
        z = rearrange(batch_z, "t b d -> (t b) d")                                  # (tasks*batch, latent)
        # the task does not change within a batch row: the next state's latent is the same
        return self.sac_update(batch.flatten_tasks(), z, z, encoder_losses)

    def sac_update(self, batch: RLBatch, z: torch.Tensor, next_z: torch.Tensor,
                   encoder_losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One SAC step on flat samples (``batch`` fields ``(n, d)``), each conditioned on its latent ``z`` ``(n,
        latent)`` and bootstrapped from ``V(next_obs, next_z)``; ``encoder_losses`` (already weighted) are summed
        into the critic step, whose Q loss is the only RL gradient into the latents."""
        p, c = self.protocol, self.config
        obs, actions, next_obs, terminals, rewards = (batch.obs, batch.actions, batch.next_obs, batch.terminals,
                                                      batch.critic_rewards)
        critic, policy = self.critic, self.agent.policy

        with self.autocast():
            # Q loss: the only RL gradient into the encoder
            q1_pred = critic.qf1(obs, actions, z).float()
            q2_pred = critic.qf2(obs, actions, z).float()
            with torch.no_grad():
                target_v = critic.target_vf(next_obs, next_z).float()
                q_target = rewards * p.reward_scale + (1.0 - terminals) * p.discount * target_v
            qf_loss = F.mse_loss(q1_pred, q_target) + F.mse_loss(q2_pred, q_target)
            encoder_loss = sum(encoder_losses.values()) if encoder_losses else torch.zeros(())

        self.optimizers["qf"].zero_grad(set_to_none=True)
        if "encoder" in self.optimizers:
            self.optimizers["encoder"].zero_grad(set_to_none=True)
        (qf_loss + encoder_loss).backward()
        self.optimizers["qf"].step()
        if "encoder" in self.optimizers:
            self.optimizers["encoder"].step()

        # The policy and V losses differentiate through Q only with respect to the action: freezing Q's weights
        # for this pass skips their weight gradients (which the next Q step would zero unused). Same math.
        critic.qf1.requires_grad_(not self.freeze_q_in_policy_step)
        critic.qf2.requires_grad_(not self.freeze_q_in_policy_step)
        with self.autocast():
            z_detached = z.detach()
            pi = policy(obs, z_detached)
            min_q_new = critic.min_q(obs, pi.action, z_detached).float()
            # V loss
            v_pred = critic.vf(obs, z_detached).float()
            # the entropy term; with a fixed temperature (1) exactly log pi, so the reference's SAC computes as before
            entropy_term = (pi.log_prob if self.log_temperature is None
                            else self.log_temperature.detach().exp() * pi.log_prob)
            v_target = (min_q_new - entropy_term).detach()
            vf_loss = F.mse_loss(v_pred, v_target)
            # policy loss
            policy_loss = (entropy_term - min_q_new).mean()
            policy_reg = (c.policy_mean_reg * (pi.mean ** 2).mean() + c.policy_std_reg * (pi.log_std ** 2).mean()
                          + c.policy_pre_tanh_reg * (pi.pre_tanh ** 2).sum(-1).mean())
            policy_loss = policy_loss + policy_reg

        self.optimizers["vf"].zero_grad(set_to_none=True)
        vf_loss.backward()
        self.optimizers["vf"].step()
        critic.soft_update_target(c.tau)
        self.optimizers["policy"].zero_grad(set_to_none=True)
        policy_loss.backward()
        self.optimizers["policy"].step()
        critic.qf1.requires_grad_(True)
        critic.qf2.requires_grad_(True)
        temperature = {}
        if self.log_temperature is not None:
            # the temperature rises while the policy's entropy (-log pi) is below the target, and falls above it
            target_entropy = c.target_entropy_per_dim * self.action_dim
            temperature_loss = -(self.log_temperature * (pi.log_prob.detach().float() + target_entropy)).mean()
            self.optimizers["temperature"].zero_grad(set_to_none=True)
            temperature_loss.backward()
            self.optimizers["temperature"].step()
            temperature = {"temperature": self.log_temperature.detach().exp()}
        self.grad_steps += 1

        # tensors, not floats: reading them back would wait for the device every step
        out = {"qf_loss": qf_loss, "vf_loss": vf_loss, "policy_loss": policy_loss,
               "q_mean": q1_pred.mean(), "log_pi": pi.log_prob.mean(), **temperature}
        out.update(encoder_losses)
        return {k: v.detach() for k, v in out.items()}

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return {
            "agent": self.agent.state_dict(), "critic": self.critic.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "rl_buffer": self.rl_buffer.state_dict(), "enc_buffer": self.enc_buffer.state_dict(),
            "rng": self.rng.bit_generator.state, "env_rng": self.env.unwrapped.np_random.bit_generator.state,
            "env_steps": self.env_steps, "grad_steps": self.grad_steps, "timings": dict(self.timings),
            **({"log_temperature": self.log_temperature.detach().clone()} if self.log_temperature is not None else {}),
        }

    def load_state_dict(self, state: dict) -> None:
        self.agent.load_state_dict(state["agent"])
        self.critic.load_state_dict(state["critic"])
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state["optimizers"][key])
            for group in optimizer.param_groups:  # a checkpoint from a GPU run continues on this device's Adam
                group["fused"] = True if self.device.type == "cuda" else None
        self.rl_buffer.load_state_dict(state["rl_buffer"])
        self.enc_buffer.load_state_dict(state["enc_buffer"])
        self.rng.bit_generator.state = state["rng"]
        self.env.unwrapped.np_random.bit_generator.state = state["env_rng"]
        self.env_steps, self.grad_steps = state["env_steps"], state["grad_steps"]
        if self.log_temperature is not None:
            with torch.no_grad():
                self.log_temperature.copy_(state["log_temperature"])
        self.timings.update(state.get("timings", {}))
