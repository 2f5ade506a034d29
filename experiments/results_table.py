"""Collect a benchmark's finished cells and render them as a paper's results section.

``experiments.benchmark`` runs one subprocess per (env, algo, seed) *cell* into
``benchmarks/<tier>/cells/<env>/<algo>/<seed>/``. This module turns those cells into

- ``benchmarks/<tier>/results.json``: every finished cell's figures plus where, when and how they were made;
- ``benchmarks/<tier>/RESULTS.md``: per environment a table (rows = methods) with the protocol's
  ``meta_test_return`` and the low-noise final evaluation as mean ± std over seeds, beside the reference
  benchmark's own numbers (``docs/PROTOCOL.md#reference-numbers``) and the known-task optimum;
- ``benchmarks/<tier>/curves_<env>.png``: learning curves, mean ± std band over seeds.

Rendering reads only the aggregated ``results.json`` dict, so a table can be re-rendered (or tested) without
the cells, and a half-finished benchmark renders with its missing cells shown as "—".
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from algos import algorithm_class, methods_with_role
from algos.core.config import TUNING_GRID, grid_settings
from algos.core.io import REPO_ROOT, atomic_savefig, atomic_write_json, atomic_write_text, read_json
from algos.core.meta_sac import MetaSACConfig
from experiments.report import (ALGO_ORDER, DASH, ENV_ORDER, REFERENCE, REFERENCE_RESULTS, STD_DDOF, baselines,
                                cpu_label, display_name, final_eval_value, fmt, format_mean_std, join_unique,
                                known_optimum, mean_std, ordered, ours, plural, provenance, reevaluation_paths,
                                reference_for, report_heading, run_code_verdict, short_commit, table, unique)

# docs/PROTOCOL.md#reference-numbers: the reference benchmark's own runs (20 iterations, full gradient budget, mean of three seeds).
REFERENCE_LABEL = ("reference's own runs at the benchmark tier (20 iterations × full gradient budget), "
                   "not comparable budget")
# at the benchmark tier the runs here have the reference's budget: its numbers stand beside them as equals
REFERENCE_LABEL_SAME_BUDGET = ("reference's own runs, mean of three seeds, on this same protocol and budget "
                               "(the benchmark tier)")
REFERENCE_BUDGET_TIER = REFERENCE["tier"]


FINDINGS_FILE = "FINDINGS.md"  # hand-written analysis of a tier's results, included in its RESULTS.md
# the protocol every table runs under, linked from its setup; repository-relative unless the report knows its folder
PROTOCOL_DOC, PROTOCOL_ANCHOR = "docs/PROTOCOL.md", "#training-protocol"
PROTOCOL_LINK = PROTOCOL_DOC + PROTOCOL_ANCHOR


def protocol_link(report_dir: Path | str) -> str:
    """The link to the protocol from a report written in ``report_dir``: relative where the folder is inside the
    repository, else the repository-relative ``PROTOCOL_LINK``."""
    folder = Path(report_dir).resolve()
    if not folder.is_relative_to(REPO_ROOT):
        return PROTOCOL_LINK
    return Path(os.path.relpath(REPO_ROOT / PROTOCOL_DOC, folder)).as_posix() + PROTOCOL_ANCHOR

def reference_label(tier: str) -> str:
    return REFERENCE_LABEL_SAME_BUDGET if tier == REFERENCE_BUDGET_TIER else REFERENCE_LABEL

# MetaSACConfig's fields: every SAC-based method has them, so differing values are worth a line in the table
SHARED_HYPERPARAMETERS = tuple(f.name for f in dataclasses.fields(MetaSACConfig))
# a cell saved before a field existed ran without it, which is the field's default: new options arrive switched off
# (computing as before), so a missing key is read as the default and a later cell that switched it on still shows
SHARED_DEFAULTS = {f.name: f.default for f in dataclasses.fields(MetaSACConfig)
                   if f.default is not dataclasses.MISSING}



def grid_point_of(hyperparameters: dict) -> str:
    """The ``TUNING_GRID`` point a cell's shared hyperparameters match (what a table names as its setting), or
    ``other`` where they match none (a cell run before the grid, or with hand-set values)."""
    settings = {**SHARED_DEFAULTS, **hyperparameters}
    for point in TUNING_GRID:
        if all(settings.get(key) == value for key, value in grid_settings(point).items()):
            return point
    return "other"


CELL_FIELDS = ("env", "algo", "seed", "meta_test_return", "final_eval", "online_returns", "learning_curve",
               "env_steps", "grad_steps", "wall_time_s", "parameter_count", "git_commit", "git_commits", "machine",
               "machines")


# ---------------------------------------------------------------------- collection
def cell_record(results: dict, cell_dir: str, with_config: bool = False) -> dict:
    """The figures of one finished run (its ``results.json``) that the benchmark keeps, plus its protocol so
    the budget can be stated from what actually ran rather than from what was asked for; ``with_config`` keeps
    the whole saved config too (not written into the tier's results.json)."""
    record = {key: results.get(key) for key in CELL_FIELDS}
    config = results.get("config") or {}
    record["tier"] = results.get("tier")
    record["protocol"] = config.get("protocol")
    agent = config.get("agent") or {}
    record["shared_hyperparameters"] = {key: agent[key] for key in SHARED_HYPERPARAMETERS if key in agent}
    try:  # a method's own description of its networks, read from the saved config
        record["architecture"] = algorithm_class(results["algo"]).architecture(agent)
    except (KeyError, ValueError):  # a config from before a setting existed, or a method no longer here
        record["architecture"] = ""
    # bf16=auto resolves per machine, so cells of one table may differ here; saved resolved (a bool), and a config
    # from before the option existed ran fp32
    record["bf16"] = bool(config.get("bf16", False))
    record["finished_at"] = results.get("finished_at")
    record["cell_dir"] = cell_dir
    if with_config:
        record["config"] = config
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


def build_summary(tier: str, cells: list[dict], plan: dict, command: str, notes: list[str] | None = None) -> dict:
    """The aggregated ``results.json``: what was asked for (``plan``: envs, algos, seeds, the (env, algo)
    combinations asked for and those skipped), what finished (``cells``) and the provenance of the rendering."""
    return {
        "tier": tier,
        **provenance(command),
        "std_ddof": STD_DDOF,
        "plan": plan,
        "notes": list(notes or []),
        "cells": cells,
    }


def asked_combinations(plan: dict) -> list[tuple[str, str]]:
    """The (env, algo) combinations a plan asked for: its ``combinations``, so that runners of other methods on other
    environments do not widen a table to their cross product; envs x algos for a plan written without them."""
    if "combinations" in plan:
        return [(env, algo) for env, algo in plan["combinations"]]
    return [(env, algo) for env in plan.get("envs", []) for algo in plan.get("algos", [])]


# ---------------------------------------------------------------------- layout helpers
def _plan_lists(summary: dict) -> tuple[list[str], dict[str, list[str]], list[int]]:
    """Environments, the methods shown per environment, and the planned seeds: the plan's, plus anything found."""
    plan = summary.get("plan") or {}
    cells = summary.get("cells") or []
    envs = ordered([*plan.get("envs", []), *(c["env"] for c in cells)], ENV_ORDER)
    skipped = {(s["env"], s["algo"]) for s in plan.get("skipped", [])}
    algos_by_env = {}
    for env in envs:
        found = [c["algo"] for c in cells if c["env"] == env]
        wanted = [a for e, a in asked_combinations(plan) if e == env and (e, a) not in skipped]
        algos_by_env[env] = ordered([*wanted, *found], ALGO_ORDER)
    seeds = sorted(set(plan.get("seeds", [])) | {c["seed"] for c in cells})
    return envs, algos_by_env, seeds


def _cells_by(summary: dict) -> dict[tuple[str, str], dict[int, dict]]:
    grouped: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for cell in summary.get("cells") or []:
        grouped[(cell["env"], cell["algo"])][cell["seed"]] = cell
    return grouped


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
            return join_unique((p.get(key) for p in protocols))

        def per_run(key: str) -> str:
            return join_unique((c.get(key) for c in trained), render=lambda v: f"{v:,}")

        batches = join_unique((f"{p['meta_batch']} × {p['batch_size']}" for p in protocols
                                if "meta_batch" in p and "batch_size" in p))
        evaluation = join_unique(
            (f"{p['num_steps_per_eval']} steps, {p['num_exp_traj_eval']} exploring ep., "
             f"{plural(p['num_evals'], 'repeat')}"
             for p in protocols if {"num_steps_per_eval", "num_exp_traj_eval", "num_evals"} <= set(p)))
        final_repeats = join_unique(((c.get("final_eval") or {}).get("num_repeats") for c in cells))
        test_tasks = join_unique((len(tasks) for c in cells
                                  if (tasks := (c.get("final_eval") or {}).get("per_task_final_returns"))))
        rows.append([env, proto("num_iterations"), proto("num_train_steps_per_itr"), batches,
                     proto("embedding_batch_size"), per_run("env_steps"), per_run("grad_steps"), evaluation,
                     final_repeats, test_tasks])
        for key in ("env_steps", "grad_steps"):
            by_algo = {c["algo"]: c.get(key) for c in trained}
            if len(set(by_algo.values())) > 1:
                warnings.append(f"**Unequal budget on {env}:** {key} per run differs between methods "
                                f"({', '.join(f'{display_name(a)} {v:,}' for a, v in sorted(by_algo.items()))}).")
    header = ["env", "iterations", "gradient steps / iteration", "meta_batch × batch_size", "context size",
              "env steps / run", "gradient steps / run", "meta-test evaluation", "low-noise repeats", "test tasks"]
    return table(header, rows) + ("\n\n" + "\n".join(warnings) if warnings else "")


def _env_section(env: str, algos: list[str], seeds: list[int], grouped, curve_file: str | None, tier: str) -> str:
    planned = len(seeds)
    final_repeats = unique((cell.get("final_eval") or {}).get("num_repeats")
                            for a in algos for cell in grouped.get((env, a), {}).values())
    final_repeats = [r for r in final_repeats if r is not None]
    low_noise_header = (f"low-noise final eval ({plural(final_repeats[0], 'repeat')})" if len(final_repeats) == 1
                        else "low-noise final eval")
    header = ["method", "setting", "meta-test return (protocol)", low_noise_header, "per seed (protocol)",
              "online return per episode", "parameters", "wall time (min)", "reference†"]
    # the low-noise figure on the validation tasks, which settings are chosen on (runs made before they existed lack it)
    validation = {a: [v for s in seeds if (v := ((grouped.get((env, a), {}).get(s) or {}).get("final_eval") or {})
                                           .get("validation_return")) is not None] for a in algos}
    if any(validation.values()):
        header.insert(4, "validation tasks (low-noise)")
    # the low-noise success rate on the test tasks, where the environment reports success (EnvSpec.reports_success)
    success = {a: [v for s in seeds if (v := ((grouped.get((env, a), {}).get(s) or {}).get("final_eval") or {})
                                        .get("meta_test_success")) is not None] for a in algos}
    if any(success.values()):
        header.insert(4, "success rate (low-noise)")
    rows, figures, seed_figures = [], {}, {}
    for algo in algos:
        by_seed = grouped.get((env, algo), {})
        done = [by_seed[s] for s in seeds if s in by_seed]
        # protocol and low-noise figures by seed (the margin pairs seeds), and as lists in seed order
        seed_figures[algo] = ({s: by_seed[s]["meta_test_return"] for s in seeds
                               if s in by_seed and by_seed[s].get("meta_test_return") is not None},
                              {s: v for s in seeds if s in by_seed and (v := final_eval_value(by_seed[s])) is not None})
        protocol_values, final_values = (list(by_s.values()) for by_s in seed_figures[algo])
        figures[algo] = (protocol_values, final_values)
        per_seed = " · ".join(
            f"{s}: {fmt(by_seed[s].get('meta_test_return')) if s in by_seed else DASH}" for s in seeds)
        online = [c["online_returns"] for c in done if c.get("online_returns")]
        if online:  # the episodes every seed's trials ran (more run where episodes end early)
            shortest = min(map(len, online))
            online_text = " / ".join(fmt(v, 1) for v in np.mean([o[:shortest] for o in online], axis=0,
                                                                 dtype=np.float64))
        else:
            online_text = DASH
        params = join_unique((c.get("parameter_count") for c in done), render=lambda v: f"{v:,}")
        wall = [c["wall_time_s"] for c in done if c.get("wall_time_s") is not None]
        wall_text = fmt(float(np.mean(wall)) / 60.0) if wall else DASH
        reference = reference_for(algo, env)
        reference_text = f"{reference:.3f}†" if reference is not None else ""
        setting = join_unique((f"`{grid_point_of(c['shared_hyperparameters'])}`" for c in done
                               if c.get("shared_hyperparameters")), render=str)
        rows.append([display_name(algo), setting, format_mean_std(protocol_values, planned),
                     format_mean_std(final_values, planned), per_seed, online_text, params, wall_text,
                     reference_text])
        if any(validation.values()):
            rows[-1].insert(4, format_mean_std(validation[algo], planned) if validation[algo] else DASH)
        if any(success.values()):
            rows[-1].insert(4, format_mean_std(success[algo], planned) if success[algo] else DASH)

    parts = [f"## {env}", "", table(header, rows), ""]
    # reference lines: the optimum (and the reference lines' own figures: the oracle), then the reference benchmark's
    optimum, optimum_text = known_optimum(env)
    reference_lines = ""
    for line_algo in reference_lines_of(figures):
        protocol_values, final_values = figures[line_algo]
        reference_lines += (f" The {display_name(line_algo)} run here scores {format_mean_std(protocol_values, planned)}"
                            f" on the protocol figure and {format_mean_std(final_values, planned)} on the low-noise one.")
    parts.append(f"**Known-task optimum:** {optimum_text}.{reference_lines}")
    parts.append("")
    references = REFERENCE_RESULTS.get(env)
    if references:
        listed = ", ".join(f"{name} {value:.3f}" for name, value in references.items())
        parts.append(f"**† Reference numbers ({reference_label(tier)}):** {listed}.")
        parts.append("")
    margin = _margin_text(env, seed_figures, tier)
    if margin:
        parts += [margin, ""]
    if curve_file:
        parts += [f"![Learning curves on {env}]({curve_file})", "",
                  f"Learning curves: protocol `meta_test_return` per iteration, mean ± std band over seeds "
                  f"([{curve_file}]({curve_file})).", ""]
    return "\n".join(parts)


def reference_lines_of(figures: dict[str, tuple[list[float], list[float]]]) -> list[str]:
    """The reference lines (role ``reference``, e.g. the oracle) among ``figures`` that have a figure."""
    return [algo for algo in methods_with_role("reference") if figures.get(algo) and figures[algo][0]]


def _margin_text(env: str, seed_figures: dict[str, tuple[dict[int, float], dict[int, float]]], tier: str) -> str:
    """How far the project's method is above the strongest baseline run here (equal budget), and above the
    best reference number (only indicative below the benchmark tier, whose budget it has). Empty until both
    sides have data. ``seed_figures``: per method, its protocol and low-noise figures by seed."""
    return " ".join(text for algo in ours() if (text := _margin_of(algo, env, seed_figures, tier)))


def _paired_difference(mine: dict[int, float], theirs: dict[int, float], label: str) -> str:
    """``mine`` minus ``theirs`` on the seeds both have: a method's mean over three seeds set against another's over
    one would mix the methods' difference with the seeds' spread. Names the seeds when not every seed is shared."""
    shared = sorted(set(mine) & set(theirs))
    if not shared:
        return f"no {label} figure on a seed both have run"
    difference = float(np.mean([mine[s] - theirs[s] for s in shared]))
    if set(shared) == set(mine) == set(theirs):
        return f"{difference:+.2f} on the {label} figure"
    seeds_text = f"seed{'s' if len(shared) > 1 else ''} {', '.join(map(str, shared))}"
    return f"{difference:+.2f} on the {label} figure (on {seeds_text}, the ones both have run)"


def _margin_of(algo: str, env: str, seed_figures: dict[str, tuple[dict[int, float], dict[int, float]]],
               tier: str) -> str:
    mine = seed_figures.get(algo)
    if not mine or not mine[0]:
        return ""
    mine_protocol = float(np.mean(list(mine[0].values())))
    sentences = []
    compared = {a: f for a, f in seed_figures.items() if a in baselines() and f[0]}
    if compared:
        best = max(compared, key=lambda a: np.mean(list(compared[a][0].values())))
        differences, strongest = [_paired_difference(mine[0], compared[best][0], "protocol")], display_name(best)
        best_final = [a for a in compared if compared[a][1]]
        if mine[1] and best_final:
            best_f = max(best_final, key=lambda a: np.mean(list(compared[a][1].values())))
            differences.append(_paired_difference(mine[1], compared[best_f][1], "low-noise"))
            if best_f != best:  # the baselines' order differs between the two figures: name each figure's
                strongest += f" on the protocol figure, {display_name(best_f)} on the low-noise one"
        sentences.append(f"{display_name(algo)} minus the strongest baseline run here at equal budget "
                         f"({strongest}): {', '.join(differences)}.")
    references = REFERENCE_RESULTS.get(env)
    if references:
        best_ref = max(references.values())
        budget = "same budget" if tier == REFERENCE_BUDGET_TIER else "not comparable budget"
        sentences.append(f"Against the best reference number ({best_ref:.3f}, {budget}): "
                         f"{mine_protocol - best_ref:+.2f} (protocol figure, means over seeds).")
    return " ".join(sentences)


def _architecture_text(summary: dict) -> str:
    """Each method's task inference and networks, as its cells ran them: architecture differences, stated."""
    described: dict[str, list[str]] = defaultdict(list)
    for cell in summary.get("cells") or []:
        if cell.get("architecture") and cell["architecture"] not in described[cell["algo"]]:
            described[cell["algo"]].append(cell["architecture"])
    if not described:
        return ""
    return "**Architectures.** " + " · ".join(f"{display_name(algo)}: {' / '.join(described[algo])}"
                                             for algo in ordered(described, ALGO_ORDER)) + "."


def _hyperparameter_text(summary: dict) -> str:
    """The hyperparameters every SAC-based method has (``MetaSACConfig``) whose values differ between the methods of
    this table: equal budget is not equal tuning, and a reader must see where the methods were set differently."""
    values: dict[str, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
    for cell in summary.get("cells") or []:
        recorded = cell.get("shared_hyperparameters") or {}
        if not recorded:
            continue
        for key, value in ({**SHARED_DEFAULTS, **recorded}).items():
            if value not in values[key][cell["algo"]]:
                values[key][cell["algo"]].append(value)
    lines = []
    for key in SHARED_HYPERPARAMETERS:
        by_algo = values.get(key, {})
        if len({json.dumps(v) for vs in by_algo.values() for v in vs}) <= 1:
            continue
        groups: dict[str, list[str]] = defaultdict(list)
        for algo in ordered(by_algo, ALGO_ORDER):
            groups[" / ".join(map(str, by_algo[algo]))].append(display_name(algo))
        lines.append(f"`{key}`: " + "; ".join(f"{', '.join(names)} {value}" for value, names in groups.items()))
    if not lines:
        return ""
    return ("**Hyperparameters that differ between methods** (same budget, not the same settings; from the cells' "
            "configs): " + " · ".join(lines) + ".")


def _commits_of(cell: dict) -> str:
    """The commit a cell ran at; a resumed cell lists each segment's, in order (``start → resumed at``)."""
    return " → ".join(short_commit(c) for c in cell.get("git_commits") or [cell.get("git_commit")])


def _arithmetic_of(cell: dict) -> str | None:
    """bf16 autocast or fp32 (``bf16=auto`` resolves per machine); None where no gradient step ran (the oracle)."""
    if cell.get("grad_steps") == 0:
        return None
    return "bf16 autocast" if cell.get("bf16", False) else "fp32"


def _cpus_of(cell: dict) -> str:
    """The CPU a cell ran on, or each in turn where it was resumed on another."""
    machines = cell.get("machines") or [cell.get("machine")]  # a cell from before segments were recorded
    labels = [cpu_label(m) if m else "a CPU not recorded" for m in machines]
    return " then ".join(label for i, label in enumerate(labels) if i == 0 or label != labels[i - 1])


CELLS_LINK = "[Cells](#cells)"


def _code_text(summary: dict) -> str:
    """Which code each method's cells ran: a reader must see when one table mixes versions of a method."""
    by_algo: dict[str, Counter[str]] = defaultdict(Counter)  # method -> cells per commit (or resumed sequence)
    segments: dict[str, list[str]] = defaultdict(list)
    for cell in summary.get("cells") or []:
        by_algo[cell["algo"]][_commits_of(cell)] += 1
        segments[cell["algo"]].extend(cell.get("git_commits") or [cell.get("git_commit")])
    if not by_algo:
        return ""
    parts = []
    for algo in ordered(by_algo, ALGO_ORDER):
        by_commit, name = by_algo[algo], display_name(algo)
        if len(by_commit) == 1:
            parts.append(f"{name} `{next(iter(by_commit))}`")
        else:
            verdict = run_code_verdict(segments[algo])
            parts.append(f"{name} {plural(len(unique(c for c in segments[algo] if c)), 'commit')} over "
                         f"{plural(by_commit.total(), 'cell')}" + (f" ({verdict})" if verdict else ""))
    return (f"**Code.** The commit each method's cells ran at (each cell's under {CELLS_LINK}): " + " · ".join(parts)
            + ".")


def _precision_text(summary: dict) -> str:
    """The arithmetic of each method's gradient steps. ``bf16=auto`` autocasts to bf16 only on CPUs with native
    bf16, so a tier filled on several machines mixes bf16 and fp32 cells: the same math and budget, rounded
    differently, and a reader must see which figure came from which."""
    by_algo: dict[str, Counter[str]] = defaultdict(Counter)  # method -> cells per arithmetic
    for cell in summary.get("cells") or []:
        if (arithmetic := _arithmetic_of(cell)) is not None:
            by_algo[cell["algo"]][arithmetic] += 1
    if not by_algo:
        return ""
    kinds = {kind for by_kind in by_algo.values() for kind in by_kind}
    lead = "**Arithmetic.** Gradient steps ran in "
    if len(kinds) == 1:
        return f"{lead}{kinds.pop()} in every cell (`bf16`, resolved per machine, in each cell's config)."
    parts = []
    for algo in ordered(by_algo, ALGO_ORDER):
        by_kind, name = by_algo[algo], display_name(algo)
        if len(by_kind) == 1:
            parts.append(f"{name} {next(iter(by_kind))}")
        else:
            parts.append(f"{name} " + ", ".join(f"{kind} ({plural(n, 'cell')})" for kind, n in by_kind.items()))
    return (f"{lead}bf16 autocast or fp32 as `bf16=auto` resolved on each cell's machine (the same math and "
            f"budget, rounded differently; each cell's under {CELLS_LINK}): " + " · ".join(parts) + ".")


def _machine_text(summary: dict) -> str:
    """The CPUs the cells ran on, with how many cells each: speed and the last digits depend on it."""
    by_cpu: dict[str, Counter[str]] = defaultdict(Counter)  # CPU(s) -> cells per method
    for cell in summary.get("cells") or []:
        by_cpu[_cpus_of(cell)][cell["algo"]] += 1
    if not by_cpu:
        return ""
    return (f"**Machines** (the CPU each cell ran on; each cell's under {CELLS_LINK}). "
            + " · ".join(f"{cpu}: {plural(algos.total(), 'cell')} ("
                         + ", ".join(f"{display_name(a)} {algos[a]}" for a in ordered(algos, ALGO_ORDER)) + ")"
                         for cpu, algos in by_cpu.items()) + ".")


def _cells_section(summary: dict) -> list[str]:
    """Every cell's provenance, one row each: the commit(s), arithmetic and CPU(s) it ran with, and its wall time."""
    def rank(name: str, order: tuple[str, ...]) -> tuple[int, str]:  # the tables' order, then others by name
        return (order.index(name) if name in order else len(order), name)

    cells = sorted(summary.get("cells") or [],
                   key=lambda c: (rank(c["env"], ENV_ORDER), rank(c["algo"], ALGO_ORDER), c["seed"]))
    if not cells:
        return []
    rows = [[c["env"], display_name(c["algo"]), str(c["seed"]), f"`{_commits_of(c)}`", _arithmetic_of(c) or DASH,
             _cpus_of(c), DASH if c.get("wall_time_s") is None else f"{c['wall_time_s'] / 60:.1f}"] for c in cells]
    return ["## Cells", "",
            "Where and how each cell ran, from its `results.json` (`-dirty`: with uncommitted changes; `a → b`: "
            "started at `a`, resumed at `b`; *arithmetic*: of the gradient steps, — where none ran; *wall time*: summed over "
            "resumed segments, beside whatever else the machine ran).", "",
            table(["environment", "method", "seed", "commit", "arithmetic", "CPU", "wall time (min)"], rows), ""]


def render_markdown(summary: dict, curve_files: dict[str, str] | None = None,
                    companions: dict[str, str] | None = None, protocol: str = PROTOCOL_LINK) -> str:
    """RESULTS.md: setup and budget, one table per environment, reference lines, curves and notes.
    ``companions`` maps a relative link to what it holds (other results files of the tier), listed under the setup;
    ``protocol`` links the protocol document from where the file lands (:func:`protocol_link`)."""
    curve_files = curve_files or {}
    envs, algos_by_env, seeds = _plan_lists(summary)
    grouped = _cells_by(summary)
    plan = summary.get("plan") or {}
    tier = summary.get("tier", "?")
    if not envs:  # nothing planned or finished yet: say so instead of empty tables
        return "\n".join([*report_heading(f"Results: {tier} tier", summary),
                          "No cell of this tier has finished yet: the tables appear here as cells finish."]) + "\n"
    parts = [
        *report_heading(f"Results: {tier} tier", summary),
        "## Setup",
        "",
        f"Every method is meta-trained on each environment with seeds {', '.join(map(str, seeds)) or DASH} under "
        f"the protocol of [docs/PROTOCOL.md]({protocol}) at the **{tier}** tier, one independent run (a *cell*) per environment, "
        "method and seed. All methods in one table share the environment steps, gradient steps and batch sizes "
        "below (read from the finished cells); parameter counts and wall time differ and are reported.",
        "",
        _budget_section(summary, envs, grouped),
        "",
        _code_text(summary),
        "",
        *([text, ""] if (text := _precision_text(summary)) else []),
        *([text, ""] if (text := _machine_text(summary)) else []),
        *([text, ""] if (text := _architecture_text(summary)) else []),
        *([text, ""] if (text := _hyperparameter_text(summary)) else []),
        "**Settings.** *setting* names the point of the tuning grid a method's cells ran at (`other`: none of them): "
        + "; ".join(f"`{point}`: {', '.join(assignments)}" for point, assignments in TUNING_GRID.items())
        + f". Each method's point on each environment is chosen on validation tasks only ([selection rule]"
        f"({protocol.split('#')[0]}#selection-rule)); settings chosen on test tasks before the validation tasks "
        f"existed, and the cells they touched, are listed in [docs/DESIGN.md]"
        f"({protocol.split('#')[0].replace('PROTOCOL.md', 'DESIGN.md')}#choices-made-on-the-test-tasks).",
        "",
        "**Figures.** *meta-test return (protocol)* is the protocol's own figure after the last iteration: on each "
        "held-out task the context is cleared, episodes run back to back, the first ones explore, and the task "
        "scores the return of the final episode (averaged over `num_evals` repeats); the figure is the mean over "
        "the environment's held-out test tasks (how many: the setup table). It is noisy, so the final policy is also evaluated with more repeats "
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
    parts += _cells_section(summary)
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
                            linestyle="--" if algo in methods_with_role("reference") else "-")
            ax.fill_between(iterations, means - stds, means + stds, color=line.get_color(), alpha=0.2)
        optimum = known_optimum(env)[0]
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
        atomic_savefig(fig, Path(out_dir) / name)
        plt.close(fig)
        files[env] = name
    return files


# other results files a reader of RESULTS.md wants, relative to the tier directory ({tier}: its name)
COMPANIONS = {
    "../ablations/ABLATIONS_{tier}.md": "setformer retrained with one switch flipped, paired seed by seed",
    "../baselines-lr1e-3/{tier}/RESULTS.md": "baselines rerun at lr 1e-3 (setformer's lr until it took the baselines' 3e-4), same budget",
    "../THROUGHPUT.md": "gradient steps/s, environment steps/s and adapt() latency, one controlled run",
    "RERUN_CHECKS.md": "cells' first iterations rerun at a later commit and compared bit for bit: whether the code "
                       "changes between cells (the Code line and the Cells section) changed what they compute",
}


def write_report(tier_dir: Path, summary: dict) -> tuple[Path, Path]:
    """Write ``results.json``, the curve PNGs and ``RESULTS.md`` into ``tier_dir``, each atomically."""
    tier_dir = Path(tier_dir)
    results_path, markdown_path = tier_dir / "results.json", tier_dir / "RESULTS.md"
    atomic_write_json(results_path, summary)
    curve_files = plot_learning_curves(summary, tier_dir)
    reevaluations = {reevaluation_paths(tier_dir, algo)[1].name: f"{display_name(algo)}'s final weights evaluated "
                                                                  f"again with an inference-time setting changed, "
                                                                  f"same seeds"
                     for algo in ALGO_ORDER}
    links = {**reevaluations,
             **{link.format(tier=summary.get("tier", "")): what for link, what in COMPANIONS.items()}}
    companions = {link: what for link, what in links.items() if (tier_dir / link).exists()}
    atomic_write_text(markdown_path, render_markdown(summary, curve_files, companions, protocol_link(tier_dir)))
    return results_path, markdown_path


def render_tier(tier_dir: Path, tier: str, plan: dict, command: str, notes: list[str]) -> Path:
    """Collect a tier folder's finished cells and write its results.json, curves and RESULTS.md (with the folder's
    hand-written FINDINGS.md, if any); returns the markdown's path."""
    cells, problems = collect_cells(tier_dir)
    summary = build_summary(tier, cells, plan, command, [*notes, *problems])
    findings = Path(tier_dir) / FINDINGS_FILE
    if findings.exists():
        summary["findings"] = findings.read_text()
    _results, markdown = write_report(tier_dir, summary)
    return markdown
