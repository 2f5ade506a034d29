#!/usr/bin/env bash
# On a CUDA machine: install the env wheels, run the CUDA tests, a solo speed probe, then benchmark-tier cells in parallel
# until the STOP_AT deadline (seconds); the logs and a tarball of the cells (no checkpoints) are written to $OUT.
set -u
T0=$(date +%s)
STOP_AT=${STOP_AT:-470}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 MUJOCO_GL=egl
nvidia-smi -L
python3 -c "import torch,gymnasium,mujoco,numpy;print('versions',torch.__version__,gymnasium.__version__,mujoco.__version__,numpy.__version__,torch.cuda.is_available())"
export META_RL_GIT_COMMIT=$(cat .whl/COMMIT); echo "commit $META_RL_GIT_COMMIT"
nproc
(nvidia-cuda-mps-control -d && echo "MPS daemon started") || echo "no MPS"
W=/tmp/cells; mkdir -p $W
# CUDA tests (small), beside the probe
(timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_device.py > $W/pytest_device.log 2>&1; echo "pytest rc=$?" >> $W/pytest_device.log) &
# solo speed probe: benchmark-tier gradient steps on CUDA
timeout 60 python3 - <<'PY' 2>&1 | tee $W/probe.log
import time, torch
from algos.core.trainer import Trainer, build_config
for algo in ["pearl", "setformer"]:
    for bf16 in ["true", "false"]:
        cfg = build_config("point-robot", algo, "benchmark", 0, ["device=cuda", f"bf16={bf16}"])
        tr = Trainer(cfg, run_dir=f"/tmp/probe-{algo}-{bf16}", progress=False)
        alg = tr.algorithm; alg.collect_initial_data()
        for _ in range(5): alg.train_step()
        torch.cuda.synchronize(); t = time.perf_counter(); n = 40
        for _ in range(n): alg.train_step()
        torch.cuda.synchronize(); print(f"probe {algo} bf16={bf16}: {n/(time.perf_counter()-t):.1f} grad steps/s (16x256, solo)")
PY
launch() {
  local name=$1; shift
  local left=$(( STOP_AT - ($(date +%s) - T0) ))
  (OMP_NUM_THREADS=1 timeout --signal=INT $left python3 -m experiments.run --tier benchmark --seed 42 --run-dir $W/$name \
     --no-progress "$@" > $W/$name.log 2>&1; echo "$name rc=$?" >> $W/done.txt) &
}
launch pr-default      --env point-robot --algo setformer
launch pr-lr3e-4       --env point-robot --algo setformer --set lr=0.0003
launch pr-bounded      --env point-robot --algo setformer --set bounded_latents=true
launch pr-bounded-lr3e-4 --env point-robot --algo setformer --set bounded_latents=true lr=0.0003
launch pr-fp32         --env point-robot --algo setformer --set bf16=false
launch pr-fp32-lr3e-4  --env point-robot --algo setformer --set bf16=false lr=0.0003
launch spr-default     --env sparse-point-robot --algo setformer
launch cv-default      --env cheetah-vel --algo setformer
launch cv-pearl        --env cheetah-vel --algo pearl
launch cv-focal        --env cheetah-vel --algo focal
launch cv-varibad      --env cheetah-vel --algo varibad
while [ $(( $(date +%s) - T0 )) -lt $(( STOP_AT + 15 )) ]; do
  sleep 30
  echo "t=$(( $(date +%s) - T0 ))s $(for f in $W/*/metrics.jsonl; do d=$(basename $(dirname $f)); echo -n "$d:$(wc -l < $f) "; done)"
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  [ -f $W/done.txt ] && [ $(wc -l < $W/done.txt) -ge 11 ] && break
done
wait
cat $W/done.txt; tail -3 $W/pytest_device.log
for d in $W/*/; do echo "== $d"; tail -c 300 $d/metrics.jsonl 2>/dev/null | tail -1 | cut -c1-200; ls $d; done
tar czf $OUT/cells.tgz --exclude=checkpoint.pt --exclude=tb -C /tmp cells
ls -la $OUT
