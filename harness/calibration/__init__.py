"""Calibration data shipped with the library: versioned bounds files (bounds/<profile>-<device
class>.json, see bounds/README.md) and the regression gate's per-benchmark thresholds."""
from pathlib import Path

HERE = Path(__file__).resolve().parent
BOUNDS_DIR = HERE / "bounds"
GATE_THRESHOLDS = HERE / "gate-thresholds.json"
