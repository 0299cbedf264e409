"""The main job end to end on the embedded default (the trained tiny pair, synthetic data, CPU) with
the committed run's options (docs/results/trained-cpu/command.txt), and the tiny random pair where
a test only needs a run to exist."""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import metrics as M
from harness.bounds import bounds_path, check_bound, load_bounds_file
from harness.cli import main
from harness.records import load_records, record_key

ROOT = Path(__file__).resolve().parent.parent
DURATIONS = "500ms,1s,2s,4s,5s,8s,10s,16s,20s"


def _table_rows(report: str, header_start: str) -> list[list[str]]:
    lines = report.splitlines()
    i = next(i for i, l in enumerate(lines) if l.startswith(header_start))
    rows = []
    for line in lines[i + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def _num(cell: str) -> float:
    return float(re.sub(r"[^0-9.\-]", "", cell))


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    code = main(["run", "--gammas", "4", "--assisted", "off", "--no-progress", "--out", str(out)])
    assert code == 0
    return out


def test_report_has_one_row_per_duration_consistent_with_samples_csv(main_run):
    report = (main_run / "report.md").read_text()
    rows = _table_rows(report, "| Dataset | Samples |")
    assert [r[0] for r in rows] == DURATIONS.split(",")
    with open(main_run / "samples.csv") as fh:
        samples = list(csv.DictReader(fh))
    for row in rows:
        mine = [s for s in samples if s["dataset"] == row[0]]
        drafter = [float(s["total_ms"]) for s in mine if s["model"] == "drafter"]
        target = [float(s["total_ms"]) for s in mine if s["model"] == "target"]
        assert len(drafter) == len(target) == 2
        d_mean, t_mean = sum(drafter) / 2, sum(target) / 2
        assert _num(row[4]) == pytest.approx(d_mean, abs=0.06)
        assert _num(row[5]) == pytest.approx(t_mean, abs=0.06)
        assert _num(row[6]) == pytest.approx(t_mean / d_mean, abs=0.006)


def test_records_hold_every_stage_and_lossless_engine_output(main_run):
    records = load_records(main_run / "records.jsonl")
    stages = [r for r in records if r["kind"] == "stages"]
    assert len(stages) == 9 * 2 * 2 and not any(r["error"] for r in stages)
    for r in stages:
        assert set(r["stages_ms"]) == {"load", "preprocess", "vision", "prefill", "decode"}
        assert len(r["decode_token_ms"]) == r["n_output_tokens"] == 50
    engine = [r for r in records if r["kind"] == "engine"]
    assert {r["mode"] for r in engine} == {"target_only", "sequential", "parallel"}
    for r in engine:
        if r["mode"] != "target_only":
            assert r["token_match_rate"] == 1.0, r  # fp32: lossless, bit-exact greedy
    meta = json.loads((main_run / "meta.json").read_text())
    assert meta["profile"] == "trained" and meta["memory_footprint_bytes"]["target"] > 0
    assert meta["drafter_process"] is False            # auto: a thread on CPU
    for png in ("stage_bars.png", "latency_vs_duration.png", "hidden_vs_duration.png"):
        assert (main_run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_run_acceptance_is_inside_its_band(main_run):
    """The default run's real acceptance (verify blocks after the hidden block, per duration) lies
    in the trained pair's committed band (harness/calibration/bounds/trained-cpu.json), is non-zero,
    and the report shows it with its run-length table and the pair's answer accuracy."""
    measured = M.verify_acceptance_by_dataset(load_records(main_run / "records.jsonl"))
    assert list(measured) == DURATIONS.split(",")
    bounds = load_bounds_file(bounds_path("trained", "cpu"))
    for duration, rate in measured.items():
        check_bound(bounds, "verify_acceptance_rate", rate, samples=[duration], duration=duration)
        assert rate > 0, duration
    report = (main_run / "report.md").read_text()
    assert "#### Acceptance structure: run lengths" in report
    assert "## Trained pair: answers against the ground truth" in report


def test_report_rebuilds_from_saved_records(main_run, tmp_path):
    assert main(["report", str(main_run / "records.jsonl"), "--out", str(tmp_path)]) == 0
    assert _table_rows((tmp_path / "report.md").read_text(), "| Dataset | Samples |") == \
        _table_rows((main_run / "report.md").read_text(), "| Dataset | Samples |")


def _run_cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def test_kill_and_resume_loses_nothing_and_duplicates_nothing(tmp_path):
    args = ["run", "--profile", "tiny", "--durations", "500ms,4s", "--samples-per-duration", "2", "--max-new-tokens", "6",
            "--no-progress", "--assisted", "off", "--engine", "on"]
    full = tmp_path / "full"
    assert _run_cli(args + ["--out", str(full)]).wait(timeout=600) == 0
    want = {record_key(r) for r in load_records(full / "records.jsonl")}

    part = tmp_path / "part"
    proc = _run_cli(args + ["--out", str(part)])
    deadline = time.time() + 600
    while time.time() < deadline:  # interrupt once a few records are on disk
        path = part / "records.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    got_before = load_records(part / "records.jsonl")
    assert 0 < len(got_before) < len(want)

    assert _run_cli(args + ["--out", str(part), "--resume"]).wait(timeout=600) == 0
    keys = [record_key(r) for r in load_records(part / "records.jsonl")]
    assert len(keys) == len(set(keys)), "resume duplicated records"
    assert set(keys) == want


def test_main_job_on_the_static_decode_path_says_so_and_stays_lossless(tmp_path):
    """`--decode static` runs the whole job on the fixed-size cache (the CPU twin of the GPU's
    cuda-graph default); the meta, every record and the report name the implementation."""
    out = tmp_path / "static"
    assert main(["run", "--profile", "tiny", "--durations", "500ms", "--samples-per-duration", "1", "--max-new-tokens", "8",
                 "--decode", "static", "--alphas", "0.5", "--gammas", "adaptive,2", "--assisted", "off",
                 "--out", str(out), "--no-progress"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["decode_impl"] == "static"
    assert meta["decode_setup"]["target"]["cache_len"] % 128 == 0
    records = load_records(out / "records.jsonl")
    assert records and {r["decode_impl"] for r in records} == {"static"}
    assert all(r["token_match_rate"] == 1.0 for r in records if r["kind"] == "engine" and r["mode"] != "target_only")
    report = (out / "report.md").read_text()
    assert "**Decode implementation:** static KV cache, eager" in report
    assert "static KV cache:** " in report


def test_main_job_with_the_drafter_in_its_own_process(tmp_path, capsys):
    """`--drafter-process`: the engine's parallel runs use a drafter served by a child process; the
    output stays the target's own, and meta and report say where the drafter ran."""
    out = tmp_path / "proc"
    assert main(["run", "--profile", "tiny", "--durations", "500ms", "--samples-per-duration", "1", "--max-new-tokens", "8",
                 "--drafter-process", "--alphas", "1.0", "--gammas", "adaptive,2", "--assisted", "off",
                 "--out", str(out), "--no-progress"]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["drafter_process"] is True
    engine = [r for r in load_records(out / "records.jsonl") if r["kind"] == "engine"]
    parallel = [r for r in engine if r["mode"] == "parallel"]
    assert len(parallel) == 4 and all(r["error"] is None for r in parallel)
    assert all(r["token_match_rate"] == 1.0 for r in parallel)
    assert all(r["accepted"] == r["drafted"] for r in parallel if r["alpha_simulated"] == 1.0)
    assert "**Engine's drafter runs in:** its own process" in (out / "report.md").read_text()
    capsys.readouterr()
    assert main(["run", "--profile", "tiny", "--durations", "500ms", "--samples-per-duration", "1", "--max-new-tokens", "8",
                 "--out", str(out), "--resume", "--no-progress"]) == 2
    assert "drafter_process: saved True, now False" in capsys.readouterr().err
