"""Re-evaluate finished cells' final weights under inference-time variants: an ablation of how the trained agent
*acts*, at no training cost and with everything else held fixed.

    python -m experiments.reevaluate --tier quick --algo setformer --envs sparse-point-robot \\
        --variant as-trained --variant greedy-encoder exploration.thompson=false

A variant's overrides must lie in a config group the method declares inference-time (``inference_time_config``)
or be an evaluation-only protocol setting; each runs the cell's low-noise final evaluation with its seed and
repeats (paired episodes), and ``as-trained`` must reproduce the recorded figure. For an agent with per-task
latents the policy also acts on each training task's own latent (``--own-embedding-episodes``). Writes
``<tier>/reevaluations_<algo>.json`` after every (cell, variant), skipping those done, then
``REEVALUATIONS_<algo>.md``. A rule's effect on training data needs a retraining: ``experiments.ablations``.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from algos import ALGORITHMS
from algos.core.config import SEEDS, TIERS, ConfigError, apply_overrides
from algos.core.io import REPO_ROOT, atomic_write_json, atomic_write_text, read_json
from algos.core.sampler import rollout
from algos.setformer import Acting
from envs_glue import DEFAULT_ENVS
from experiments.analysis import load_run, weights_of
from experiments.engine import cell_dir
from experiments.report import (DASH, display_name, env_argument, fmt, format_delta, format_mean_std,
                                format_paired_test, provenance, reevaluation_paths, report_heading, table)

# protocol settings that change only how the meta-test evaluation acts, never what training computed
EVALUATION_ONLY_PROTOCOL_KEYS = ("protocol.deterministic_exploration",)

SETFORMER_VARIANTS = {
    "as-trained": [],
    "no-fallback": ["exploration.fallback=false"],        # after adapt(): always act on the encoder's z
    "all-hypotheses": ["exploration.min_evidence=0"],     # every training task is a hypothesis
    "no-thompson": ["exploration.thompson=false"],        # no hypotheses: z = 0 until adapt(), then the encoder's z
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.reevaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="quick", choices=TIERS)
    parser.add_argument("--algo", default="setformer", choices=list(ALGORITHMS))
    parser.add_argument("--envs", nargs="+", type=env_argument, default=list(DEFAULT_ENVS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--variant", dest="variants", nargs="+", action="append", metavar=("NAME", "KEY=VALUE"),
                        help="a variant: a name, then its overrides (repeat the flag for several); default: "
                             + ", ".join(SETFORMER_VARIANTS) + " for setformer, as-trained otherwise")
    parser.add_argument("--repeats", type=int, default=None,
                        help="evaluation repeats per task (default: the cell's final_eval_repeats)")
    parser.add_argument("--own-embedding-episodes", type=int, default=3,
                        help="episodes per training task for the own-embedding figure; 0 skips it (default: 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    parser.add_argument("--root", default=str(REPO_ROOT / "benchmarks"),
                        help="benchmark root holding <tier>/cells (default: benchmarks/)")
    args = parser.parse_args(argv)
    if args.variants is None:
        args.variants = ([[name, *overrides] for name, overrides in SETFORMER_VARIANTS.items()]
                         if args.algo == "setformer" else [["as-trained"]])
    names = [variant[0] for variant in args.variants]
    if len(set(names)) != len(names) or any("=" in name for name in names):
        parser.error(f"--variant takes a unique name first, then KEY=VALUE overrides; got names {names}")
    if args.threads < 1 or (args.repeats is not None and args.repeats < 1) or args.own_embedding_episodes < 0:
        parser.error("--threads and --repeats must be positive, --own-embedding-episodes non-negative")
    return args


def check_inference_time(algorithm, overrides: list[str]) -> None:
    """Refuse an override outside the method's inference-time groups and the evaluation-only protocol settings."""
    groups = tuple(getattr(algorithm, "inference_time_config", ()))
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        group = key.removeprefix("agent.").split(".")[0]
        if key not in EVALUATION_ONLY_PROTOCOL_KEYS and group not in groups:
            allowed = ", ".join([*(f"{g}.*" for g in groups), *EVALUATION_ONLY_PROTOCOL_KEYS])
            raise ConfigError(f"override {item!r} is not an inference-time setting of "
                              f"{type(algorithm).__name__} (allowed: {allowed})")


def fallback_share_probe(agent):
    """Count the post-exploration steps ``agent`` acts on a hypothesis (the fallback); None for agents that do not
    report what they act on."""
    if not isinstance(getattr(agent, "acting", None), Acting):
        return None
    counts = {"post_exploration_steps": 0, "on_hypothesis": 0}
    get_action = agent.get_action

    def counting_get_action(obs, deterministic=False):
        if agent.acting is not Acting.EXPLORING:
            counts["post_exploration_steps"] += 1
            counts["on_hypothesis"] += int(agent.acting is Acting.ON_HYPOTHESIS)
        return get_action(obs, deterministic=deterministic)

    agent.get_action = counting_get_action
    return counts


CEILING_SEED_OFFSET = 424_243  # the own-embedding episodes' env seed: Trainer.eval_seed(this)


def own_embedding_return(run_dir: Path, episodes: int, threads: int) -> dict | None:
    """The mean return of the policy acting deterministically on each training task's own hypothesis latent, with
    no context and no inference (scored as the protocol scores an episode): what these weights reach when the task
    is known. None for an agent without per-task latents."""
    trainer = load_run(run_dir)
    torch.set_num_threads(threads)
    algorithm, agent = trainer.algorithm, trainer.algorithm.agent
    if not (hasattr(agent, "hypotheses") and hasattr(agent, "act_on")):
        return None
    started = time.perf_counter()
    env, sparse = trainer.env, trainer.config.protocol.sparse_rewards
    env.reset(seed=trainer.eval_seed(CEILING_SEED_OFFSET))
    per_task = []
    for task in algorithm.train_tasks:
        env.unwrapped.reset_task(int(task))
        returns = []
        for _ in range(episodes):
            agent.clear_context()
            agent.act_on(agent.hypotheses[int(task)])  # task j's embedding (its encoder latent without embeddings)
            path = rollout(env, agent, algorithm.max_path_length, deterministic=True)
            returns.append(float(np.sum(path["sparse_rewards"] if sparse else path["rewards"], dtype=np.float64)))
        per_task.append(float(np.mean(returns)))
    return {"return": float(np.mean(per_task)), "per_task_returns": per_task, "episodes_per_task": episodes,
            "num_tasks": len(per_task), "wall_time_s": time.perf_counter() - started}


def cell_identity(results: dict) -> dict:
    """What tells a finished cell from a rerun of it in the same folder."""
    return {"git_commit": results.get("git_commit"), "finished_at": results.get("finished_at")}


def entries_describe(entries: dict, results: dict) -> bool:
    """Whether cached ``entries`` (variant name -> entry) were made from the cell whose ``results.json`` is
    ``results``; an entry without the cell's identity matches on its commit and the recorded figure it reproduced."""
    identity = cell_identity(results)
    recorded = (results.get("final_eval") or {}).get("meta_test_return")
    return all(entry["cell"] == identity if "cell" in entry else entry.get("trained_at") == identity["git_commit"]
               and entry.get("recorded_final_eval") in (None, recorded) for entry in entries.values())


def reevaluate_cell(run_dir: Path, overrides: list[str], repeats: int | None, threads: int) -> dict:
    recorded = read_json(run_dir / "results.json", what="cell results")
    trainer = load_run(run_dir)
    torch.set_num_threads(threads)
    algorithm = trainer.algorithm
    check_inference_time(algorithm, overrides)
    apply_overrides(trainer.config, overrides)  # the agent reads the same config object
    algorithm.inference_config_changed()
    num_repeats = repeats or trainer.config.protocol.final_eval_repeats
    probe = fallback_share_probe(algorithm.agent)
    started = time.perf_counter()
    result = trainer.final_evaluation(num_repeats)
    recorded_final = recorded.get("final_eval") or {}
    entry = {"meta_test_return": result.meta_test_return, "online_returns": result.online_returns,
             "per_task_final_returns": result.per_task_final_returns, "num_repeats": num_repeats,
             "recorded_final_eval": recorded_final.get("meta_test_return")
             if recorded_final.get("num_repeats") == num_repeats else None,
             "trained_at": recorded.get("git_commit"), "cell": cell_identity(recorded),
             "wall_time_s": time.perf_counter() - started}
    if probe is not None and probe["post_exploration_steps"]:
        entry["fallback_share"] = probe["on_hypothesis"] / probe["post_exploration_steps"]
    return entry


# ---------------------------------------------------------------------- report
def render_markdown(report: dict) -> str:
    variants = report["variants"]
    parts = [
        *report_heading(f"Re-evaluations: {display_name(report['algo'])}, {report['tier']} tier", report),
        "Each finished cell's final weights, evaluated again with only an inference-time setting changed: the cell's "
        "low-noise final evaluation (same seeds, same repeats), so every variant plays the same episodes' "
        "randomness. Entries are mean ± sample std over seeds of the final-episode return; *Δ vs as-trained* is the "
        "per-seed paired difference and *beyond seed noise* its paired t-test against zero (two-sided, 95 %). "
        "*fallback share* is the share of post-exploration steps acted on a sampled hypothesis because the context "
        "refuted the encoder's reading. Only acting changes: this is not a training ablation.",
        "",
        table(["variant", "overrides"], [[name, " ".join(f"`{o}`" for o in overrides) or DASH]
                                         for name, overrides in variants.items()]),
        "",
    ]
    for env in report["envs"]:
        seeds = report["seeds"]
        cells = report["cells"].get(env, {})
        rows = []
        baseline = {seed: cells.get(str(seed), {}).get("as-trained", {}).get("meta_test_return") for seed in seeds}
        for name in variants:
            done = {seed: e for seed in seeds if (e := cells.get(str(seed), {}).get(name))}
            diffs = [e["meta_test_return"] - baseline[s] for s, e in done.items() if baseline.get(s) is not None]
            shares = [e["fallback_share"] for e in done.values() if "fallback_share" in e]
            shortest = min((len(e["online_returns"]) for e in done.values()), default=0)  # where trials differ
            online = np.mean([e["online_returns"][:shortest] for e in done.values()], axis=0) if done else []
            rows.append([name, format_mean_std([e["meta_test_return"] for e in done.values()], len(seeds)),
                         DASH if name == "as-trained" else format_delta(diffs),
                         DASH if name == "as-trained" else format_paired_test(diffs),
                         " · ".join(f"{s}: {fmt(e['meta_test_return'])}" for s, e in done.items()) or DASH,
                         f"{100 * float(np.mean(shares)):.0f} %" if shares else DASH,
                         " / ".join(f"{r:.1f}" for r in online) or DASH])
        lines = [f"## {env}", "", table(["variant", "meta-test return (low-noise)", "Δ vs as-trained",
                                         "beyond seed noise", "per seed", "fallback share",
                                         "online return per episode"], rows)]
        checks = [f"{s}: {fmt(e['meta_test_return'])} vs {fmt(e['recorded_final_eval'])}"
                  for s, e in ((s, cells.get(str(s), {}).get("as-trained")) for s in seeds)
                  if e and e.get("recorded_final_eval") is not None]
        lines += ["", "as-trained, this run vs the cell's recorded low-noise figure: " + (" · ".join(checks) or DASH)]
        own = {seed: e for seed in seeds if (e := report.get("own_embedding", {}).get(env, {}).get(str(seed)))}
        if own:
            first = next(iter(own.values()))
            lines += ["", f"**Known task, no inference** (the policy on each training task's own embedding, "
                          f"{first['num_tasks']} training tasks × {first['episodes_per_task']} episodes, "
                          f"deterministic): {format_mean_std([e['return'] for e in own.values()], len(seeds))}; "
                          + " · ".join(f"{s}: {fmt(e['return'])}" for s, e in own.items())
                          + ". What these weights reach when the task is known, measured on training tasks: its gap "
                            "to *as-trained* is roughly what inference and generalisation to new tasks cost."]
        missing = [str(s) for s in seeds if str(s) not in cells]
        if missing:
            lines += ["", f"No finished cell with weights for seed(s) {', '.join(missing)}."]
        parts += lines + [""]
    return "\n".join(parts).rstrip() + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "experiments.reevaluate", *(sys.argv[1:] if argv is None else argv)])
    tier_dir = Path(args.root) / args.tier
    json_path, markdown_path = reevaluation_paths(tier_dir, args.algo)
    variants = {name: overrides for name, *overrides in args.variants}
    previous = read_json(json_path, what="re-evaluation results") if json_path.exists() else {}
    if previous and previous.get("algo") != args.algo:
        raise SystemExit(f"{json_path} holds re-evaluations of {previous.get('algo')!r}, not {args.algo!r}")
    cells = previous.get("cells", {}) if previous.get("variants") == variants else {}
    own_embedding = previous.get("own_embedding", {})
    report = {"algo": args.algo, "tier": args.tier, "envs": args.envs, "seeds": args.seeds, "variants": variants,
              "cells": cells, "own_embedding": own_embedding}

    def save() -> None:
        report.update(provenance(command))
        atomic_write_json(json_path, report)

    for env, seed in ((env, seed) for env in args.envs for seed in args.seeds):
        run_dir, key = cell_dir(tier_dir, env, args.algo, seed), str(seed)
        results_path = run_dir / "results.json"
        results = read_json(results_path, what="cell results") if results_path.exists() else {}
        if key in cells.get(env, {}) and not entries_describe(cells[env][key], results):
            # the cell was rerun (or removed) since: its old figures describe weights that are gone
            print(f"{env} seed {seed}: dropping re-evaluations of an earlier cell")
            del cells[env][key]
            own_embedding.get(env, {}).pop(key, None)
        if not results or not weights_of(run_dir):
            print(f"skipping {env} seed {seed}: no finished cell with its weights in {run_dir}")
            continue
        repeats = args.repeats or read_json(run_dir / "config.json", what="config")["protocol"]["final_eval_repeats"]
        for name, overrides in variants.items():
            if cells.get(env, {}).get(key, {}).get(name, {}).get("num_repeats") != repeats:
                print(f"{env} seed {seed}: {name} ...", flush=True)
                entry = reevaluate_cell(run_dir, overrides, repeats, args.threads)
                cells.setdefault(env, {}).setdefault(key, {})[name] = entry
                print(f"  meta_test_return {entry['meta_test_return']:.3f} ({entry['wall_time_s']:.0f} s)", flush=True)
                save()
        episodes = args.own_embedding_episodes
        if episodes and own_embedding.get(env, {}).get(key, {}).get("episodes_per_task") != episodes:
            print(f"{env} seed {seed}: own embedding ...", flush=True)
            entry = own_embedding_return(run_dir, episodes, args.threads)
            if entry is not None:
                print(f"  return {entry['return']:.3f} ({entry['wall_time_s']:.0f} s)", flush=True)
                own_embedding.setdefault(env, {})[key] = entry
                save()
    save()
    atomic_write_text(markdown_path, render_markdown(report))
    print(f"wrote {json_path} and {markdown_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
