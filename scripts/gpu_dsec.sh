#!/usr/bin/env bash
# Issue 14's GPU measurements in ONE device call (about 8 minutes on one H200), from the repo root:
#   bash scripts/gpu_dsec.sh            results in $OUT/dsec/ (and $OUT/dsec.tgz)
# 1. generate the embedded data at DSEC scale (1440x1080 PNG at 20 Hz, 3 M events/s, 2 x 22 s)
# 2. import throughput: import-dsec of 1 sequence with 1 worker, then of both with 2 workers
# 3. the target's stage 1 three ways (scripts/video_reader_bench.py), CPU only, all 9 durations
# 4. the 7B-shaped target's stage 1 + 2 per reader per duration (scripts/target_stage12_bench.py)
# 5. ppbench run, one GPU, DSEC-scale data, real drafter + simulated alpha 0, 0.7, 0.9: window,
#    hidden tokens, speedup (records are incremental; the report is rebuilt if time runs out)
# Every step is capped by a shared deadline (DEADLINE_SECS, default 470 s) so results get packed.
set -uo pipefail
if ! python3 -c "import bitsandbytes, av, hdf5plugin" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD PYTHONUNBUFFERED=1 PPBENCH_CACHE=${PPBENCH_CACHE:-/tmp/ppbench-cache}
OUT=${OUT:-/tmp/ppbench-out}; R=$OUT/dsec; mkdir -p $R
PROFILE=${PROFILE:-7b-shaped}; DEVICE=${DEVICE:-cuda}; SCALE=${SCALE:-dsec}
T0=$(date +%s); DEADLINE_SECS=${DEADLINE_SECS:-470}
cap() { local left=$(( T0 + DEADLINE_SECS - $(date +%s) - 10 )); [ "$left" -lt "$1" ] && echo $(( left > 5 ? left : 5 )) || echo "$1"; }
step() { echo "== $(( $(date +%s) - T0 )) s: $*" | tee -a $R/commands.txt; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc; git rev-parse --short HEAD; } 2>/dev/null | tee $R/host.txt

G=/tmp/dsec-generated; I1=/tmp/dsec-import-1w; I=/tmp/dsec-imported
step "generate: ppbench dataset generate --scale $SCALE --sequences 2 --sequence-s 22"
( time timeout "$(cap 200)" python3 -m harness dataset generate --out $G --scale $SCALE --sequences 2 \
    --sequence-s 22 --workers 4 --force ) 2>&1 | grep -v '^$' | tail -n 5 | tee $R/generate.txt
du -sh $G/*_events $G/*_images 2>/dev/null | tee -a $R/generate.txt

step "import throughput: 1 sequence, 1 worker; then 2 sequences, 2 workers"
( time timeout "$(cap 120)" python3 -m harness dataset import-dsec $G --out $I1 --sequences synth_city_00_a \
    --workers 1 --force ) 2>&1 | grep -v 'importing' | tee $R/import-1w.txt
( time timeout "$(cap 120)" python3 -m harness dataset import-dsec $G --out $I --workers 2 --force ) 2>&1 \
    | grep -v 'importing' | tee $R/import-2w.txt
cp $I/import.json $R/ 2>/dev/null

step "stage 1 three ways (CPU decode only): scripts/video_reader_bench.py"
timeout "$(cap 70)" python3 scripts/video_reader_bench.py --data-root $I --samples 2 --repeats 1 --out $R \
  2>&1 | tee $R/video_readers.txt

step "target stage 1 + 2 per reader ($PROFILE on $DEVICE): scripts/target_stage12_bench.py"
timeout "$(cap 110)" python3 scripts/target_stage12_bench.py --profile $PROFILE --device $DEVICE \
  --data-root $I --samples 2 --out $R 2>&1 | grep -v Warning | tee $R/target_stage12.txt

step "engine on one GPU, simulated alpha 0,0.7,0.9: ppbench run --data-root $I"
timeout "$(cap 400)" python3 -m harness run --profile $PROFILE --device $DEVICE --data-root $I --no-progress \
  --durations 2s,10s,20s --samples-per-duration 1 --alphas 0,0.7,0.9 --out $R/engine 2>&1 \
  | grep -v Warning | tail -n 20 | tee $R/engine.txt
[ -f $R/engine/report.md ] || python3 -m harness report $R/engine/records.jsonl 2>&1 | tail -n 3 | tee -a $R/engine.txt
step "done"
tar czf $OUT/dsec.tgz -C $OUT dsec
