"""Collect a benchmark's finished cells and render them as a paper's results section.

``experiments.benchmark`` runs one subprocess per (env, algo, seed) *cell* into
``benchmarks/<tier>/cells/<env>/<algo>/<seed>/``. This module turns those cells into

- ``benchmarks/<tier>/results.json``: every finished cell's figures plus where, when and how they were made;
- ``benchmarks/<tier>/RESULTS.md``: per environment a table (rows = methods) with the protocol's
  ``meta_test_return`` and the low-noise final evaluation as mean ± std over seeds, beside the reference
  benchmark's own numbers (SPEC section 7) and the known-task optimum;
- ``benchmarks/<tier>/curves_<env>.png``: learning curves, mean ± std band over seeds.

Rendering reads only the aggregated ``results.json`` dict, so a table can be re-rendered (or tested) without
the cells, and a half-finished benchmark renders with its missing cells shown as "—".
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from algos.core.io import atomic_write_json, atomic_write_text, read_json
from algos.core.meta_sac import MetaSACConfig

# Standard deviations over seeds are sample standard deviations (ddof = 1): with three seeds the population
# formula would understate the spread by a factor sqrt(2/3). A single seed therefore shows no "±".
STD_DDOF = 1

# SPEC section 7: the reference benchmark's own runs (20 iterations, full gradient budget, mean of three seeds).
REFERENCE_LABEL = ("reference's own runs at the benchmark tier (20 iterations × full gradient budget), "
                   "not comparable budget")
# at the benchmark tier the runs here have the reference's budget: its numbers stand beside them as equals
REFERENCE_LABEL_SAME_BUDGET = ("reference's own runs, mean of three seeds, on this same protocol and budget "
                               "(the benchmark tier)")
REFERENCE_BUDGET_TIER = "benchmark"


FINDINGS_FILE = "FINDINGS.md"  # hand-written analysis of a tier's results, included in its RESULTS.md

def reference_label(tier: str) -> str:
    return REFERENCE_LABEL_SAME_BUDGET if tier == REFERENCE_BUDGET_TIER else REFERENCE_LABEL

REFERENCE_RESULTS: dict[str, dict[str, float]] = {
    "point-robot": {"FOCAL": -12.862, "PEARL": -15.468, "VariBAD": -12.494,
                    "best other designed method seen": -9.803},
    "cheetah-vel": {"FOCAL": -91.923, "PEARL": -64.634, "VariBAD": -69.431,
                    "best other designed method seen": -52.637},
    "sparse-point-robot": {"FOCAL": 0.233, "PEARL": 5.491, "VariBAD": 0.000,
                           "best other designed method seen": 4.876},
}
# which reference row sits beside which of our algorithms
REFERENCE_ROW_FOR_ALGO = {"pearl": "PEARL", "focal": "FOCAL", "varibad": "VariBAD"}

# SPEC section 7: what the final episode can score at best when the task is known.
KNOWN_OPTIMUM: dict[str, tuple[float | None, str]] = {
    "point-robot": (-4.60, "known-goal optimum -4.60 (random starts; a 10-task mean has std ≈ 1.2 from the starts "
                           "alone); standing still scores -19.67, heading for the origin -14.08"),
    "sparse-point-robot": (13.07, "known-goal optimum from (0, 0) 13.07; one blind search episode earns at most "
                                  "≈ 6.7"),
    "cheetah-vel": (None, "no closed form; open-loop gaits found by search reach ≈ -31, and the optimum is no "
                          "higher than ≈ -5"),
}

# Names of SPEC section 6: the baselines are the reference benchmark's online SAC adaptations, not the originals.
DISPLAY_NAMES = {
    "sac-no-context": "SAC (no context)",
    "pearl": "PEARL",
    "focal": "FOCAL (online SAC variant)",
    "varibad": "VariBAD (online SAC variant)",
    "setformer": "setformer (ours)",
    "oracle": "oracle (true task)",
}
ALGO_ORDER = ("sac-no-context", "pearl", "focal", "varibad", "setformer", "oracle")
ENV_ORDER = ("point-robot", "sparse-point-robot", "cheetah-vel")
OUR_METHOD = "setformer"
# methods the project's own one is compared against at equal budget (the oracle is a reference line, not a method)
BASELINES = ("sac-no-context", "pearl", "focal", "varibad")
# MetaSACConfig's fields: every SAC-based method has them, so differing values are worth a line in the table
SHARED_HYPERPARAMETERS = tuple(f.name for f in dataclasses.fields(MetaSACConfig))
DASH = "—"

CELL_FIELDS = ("env", "algo", "seed", "meta_test_return", "final_eval", "online_returns", "learning_curve",
               "env_steps", "grad_steps", "wall_time_s", "parameter_count", "git_commit", "git_commits", "machine")


def display_name(algo: str) -> str:
    return DISPLAY_NAMES.get(algo, algo)


def _ordered(items: Iterable[str], order: tuple[str, ...]) -> list[str]:
    """Known names in the paper's order first, then any others (a new method in the registry) alphabetically."""
    unique = set(items)
    return [x for x in order if x in unique] + sorted(unique - set(order))


# ---------------------------------------------------------------------- collection
def cell_record(results: dict, cell_dir: str, with_config: bool = False) -> dict:
    """The figures of one finished run (its ``results.json``) that the benchmark keeps, plus its protocol so
    the budget can be stated from what actually ran rather than from what was asked for; ``with_config`` keeps
    the whole saved config too (not written into the tier's results.json)."""
    record = {key: results.get(key) for key in CELL_FIELDS}
    record["tier"] = results.get("tier")
    record["protocol"] = (results.get("config") or {}).get("protocol")
    agent = (results.get("config") or {}).get("agent") or {}
    record["shared_hyperparameters"] = {key: agent[key] for key in SHARED_HYPERPARAMETERS if key in agent}
    record["finished_at"] = results.get("finished_at")
    record["cell_dir"] = cell_dir
    if with_config:
        record["config"] = results.get("config") or {}
    return record


def collect_cells(tier_dir: Path, with_config: bool = False) -> tuple[list[dict], list[str]]:
    """Every finished cell under ``tier_dir/cells``; unreadable ``results.json`` files become notes, not crashes,
    so one corrupt cell never hides the rest of the table."""
    cells, problems = [], []
    for path in sorted(Path(tier_dir, "cells").glob("*/*/*/results.json")):
        try:
            results = read_json(path, what="cell results")
            cells.append(cell_record(results, str(path.parent.relative_to(tier_dir)), with_config))
        except (RuntimeError, OSError) as error:
            problems.append(f"skipped unreadable cell {path.parent}: {error}")
    cells.sort(key=lambda c: (c["env"], c["algo"], c["seed"]))
    return cells, problems


def build_summary(tier: str, cells: list[dict], plan: dict, command: str, machine: dict, commit: str,
                  notes: list[str] | None = None) -> dict:
    """The aggregated ``results.json``: what was asked for (``plan``: envs, algos, seeds and combinations that were
    skipped), what finished (``cells``) and the provenance of the rendering."""
    return {
        "tier": tier,
        "command": command,
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine,
        "git_commit": commit,
        "std_ddof": STD_DDOF,
        "plan": plan,
        "notes": list(notes or []),
        "cells": cells,
    }


# ---------------------------------------------------------------------- statistics and formatting
def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample std (``STD_DDOF``); the std is ``None`` when it is undefined (fewer than two values)."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=STD_DDOF)) if len(array) > STD_DDOF else None
    return float(array.mean()), std


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return DASH
    return f"{value:.{digits}f}"


def format_mean_std(values: list[float], planned: int) -> str:
    """``mean ± std (n=k)``; ``(n=k/planned)`` while seeds are missing; "—" with the count when none finished."""
    if not values:
        return f"{DASH} (0/{planned} seeds)"
    mean, std = mean_std(values)
    count = f"n={len(values)}" if len(values) >= planned else f"n={len(values)}/{planned}"
    spread = f" ± {fmt(std)}" if std is not None else ""
    return f"{fmt(mean)}{spread} ({count})"


def _final_eval_value(cell: dict) -> float | None:
    final = cell.get("final_eval") or {}
    return final.get("meta_test_return")


def format_delta(diffs: list[float], with_count: bool = False) -> str:
    """A paired difference: ``+1.23 ± 0.45`` (sample std over pairs), optionally ``(n=k)``; "—" for none."""
    if not diffs:
        return DASH
    mean, std = mean_std(diffs)
    return (f"{mean:+.2f}" + (f" ± {std:.2f}" if std is not None else "")
            + (f" (n={len(diffs)})" if with_count else ""))


def report_heading(title: str, report: dict, extra: str = "") -> list[str]:
    """The opening lines every results report shares: ``# <title>``, then ``Generated <when> by `<command>` at commit
    `<commit>` on <cpu> (<cores> cores, torch <version><extra>).``"""
    machine = report.get("machine") or {}
    provenance = (f"Generated {report.get('generated_at', '?')} by `{report.get('command', '?')}` at commit "
                  f"`{report.get('git_commit', '?')}` on {machine.get('cpu', '?')} ({machine.get('cores', '?')} "
                  f"cores, torch {machine.get('torch', '?')}){extra}.")
    return [f"# {title}", "", provenance, ""]


def short_commit(commit: str | None) -> str:
    """``abc1234`` or ``abc1234-dirty`` from a full ``git rev-parse`` hash as runs record it."""
    full = str(commit or "?")
    return full[:7] + ("-dirty" if full.endswith("-dirty") else "")


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _unique(values: Iterable[Any]) -> list[Any]:
    out = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def _join_unique(values: Iterable[Any], render=str) -> str:
    unique = _unique(v for v in values if v is not None)
    if not unique:
        return DASH
    if len(unique) == 1:
        return render(unique[0])
    return " / ".join(render(v) for v in unique) + " (differs between cells!)"


# ---------------------------------------------------------------------- layout helpers
def _plan_lists(summary: dict) -> tuple[list[str], dict[str, list[str]], list[int]]:
    """Environments, the methods shown per environment, and the planned seeds: the plan's, plus anything found."""
    plan = summary.get("plan") or {}
    cells = summary.get("cells") or []
    envs = _ordered([*plan.get("envs", []), *(c["env"] for c in cells)], ENV_ORDER)
    skipped = {(s["env"], s["algo"]) for s in plan.get("skipped", [])}
    algos_by_env = {}
    for env in envs:
        found = [c["algo"] for c in cells if c["env"] == env]
        wanted = [a for a in plan.get("algos", []) if (env, a) not in skipped]
        algos_by_env[env] = _ordered([*wanted, *found], ALGO_ORDER)
    seeds = sorted(set(plan.get("seeds", [])) | {c["seed"] for c in cells})
    return envs, algos_by_env, seeds


def _cells_by(summary: dict) -> dict[tuple[str, str], dict[int, dict]]:
    grouped: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for cell in summary.get("cells") or []:
        grouped[(cell["env"], cell["algo"])][cell["seed"]] = cell
    return grouped


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------- rendering
def _budget_section(summary: dict, envs: list[str], grouped) -> str:
    """The budget each environment's cells actually ran with, read from the cells themselves; a method whose
    environment or gradient steps differ from the others' is flagged, since the tables claim equal budget."""
    rows, warnings = [], []
    for env in envs:
        cells = [cell for (e, _a), by_seed in grouped.items() if e == env for cell in by_seed.values()]
        protocols = [c["protocol"] for c in cells if c.get("protocol")]
        trained = [c for c in cells if (c.get("grad_steps") or 0) > 0]  # the oracle neither collects nor trains

        def proto(key: str) -> str:
            return _join_unique((p.get(key) for p in protocols))

        def per_run(key: str) -> str:
            return _join_unique((c.get(key) for c in trained), render=lambda v: f"{v:,}")

        batches = _join_unique((f"{p['meta_batch']} × {p['batch_size']}" for p in protocols
                                if "meta_batch" in p and "batch_size" in p))
        evaluation = _join_unique(
            (f"{p['num_steps_per_eval']} steps, {p['num_exp_traj_eval']} exploring ep., "
             f"{_plural(p['num_evals'], 'repeat')}"
             for p in protocols if {"num_steps_per_eval", "num_exp_traj_eval", "num_evals"} <= set(p)))
        final_repeats = _join_unique(((c.get("final_eval") or {}).get("num_repeats") for c in cells))
        rows.append([env, proto("num_iterations"), proto("num_train_steps_per_itr"), batches,
                     proto("embedding_batch_size"), per_run("env_steps"), per_run("grad_steps"), evaluation,
                     final_repeats])
        for key in ("env_steps", "grad_steps"):
            by_algo = {c["algo"]: c.get(key) for c in trained}
            if len(set(by_algo.values())) > 1:
                warnings.append(f"**Unequal budget on {env}:** {key} per run differs between methods "
                                f"({', '.join(f'{display_name(a)} {v:,}' for a, v in sorted(by_algo.items()))}).")
    header = ["env", "iterations", "gradient steps / iteration", "meta_batch × batch_size", "context size",
              "env steps / run", "gradient steps / run", "meta-test evaluation", "low-noise repeats"]
    return _table(header, rows) + ("\n\n" + "\n".join(warnings) if warnings else "")


def _env_section(env: str, algos: list[str], seeds: list[int], grouped, curve_file: str | None, tier: str) -> str:
    planned = len(seeds)
    final_repeats = _unique((cell.get("final_eval") or {}).get("num_repeats")
                            for a in algos for cell in grouped.get((env, a), {}).values())
    final_repeats = [r for r in final_repeats if r is not None]
    low_noise_header = (f"low-noise final eval ({_plural(final_repeats[0], 'repeat')})" if len(final_repeats) == 1
                        else "low-noise final eval")
    header = ["method", "meta-test return (protocol)", low_noise_header, "per seed (protocol)",
              "online return per episode", "parameters", "wall time (min)", "reference†"]
    rows, figures = [], {}
    for algo in algos:
        by_seed = grouped.get((env, algo), {})
        done = [by_seed[s] for s in seeds if s in by_seed]
        protocol_values = [c["meta_test_return"] for c in done if c.get("meta_test_return") is not None]
        final_values = [v for v in (_final_eval_value(c) for c in done) if v is not None]
        figures[algo] = (protocol_values, final_values)
        per_seed = " · ".join(
            f"{s}: {fmt(by_seed[s].get('meta_test_return')) if s in by_seed else DASH}" for s in seeds)
        online = [c["online_returns"] for c in done if c.get("online_returns")]
        if online and len({len(o) for o in online}) == 1:
            online_text = " / ".join(fmt(v, 1) for v in np.mean(np.asarray(online, dtype=np.float64), axis=0))
        else:
            online_text = DASH
        params = _join_unique((c.get("parameter_count") for c in done), render=lambda v: f"{v:,}")
        wall = [c["wall_time_s"] for c in done if c.get("wall_time_s") is not None]
        wall_text = fmt(float(np.mean(wall)) / 60.0) if wall else DASH
        reference_row = REFERENCE_ROW_FOR_ALGO.get(algo)
        reference = REFERENCE_RESULTS.get(env, {}).get(reference_row) if reference_row else None
        reference_text = f"{reference:.3f}†" if reference is not None else ""
        rows.append([display_name(algo), format_mean_std(protocol_values, planned),
                     format_mean_std(final_values, planned), per_seed, online_text, params, wall_text,
                     reference_text])

    parts = [f"## {env}", "", _table(header, rows), ""]
    # reference lines: the optimum (and the oracle's own figure), then the reference benchmark's numbers
    optimum, optimum_text = KNOWN_OPTIMUM.get(env, (None, "no known optimum"))
    oracle_line = ""
    if figures.get("oracle") and figures["oracle"][0]:
        protocol_values, final_values = figures["oracle"]
        oracle_line = (f" The oracle (true task) run here scores {format_mean_std(protocol_values, planned)} on the "
                       f"protocol figure and {format_mean_std(final_values, planned)} on the low-noise one.")
    parts.append(f"**Known-task optimum:** {optimum_text}.{oracle_line}")
    parts.append("")
    references = REFERENCE_RESULTS.get(env)
    if references:
        listed = ", ".join(f"{name} {value:.3f}" for name, value in references.items())
        parts.append(f"**† Reference numbers ({reference_label(tier)}):** {listed}.")
        parts.append("")
    margin = _margin_text(env, figures, tier)
    if margin:
        parts += [margin, ""]
    if curve_file:
        parts += [f"![Learning curves on {env}]({curve_file})", "",
                  f"Learning curves: protocol `meta_test_return` per iteration, mean ± std band over seeds "
                  f"([{curve_file}]({curve_file})).", ""]
    return "\n".join(parts)


def _margin_text(env: str, figures: dict[str, tuple[list[float], list[float]]], tier: str) -> str:
    """How far the project's method is above the strongest baseline run here (equal budget), and above the
    best reference number (only indicative below the benchmark tier, whose budget it has). Empty until both
    sides have data."""
    ours = figures.get(OUR_METHOD)
    if not ours or not ours[0]:
        return ""
    ours_protocol = float(np.mean(ours[0]))
    ours_final = float(np.mean(ours[1])) if ours[1] else None
    sentences = []
    baselines = {a: f for a, f in figures.items() if a in BASELINES and f[0]}
    if baselines:
        best = max(baselines, key=lambda a: np.mean(baselines[a][0]))
        text = (f"{display_name(OUR_METHOD)} minus the strongest baseline run here at equal budget "
                f"({display_name(best)}): {ours_protocol - float(np.mean(baselines[best][0])):+.2f} on the protocol "
                f"figure")
        best_final = [a for a in baselines if baselines[a][1]]
        if ours_final is not None and best_final:
            best_f = max(best_final, key=lambda a: np.mean(baselines[a][1]))
            text += (f", {ours_final - float(np.mean(baselines[best_f][1])):+.2f} on the low-noise figure "
                     f"(vs {display_name(best_f)})")
        sentences.append(text + ".")
    references = REFERENCE_RESULTS.get(env)
    if references:
        best_ref = max(references.values())
        budget = "same budget" if tier == REFERENCE_BUDGET_TIER else "not comparable budget"
        sentences.append(f"Against the best reference number ({best_ref:.3f}, {budget}): "
                         f"{ours_protocol - best_ref:+.2f} (protocol figure, means over seeds).")
    return " ".join(sentences)


def _hyperparameter_text(summary: dict) -> str:
    """The hyperparameters every SAC-based method has (``MetaSACConfig``) whose values differ between the methods of
    this table: equal budget is not equal tuning, and a reader must see where the methods were set differently."""
    values: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for cell in summary.get("cells") or []:
        for key, value in (cell.get("shared_hyperparameters") or {}).items():
            if value not in values[key][cell["algo"]]:
                values[key][cell["algo"]].append(value)
    lines = []
    for key in SHARED_HYPERPARAMETERS:
        by_algo = values.get(key, {})
        if len({json.dumps(v) for vs in by_algo.values() for v in vs}) <= 1:
            continue
        groups: dict[str, list[str]] = defaultdict(list)
        for algo in _ordered(by_algo, ALGO_ORDER):
            groups[" / ".join(map(str, by_algo[algo]))].append(display_name(algo))
        lines.append(f"`{key}`: " + "; ".join(f"{', '.join(names)} {value}" for value, names in groups.items()))
    if not lines:
        return ""
    return ("**Hyperparameters that differ between methods** (same budget, not the same settings; from the cells' "
            "configs): " + " · ".join(lines) + ".")


def _code_text(summary: dict) -> str:
    """Which commit each method's cells ran: a reader must see when one table mixes versions of a method."""
    commits: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for cell in summary.get("cells") or []:
        # a resumed cell ran its segments at each commit it lists: start → resumed at
        segments = cell.get("git_commits") or [cell.get("git_commit")]
        commit = " → ".join(short_commit(c) for c in segments)
        commits[display_name(cell["algo"])][commit].append(f"{cell['env']} {cell['seed']}")
    if not commits:
        return ""
    parts = []
    for algo, by_commit in commits.items():
        if len(by_commit) == 1:
            parts.append(f"{algo} `{next(iter(by_commit))}`")
        else:
            parts.append(f"{algo} " + "; ".join(f"`{c}` ({', '.join(cells)})" for c, cells in by_commit.items()))
    return ("**Code.** The commit each method's cells ran at (`-dirty`: with uncommitted changes; `a → b`: started "
            "at `a`, resumed at `b`): "
            + " · ".join(parts) + ".")


def render_markdown(summary: dict, curve_files: dict[str, str] | None = None,
                    companions: dict[str, str] | None = None) -> str:
    """RESULTS.md: setup and budget, one table per environment, reference lines, curves and notes.
    ``companions`` maps a relative link to what it holds (other results files of the tier), listed under the setup."""
    curve_files = curve_files or {}
    envs, algos_by_env, seeds = _plan_lists(summary)
    grouped = _cells_by(summary)
    plan = summary.get("plan") or {}
    tier = summary.get("tier", "?")
    parts = [
        *report_heading(f"Results: {tier} tier", summary),
        "## Setup",
        "",
        f"Every method is meta-trained on each environment with seeds {', '.join(map(str, seeds)) or DASH} under "
        f"the protocol of SPEC section 3 at the **{tier}** tier, one independent run (a *cell*) per environment, "
        "method and seed. All methods in one table share the environment steps, gradient steps and batch sizes "
        "below (read from the finished cells); parameter counts and wall time differ and are reported.",
        "",
        _budget_section(summary, envs, grouped),
        "",
        _code_text(summary),
        "",
        *([text, ""] if (text := _hyperparameter_text(summary)) else []),
        "**Figures.** *meta-test return (protocol)* is the protocol's own figure after the last iteration: on each "
        "held-out task the context is cleared, episodes run back to back, the first ones explore, and the task "
        "scores the return of the final episode (averaged over `num_evals` repeats); the figure is the mean over "
        "the 10 held-out tasks. It is noisy, so the final policy is also evaluated with more repeats "
        "(*low-noise final eval*). Each entry is the mean ± sample standard deviation over seeds (ddof = 1; a "
        "single seed shows no ±) with the number of seeds n; *per seed* lists the protocol figure of each seed. "
        "*Online return per episode* is the protocol evaluation's return of each episode in order (exploration "
        "episodes first, the last one scored), averaged over tasks and seeds. Wall time is the mean per run "
        "as the cell measured it, summed over resumed segments; cells shared the cores with other jobs, so it is "
        "an upper bound that depends on the load, not a speed figure (the throughput benchmark, "
        "`benchmarks/THROUGHPUT.md`, measures speed in one controlled run).",
        "",
    ]
    if companions:
        parts += ["**See also.** " + " · ".join(f"[{link}]({link}): {what}" for link, what in companions.items()),
                  ""]
    for env in envs:
        parts.append(_env_section(env, algos_by_env[env], seeds, grouped, curve_files.get(env), tier))

    notes = []
    for skipped in plan.get("skipped", []):
        notes.append(f"{display_name(skipped['algo'])} on {skipped['env']}: not run ({skipped['reason']}).")
    for env in envs:
        for algo in algos_by_env[env]:
            missing = [s for s in seeds if s not in grouped.get((env, algo), {})]
            if missing:
                notes.append(f"{display_name(algo)} on {env}: seed(s) {', '.join(map(str, missing))} not finished.")
    notes += summary.get("notes", [])
    if notes:
        parts += ["## Notes", ""] + [f"- {note}" for note in notes] + [""]
    if summary.get("findings"):
        parts += ["## Findings", "", f"*Written by hand in `{FINDINGS_FILE}` beside this file and included as it is; "
                  "every figure it quotes is in the tables above or in the files it names.*", "",
                  summary["findings"].strip(), ""]
    return "\n".join(parts).rstrip() + "\n"


# ---------------------------------------------------------------------- learning curves
def _curve(cells: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Iterations and the mean/std over seeds of ``meta_test_return`` at each iteration any seed evaluated."""
    per_iteration: dict[int, list[float]] = defaultdict(list)
    for cell in cells:
        for row in cell.get("learning_curve") or []:
            if row.get("meta_test_return") is not None:
                per_iteration[int(row["iteration"])].append(float(row["meta_test_return"]))
    iterations = np.array(sorted(per_iteration))
    stats = [mean_std(per_iteration[i]) for i in iterations]
    means = np.array([m for m, _ in stats])
    stds = np.array([s if s is not None else 0.0 for _, s in stats])
    return iterations, means, stds


def plot_learning_curves(summary: dict, out_dir: Path) -> dict[str, str]:
    """One PNG per environment with data; returns ``{env: file name}``. Written atomically (temp + rename)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    envs, algos_by_env, _seeds = _plan_lists(summary)
    grouped = _cells_by(summary)
    files = {}
    for env in envs:
        curves = {algo: _curve(list(grouped.get((env, algo), {}).values())) for algo in algos_by_env[env]}
        curves = {algo: c for algo, c in curves.items() if len(c[0])}
        if not curves:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for algo, (iterations, means, stds) in curves.items():
            n = len(grouped[(env, algo)])
            line, = ax.plot(iterations, means, label=f"{display_name(algo)} (n={n})", marker=".",
                            linestyle="--" if algo == "oracle" else "-")
            ax.fill_between(iterations, means - stds, means + stds, color=line.get_color(), alpha=0.2)
        optimum = KNOWN_OPTIMUM.get(env, (None, ""))[0]
        if optimum is not None:
            ax.axhline(optimum, color="black", linestyle=":", linewidth=1, label=f"known-task optimum ({optimum})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("iteration")
        ax.set_ylabel("meta-test return (protocol)")
        ax.set_title(f"{env} ({summary.get('tier', '?')} tier): mean ± std over seeds (ddof={STD_DDOF})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"curves_{env}.png"
        _atomic_savefig(fig, Path(out_dir) / name)
        plt.close(fig)
        files[env] = name
    return files


def _atomic_savefig(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp.png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# other results files a reader of RESULTS.md wants, relative to the tier directory ({tier}: its name)
COMPANIONS = {
    "REEVALUATIONS.md": "setformer's exploration rules switched off on the same final weights and seeds",
    "../ablations/ABLATIONS_{tier}.md": "setformer retrained with one switch flipped, paired seed by seed",
    "../baselines-lr1e-3/{tier}/RESULTS.md": "baselines rerun at setformer's learning rate (1e-3), same budget",
    "../THROUGHPUT.md": "gradient steps/s, environment steps/s and adapt() latency, one controlled run",
}


def write_report(tier_dir: Path, summary: dict) -> tuple[Path, Path]:
    """Write ``results.json``, the curve PNGs and ``RESULTS.md`` into ``tier_dir``, each atomically."""
    tier_dir = Path(tier_dir)
    results_path, markdown_path = tier_dir / "results.json", tier_dir / "RESULTS.md"
    atomic_write_json(results_path, summary)
    curve_files = plot_learning_curves(summary, tier_dir)
    links = {link.format(tier=summary.get("tier", "")): what for link, what in COMPANIONS.items()}
    companions = {link: what for link, what in links.items() if (tier_dir / link).exists()}
    atomic_write_text(markdown_path, render_markdown(summary, curve_files, companions))
    return results_path, markdown_path
