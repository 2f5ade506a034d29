"""Does today's code still compute what a finished cell computed? Rerun its first iterations from its saved config
and compare every logged number (timings aside) with its metrics.jsonl, bit for bit.

    python -m experiments.rerun_check benchmarks/quick/cells/point-robot/setformer/* --iterations 2

Training is deterministic per seed, config, thread count and CPU kind, so a match over the first iterations shows
the commits in between left the computation alone (later iterations and the final evaluation are not compared);
a mismatch names the first differing number, and may come from another CPU kind. Results accumulate in
``<out>/rerun_checks.json`` and ``RERUN_CHECKS.md`` (default ``<out>``: the first cell's tier folder).
"""
from __future__ import annotations

import argparse
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

from algos.core.config import ConfigError
from algos.core.io import read_json
from algos.core.trainer import Trainer, config_from_dict
from experiments.report import (DASH, cpu_label, display_path, provenance, report_heading, short_commit, table,
                                write_json_and_markdown)
from experiments.status import read_metrics

DEFAULT_ITERATIONS = 2
# the metrics.jsonl keys that measure time, not what was computed: a rerun of the same run repeats every other one
TIMING_METRICS = frozenset({"wall_time_s"})
RERUN_CHECKS_FILE = "RERUN_CHECKS.md"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m experiments.rerun_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("cells", nargs="+", help="finished cell folders (config.json, metrics.jsonl, results.json)")
    parser.add_argument("--iterations", type=int, default=DEFAULT_ITERATIONS,
                        help=f"iterations to rerun and compare (default: {DEFAULT_ITERATIONS})")
    parser.add_argument("--out", help="writes <out>/rerun_checks.json and RERUN_CHECKS.md (default: the first "
                                      "cell's tier folder)")
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error(f"--iterations must be at least 1, got {args.iterations}")
    return args


def same_number(recorded, rerun) -> bool:
    both_nan = isinstance(recorded, float) and isinstance(rerun, float) and math.isnan(recorded) and math.isnan(rerun)
    return both_nan or recorded == rerun


def compare_rows(recorded: list[dict], rerun: list[dict]) -> dict:
    """Every non-timing number of each recorded row against the rerun's row of the same iteration; keys only the
    rerun logs (an evaluation forced at its last iteration) count as ``extra``."""
    compared, mismatches, extra = 0, [], []
    for old, new in zip(recorded, rerun):
        for key, value in old.items():
            if key in TIMING_METRICS:
                continue
            compared += 1
            if key not in new or not same_number(value, new[key]):
                mismatches.append({"iteration": old.get("iteration"), "key": key, "recorded": value,
                                   "rerun": new.get(key)})
        extra += [f"{new.get('iteration')}:{k}" for k in new if k not in old and k not in TIMING_METRICS]
    return {"numbers_compared": compared, "identical": not mismatches and compared > 0,
            "mismatches": mismatches[:20], "mismatch_count": len(mismatches), "extra_keys": extra}


def check_cell(cell: Path, iterations: int) -> dict:
    """Rerun ``cell``'s first ``iterations`` from its saved config in a scratch folder and compare."""
    for name in ("config.json", "metrics.jsonl", "results.json"):
        if not (cell / name).exists():
            raise FileNotFoundError(f"{cell} holds no {name}: not a finished cell (rerun_check needs all three)")
    results = read_json(cell / "results.json", what="cell results")
    recorded = read_metrics(cell, strict=True)
    if len(recorded) < iterations:
        raise ConfigError(f"{cell} logged {len(recorded)} iteration(s), fewer than --iterations {iterations}")
    config = config_from_dict(read_json(cell / "config.json", what="run config"))
    config.protocol.num_iterations = iterations
    config.protocol.final_eval_repeats = 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rerun-check-") as scratch:
        trainer = Trainer(config, run_dir=Path(scratch) / "run", progress=False)
        trainer.run(resume=False)
        rerun = read_metrics(Path(scratch) / "run", strict=True)
    return {"cell": display_path(cell), "env": results.get("env"), "algo": results.get("algo"),
            "seed": results.get("seed"), "cell_commit": results.get("git_commit"),
            "cell_cpu": cpu_label(results.get("machine")), "iterations": iterations,
            "rerun_wall_time_s": time.perf_counter() - started,
            **compare_rows(recorded[:iterations], rerun[:iterations])}


def verdict(entry: dict) -> str:
    if entry["identical"]:
        return f"**identical** ({entry['numbers_compared']} numbers)"
    first = entry["mismatches"][0] if entry["mismatches"] else {}
    return (f"**differs**: {entry['mismatch_count']} of {entry['numbers_compared']} numbers, first at iteration "
            f"{first.get('iteration')} `{first.get('key')}` (recorded {first.get('recorded')}, rerun "
            f"{first.get('rerun')})")


def render_markdown(report: dict) -> str:
    rows = [[f"`{e['cell']}`", short_commit(e.get("cell_commit")), short_commit(e.get("checked_at_commit")),
             e.get("cell_cpu") or DASH, e.get("checked_on_cpu") or DASH, str(e["iterations"]), verdict(e),
             e.get("checked_at") or DASH]
            for e in sorted(report["checks"].values(), key=lambda e: e["cell"])]
    return "\n".join([
        *report_heading("Rerun checks: does today's code compute what the cells computed?", report),
        "Each cell's first iterations rerun from its saved config and every logged number except timings compared "
        "with its `metrics.jsonl`, bit for bit: *identical* means the code at *checked at* computes what the code "
        "at *cell commit* computed for those iterations. A mismatch on another CPU kind may be the CPU, not the code.",
        "",
        table(["cell", "cell commit", "checked at", "cell CPU", "checked on", "iterations", "verdict", "when"], rows),
        "",
    ])


def main(argv=None) -> int:
    args = parse_args(argv)
    cells = [Path(c) for c in args.cells]
    missing = [str(c) for c in cells if not c.is_dir()]
    if missing:
        print(f"error: not a folder: {', '.join(missing)}", file=sys.stderr)
        return 2
    parents = cells[0].resolve().parents  # <tier>/cells/<env>/<algo>/<seed>
    out = Path(args.out) if args.out else parents[3] if len(parents) > 3 and parents[2].name == "cells" else parents[0]
    json_path = out / "rerun_checks.json"
    command = shlex.join(["python", "-m", "experiments.rerun_check", *(sys.argv[1:] if argv is None else argv)])
    previous = read_json(json_path, what="rerun checks") if json_path.exists() else {}
    report = {**provenance(command), "checks": dict(previous.get("checks", {}))}
    code = 0
    for cell in cells:
        try:
            entry = check_cell(cell, args.iterations)
        except (ConfigError, FileNotFoundError) as error:
            print(f"error: {error}", file=sys.stderr)
            code = 2
            continue
        entry.update(checked_at_commit=report["git_commit"], checked_on_cpu=cpu_label(report["machine"]),
                     checked_at=report["generated_at"])
        report["checks"][entry["cell"]] = entry
        print(f"{entry['cell']}: {verdict(entry)}")
        if not entry["identical"]:
            code = max(code, 1)
        # after every cell, so a long invocation that is killed keeps what it checked
        write_json_and_markdown(json_path, report, out / RERUN_CHECKS_FILE, render_markdown(report))
    return code


if __name__ == "__main__":
    sys.exit(main())
