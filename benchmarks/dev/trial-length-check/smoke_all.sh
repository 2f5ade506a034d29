# usage: smoke_all.sh REPO OUT
cd "$1"; mkdir -p "$2"
for env in point-robot sparse-point-robot cheetah-vel; do for algo in sac-no-context pearl focal varibad setformer transformer oracle; do
  [ $algo = oracle ] && [ $env = cheetah-vel ] && continue
  OMP_NUM_THREADS=1 nice -n 10 python -m experiments.run --env $env --algo $algo --tier smoke --seed 3 --run-dir $2/$env-$algo --no-progress --set num_threads=1 >/dev/null 2>$2.$env-$algo.err || echo FAIL $env $algo
done; done
echo DONE
