#!/usr/bin/env bash
# The GPU runs behind docs/results/, as run on the lent H100 through the device tool:
#   bash scripts/gpu_runs.sh STEP [STEP ...]      (repo root; results land in $OUT as .tgz files)
# Steps: alltests | gputests | fusedtests | attention | probe | alpha0 | dsecdata | pipeline | engine | pipeline-2gpu | sweep-nf4 | sweep-nf4-high | sweep-bf16 |
#        bench | precision | memory | kernels
# DECODE (default auto = cuda-graph on CUDA) picks the decode implementation for every step;
# DRAFTER_PROCESS=on|off sets where the engine's drafter runs: ppbench run's default (unset) is auto,
# its own process on CUDA (harness/pipeline.py: resolve_drafter_process), and so is the alpha0
# probe's (DRAFTER_PROCESS=off: a thread).
# Each python step runs under `timeout` so a slow step still leaves its (incremental) records and
# a report rebuilt from them. PROFILE / DEVICE / SAMPLES override the defaults (CPU dry runs).
set -uo pipefail
if ! python3 -c "import bitsandbytes, av, hdf5plugin" 2>/dev/null; then
  # the GPU image lacks bitsandbytes, av and hdf5plugin: wheels from shared/tools/device-wheels.sh
  # plus hdf5plugin slimmed by scripts/slim_hdf5plugin_wheel.py, carried as .whl
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit 1
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}:$PWD PYTHONUNBUFFERED=1 PPBENCH_CACHE=${PPBENCH_CACHE:-/tmp/ppbench-cache}
OUT=${OUT:-/tmp/ppbench-out}; mkdir -p "$OUT"
PROFILE=${PROFILE:-7b-shaped}; DEVICE=${DEVICE:-cuda}; R=/tmp/ppbench-results; mkdir -p $R
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | tee $R/gpu.txt

pack() { tar czf "$OUT/$1.tgz" -C $R "$1"; }
# Every step's time limit is also capped by a shared deadline, so the whole call ends inside the
# device tool's 600 s with its results packed (DEADLINE_SECS from the start of this script).
T0=$(date +%s); DEADLINE_SECS=${DEADLINE_SECS:-570}
cap() { local left=$(( T0 + DEADLINE_SECS - $(date +%s) - 10 )); [ "$left" -lt "$1" ] && echo $(( left > 5 ? left : 5 )) || echo "$1"; }
run_main() {  # name, seconds, ppbench run args...
  local name=$1 secs=$2; shift 2
  mkdir -p $R/$name
  echo "== $name: ppbench run --profile $PROFILE --device $DEVICE $*" | tee $R/$name/command.txt
  timeout "$(cap "$secs")" python3 -m harness run --profile "$PROFILE" --device "$DEVICE" --no-progress \
      --decode "${DECODE:-auto}" --out $R/$name "$@" 2>&1 | tee $R/$name/log.txt
  [ -f $R/$name/report.md ] || python3 -m harness report $R/$name/records.jsonl 2>&1 | tee -a $R/$name/log.txt
  pack "$name"
}

for step in "$@"; do
  case $step in
    alltests)    # every gpu-marked test of the model and the compiled-step files, one pytest
      mkdir -p $R/alltests
      timeout "$(cap "${GPUTESTS_SECS:-200}")" python3 -m pytest tests/test_models_gpu.py tests/test_fused_decode.py \
        -m gpu -q -p no:cacheprovider 2>&1 | tail -n 30 | tee $R/alltests/log.txt
      pack alltests ;;
    gputests)    # the gpu-marked model tests (graph replay vs eager, 7B-shaped memory, second-GPU timing)
      mkdir -p $R/gputests
      timeout "$(cap "${GPUTESTS_SECS:-150}")" python3 -m pytest tests/test_models_gpu.py -m gpu -q \
        -p no:cacheprovider 2>&1 | tail -n 30 | tee $R/gputests/log.txt
      pack gputests ;;
    fusedtests)  # issue 19: the compiled step's gpu-marked tests (graphs vs eager per attention form, fused NF4)
      mkdir -p $R/fusedtests
      timeout "$(cap "${GPUTESTS_SECS:-150}")" python3 -m pytest tests/test_fused_decode.py -m gpu -q \
        -p no:cacheprovider 2>&1 | tail -n 30 | tee $R/fusedtests/log.txt
      pack fusedtests ;;
    memory)      # issue 19 item 3: the NF4 pair in one process (scripts/memory_probe.py), fixed and expandable segments
      mkdir -p $R/memory
      for alloc in fixed expandable; do
        conf=$([ $alloc = expandable ] && echo expandable_segments:True)
        PYTORCH_CUDA_ALLOC_CONF=$conf timeout "$(cap "${MEMORY_SECS:-120}")" python3 scripts/memory_probe.py \
          --out $R/memory/$alloc --variants pair 2>&1 | grep -v Warning | tee $R/memory/$alloc.log
      done
      pack memory ;;
    kernels)     # issue 19: the compiled step's time per precision and attention form (scripts/decode_kernels.py)
      mkdir -p $R/kernels
      timeout "$(cap "${KERNELS_SECS:-240}")" python3 scripts/decode_kernels.py --out $R/kernels \
        --precisions "${PRECISIONS:-bf16,nf4}" --attention "${ATTENTION:-auto}" --unfused "${UNFUSED:-off}" \
        --triton-configs "${TRITON_CONFIGS:-}" --rounds "${ROUNDS:-0}" \
        --budget-s "${KERNELS_BUDGET:-200}" 2>&1 | grep -v Warning | tee $R/kernels/log.txt
      pack kernels ;;
    attention)   # issue 19: decode-step attention alone, cuDNN SDPA vs the Triton split-KV kernels' launch configurations
      mkdir -p $R/attention
      timeout "$(cap "${ATTENTION_SECS:-120}")" python3 scripts/attention_bench.py --out $R/attention \
        ${ATTENTION_CONFIGS:+--configs $ATTENTION_CONFIGS} 2>&1 \
        | grep -v Warning | tee $R/attention/log.txt
      pack attention ;;
    probe)       # per-token decode / verify cost of the 7B-shaped target under hf, static, cuda-graph
      mkdir -p $R/probe
      timeout "$(cap "${PROBE_SECS:-200}")" python3 scripts/decode_probe.py --out $R/probe 2>&1 \
        | grep -v Warning | tee $R/probe/log.txt
      pack probe ;;
    alpha0)      # issues 5 and 19: target-only and the parallel engine (real drafter, simulated alpha 0) alternating
                 # on the same samples, per step host vs GPU time and the SM clock (scripts/overlap_probe.py);
                 # DRAFTER_PROCESS=off: the drafter in a thread; ALPHA0_ROOT: data (dsecdata's /tmp/dsec-i)
                 # ALPHA0_ORDERS: alternate,run,rotated,run-noseq (each sample's modes as ppbench run orders them:
                 # unrotated, rotated, or unrotated without sequential); ALPHA0_STAGES=on: the five-stage records first, as ppbench run does;
                 # ALPHA0_QUEUES=0,4: engine.DECODE_QUEUE values in turn (0: a host round trip per decode step)
      n=alpha0${DRAFTER_PROCESS:+-proc-$DRAFTER_PROCESS}${ALPHA0_SAMPLER:+-sampler-$ALPHA0_SAMPLER}${ALPHA0_ORDERS:+-orders}${ALPHA0_QUEUES:+-queues}; mkdir -p $R/$n
      timeout "$(cap "${ALPHA0_SECS:-200}")" python3 scripts/overlap_probe.py --out $R/$n \
        ${ALPHA0_ROOT:+--data-root $ALPHA0_ROOT} --durations "${ALPHA0_DURATIONS:-2s,10s,20s}" \
        --per-duration "${ALPHA0_PER:-2}" --reps "${ALPHA0_REPS:-3}" --alphas "${ALPHA0_ALPHAS:-none,0}" \
        $([ "${DRAFTER_PROCESS:-}" = off ] && echo --drafter-thread) $([ "${ALPHA0_SAMPLER:-}" = on ] && echo --sampler) \
        --orders "${ALPHA0_ORDERS:-alternate}" $([ "${ALPHA0_STAGES:-}" = on ] && echo --stage-records) \
        ${ALPHA0_QUEUES:+--queues $ALPHA0_QUEUES} \
        2>&1 | grep -v Warning | tee $R/$n/log.txt
      pack $n ;;
    dsecdata)    # DSEC-scale data (1440x1080 video at 20 Hz, 2 x 22 s) generated and imported to /tmp/dsec-i
      mkdir -p $R/dsecdata
      timeout "$(cap 90)" python3 -m harness dataset generate --out /tmp/dsec-g --scale dsec --sequences 2 \
        --sequence-s 22 --workers 8 --force 2>&1 | tail -n 3 | tee $R/dsecdata/log.txt
      timeout "$(cap 60)" python3 -m harness dataset import-dsec /tmp/dsec-g --out /tmp/dsec-i --workers 4 \
        --samples-per-duration "${DSEC_SAMPLES:-2}" --force 2>&1 | tail -n 3 | tee -a $R/dsecdata/log.txt
      pack dsecdata ;;
    pipeline)    # issues 3+4: all 9 durations, five stages per model, engine + baselines on 1 sample each
      run_main pipeline "${PIPELINE_SECS:-330}" --samples-per-duration "${SAMPLES:-3}" --engine-samples 1 ;;
    engine)      # issue 5: both models on one GPU, engine (adaptive gamma) on every sample and alpha
      run_main engine${DRAFTER_PROCESS:+-proc-$DRAFTER_PROCESS} "${PIPELINE_SECS:-330}" --samples-per-duration 2 \
        --gammas adaptive --alphas "${ALPHAS:-0,0.35,0.7,0.9}" ${DRAFTER_PROCESS:+--drafter-process $DRAFTER_PROCESS} ;;
    pipeline-2gpu)  # issue 5: the drafter on its own GPU (needs two), engine on every sample
      run_main pipeline-2gpu${DRAFTER_PROCESS:+-proc-$DRAFTER_PROCESS} "${PIPELINE_SECS:-330}" --drafter-device cuda:1 \
        --samples-per-duration 2 --gammas adaptive --alphas "${ALPHAS:-0,0.35,0.7,0.9}" \
        ${DRAFTER_PROCESS:+--drafter-process $DRAFTER_PROCESS} ;;
    sweep-nf4)   # issue 5: simulated alpha x gamma, NF4
      run_main sweep-nf4 "${SWEEP_SECS:-200}" --durations 4s --samples-per-duration 1 \
        --gammas adaptive,1,2,4,8 --alphas 0,0.35,0.7,0.9 ;;
    sweep-bf16)  # issue 5: the same in bf16 (no quantization)
      run_main sweep-bf16 "${SWEEP_SECS:-200}" --durations 4s --samples-per-duration 1 --quant none \
        --dtype bfloat16 --gammas "${GAMMAS:-adaptive,1,2,4,8}" --alphas 0,0.35,0.7,0.9 ;;
    sweep-nf4-high)  # issue 5: NF4 at the high simulated alphas (the first NF4 sweep ran out of time)
      run_main sweep-nf4-high "${SWEEP_SECS:-200}" --durations 4s --samples-per-duration 1 \
        --gammas "${GAMMAS:-adaptive,1,2,4,8}" --alphas 0.7,0.9 ;;
    bench)       # issue 6: two saved runs, bounds from the first, A/A gate, injected slowdown gate
      # 5 samples per duration: with fewer, a Mann-Whitney test cannot reach p < 0.01 on a stage
      B=$R/bench; mkdir -p $B; S=$B/storage; D=$PPBENCH_CACHE/dataset-5
      test -f $D/.complete || python3 -m harness dataset build --root $D --samples-per-duration 5 --force \
        2>&1 | tail -n 2 | tee -a $B/log.txt
      common=(tests/test_benchmarks.py -m gpu -p no:cacheprovider --ppbench-profile "$PROFILE"
              --ppbench-device "$DEVICE" --ppbench-samples "${SAMPLES:-5}" --benchmark-autosave
              --ppbench-decode "${DECODE:-auto}" --ppbench-data-root $D --benchmark-storage "$S")
      durs=${BENCH_DURATIONS:-500ms,1s,2s,4s,5s,8s,10s,16s,20s}
      echo "== run 1" | tee -a $B/log.txt
      timeout "$(cap "${BENCH_SECS:-230}")" python3 -m pytest "${common[@]}" --ppbench-durations "$durs" \
          --ppbench-out $B/report1 2>&1 | tail -n 40 | tee -a $B/log.txt
      first=$(ls $S/*/*.json 2>/dev/null | sort | head -n 1)
      # without a first save there is nothing to gate against: stop rather than "pass" ungated runs
      [ -n "$first" ] || { echo "run 1 saved nothing; stopping the bench step" | tee -a $B/log.txt; pack bench; continue; }
      python3 -m harness bounds derive "$first" --out $B/bounds.json 2>&1 | tee -a $B/log.txt
      echo "== run 2 (A/A gate against run 1, bounds from run 1)" | tee -a $B/log.txt
      timeout "$(cap "${BENCH_SECS:-230}")" python3 -m pytest "${common[@]}" --ppbench-durations "$durs" \
          --ppbench-bounds $B/bounds.json --ppbench-gate "$first" --ppbench-out $B/report2 2>&1 \
          | tail -n 60 | tee -a $B/log.txt; echo "run 2 exit: ${PIPESTATUS[0]}" | tee -a $B/log.txt
      echo "== run 3 (decode +${INJECT_MS:-0.7} ms/token injected as a GPU spin; gate must fail)" | tee -a $B/log.txt
      timeout "$(cap "${INJECT_SECS:-120}")" python3 -m pytest "${common[@]}" --ppbench-durations "${INJECT_DURATIONS:-4s,20s}" \
          --ppbench-inject-delay "decode:${INJECT_MS:-0.7}" --ppbench-gate "$first" --ppbench-out $B/report3 \
          2>&1 | tail -n 60 | tee -a $B/log.txt; echo "run 3 exit: ${PIPESTATUS[0]}" | tee -a $B/log.txt
      saves=($(ls $S/*/*.json 2>/dev/null | sort))
      if [ ${#saves[@]} -ge 2 ]; then
        python3 -m harness compare "${saves[0]}" "${saves[1]}" > $B/gate-run1-vs-run2.txt 2>&1; echo "A/A gate exit: $?" | tee -a $B/log.txt
      fi
      if [ ${#saves[@]} -ge 3 ]; then
        python3 -m harness compare "${saves[0]}" "${saves[2]}" > $B/gate-run1-vs-injected.txt 2>&1; echo "injected gate exit: $?" | tee -a $B/log.txt
      fi
      pack bench ;;
    precision)   # issue 19 item 2: nf4, bf16, int4 side by side (one run each on the same samples and engine
                 # settings, <precision>/ each); report.md's Precision table: target TPOT and prefill, the
                 # verify-cost curve M = 1..hidden block, whole-GPU memory (NVML), break-even alpha predicted
                 # from the curve vs the measured speedups at simulated alpha. The drafter runs in a thread
                 # (DRAFTER_PROCESS=on: its own process, +1 drafter load per precision) to fit ~240 s.
      P=$R/precision; mkdir -p $P
      args=(--profile "$PROFILE" --device "$DEVICE" --no-progress --decode "${DECODE:-auto}" --out $P
            --quant "${PRECISIONS:-nf4,bf16,int4}" --durations "${PRECISION_DURATIONS:-1s,4s}"
            --samples-per-duration "${SAMPLES:-2}" --gammas adaptive --alphas "${ALPHAS:-0,0.7,0.9}"
            --assisted off --drafter-process "${DRAFTER_PROCESS:-off}" ${DTYPE:+--dtype $DTYPE})
      echo "== precision: ppbench run ${args[*]}" | tee $P/command.txt
      timeout "$(cap "${PRECISION_SECS:-210}")" python3 -m harness run "${args[@]}" 2>&1 | grep -v Warning | tee $P/log.txt
      if [ ! -f $P/report.md ]; then    # cut short: each precision's report, then the table from what exists
        for d in $P/*/; do
          [ -f $d/records.jsonl ] && [ ! -f $d/report.md ] && python3 -m harness report $d/records.jsonl 2>&1 | tee -a $P/log.txt
        done
        ls $P/*/records.jsonl >/dev/null 2>&1 && python3 -m harness report --precision $P/*/records.jsonl --out $P 2>&1 | tee -a $P/log.txt
      fi
      pack precision ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
ls -la "$OUT"
