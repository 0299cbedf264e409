"""scripts/nightly_dsec_gpu.sh, the lead's one GPU call behind new bounds and gate thresholds, runs
end to end on CPU (--cpu-smoke), so a syntax error, a renamed option or a changed workflow step
fails here and not on the GPU host; scripts/workflow_step.py refuses a half-substituted step."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from harness.bounds import load_bounds_file

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "nightly_dsec_gpu.sh"


def test_workflow_step_refuses_an_unsubstituted_expression():
    """The Benchmarks step needs its gate base and data root: left out, the helper exits 2 naming
    the expression; given, no ${{ }} is left and the interpreter replaces .venv/bin/python."""
    step = [sys.executable, str(ROOT / "scripts" / "workflow_step.py"), "nightly-gpu.yml", "Benchmarks"]
    proc = subprocess.run(step, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "steps.base.outputs.path" in proc.stderr
    proc = subprocess.run(step + ["steps.base.outputs.path=", "steps.data.outputs.root=/data"],
                          capture_output=True, text=True, timeout=60, check=True)
    assert "${{" not in proc.stdout
    assert f"{sys.executable} -m pytest tests -m gpu" in proc.stdout and '"/data/imported"' in proc.stdout


@pytest.mark.slow
def test_nightly_dsec_script_cpu_smoke(tmp_path):
    """--cpu-smoke: the workflow's data steps generate and import, the Benchmarks step runs twice and
    saves twice, bounds and thresholds are derived from both saves, both import throughputs and the
    three readers (same frames) are reported, and $OUT holds at most 6 files."""
    out = tmp_path / "out"
    env = dict(os.environ, OUT=str(out), PPBENCH_CACHE=str(tmp_path / "cache"), PY=sys.executable)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    summary = (out / "summary.txt").read_text() if (out / "summary.txt").is_file() else ""
    assert proc.returncode == 0, summary + (proc.stdout + proc.stderr)[-3000:]
    assert len(list(out.iterdir())) <= 6
    assert "pass 1: exit 0" in summary and "pass 2: exit" in summary, summary
    assert summary.count("sequences/min") == 2 and "derive from 2 save(s)" in summary, summary
    bounds = load_bounds_file(out / "candidate-bounds.json")
    assert bounds["profile"] == "tiny" and "overall_speedup" in bounds["bounds"]
    thresholds = json.loads((out / "candidate-gate-thresholds.json").read_text())["thresholds"]
    assert "*::test_parallel_prefill[[]*" in thresholds
    with tarfile.open(out / "nightly-dsec.tgz") as tar:
        names = tar.getnames()
        readers = json.load(tar.extractfile("nightly-dsec/video_readers.json"))
    assert len([n for n in names if n.startswith("nightly-dsec/storage/") and n.endswith(".json")]) == 2
    assert {(r["duration"], r["reader"]) for r in readers["rows"]} == {
        (d, r) for d in ("500ms", "1s") for r in ("seek", "decode-all", "threaded")}
    assert all(r["frames_identical"] for r in readers["rows"])
