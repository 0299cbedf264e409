"""How much does the parallel engine cost the target when nothing is accepted (real drafter tokens
of a random-weight pair: alpha ~ 0)? Loads the 7B-shaped pair once; runs target-only and the
parallel engine (adaptive gamma) on the same samples, alternating, and prints the median e2e ratio
with a bootstrap CI: the repeated measurement behind issue 5's "at alpha = 0 at most 2% slower
than target-only". (Its GIL switch-interval sweep is retired: it changed nothing, docs/results/README.md
at commit 080f728, h100-overlap-probe.)

    python3 scripts/overlap_probe.py --out DIR [--durations 4s] [--reps 3] [--drafter-process]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from harness import baselines, data, engine
from harness.engine_suite import warm_up_engine
from harness.pipeline import load_models


def _median_ci(values, n_boot: int = 2000, seed: int = 0):
    import random

    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n_boot))
    return meds[int(0.025 * n_boot)], meds[int(0.975 * n_boot)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--durations", default="4s")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--drafter-device", default=None)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--drafter-process", action="store_true", help="the engine's drafter in its own process")
    a = ap.parse_args()
    from harness.data.synthetic import ensure_default_dataset

    root = Path(a.data_root) if a.data_root else ensure_default_dataset(progress=False)
    samples = [s for d in a.durations.split(",") for s in data.load_samples(root, d)]
    drafter, target = load_models("7b-shaped", device=torch.device("cuda"), quant="nf4", dtype=torch.bfloat16,
                                  drafter_device=a.drafter_device, drafter_process=a.drafter_process)
    warm_up_engine(drafter, target, samples[0])
    rows = []
    for rep in range(a.reps):
        for s in samples:
            base = baselines.target_only(target, s, max_new_tokens=50)
            par = engine.parallel_prefill_decode(drafter, target, s, max_new_tokens=50)
            tl = par.timeline
            rows.append({"sample": s.id, "rep": rep, "target_only_e2e": base.e2e_ms,
                         "parallel_e2e": par.e2e_ms, "speedup": base.e2e_ms / par.e2e_ms,
                         "window_ms": par.window_ms, "hidden_drafted": par.hidden_drafted,
                         "target_ends": tl["target_stage_end_ms"], "drafter_ends": tl["drafter_stage_end_ms"],
                         "target_alone_ttft": base.ttft_ms})
    sel = rows
    if sel:
        lo, hi = _median_ci([r["speedup"] for r in sel])
        print(f"{len(sel)} pairs, speedup median {statistics.median(r['speedup'] for r in sel):.3f} "
              f"(95% bootstrap CI {lo:.3f}-{hi:.3f}; {sum(r['speedup'] >= 0.98 for r in sel)} within 2%), "
              f"target prefill end {statistics.median(r['target_ends']['prefill'] for r in sel):.0f} ms "
              f"(alone ttft {statistics.median(r['target_alone_ttft'] for r in sel):.0f}), hidden "
              f"{statistics.median(r['hidden_drafted'] for r in sel)}", flush=True)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "overlap_probe.json").write_text(json.dumps(rows, indent=1))
    if a.drafter_process:
        drafter.close()


if __name__ == "__main__":
    main()
