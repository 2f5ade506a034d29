"""The outer loop: build a run from a config, meta-train, evaluate, log, checkpoint, resume, write results.

A run lives in ``runs/<env>/<algo>/<seed>-<stamp>/``: ``config.json`` (resolved), ``metrics.jsonl`` (one line
per iteration), ``tb/`` (TensorBoard events), ``checkpoint.pt`` (written atomically after every iteration) and,
at the end, ``results.json``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import threading
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

import envs_glue
from algos import algorithm_class
from algos.core.config import (RESUME_OVERRIDABLE_KEYS, ConfigError, ProtocolConfig, RunConfig, apply_overrides,
                               flatten_config, protocol_for, to_dict)
from algos.core.device import flush_subnormals, resolve_bf16, resolve_device, tune_cpu_allocator, warn_if_emulated
from algos.core.evaluation import EvalResult, evaluate
from algos.core.sampler import num_eval_episodes
from algos.core.meta_sac import TrainingDivergedError
from algos.core.io import (CheckpointError, atomic_torch_save, atomic_write_json, atomic_write_text, git_commit,
                           load_checkpoint, machine_description, read_json)
from algos.core.saved_config import upgrade_flat_config, upgrade_saved_config

FINAL_EVAL_OFFSET = 999_983  # eval seeds: seed * 1_000_003 + iteration (final: + this offset)
AGENT_WEIGHTS_FILE = "agent.pt"  # a finished run's agent weights, small enough to keep with its results
VALIDATION_EVAL_OFFSET = 500_009  # a validation evaluation: its test evaluation's seed + this offset


def build_config(env: str, algo: str, tier: str, seed: int, overrides: list[str] | None = None) -> RunConfig:
    try:
        envs_glue.env_spec(env)
        algo_cls = algorithm_class(algo)
    except ValueError as error:  # unknown names: a one-line configuration error
        raise ConfigError(str(error)) from None
    protocol = protocol_for(env, tier)
    config = RunConfig(env=env, algo=algo, tier=tier, seed=seed, protocol=protocol, agent=algo_cls.default_config(env))
    return resolve_hardware(apply_overrides(config, overrides or []))


BYTES_PER_FLOAT = 4
ACTIVATION_COPIES = 12  # a gradient step keeps about this many hidden activations per RL sample (twin Q, V, target
                        # V, policy, Q on the policy's action, forward and backward)


def memory_estimate(config: RunConfig, num_train_tasks: int, obs_dim: int, action_dim: int) -> dict[str, int]:
    """Bytes a run will hold at its peak, roughly: the two replay buffers as far as the run can fill them, and the
    activations of one gradient step."""
    p, agent = config.protocol, config.agent
    per_task = p.num_initial_steps + p.num_iterations * (p.num_steps_prior + p.num_steps_posterior
                                                         + p.num_extra_rl_steps_posterior)
    row = (2 * obs_dim + action_dim + 4) * BYTES_PER_FLOAT + 1  # obs, next obs, action, 4 scalars, episode start
    buffers = 2 * num_train_tasks * min(p.replay_buffer_size, per_task) * row
    hidden = getattr(agent, "hidden_dim", 0) * getattr(agent, "num_hidden_layers", 0)
    samples = p.meta_batch * p.batch_size
    batch = samples * (hidden * ACTIVATION_COPIES + 2 * obs_dim + action_dim + 4) * BYTES_PER_FLOAT
    context = p.meta_batch * p.embedding_batch_size * max(hidden, 256) * ACTIVATION_COPIES * BYTES_PER_FLOAT
    return {"buffers": buffers, "gradient_step": batch + context}


def available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_fits(config: RunConfig, env) -> None:
    """What only the environment can tell: settings that cannot apply to it, and whether the run fits in memory.
    Raised before anything is written."""
    spec, meta_env, p = envs_glue.env_spec(config.env), env.unwrapped, config.protocol
    if p.sparse_rewards != spec.sparse_reward:
        raise ConfigError(f"protocol.sparse_rewards={str(p.sparse_rewards).lower()} does not apply to {config.env}, "
                          f"whose reward is {'sparse' if spec.sparse_reward else 'dense'}: leave it at its default")
    if p.replay_buffer_size < meta_env.max_episode_steps:
        raise ConfigError(f"protocol.replay_buffer_size ({p.replay_buffer_size}) must hold at least one episode "
                          f"({meta_env.max_episode_steps} steps on {config.env})")
    episodes = num_eval_episodes(p.num_steps_per_eval, meta_env.max_episode_steps)
    if not p.num_exp_traj_eval < episodes:
        raise ConfigError(f"protocol.num_steps_per_eval={p.num_steps_per_eval} makes {episodes} evaluation episode(s) "
                          f"of {meta_env.max_episode_steps} steps on {config.env}, which leaves none to score after "
                          f"num_exp_traj_eval={p.num_exp_traj_eval} exploration episode(s)")
    estimate = memory_estimate(config, len(meta_env.train_task_ids), env.observation_space.shape[0],
                               env.action_space.shape[0])
    available = available_memory()
    if available is not None and sum(estimate.values()) > available:
        raise ConfigError(f"this run needs about {sum(estimate.values()) / 2**30:.1f} GiB (replay buffers "
                          f"{estimate['buffers'] / 2**30:.1f} GiB, one gradient step {estimate['gradient_step'] / 2**30:.1f}"
                          f" GiB) but this machine has {available / 2**30:.1f} GiB available: lower "
                          f"protocol.batch_size, meta_batch, embedding_batch_size or replay_buffer_size")


def semantic_config(config: RunConfig) -> dict:
    """The resolved config as a flat ``{dotted key: value}`` dict, without ``NON_SEMANTIC_KEYS``, through JSON (as
    config.json holds it)."""
    return flatten_config(json.loads(json.dumps(to_dict(config))))


def run_identity(config: RunConfig) -> dict:
    """What a checkpoint belongs to: env, algo, tier, seed and a hash of everything else that decides its numbers."""
    semantic = semantic_config(config)
    digest = hashlib.sha256(json.dumps(semantic, sort_keys=True).encode()).hexdigest()[:16]
    return {"env": config.env, "algo": config.algo, "tier": config.tier, "seed": config.seed, "config_sha256": digest}


def check_identity(state: dict, config: RunConfig, path: Path) -> None:
    """Refuse a checkpoint that is not this run's: another env, algo, tier or seed, or a config.json edited since
    the run started (checkpoints written before identities existed are trusted)."""
    saved = state.get("identity")
    if saved is None:
        return
    mine = run_identity(config)
    for key in ("env", "algo", "tier", "seed"):
        if saved[key] != mine[key]:
            raise CheckpointError(f"checkpoint {path} belongs to another run: {key} {saved[key]!r} in the checkpoint, "
                                  f"{mine[key]!r} in {path.parent / 'config.json'}")
    if saved["config_sha256"] != mine["config_sha256"]:
        now = semantic_config(config)
        defaults = default_semantic_config(config.env, config.algo, config.tier, config.seed)
        before = upgrade_flat_config(state.get("config", {}), now, defaults)
        changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
        if state.get("config") and not changed:
            return
        detail = ", ".join(f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in changed[:5]) or "hash differs"
        raise CheckpointError(f"{path.parent / 'config.json'} was edited after the run started ({detail}); the "
                              f"checkpoint was trained with the original: restore it, or start a new run with --set")


def default_semantic_config(env: str, algo: str, tier: str, seed: int) -> dict:
    """What a run of (env, algo, tier, seed) computes with when nothing is overridden, flattened: the values a saved
    config that predates a setting ran with (see ``upgrade_flat_config``)."""
    return dict(_default_semantic_config(env, algo, tier, seed))


@functools.lru_cache(maxsize=256)
def _default_semantic_config(env: str, algo: str, tier: str, seed: int) -> dict:
    return semantic_config(build_config(env, algo, tier, seed))


def resolve_hardware(config: RunConfig) -> RunConfig:
    """Resolve ``device`` and ``bf16`` from ``auto`` to what this machine runs, so config.json records them."""
    config.device = resolve_device(config.device)
    config.bf16 = resolve_bf16(config.bf16, config.device)
    return config


def config_from_dict(data: dict) -> RunConfig:
    try:
        algo_cls = algorithm_class(data["algo"])
        known = {f.name for f in dataclasses.fields(RunConfig)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown config keys {sorted(unknown)}")
        data = upgrade_saved_config(data, {f.name for f in dataclasses.fields(algo_cls.config_class)})
        protocol = ProtocolConfig(**data["protocol"])
        agent = _dataclass_from_dict(algo_cls.config_class, data["agent"])
        return RunConfig(**{**data, "protocol": protocol, "agent": agent})
    except (KeyError, TypeError) as error:
        raise ConfigError(f"saved config is invalid: {error}") from None


def _dataclass_from_dict(cls, data: dict):
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"unknown config key {key!r} for {cls.__name__}")
        default = getattr(cls(), key)
        kwargs[key] = _dataclass_from_dict(type(default), value) if dataclasses.is_dataclass(default) else value
    return cls(**kwargs)


class WallClock:
    """Keeps a run's elapsed wall time in a small file every ``interval`` seconds, from a background thread, so a
    run killed between checkpoints still counts the time of its lost partial iteration when it resumes."""

    def __init__(self, path: Path, interval: float = 10.0):
        self.path, self.interval = Path(path), interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> float:
        try:
            return float(json.loads(self.path.read_text())["elapsed_s"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0

    def start(self, started: float) -> None:
        def tick() -> None:
            while not self._stop.wait(self.interval):
                try:
                    atomic_write_json(self.path, {"elapsed_s": time.perf_counter() - started})
                except OSError:
                    return  # the checkpoint write will report a broken disk; the clock only loses precision
        self._stop.clear()
        self._thread = threading.Thread(target=tick, name="wall-clock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path | None = None, progress: bool = True,
                 tune_allocator: bool = True):
        config.validate()
        if config.device == "cuda" and not torch.cuda.is_available():
            # a run started on a GPU continues on the CPU (its math is the same); config.json will say so
            print("warning: this run was started on CUDA, which this machine does not have: it continues on the CPU",
                  file=sys.stderr)
            config.device = "cpu"
        resolve_hardware(config)  # configs saved before these settings existed say neither
        warn_if_emulated(config.bf16, config.device)
        if tune_allocator:  # off only to measure what a process with glibc's default allocator pays
            tune_cpu_allocator()
        flush_subnormals()
        self.config = config
        self.device = torch.device(config.device)
        self.progress = progress
        torch.set_num_threads(config.num_threads)
        if run_dir is None:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
            run_dir = Path(config.run_root) / config.env / config.algo / f"{config.seed}-{stamp}"
        self.run_dir = Path(run_dir)
        config.run_dir = str(self.run_dir)

        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.env = envs_glue.make_env(config.env, seed=config.seed)
        check_fits(config, self.env)
        self.algorithm = algorithm_class(config.algo)(self.env, config.protocol, config.agent, self.rng,
                                                      bf16=config.bf16, device=self.device)
        self.start_iteration = 0
        self.learning_curve: list[dict] = []
        self.elapsed = 0.0
        self.evaluation_s = 0.0  # wall time spent in meta-test evaluations, summed over segments
        self.wall_clock = WallClock(self.run_dir / "wall_time.json")
        # the code this process runs: read now, since the tree may move on before the run finishes; a resumed run
        # keeps the commits of all its segments
        self.git_commits = [git_commit()]
        # the machines of a resumed run's earlier segments (None: a checkpoint from before they were recorded)
        self.earlier_machines: list[dict | None] = []

    @classmethod
    def from_run_dir(cls, run_dir: Path | str, progress: bool = True, load_weights: bool = False,
                     overrides: list[str] | None = None) -> "Trainer":
        """The run in ``run_dir``, rebuilt from its ``config.json``: ``run(resume=True)`` continues it from its
        checkpoint. With ``load_weights`` the checkpoint's weights and replay buffers are loaded now, read-only
        (for analysis: the run's files and torch's global random state are left alone). ``overrides`` may change
        only how fast the run computes (``RESUME_OVERRIDABLE_KEYS``: threads, device), never what it computes."""
        refused = [key for key in (item.split("=", 1)[0].strip() for item in overrides or [])
                   if key not in RESUME_OVERRIDABLE_KEYS]
        if refused:
            raise ConfigError(f"a run continues with its saved config: {', '.join(refused)} cannot be changed (only "
                              f"{', '.join(sorted(RESUME_OVERRIDABLE_KEYS))} can)")
        if run_dir is None:
            raise FileNotFoundError("no run directory given (and no run was found): train one first, e.g. "
                                    "python -m experiments.run --env point-robot --algo setformer --tier quick")
        run_dir = Path(run_dir).expanduser()
        if not run_dir.is_dir():
            raise FileNotFoundError(f"run directory not found: {run_dir}")
        config_path, checkpoint_path = run_dir / "config.json", run_dir / "checkpoint.pt"
        if not config_path.exists():
            raise FileNotFoundError(f"{run_dir} holds no config.json: it is not a run directory of this project")
        weights_path = run_dir / AGENT_WEIGHTS_FILE
        if load_weights and not checkpoint_path.exists() and not weights_path.exists():
            finished = (run_dir / "results.json").exists()
            why = ("the run finished (results.json is there) but neither its checkpoint.pt nor its agent weights "
                   f"({AGENT_WEIGHTS_FILE}) are there; its scalar results are still in results.json, but weights are "
                   "needed here: rerun it or choose another run" if finished else
                   "the run has not completed an iteration yet, or it was interrupted before its first checkpoint")
            raise FileNotFoundError(f"no checkpoint.pt in {run_dir}: {why}")
        config = config_from_dict(read_json(config_path, what="run config"))
        if overrides:
            apply_overrides(config, overrides)
        trainer = cls(config, run_dir=run_dir, progress=progress)
        if load_weights and checkpoint_path.exists():
            trainer.load_checkpoint(for_resume=False)
        elif load_weights:
            trainer.load_agent_weights()
        return trainer

    # ------------------------------------------------------------------ evaluation
    @contextlib.contextmanager
    def isolated_randomness(self, seed: int):
        """Run rollouts with their own ``seed`` without shifting the training random streams: torch's generators
        (the GPU's too) are forked and the env's generator is saved and restored. Evaluation and the analysis
        notebooks use it, so they replay the same episodes and never change what training does next."""
        meta_env = self.env.unwrapped
        env_rng_state = meta_env.np_random.bit_generator.state
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                torch.manual_seed(seed)
                self.env.reset(seed=seed)
                yield
        finally:
            meta_env.np_random.bit_generator.state = env_rng_state

    def evaluate(self, eval_seed: int, num_repeats: int, split: str = "test") -> EvalResult:
        """The protocol's meta-test evaluation on the ``test`` or the ``validation`` tasks, with its own seeds."""
        p = self.config.protocol
        meta_env = self.env.unwrapped
        if split == "validation":
            eval_seed += VALIDATION_EVAL_OFFSET
        # evaluation runs in the training env (an oracle reads its task there) with its own seeds
        with self.isolated_randomness(eval_seed):
            return evaluate(self.env, self.algorithm.agent, meta_env.task_ids(split), p.num_steps_per_eval,
                            p.num_exp_traj_eval, num_repeats, meta_env.max_episode_steps, p.sparse_rewards,
                            p.deterministic_exploration, envs_glue.env_spec(self.config.env).reports_success)

    def evaluate_validation_then_test(self, eval_seed: int, num_repeats: int) -> tuple[EvalResult, EvalResult]:
        """Both evaluations of one policy. Validation runs first: the test evaluation then leaves the agent as it
        would have without validation tasks, so adding them changed no number a run computed before."""
        validation = self.evaluate(eval_seed, num_repeats, "validation")
        return validation, self.evaluate(eval_seed, num_repeats, "test")

    def wall_time_split(self) -> dict[str, float]:
        """``wall_time_s`` by phase: collection, gradient steps, the per-iteration evaluations, and the rest
        (checkpoints, logging). The low-noise final evaluation comes after and is timed on its own."""
        split = {"collection_s": 0.0, "gradient_s": 0.0, **getattr(self.algorithm, "timings", {}),
                 "evaluation_s": self.evaluation_s}
        split["other_s"] = max(0.0, self.elapsed - sum(split.values()))
        return split

    # ------------------------------------------------------------------ checkpoints
    def eval_seed(self, offset: int) -> int:
        """The environment seed of an evaluation: the run's seed spread out, plus the evaluation's own offset (the
        iteration, ``FINAL_EVAL_OFFSET`` for the final one), so no two evaluations or runs share episodes."""
        return self.config.seed * 1_000_003 + offset

    def final_evaluation(self, num_repeats: int | None = None, split: str = "test") -> EvalResult:
        """The low-noise evaluation of the final policy: its own seeds, ``final_eval_repeats`` repeats unless told."""
        p = self.config.protocol
        return self.evaluate(self.eval_seed(FINAL_EVAL_OFFSET), num_repeats or p.final_eval_repeats, split)

    def machines(self) -> list[dict | None]:
        """The machine of each segment of the run, in order: a segment resumed on the machine before it adds none."""
        current = machine_description(self.device)
        earlier = self.earlier_machines
        return earlier + ([] if earlier and earlier[-1] == current else [current])

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def save_checkpoint(self, iteration: int) -> None:
        atomic_torch_save(self.checkpoint_path, {
            "iteration": iteration, "algorithm": self.algorithm.state_dict(), "torch_rng": torch.get_rng_state(),
            "learning_curve": self.learning_curve, "elapsed": self.elapsed, "git_commits": self.git_commits,
            "machines": self.machines(),
            "evaluation_s": self.evaluation_s, "identity": run_identity(self.config),
            "config": semantic_config(self.config),
            **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
        })

    def save_agent_weights(self) -> None:
        """The finished agent's weights (policy and task inference, fp32, no critic, optimiser or replay data; 1-2
        MB), kept beside results.json so a finished run can be evaluated again on any tasks without retraining."""
        atomic_torch_save(self.run_dir / AGENT_WEIGHTS_FILE, {
            "agent": self.algorithm.agent.state_dict(), "identity": run_identity(self.config),
            "config": semantic_config(self.config)})

    def load_agent_weights(self) -> None:
        """Load a finished run's agent weights: evaluation and acting work as after training; what needs the
        replay buffers or the critic (resuming, replay-data probes) needs the checkpoint instead."""
        path = self.run_dir / AGENT_WEIGHTS_FILE
        state = load_checkpoint(path, required=("agent",))
        check_identity(state, self.config, path)
        self._load_networks(self.algorithm.agent, state["agent"], path)

    def _load_networks(self, target, state: dict, path: Path) -> None:
        """``target.load_state_dict(state)``; a state of another method's networks is one clear error naming
        ``path``."""
        try:
            target.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as error:  # shapes or keys of another method's networks
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CheckpointError(f"{path} does not fit this run's {self.config.algo} networks "
                                  f"({first_line})") from None

    def load_checkpoint(self, for_resume: bool = True) -> None:
        """Load the run's last checkpoint. ``for_resume=False`` only restores the algorithm's state (weights,
        buffers, counters) and touches neither the run's files nor torch's global random state: for analysis."""
        state = load_checkpoint(self.checkpoint_path)
        check_identity(state, self.config, self.checkpoint_path)
        self._load_networks(self.algorithm, state["algorithm"], self.checkpoint_path)
        self.learning_curve = state["learning_curve"]
        # a kill between checkpoints loses the partial iteration's work, not its time: the clock file has it
        self.elapsed = max(state["elapsed"], self.wall_clock.read() if for_resume else 0.0)
        self.evaluation_s = state.get("evaluation_s", 0.0)
        self.start_iteration = state["iteration"] + 1
        if for_resume:
            earlier = list(state.get("git_commits", []))
            self.git_commits = earlier + [c for c in self.git_commits if c not in earlier]
            self.earlier_machines = list(state.get("machines", [None]))
            torch.set_rng_state(state["torch_rng"])
            if self.device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            # the checkpoint's learning curve is the complete record: rewrite the metrics file from it, which drops
            # rows written after the checkpoint and repairs a line cut short or lost by a kill between the writes
            atomic_write_text(self.run_dir / "metrics.jsonl",
                              "".join(json.dumps(row) + "\n" for row in self.learning_curve))

    # ------------------------------------------------------------------ the loop
    def run(self, resume: bool = False, on_iteration: Callable[[dict], None] | None = None) -> dict:
        """Meta-train (from the checkpoint with ``resume``), then evaluate and write ``results.json``; returns the
        results. ``on_iteration`` receives each iteration's metrics row once it is checkpointed (a sweep reports
        it to its scheduler, which may stop the run there by raising)."""
        from torch.utils.tensorboard import SummaryWriter

        cfg = self.config
        if not resume and any((self.run_dir / name).exists() for name in ("checkpoint.pt", "metrics.jsonl")):
            raise CheckpointError(f"run dir {self.run_dir} already holds a run; continue it with "
                                  f"--resume {self.run_dir} or choose another --run-dir")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.run_dir.glob(".*.tmp"):  # an atomic write cut short by a kill (up to a checkpoint's size)
            leftover.unlink()
        atomic_write_json(self.run_dir / "config.json", to_dict(cfg))
        if resume:
            self.load_checkpoint()
        writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=self.start_iteration)
        started = time.perf_counter() - self.elapsed
        self.wall_clock.start(started)
        try:
            self._train(writer, started, on_iteration)
        except TrainingDivergedError as error:
            done = self.learning_curve[-1]["iteration"] if self.learning_curve else None
            truth = (f"the last checkpoint (after iteration {done}) is intact, but resuming would repeat the same "
                     f"steps" if done is not None else "no checkpoint was written (the first iteration diverged)")
            raise TrainingDivergedError(f"{error}. The run stops here; {truth}: start a new run with a lower "
                                        f"agent.lr instead") from None
        finally:
            self.wall_clock.stop()
            writer.close()
        return self.finish()

    def _train(self, writer, started: float, on_iteration: Callable[[dict], None] | None) -> None:
        cfg, p = self.config, self.config.protocol
        if self.start_iteration == 0:
            self.algorithm.collect_initial_data()
        bar = tqdm(range(self.start_iteration, p.num_iterations), initial=self.start_iteration,
                   total=p.num_iterations, desc=f"{cfg.algo} {cfg.env} seed {cfg.seed}", disable=not self.progress,
                   dynamic_ncols=True)
        for iteration in bar:
            scalars = dict(self.algorithm.train_iteration(iteration))
            if (iteration + 1) % p.eval_interval == 0 or iteration == p.num_iterations - 1:
                evaluation_started = time.perf_counter()
                validation, result = self.evaluate_validation_then_test(self.eval_seed(iteration), p.num_evals)
                self.evaluation_s += time.perf_counter() - evaluation_started
                scalars.update(result.scalars())
                scalars["validation_return"] = validation.meta_test_return
                if validation.meta_test_success is not None:
                    scalars["validation_success"] = validation.meta_test_success
                bar.set_postfix(meta_test_return=f"{result.meta_test_return:.3f}")
            self.elapsed = time.perf_counter() - started
            row = {"iteration": iteration, "env_steps": self.algorithm.env_steps,
                   "grad_steps": self.algorithm.grad_steps, "wall_time_s": self.elapsed, **scalars}
            self.learning_curve.append(row)
            for key, value in scalars.items():
                writer.add_scalar(key, value, global_step=iteration)
            writer.add_scalar("env_steps", self.algorithm.env_steps, global_step=iteration)
            writer.flush()
            self.save_checkpoint(iteration)
            with open(self.run_dir / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
            if on_iteration is not None:
                on_iteration(row)
        bar.close()

    def finish(self) -> dict:
        cfg, p = self.config, self.config.protocol
        last = next((row for row in reversed(self.learning_curve) if "meta_test_return" in row), {})
        final_eval = None
        # phases of wall_time_s, and the low-noise final evaluation that follows it
        wall_time_split = self.wall_time_split()
        if p.final_eval_repeats > 0:
            started = time.perf_counter()
            validation, result = self.evaluate_validation_then_test(self.eval_seed(FINAL_EVAL_OFFSET),
                                                                    p.final_eval_repeats)
            wall_time_split["final_evaluation_s"] = time.perf_counter() - started
            final_eval = {"meta_test_return": result.meta_test_return, "num_repeats": p.final_eval_repeats,
                          "online_returns": result.online_returns,
                          "per_task_final_returns": result.per_task_final_returns,
                          # the figure every choice of settings reads (docs/PROTOCOL.md#selection-rule)
                          "validation_return": validation.meta_test_return,
                          "per_validation_task_final_returns": validation.per_task_final_returns}
            if result.meta_test_success is not None:  # environments that report success (EnvSpec.reports_success)
                final_eval.update({"meta_test_success": result.meta_test_success,
                                   "per_task_final_success": result.per_task_final_success,
                                   "validation_success": validation.meta_test_success})
        results = {
            "env": cfg.env, "algo": cfg.algo, "tier": cfg.tier, "seed": cfg.seed,
            "meta_test_return": last.get("meta_test_return"),
            "validation_return": last.get("validation_return"),
            **({key: last.get(key) for key in ("meta_test_success", "validation_success")}
               if "meta_test_success" in last else {}),
            "online_returns": [last[k] for k in sorted((k for k in last if k.startswith("online_return/")),
                                                       key=lambda k: int(k.rsplit("_", 1)[1]))],
            "final_eval": final_eval,
            "learning_curve": [{k: row[k] for k in ("iteration", "env_steps", "grad_steps", "wall_time_s",
                                                     "meta_test_return", "validation_return", "meta_test_success",
                                                     "validation_success") if k in row}
                               for row in self.learning_curve],
            "env_steps": self.algorithm.env_steps, "grad_steps": self.algorithm.grad_steps,
            "wall_time_s": self.elapsed, "wall_time_split_s": wall_time_split,
            "parameter_count": self.algorithm.parameter_count(),
            # the commit the run started at; ``git_commits`` lists more when resumed at other ones
            "git_commit": self.git_commits[0], "git_commits": self.git_commits,
            # the machine it finished on; ``machines`` lists each segment's when resumed on others
            "machine": machine_description(self.device), "machines": self.machines(), "config": to_dict(cfg),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.save_agent_weights()
        atomic_write_json(self.run_dir / "results.json", results)
        self.wall_clock.path.unlink(missing_ok=True)  # only a resume needs it
        if final_eval is not None:  # the low-noise figure beside the protocol's curve in TensorBoard
            from torch.utils.tensorboard import SummaryWriter
            with SummaryWriter(log_dir=str(self.run_dir / "tb")) as writer:
                writer.add_scalar("final_eval/meta_test_return", final_eval["meta_test_return"],
                                  global_step=max(0, p.num_iterations - 1))
        return results


