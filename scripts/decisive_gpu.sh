#!/usr/bin/env bash
# Issue 15, decisive random weights on the GPU: the 7B-shaped pair with simulated alpha in NF4 and
# in bf16; scripts/check_decisive.py then checks token match >= 0.99 for every engine mode and
# |measured alpha_iid - alpha| <= 0.05 at alpha 0.35 / 0.7 / 0.9.
#   bash scripts/decisive_gpu.sh nf4 | bf16 | both     (repo root; results under $OUT)
# One step (one quantization) fits one 600 s device call; SAMPLES / TOKENS override the defaults.
set -uo pipefail
if ! python3 -c "import bitsandbytes, av, hdf5plugin" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD PYTHONUNBUFFERED=1 PPBENCH_CACHE=${PPBENCH_CACHE:-/tmp/ppbench-cache}
OUT=${OUT:-/tmp/ppbench-out}; mkdir -p "$OUT"
steps=("$@"); [ "${steps[0]:-both}" = both ] && steps=(nf4 bf16)
runs=()
for q in "${steps[@]}"; do
  case $q in nf4) quant=nf4 ;; bf16) quant=none ;; *) echo "unknown step $q (nf4 | bf16 | both)"; exit 2 ;; esac
  echo "== $q: ppbench run --profile 7b-shaped --quant $quant --dtype bfloat16 --alphas 0.35,0.7,0.9 --gammas 4" | tee "$OUT/$q-command.txt"
  timeout "${STEP_SECS:-540}" python3 -m harness run --profile 7b-shaped --device cuda --quant $quant --dtype bfloat16 \
    --durations 4s --samples-per-duration "${SAMPLES:-4}" --max-new-tokens "${TOKENS:-200}" \
    --alphas 0.35,0.7,0.9 --gammas 4 --assisted off --no-progress --out "$OUT/decisive-$q" 2>&1 \
    | grep -v Warning | tail -n 40 | tee "$OUT/$q-log.txt"
  [ -f "$OUT/decisive-$q/report.md" ] || python3 -m harness report "$OUT/decisive-$q/records.jsonl"
  runs+=("$OUT/decisive-$q")
done
python3 scripts/check_decisive.py "${runs[@]}" --out "$OUT/decisive-check.json" | tee "$OUT/decisive-check.txt"
