"""Per-token decode and k-token verify cost of one 7B-shaped model under each decode
implementation (hf / static / cuda-graph), and whether their greedy tokens agree.

    python3 scripts/decode_probe.py --out DIR [--quant nf4|none] [--tokens 50] [--repeats 3]

Why: it shows what the static cache and CUDA graphs change; docs/results/ keeps its output. Its
decode goes through engine.greedy_decode, so on CUDA its steps are queued (engine.DECODE_QUEUE;
set it to 0 for one host round trip per step, as this probe's earlier runs measured); its verify
steps are one round trip each. Random weights: cost only, no quality."""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from harness.models.profiles import configure_decode, load_target
from harness.engine import greedy_decode, now_ms


def pct(xs, q):
    return float(np.percentile(xs, q)) if xs else None


def decode_run(runner, embeds, n):
    """Prefill, then the library's greedy decode (token 1 from the prefill logits): per-token ms,
    ms[0] being token 1's selection."""
    cache, logits = runner.prefill(embeds)
    start = now_ms(runner.device)
    tokens, times = greedy_decode(runner, cache, logits, n, eos=set(), t0=start)
    return tokens, [b - a for a, b in zip([0.0, *times], times)], cache


def verify_cost(runner, cache, k, reps=5):
    base = runner.cache_len(cache)
    times = []
    for _ in range(reps):
        torch.cuda.synchronize()
        t = time.perf_counter()
        runner.verify(torch.arange(3, 3 + k, device=runner.device), cache)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
        runner.crop(cache, base)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--quant", default="nf4")
    ap.add_argument("--tokens", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--impls", default="hf,static,cuda-graph")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    target = load_target("7b-shaped", device="cuda", quant=a.quant, dtype=torch.bfloat16)
    print(f"target loaded in {time.perf_counter() - t:.1f} s", flush=True)
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (8, 240, 320, 3), dtype=np.uint8)
    with torch.inference_mode():
        embeds = target.encode_vision(target.preprocess(raw, "What is happening in this scene?"))
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "quant": a.quant,
              "prompt_tokens": int(embeds.shape[1]), "tokens": a.tokens, "impls": {}}
    ref = None
    for impl in a.impls.split(","):
        setup = configure_decode([target], impl, max_new_tokens=a.tokens)["target"]
        with torch.inference_mode():
            decode_run(target, embeds, 8)                       # warm-up
            per_token, match = [], []
            for _ in range(a.repeats):
                tokens, ms, cache = decode_run(target, embeds, a.tokens)
                per_token += ms[1:]                                 # ms[0] selects token 1 (no forward)
                ref = ref or tokens
                match.append(sum(x == y for x, y in zip(tokens, ref)) / len(ref))
            verify = {k: verify_cost(target, cache, k) for k in (1, 2, 4, 8, 9, 16, 32)}
        row = {"setup": setup, "per_token_ms": {"p10": pct(per_token, 10), "p50": pct(per_token, 50),
                                                "p90": pct(per_token, 90), "max": max(per_token), "n": len(per_token)},
               "verify_ms_median": verify, "token_match_vs_first_impl": match}
        result["impls"][impl] = row
        print(impl, json.dumps(row), flush=True)
    (out / "decode_probe.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
