"""Calibration data shipped with the library: versioned bounds files (bounds/<profile>-<device
class>.json, see bounds/README.md), the regression gate's per-benchmark thresholds, and the
measured per-sample costs that balance a sharded run's processes (scripts/derive_sample_costs.py)."""
from pathlib import Path

HERE = Path(__file__).resolve().parent
BOUNDS_DIR = HERE / "bounds"
GATE_THRESHOLDS = HERE / "gate-thresholds.json"
SAMPLE_COSTS = HERE / "sample-costs.json"
