"""Decode phases token by token: each parallel record against target-only on the same sample.

From a run's records.jsonl (the timeline's `token_ms`: when the output reached each length), per
parallel record: e2e and TTFT of both modes, the first decode gap after the first token, the median
gap, and the post-TTFT speedup; then means per simulated alpha. Separates the TTFT (host stages,
where run-to-run noise lives) from the decode phase (where the hidden block pays or costs). Records
that carry their position in the sample's sequence (timeline["order"], engine_suite) also give the
order effects: the median decode-step gap of each plain-decoding run (target-only, sequential, a
parallel run verifying no block after its hidden one) by the mode that ran just before it, taken
from the records' file order, so only for a run that was neither resumed nor sharded.

  python scripts/token_gaps.py RUN_DIR/records.jsonl [...]
"""
from __future__ import annotations

import json
import statistics
import sys
from collections import defaultdict


def gaps(times):
    return [b - a for a, b in zip(times, times[1:])]


def rows(path):
    recs = [json.loads(line) for line in open(path)]
    engine = [r for r in recs if r.get("kind") == "engine" and not r.get("error")]
    base = {r["sample_id"]: r for r in engine if r["mode"] == "target_only"}
    for r in engine:
        t = base.get(r["sample_id"])
        if r["mode"] != "parallel" or t is None or "token_ms" not in r["timeline"] or "token_ms" not in t["timeline"]:
            continue
        ga, gb = gaps(t["timeline"]["token_ms"]), gaps(r["timeline"]["token_ms"])
        yield {"sample": r["sample_id"], "alpha": r["alpha_simulated"], "hidden_block": r["hidden_block"],
               "e2e": (t["e2e_ms"], r["e2e_ms"]), "ttft": (t["ttft_ms"], r["ttft_ms"]),
               "first_gap": (ga[0], gb[0]), "median_gap": (statistics.median(ga), statistics.median(gb)),
               "post_ttft_speedup": (t["e2e_ms"] - t["ttft_ms"]) / (r["e2e_ms"] - r["ttft_ms"])}


def label(r) -> str:
    if r["mode"] != "parallel":
        return r["mode"]
    return "parallel, real drafter" if r["alpha_simulated"] is None else f"parallel, alpha {r['alpha_simulated']}"


def order_effects(path) -> dict:
    """{(mode, the mode before it): [median gap per record]} for the modes that decode plainly
    after their first token (target-only, sequential, parallel with the real drafter or alpha 0);
    the mode before a sample's first is the previous sample's last."""
    recs = [json.loads(line) for line in open(path)]
    engine = [r for r in recs if r.get("kind") == "engine" and "order" in r.get("timeline", {})]
    out, before = defaultdict(list), None
    for r in engine:               # in the order they ran (records are written as runs end)
        gap = gaps(r["timeline"].get("token_ms") or [])
        plain = r["mode"] in ("target_only", "sequential") or (r["mode"] == "parallel"
                                                               and len(r.get("accept_blocks") or []) <= 1)
        if not r.get("error") and plain and gap:
            out[(label(r), before)].append(statistics.median(gap))
        before = label(r)
    return out


def main(paths):
    for path in paths:
        print(f"== {path}")
        print("sample | alpha | B | e2e target-only / parallel ms | TTFT | first gap | median gap | post-TTFT speedup")
        by = defaultdict(list)
        for x in rows(path):
            by[x["alpha"]].append(x)
            print(f"{x['sample'][-14:]} | {x['alpha']} | {x['hidden_block']} | {x['e2e'][0]:.0f} / {x['e2e'][1]:.0f} | "
                  f"{x['ttft'][0]:.0f} / {x['ttft'][1]:.0f} | {x['first_gap'][0]:.2f} / {x['first_gap'][1]:.2f} | "
                  f"{x['median_gap'][0]:.2f} / {x['median_gap'][1]:.2f} | {x['post_ttft_speedup']:.3f}")
        for alpha, xs in by.items():
            m = statistics.mean
            print(f"alpha {alpha} (n={len(xs)}): e2e speedup {m(a / b for a, b in (x['e2e'] for x in xs)):.3f}, "
                  f"TTFT parallel - target-only {m(b - a for a, b in (x['ttft'] for x in xs)):+.1f} ms "
                  f"(sd {statistics.pstdev([b - a for a, b in (x['ttft'] for x in xs)]):.1f}), "
                  f"first gap {m(b - a for a, b in (x['first_gap'] for x in xs)):+.2f} ms, "
                  f"median gap {m(b - a for a, b in (x['median_gap'] for x in xs)):+.3f} ms, "
                  f"post-TTFT speedup {m(x['post_ttft_speedup'] for x in xs):.3f}")
        effects = order_effects(path)
        if effects:
            print("order effects: median decode gap (ms) of a mode by the mode that ran just before it")
            for (mode, before), xs in sorted(effects.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
                print(f"  {mode} after {before}: {statistics.median(xs):.3f} (n={len(xs)})")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__.strip().splitlines()[-1].strip())
    main(sys.argv[1:])
