"""Training ablations of setformer: retrained from scratch with one switch flipped, on the same protocol and budget,
and compared seed by seed with the full method's benchmark cells.

    python -m experiments.ablations --tier quick --ablations no-task-embeddings high-lr --workers 2
    python -m experiments.ablations --tier quick --render-only        # re-render from the finished cells
    python -m experiments.ablations --list                            # the catalogue

Cells are ordinary benchmark cells under ``<out>/<ablation>/<tier>/cells``. The report (``<out>/ABLATIONS_<tier>.md``
and ``.json``) pairs each with the full method's cell (``<full>/<tier>/cells``) of the same environment and seed;
what changed is read from the two saved configs, and a differing budget is flagged.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from algos.core.config import SEEDS, TIERS
from algos.core.io import REPO_ROOT, read_json
from envs_glue import DEFAULT_ENVS
from experiments.benchmark import add_runner_arguments, check_runner_arguments, run_cells
from experiments.engine import Cell, cell_dir, check_available, config_changes
from experiments.report import (DASH, ENV_ORDER, descends_from, display_path, env_argument, final_eval_value, fmt,
                                format_delta, format_commits, format_mean_std, format_paired_test, mean_std, ordered,
                                paired_test,
                                provenance, report_heading, run_code_changes, short_commit, table, unique,
                                write_json_and_markdown)
from experiments.rerun_check import RERUN_CHECKS_FILE
from experiments.results_table import collect_cells, render_tier

ALGO = "setformer"

# name -> the overrides that make it, and why it is worth running
ABLATIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "high-lr": (("lr=0.001",), "lr 1e-3 on the point robots, the default before the baselines' 3e-4 (on cheetah-vel "
                "1e-3 is the default: no change there)"),
    "no-task-embeddings": (("embedding_batch_fraction=0",), "no task embeddings: the batch is conditioned on the "
                           "encoder's z alone (named no-teacher before)"),
    "no-embedding-collection": (("embedding_collection_fraction=0",), "all posterior data collected on the encoder's "
                                "z (named no-teacher-collection before)"),
    "no-reward-head": (("aux.reward=0",), "z and the embeddings shaped without reward prediction; the untrained "
                       "head scores every hypothesis alike, so Thompson sampling draws blindly"),
    "reward-head-detached": (("aux.reward_shapes_z=false",), "the reward head learns on detached latents: its loss "
                             "shapes neither z nor the embeddings, but it still scores the hypotheses"),
    "no-next-state-head": (("aux.next_state=0",), "z shaped without next-state prediction (unused at inference)"),
    "no-aux-heads": (("aux.reward=0", "aux.next_state=0"), "z shaped by the critic and the alignment only"),
    "mean-pool-encoder": (("encoder_pooling=mean",), "no attention: a plain mean of the token embeddings"),
    "no-align": (("aux.align=0",), "the encoder is not pulled onto the task embeddings"),
    "no-thompson": (("exploration.thompson=false",), "no hypotheses: collect and act on the encoder's z"),
    "no-fallback": (("exploration.fallback=false",), "after adapt(), always act on the encoder's z"),
    "all-hypotheses": (("exploration.min_evidence=0",), "tasks whose data never showed a reward stay hypotheses"),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.ablations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tier", default="quick", choices=TIERS)
    parser.add_argument("--ablations", nargs="+", default=[], metavar="NAME",
                        help="which ablations to run, in this order (see --list)")
    parser.add_argument("--envs", nargs="+", type=env_argument, default=list(DEFAULT_ENVS))
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--out", default="benchmarks/ablations", help="where ablation cells and the report go")
    parser.add_argument("--full", default="benchmarks",
                        help="output root of the full method's benchmark (its cells: <full>/<tier>/cells)")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--list", action="store_true", help="print the catalogue of ablations and exit")
    add_runner_arguments(parser)
    args = parser.parse_args(argv)
    check_runner_arguments(parser, args)
    unknown = [name for name in args.ablations if name not in ABLATIONS]
    if unknown:
        parser.error(f"unknown ablation(s) {', '.join(unknown)}; known: {', '.join(ABLATIONS)}")
    if not (args.ablations or args.render_only or args.list):
        parser.error("name --ablations to run, or pass --render-only or --list")
    return args


# ---------------------------------------------------------------------- report
def compare_cells(full_cells: list[dict], ablation_cells: list[dict]) -> dict:
    """Per environment: the ablation's figures paired by seed with the full method's, and their config changes."""
    by_env: dict[str, dict] = {}
    full = {(c["env"], c["seed"]): c for c in full_cells if c["algo"] == ALGO}
    for cell in ablation_cells:
        if cell["algo"] != ALGO:
            continue
        key = (cell["env"], cell["seed"])
        entry = by_env.setdefault(cell["env"], {"seeds": {}, "config_changes": [], "budget_differs": []})
        partner = full.get(key)
        record = {"meta_test_return": cell["meta_test_return"], "low_noise": final_eval_value(cell),
                  "git_commit": cell.get("git_commit"), "cell_dir": cell.get("cell_dir")}
        if partner is not None:
            record["full_meta_test_return"] = partner["meta_test_return"]
            record["full_low_noise"] = final_eval_value(partner)
            differing = config_changes(partner.get("config") or {}, cell.get("config") or {})
            changes = [f"`{k}` {DASH if old is None else old} → {DASH if new is None else new}"
                       for k, (old, new) in differing.items()]
            record["config_changes"] = changes
            entry["config_changes"] += [change for change in changes if change not in entry["config_changes"]]
            if any(k.startswith("protocol.") for k in differing):
                entry["budget_differs"].append(cell["seed"])
        entry["seeds"][cell["seed"]] = record
    for entry in by_env.values():  # the paired statistics the report prints, for readers of the JSON
        entry["paired"] = {}
        for key in ("meta_test_return", "low_noise"):
            diffs = _paired(entry["seeds"], key)[1]
            mean, std = mean_std(diffs) if diffs else (None, None)
            entry["paired"][key] = {"n": len(diffs), "mean_delta": mean, "std_delta": std, "t_test": paired_test(diffs)}
    return by_env


def _paired(records: dict, key: str) -> tuple[list[float], list[float]]:
    """The ablation's values of ``key`` (every seed it has) and its per-seed differences to the full method."""
    ablated = [r[key] for r in records.values() if r.get(key) is not None]
    diffs = [r[key] - r[f"full_{key}"] for r in records.values() if r.get(key) is not None
             and r.get(f"full_{key}") is not None]
    return ablated, diffs


def render_markdown(report: dict) -> str:
    tier = report["tier"]
    parts = [
        *report_heading(f"Training ablations: setformer, {tier} tier", report),
        f"Each ablation is setformer trained from scratch with one switch flipped, on the full method's protocol and "
        f"budget (`{report['full_dir']}`), and compared with it seed by seed. *meta-test return* is the protocol "
        f"figure, *low-noise* the cell's final evaluation (mean ± sample std over seeds). *Δ* is the per-seed paired "
        f"difference, ablation minus full method, and *beyond seed noise* its paired t-test against zero (two-sided, "
        f"95 %). *config change* is read from the two cells' saved configs, not from the ablation's name.",
        "",
        table(["ablation", "overrides", "why"],
               [[f"[{name}]({name}/{tier}/RESULTS.md)" if report["results"].get(name) else name,
                 " ".join(f"`{o}`" for o in ABLATIONS[name][0]) if name in ABLATIONS else DASH,
                 (ABLATIONS[name][1] if name in ABLATIONS else DASH)
                 + ("" if report["results"].get(name) else " (no finished cell yet)")]
                for name in report["ablations"]]),
        "",
    ]
    for env in report["envs"]:
        full = report["full"].get(env, {})
        full_values = [r["meta_test_return"] for r in full.values()]
        full_low = [r["low_noise"] for r in full.values() if r.get("low_noise") is not None]
        rows = [["full method", format_mean_std(full_values, len(full)) if full else DASH, DASH,
                 format_mean_std(full_low, len(full)) if full_low else DASH, DASH, DASH,
                 " · ".join(f"{s}: {fmt(r['meta_test_return'])}" for s, r in sorted(full.items())) or DASH, DASH,
                 format_commits(r.get("git_commit") for r in full.values())]]
        notes = []
        for name in report["ablations"]:
            entry = report["results"].get(name, {}).get(env)
            if not entry:
                continue
            records = {int(s): r for s, r in entry["seeds"].items()}
            (values, diffs), (low, low_diffs) = _paired(records, "meta_test_return"), _paired(records, "low_noise")
            planned = len(report["seeds"])
            rows.append([name, format_mean_std(values, planned), format_delta(diffs, with_count=True),
                         format_mean_std(low, planned) if low else DASH, format_delta(low_diffs, with_count=True),
                         format_paired_test(low_diffs),
                         " · ".join(f"{s}: {fmt(r['meta_test_return'])}" for s, r in sorted(records.items())),
                         "; ".join(entry["config_changes"]) or "**none**",
                         format_commits(r.get("git_commit") for r in records.values())])
            both = unique(r.get("git_commit") for r in [*full.values(), *records.values()])
            code_changes = run_code_changes(both) if len(both) > 1 else []
            if code_changes:
                notes.append(f"{name}: its cells and the full method's ran different code (`git diff` of their "
                             f"commits touches {', '.join(f'`{f}`' for f in code_changes)}); "
                             + rerun_check_sentence(report.get("rerun_checks", {}), env, full, both,
                                                    f"{report['full_dir']}/{RERUN_CHECKS_FILE}"))
            unpaired = sorted(s for s, r in records.items() if "full_meta_test_return" not in r)
            if unpaired:
                notes.append(f"{name}: no full-method cell for seed(s) {', '.join(map(str, unpaired))}, so no Δ "
                             f"for them.")
            if entry["budget_differs"]:
                notes.append(f"**{name}: the protocol (budget) differs from the full method's for seed(s) "
                             f"{', '.join(map(str, entry['budget_differs']))}; its Δ is not an equal-budget "
                             f"comparison.**")
        header = ["variant", "meta-test return", "Δ vs full", "low-noise", "Δ low-noise", "beyond seed noise",
                  "per seed", "config change", "commit"]
        parts += [f"## {env}", "", table(header, rows), ""]
        if notes:
            parts += [*(f"- {note}" for note in notes), ""]
    return "\n".join(parts).rstrip() + "\n"


def rerun_check_sentence(checks: dict, env: str, full: dict, commits: list[str], checks_file: str,
                         repo: Path = REPO_ROOT) -> str:
    """What ``experiments.rerun_check`` found for the full method's cells of ``env`` (the cells the note is
    about), as the end of a note on code that changed between an ablation's cells and the full method's."""
    full = {int(seed): record for seed, record in full.items()}
    found = {}
    for entry in checks.values():
        seed = entry.get("seed")
        if (entry.get("env") == env and entry.get("algo") == ALGO and seed in full
                and entry.get("cell_commit") == full[seed].get("git_commit")):
            found[seed] = entry
    if not found:
        return ("so the Δ holds whatever else those changes did: check that they left the full method's computation "
                "alone (`python -m experiments.rerun_check` on its cells does).")
    differing = sorted(s for s, e in found.items() if not e["identical"])
    if differing:
        return (f"**a rerun check of the full method's cells differs for seed(s) {', '.join(map(str, differing))}** "
                f"(`{checks_file}`): the changes may have moved its numbers, and the Δ holds whatever they did.")
    checked_at = unique(e["checked_at_commit"] for e in found.values())
    iterations = min(e["iterations"] for e in found.values())
    unchecked = sorted(set(full) - set(found))
    sentence = (f"the code at {' / '.join(f'`{short_commit(c)}`' for c in checked_at)} reproduces the full method's "
                f"cells ({', '.join(f'seed {s}' for s in sorted(found))}) bit for bit over their first {iterations} "
                f"iteration{'s' if iterations > 1 else ''} (`{checks_file}`)")
    if all(descends_from(c, commits, repo) for c in checked_at):
        sentence += (", and it descends from every commit here, so the changes left the full method's computation "
                     "alone over those iterations")
    if unchecked:
        sentence += f"; seed(s) {', '.join(map(str, unchecked))} not checked"
    return sentence + "."


def build_report(out: Path, full_root: Path, tier: str, command: str) -> dict:
    full_cells, problems = collect_cells(full_root / tier, with_config=True)
    ablations = ordered([p.parent.name for p in sorted(out.glob(f"*/{tier}")) if (p / "cells").is_dir()],
                         tuple(ABLATIONS))
    results, envs = {}, set()
    for name in ablations:
        cells, more = collect_cells(out / name / tier, with_config=True)
        problems += more
        results[name] = compare_cells(full_cells, cells)
        envs |= set(results[name])
    full = {env: {c["seed"]: {"meta_test_return": c["meta_test_return"], "low_noise": final_eval_value(c),
                              "git_commit": c.get("git_commit")}
                  for c in full_cells if c["algo"] == ALGO and c["env"] == env} for env in ordered(envs, ENV_ORDER)}
    seeds = sorted({s for by_env in results.values() for entry in by_env.values() for s in entry["seeds"]}
                   | {s for by_seed in full.values() for s in by_seed})
    checks_path = full_root / tier / "rerun_checks.json"
    checks = read_json(checks_path, what="rerun checks")["checks"] if checks_path.exists() else {}
    return {"tier": tier, **provenance(command), "full_dir": display_path(full_root / tier),
            "ablations": ablations, "envs": ordered(envs, ENV_ORDER), "seeds": seeds, "full": full,
            "results": results, "rerun_checks": checks, "notes": problems}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, (overrides, why) in ABLATIONS.items():
            print(f"{name:24s} {' '.join(overrides):32s} {why}")
        return 0
    out, full_root = Path(args.out).resolve(), Path(args.full).resolve()
    command = shlex.join(["python", "-m", "experiments.ablations", *(sys.argv[1:] if argv is None else argv)])
    code = 0
    if not args.render_only:
        for name in args.ablations:  # a bad override fails here once, not once per cell
            if error := check_available(args.envs[0], ALGO, args.tier, list(ABLATIONS[name][0])):
                print(f"error: ablation {name} cannot be set up: {error}", file=sys.stderr)
                return 2
        cells = [Cell(env, ALGO, seed, cell_dir(out / name / args.tier, env, ALGO, seed), list(ABLATIONS[name][0]))
                 for name in args.ablations for env in args.envs for seed in args.seeds]
        unfinished = [cell for cell in cells if not cell.finished]
        outcome = run_cells(args, unfinished, len(cells) - len(unfinished), args.tier, [], out)
        if outcome is None:
            return 2
        if outcome.interrupted:
            print("stopped; rerun the same command to continue from the cells' checkpoints")
            return 130
        code = 1 if outcome.failed else 0
    report = build_report(out, full_root, args.tier, command)
    for name in report["ablations"]:  # each ablation's own benchmark table and learning curves
        if not report["results"][name]:
            continue  # nothing finished yet
        envs = ordered(report["results"][name], ENV_ORDER)
        plan = {"envs": envs, "algos": [ALGO], "seeds": report["seeds"], "skipped": []}
        render_tier(out / name / args.tier, args.tier, plan, command, [])
    markdown = out / f"ABLATIONS_{args.tier}.md"
    write_json_and_markdown(out / f"ablations_{args.tier}.json", report, markdown, render_markdown(report))
    print(f"wrote {markdown} and each ablation's {args.tier}/RESULTS.md")
    return code


if __name__ == "__main__":
    sys.exit(main())
