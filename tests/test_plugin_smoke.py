"""The benchmark suite itself, run on CPU with the tiny profile: collection ids, the CPU smoke mode,
saved JSON with replayed device times and machine info, the session report, and the gate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pytest(*args, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_benchmarks.py", "-p", "no:cacheprovider",
                           *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def test_ids_cover_five_stages_nine_durations_two_models():
    code, out = _pytest("--collect-only", "-q", "-m", "gpu")
    assert code == 0, out
    ids = [l for l in out.splitlines() if l.startswith("tests/test_benchmarks.py::")]
    stage_ids = [i for i in ids if "::test_stage[" in i]
    assert len(stage_ids) == 5 * 9 * 2
    assert "tests/test_benchmarks.py::test_stage[prefill-4s-target]" in ids
    assert "tests/test_benchmarks.py::test_parallel_prefill[20s]" in ids


def test_gpu_benchmarks_skip_cleanly_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    code, out = _pytest("-q", "-m", "gpu", "-k", "test_stage and 500ms")
    assert code == 0, out
    assert "skipped" in out and "needs CUDA" in out + _pytest("-q", "-rs", "-m", "gpu", "-k", "load-500ms-drafter")[1]


@pytest.fixture(scope="module")
def saved_runs(tmp_path_factory):
    """Two saved tiny-profile CPU runs, with the session report; the second injects a slowdown."""
    tmp = tmp_path_factory.mktemp("bench")
    common = ["-m", "gpu", "--ppbench-profile", "tiny", "--ppbench-device", "cpu", "--ppbench-samples", "2",
              "--ppbench-durations", "500ms,4s", "--ppbench-max-new-tokens", "24",
              "--benchmark-autosave", f"--benchmark-storage={tmp / 'storage'}",
              "-k", "500ms or 4s"]
    code, out = _pytest(*common, "--ppbench-out", str(tmp / "report1"))
    assert code == 0, out[-3000:]
    saves = sorted((tmp / "storage").rglob("*.json"))
    assert len(saves) == 1
    code2, out2 = _pytest(*common, "--ppbench-out", str(tmp / "report2"),
                          "--ppbench-inject-delay", "decode:40", "--ppbench-gate", str(saves[0]))
    return tmp, saves[0], (code2, out2)


def test_saved_json_holds_measured_rounds_and_machine_info(saved_runs):
    tmp, first, _ = saved_runs
    doc = json.loads(first.read_text())
    assert "ppbench_versions" in doc["machine_info"] and "gpu" in doc["machine_info"]
    assert doc["ppbench"]["profile"] == "tiny"
    names = {b["name"]: b for b in doc["benchmarks"]}
    b = names["test_stage[decode-4s-target]"]
    assert len(b["stats"]["data"]) == 2                     # one round per sample
    assert b["options"]["timer"] == "replay_clock"
    assert b["extra_info"]["timing_source"] == "stage clock, device-synchronized"
    assert names["test_decode_token[4s-target]"]["stats"]["rounds"] == 2 * 23
    par = names["test_parallel_prefill[4s]"]["extra_info"]
    assert par["token_match_rate"] == [1.0, 1.0]          # fp32: lossless on every sample
    assert len(par["overall_speedup"]) == 2 and par["drafted"] >= par["accepted"] >= 0


def test_session_writes_the_summary_report(saved_runs):
    tmp, _, _ = saved_runs
    report = (tmp / "report1" / "report.md").read_text()
    assert "| 500ms |" in report and "| 4s |" in report


def test_gate_fails_the_session_on_an_injected_decode_slowdown(saved_runs):
    _, _, (code, out) = saved_runs
    assert code != 0, out[-3000:]
    assert "regressed" in out
    assert "decode_token[4s-target]" in out


def test_verify_cost_benchmarks_cover_three_precisions_and_run_on_cpu(tmp_path):
    """test_verify_cost has M = 1..64 for nf4, bf16 and int4; on CPU (tiny profile) it measures real
    rounds for bf16 and int4 and skips nf4 (bitsandbytes needs CUDA) with the reason."""
    code, out = _pytest("--collect-only", "-q", "-m", "gpu", "-k", "test_verify_cost")
    ids = [l for l in out.splitlines() if "::test_verify_cost[" in l]
    assert code == 0 and len(ids) == 3 * 64 and "tests/test_benchmarks.py::test_verify_cost[int4-M64]" in ids
    code, out = _pytest("-q", "-rs", "-m", "gpu", "--ppbench-device", "cpu", "--ppbench-durations", "500ms",
                        "--benchmark-autosave", f"--benchmark-storage={tmp_path}",
                        "-k", "test_verify_cost and (bf16-M2] or int4-M9] or nf4-M1])")
    assert code == 0, out[-3000:]
    assert "2 passed, 1 skipped" in out and "nf4 (bitsandbytes) runs on CUDA only" in out
    doc = json.loads(next(tmp_path.rglob("*.json")).read_text())
    rounds = {b["name"]: b for b in doc["benchmarks"]}
    assert rounds["test_verify_cost[int4-M9]"]["stats"]["rounds"] == 10
    assert rounds["test_verify_cost[bf16-M2]"]["extra_info"]["verify_over_decode"] > 0
