"""The analysis behind the notebooks in ``experiments/notebooks/``: load a finished run, replay the meta-test
protocol on one task keeping what the scalar evaluation throws away (trajectories, the context, setformer's pooling
attention), read task latents, project them to 2-D, and plot all of it. Nothing here writes into a run directory.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from algos.core.agent import MetaAgent
from algos.core.buffers import sample_context
from algos.core.io import REPO_ROOT, read_json
from algos.core.evaluation import meta_test_episodes
from algos.core.sampler import num_eval_episodes, rollout
from algos.core.trainer import AGENT_WEIGHTS_FILE, Trainer, build_config
from envs_glue import env_spec


# ---------------------------------------------------------------------------------------------- finding runs
def weights_of(run: Path) -> Path | None:
    """The run's checkpoint, else the agent weights a finished run keeps (committed with benchmark cells), else None."""
    return next((path for path in (run / "checkpoint.pt", run / AGENT_WEIGHTS_FILE) if path.exists()), None)


def find_latest_run(algo: str | None = None, env: str | None = None, root: Path | str = REPO_ROOT) -> Path | None:
    """The newest run of ``algo`` (and ``env``) under ``root``'s ``runs/`` and ``benchmarks/*/cells/`` that has its
    weights, else the newest at all (so that :func:`load_run` can say what is missing), else None."""
    runs = {config.parent for pattern in ("runs/{}/{}/*", "benchmarks/*/cells/{}/{}/*")
            for config in Path(root).glob(pattern.format(env or "*", algo or "*") + "/config.json")}
    with_weights = [run for run in runs if weights_of(run)]
    return max(with_weights or runs, key=lambda run: (weights_of(run) or run / "config.json").stat().st_mtime,
               default=None)


def find_or_train_run(algo: str, env: str | None = None, root: Path | str = REPO_ROOT) -> Path:
    """The newest run of ``algo`` (and ``env``) with its weights; where none has any, a smoke-tier run trained now
    under ``root/runs`` (seconds), so a notebook always has weights to show."""
    found = find_latest_run(algo, env, root)
    if found is not None and weights_of(found):
        return found
    env = env or "point-robot"
    print(f"no {algo} run with weights under {root}: training a smoke-tier run on {env} now (seconds), to "
          f"show the plots. For meaningful ones: python -m experiments.run --env {env} --algo {algo} --tier quick")
    config = build_config(env, algo, "smoke", 0)
    config.run_root = str(Path(root) / "runs")
    trainer = Trainer(config, progress=False)
    trainer.run()
    return trainer.run_dir


# ---------------------------------------------------------------------------------------------- loading
def load_run(run_dir: Path | str) -> Trainer:
    """A run's :class:`Trainer` with its ``checkpoint.pt`` (weights, replay buffers) loaded, or only its agent
    weights (``agent.pt``) where the checkpoint is gone; the run's files and torch's global random state are left
    alone."""
    return Trainer.from_run_dir(Path(run_dir).expanduser().resolve() if run_dir is not None else None,
                                progress=False, load_weights=True)


def describe_run(run_dir: Path | str | None) -> str:
    """What a run directory holds, before :func:`load_run`: which run, its scores, whether its checkpoint is there."""
    if run_dir is None:
        return ("no run found under runs/ or benchmarks/*/cells/: train one first, e.g. "
                "python -m experiments.run --env point-robot --algo setformer --tier quick --seed 42")
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        return f"{run_dir}: not a run directory (no config.json)"
    config = read_json(run_dir / "config.json", what="run config")
    lines = [f"{run_dir}", f"  {config['algo']} on {config['env']}, tier {config['tier']}, seed {config['seed']}"]
    if (run_dir / "results.json").exists():
        results = read_json(run_dir / "results.json", what="results")
        final = (results.get("final_eval") or {}).get("meta_test_return")
        lines.append(f"  finished: meta_test_return {results.get('meta_test_return')}, low-noise final evaluation "
                     f"{final}")
    weights = weights_of(run_dir)
    lines.append(f"  {weights.name} present: weights can be loaded" if weights else
                 "  no checkpoint.pt or agent.pt: this run cannot be analysed; set RUN_DIR to a run that has one")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- replaying
def _last_attention(agent: MetaAgent, num_tokens: int) -> np.ndarray | None:
    """The agent's last pooling weights for task 0, ``(heads, seeds, n)``, or None if it has none for this context."""
    weights = getattr(agent, "attention_weights", None)
    if weights is None or weights.shape[-1] != num_tokens:
        return None
    return weights[0].detach().float().cpu().numpy().copy()


def record_episodes(trainer: Trainer, task_id: int, num_steps: int | None = None,
                    num_exploration: int | None = None, seed: int = 0) -> dict[str, Any]:
    """The meta-test protocol (``meta_test_episodes``: episodes until the trial holds ``num_steps`` transitions,
    the run's ``num_steps_per_eval`` by default) on one task, once,
    keeping everything. Per episode ``e`` of length ``T``: ``obs[e]`` and ``next_obs[e]`` ``(T, obs_dim)``,
    ``actions[e]``, ``rewards[e]`` ``(T,)`` (what the agent saw and is scored on), ``dense_rewards[e]``,
    ``exploring[e]``, ``adapted[e]``, ``attention[e]`` (pooling weights after that ``adapt()``, ``(heads, seeds,
    n_e)``, or None) and ``z[e]``; then ``returns``, the final ``context`` ``(1, n, context_dim)``, ``task`` and
    ``episode_length``."""
    p = trainer.config.protocol
    meta_env = trainer.env.unwrapped
    max_path_length = meta_env.max_episode_steps
    num_steps = p.num_steps_per_eval if num_steps is None else num_steps
    num_exploration = p.num_exp_traj_eval if num_exploration is None else num_exploration
    fewest_episodes = num_eval_episodes(num_steps, max_path_length)
    if not 0 <= num_exploration <= fewest_episodes:
        raise ValueError(f"num_exploration={num_exploration} must lie in [0, {fewest_episodes}], the episodes of "
                         f"{num_steps} steps")
    agent, episodes = trainer.algorithm.agent, []
    with trainer.isolated_randomness(seed), torch.no_grad():
        meta_env.reset_task(task_id)
        for episode in meta_test_episodes(trainer.env, agent, num_steps, num_exploration, max_path_length,
                                          p.sparse_rewards, p.deterministic_exploration):
            episodes.append({"obs": episode.path["obs"], "next_obs": episode.path["next_obs"],
                             "actions": episode.path["actions"], "rewards": episode.scored_rewards,
                             "dense_rewards": episode.path["rewards"], "exploring": episode.exploring,
                             "adapted": episode.adapted, "z": agent.z[0].detach().float().cpu().numpy().copy(),
                             "attention": _last_attention(agent, int(agent.context.shape[1])) if episode.adapted
                             else None})
        context = agent.context.detach().clone()                           # (1, n, context_dim)
    record: dict[str, Any] = {key: [episode[key] for episode in episodes] for key in (episodes[0] if episodes else {})}
    return {**record, "context": context, "task_id": int(task_id), "episode_length": max_path_length,
            "returns": np.array([float(np.sum(r, dtype=np.float64)) for r in record["rewards"]]),
            "task": np.asarray(meta_env.tasks[task_id], dtype=np.float64).copy(), "num_exploration": num_exploration}


def context_positions(record: dict[str, Any], num_episodes: int) -> np.ndarray:
    """Where the first ``num_episodes`` episodes' rewards were measured (their ``next_obs``), ``(n, obs_dim)``,
    aligned with the context tokens."""
    return np.concatenate(record["next_obs"][:num_episodes], axis=0)


def attention_stages(record: dict[str, Any]) -> dict[str, int]:
    """The two moments the attention notebook shows, as the number of episodes in the context then."""
    return {"after exploration": max(1, record["num_exploration"]), "after the final episode": len(record["obs"])}


def attention_after(record: dict[str, Any], num_episodes: int) -> np.ndarray:
    """Mean pooling attention ``(n,)`` of the ``adapt()`` after episode ``num_episodes`` (1-based)."""
    weights = record["attention"][num_episodes - 1]
    if weights is None:
        raise ValueError(f"no attention recorded after episode {num_episodes}: adapt() did not run then "
                         f"or the agent does not pool by attention")
    return mean_attention(weights)


def context_rewards(record: dict[str, Any], num_episodes: int) -> np.ndarray:
    """The rewards the agent saw in the first ``num_episodes`` episodes, ``(n,)``."""
    return np.concatenate(record["rewards"][:num_episodes], axis=0)


# ---------------------------------------------------------------------------------------------- attention
def mean_attention(weights: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pooling weights ``(..., heads, seeds, n)`` averaged into one distribution over the ``n`` context tokens:
    the share of the pooled read-out each transition contributes."""
    array = weights.detach().float().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
    if array.ndim < 3:
        raise ValueError(f"expected pooling weights shaped (..., heads, seeds, n), got shape {array.shape}")
    return array.reshape(-1, array.shape[-1]).mean(axis=0)


def attention_per_episode(weights: np.ndarray, episode_length: int) -> np.ndarray:
    """Share of attention on each episode: ``(n,)`` -> ``(ceil(n / episode_length),)``."""
    weights = np.asarray(weights)
    num_episodes = math.ceil(len(weights) / episode_length)
    padded = np.zeros(num_episodes * episode_length)
    padded[: len(weights)] = weights
    return padded.reshape(num_episodes, episode_length).sum(axis=1)


# ---------------------------------------------------------------------------------------------- latents
def _rollout_context(trainer: Trainer, task_id: int, context_size: int) -> torch.Tensor:
    """A context from exploring ``task_id`` as the evaluation does before its first ``adapt()``."""
    p, agent = trainer.config.protocol, trainer.algorithm.agent
    max_path_length = trainer.env.unwrapped.max_episode_steps
    trainer.env.unwrapped.reset_task(task_id)
    agent.clear_context()
    while agent.context.shape[1] < context_size:
        rollout(trainer.env, agent, max_path_length, deterministic=False, accum_context=True,
                context_uses_sparse_reward=p.sparse_rewards)
    return agent.context[:, :context_size].clone()


def task_latents(trainer: Trainer, task_ids: Sequence[int], context_size: int | None = None, num_samples: int = 1,
                 seed: int = 0, source: str = "rollout", posterior_mean: bool = False) -> np.ndarray:
    """Latents ``z`` the agent infers for each task: ``(len(task_ids), num_samples, latent_dim)``. Each sample's
    context is a fresh exploration of the task, as at meta-test time (``source="rollout"``, default size: the
    evaluation's exploration episodes), or ``context_size`` transitions from the encoder buffer, as in training
    (``"buffer"``, training tasks only). ``posterior_mean`` takes the belief's mean (``z_means``) instead of a
    sample, leaving only the context's share of the spread."""
    if source not in ("rollout", "buffer") or num_samples <= 0 or (context_size is not None and context_size <= 0):
        raise ValueError(f"source must be 'rollout' or 'buffer' ({source!r}), num_samples ({num_samples}) and "
                         f"context_size ({context_size}) positive")
    p, algorithm = trainer.config.protocol, trainer.algorithm
    agent: MetaAgent = algorithm.agent
    max_path_length = trainer.env.unwrapped.max_episode_steps
    if context_size is None:
        context_size = (max(1, p.num_exp_traj_eval) * max_path_length if source == "rollout"
                        else p.embedding_batch_size)
    enc_buffer, train_ids = getattr(algorithm, "enc_buffer", None), set(map(int, trainer.env.unwrapped.train_task_ids))
    foreign = [int(t) for t in task_ids if int(t) not in train_ids]
    if source == "buffer" and (enc_buffer is None or foreign or not enc_buffer.sizes[list(task_ids)].all()):
        raise ValueError(f"source='buffer' needs the run's encoder buffer (its checkpoint.pt, not only agent.pt) and "
                         f"training tasks ({foreign} are held out); use source='rollout'")

    latents = []
    with trainer.isolated_randomness(seed), torch.no_grad():
        rng = np.random.default_rng(seed)  # the buffer's sampler gets its own stream, not the trainer's
        for task_id in task_ids:
            if source == "rollout":
                contexts = torch.cat([_rollout_context(trainer, int(task_id), context_size)
                                      for _ in range(num_samples)])       # (samples, n, context_dim)
            else:
                trainer.env.unwrapped.reset_task(int(task_id))  # an agent handed the true task reads this one
                contexts = sample_context(enc_buffer, np.full(num_samples, int(task_id)), context_size, rng,
                                          use_sparse_rewards=p.sparse_rewards,
                                          use_next_obs=p.use_next_obs_in_context,
                                          sequential=getattr(algorithm, "sequential_context", False))
            z = agent.infer_posterior(contexts)                           # (samples, latent_dim)
            if posterior_mean and getattr(agent, "z_means", None) is not None:
                z = agent.z_means                                         # the belief's mean, not a sample
            latents.append(z.detach().float().cpu().numpy())
        agent.clear_context()  # leave the agent as the harness expects it: one task, prior belief
    return np.stack(latents)                                              # (tasks, samples, latent_dim)


def project_2d(latents: np.ndarray, return_explained: bool = False):
    """PCA of latents ``(..., d)`` onto their top two components, ``(..., 2)`` (project train and held-out latents
    together so they share axes); signs fixed so plots do not flip. ``return_explained``: also each component's
    share of the variance."""
    latents = np.asarray(latents, dtype=np.float64)
    flat = latents.reshape(-1, latents.shape[-1])                         # (N, d)
    centered = flat - flat.mean(axis=0, keepdims=True)
    if centered.shape[1] < 2:
        centered = np.pad(centered, ((0, 0), (0, 2 - centered.shape[1])))
    _, singular_values, components = np.linalg.svd(centered, full_matrices=False)  # components: (k, d)
    components = components[:2]
    signs = np.sign(components[np.arange(2), np.abs(components).argmax(axis=1)])
    components = components * np.where(signs == 0, 1.0, signs)[:, None]
    projected = (centered @ components.T).reshape(*latents.shape[:-1], 2)
    if not return_explained:
        return projected
    variance = singular_values ** 2
    explained = variance[:2] / variance.sum() if variance.sum() > 0 else np.zeros(2)
    return projected, explained


def linear_probe_r2(latents: np.ndarray, targets: np.ndarray, eval_latents: np.ndarray | None = None,
                    eval_targets: np.ndarray | None = None) -> float:
    """R^2 of a least-squares linear read-out from latents ``(tasks[, samples], d)`` to task parameters
    ``(tasks[, p])``, scored on ``eval_latents``/``eval_targets`` if given, else on the fitting data: 1 = the task
    is linearly decodable from ``z``, 0 = no better than the mean."""
    features, goals = _probe_rows(latents, targets)
    design = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, goals, rcond=None)
    if eval_latents is not None:
        features, goals = _probe_rows(eval_latents, eval_targets)
        design = np.concatenate([features, np.ones((len(features), 1))], axis=1)
    residual = ((goals - design @ coefficients) ** 2).sum()
    total = ((goals - goals.mean(axis=0)) ** 2).sum()
    return float(1.0 - residual / total) if total > 0 else 0.0


def _probe_rows(latents: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One ``(feature, target)`` row per latent sample: ``(N, d)`` and ``(N, p)``."""
    latents = np.asarray(latents, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    targets = targets.reshape(len(targets), -1)                            # (tasks, p)
    if latents.ndim == 3:                                                 # each task's target for each sample
        targets = np.repeat(targets, latents.shape[1], axis=0)
    return latents.reshape(-1, latents.shape[-1]), targets


def latent_spread(latents: np.ndarray) -> tuple[float, float]:
    """``(within, between)`` for latents ``(tasks, samples, d)``: RMS distance of samples from their task's mean,
    and of task means from the overall mean. Task inference that works keeps ``within`` well below ``between``."""
    latents = np.asarray(latents, dtype=np.float64)
    task_means = latents.mean(axis=1, keepdims=True)                      # (tasks, 1, d)
    within = np.sqrt(((latents - task_means) ** 2).sum(-1).mean())
    between = np.sqrt(((task_means - task_means.mean(axis=0, keepdims=True)) ** 2).sum(-1).mean())
    return float(within), float(between)


# ---------------------------------------------------------------------------------------------- tasks
def is_goal_plane(trainer: Trainer) -> bool:
    """Whether the run's tasks are goals on a plane (the point robots): its env spec says."""
    return env_spec(trainer.config.env).goal_plane


def task_vectors(trainer: Trainer, task_ids: Sequence[int]) -> np.ndarray:
    """The raw task parameters, ``(len(task_ids), p)``: goal ``(x, y)`` or goal velocity ``(v,)``."""
    tasks = np.asarray(trainer.env.unwrapped.tasks, dtype=np.float64)
    return tasks.reshape(len(tasks), -1)[list(task_ids)]


def task_parameters(trainer: Trainer, task_ids: Sequence[int]) -> np.ndarray:
    """One scalar per task to colour plots by: the goal's angle on the point robots, the velocity on cheetah-vel."""
    vectors = task_vectors(trainer, task_ids)
    return np.arctan2(vectors[:, 1], vectors[:, 0]) if is_goal_plane(trainer) else vectors[:, 0]


def task_parameter_label(trainer: Trainer) -> str:
    return env_spec(trainer.config.env).task_label


def task_parameter_cmap(trainer: Trainer) -> str:
    """Cyclic (``twilight``) for a task parameter that wraps around, else sequential (``viridis``)."""
    return "twilight" if env_spec(trainer.config.env).task_wraps_around else "viridis"


def goal_radius(trainer: Trainer) -> float | None:
    """The sparse task's reward radius around the goal, None on dense tasks."""
    return env_spec(trainer.config.env).goal_radius


# ---------------------------------------------------------------------------------------------- plotting
def plot_attention_on_plane(ax, obs: np.ndarray, weights: np.ndarray, goal: np.ndarray,
                            goal_radius: float | None = None, episode_length: int | None = None,
                            title: str | None = None):
    """Point robots: the context transitions at their positions ``(n, 2)`` (:func:`context_positions`), coloured
    and sized by attention ``(n,)`` on a scale from 0 (near-uniform attention looks uniform), each episode's path
    drawn faintly, and the goal (with the sparse task's reward radius). Returns the scatter, for a colorbar."""
    obs, weights, goal = np.asarray(obs), np.asarray(weights, dtype=np.float64), np.asarray(goal).ravel()
    if obs.ndim != 2 or obs.shape[1] < 2:
        raise ValueError(f"obs must be (n, 2) positions, got shape {obs.shape}")
    if len(obs) != len(weights):
        raise ValueError(f"{len(obs)} positions but {len(weights)} attention weights")
    step = episode_length or len(obs)
    for start in range(0, len(obs), step):
        segment = obs[start: start + step]
        ax.plot(segment[:, 0], segment[:, 1], color="0.75", linewidth=0.8, zorder=1)
    # uniform attention (1/n each) draws every point at 30 pt^2, a token with k times that share k times larger
    sizes = np.clip(30.0 * weights * len(weights), 5.0, 300.0)
    scatter = ax.scatter(obs[:, 0], obs[:, 1], c=weights, s=sizes, cmap="viridis", vmin=0.0,
                         vmax=max(float(weights.max(initial=0.0)), 1e-12), edgecolors="k", linewidths=0.3, zorder=2)
    if goal_radius:
        from matplotlib.patches import Circle
        ax.add_patch(Circle(tuple(goal[:2]), goal_radius, fill=False, linestyle="--", color="red", zorder=3))
    ax.scatter([goal[0]], [goal[1]], marker="*", s=250, color="red", edgecolors="k", zorder=3, label="goal")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set(xlabel="x", ylabel="y", **({"title": title} if title else {}))
    return scatter


def plot_attention_bars(ax, weights: np.ndarray, rewards: np.ndarray, episode_length: int | None = None,
                        title: str | None = None):
    """Attention per context transition ``(n,)`` as bars against time, the reward seen at each on a second axis,
    dashed lines at episode boundaries. Returns ``(ax, reward_ax)``."""
    weights, rewards = np.asarray(weights, dtype=np.float64), np.asarray(rewards, dtype=np.float64)
    if len(weights) != len(rewards):
        raise ValueError(f"{len(weights)} attention weights but {len(rewards)} rewards")
    steps = np.arange(len(weights))
    ax.bar(steps, weights, width=1.0, color="tab:blue", alpha=0.7, label="attention")
    ax.set(xlabel="context transition (time)", xlim=(-0.5, len(weights) - 0.5), **({"title": title} if title else {}))
    ax.set_ylabel("attention", color="tab:blue")
    if episode_length:
        for boundary in range(episode_length, len(weights), episode_length):
            ax.axvline(boundary - 0.5, color="0.4", linestyle="--", linewidth=0.8)
    reward_ax = ax.twinx()
    reward_ax.plot(steps, rewards, color="tab:red", linewidth=1.2, label="reward")
    reward_ax.set_ylabel("reward", color="tab:red")
    return ax, reward_ax


def plot_latents(ax, projected: np.ndarray, task_params: np.ndarray, label: str = "task parameter",
                 marker: str = "o", cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
                 colorbar: bool = True, legend_label: str | None = None):
    """Projected latents ``(tasks[, samples], 2)`` coloured by each task's parameter; call once per task set with
    a shared ``vmin``/``vmax`` (and one ``colorbar``). Returns the scatter."""
    projected = np.asarray(projected, dtype=np.float64)
    projected = projected[:, None, :] if projected.ndim == 2 else projected  # (tasks, samples, 2)
    task_params = np.asarray(task_params, dtype=np.float64).ravel()
    if projected.shape[0] != len(task_params) or projected.shape[-1] != 2:
        raise ValueError(f"latents shaped {projected.shape} for {len(task_params)} task parameters")
    colours = np.repeat(task_params, projected.shape[1])                  # one per (task, sample)
    points = projected.reshape(-1, 2)
    scatter = ax.scatter(points[:, 0], points[:, 1], c=colours, cmap=cmap, vmin=vmin, vmax=vmax, marker=marker,
                         s=30, edgecolors="k", linewidths=0.3, label=legend_label)
    if colorbar:
        ax.figure.colorbar(scatter, ax=ax, label=label)
    ax.set(xlabel="PC 1", ylabel="PC 2")
    return scatter
