"""Analysis helpers behind the notebooks in ``experiments/notebooks/``: load a finished run, replay the
meta-test protocol on one task while keeping what the scalar evaluation throws away (trajectories, the
context, setformer's pooling attention), read task latents, project them to 2-D, and plot all of it.

The notebooks only call these functions, so the logic lives here where ``tests/test_analysis.py`` checks it.
Nothing here writes into a run directory: analysing a run (even one still training, or one on a read-only
disk) never changes it.
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
from algos.core.trainer import Trainer, build_config
from envs_glue import env_spec




# ---------------------------------------------------------------------------------------------- finding runs
def find_runs(algo: str | None = None, env: str | None = None, root: Path | str = REPO_ROOT) -> list[Path]:
    """Run directories (those holding a ``config.json``) under ``root``, newest first.

    Looks where the project writes runs: ``runs/<env>/<algo>/<seed>-<stamp>/`` (``experiments.run``) and
    ``benchmarks/<tier>/cells/<env>/<algo>/<seed>/`` (``experiments.benchmark``). "Newest" is the latest
    modification of the run's checkpoint, or of its config when the checkpoint is gone.
    """
    root = Path(root)
    env_part, algo_part = env or "*", algo or "*"
    patterns = [f"runs/{env_part}/{algo_part}/*/config.json",
                f"benchmarks/*/cells/{env_part}/{algo_part}/*/config.json"]
    run_dirs = {config.parent for pattern in patterns for config in root.glob(pattern)}

    def last_written(run_dir: Path) -> float:
        checkpoint = run_dir / "checkpoint.pt"
        return (checkpoint if checkpoint.exists() else run_dir / "config.json").stat().st_mtime

    return sorted(run_dirs, key=last_written, reverse=True)


def find_latest_run(algo: str | None = None, env: str | None = None, root: Path | str = REPO_ROOT) -> Path | None:
    """The newest run of ``algo`` (and ``env``) that still has its checkpoint; if every match lost its checkpoint
    (benchmark cells may be cleaned after they finish), the newest match anyway, so that :func:`load_run` can
    say clearly what is missing. ``None`` when there is no run at all."""
    runs = find_runs(algo, env, root)
    with_checkpoint = [run for run in runs if (run / "checkpoint.pt").exists()]
    return (with_checkpoint or runs or [None])[0]


def find_or_train_run(algo: str, env: str | None = None, root: Path | str = REPO_ROOT) -> Path:
    """The newest run of ``algo`` (and ``env``) with its checkpoint; on a fresh clone, where no run has one
    (checkpoints are not committed), a smoke-tier run trained now (seconds) under ``root/runs``, so a notebook
    always has weights to show. A smoke run's latents and attention mean little: train a real run for that."""
    found = find_latest_run(algo, env, root)
    if found is not None and (found / "checkpoint.pt").exists():
        return found
    env = env or "point-robot"
    print(f"no {algo} run with a checkpoint under {root}: training a smoke-tier run on {env} now (seconds), to "
          f"show the plots. For meaningful ones: python -m experiments.run --env {env} --algo {algo} --tier quick")
    config = build_config(env, algo, "smoke", 0)
    config.run_root = str(Path(root) / "runs")
    trainer = Trainer(config, progress=False)
    trainer.run()
    return trainer.run_dir


# ---------------------------------------------------------------------------------------------- loading
def load_run(run_dir: Path | str) -> Trainer:
    """A run's :class:`Trainer` with the weights (and replay buffers) of its ``checkpoint.pt`` loaded, read-only:
    the run's files and torch's global random state are left alone."""
    return Trainer.from_run_dir(Path(run_dir).expanduser().resolve() if run_dir is not None else None,
                                progress=False, load_weights=True)


def describe_run(run_dir: Path | str | None) -> str:
    """One paragraph on what a run directory holds, safe to call before :func:`load_run`: which run it is, how
    far it got, its scores, and whether its checkpoint (needed for any analysis) is still there."""
    if run_dir is None:
        return ("no run found under runs/ or benchmarks/*/cells/: train one first, e.g. "
                "python -m experiments.run --env point-robot --algo setformer --tier quick --seed 42")
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        return f"{run_dir}: not a run directory (no config.json)"
    config = read_json(run_dir / "config.json", what="run config")
    lines = [f"{run_dir}", f"  {config['algo']} on {config['env']}, tier {config['tier']}, seed {config['seed']}"]
    results_path = run_dir / "results.json"
    if results_path.exists():
        results = read_json(results_path, what="results")
        final = (results.get("final_eval") or {}).get("meta_test_return")
        lines.append(f"  finished: meta_test_return {results.get('meta_test_return')}"
                     + (f", low-noise final evaluation {final:.3f}" if final is not None else ""))
    if (run_dir / "checkpoint.pt").exists():
        lines.append("  checkpoint.pt present: weights can be loaded")
    else:
        lines.append("  checkpoint.pt MISSING (removed after the run finished, or the run never completed an "
                     "iteration): this run cannot be analysed; set RUN_DIR to a run that has its checkpoint")
    return "\n".join(lines)


def algo_name(agent: MetaAgent) -> str:
    """A readable name for error messages: the agent's class, e.g. ``PearlAgent``."""
    return type(agent).__name__


# ---------------------------------------------------------------------------------------------- replaying
def _last_attention(agent: MetaAgent, num_tokens: int) -> np.ndarray | None:
    """The agent's last pooling weights for task 0, ``(heads, seeds, n)``, or ``None`` if it has none or they
    do not belong to the current context (e.g. left over from a training batch)."""
    weights = getattr(agent, "attention_weights", None)
    if weights is None or weights.shape[-1] != num_tokens:
        return None
    return weights[0].detach().float().cpu().numpy().copy()


def record_episodes(trainer: Trainer, task_id: int, num_episodes: int | None = None,
                    num_exploration: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Run the meta-test protocol of ``algos.core.evaluation.evaluate`` on one task, once, and keep everything.

    Defaults come from the run's protocol (point-robot: 3 episodes, 1 exploring). As in the evaluation: the
    context is cleared, every transition goes to ``update_context`` (with the sparse reward on sparse tasks),
    the first ``num_exploration`` episodes act stochastically, ``adapt()`` runs after the last exploring episode
    and after every later one, and later episodes act deterministically.

    Returns a dict with, per episode ``e`` (length ``T``): ``obs[e]`` ``(T, obs_dim)``, ``next_obs[e]``,
    ``actions[e]`` ``(T, action_dim)``, ``rewards[e]`` ``(T,)`` (the rewards the agent saw and is scored on:
    sparse on sparse tasks), ``dense_rewards[e]``; ``returns`` ``(num_episodes,)``; ``exploring[e]``;
    ``adapted[e]`` (whether ``adapt()`` ran after it); ``attention[e]`` the pooling weights after that
    ``adapt()``, ``(heads, seeds, n_e)`` with ``n_e`` the context length then, or ``None`` (no ``adapt()`` or an
    agent without attention); ``z[e]`` ``(latent_dim,)`` the latent after the episode (and its ``adapt()``);
    ``context`` the final context tensor ``(1, n, context_dim)``; ``task`` the task parameters;
    ``episode_length``.
    """
    p = trainer.config.protocol
    meta_env = trainer.env.unwrapped
    max_path_length = meta_env.max_episode_steps
    if num_episodes is None:
        num_episodes = num_eval_episodes(p.num_steps_per_eval, max_path_length)
    if num_exploration is None:
        num_exploration = p.num_exp_traj_eval
    if not 0 <= num_exploration <= num_episodes:
        raise ValueError(f"num_exploration={num_exploration} must lie in [0, num_episodes={num_episodes}]")
    agent = trainer.algorithm.agent
    record: dict[str, Any] = {key: [] for key in ("obs", "next_obs", "actions", "rewards", "dense_rewards",
                                                  "exploring", "adapted", "attention", "z")}

    with trainer.isolated_randomness(seed), torch.no_grad():
        meta_env.reset_task(task_id)
        for episode in meta_test_episodes(trainer.env, agent, num_episodes, num_exploration, max_path_length,
                                          p.sparse_rewards, p.deterministic_exploration):
            record["obs"].append(episode.path["obs"])
            record["next_obs"].append(episode.path["next_obs"])
            record["actions"].append(episode.path["actions"])
            record["rewards"].append(episode.scored_rewards)
            record["dense_rewards"].append(episode.path["rewards"])
            record["exploring"].append(episode.exploring)
            record["adapted"].append(episode.adapted)
            num_tokens = int(agent.context.shape[1])
            record["attention"].append(_last_attention(agent, num_tokens) if episode.adapted else None)
            record["z"].append(agent.z[0].detach().float().cpu().numpy().copy())
        record["context"] = agent.context.detach().clone()               # (1, n, context_dim)

    record["returns"] = np.array([float(np.sum(r, dtype=np.float64)) for r in record["rewards"]])
    record["task_id"] = int(task_id)
    record["task"] = np.asarray(meta_env.tasks[task_id], dtype=np.float64).copy()
    record["episode_length"] = max_path_length
    record["num_exploration"] = num_exploration
    return record


def context_positions(record: dict[str, Any], num_episodes: int) -> np.ndarray:
    """Where each of the first ``num_episodes`` episodes' rewards were measured: their ``next_obs``
    concatenated, ``(n, obs_dim)``, aligned with the context tokens (token ``i`` is transition ``i``)."""
    return np.concatenate(record["next_obs"][:num_episodes], axis=0)


def attention_stages(record: dict[str, Any]) -> dict[str, int]:
    """The two moments the attention notebook shows, as the number of episodes in the context then: right after
    exploration (the first ``adapt()``, which sets the latent the scored episodes start from) and after the
    final episode (the whole context)."""
    return {"after exploration": max(1, record["num_exploration"]), "after the final episode": len(record["obs"])}


def attention_after(record: dict[str, Any], num_episodes: int) -> np.ndarray:
    """Mean pooling attention ``(n,)`` of the ``adapt()`` that followed episode ``num_episodes`` (1-based), with
    ``n = num_episodes * episode_length``; a ``ValueError`` if none was recorded there."""
    weights = record["attention"][num_episodes - 1]
    if weights is None:
        raise ValueError(f"no attention recorded after episode {num_episodes}: adapt() did not run then "
                         f"or the agent does not pool by attention")
    return mean_attention(weights)


def context_rewards(record: dict[str, Any], num_episodes: int) -> np.ndarray:
    """The rewards the agent saw in the first ``num_episodes`` episodes, ``(n,)``, aligned with the tokens."""
    return np.concatenate(record["rewards"][:num_episodes], axis=0)


# ---------------------------------------------------------------------------------------------- attention
def mean_attention(weights: np.ndarray | torch.Tensor) -> np.ndarray:
    """Average pooling weights ``(..., heads, seeds, n)`` (any leading task axis is averaged too) into one
    distribution over the ``n`` context tokens, ``(n,)``. Each (head, seed) row is a softmax, so the mean sums
    to 1: it is the share of the pooled read-out that each transition contributes."""
    array = weights.detach().float().cpu().numpy() if isinstance(weights, torch.Tensor) else np.asarray(weights)
    if array.ndim < 3:
        raise ValueError(f"expected pooling weights shaped (..., heads, seeds, n), got shape {array.shape}")
    return array.reshape(-1, array.shape[-1]).mean(axis=0)


def attention_over_context(agent: MetaAgent, task: int = 0) -> np.ndarray:
    """The last ``adapt()`` / ``infer_posterior()`` pooling weights of ``task`` averaged over heads and seeds:
    ``(n,)``, summing to 1. Only set-transformer agents pool by attention; others raise a ``ValueError``."""
    if not hasattr(agent, "attention_weights"):
        raise ValueError(f"{algo_name(agent)} has no attention weights: only attention-pooling agents "
                         f"(setformer) can be shown this way")
    weights = agent.attention_weights                                     # (tasks, heads, seeds, n)
    if weights is None:
        raise ValueError(f"{algo_name(agent)} has not pooled a context yet: call adapt() or infer_posterior() "
                         f"first")
    return mean_attention(weights[task])                                  # (heads, seeds, n) -> (n,)


def attention_per_episode(weights: np.ndarray, episode_length: int) -> np.ndarray:
    """Share of attention on each episode: ``(n,)`` -> ``(ceil(n / episode_length),)``. Tells at a glance
    whether the read-out leans on the exploration episode or on the later, exploiting ones."""
    weights = np.asarray(weights)
    num_episodes = math.ceil(len(weights) / episode_length)
    padded = np.zeros(num_episodes * episode_length)
    padded[: len(weights)] = weights
    return padded.reshape(num_episodes, episode_length).sum(axis=1)


# ---------------------------------------------------------------------------------------------- latents
def _rollout_context(trainer: Trainer, task_id: int, context_size: int) -> torch.Tensor:
    """Context from exploring ``task_id`` as the evaluation does before its first ``adapt()``: cleared belief,
    stochastic episodes, transitions fed to ``update_context``; ``(1, context_size, context_dim)``."""
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
    """Latents ``z`` the agent infers for each task: ``(len(task_ids), num_samples, latent_dim)``.

    ``source="rollout"`` (any task): each sample is a fresh context from the agent's own exploration, as at meta-
    test time; ``context_size`` defaults to the evaluation's exploration budget (``num_exp_traj_eval`` episodes,
    at least one). ``source="buffer"`` (training tasks only): each sample draws ``context_size`` transitions
    (default ``embedding_batch_size``) from the encoder buffer, the contexts the encoder was trained on.

    The spread within a task mixes context noise with the agent's own sampling (PEARL samples ``z`` from its
    belief); ``posterior_mean=True`` takes the belief's mean instead (``z_means``, for agents that keep one),
    leaving only the context's share. The spread across tasks is what task inference is for.
    """
    if source not in ("rollout", "buffer"):
        raise ValueError(f"source must be 'rollout' or 'buffer', got {source!r}")
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    p, algorithm = trainer.config.protocol, trainer.algorithm
    agent: MetaAgent = algorithm.agent
    max_path_length = trainer.env.unwrapped.max_episode_steps
    if context_size is None:
        context_size = (max(1, p.num_exp_traj_eval) * max_path_length if source == "rollout"
                        else p.embedding_batch_size)
    if context_size <= 0:
        raise ValueError(f"context_size must be positive, got {context_size}")
    if source == "buffer":
        enc_buffer = getattr(algorithm, "enc_buffer", None)
        if enc_buffer is None:
            raise ValueError(f"{trainer.config.algo} keeps no encoder buffer; use source='rollout'")
        train_ids = set(int(t) for t in trainer.env.unwrapped.train_task_ids)
        foreign = [int(t) for t in task_ids if int(t) not in train_ids]
        if foreign:
            raise ValueError(f"source='buffer' needs training tasks; {foreign} are held out (use source='rollout')")

    latents = []
    with trainer.isolated_randomness(seed), torch.no_grad():
        rng = np.random.default_rng(seed)  # the buffer's sampler gets its own stream, not the trainer's
        for task_id in task_ids:
            if source == "rollout":
                contexts = torch.cat([_rollout_context(trainer, int(task_id), context_size)
                                      for _ in range(num_samples)])       # (samples, n, context_dim)
            else:
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
    """PCA of latents ``(..., d)`` onto their top two principal components, ``(..., 2)``, with plain numpy SVD.

    Project train and held-out latents *together* (concatenate first) so they share axes. Component signs are
    fixed (largest loading positive) so plots do not flip between runs. With ``return_explained`` also returns
    the fraction of variance each component explains, ``(2,)``. Latents of width < 2 are padded with zeros.
    """
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
    """How much of the task parameters a linear read-out of ``z`` explains: fit least squares from latents
    ``(tasks, samples, d)`` (or ``(tasks, d)``) to targets ``(tasks, p)`` (or ``(tasks,)``) and return the R^2,
    pooled over outputs, on ``eval_latents``/``eval_targets`` if given (fit on training tasks, score on held-out
    ones) or else on the fitting data. 1 = the task is linearly decodable from ``z``; 0 = no better than the
    mean; negative = worse than the mean (a read-out that does not transfer)."""
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
    """``(within, between)`` for latents ``(tasks, samples, d)``: the RMS distance of samples from their task's
    mean latent, and the RMS distance of task means from the overall mean. Task inference that works keeps
    ``within`` well below ``between``: contexts of one task agree, contexts of different tasks do not."""
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
    """One scalar per task to colour plots by, ``(len(task_ids),)``: the goal's angle for the point robots
    (the one parameter of the sparse task, and the direction of the goal on the dense one), the goal velocity
    for cheetah-vel."""
    vectors = task_vectors(trainer, task_ids)
    if is_goal_plane(trainer):
        return np.arctan2(vectors[:, 1], vectors[:, 0])
    return vectors[:, 0]


def task_parameter_label(trainer: Trainer) -> str:
    return env_spec(trainer.config.env).task_label


def task_parameter_cmap(trainer: Trainer) -> str:
    """A colormap that reads the task parameter right: cyclic (``twilight``) for point-robot's goal angles, which
    wrap around at +-pi, sequential (``viridis``) for the sparse task's half-circle and for velocities."""
    return "twilight" if env_spec(trainer.config.env).task_wraps_around else "viridis"


def goal_radius(trainer: Trainer) -> float | None:
    """The sparse task's reward radius around the goal (drawn on attention maps), ``None`` on dense tasks."""
    return env_spec(trainer.config.env).goal_radius


# ---------------------------------------------------------------------------------------------- plotting
def plot_attention_on_plane(ax, obs: np.ndarray, weights: np.ndarray, goal: np.ndarray,
                            goal_radius: float | None = None, episode_length: int | None = None,
                            title: str | None = None):
    """Point robots: the context transitions at their positions ``obs`` ``(n, 2)`` (use the ``next_obs``,
    where each reward was measured: :func:`context_positions`), coloured and sized by attention ``weights``
    ``(n,)``; the goal as a star (and the sparse task's reward radius if given). Faint lines join the steps of
    each episode so the paths stay readable. The colour scale starts at 0, so near-uniform attention looks
    uniform instead of having its tiny differences stretched over the whole colormap. Returns the scatter, for a
    colorbar."""
    obs, weights, goal = np.asarray(obs), np.asarray(weights, dtype=np.float64), np.asarray(goal).ravel()
    if obs.ndim != 2 or obs.shape[1] < 2:
        raise ValueError(f"obs must be (n, 2) positions, got shape {obs.shape}")
    if len(obs) != len(weights):
        raise ValueError(f"{len(obs)} positions but {len(weights)} attention weights")
    step = episode_length or len(obs)
    for start in range(0, len(obs), step):
        segment = obs[start: start + step]
        ax.plot(segment[:, 0], segment[:, 1], color="0.75", linewidth=0.8, zorder=1)
    # Sizes and colours are absolute, not stretched to each panel's range: uniform attention (1/n each) draws
    # every point alike at 30 pt^2, a token with k times the uniform share k times larger (capped at 300).
    sizes = np.clip(30.0 * weights * len(weights), 5.0, 300.0)
    scatter = ax.scatter(obs[:, 0], obs[:, 1], c=weights, s=sizes, cmap="viridis", vmin=0.0,
                         vmax=max(float(weights.max(initial=0.0)), 1e-12), edgecolors="k", linewidths=0.3, zorder=2)
    if goal_radius:
        ax.add_patch(_circle(goal[:2], goal_radius))
    ax.scatter([goal[0]], [goal[1]], marker="*", s=250, color="red", edgecolors="k", zorder=3, label="goal")
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if title:
        ax.set_title(title)
    return scatter


def _circle(centre: np.ndarray, radius: float):
    from matplotlib.patches import Circle
    return Circle(tuple(centre), radius, fill=False, linestyle="--", color="red", zorder=3)


def plot_attention_bars(ax, weights: np.ndarray, rewards: np.ndarray, episode_length: int | None = None,
                        title: str | None = None):
    """Any environment: attention per context transition ``(n,)`` as bars against time, the reward the agent
    saw at each transition ``(n,)`` on a second axis, and dashed lines at episode boundaries. Returns
    ``(ax, reward_ax)``."""
    weights, rewards = np.asarray(weights, dtype=np.float64), np.asarray(rewards, dtype=np.float64)
    if len(weights) != len(rewards):
        raise ValueError(f"{len(weights)} attention weights but {len(rewards)} rewards")
    steps = np.arange(len(weights))
    ax.bar(steps, weights, width=1.0, color="tab:blue", alpha=0.7, label="attention")
    ax.set_xlabel("context transition (time)")
    ax.set_ylabel("attention", color="tab:blue")
    ax.set_xlim(-0.5, len(weights) - 0.5)
    if episode_length:
        for boundary in range(episode_length, len(weights), episode_length):
            ax.axvline(boundary - 0.5, color="0.4", linestyle="--", linewidth=0.8)
    reward_ax = ax.twinx()
    reward_ax.plot(steps, rewards, color="tab:red", linewidth=1.2, label="reward")
    reward_ax.set_ylabel("reward", color="tab:red")
    if title:
        ax.set_title(title)
    return ax, reward_ax


def plot_latents(ax, projected: np.ndarray, task_params: np.ndarray, label: str = "task parameter",
                 marker: str = "o", cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
                 colorbar: bool = True, legend_label: str | None = None):
    """Projected latents ``(tasks, samples, 2)`` (or ``(tasks, 2)``) coloured by each task's parameter
    ``(tasks,)``. Call twice on one axis for train and held-out tasks with different markers and a shared
    ``vmin``/``vmax`` (and ``colorbar`` once). Returns the scatter."""
    projected = np.asarray(projected, dtype=np.float64)
    task_params = np.asarray(task_params, dtype=np.float64).ravel()
    if projected.shape[-1] != 2:
        raise ValueError(f"projected latents must end in 2 coordinates, got shape {projected.shape}")
    if projected.ndim == 2:
        projected = projected[:, None, :]                                 # (tasks, 1, 2)
    if projected.shape[0] != len(task_params):
        raise ValueError(f"{projected.shape[0]} tasks of latents but {len(task_params)} task parameters")
    colours = np.repeat(task_params, projected.shape[1])                  # one per (task, sample)
    points = projected.reshape(-1, 2)
    scatter = ax.scatter(points[:, 0], points[:, 1], c=colours, cmap=cmap, vmin=vmin, vmax=vmax, marker=marker,
                         s=30, edgecolors="k", linewidths=0.3, label=legend_label)
    if colorbar:
        ax.figure.colorbar(scatter, ax=ax, label=label)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    return scatter
