"""The outer loop: build a run from a config, meta-train, evaluate, log, checkpoint, resume, write results.

A run lives in ``runs/<env>/<algo>/<seed>-<stamp>/``: ``config.json`` (resolved), ``metrics.jsonl`` (one line
per iteration), ``tb/`` (TensorBoard events), ``checkpoint.pt`` (written atomically after every iteration) and,
at the end, ``results.json``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import envs_glue
from algos import algorithm_class
from algos.core.config import ConfigError, ProtocolConfig, RunConfig, apply_overrides, protocol_for, to_dict
from algos.core.device import resolve_bf16, resolve_device, warn_if_slow
from algos.core.evaluation import EvalResult, evaluate
from algos.core.io import (CheckpointError, atomic_torch_save, atomic_write_json, atomic_write_text, git_commit,
                           load_checkpoint, machine_description, read_json)

FINAL_EVAL_OFFSET = 999_983  # eval seeds: seed * 1_000_003 + iteration (final: + this offset)


def build_config(env: str, algo: str, tier: str, seed: int, overrides: list[str] | None = None) -> RunConfig:
    envs_glue.env_spec(env)
    protocol = protocol_for(env, tier)
    algo_cls = algorithm_class(algo)
    config = RunConfig(env=env, algo=algo, tier=tier, seed=seed, protocol=protocol, agent=algo_cls.config_class())
    return resolve_hardware(apply_overrides(config, overrides or []))


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


class Trainer:
    def __init__(self, config: RunConfig, run_dir: Path | None = None, progress: bool = True):
        config.validate()
        if config.device == "cuda" and not torch.cuda.is_available():
            # a run started on a GPU continues on the CPU (its math is the same); config.json will say so
            print(f"warning: this run was started on CUDA, which this machine does not have: it continues on the CPU",
                  file=sys.stderr)
            config.device = "cpu"
        resolve_hardware(config)  # configs saved before these settings existed say neither
        warn_if_slow(config.bf16, config.device)
        self.config = config
        self.device = torch.device(config.device)
        self.progress = progress
        torch.set_num_threads(config.num_threads)
        if run_dir is None:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")
            run_dir = Path(config.run_root) / config.env / config.algo / f"{config.seed}-{stamp}"
        self.run_dir = Path(run_dir)
        config.run_dir = str(self.run_dir)
        self.meta_env_spec = envs_glue.env_spec(config.env)

        torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.env = envs_glue.make_env(config.env, seed=config.seed)
        self.algorithm = algorithm_class(config.algo)(self.env, config.protocol, config.agent, self.rng,
                                                      bf16=config.bf16, device=self.device)
        self.start_iteration = 0
        self.learning_curve: list[dict] = []
        self.elapsed = 0.0
        self.evaluation_s = 0.0  # wall time spent in meta-test evaluations, summed over segments
        # the code this process runs: read now, since the tree may move on before the run finishes; a resumed run
        # keeps the commits of all its segments
        self.git_commits = [git_commit()]

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

    def evaluate(self, eval_seed: int, num_repeats: int) -> EvalResult:
        p = self.config.protocol
        meta_env = self.env.unwrapped
        # evaluation runs in the training env (an oracle reads its task there) with its own seeds
        with self.isolated_randomness(eval_seed):
            return evaluate(self.env, self.algorithm.agent, meta_env.test_task_ids, p.num_steps_per_eval,
                            p.num_exp_traj_eval, num_repeats, meta_env.max_episode_steps, p.sparse_rewards)

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

    def final_evaluation(self, num_repeats: int | None = None) -> EvalResult:
        """The low-noise evaluation of the final policy: its own seeds, ``final_eval_repeats`` repeats unless told."""
        p = self.config.protocol
        return self.evaluate(self.eval_seed(FINAL_EVAL_OFFSET), num_repeats or p.final_eval_repeats)

    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def save_checkpoint(self, iteration: int) -> None:
        atomic_torch_save(self.checkpoint_path, {
            "iteration": iteration, "algorithm": self.algorithm.state_dict(), "torch_rng": torch.get_rng_state(),
            "learning_curve": self.learning_curve, "elapsed": self.elapsed, "git_commits": self.git_commits,
            "evaluation_s": self.evaluation_s,
            **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
        })

    def load_checkpoint(self, for_resume: bool = True) -> None:
        """Load the run's last checkpoint. ``for_resume=False`` only restores the algorithm's state (weights,
        buffers, counters) and touches neither the run's files nor torch's global random state: for analysis."""
        state = load_checkpoint(self.checkpoint_path)
        self.algorithm.load_state_dict(state["algorithm"])
        self.learning_curve = state["learning_curve"]
        self.elapsed = state["elapsed"]
        self.evaluation_s = state.get("evaluation_s", 0.0)
        self.start_iteration = state["iteration"] + 1
        if for_resume:
            earlier = list(state.get("git_commits", []))
            self.git_commits = earlier + [c for c in self.git_commits if c not in earlier]
            torch.set_rng_state(state["torch_rng"])
            if self.device.type == "cuda" and "cuda_rng" in state:
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
            # the checkpoint's learning curve is the complete record: rewrite the metrics file from it, which drops
            # rows written after the checkpoint and repairs a line cut short or lost by a kill between the writes
            atomic_write_text(self.run_dir / "metrics.jsonl",
                              "".join(json.dumps(row) + "\n" for row in self.learning_curve))

    # ------------------------------------------------------------------ the loop
    def run(self, resume: bool = False) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        cfg, p = self.config, self.config.protocol
        if not resume and any((self.run_dir / name).exists() for name in ("checkpoint.pt", "metrics.jsonl")):
            raise CheckpointError(f"run dir {self.run_dir} already holds a run; continue it with "
                                  f"--resume {self.run_dir} or choose another --run-dir")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.run_dir / "config.json", to_dict(cfg))
        if resume:
            self.load_checkpoint()
        writer = SummaryWriter(log_dir=str(self.run_dir / "tb"), purge_step=self.start_iteration)
        started = time.perf_counter() - self.elapsed
        if self.start_iteration == 0:
            self.algorithm.collect_initial_data()
        bar = tqdm(range(self.start_iteration, p.num_iterations), initial=self.start_iteration,
                   total=p.num_iterations, desc=f"{cfg.algo} {cfg.env} seed {cfg.seed}", disable=not self.progress,
                   dynamic_ncols=True)
        for iteration in bar:
            scalars = dict(self.algorithm.train_iteration(iteration))
            if (iteration + 1) % p.eval_interval == 0 or iteration == p.num_iterations - 1:
                evaluation_started = time.perf_counter()
                result = self.evaluate(self.eval_seed(iteration), p.num_evals)
                self.evaluation_s += time.perf_counter() - evaluation_started
                scalars.update(result.scalars())
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
        bar.close()
        writer.close()
        return self.finish()

    def finish(self) -> dict:
        cfg, p = self.config, self.config.protocol
        last = next((row for row in reversed(self.learning_curve) if "meta_test_return" in row), {})
        final_eval = None
        # phases of wall_time_s, and the low-noise final evaluation that follows it
        wall_time_split = self.wall_time_split()
        if p.final_eval_repeats > 0:
            started = time.perf_counter()
            result = self.final_evaluation()
            wall_time_split["final_evaluation_s"] = time.perf_counter() - started
            final_eval = {"meta_test_return": result.meta_test_return, "num_repeats": p.final_eval_repeats,
                          "online_returns": result.online_returns,
                          "per_task_final_returns": result.per_task_final_returns}
        results = {
            "env": cfg.env, "algo": cfg.algo, "tier": cfg.tier, "seed": cfg.seed,
            "meta_test_return": last.get("meta_test_return"),
            "online_returns": [last[k] for k in sorted((k for k in last if k.startswith("online_return/")),
                                                       key=lambda k: int(k.rsplit("_", 1)[1]))],
            "final_eval": final_eval,
            "learning_curve": [{k: row[k] for k in ("iteration", "env_steps", "grad_steps", "wall_time_s",
                                                     "meta_test_return") if k in row} for row in self.learning_curve],
            "env_steps": self.algorithm.env_steps, "grad_steps": self.algorithm.grad_steps,
            "wall_time_s": self.elapsed, "wall_time_split_s": wall_time_split,
            "parameter_count": self.algorithm.parameter_count(),
            # the commit the run started at; ``git_commits`` lists more when resumed at other ones
            "git_commit": self.git_commits[0], "git_commits": self.git_commits,
            "machine": machine_description(self.device), "config": to_dict(cfg),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_json(self.run_dir / "results.json", results)
        return results


def resume_trainer(run_dir: Path, progress: bool = True) -> Trainer:
    run_dir = Path(run_dir)
    config = config_from_dict(read_json(run_dir / "config.json", what="run config"))
    return Trainer(config, run_dir=run_dir, progress=progress)
