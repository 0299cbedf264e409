#!/usr/bin/env bash
# The nightly on DSEC-scale data, twice, and new bounds / gate thresholds from it, in ONE device call
# (<= 600 s on one H200), from the repo root:
#   bash scripts/nightly_dsec_gpu.sh              results in $OUT (4 files): nightly-dsec.tgz (everything),
#                                                 summary.txt, candidate-bounds.json, candidate-gate-thresholds.json
#   bash scripts/nightly_dsec_gpu.sh --cpu-smoke  the same steps on CPU: small scale, one 4 s sequence, tiny
#                                                 profile, one duration, the engine benchmark only
#                                                 (tests/test_nightly_dsec_script.py runs it)
# Steps, each under a shared deadline (DEADLINE_SECS from the start, default 550 s, so that an install
# header before it and the tarball still fit in 600 s):
# 1. nightly-gpu.yml's own "Nightly data folder" and "Dataset" steps, as written (scripts/workflow_step.py):
#    generate at DSEC scale (5 sequences x 22 s, 1440x1080 PNG, 3 M events/s; all cores), then import-dsec
#    with 5 samples per duration (all sequences in parallel): timed, with the import's sequences/min;
#    then import throughput on one worker: import-dsec of one sequence alone
# 2. its "Previous save" and "Benchmarks" steps (pytest tests -m gpu --benchmark-autosave), storage
#    $R/storage; bounds are derived from this first save (`ppbench bounds derive`)
# 3. the same steps again: gated against the first save, checked against the first save's bounds
#    (PPBENCH_PYTEST_EXTRA); under `timeout -s INT` so a pass cut short still saves what it ran
# 4. `ppbench bounds derive` and `ppbench bounds thresholds` over the saves -> candidate files, and
#    `ppbench compare` of the two saves (the A/A check) with the old and the new thresholds
# 5. if time is left: the target's stage 1 three ways on the nightly's clips (scripts/video_reader_bench.py)
# Derivation goes on when a pass fails (a bound or the gate may fail on the new data); the script
# fails only when no pass saved anything.
set -euo pipefail
T0=$(date +%s); DEADLINE_SECS=${DEADLINE_SECS:-550}
SMOKE=0
if [ "${1:-}" = "--cpu-smoke" ]; then SMOKE=1; fi
if [ $SMOKE = 0 ] && ! python3 -c "import bitsandbytes, av, hdf5plugin" 2>/dev/null; then
  # the GPU image lacks bitsandbytes, av and hdf5plugin: the wheels carried as .whl (see gpu_runs.sh)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
PY=${PY:-python3}
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD PYTHONUNBUFFERED=1 PPBENCH_CACHE=${PPBENCH_CACHE:-/tmp/ppbench-cache}
OUT=${OUT:-/tmp/ppbench-out}; R=$OUT/nightly-dsec; C=$R/candidates
rm -rf "$R"; mkdir -p "$R" "$C"
left() { echo $(( T0 + DEADLINE_SECS - $(date +%s) )); }
cap() { local l; l=$(( $(left) - ${2:-0} )); if [ "$l" -lt "$1" ]; then echo $(( l > 5 ? l : 5 )); else echo "$1"; fi; }
step() { echo "== $(( $(date +%s) - T0 )) s: $*" | tee -a "$R/summary.txt"; }
note() { echo "   $*" | tee -a "$R/summary.txt"; }
notes() { grep -h "$@" | head -n 20 | while read -r l; do note "$l"; done || true; }   # grep's matches as notes
finish() {  # always: the summary and the candidates next to the tarball
  step "end (exit $?)"
  cp "$R/summary.txt" "$OUT/summary.txt"
  for f in bounds.json gate-thresholds.json; do if [ -f "$C/$f" ]; then cp "$C/$f" "$OUT/candidate-$f"; fi; done
  tar czf "$OUT/nightly-dsec.tgz" -C "$OUT" nightly-dsec
}
trap finish EXIT

# The nightly job's env (nightly-gpu.yml), here under /tmp and $R
export MODELS=/nonexistent-models BENCH_STORAGE=$R/storage
if [ $SMOKE = 1 ]; then
  export PROFILE=tiny PPBENCH_NIGHTLY_SCALE=small PPBENCH_NIGHTLY_SEQUENCES=1 PPBENCH_NIGHTLY_SEQUENCE_S=4
  echo '{"thresholds": {"*": 9.0}}' > "$R/loose-thresholds.json"   # CPU jitter is no regression
  BASE_EXTRA="--ppbench-device cpu --ppbench-durations 500ms --ppbench-max-new-tokens 8 \
--ppbench-gate-thresholds $R/loose-thresholds.json -k test_parallel_prefill"
  PASS_SECS=${PASS_SECS:-300}; READER_DURATIONS=500ms,1s
else
  export PROFILE=${PROFILE:-7b-shaped} PPBENCH_NIGHTLY_SCALE=${SCALE:-dsec}
  export PPBENCH_NIGHTLY_SEQUENCES=${SEQUENCES:-5} PPBENCH_NIGHTLY_SEQUENCE_S=${SEQUENCE_S:-22}
  BASE_EXTRA=${PPBENCH_PYTEST_EXTRA:-}
  PASS_SECS=${PASS_SECS:-260}; READER_DURATIONS=500ms,1s,2s,20s
fi
# the margins of the current 7b-shaped bounds files (harness/calibration/bounds/README.md)
MARGINS=(--margin overall_speedup=0.3 --margin drafter_prefill_speedup=0.5 --margin engine_efficiency=0.04
         --margin hidden_drafted=0.5)
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "no GPU"
  echo "cores: $(nproc)"; git rev-parse --short HEAD || true; $PY -c "import torch; print('torch', torch.__version__)" || true
} 2>/dev/null | tee "$R/host.txt"

wf() { $PY scripts/workflow_step.py nightly-gpu.yml "$@"; }
outputs() { sed -n "s/^$1=//p" "$2" | tail -n 1; }

step "1. nightly data: the workflow's 'Nightly data folder' + 'Dataset' steps (scale $PPBENCH_NIGHTLY_SCALE," \
     "$PPBENCH_NIGHTLY_SEQUENCES x $PPBENCH_NIGHTLY_SEQUENCE_S s, 5 samples per duration)"
GO=$R/github_output; : > "$GO"
GITHUB_OUTPUT=$GO bash -e -c "$(wf 'Nightly data folder')"
ROOT=$(outputs root "$GO")
note "data folder $ROOT"
t=$(date +%s)
timeout "$(cap 200 200)" bash -e -c "$(wf Dataset steps.data.outputs.root="$ROOT")" 2>&1 \
  | { grep -v -e '^generating' -e '^importing' || true; } | tee "$R/dataset.txt"
note "generate + import: $(( $(date +%s) - t )) s"; notes -e '^generated' -e '^imported' -e 'clips kept' "$R/dataset.txt"
note "import throughput, one worker: import-dsec of one sequence alone"
rc=0; timeout "$(cap 40 200)" $PY -m harness dataset import-dsec "$ROOT/generated" --out /tmp/nightly-import-1w \
  --sequences synth_city_00_a --samples-per-duration 5 --workers 1 --force 2>&1 | { grep -v '^importing' || true; } \
  | tee "$R/import-1w.txt" || rc=$?
note "$(grep -h '^imported' "$R/import-1w.txt" || echo "exit $rc")"
rm -rf /tmp/nightly-import-1w

bench_pass() {  # N, extra pytest args
  local n=$1 extra=$2 rc=0 base t
  : > "$GO"; GITHUB_OUTPUT=$GO bash -e -c "$(wf 'Previous save')"; base=$(outputs path "$GO")
  step "$(( n + 1 )). nightly 'Benchmarks' step, pass $n (gate base: ${base:-none}; extra: ${extra:-none})"
  t=$(date +%s); rm -rf ppbench-report
  PPBENCH_PYTEST_EXTRA="$BASE_EXTRA $extra" timeout -s INT -k 30 "$(cap "$PASS_SECS" 45)" bash -e -c \
    "$(wf Benchmarks steps.base.outputs.path="$base" steps.data.outputs.root="$ROOT")" > "$R/pass$n.log" 2>&1 || rc=$?
  note "pass $n: exit $rc after $(( $(date +%s) - t )) s; $(grep -E '(passed|failed|error)' "$R/pass$n.log" | tail -n 1)"
  notes -E 'BoundViolation|regressed|^FAILED|^ERROR' "$R/pass$n.log"
  if [ -d ppbench-report ]; then mv ppbench-report "$R/report$n"; fi
}

bench_pass 1 ""
mapfile -t SAVES < <(ls -1 "$BENCH_STORAGE"/*/*.json 2>/dev/null | sort)
if [ ${#SAVES[@]} -lt 1 ]; then
  note "pass 1 saved nothing: no bounds or thresholds to derive"; exit 1
fi
rc=0; $PY -m harness bounds derive "${SAVES[0]}" "${MARGINS[@]}" --out "$C/bounds-from-pass1.json" \
  2>&1 | tee -a "$R/derive.txt" || rc=$?
EXTRA2=""
if [ "$rc" = 0 ]; then EXTRA2="--ppbench-bounds $C/bounds-from-pass1.json"; fi
if [ "$(left)" -gt 80 ]; then bench_pass 2 "$EXTRA2"; else note "no time left for pass 2 ($(left) s)"; fi

mapfile -t SAVES < <(ls -1 "$BENCH_STORAGE"/*/*.json 2>/dev/null | sort)
step "4. derive from ${#SAVES[@]} save(s): ppbench bounds derive / thresholds, A/A compare"
rc=0; $PY -m harness bounds derive "${SAVES[@]}" "${MARGINS[@]}" --out "$C/bounds.json" 2>&1 \
  | tee -a "$R/derive.txt" || rc=$?
note "bounds derive: exit $rc"
rc=0; $PY -m harness bounds thresholds "${SAVES[@]}" --out "$C/gate-thresholds.json" 2>&1 \
  | tee -a "$R/derive.txt" || rc=$?
note "thresholds: exit $rc"; notes -E '^\*' "$R/derive.txt"
if [ ${#SAVES[@]} -ge 2 ]; then
  for which in old new; do
    th=harness/calibration/gate-thresholds.json; if [ $which = new ]; then th=$C/gate-thresholds.json; fi
    rc=0; $PY -m harness compare "${SAVES[0]}" "${SAVES[1]}" --thresholds "$th" > "$R/aa-$which-thresholds.txt" 2>&1 || rc=$?
    note "A/A compare pass 1 -> pass 2, $which thresholds ($th): exit $rc"
    notes -iE 'regressed' "$R/aa-$which-thresholds.txt"
  done
fi

step "5. the target's stage 1 three ways on the nightly's clips (scripts/video_reader_bench.py)"
if [ "$(left)" -gt 30 ]; then
  rc=0; timeout "$(cap 40 5)" $PY scripts/video_reader_bench.py --data-root "$ROOT/imported" --durations "$READER_DURATIONS" \
    --samples 2 --repeats 1 --out "$R" > "$R/video_readers.txt" 2>&1 || rc=$?
  note "exit $rc"; notes -E '^ +[0-9]' "$R/video_readers.txt"
else
  note "skipped: $(left) s left"
fi
