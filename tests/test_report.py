"""write_report end to end on synthetic records: the results table must agree with samples.csv,
samples.csv with the raw records, and acceptance must be measured or say it is not."""
from __future__ import annotations

import json
import re

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from harness.report import write_report
from fixtures.record_factory import dataset_records, engine_records

DATASETS = ("500ms", "2s", "8s")
FAIL = {("2s", 1): ("target", "vision")}
META = {"profile": "tiny", "device": "cpu", "dtype": "float32", "quantization": "none",
        "versions": {"torch": "x", "transformers": "y"}, "run_id": "t1", "warmup": 1}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def stage_recs():
    return dataset_records(DATASETS, n_samples=5, seed=11, failures=FAIL)


@pytest.fixture(scope="module")
def eng_recs():
    return engine_records(DATASETS, n_samples=3, alphas=(None, 0.6), gammas=(2, 4))


@pytest.fixture(scope="module")
def plain(tmp_path_factory, stage_recs):
    out = tmp_path_factory.mktemp("plain")
    return write_report(stage_recs, out, META)


@pytest.fixture(scope="module")
def with_engine(tmp_path_factory, stage_recs, eng_recs):
    out = tmp_path_factory.mktemp("engine")
    return write_report(stage_recs + eng_recs, out, META)


def md_table_after(text: str, heading: str) -> pd.DataFrame:
    body = text.split(heading, 1)[1]
    lines = [ln for ln in body.splitlines() if ln.startswith("|")]
    block = []
    for ln in body.splitlines()[body.splitlines().index(lines[0]):]:
        if not ln.startswith("|"):
            break
        block.append([c.strip() for c in ln.strip("|").split("|")])
    return pd.DataFrame(block[2:], columns=block[0])


def number(cell: str) -> float:
    return float(re.sub(r"[^0-9.\-]", "", cell.split("(")[0]))


def test_results_table_matches_samples_csv(plain):
    table = md_table_after(plain.read_text(), "## Results summary")
    csv = pd.read_csv(plain.parent / "samples.csv")
    assert list(table["Dataset"]) == list(DATASETS)
    for _, row in table.iterrows():
        s = csv[csv["dataset"] == row["Dataset"]]
        timed = s[s["paired"]]
        d = timed[timed["model"] == "drafter"]
        t = timed[timed["model"] == "target"]
        assert int(row["Samples"]) == s["sample_id"].nunique()
        assert int(row["Failed"]) == s.loc[~s["ok"], "sample_id"].nunique()
        assert int(row["Timed"]) == len(d) == len(t)
        assert number(row["EventGPT ms"]) == pytest.approx(d["total_ms"].mean(), abs=0.051)
        assert number(row["Video-LLaVA ms"]) == pytest.approx(t["total_ms"].mean(), abs=0.051)
        assert number(row["Speedup"]) == pytest.approx(
            t["total_ms"].mean() / d["total_ms"].mean(), abs=0.0051)
        assert number(row["Overlap window"]) == pytest.approx(d["window_ms"].mean(), abs=0.051)
        assert number(row["Hidden capacity"]) == pytest.approx(d["hidden_capacity"].mean(), abs=0.051)
        assert row["Acceptance"] == "not measured"


def test_samples_csv_matches_raw_records(plain, stage_recs):
    csv = pd.read_csv(plain.parent / "samples.csv").set_index(["sample_id", "model"])
    assert len(csv) == len(stage_recs)
    by = {(r["sample_id"], r["model"]): r for r in stage_recs}
    for sid in {r["sample_id"] for r in stage_recs}:
        d, t = by[(sid, "drafter")], by[(sid, "target")]
        if d["error"] or t["error"]:
            assert not csv.loc[(sid, "drafter"), "paired"]
            continue
        pre = {m: sum(r["stages_ms"][s] for s in ("load", "preprocess", "vision", "prefill"))
               for m, r in (("d", d), ("t", t))}
        window = pre["t"] - pre["d"]
        cum, hidden = 0.0, 0
        for x in d["decode_token_ms"]:
            cum += x
            if window <= 0 or cum > window:
                break
            hidden += 1
        row = csv.loc[(sid, "drafter")]
        assert row["total_ms"] == pytest.approx(sum(d["stages_ms"].values()))
        assert row["window_ms"] == pytest.approx(window)
        assert row["hidden_capacity"] == hidden


def test_failed_record_counted_and_excluded(plain, stage_recs):
    csv = pd.read_csv(plain.parent / "samples.csv")
    bad = csv[(csv["sample_id"] == "2s-1") & (csv["model"] == "target")].iloc[0]
    assert not bad["ok"] and bad["error_stage"] == "vision" and np.isnan(bad["total_ms"])
    res = json.loads((plain.parent / "results.json").read_text())
    tot = [r for r in res["stage_summary"]
           if r["dataset"] == "2s" and r["model"] == "target" and r["stage"] == "total"][0]
    ok = [sum(r["stages_ms"].values()) for r in stage_recs
          if r["dataset"] == "2s" and r["model"] == "target" and r["error"] is None]
    assert tot["count"] == len(ok) == 4
    assert tot["mean"] == pytest.approx(np.mean(ok))
    text = plain.read_text()
    assert "| 2s | stages | Video-LLaVA | vision | RuntimeError | 1 |" in text


def test_plots_are_valid_pngs(plain, with_engine):
    for path, names in ((plain, ["stage_bars", "latency_vs_duration", "hidden_vs_duration"]),
                        (with_engine, ["stage_bars", "latency_vs_duration",
                                       "hidden_vs_duration", "speedup_vs_alpha", "timeline"])):
        for n in names:
            png = path.parent / f"{n}.png"
            assert png.read_bytes()[:8] == PNG_MAGIC
            img = mpimg.imread(png)
            assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
            assert f"]({n}.png)" in path.read_text()
    assert not (plain.parent / "speedup_vs_alpha.png").exists()


def test_acceptance_appears_with_engine_records(with_engine, eng_recs):
    text = with_engine.read_text()
    table = md_table_after(text, "## Results summary")
    for _, row in table.iterrows():
        real = [r for r in eng_recs if r["dataset"] == row["Dataset"]
                and r["mode"] == "parallel" and r["alpha_simulated"] is None]
        rate = sum(r["accepted"] for r in real) / sum(r["drafted"] for r in real)
        assert row["Acceptance"] != "not measured"
        assert number(row["Acceptance"]) == pytest.approx(100 * rate, abs=0.051)
    assert "Acceptance rate:** not measured" not in text
    res = json.loads((with_engine.parent / "results.json").read_text())
    assert res["engine"] and res["engine_positions"]


def test_not_measured_without_engine_records(plain):
    text = plain.read_text()
    assert "Acceptance rate:** not measured" in text
    assert "Not measured: this run has no engine records" in text
    assert "simulated α=" not in text


def test_simulated_alpha_is_labelled(with_engine):
    text = with_engine.read_text()
    spec = md_table_after(text, "### Measured speculative decoding")
    sim = spec[spec["Drafter"] != "real drafter"]
    assert len(sim) and sim["Drafter"].str.startswith("simulated α=").all()
    assert "simulated α" in text.split("## Executive summary")[0]   # banner


def test_banner_and_meta(plain, tmp_path, stage_recs):
    text = plain.read_text()
    assert text.splitlines()[2].startswith("> **Numbers from: tiny on cpu; random-weight models")
    assert "- **Versions:** torch x, transformers y" in text
    real = write_report(stage_recs, tmp_path, {**META, "profile": "real"}).read_text()
    assert "Numbers from: real on cpu" in real and "random-weight" not in real.split("\n\n")[1]
    assert "nan" not in text.lower().replace("nanosecond", "")


def test_findings_cite_computed_numbers(plain):
    res = json.loads((plain.parent / "results.json").read_text())
    assert res["findings"]
    for f in res["findings"]:
        assert re.search(r"\d", f), f
    ds = {r["dataset"]: r for r in res["datasets"]}
    sp = [ds[d]["speedup"] for d in DATASETS]
    assert f"speedup {min(sp):.2f}x to {max(sp):.2f}x" in plain.read_text()


def test_report_with_only_engine_records(tmp_path, eng_recs):
    text = write_report(eng_recs, tmp_path, META).read_text()
    real = [r for r in eng_recs if r["mode"] == "parallel" and r["alpha_simulated"] is None]
    rate = sum(r["accepted"] for r in real) / sum(r["drafted"] for r in real)
    assert f"{100 * rate:.1f}%" in text.split("## Results summary")[0]
    assert "### Measured speculative decoding" in text
    assert (tmp_path / "samples.csv").exists() and (tmp_path / "timeline.png").exists()


def test_all_failed_dataset_reports_counts_without_timings(tmp_path):
    recs = dataset_records(("1s",), n_samples=2,
                           failures={("1s", 0): ("target", "decode"),
                                     ("1s", 1): ("drafter", "load")})
    table = md_table_after(write_report(recs, tmp_path, META).read_text(), "## Results summary")
    row = table.iloc[0]
    assert (row["Samples"], row["Failed"], row["Timed"], row["Speedup"]) == ("2", "2", "0", "n/a")


def test_unsupported_baseline_is_reported_not_failed(tmp_path, stage_recs):
    from fixtures.record_factory import engine_record

    why = "assisted generation needs one prompt for both models"
    rec = engine_record("500ms", stage_recs[0]["sample_id"], "assisted")
    rec.update(e2e_ms=None, error={"stage": "assisted", "type": "Unsupported", "message": why})
    clean = [r for r in stage_recs if not r.get("error")]
    report = write_report(clean + [rec], tmp_path, META).read_text()
    assert "No sample or engine run failed." in report
    assert "Baselines that cannot run with this pair" in report and why in report
    # the findings would say "1 records failed; most failed records failed at assisted" had the
    # unsupported baseline been counted as a failure
    assert "records failed" not in report and "failed at assisted" not in report


def test_engine_only_records_with_a_failure_do_not_crash(tmp_path):
    from fixtures.record_factory import engine_record

    recs = [engine_record("4s", "a", "target_only", e2e_ms=100.0),
            engine_record("4s", "a", "parallel", gamma=2, e2e_ms=80.0),
            engine_record("4s", "b", "parallel", gamma=2, e2e_ms=None,
                          error={"stage": "decode", "type": "RuntimeError", "message": "boom"})]
    report = write_report(recs, tmp_path, META).read_text()
    assert "1 records failed; most failed records failed at decode" in report


def test_acceptance_structure_section_matches_the_records(with_engine, eng_recs):
    """The run-length table shows, per block kind, the block count and mean accepted length
    recomputed from the records' accept_blocks, labels the implied speedup a MODEL, and the
    distribution and per-position tables are there."""
    text = with_engine.read_text()
    assert "#### Acceptance structure: run lengths" in text
    table = md_table_after(text, "#### Acceptance structure: run lengths")
    assert "Implied speedup, MODEL (i.i.d.)" in table.columns
    for _, row in table.iterrows():
        alpha = None if row["Drafter"] == "real drafter" else float(row["Drafter"].split("=")[1])
        blocks = [b for r in eng_recs if r["mode"] == row["Mode"] and str(r["gamma"]) == row["γ"]
                  and r["alpha_simulated"] == alpha
                  for b in (r["accept_blocks"][:1] if row["Block"] == "hidden" else r["accept_blocks"][1:])]
        assert int(row["Blocks"]) == len(blocks)
        assert number(row["Mean L (i.i.d.)"].split("/")[0]) == pytest.approx(
            np.mean([a for _, a in blocks]), abs=0.006)
    assert "P(L = k)" in text and "P(accept j given j−1 accepted)" in text
    res = json.loads((with_engine.parent / "results.json").read_text())
    assert res["acceptance_summary"] and res["acceptance_runs"] and res["acceptance_positions"]
