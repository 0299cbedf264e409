"""Acceptance bands per duration for the trained pair, from a committed `ppbench run --profile
trained` folder: per duration, the acceptance rate of the verify blocks after the hidden block
(accepted / drafted over accept_blocks[1:]) of the parallel engine with the real drafter, +- a
margin (default 0.10 absolute), clipped to [0, 1]; written as the `verify_acceptance_rate` bound
of harness/calibration/bounds/trained-cpu.json, which tests/test_trained_acceptance.py checks in
CI. The hidden block is left out: its length is set by the overlap window, i.e. by timing, and a
long hidden block moves the pooled rate by more than any band that still means something.

    PYTHONPATH=. python3 scripts/derive_acceptance_bands.py RUN_DIR [--margin 0.1] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness import metrics as M
from harness.bounds import bounds_path, validate_bounds, write_bounds
from harness.records import load_records


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path)
    p.add_argument("--margin", type=float, default=0.10)
    p.add_argument("--out", type=Path, default=bounds_path("trained", "cpu"))
    args = p.parse_args()
    measured = M.verify_acceptance_by_dataset(load_records(args.run / "records.jsonl"))
    if not measured:
        raise SystemExit(f"{args.run}: no parallel engine records with the real drafter")
    meta = json.loads((args.run / "meta.json").read_text()) if (args.run / "meta.json").exists() else {}
    doc = {"schema": 1, "profile": "trained", "device_class": "cpu",
           "source": (f"scripts/derive_acceptance_bands.py {args.run} --margin {args.margin}: run "
                      f"{meta.get('run_id')} at commit {meta.get('commit')}, measured per duration "
                      + ", ".join(f"{d} {v:.3f}" for d, v in measured.items())),
           "bounds": {"verify_acceptance_rate": {
               "min": 0.0, "max": 1.0,
               "per_duration": {d: {"min": round(max(0.0, v - args.margin), 3),
                                    "max": round(min(1.0, v + args.margin), 3)} for d, v in measured.items()},
               "why": (f"real greedy acceptance of the trained pair's verify blocks after the hidden block "
                       f"(accepted / drafted, parallel, fixed gamma; the hidden block's length is timing), "
                       f"the committed run's value +- {args.margin}: outside it the models, their inputs "
                       f"(event images, frames, prompts) or verification changed")}}}
    write_bounds(validate_bounds(doc), args.out)
    print(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
