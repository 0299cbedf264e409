"""Failures speak: a run with failed samples lists them (stage, file, message) and exits 3; the
report names each one and every absent duration; a malformed manifest entry fails that sample
only; --resume retries failed records and refuses another data root; Ctrl-C keeps the records and
prints the exact resume command; a start-up failure leaves no run folder and does not move
runs/latest."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.console import EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_USAGE, interrupts_kept
from harness.data.synthetic import ensure_default_dataset
from harness.metrics import dedupe
from harness.records import RecordWriter, load_records

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--max-new-tokens", "4", "--assisted", "off", "--no-progress", "--warmup", "0"]


@pytest.fixture()
def flawed_root(tmp_path):
    """The embedded dataset's 500ms samples plus one sample whose sequence folder is missing and
    one malformed manifest entry; no manifest for 4s."""
    src = ensure_default_dataset(progress=False)
    root = tmp_path / "flawed"
    (root / "manifests").mkdir(parents=True)
    for seq in (p for p in src.iterdir() if p.is_dir() and p.name != "manifests"):
        (root / seq.name).symlink_to(seq, target_is_directory=True)
    doc = json.loads((src / "manifests" / "500ms.json").read_text())
    good = doc["samples"][0]
    doc["samples"] = [good, dict(good, id="lost-0", sequence="lost_sequence"), {"id": "broken-0", "t0_us": "x"}]
    (root / "manifests" / "500ms.json").write_text(json.dumps(doc))
    return root, good["sequence"]


def test_failed_samples_are_listed_reported_and_retried(flawed_root, tmp_path, capsys):
    root, real_sequence = flawed_root
    out = tmp_path / "run"
    args = ["run", "--data-root", str(root), "--durations", "500ms,4s", "--samples-per-duration", "3",
            "--out", str(out), *FAST, "--profile", "tiny"]
    assert main(args) == EXIT_FAILURES
    err = capsys.readouterr().err
    assert "500ms/lost-0 drafter [load] DataError: events file not found" in err
    assert "lost_sequence/events/left/events.h5" in err
    assert "500ms/broken-0 target [manifest] DataError: manifest entry 2 malformed" in err
    assert "no dataset for 4s" in err and f"exit code {EXIT_FAILURES}" in err
    report = (out / "report.md").read_text()
    assert "`lost-0`" in report and "lost_sequence/events/left/events.h5" in report
    assert "**4s:** absent, not measured" in report
    records = load_records(out / "records.jsonl")
    ok = [r for r in records if r["sample_id"] == "synth_city_00_a-500ms-00000"]
    assert ok and all(r["error"] is None for r in ok)          # the good sample still ran

    # The lost sequence turns up; --resume re-measures what failed, keeps what succeeded.
    (root / "lost_sequence").symlink_to(root / real_sequence, target_is_directory=True)
    before = {json.dumps(r, sort_keys=True) for r in ok}
    assert main(args + ["--resume"]) == EXIT_FAILURES           # the malformed entry still fails
    records = dedupe(load_records(out / "records.jsonl"))
    lost = [r for r in records if r["sample_id"] == "lost-0"]
    assert lost and all(r["error"] is None for r in lost)
    assert before <= {json.dumps(r, sort_keys=True) for r in load_records(out / "records.jsonl")}
    assert "`lost-0`" not in (out / "report.md").read_text()

    capsys.readouterr()
    other = tmp_path / "other"
    other.mkdir()
    (other / "manifests").symlink_to(root / "manifests", target_is_directory=True)
    assert main([*args[:2], str(other), *args[3:], "--resume"]) == EXIT_USAGE
    assert "data_root: saved" in capsys.readouterr().err


def test_a_start_up_failure_leaves_no_run_folder_and_keeps_latest(tmp_path, capsys, monkeypatch):
    """A checkpoint of the wrong layout stops the run before it has a folder: one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "old").mkdir()
    (tmp_path / "runs" / "latest").symlink_to(tmp_path / "runs" / "old", target_is_directory=True)
    bad = tmp_path / "ckpt"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert main(["run", "--profile", "real", "--drafter-path", str(bad), "--target-path", str(bad),
                 "--durations", "500ms", *FAST]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "wrong model_type" in err and str(bad) in err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["latest", "old"]
    assert (tmp_path / "runs" / "latest").resolve() == (tmp_path / "runs" / "old")


def test_a_ctrl_c_python_swallowed_stops_the_run_at_the_next_record(tmp_path, monkeypatch):
    """A Ctrl-C whose KeyboardInterrupt lands in a __del__ (or a weakref callback) is only printed
    by Python as "Exception ignored", and the run would go on to the end; under the CLI's
    interrupts_kept it is raised again right after the next record is on disk."""
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)    # the ignored exception

    class Dies:
        def __del__(self):
            signal.raise_signal(signal.SIGINT)     # the handler runs here: its exception is swallowed

    path = tmp_path / "records.jsonl"
    with interrupts_kept(), RecordWriter(path) as writer:
        writer.write({"n": 1})
        Dies()
        with pytest.raises(KeyboardInterrupt):
            writer.write({"n": 2})
        writer.write({"n": 3})                     # raised once: the run's own handler takes it from there
    assert [r["n"] for r in load_records(path)] == [1, 2, 3]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_keeps_the_records_and_prints_the_resume_command(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "harness", "run", "--durations", "500ms,1s,2s", "--out", str(out), *FAST,
           "--profile", "tiny"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    while time.time() < deadline and not ((out / "records.jsonl").exists()
                                          and (out / "records.jsonl").read_text().count("\n") >= 2):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_INTERRUPTED, err[-2000:]
    assert "Traceback" not in err
    kept = len(load_records(out / "records.jsonl"))
    assert f"interrupted: {kept} records kept" in err
    assert f"ppbench run --durations 500ms,1s,2s --out {out}" in err and err.rstrip().endswith("--resume")


def test_a_pickle_checkpoint_is_refused_with_the_option_that_allows_it(tmp_path, capsys):
    """Only pickle weights: refused before unpickling, in one line naming the file and the CLI's
    --allow-pickle (not a Python keyword the user cannot set)."""
    from harness.models.tiny import ensure_tiny_checkpoints

    tiny = ensure_tiny_checkpoints()
    ckpt = tmp_path / "eventgpt-pickle"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((Path(tiny["drafter"]) / "config.json").read_text())
    (ckpt / "pytorch_model.bin").write_bytes(b"not unpickled")
    assert main(["run", "--profile", "real", "--drafter-path", str(ckpt), "--target-path", str(tiny["target"]),
                 "--durations", "500ms", "--out", str(tmp_path / "r"), *FAST]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pytorch_model.bin" in err and "--allow-pickle" in err, err
    assert not (tmp_path / "r").exists()
