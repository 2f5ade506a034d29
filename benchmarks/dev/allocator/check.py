"""glibc's default malloc against the tuned one (algos/core/device.py: tune_cpu_allocator), per method and
environment at the benchmark tier's batch sizes: page faults, CPU time and wall time per gradient step, and a
digest of every weight after the steps (the numbers must not change).

    python benchmarks/dev/allocator/check.py --steps 30

Each (env, method, allocator) runs in a fresh process (an allocator is set once per process), one torch thread,
bf16 as ``auto`` resolves. CPU time (user + system) is the figure to compare when other jobs share the machine;
wall time is shown beside it.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

CHILD = r"""
import hashlib, json, resource, sys, tempfile, time
from pathlib import Path
import torch
import algos.core.trainer as trainer
algo, env, mode, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == "default":
    trainer.tune_cpu_allocator = lambda: {"tuned": False}
config = trainer.build_config(env, algo, "benchmark", 0, ["num_threads=1"])
algorithm = trainer.Trainer(config, run_dir=Path(tempfile.mkdtemp()) / "run", progress=False).algorithm
algorithm.collect_initial_data()
for _ in range(3):
    algorithm.train_step()
before, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(steps):
    algorithm.train_step()
wall, after = time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_SELF)
digest = hashlib.sha256()
for _, tensor in sorted([*algorithm.agent.state_dict().items(), *algorithm.critic.state_dict().items()]):
    digest.update(tensor.detach().cpu().numpy().tobytes())
print(json.dumps({"faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
                  "user_ms_per_step": 1000 * (after.ru_utime - before.ru_utime) / steps,
                  "system_ms_per_step": 1000 * (after.ru_stime - before.ru_stime) / steps,
                  "wall_ms_per_step": 1000 * wall / steps, "bf16": config.bf16, "digest": digest.hexdigest()}))
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--envs", nargs="+", default=["point-robot", "sparse-point-robot", "cheetah-vel"])
    parser.add_argument("--algos", nargs="+", default=["sac-no-context", "pearl", "focal", "varibad", "setformer"])
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from experiments.report import provenance, report_heading, write_json_and_markdown

    command = shlex.join(["python", "benchmarks/dev/allocator/check.py", *sys.argv[1:]])
    rows = []
    for env in args.envs:
        for algo in args.algos:
            row = {"env": env, "algo": algo}
            for mode in ("default", "tuned"):
                out = subprocess.run([sys.executable, "-c", CHILD, algo, env, mode, str(args.steps)], cwd=REPO,
                                     capture_output=True, text=True, check=True)
                row[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            row["identical"] = row["default"]["digest"] == row["tuned"]["digest"]
            rows.append(row)
            print(json.dumps(row), flush=True)
    report = {**provenance(command), "steps": args.steps, "rows": rows}

    def cpu(r):
        return r["user_ms_per_step"] + r["system_ms_per_step"]

    lines = [*report_heading("The tuned CPU allocator: same numbers, fewer page faults", report,
                             ", one torch thread, other jobs sharing the machine"),
             f"Benchmark-tier batch sizes, seed 0, {args.steps} gradient steps after 3 warm-up steps, each row "
             "twice in fresh processes: glibc's default malloc, and `tune_cpu_allocator` (mmap threshold 32 MiB, "
             "trim threshold 1 GiB). *CPU ms/step* is user + system time, the fair figure while other jobs share "
             "the cores; *identical*: every weight's bytes equal after the steps.", "",
             "| env | method | bf16 | faults/step default | faults/step tuned | CPU ms/step default | CPU ms/step tuned "
             "| of which system (default → tuned) | CPU saved | wall ms/step default → tuned | identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        d, t = r["default"], r["tuned"]
        lines.append(f"| {r['env']} | {r['algo']} | {'yes' if d['bf16'] else 'no'} | {d['faults_per_step']:,.0f} | "
                     f"{t['faults_per_step']:,.0f} | {cpu(d):.0f} | {cpu(t):.0f} | {d['system_ms_per_step']:.0f} → "
                     f"{t['system_ms_per_step']:.0f} | {100 * (1 - cpu(t) / cpu(d)):.0f} % | "
                     f"{d['wall_ms_per_step']:.0f} → {t['wall_ms_per_step']:.0f} | "
                     f"{'yes' if r['identical'] else '**NO**'} |")
    write_json_and_markdown(HERE / "check.json", report, HERE / "README.md", "\n".join(lines) + "\n")
    return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
