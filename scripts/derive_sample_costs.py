"""Expected per-sample cost per duration, from a run's records, for balancing sharded runs.

    python scripts/derive_sample_costs.py RUN/records.jsonl [--out harness/calibration/sample-costs.json]

Costs are measured (harness.metrics.duration_costs_ms: per duration, the median over samples of the
five stages of both models and of the engine runs' end-to-end times); only their ratios matter to the
split (harness/shard.py), and a run can pass its own with --shard-costs.
"""
import argparse
import json
from pathlib import Path

from harness.metrics import duration_costs_ms, sort_datasets
from harness.records import iter_records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("records")
    p.add_argument("--out", default="harness/calibration/sample-costs.json")
    a = p.parse_args()
    records = list(iter_records(a.records))
    costs = duration_costs_ms(records)
    device = next((r.get("device") for r in records if r.get("device")), None)
    profile = next((r.get("profile") for r in records if r.get("profile")), None)
    doc = {"source": f"measured: {a.records} ({profile}, {device})", "unit": "ms per sample",
           "definition": "harness.metrics.duration_costs_ms", "costs_ms": {d: costs[d] for d in sort_datasets(costs)}}
    Path(a.out).write_text(json.dumps(doc, indent=1) + "\n")
    for d, c in doc["costs_ms"].items():
        print(f"{d:>6}: stages {c['stages']:9.1f} ms  engine {c['engine']:9.1f} ms  ({c['samples']} samples)")
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
