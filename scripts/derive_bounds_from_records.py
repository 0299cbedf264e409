"""Bounds from the engine records of `ppbench run` folders (real drafter tokens only; run them with
one gamma, as the nightly does), for device classes that have no saved pytest-benchmark run. Each bound's measured value is the lowest of the
folders' medians (per duration and overall), so every folder passes; margins as given.

    PYTHONPATH=. python3 scripts/derive_bounds_from_records.py --device-class h200 --out FILE \\
        --margin overall_speedup=0.3 ... RUN_DIR [RUN_DIR ...]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from harness.bounds import DEFAULT_MARGINS, derive_bounds, write_bounds
from harness.engine_suite import summarize_engine

NAMES = ("overall_speedup", "drafter_prefill_speedup", "hidden_tokens", "engine_efficiency", "acceptance_rate")


def per_duration(records: list[dict]) -> dict:
    """{name: {duration: median, "all": median over every sample}} for one run folder."""
    real = [r for r in records if r["kind"] == "stages" or r.get("alpha_simulated") is None]
    out = {n: {} for n in NAMES}
    pooled = {n: [] for n in NAMES}
    for duration in sorted({r["dataset"] for r in real}):
        mine = [r for r in real if r["dataset"] == duration]
        lists, medians = summarize_engine([r for r in mine if r["kind"] == "engine"],
                                          [r for r in mine if r["kind"] == "stages"])
        for n in NAMES:
            if medians.get(n) is not None:
                out[n][duration] = medians[n]
                pooled[n].extend(lists.get(n, []))
    for n in NAMES:
        if pooled[n]:
            out[n]["all"] = statistics.median(pooled[n])
    par = [r for r in real if r["kind"] == "engine" and r["mode"] == "parallel" and not r.get("error")]
    drafted = sum(r["drafted"] for r in par)
    if drafted:   # pooled, as summarize_engine defines it
        out["acceptance_rate"]["all"] = sum(r["accepted"] for r in par) / drafted
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--device-class", required=True)
    ap.add_argument("--profile", default="7b-shaped")
    ap.add_argument("--out", required=True)
    ap.add_argument("--margin", action="append", default=[], help="name=relative margin")
    a = ap.parse_args()
    folders = [per_duration([json.loads(x) for x in open(Path(d) / "records.jsonl") if x.strip()]) for d in a.runs]
    measurements = {}
    for n in NAMES:
        keys = set.intersection(*(set(f[n]) for f in folders))
        lowest = {k: min(f[n][k] for f in folders) for k in keys}
        measurements[n] = {"all": lowest.get("all"), "per_duration": {k: v for k, v in lowest.items() if k != "all"}}
    margins = {}
    for m in a.margin:
        name, rel = m.split("=")
        margins[name] = {**DEFAULT_MARGINS[name], "rel": float(rel)}
        margins[name]["why"] = DEFAULT_MARGINS[name]["why"].split(";")[0] + f"; -{float(rel):.0%} of measured"
    source = (f"derived by scripts/derive_bounds_from_records.py from {', '.join(a.runs)} (lowest median "
              f"of the folders, real drafter tokens); margins {', '.join(a.margin) or 'default'}")
    write_bounds(derive_bounds(measurements, margins, profile=a.profile, device_class=a.device_class,
                               source=source), a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
