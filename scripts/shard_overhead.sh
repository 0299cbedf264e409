#!/usr/bin/env bash
# Issue 17 on ONE GPU: a 1-process sharded run (torchrun --nproc_per_node 1) against the plain run
# on the same samples, in alternating order, then scripts/shard_overhead.py: the overhead and the
# measured per-sample costs that plan the seed's 4,584-sample matrix per GPU.
#   bash scripts/shard_overhead.sh          (repo root; results land in $OUT/shard-overhead.tgz)
# PAIRS (default 2) plain/sharded pairs: plain first in odd pairs, sharded first in even ones.
# SAMPLES per duration (default 2), DURATIONS (default all 9), PROFILE (7b-shaped), DEVICE (cuda).
# DEADLINE_SECS (default 570) caps the whole call so it ends inside the device tool's 600 s.
set -uo pipefail
if ! python3 -c "import bitsandbytes, av, hdf5plugin" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD PYTHONUNBUFFERED=1 PPBENCH_CACHE=${PPBENCH_CACHE:-/tmp/ppbench-cache}
OUT=${OUT:-/tmp/ppbench-out}; mkdir -p "$OUT"
R=/tmp/ppbench-results/shard-overhead; rm -rf $R; mkdir -p $R
T0=$(date +%s); DEADLINE_SECS=${DEADLINE_SECS:-570}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee $R/gpu.txt
python3 -m harness dataset build > /dev/null 2>&1   # build the dataset once, outside every timed run
args=(run --profile "${PROFILE:-7b-shaped}" --device "${DEVICE:-cuda}" --no-progress
      --durations "${DURATIONS:-500ms,1s,2s,4s,5s,8s,10s,16s,20s}" --samples-per-duration "${SAMPLES:-2}")
echo "python3 -m harness ${args[*]} --out DIR   vs   python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m harness ${args[*]} --out DIR" | tee $R/command.txt

one() {  # plain|sharded NAME: one timed run; its wall clock goes to walls.txt
  local left=$(( T0 + DEADLINE_SECS - $(date +%s) - 15 ))
  [ "$left" -gt 60 ] || { echo "no time left for $2" | tee -a $R/walls.txt; return; }
  local t=$(date +%s.%N)
  if [ "$1" = plain ]; then
    timeout "$left" python3 -m harness "${args[@]}" --out $R/$2 > $R/$2.log 2>&1
  else
    timeout "$left" python3 -m torch.distributed.run --standalone --nproc_per_node 1 -m harness "${args[@]}" \
      --out $R/$2 > $R/$2.log 2>&1
  fi
  local rc=$?
  echo "$2 rc=$rc wall_s=$(python3 -c "print(round($(date +%s.%N) - $t, 3))")" | tee -a $R/walls.txt
}
for i in $(seq 1 "${PAIRS:-2}"); do
  if [ $((i % 2)) -eq 1 ]; then one plain plain-$i; one sharded sharded-$i
  else one sharded sharded-$i; one plain plain-$i; fi
done
python3 scripts/shard_overhead.py $R 2>&1 | tee $R/overhead.txt
tar czf "$OUT/shard-overhead.tgz" -C /tmp/ppbench-results shard-overhead
ls -la "$OUT"
