"""Does simulated alpha measure alpha? Reads engine records of one or more runs and prints, per run
and simulated alpha: the token match of every engine mode against target-only (all must be >= the
threshold for the target's greedy output to be reproducible) and alpha_iid, the per-token acceptance
measured from the verify blocks (harness.metrics.alpha_iid), next to the alpha it is labelled with.

    python scripts/check_decisive.py RUN_DIR [RUN_DIR ...] [--out results.json]
        [--min-match 0.99] [--max-alpha-error 0.05]

Exit status 1 when a check fails. Used by scripts/decisive_gpu.sh (issue 15)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from harness import metrics as M
from harness.records import load_records


def check_run(run: Path, min_match: float, max_alpha_error: float) -> dict:
    recs = [r for r in M.dedupe(load_records(run / "records.jsonl"))
            if r["kind"] == "engine" and r.get("error") is None]
    match = {}
    for r in recs:
        if r["mode"] != "target_only" and r.get("token_match_rate") is not None:
            key = f"{r['mode']} gamma={r['gamma']} alpha={M.alpha_label(r.get('alpha_simulated'))}"
            match.setdefault(key, []).append(r["token_match_rate"])
    alphas = {}
    for a in sorted({r["alpha_simulated"] for r in recs if r.get("alpha_simulated") is not None}):
        blocks = [b for r in recs if r.get("alpha_simulated") == a for b in r.get("accept_blocks") or []]
        hat = M.alpha_iid(blocks)
        alphas[f"{a:g}"] = {"alpha_iid": hat, "blocks": len(blocks),
                            "error": abs(hat - a) if not math.isnan(hat) else None,
                            "acceptance_rate": M._ratio(sum(x for _, x in blocks), sum(d for d, _ in blocks))}
    meta = json.loads((run / "meta.json").read_text()) if (run / "meta.json").exists() else {}
    out = {"run": str(run), "quantization": meta.get("quantization"), "device": meta.get("device"),
           "token_match": {k: {"mean": sum(v) / len(v), "min": min(v), "n": len(v)} for k, v in match.items()},
           "simulated_alpha": alphas}
    out["pass"] = bool(match) and bool(alphas) and all(
        v["min"] >= min_match for v in out["token_match"].values()) and all(
        v["error"] is not None and v["error"] <= max_alpha_error for v in alphas.values())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path)
    p.add_argument("--min-match", type=float, default=0.99)
    p.add_argument("--max-alpha-error", type=float, default=0.05)
    args = p.parse_args()
    results = [check_run(r, args.min_match, args.max_alpha_error) for r in args.runs]
    for res in results:
        print(f"== {res['run']} ({res['quantization']}, {res['device']}): {'PASS' if res['pass'] else 'FAIL'}")
        for k, v in res["token_match"].items():
            print(f"  token match {k:40s} mean {v['mean']:.4f} min {v['min']:.4f} (n={v['n']})")
        for a, v in res["simulated_alpha"].items():
            print(f"  simulated alpha {a:5s}: measured alpha_iid {v['alpha_iid']:.3f} over {v['blocks']} blocks "
                  f"(|error| {v['error']:.3f}; acceptance rate {v['acceptance_rate']:.3f})")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    return 0 if results and all(r["pass"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
