"""Precisions side by side (issue 19 item 2): the Precision table from hand-made records, the
verify-cost curve's CPU clock, the --quant list, and a multi-precision CPU run end to end."""
from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from fixtures.record_factory import engine_record, stage_record
from harness import metrics as M
from harness import options, runconfig
from harness.cli import main
from harness.errors import UsageError
from harness.pipeline import precision_report_main
from harness.records import load_records
from harness.report import _alpha_bracket, precision_section
from harness.verify_cost import CPU_CLOCK, measure_curve


def _as(records, quant, dtype):
    return [{**r, "quant": quant, "dtype": dtype} for r in records]


def _precision_records(quant, dtype, curve, *, blocks, seed, alphas=(0.0, 0.7, 0.9)):
    """Stage + engine records of two samples and a verify_cost record with rounds around `curve`."""
    rng = np.random.default_rng(seed)
    recs = [stage_record("4s", f"4s-{i}", m, rng=rng) for i in range(2) for m in ("drafter", "target")]
    for i in range(2):
        recs.append(engine_record("4s", f"4s-{i}", "target_only", rng=rng))
        for a in alphas:
            rec = engine_record("4s", f"4s-{i}", "parallel", gamma="adaptive", alpha=a, rng=rng)
            recs.append({**rec, "hidden_block": blocks[i]})
    rounds = {str(m): [v * f for f in (0.98, 1.0, 1.03)] for m, v in curve.items()}
    recs.append({"kind": "verify_cost", "dataset": "all", "sample_id": "verify-cost", "model": "target",
                 "curve_ms": rounds, "clock": "CUDA events", "memory": {"bytes": 7 * 2**30, "what": "whole-GPU peak"},
                 "error": None})
    return _as(recs, quant, dtype)


NF4 = {1: 4.0, 2: 6.0, 4: 8.0, 8: 11.0, 9: 12.0, 12: 13.0}
INT4 = {1: 3.0, 2: 3.5, 4: 4.0, 8: 5.0, 9: 5.5, 12: 6.0}


@pytest.fixture(scope="module")
def hand_made():
    return (_precision_records("nf4", "bfloat16", NF4, blocks=[8, 9], seed=1)
            + _precision_records("int4", "bfloat16", INT4, blocks=[9, 9], seed=2))


def _row(text: str, first: str) -> list[str]:
    line = next(l for l in text.splitlines() if l.startswith(f"| {first} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_break_even_in_the_table_is_metrics_definition_from_the_curve(hand_made):
    """Each precision's break-even is metrics.break_even_alpha of its own measured curve (medians of
    the rounds) at its hidden block B (median of its parallel records, rounded up), and the report
    prints exactly that; TPOT comes from that precision's records only (the same samples measured in
    another precision are not deduplicated into it)."""
    table = M.precision_tables(hand_made)["table"].set_index("precision")
    text = precision_section(hand_made)
    for label, curve, blocks in (("nf4", NF4, [8, 9]), ("int4", INT4, [9, 9])):
        b = int(np.ceil(np.median(blocks)))
        mine = [r for r in hand_made if r["quant"] == label]
        vc = next(r for r in mine if r["kind"] == "verify_cost")
        want = M.break_even_alpha(M.curve_medians(vc), b)
        assert table.loc[label, "block"] == b
        assert table.loc[label, "break_even_alpha"] == pytest.approx(want)
        assert M.curve_medians(vc) == pytest.approx(curve)
        row = _row(text, label)
        assert row[4] == str(b) and row[8] == f"{want:.2f}"
        tpot = np.mean([M.tpot_ms(r["decode_token_ms"]) for r in mine
                        if r["kind"] == "stages" and r["model"] == "target"])
        assert table.loc[label, "tpot_ms"] == pytest.approx(tpot)
    assert table.loc["nf4", "break_even_alpha"] > table.loc["int4", "break_even_alpha"]


def test_missing_precision_is_absent_not_zero(hand_made):
    """bf16 has no records: its row says absent (with the reason the run gave) and holds no number."""
    table = M.precision_tables(hand_made)["table"].set_index("precision")
    assert not table.loc["bf16", "measured"] and np.isnan(table.loc["bf16", "tpot_ms"])
    text = precision_section(hand_made, {"skipped_precisions": {"bf16": "not on this GPU"}})
    row = _row(text, "bf16")
    assert row[1] == "absent: not on this GPU"
    assert not any(c[:1].isdigit() for c in row[2:])
    assert "absent: not measured in this run" in _row(precision_section(hand_made), "bf16")[1]


def test_simulated_speedups_are_labelled_and_measured_break_even_brackets_them(hand_made):
    """Every speedup column is headed simulated α; the measured bracket is where the row's own
    speedups cross 1 (metrics.measured_break_even)."""
    text = precision_section(hand_made)
    head = next(l for l in text.splitlines() if l.startswith("| Precision |"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    assert [c for c in cols if c.startswith("Speedup")] == [f"Speedup, simulated α={a}" for a in ("0", "0.7", "0.9")]
    sp = M.precision_tables(hand_made)["speedups"]
    nf4 = sp[(sp["precision"] == "nf4")].set_index("alpha")["speedup"]
    lo, hi = M.measured_break_even({float(a): v for a, v in nf4.items()})
    row = M.precision_tables(hand_made)["table"].set_index("precision").loc["nf4"]
    got = [None if pd.isna(x) else x for x in (row["measured_break_even_lo"], row["measured_break_even_hi"])]
    assert got == [lo, hi]
    assert _row(text, "nf4")[-1] == _alpha_bracket(lo, hi)


def test_measured_break_even_bracket():
    """(largest alpha not paying, smallest larger alpha paying); None on the side the sweep leaves open."""
    assert M.measured_break_even({0.0: 0.97, 0.35: 0.99, 0.7: 1.05, 0.9: 1.2}) == (0.35, 0.7)
    assert M.measured_break_even({0.0: 1.01, 0.9: 1.3}) == (None, 0.0)
    assert M.measured_break_even({0.0: 0.9, 0.9: 0.95}) == (0.9, None)
    assert M.measured_break_even({}) == (None, None)


def test_no_section_without_a_curve(hand_made):
    """A run without verify_cost records has no Precision section (the table needs the curve)."""
    assert precision_section([r for r in hand_made if r["kind"] != "verify_cost"]) == ""


def test_precision_report_from_several_runs(tmp_path, hand_made):
    """`ppbench report A/records.jsonl B/records.jsonl --out X` writes X/report.md with the table of
    both runs; a records file mixing precisions is refused in one line."""
    for q in ("nf4", "int4"):
        (tmp_path / q).mkdir()
        (tmp_path / q / "records.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in hand_made if r["quant"] == q))
    assert main(["report", str(tmp_path / "nf4" / "records.jsonl"), str(tmp_path / "int4" / "records.jsonl"),
                 "--out", str(tmp_path / "both")]) == 0
    text = (tmp_path / "both" / "report.md").read_text()
    assert _row(text, "nf4")[8] == _row(precision_section(hand_made), "nf4")[8]
    assert "(nf4/report.md)" in text
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in hand_made))
    with pytest.raises(UsageError, match="one precision per records file"):
        precision_report_main([tmp_path / "mixed" / "records.jsonl", tmp_path / "nf4" / "records.jsonl"], None)


class _SleepyRunner:
    """verify() sleeps (off the CPU, as a descheduled thread is) and notes torch's thread count."""
    device = torch.device("cpu")

    def __init__(self):
        self.model = torch.nn.Module()
        self.model.emb = torch.nn.Embedding(50, 4)
        self.model.get_input_embeddings = lambda: self.model.emb
        self.threads = []

    def prefill(self, embeds):
        return object(), None

    def crop(self, cache, length):
        pass

    def verify(self, block, cache):
        self.threads.append(torch.get_num_threads())
        time.sleep(0.02)


def test_cpu_curve_is_the_steps_own_cpu_time_on_one_thread():
    """On CPU the curve runs on one intra-op thread (no thread-team barrier to wait at; restored
    after) and counts the thread's CPU time: 20 ms asleep per step, standing in for the time a
    descheduled step waits for a core, measure as ~0, not 20 ms."""
    runner, before = _SleepyRunner(), torch.get_num_threads()
    curve = measure_curve(runner, (1, 2), prompt=4, reps=3, warmup=1)
    assert set(runner.threads) == {1} and torch.get_num_threads() == before
    assert max(max(v) for v in curve.values()) < 5.0
    assert CPU_CLOCK.startswith("thread CPU time")


def _resolve(**kw):
    return runconfig.resolve(options.defaults(device="cpu", **kw))


def test_quant_list_resolves_with_nf4_skipped_on_cpu():
    """--quant nf4,bf16,int4 on CPU: bf16 is quant none, nf4 is skipped with a reason naming CUDA,
    the verify-cost curve is on; a wrong name is one line; a pytest session takes one precision."""
    cfg = _resolve(quant="nf4,bf16,int4")
    assert cfg.quants == ("none", "int4") and cfg.quant == "none" and cfg.multi_precision and cfg.verify_cost
    assert dict(cfg.skipped_quants)["nf4"].startswith("nf4 needs bitsandbytes' CUDA")
    assert _resolve(quant="nf4,bf16").multi_precision      # one left on CPU: still a precision run
    assert not _resolve(quant="int4").verify_cost and _resolve(quant="int4", verify_cost="on").verify_cost
    with pytest.raises(UsageError, match="unknown precision 'fp8'"):
        _resolve(quant="nf4,fp8")
    with pytest.raises(UsageError, match="one precision"):
        runconfig.resolve(options.defaults(device="cpu", quant="int4,none"), side="pytest")


@pytest.fixture(scope="module")
def precision_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("precisions")
    code = main(["run", "--quant", "nf4,bf16,int4", "--durations", "500ms", "--samples-per-duration", "1",
                 "--max-new-tokens", "8", "--alphas", "0,0.9", "--assisted", "off", "--no-progress",
                 "--out", str(out)])
    return out, code


def test_multi_precision_cpu_run_end_to_end(precision_run):
    """One run per measurable precision into <out>/<precision>/ (its records carry the precision and
    one verify_cost record over M = 1..its largest hidden block), nf4 absent with its reason, and
    <out>/report.md's table equals the one rebuilt from the runs' records."""
    out, code = precision_run
    assert code == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["precisions"] == {"fp32": "fp32", "int4": "int4"} and "nf4" in meta["skipped_precisions"]
    text = (out / "report.md").read_text()
    assert _row(text, "nf4")[1].startswith("absent: nf4 needs bitsandbytes' CUDA")
    for label, quant in (("fp32", "none"), ("int4", "int4")):
        records = load_records(out / label / "records.jsonl")
        assert {r["quant"] for r in records} == {quant}
        vc = [r for r in records if r["kind"] == "verify_cost"]
        blocks = [r["hidden_block"] for r in records if r["kind"] == "engine" and r["mode"] == "parallel"
                  and r.get("hidden_block")]
        assert len(vc) == 1 and not vc[0]["error"] and vc[0]["clock"] == CPU_CLOCK
        assert vc[0]["sizes"] == list(range(1, min(max(max(blocks, default=9), 2), 64) + 1))
        assert _row(text, label) == _row(precision_section(records), label)
        assert "## Precision" in (out / label / "report.md").read_text()


def test_sharded_run_refuses_several_precisions():
    """Under torchrun a multi-precision run is refused before the process group starts, with the
    way to do it (one sharded run per precision, then the combined report)."""
    from harness import shard

    with pytest.raises(UsageError, match="one sharded run per precision"):
        shard.main(options.defaults(device="cpu", quant="nf4,int4"), ["run"])


def test_precision_report_of_a_run_cut_short(tmp_path, hand_made):
    """`ppbench report --precision` on one precision's records without a curve (a run cut short
    before it): the table is still there, that precision measured, its curve cells n/a."""
    (tmp_path / "nf4").mkdir()
    (tmp_path / "nf4" / "records.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in hand_made if r["quant"] == "nf4" and r["kind"] != "verify_cost"))
    assert main(["report", "--precision", str(tmp_path / "nf4" / "records.jsonl"), "--out", str(tmp_path)]) == 0
    row = _row((tmp_path / "report.md").read_text(), "nf4")
    assert not row[1].startswith("absent") and row[5] == "n/a / n/a" and row[8] == "n/a"


def test_rerun_into_a_measured_precision_run_is_refused_before_anything_runs(precision_run, capsys):
    """The same --out again without --resume: exit 2, one line naming the first precision's records,
    and no precision re-measured (records unchanged)."""
    out, _ = precision_run
    before = (out / "int4" / "records.jsonl").read_text()
    assert main(["run", "--quant", "bf16,int4", "--durations", "500ms", "--out", str(out), "--no-progress"]) == 2
    assert "fp32/records.jsonl already holds records; pass --resume" in capsys.readouterr().err
    assert (out / "int4" / "records.jsonl").read_text() == before
