"""The figures docs/results/README.md quotes for issue 5, from `ppbench run` folders and
overlap-probe folders (real drafter tokens and simulated alpha, one gamma):

    PYTHONPATH=. python3 scripts/analyze_engine_runs.py RUN_DIR [RUN_DIR ...]   # records.jsonl inside
    PYTHONPATH=. python3 scripts/analyze_engine_runs.py --probe PROBE_DIR ...   # overlap_probe.json inside

Per simulated alpha ("real" = the drafter's own tokens): the parallel run's speedup over the same
sample's target-only run (median, range), how much later the target reached the end of prefill
(median), hidden fill (pooled: Σ hidden drafted ÷ Σ hidden capacity of the same engine runs,
metrics.hidden_fill, as the report and the benchmarks define it) and measured ÷ ideal. Every
derived quantity comes from harness/metrics.py. Then,
at alpha 0 and real, the target's per-stage time deltas, the delta after it is ready, and TPOT;
the TPOT spread of target-only and parallel runs, and whether the drafter ran in its own process.
"""
from __future__ import annotations

import argparse
import json
import statistics as st
from pathlib import Path

from harness.engine import STAGES
from harness.metrics import efficiency, engine_hidden_capacity, hidden_fill, speedup


def _rng(v):
    return f"median {st.median(v):.3f} ({min(v):.3f}-{max(v):.3f})" if v else "n/a"


def run_folder(path: Path) -> None:
    recs = [json.loads(x) for x in open(path / "records.jsonl") if x.strip()]
    meta = json.loads((path / "meta.json").read_text()) if (path / "meta.json").exists() else {}
    eng = [r for r in recs if r["kind"] == "engine" and not r.get("error")]
    key = lambda r: (r["dataset"], r["sample_id"])
    base = {key(r): r for r in eng if r["mode"] == "target_only"}
    par = [r for r in eng if r["mode"] == "parallel" and key(r) in base]
    print(f"== {path}: {meta.get('device')}, drafter on {meta.get('drafter_device')}, "
          f"overlap {meta.get('overlap', 'always (not recorded)')}")
    for alpha in sorted({r["alpha_simulated"] for r in par}, key=lambda a: -1 if a is None else a):
        g = [r for r in par if r["alpha_simulated"] == alpha]
        speed = [speedup([base[key(r)]["e2e_ms"]], [r["e2e_ms"]]) for r in g]
        later = [r["timeline"]["target_stage_end_ms"]["prefill"]
                 - base[key(r)]["timeline"]["target_stage_end_ms"]["prefill"] for r in g]
        fill = hidden_fill([r["hidden_drafted"] for r in g], [engine_hidden_capacity(r) for r in g],
                           [r.get("hidden_block") is not None for r in g])
        eff = [efficiency(r["ideal_e2e_ms"], r["e2e_ms"]) for r in g if r.get("ideal_e2e_ms")]
        print(f"alpha {'real' if alpha is None else alpha}: speedup {_rng(speed)}; target ready later by "
              f"median {st.median(later):.1f} ms; hidden fill {fill:.3f} (pooled); measured/ideal {_rng(eff)}")
    zero = [r for r in par if r["alpha_simulated"] in (None, 0.0)]
    deltas = {s: [] for s in STAGES}
    after, tpot = [], []
    for r in zero:
        b = base[key(r)]
        te, be = r["timeline"]["target_stage_end_ms"], b["timeline"]["target_stage_end_ms"]
        for i, s in enumerate(STAGES):
            prev = STAGES[i - 1] if i else None
            deltas[s].append((te[s] - (te[prev] if prev else 0)) - (be[s] - (be[prev] if prev else 0)))
        after.append((r["e2e_ms"] - te["prefill"]) - (b["e2e_ms"] - be["prefill"]))
        tpot.append(r["tpot_ms"] - b["tpot_ms"])
    print("alpha 0 and real, parallel - target-only (median ms): "
          + ", ".join(f"{s} {st.median(v):+.1f}" for s, v in deltas.items())
          + f"; after ready {st.median(after):+.1f}; TPOT {st.median(tpot):+.3f}")
    tpot_base = [b["tpot_ms"] for b in base.values() if b.get("tpot_ms")]
    tpot_par = [r["tpot_ms"] for r in zero if r.get("tpot_ms")]
    print(f"TPOT ms, target-only: {_rng(tpot_base)}; parallel at alpha 0 and real: {_rng(tpot_par)}; "
          f"drafter process: {meta.get('drafter_process', False)}")
    print("alpha 0 by sample: " + ", ".join(
        f"{r['dataset']} {speedup([base[key(r)]['e2e_ms']], [r['e2e_ms']]):.3f}" for r in par
        if r["alpha_simulated"] == 0.0))


def probe_folder(path: Path) -> None:
    rows = json.loads((path / "overlap_probe.json").read_text())
    by = {}
    for r in rows:
        by.setdefault(r["sample"].rsplit("-", 2)[-2], []).append(r["speedup"])
    print(f"== {path}: {len(rows)} pairs; by duration: "
          + ", ".join(f"{d} {st.median(v):.3f}" for d, v in by.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dirs", nargs="+")
    ap.add_argument("--probe", action="store_true", help="the folders hold overlap_probe.json")
    a = ap.parse_args()
    for d in a.dirs:
        (probe_folder if a.probe else run_folder)(Path(d))


if __name__ == "__main__":
    main()
