#!/usr/bin/env bash
# Issue 13 on a GPU: the drafter's exact inputs (host-side CLIPImageProcessor pixels, per-chunk
# canvases, 1 or 5 event images) and the target's prompt templates through the GPU pipeline.
#   bash scripts/issue13_gpu_check.sh        (repo root; results in $OUT/issue13.tgz)
# Runs: the CPU tests of the new rules on the GPU host's transformers (5.17 there); 7b-shaped NF4
# with --event-images 5 and 1 (582 / 578 visual tokens, CUDA-graph vision and prefill buckets),
# the seed template once; the tiny checkpoint layouts through --profile real on CUDA.
set -uo pipefail
if ! python3 -c "import bitsandbytes, av, hdf5plugin" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD PYTHONUNBUFFERED=1 PPBENCH_CACHE=${PPBENCH_CACHE:-/tmp/ppbench-cache}
OUT=${OUT:-/tmp/ppbench-out}; R=/tmp/issue13; mkdir -p "$OUT" $R
python3 -c "import sentencepiece, google.protobuf" 2>/dev/null || echo "note: sentencepiece/protobuf missing: slow-tokenizer tests skip or fail" | tee $R/notes.txt
timeout 200 python3 -m pytest tests/test_eventgpt_inputs.py tests/test_checkpoint_layouts.py -q --benchmark-disable \
    -p no:cacheprovider 2>&1 | tail -30 | tee $R/cpu_tests_on_gpu_host.txt
for n in 5 1; do
  timeout 140 python3 -m harness run --profile 7b-shaped --device cuda --no-progress --durations 1s,4s \
      --samples-per-duration 2 --event-images $n --max-new-tokens 32 --gammas adaptive \
      --out $R/7b-shaped-events$n 2>&1 | tail -15 | tee $R/7b-shaped-events$n.log
done
timeout 90 python3 -m harness run --profile 7b-shaped --device cuda --no-progress --durations 1s \
    --samples-per-duration 2 --videollava-prompt seed --engine off --out $R/7b-shaped-seed 2>&1 | tail -8 \
    | tee $R/7b-shaped-seed.log
tar czf "$OUT/issue13.tgz" -C /tmp issue13
