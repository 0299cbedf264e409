"""Checks a bounds file against the engine records of a saved run, the way test_parallel_prefill
does (same summary, same check), and prints every violation instead of stopping at the first.
Only the real drafter's engine records count, as in the nightly benchmarks and in
scripts/derive_bounds_from_records.py: simulated-alpha records of an alpha sweep are not checked.

    python3 scripts/check_bounds.py BOUNDS.json RECORDS.jsonl [RECORDS.jsonl ...]
"""
from __future__ import annotations

import json
import sys

from harness.bounds import BoundsError, load_bounds_file
from harness.engine_suite import check_engine_bounds, summarize_engine


def main(argv: list[str]) -> int:
    bounds, bad = load_bounds_file(argv[0]), 0
    for path in argv[1:]:
        records = [json.loads(line) for line in open(path) if line.strip()]
        for duration in sorted({r["dataset"] for r in records}):
            mine = [r for r in records if r["dataset"] == duration]
            engine = [r for r in mine if r["kind"] == "engine" and r.get("alpha_simulated") is None]
            stages = [r for r in mine if r["kind"] == "stages"]
            _, summary = summarize_engine(engine, stages)
            for name in bounds.get("bounds", {}):
                try:
                    check_engine_bounds({**bounds, "bounds": {name: bounds["bounds"][name]}}, summary, duration)
                except (AssertionError, BoundsError) as e:
                    bad += 1
                    print(f"{path} [{duration}] {str(e).splitlines()[0]}")
    print(f"{bad} violations")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
