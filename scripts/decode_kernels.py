"""Where a compiled decode step's time goes (issue 19), on the 7B-shaped target's language model.

For each precision and each attention form of the compiled step (models/static_decode.py ATTENTION;
'triton' once per --triton-configs launch configuration, models/decode_attention.py),
after a --prompt-position prompt:

  ms        a decode (M = 1) and a verify (M = 9) step replayed from its CUDA graph, CUDA events,
            median of --reps after warm-up; next to the 32 layers' seven linears alone (one graph)
  kernels   torch.profiler over --profile-reps replays of the M = 1 graph: per kernel name, time
            per step; the first kernels of a step in order (duration, gap before); the sum of kernel
            time against the step's span (the rest is gaps between kernels)
  rounds    (--rounds N) the M = 1 step and the seven linears alone, interleaved N times: the median
            of the per-round ratios (step / linears, both CUDA events)
  unfused   the same step with q/k/v and gate/up called one by one (fuse_projections=False), against
            the default's one matmul each over concatenated weights (static_decode.FusedLinear)

  python scripts/decode_kernels.py --out $OUT                 # on a GPU host
  python scripts/decode_kernels.py --out $OUT --attention sdpa,triton --triton-configs 64:128:4,128:128:8
  python scripts/decode_kernels.py --device cpu --profile tiny --precisions bf16 --reps 2   # dry run
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from precision_probe import build, linears_fn, linears_ms, prefill, step_ms, timer  # noqa: E402

from harness.data.synthetic import QUESTIONS  # noqa: E402
from harness.models.profiles import static_cache_len, text_token_range  # noqa: E402
from harness.models import decode_attention  # noqa: E402
from harness.models.static_decode import StaticDecoder  # noqa: E402


def kernels_of(fn, reps: int, device) -> dict:
    """Kernel activity of `reps` calls of fn: per name ms per call, the first call's sequence."""
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(reps):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    evs = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    evs.sort(key=lambda e: e.time_range.start)
    if not evs:
        return {"kernels": 0}
    per = defaultdict(float)
    count = defaultdict(int)
    for e in evs:
        per[e.name] += e.time_range.elapsed_us() / reps
        count[e.name] += 1
    total = sum(per.values())
    span = (evs[-1].time_range.end - evs[0].time_range.start) / reps
    first_n = len(evs) // reps
    seq, prev = [], None
    for e in evs[:min(first_n, 60)]:
        gap = 0.0 if prev is None else e.time_range.start - prev
        seq.append({"name": e.name[:90], "us": round(e.time_range.elapsed_us(), 2), "gap_us": round(gap, 2)})
        prev = e.time_range.end
    top = sorted(per.items(), key=lambda kv: -kv[1])[:30]
    return {"kernels_per_call": first_n, "kernel_us_per_call": total, "span_us_per_call": span,
            "top": [{"name": n[:110], "us_per_call": round(us, 2), "per_call": count[n] / reps} for n, us in top],
            "sequence": seq}


def fused_linears_ms(d, m, device, t):
    """The step's own linears alone on an M-row input (fused q/k/v and gate/up), as one graph."""
    def four(i, layer, xh, xi):
        qkv, gate_up = d.fused_linears[i]
        qkv(xh), layer.self_attn.o_proj(xh), gate_up(xh), layer.mlp.down_proj(xi)
    return linears_ms(d, m, device, t, per_layer=four)


def measure(d, ids, prompt, t, args, device, cuda):
    if cuda:
        d.capture_graphs(sizes=(1, 9))
    with torch.inference_mode():
        cache = prefill(d, ids[:, :prompt])
        ms = {m: step_ms(d, cache, prompt, ids[:, prompt:], m, t, args.reps) for m in (1, 9)}

        def one():
            cache.length = prompt
            d.forward(cache, input_ids=ids[:, prompt:prompt + 1])
        k = kernels_of(one, args.profile_reps, device)
        # Step and linears-alone interleaved, round by round: the ratio from neighbouring measurements
        # (a denominator measured once moved 4% between calls, docs/results/h200-fused-decode).
        rounds = []
        if args.rounds:
            lin = linears_fn(d, 1, device)
            for _ in range(args.rounds):
                rounds.append({"step": step_ms(d, cache, prompt, ids[:, prompt:], 1, t, args.reps),
                               "linears": t(lin, reps=args.reps)})
    out = {"ms": ms, "kernels_m1": k, "compile_s": d.compile_s,
           "compile_error": d.glue.error if d.glue else None}
    if rounds:
        out["interleaved_m1"] = {"rounds": rounds,
                                 "step_over_linears_median": statistics.median(r["step"] / r["linears"] for r in rounds),
                                 "step_median": statistics.median(r["step"] for r in rounds),
                                 "linears_median": statistics.median(r["linears"] for r in rounds)}
    return out


def probe(args, precision, device, t):
    cuda = device.type == "cuda"
    default_cfg = decode_attention.BLOCK_N, decode_attention.CHUNK, decode_attention.NUM_WARPS
    runner = build(args.profile, precision, device)
    # The cache a run on the generated dataset sizes (its questions' text), unless --fixed-budget.
    text = text_token_range(runner, () if args.fixed_budget else QUESTIONS)[1]
    max_len = static_cache_len(runner, 50, text) if args.profile != "tiny" else 512
    prompt = min(args.prompt, max_len - 80)
    vocab = runner.model.get_input_embeddings().weight.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(3, vocab, (1, prompt + 16), generator=gen).to(device)
    res = {"precision": precision, "prompt_positions": prompt, "cache_slots": max_len}
    eager = StaticDecoder(runner.model, max_len=max_len)
    res["linears_ms"] = {m: linears_ms(eager, m, device, t) for m in (1, 9)}
    del eager
    variants = [(att, cfg) for att in args.attention
                for cfg in (args.triton_configs if att == "triton" else [None])]
    for att, cfg in variants:
        for fuse in (True, False) if args.unfused == "on" else (True,):
            name = f"compiled-{att}" + ("-b{}-c{}-w{}".format(*cfg) if cfg else "") + ("" if fuse else "-unfused")
            try:
                # read when a graph is captured
                decode_attention.BLOCK_N, decode_attention.CHUNK, decode_attention.NUM_WARPS = cfg or default_cfg
                d = StaticDecoder(runner.model, max_len=max_len, graphs=cuda, fused=True, attention=att,
                                  fuse_projections=fuse)
                res[name] = measure(d, ids, prompt, t, args, device, cuda)
                res[name]["attention"] = d.glue.kinds()
                res[name]["triton_config"] = ({"block": min(decode_attention.BLOCK_N, decode_attention.CHUNK),
                                               "chunk": decode_attention.CHUNK,
                                               "num_warps": decode_attention.NUM_WARPS,
                                               "combine_warps": decode_attention.COMBINE_WARPS}
                                              if "triton" in d.glue.kinds().values() else None)
                res[name]["fused_linears"] = sum(f is not None for pair in d.fused_linears for f in pair)
                if fuse and res[name]["fused_linears"]:
                    res[name]["linears_ms"] = {m: fused_linears_ms(d, m, device, t) for m in (1, 9)}
                res[name]["fused_extra_bytes"] = d.fused_extra_bytes()
            except Exception as exc:  # noqa: BLE001 - record and go on to the next variant
                res[name] = {"error": f"{type(exc).__name__}: {exc}"[:400], "trace": traceback.format_exc()[-1500:]}
            decode_attention.BLOCK_N, decode_attention.CHUNK, decode_attention.NUM_WARPS = default_cfg
            d = None
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
    for name, v in res.items():
        if isinstance(v, dict) and "ms" in v:
            v["step_over_linears_m1"] = v["ms"][1] / res["linears_ms"][1]
            if "linears_ms" in v:
                v["step_over_own_linears_m1"] = v["ms"][1] / v["linears_ms"][1]
            v["verify9_over_decode"] = v["ms"][9] / v["ms"][1]
    del runner
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="decode-kernels")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--profile", default="7b-shaped")
    ap.add_argument("--precisions", default="bf16,nf4,int4")
    ap.add_argument("--attention", default="auto", help="comma-separated static_decode.ATTENTION forms")
    ap.add_argument("--triton-configs", default="", help="for attention 'triton': BLOCK:CHUNK:WARPS launch "
                    "configurations, comma-separated (default: decode_attention's BLOCK_N, CHUNK, NUM_WARPS)")
    ap.add_argument("--prompt", type=int, default=2070)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--profile-reps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=0,
                    help="then the M = 1 step and the seven linears alone, interleaved, this many rounds")
    ap.add_argument("--budget-s", type=float, default=1e9, help="stop starting precisions after this")
    ap.add_argument("--unfused", choices=("on", "off"), default="on", help="also time the unfused step")
    ap.add_argument("--fixed-budget", action="store_true",
                    help="size the cache for the fixed text budget, not the generated dataset's questions")
    args = ap.parse_args()
    args.attention = args.attention.split(",")
    args.triton_configs = [tuple(int(x) for x in c.split(":")) for c in args.triton_configs.split(",") if c] or [None]
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t, t0 = timer(device), time.perf_counter()
    results = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
               else "cpu", "args": {k: v for k, v in vars(args).items()}, "precisions": {}}
    for p in args.precisions.split(","):
        if time.perf_counter() - t0 > args.budget_s:
            results["precisions"][p] = {"skipped": "budget"}
            continue
        try:
            results["precisions"][p] = probe(args, p, device, t)
        except Exception as exc:  # noqa: BLE001 - keep what was measured
            results["precisions"][p] = {"error": f"{type(exc).__name__}: {exc}"[:400],
                                        "trace": traceback.format_exc()[-2000:]}
        (out / "decode_kernels.json").write_text(json.dumps(results, indent=1))
        r = results["precisions"][p]
        for name, v in r.items():
            if isinstance(v, dict) and "ms" in v:
                k = v["kernels_m1"]
                print(f"{p:5s} {name:22s} M=1 {v['ms'][1]:6.2f} ms  M=9 {v['ms'][9]:6.2f} ms  "
                      f"linears {r['linears_ms'][1]:.2f} (own {v.get('linears_ms', r['linears_ms'])[1]:.2f})  "
                      f"step/lin {v['step_over_linears_m1']:.3f}  "
                      f"kernels {k.get('kernels_per_call')}  kernel_us {k.get('kernel_us_per_call', 0):.0f} "
                      f"span_us {k.get('span_us_per_call', 0):.0f}", flush=True)
                if "interleaved_m1" in v:
                    il = v["interleaved_m1"]
                    print(f"{p:5s} {name:22s} interleaved x{len(il['rounds'])}: step {il['step_median']:.3f} ms, "
                          f"linears {il['linears_median']:.3f} ms, step/lin {il['step_over_linears_median']:.3f}",
                          flush=True)
            elif isinstance(v, dict) and "error" in v:
                print(f"{p:5s} {name:22s} ERROR {v['error']}", flush=True)
    results["wall_s"] = time.perf_counter() - t0
    (out / "decode_kernels.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
