"""Metric definitions against simple reference implementations and hand-built records."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from harness import metrics as M
from harness.errors import DataError
from fixtures.record_factory import dataset_records, engine_record, hidden_run, sat_out_run, stage_record

SETTINGS = settings(max_examples=60, deadline=None)
times = st.floats(0.0, 1e4, allow_nan=False, allow_infinity=False)
stage_dicts = st.fixed_dictionaries({s: times for s in M.STAGES})


def hidden_ref(token_ms, window):
    if window <= 0:
        return 0
    n, acc = 0, 0.0
    for t in token_ms:
        acc += t
        if acc > window:
            break
        n += 1
    return n


@SETTINGS
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=200))
def test_summary_matches_numpy(values):
    s = M.summarize(values)
    v = np.asarray(values)
    assert s["count"] == len(values)
    assert s["mean"] == pytest.approx(v.mean(), rel=1e-9, abs=1e-6)
    for p in M.PERCENTILES:
        assert s[f"p{p}"] == pytest.approx(np.percentile(v, p), rel=1e-9, abs=1e-6)


def test_summary_ignores_nan_and_handles_empty():
    assert M.summarize([1.0, math.nan, 3.0])["count"] == 2
    empty = M.summarize([])
    assert empty["count"] == 0 and math.isnan(empty["p50"])


@SETTINGS
@given(stage_dicts, stage_dicts, times)
def test_pair_window_is_difference_of_stage_1_to_4_sums(d, t, extra_decode):
    """The report's per-sample window (pairs table) = target stages 1-4 - drafter stages 1-4,
    signed; decode time never enters it, and it is clipped at 0 only in window_clipped_ms."""
    def window(dd, tt):
        recs = [stage_record("1s", "a", "drafter", stages_ms=dd, decode_token_ms=[0.1]),
                stage_record("1s", "a", "target", stages_ms=tt, decode_token_ms=[0.1])]
        return M.compute_all(recs)["pairs"].iloc[0]
    expect = sum(t[s] for s in M.STAGES[:4]) - sum(d[s] for s in M.STAGES[:4])
    row = window(d, t)
    assert row["window_ms"] == pytest.approx(expect, abs=1e-6)
    assert row["window_clipped_ms"] == pytest.approx(max(expect, 0.0), abs=1e-6)
    assert window({**d, "decode": d["decode"] + extra_decode}, t)["window_ms"] == row["window_ms"]


@SETTINGS
@given(st.lists(times, max_size=64), st.floats(-1e3, 2e5, allow_nan=False))
def test_hidden_capacity_matches_loop_reference(token_ms, window):
    assert M.hidden_capacity(token_ms, window) == hidden_ref(token_ms, window)


@SETTINGS
@given(st.lists(st.floats(0.01, 100), min_size=1, max_size=30), st.data())
def test_hidden_capacity_window_on_exact_cumulative_sum(token_ms, data):
    n = data.draw(st.integers(1, len(token_ms)))
    window = float(np.cumsum(token_ms)[n - 1])
    assert M.hidden_capacity(token_ms, window) >= n


def test_hidden_capacity_edge_cases():
    assert M.hidden_capacity([5.0, 5.0], 0.0) == 0
    assert M.hidden_capacity([5.0, 5.0], -3.0) == 0
    assert M.hidden_capacity([], 100.0) == 0
    assert M.hidden_capacity([5.0, 5.0, 5.0], 10.0) == 2
    assert M.hidden_capacity([5.0, 5.0, 5.0], 9.999) == 1
    assert M.hidden_capacity([5.0, 5.0], 1e9) == 2


def test_drafter_slower_than_target_hides_nothing():
    fast = {s: 1.0 for s in M.STAGES}
    slow = {s: 10.0 for s in M.STAGES}
    recs = [stage_record("1s", "a", "drafter", stages_ms=slow, decode_token_ms=[0.1, 1.0]),
            stage_record("1s", "a", "target", stages_ms=fast, decode_token_ms=[0.1, 1.0])]
    pairs = M.compute_all(recs)["pairs"]
    row = pairs.iloc[0]
    assert row["window_ms"] == pytest.approx(4.0 - 40.0)
    assert row["window_clipped_ms"] == 0.0
    assert row["hidden_capacity"] == 0


def test_pair_window_and_hidden_from_records():
    d = {"load": 1.0, "preprocess": 2.0, "vision": 3.0, "prefill": 4.0, "decode": 30.0}
    t = {"load": 10.0, "preprocess": 10.0, "vision": 10.0, "prefill": 10.0, "decode": 5.0}
    recs = [stage_record("2s", "x", "drafter", stages_ms=d, decode_token_ms=[0.5, 10, 10, 10]),
            stage_record("2s", "x", "target", stages_ms=t, decode_token_ms=[0.5, 4.5])]
    row = M.compute_all(recs)["pairs"].iloc[0]
    assert row["window_ms"] == pytest.approx(30.0)
    assert row["hidden_capacity"] == 3                       # 0.5 + 10 + 10 = 20.5 <= 30 < 30.5
    assert row["model_parallel_ms"] == pytest.approx(max(10, 40) + max(30 - 30, 5))
    assert row["model_sequential_ms"] == pytest.approx(40 + 45)


def test_ttft_and_tpot_definitions():
    stages = {"load": 1.0, "preprocess": 2.0, "vision": 3.0, "prefill": 4.0, "decode": 21.0}
    assert M.ttft_ms(stages, [0.5, 10.0, 12.0]) == pytest.approx(10.5)
    assert M.tpot_ms([0.5, 10.0, 12.0]) == pytest.approx(11.0)
    assert math.isnan(M.tpot_ms([0.5]))
    assert math.isnan(M.ttft_ms(stages, []))


def test_failed_records_are_counted_and_excluded():
    recs = dataset_records(datasets=("1s",), n_samples=3,
                           failures={("1s", 0): ("target", "prefill")})
    t = M.compute_all(recs)
    ds = t["datasets"].iloc[0]
    assert (ds["samples"], ds["failed"], ds["paired"]) == (3, 1, 2)
    ss = t["stage_summary"].set_index(["model", "stage"])
    assert ss.loc[("target", "total"), "count"] == 2
    assert ss.loc[("drafter", "total"), "count"] == 3
    f = t["failures"].iloc[0]
    assert (f["who"], f["stage"], f["count"]) == ("target", "prefill", 1)
    ok_target = [r for r in recs if r["model"] == "target" and r["error"] is None]
    expect = np.mean([sum(r["stages_ms"].values()) for r in ok_target])
    assert ss.loc[("target", "total"), "mean"] == pytest.approx(expect)


def test_speedups_are_ratios_of_means():
    recs = dataset_records(datasets=("500ms", "4s"), n_samples=5, seed=3)
    t = M.compute_all(recs)
    for _, row in t["datasets"].iterrows():
        mine = [r for r in recs if r["dataset"] == row["dataset"]]
        tot = {m: np.mean([sum(r["stages_ms"].values()) for r in mine if r["model"] == m])
               for m in M.MODELS}
        pre = {m: np.mean([sum(r["stages_ms"][s] for s in M.STAGES[:4])
                           for r in mine if r["model"] == m]) for m in M.MODELS}
        llm = {m: np.mean([r["stages_ms"]["prefill"] for r in mine if r["model"] == m])
               for m in M.MODELS}
        assert row["speedup"] == pytest.approx(tot["target"] / tot["drafter"])
        assert row["prefill_speedup"] == pytest.approx(pre["target"] / pre["drafter"])
        assert row["llm_prefill_speedup"] == pytest.approx(llm["target"] / llm["drafter"])


def test_stage_summary_percentiles_per_group():
    recs = dataset_records(datasets=("1s", "2s"), n_samples=7, seed=5)
    ss = M.compute_all(recs)["stage_summary"]
    for (ds, model, stage), g in ss.set_index(["dataset", "model", "stage"]).iterrows():
        if stage not in M.STAGES:
            continue
        v = [r["stages_ms"][stage] for r in recs if r["dataset"] == ds and r["model"] == model]
        assert g["p90"] == pytest.approx(np.percentile(v, 90))
        assert g["p99"] == pytest.approx(np.percentile(v, 99))
        assert g["count"] == 7


def test_engine_acceptance_definitions():
    recs = [engine_record("1s", "a", "target_only", e2e_ms=300.0),
            engine_record("1s", "b", "target_only", e2e_ms=500.0),
            engine_record("1s", "a", "parallel", gamma=3, e2e_ms=200.0, verify_steps=4,
                          accept_per_position=[[3, 4], [2, 4], [0, 4]]),
            engine_record("1s", "b", "parallel", gamma=3, e2e_ms=300.0, verify_steps=2,
                          accept_per_position=[[2, 2], [1, 2], [1, 2]]),
            engine_record("1s", "a", "parallel", gamma=3, alpha=0.5, e2e_ms=250.0,
                          verify_steps=1, accept_per_position=[[1, 1], [0, 1], [0, 1]])]
    t = M.compute_all(recs)
    e = t["engine"]
    real = e[(e["dataset"] == "1s") & (e["mode"] == "parallel") & (e["alpha"] == "real")].iloc[0]
    assert real["acceptance_rate"] == pytest.approx((5 + 4) / (12 + 6))
    assert real["mean_acceptance_length"] == pytest.approx(1 + 9 / 6)
    assert real["speedup_vs_target_only"] == pytest.approx(400.0 / 250.0)
    assert real["measured_over_ideal"] == pytest.approx(
        np.mean([200 * 0.8, 300 * 0.8]) / 250.0)          # factory: ideal = 0.8 * e2e
    sim = e[(e["dataset"] == "1s") & (e["alpha"] == "0.5")].iloc[0]
    assert sim["acceptance_rate"] == pytest.approx(1 / 3)
    pos = t["engine_positions"]
    rp = pos[pos["alpha"] == "real"].sort_values("position")["rate"].tolist()
    assert rp == pytest.approx([5 / 6, 3 / 6, 1 / 6])
    head = M.headline_acceptance(e, "1s")
    assert head["acceptance_rate"] == pytest.approx(9 / 18)
    assert M.headline_acceptance(e, "20s") is None


def test_failed_engine_record_excluded():
    recs = [engine_record("1s", "a", "target_only", e2e_ms=300.0),
            engine_record("1s", "a", "parallel", e2e_ms=100.0,
                          error={"stage": "verify", "type": "RuntimeError", "message": "x"}),
            engine_record("1s", "b", "parallel", e2e_ms=200.0)]
    t = M.compute_all(recs)
    par = t["engine"][(t["engine"]["dataset"] == "1s") & (t["engine"]["mode"] == "parallel")]
    assert par.iloc[0]["e2e_ms"] == 200.0 and par.iloc[0]["count"] == 1
    assert t["failures"].iloc[0]["kind"] == "engine"


def test_dedupe_keeps_last_and_rejects_bad_records():
    a = stage_record("1s", "a", "drafter")
    b = stage_record("1s", "a", "drafter", rng=np.random.default_rng(9))
    assert M.dedupe([a, b]) == [b]
    with pytest.raises(DataError, match="sample a"):
        M.dedupe([{**a, "stages_ms": {"load": 1.0}}])
    with pytest.raises(DataError, match="negative"):
        M.dedupe([{**a, "decode_token_ms": [1.0, -2.0]}])
    with pytest.raises(DataError):
        M.dedupe([{"kind": "bogus", "sample_id": "q"}])


def test_dataset_order_follows_duration():
    assert M.sort_datasets(["20s", "500ms", "1s", "10s", "2s", "weird"]) == \
        ["500ms", "1s", "2s", "10s", "20s", "weird"]


def test_no_records_gives_empty_tables():
    t = M.compute_all([])
    assert t["datasets"].empty and t["engine"].empty and t["pairs"].empty


def test_speedup_baseline_uses_only_samples_the_configuration_completed():
    recs = [engine_record("4s", "a", "target_only", e2e_ms=100.0),
            engine_record("4s", "b", "target_only", e2e_ms=300.0),
            engine_record("4s", "a", "parallel", gamma=2, e2e_ms=50.0),
            engine_record("4s", "b", "parallel", gamma=2, e2e_ms=None,
                          error={"stage": "decode", "type": "OutOfMemoryError", "message": "oom"})]
    summary = M.engine_summary(M.engine_frame(recs))
    row = summary[(summary["dataset"] == "4s") & (summary["mode"] == "parallel")].iloc[0]
    assert row["target_only_e2e_ms"] == 100.0      # sample b failed in parallel: not in the baseline
    assert row["speedup_vs_target_only"] == pytest.approx(2.0)


def test_engine_hidden_capacity_comes_from_the_same_run():
    """Capacity of one engine run = tokens that fit in its own window at its own per-token times
    (token 1 at its time after the drafter's prefill end, then its hidden steps), continued at the
    mean step past a block that ended inside the window; None with no step to continue from."""
    # ready at 20, token 1 at 21 (1 ms), steps of 10 ms: 21, 31, 41 -> the block ends at 21 ms of
    # the 45 ms window; continued at 10 ms: cumulative 1, 11, 21, 31, 41 -> 5 fit, 51 does not
    r = hidden_run("4s", "a", window_ms=45.0, drafter_ready_ms=20.0, draft_token_ms=[21, 31, 41],
                   hidden_drafted=3)
    assert M.engine_hidden_capacity(r) == 5
    # a block that runs past the window: its own measured times decide (1, 11, 21 <= 15? no: 2)
    r = hidden_run("4s", "a", window_ms=15.0, drafter_ready_ms=20.0, draft_token_ms=[21, 31, 41],
                   hidden_drafted=2)
    assert M.engine_hidden_capacity(r) == 2
    one = hidden_run("4s", "a", window_ms=45.0, drafter_ready_ms=20.0, draft_token_ms=[21],
                     hidden_drafted=1)
    assert M.engine_hidden_capacity(one) is None
    old = hidden_run("4s", "a", window_ms=45.0, drafter_ready_ms=20.0, draft_token_ms=[21, 31],
                     hidden_drafted=2, hidden_block=None)
    assert M.engine_hidden_capacity(old) is None


def _fill_records(*, old_format=False):
    """Sample a: 3 of a capacity of 5; b: 4 of 4 (block past the window); c: a failed parallel run;
    d: a block of one token (no capacity): pooled fill = (3 + 4) / (5 + 4)."""
    return [hidden_run("4s", "a", window_ms=45.0, drafter_ready_ms=20.0, draft_token_ms=[21, 31, 41],
                       hidden_drafted=3, hidden_block=None if old_format else -1),
            hidden_run("4s", "b", window_ms=35.0, drafter_ready_ms=20.0,
                       draft_token_ms=[21, 31, 41, 51, 61], hidden_drafted=4),
            dict(hidden_run("4s", "c", window_ms=35.0, drafter_ready_ms=20.0,
                            draft_token_ms=[21, 31], hidden_drafted=2), e2e_ms=None,
                 error={"stage": "decode", "type": "OutOfMemoryError", "message": "oom"}),
            hidden_run("4s", "d", window_ms=45.0, drafter_ready_ms=20.0, draft_token_ms=[21],
                       hidden_drafted=1),
            *[engine_record("4s", s, "target_only", e2e_ms=100.0) for s in "abcd"]]


def test_hidden_fill_is_pooled_over_same_run_capacities_and_skips_failed_samples():
    """Report and benchmarks: fill = sum(hidden drafted) / sum(capacity of the same engine runs),
    pooled (not a median of per-sample fills), over the samples with a capacity; a failed sample
    and a sample without a capacity are left out; none left: not computed rather than 0%."""
    recs = _fill_records()
    row = lambda s: s[(s["dataset"] == "4s") & (s["mode"] == "parallel")].iloc[0]
    assert row(M.engine_summary(M.engine_frame(recs)))["hidden_fill"] == pytest.approx(7 / 9)
    lists, summary = M.summarize_engine(recs, [])
    assert summary["hidden_fill"] == pytest.approx(7 / 9)
    assert sorted(lists["hidden_fill"]) == pytest.approx([3 / 5, 1.0])   # per sample, for the gate
    assert math.isnan(M.hidden_fill([1], [None], [True]))


def test_records_before_hidden_block_make_the_fill_not_comparable():
    """Records older than the hidden_block field counted the in-flight token as hidden: a group
    holding one gets no fill (NaN in the report, None in the benchmark summary)."""
    recs = _fill_records(old_format=True)
    row = lambda s: s[(s["dataset"] == "4s") & (s["mode"] == "parallel")].iloc[0]
    assert math.isnan(row(M.engine_summary(M.engine_frame(recs)))["hidden_fill"])
    assert M.summarize_engine(recs, [])[1]["hidden_fill"] is None


def test_a_sample_the_drafter_sat_out_is_summarized_and_counted_not_dropped():
    """A parallel run whose drafter sat out (no window, no block) still counts: its speedup and its
    zero hidden tokens enter the per-sample lists, it has no window to pool, the report's table
    counts it under "Sat out", and nothing downstream assumes a window or a drafter prefill."""
    from harness.report import sat_out_text

    recs = [hidden_run("4s", "a", window_ms=45.0, drafter_ready_ms=20.0, draft_token_ms=[21, 31, 41],
                       hidden_drafted=3, e2e_ms=90.0),
            sat_out_run("4s", "b", e2e_ms=101.0),
            *[engine_record("4s", s, "target_only", e2e_ms=100.0) for s in "ab"]]
    lists, medians = M.summarize_engine(recs, [])
    assert medians["samples"] == ["a", "b"] and lists["window_ms"] == [45.0]
    assert lists["hidden_drafted"] == [3, 0] and lists["overall_speedup"] == pytest.approx([100 / 90, 100 / 101])
    row = M.engine_summary(M.engine_frame(recs))
    row = row[(row["dataset"] == "4s") & (row["mode"] == "parallel")].iloc[0]
    assert row["sat_out"] == 1 and sat_out_text(row) == "1 of 2" and row["window_ms"] == pytest.approx(45.0)


def test_speedup_is_paired_by_sample_when_target_only_failed():
    """Speedup vs target-only pairs by sample: a sample whose target-only run failed leaves the
    configuration's side too (ratio of means over the samples both completed), in the report and
    in the benchmarks' per-sample list."""
    recs = [engine_record("4s", "a", "target_only", e2e_ms=100.0),
            engine_record("4s", "b", "target_only", e2e_ms=None,
                          error={"stage": "decode", "type": "OutOfMemoryError", "message": "oom"}),
            engine_record("4s", "a", "parallel", gamma=2, e2e_ms=50.0),
            engine_record("4s", "b", "parallel", gamma=2, e2e_ms=400.0)]
    summary = M.engine_summary(M.engine_frame(recs))
    row = summary[(summary["dataset"] == "4s") & (summary["mode"] == "parallel")].iloc[0]
    assert row["speedup_vs_target_only"] == pytest.approx(2.0)   # not 100 / mean(50, 400)
    assert row["e2e_ms"] == pytest.approx(225.0) and row["paired"] == 1
    lists, medians = M.summarize_engine(recs, [])
    assert lists["overall_speedup"] == [pytest.approx(2.0)] and medians["samples"] == ["a"]
    assert M.speedup([100.0, 300.0], [50.0, 100.0]) == pytest.approx(400 / 150)


def test_speedup_after_host_stages_takes_each_runs_own_host_end_out_of_both_sides():
    """Speedup after the host stages = paired mean (target-only e2e - its host-stage end) / mean
    (parallel e2e - its own host-stage end): host-stage noise leaves both sides; defined for
    parallel runs only (a sequential target starts after the drafter's whole run), NaN when a
    record lacks its host-stage end."""
    def with_host_end(rec, end):
        rec["timeline"] = {**rec["timeline"], "target_stage_end_ms": {"load": 5.0, "preprocess": end}}
        return rec

    recs = [with_host_end(engine_record("4s", "a", "target_only", e2e_ms=300.0), 100.0),
            with_host_end(engine_record("4s", "b", "target_only", e2e_ms=500.0), 200.0),
            with_host_end(engine_record("4s", "a", "parallel", gamma=2, e2e_ms=360.0), 150.0),   # host +50
            with_host_end(engine_record("4s", "b", "parallel", gamma=2, e2e_ms=450.0), 170.0),
            with_host_end(engine_record("4s", "a", "sequential", gamma=0, e2e_ms=700.0), 500.0),
            with_host_end(engine_record("4s", "b", "sequential", gamma=0, e2e_ms=800.0), 600.0)]
    summary = M.engine_summary(M.engine_frame(recs))
    row = lambda mode: summary[(summary["dataset"] == "4s") & (summary["mode"] == mode)].iloc[0]
    assert row("parallel")["speedup_vs_target_only"] == pytest.approx(800 / 810)
    assert row("parallel")["speedup_after_host"] == pytest.approx((200 + 300) / (210 + 280))
    assert math.isnan(row("sequential")["speedup_after_host"])
    del recs[2]["timeline"]["target_stage_end_ms"]
    summary = M.engine_summary(M.engine_frame(recs))
    assert math.isnan(row("parallel")["speedup_after_host"])


def test_pooled_acceptance_counts_every_record_of_the_group():
    rate, mal = M.pooled_acceptance([{"drafted": 4, "accepted": 1, "verify_steps": 2},
                                     {"drafted": 6, "accepted": 6, "verify_steps": 2}])
    assert rate == pytest.approx(7 / 10) and mal == pytest.approx(1 + 7 / 4)
    assert all(math.isnan(x) for x in M.pooled_acceptance([]))


def test_datasets_row_times_only_paired_samples():
    """A datasets row's timings, TTFT and TPOT included, are means over the paired samples: a
    sample whose target failed contributes none of its drafter's times."""
    recs = dataset_records(("1s",), n_samples=3, failures={("1s", 2): ("target", "decode")})
    row = M.compute_all(recs)["datasets"].iloc[0]
    ok = [r for r in recs if r["model"] == "drafter" and r["sample_id"] != "1s-2"]
    assert row["paired"] == 2 and row["failed"] == 1
    assert row["drafter_ttft_ms"] == pytest.approx(
        np.mean([M.ttft_ms(r["stages_ms"], r["decode_token_ms"]) for r in ok]))
    assert row["drafter_tpot_ms"] == pytest.approx(np.mean([M.tpot_ms(r["decode_token_ms"]) for r in ok]))


def test_break_even_acceptance_from_a_verify_cost_curve():
    """The hidden block pays once the drafts accepted after the first exceed c(B)/c(1) - 1; with
    i.i.d. acceptance that is the alpha where sum_{i<B} alpha^i reaches it (issue 19's NF4 numbers:
    verify(9) = 3.18 decode steps -> alpha ~ 0.70)."""
    break_even_accepted, break_even_alpha = M.break_even_accepted, M.break_even_alpha
    expected_prefix, verify_cost = M.expected_prefix, M.verify_cost
    curve = {1: 3.65, 9: 11.59}
    assert break_even_accepted(curve, 9) == pytest.approx(11.59 / 3.65 - 1)
    a = break_even_alpha(curve, 9)
    assert expected_prefix(a, 8) == pytest.approx(11.59 / 3.65 - 1, rel=1e-9) and 0.69 < a < 0.71
    assert break_even_alpha({1: 4.0, 9: 4.0}, 9) == 0.0            # verify as cheap as a decode step
    assert math.isnan(break_even_alpha({1: 1.0, 4: 5.0}, 4))       # needs 4 > 3 accepted: never pays
    assert verify_cost({1: 1.0, 12: 2.0}, 10) == 2.0                # a step of 10 replays the 12-graph
    assert math.isnan(break_even_alpha({1: 1.0, 8: 2.0}, 9))        # the curve does not reach 9
    # more expensive verification never lowers the break-even
    alphas = [break_even_alpha({1: 1.0, 9: c}, 9) for c in (1.2, 1.5, 2.0, 3.0, 5.0, 8.0)]
    assert alphas == sorted(alphas)


def test_acceptance_structure_on_hand_made_blocks():
    """Run lengths, alpha_iid, the i.i.d. model's distribution and both implied speedups follow the
    module docstring's definitions on blocks built by hand."""
    recs = [engine_record("1s", "a", "target_only", e2e_ms=300.0),
            # hidden block 3/3, then gamma-2 blocks accepting 2, 0, 2
            engine_record("1s", "a", "parallel", gamma=2, accept_blocks=[[3, 3], [2, 2], [2, 0], [2, 2]]),
            # hidden block 0/1, then one block accepting 1 (a mismatch at position 2)
            engine_record("4s", "b", "parallel", gamma=2, accept_blocks=[[1, 0], [2, 1]])]
    stages = M.stage_frame([stage_record("1s", "a", "drafter", decode_token_ms=[0.1, 2.0, 2.0]),
                            stage_record("1s", "a", "target", decode_token_ms=[0.1, 8.0, 8.0])])
    c = M.draft_cost_ratio(stages)
    assert c == pytest.approx(0.25)
    s = M.acceptance_structure(M.engine_frame(recs), c)
    summ = s["summary"].set_index("block")
    v = summ.loc["verify"]
    # verify blocks: lengths 2, 0, 2, 1 of n = 2; accepted 5, misses 2
    assert v["blocks"] == 4 and v["alpha_iid"] == pytest.approx(5 / 7)
    assert v["acceptance_rate"] == pytest.approx(5 / 8)
    assert M.verify_acceptance_rate(recs[1]["accept_blocks"][1:]) == pytest.approx(4 / 6)
    assert math.isnan(M.verify_acceptance_rate([]))
    a = 5 / 7
    assert v["iid_mean_accepted_length"] == pytest.approx(a + a * a)
    assert v["implied_speedup"] == pytest.approx((4 + 5) / (4 * (0.25 * 2 + 1)))
    assert v["iid_implied_speedup"] == pytest.approx(4 * (1 + a + a * a) / (4 * 1.5))
    assert v["full_block_fraction"] == 0.5 and v["iid_full_block_fraction"] == pytest.approx(a * a)
    runs = s["runs"][s["runs"]["block"] == "verify"].set_index("accepted_length")
    assert runs["blocks"].tolist() == [1, 1, 2]
    assert runs["iid_fraction"].tolist() == pytest.approx([1 - a, a * (1 - a), a * a])
    assert runs["iid_fraction"].sum() == pytest.approx(1.0) and runs["fraction"].sum() == pytest.approx(1.0)
    h = summ.loc["hidden"]   # lengths 3 of 3 and 0 of 1: drafting is hidden, so c = 0
    assert h["alpha_iid"] == pytest.approx(3 / 4) and h["draft_cost_ratio"] == 0.0
    assert h["implied_speedup"] == pytest.approx((4 + 1) / 2)
    hr = s["runs"][s["runs"]["block"] == "hidden"].set_index("accepted_length")["iid_fraction"]
    # the n = 3 block: 1/4, 3/4 * 1/4, (3/4)^2 * 1/4, (3/4)^3; the n = 1 block: 1/4, 3/4
    assert hr.tolist() == pytest.approx([(0.25 + 0.25) / 2, (0.75 * 0.25 + 0.75) / 2,
                                         0.75 ** 2 * 0.25 / 2, 0.75 ** 3 / 2])
    pos = s["positions"][s["positions"]["block"] == "verify"].set_index("position")
    assert pos["rate"].tolist() == pytest.approx([3 / 4, 2 / 4])
    assert pos["conditional_rate"].tolist() == pytest.approx([3 / 4, 2 / 3])
    assert pos["iid_rate"].tolist() == pytest.approx([a, a * a])


def test_iid_blocks_match_the_iid_model():
    """Blocks drawn from an i.i.d. acceptance process recover its alpha and its run-length
    distribution (the comparison the report makes can tell i.i.d. from clustered acceptance)."""
    rng = np.random.default_rng(3)
    alpha, n = 0.6, 4
    def draw():
        k = 0
        while k < n and rng.random() < alpha:
            k += 1
        return k
    blocks = [[n, draw()] for _ in range(4000)]
    s = M.acceptance_structure(M.engine_frame([engine_record("1s", "a", "parallel", gamma=n,
                                                             accept_blocks=[[1, 1], *blocks])]))
    v = s["summary"].set_index("block").loc["verify"]
    assert v["alpha_iid"] == pytest.approx(alpha, abs=0.02)
    r = s["runs"][s["runs"]["block"] == "verify"]
    assert np.abs(r["fraction"] - r["iid_fraction"]).max() < 0.03
    # all-or-nothing blocks with the same alpha_iid are far from the i.i.d. distribution
    clustered = [[n, n if rng.random() < 0.5 else 0] for _ in range(4000)]
    s2 = M.acceptance_structure(M.engine_frame([engine_record("1s", "a", "parallel", gamma=n,
                                                              accept_blocks=[[1, 1], *clustered])]))
    r2 = s2["runs"][s2["runs"]["block"] == "verify"]
    assert np.abs(r2["fraction"] - r2["iid_fraction"]).max() > 0.2


def test_records_without_blocks_give_empty_structure():
    """Older engine records (no accept_blocks) are skipped, not an error."""
    rec = engine_record("1s", "a", "parallel", accept_per_position=[[1, 2]], verify_steps=2)
    assert rec["accept_blocks"] == []
    s = M.compute_all([rec])
    assert s["acceptance_summary"].empty and s["acceptance_runs"].empty
