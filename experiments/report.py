"""What every results report shares: provenance, statistics, formatting, tables, the reference numbers and
the order and names of methods and environments, and the atomic JSON + markdown + figure writes.

The benchmark's RESULTS.md (``results_table``), the ablations, the re-evaluations and the throughput report all
build on this module, so they state provenance, spread and missing values the same way.
"""
from __future__ import annotations

import argparse
import math
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from algos import ALGORITHMS, algorithm_class, display_name, methods_with_role
from algos.core.io import REPO_ROOT, atomic_savefig, atomic_write_json, atomic_write_text, git_commit, \
    machine_description, read_json
from envs_glue import ENV_SPECS, env_spec

__all__ = ["ALGO_ORDER", "DASH", "ENV_ORDER", "REFERENCE", "STD_DDOF", "display_name", "env_argument", "fmt",
           "format_delta", "format_mean_std", "format_paired_test", "known_optimum", "mean_std", "ordered", "paired_test",
           "provenance", "reference_for", "report_heading", "short_commit", "table", "write_json_and_markdown"]

# Standard deviations over seeds are sample standard deviations (ddof = 1): with three seeds the population
# formula would understate the spread by a factor sqrt(2/3). A single seed therefore shows no "±".
STD_DDOF = 1
DASH = "—"

ALGO_ORDER = ALGORITHMS                 # role, then report rank (algos/__init__.py)
ENV_ORDER = tuple(ENV_SPECS)

# docs/PROTOCOL.md#reference-numbers, as data: the reference benchmark's own numbers per environment and row
REFERENCE = read_json(Path(__file__).with_name("reference_results.json"), what="reference results")
REFERENCE_RESULTS: dict[str, dict[str, float]] = REFERENCE["results"]


def reference_for(algo: str, env: str) -> float | None:
    """The reference's own number for ``algo`` on ``env`` (its ``reference_row``), if it published one."""
    row = algorithm_class(algo).own_reference_row() if algo in ALGORITHMS else None
    return REFERENCE_RESULTS.get(env, {}).get(row) if row else None


def known_optimum(env: str) -> tuple[float | None, str]:
    """The known-task optimum of ``env`` and how it was obtained (its env spec holds both)."""
    try:
        spec = env_spec(env)
    except ValueError:  # an old cell's environment that no longer resolves
        return None, "no known optimum"
    return spec.known_optimum, spec.known_optimum_note


def env_argument(name: str) -> str:
    """``--envs`` values: an environment of ``envs_glue/`` or a ``module.path:ATTRIBUTE`` reference to one outside."""
    try:
        env_spec(name)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name


def ours() -> tuple[str, ...]:
    return methods_with_role("ours")


def baselines() -> tuple[str, ...]:
    """The methods ours is compared against at equal budget (the reference line is not a method)."""
    return (*methods_with_role("floor"), *methods_with_role("baseline"))


# ---------------------------------------------------------------------- provenance
def provenance(command: str) -> dict:
    """Where, when and from what a report was made: every report's JSON starts with these keys."""
    return {"command": command, "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(), "machine": machine_description()}


def cpu_label(machine: dict | None) -> str:
    """The CPU as reports name it: its model and whether it computes bf16 natively, since CPUs of one model name
    differ there (speed, and the last digits of bf16 runs); records made before the flag existed give the model."""
    machine = machine or {}
    native = machine.get("cpu_native_bf16")
    return machine.get("cpu", "unknown CPU") + {True: " (native bf16)", False: " (no native bf16)"}.get(native, "")


def report_heading(title: str, report: dict, extra: str = "") -> list[str]:
    """The opening lines every results report shares: ``# <title>``, then ``Generated <when> by `<command>` at commit
    `<commit>` on <cpu> (<cores> cores, torch <version><extra>).``"""
    machine = report.get("machine") or {}
    provenance_line = (f"Generated {report.get('generated_at', '?')} by `{report.get('command', '?')}` at commit "
                       f"`{report.get('git_commit', '?')}` on {cpu_label(machine)} ({machine.get('cores', '?')} "
                       f"cores, torch {machine.get('torch', '?')}){extra}.")
    return [f"# {title}", "", provenance_line, ""]


def short_commit(commit: str | None) -> str:
    """``abc1234`` or ``abc1234-dirty`` from a full ``git rev-parse`` hash as runs record it."""
    full = str(commit or "?")
    return full[:7] + ("-dirty" if full.endswith("-dirty") else "")


# What a cell's numbers can depend on: the code a run imports and the packages it pins. Docs, tests, reports and
# results files do not change them, so cells at commits that differ only there ran the same code.
RUN_CODE_PATHS = ("algos", "models", "envs_glue", "experiments/run.py", "requirements.txt")


def run_code_changes(commits: Iterable[str], repo: Path = REPO_ROOT) -> list[str] | None:
    """The files under ``RUN_CODE_PATHS`` that differ between the first of ``commits`` and any other, sorted (empty:
    every commit ran the same code); ``None`` where git cannot tell (a ``-dirty`` or unknown commit, no git)."""
    commits = list(commits)
    if any(not c or c == "unknown" or c.endswith("-dirty") for c in commits):
        return None
    changed: set[str] = set()
    for other in commits[1:]:
        try:
            out = subprocess.run(["git", "diff", "--name-only", commits[0], other, "--", *RUN_CODE_PATHS],
                                 cwd=repo, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode:
            return None
        changed.update(out.stdout.split())
    return sorted(changed)


def descends_from(commit: str, ancestors: Iterable[str], repo: Path = REPO_ROOT) -> bool:
    """Whether ``commit`` has every one of ``ancestors`` in its history (``False`` where git cannot tell)."""
    for ancestor in ancestors:
        if any(not c or c == "unknown" or c.endswith("-dirty") for c in (commit, ancestor)):
            return False
        try:
            out = subprocess.run(["git", "merge-base", "--is-ancestor", ancestor, commit], cwd=repo,
                                 capture_output=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return False
        if out.returncode:
            return False
    return True


def run_code_verdict(commits: Iterable[str | None], repo: Path = REPO_ROOT) -> str:
    """For cells at several commits: ``same run code``, ``run code differs: <files>``, or that git cannot tell
    (``RUN_CODE_PATHS``); empty for one commit or none."""
    distinct = unique(c for c in commits if c)
    if len(distinct) < 2:
        return ""
    changes = run_code_changes(distinct, repo)
    if changes is None:
        return "differs between cells; git cannot compare them here"
    if not changes:
        return "same run code"
    shown = ", ".join(f"`{name}`" for name in changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
    return f"run code differs: {shown}"


def format_commits(commits: Iterable[str | None], repo: Path = REPO_ROOT) -> str:
    """The distinct commits of a group of cells, short, with ``run_code_verdict`` where there are several: a mixed
    table is flagged, but not cried wolf over."""
    distinct = unique(c for c in commits if c)
    if not distinct:
        return DASH
    verdict = run_code_verdict(distinct, repo)
    return " / ".join(short_commit(c) for c in distinct) + (f" ({verdict})" if verdict else "")


def display_path(path: Path) -> str:
    """``path`` relative to the repository where it lies inside it (as reports print paths), else absolute."""
    try:
        return str(Path(path).resolve().relative_to(REPO_ROOT))
    except ValueError:
        return str(Path(path).resolve())


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


def format_delta(diffs: list[float], with_count: bool = False) -> str:
    """A paired difference: ``+1.23 ± 0.45`` (sample std over pairs), optionally ``(n=k)``; "—" for none."""
    if not diffs:
        return DASH
    mean, std = mean_std(diffs)
    return (f"{mean:+.2f}" + (f" ± {std:.2f}" if std is not None else "")
            + (f" (n={len(diffs)})" if with_count else ""))


# Two-sided 95 % critical values of Student's t by degrees of freedom (pairs - 1): with three seeds a paired
# difference must be 4.30 standard errors from zero before it is more than seed noise.
T_CRITICAL_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
                 10: 2.228}


def paired_test(diffs: list[float]) -> dict | None:
    """A paired t-test of ``diffs`` against zero: ``t`` (mean over its standard error), the 95 % two-sided
    critical value for their count, and whether ``|t|`` exceeds it. None for fewer than two pairs. Identical
    differences have no spread and no ``t``: non-zero ones count as beyond noise."""
    if len(diffs) < 2:
        return None
    mean, std = mean_std(diffs)
    critical = T_CRITICAL_95.get(len(diffs) - 1, T_CRITICAL_95[10])  # beyond 10 d.o.f.: conservative
    if std == 0:  # t is undefined (kept out of the JSON as None)
        return {"t": None, "critical": critical, "beyond_noise": mean != 0}
    t = mean / (std / math.sqrt(len(diffs)))
    return {"t": t, "critical": critical, "beyond_noise": abs(t) > critical}


def format_paired_test(diffs: list[float]) -> str:
    """``yes (t=-5.1)`` / ``no (t=-1.2)``; "—" for fewer than two pairs."""
    test = paired_test(diffs)
    if test is None:
        return DASH
    verdict = "**yes**" if test["beyond_noise"] else "no"
    detail = "no spread" if test["t"] is None else f"t={test['t']:+.1f}"
    return f"{verdict} ({detail})"


def final_eval_value(cell: dict) -> float | None:
    """A cell's low-noise final evaluation figure, if it has one."""
    final = cell.get("final_eval") or {}
    return final.get("meta_test_return")


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def unique(values: Iterable[Any]) -> list[Any]:
    out = []
    for value in values:
        if value not in out:
            out.append(value)
    return out


def join_unique(values: Iterable[Any], render=str) -> str:
    """One value, or every distinct one flagged as differing between cells; "—" for none."""
    distinct = unique(v for v in values if v is not None)
    if not distinct:
        return DASH
    if len(distinct) == 1:
        return render(distinct[0])
    return " / ".join(render(v) for v in distinct) + " (differs between cells!)"


def ordered(items: Iterable[str], order: tuple[str, ...]) -> list[str]:
    """Known names in the tables' order first, then any others (e.g. an old cell's method) alphabetically."""
    distinct = set(items)
    return [x for x in order if x in distinct] + sorted(distinct - set(order))


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------- writing
def reevaluation_paths(tier_dir: Path, algo: str) -> tuple[Path, Path]:
    """One method's re-evaluations of a tier (``experiments.reevaluate``): ``reevaluations_<algo>.json`` and
    ``REEVALUATIONS_<algo>.md``."""
    return Path(tier_dir) / f"reevaluations_{algo}.json", Path(tier_dir) / f"REEVALUATIONS_{algo}.md"


def write_json_and_markdown(json_path: Path, data: dict, markdown_path: Path, markdown: str,
                            figures: dict[Path, Any] | None = None) -> None:
    """A report's JSON, its figures and then its markdown (which links them), each written atomically."""
    atomic_write_json(json_path, data)
    for path, figure in (figures or {}).items():
        atomic_savefig(figure, path)
    atomic_write_text(markdown_path, markdown)
