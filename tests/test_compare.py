"""The regression gate (harness/compare.py): statistics on synthetic rounds, then end to end on real
pytest-benchmark saves produced by pytester."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from harness import compare as C

pytest_plugins = ["pytester"]

CPU = {"cpu": {"brand_raw": "AMD EPYC"}}
H100 = {"gpu": {"name": "NVIDIA H100 80GB HBM3", "driver": "550"}, **CPU}
H200 = {"gpu": {"name": "NVIDIA H200", "driver": "550"}, **CPU}


def rounds(seed, n=30, sigma=0.03, scale=1.0, spikes=0.0):
    """Lognormal timing rounds around `scale` ms; `spikes` = fraction of 3x outliers (GC, clocks)."""
    rng = np.random.default_rng(seed)
    x = rng.lognormal(np.log(scale * 1e-3), sigma, n)
    x[rng.random(n) < spikes] *= 3
    return x.tolist()


def bench(name, data=None, extra=None, *, summary=None):
    stats = dict(summary or {})
    if data is not None:
        a = np.asarray(data)
        stats.update(min=a.min(), max=a.max(), mean=a.mean(), stddev=a.std(ddof=1), rounds=a.size,
                     median=float(np.median(a)), data=list(map(float, a)))
    return {"name": name, "fullname": f"tests/test_gpu.py::{name}", "params": None,
            "extra_info": extra or {}, "stats": stats}


def save(benchmarks, machine=CPU, path="mem.json"):
    return C.Save(path, machine, {b["fullname"]: b for b in benchmarks})


def write_save(path, benchmarks, machine=CPU, stamp="2026-01-01T00:00:00"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine_info": machine, "commit_info": {}, "datetime": stamp,
                                "version": "5.2.3", "benchmarks": benchmarks}))
    return path


# ---------------------------------------------------------------- the statistics

def test_injected_slowdown_is_flagged_regressed():
    detected = 0
    for seed in range(50):
        base, new = rounds(seed), [t * 1.05 for t in rounds(10_000 + seed)]
        r = C.compare_samples("decode", base, new, threshold=0.02)
        detected += r.verdict == "regressed"
        assert r.verdict != "improved"
    assert detected >= 45, f"5% slowdown found in only {detected}/50 runs"


def test_slowdown_well_past_default_threshold_regresses_and_speedup_improves():
    base = rounds(1)
    slow = C.compare_samples("t", base, [t * 1.10 for t in rounds(2)])
    fast = C.compare_samples("t", base, [t * 0.90 for t in rounds(3)])
    assert slow.verdict == "regressed" and slow.p_value < 0.01 and slow.ci[0] > 1
    assert 1.05 < slow.ratio < 1.15
    assert fast.verdict == "improved" and fast.ci[1] < 1


def test_significant_but_small_change_is_unchanged():
    # 2% slower, with many tight rounds: statistically real, but under the 5% threshold
    r = C.compare_samples("t", rounds(1, n=200, sigma=0.01), [t * 1.02 for t in rounds(2, n=200, sigma=0.01)])
    assert r.p_value < 1e-6 and r.verdict == "unchanged"


@pytest.mark.parametrize("sigma,spikes", [(0.03, 0.0), (0.15, 0.1)])
def test_aa_false_alarm_rate_is_low(sigma, spikes):
    # threshold 0 leaves only the statistics (p < alpha and CI excluding 1) between noise and a
    # verdict; alpha = 0.01 should give about 1% and certainly not more than a few.
    alarms = sum(C.compare_samples("t", rounds(s, sigma=sigma, spikes=spikes),
                                   rounds(50_000 + s, sigma=sigma, spikes=spikes),
                                   threshold=0.0, seed=s).verdict != "unchanged"
                 for s in range(200))
    assert alarms <= 6, f"{alarms}/200 false alarms on A/A rounds"


def test_too_few_rounds_is_insufficient_data():
    r = C.compare_samples("t", [1.0, 1.0], [5.0, 5.0, 5.0])
    assert r.verdict == "insufficient data" and r.ratio is None and "3" in r.note


def test_bootstrap_ci_is_seeded_and_brackets_the_ratio():
    base, new = rounds(1), rounds(2, scale=1.2)
    a = C.bootstrap_median_ratio_ci(base, new, seed=7)
    assert a == C.bootstrap_median_ratio_ci(base, new, seed=7)
    assert a[0] < np.median(new) / np.median(base) < a[1]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), factor=st.floats(0.9, 1.12), scale=st.floats(1e-4, 1e3))
def test_swapping_runs_mirrors_the_verdict_and_scale_does_not_matter(seed, factor, scale):
    # factor spans the 5% threshold, so both sides of every verdict boundary get exercised
    base, new = rounds(seed), [t * factor for t in rounds(seed + 1)]
    fwd = C.compare_samples("t", base, new)
    back = C.compare_samples("t", new, base)
    mirror = {"regressed": "improved", "improved": "regressed", "unchanged": "unchanged"}
    assert back.verdict == mirror[fwd.verdict]
    assert back.ci == pytest.approx((1 / fwd.ci[1], 1 / fwd.ci[0]), rel=1e-12)
    # units must not matter: the rank test is exactly invariant, the ratio up to rounding
    scaled = C.compare_samples("t", [t * scale for t in base], [t * scale for t in new])
    assert scaled.p_value == pytest.approx(fwd.p_value, rel=1e-9)
    assert scaled.ratio == pytest.approx(fwd.ratio, rel=1e-9)


def test_threshold_globs_exact_then_most_specific():
    table = {"*decode*": 0.03, "*decode*gamma4*": 0.01, "a::b": 0.5}
    assert C.threshold_for("x::test_decode[gamma4]", table) == 0.01
    assert C.threshold_for("x::test_decode[gamma2]", table) == 0.03
    assert C.threshold_for("a::b", table) == 0.5
    assert C.threshold_for("x::test_prefill", table, 0.05) == 0.05


def test_per_benchmark_threshold_override_catches_5pct_decode_slowdown():
    base = save([bench("test_decode", rounds(1)), bench("test_prefill", rounds(3))])
    new = save([bench("test_decode", [t * 1.05 for t in rounds(2)]),
                bench("test_prefill", [t * 1.05 for t in rounds(4)])])
    rep = C.compare_saves(base, new, thresholds={"*decode*": 0.02}, threshold=0.2)
    verdicts = {r.name: r.verdict for r in rep.results}
    assert verdicts == {"tests/test_gpu.py::test_decode": "regressed",
                        "tests/test_gpu.py::test_prefill": "unchanged"}
    assert rep.regressed


# ---------------------------------------------------------------- extra_info metrics

def test_extra_info_metrics_follow_their_direction():
    base = save([bench("test_e2e", rounds(1), {"acceptance_rate": 0.80, "hidden_tokens": 10,
                                               "peak_mem_bytes": 1000, "n_output_tokens": 64,
                                               "speedup_e2e": 1.5, "label": "x", "ok": True})])
    new = save([bench("test_e2e", rounds(1), {"acceptance_rate": 0.70, "hidden_tokens": 13,
                                              "peak_mem_bytes": 1200, "n_output_tokens": 80,
                                              "speedup_e2e": 1.49, "label": "y", "ok": False})])
    rows = {r.name.split(" :: ")[-1]: r for r in C.compare_saves(base, new).results}
    assert rows["tests/test_gpu.py::test_e2e"].verdict == "unchanged"     # identical rounds
    assert rows["acceptance_rate"].verdict == "regressed"
    assert rows["hidden_tokens"].verdict == "improved"
    assert rows["peak_mem_bytes"].verdict == "regressed"
    assert rows["speedup_e2e"].verdict == "unchanged"                     # -0.7% < 5%
    assert rows["n_output_tokens"].verdict == "info"                      # no known direction
    assert "label" not in rows and "ok" not in rows


def test_per_sample_metric_lists_get_the_statistical_test():
    rng = np.random.default_rng(0)
    b = rng.normal(0.8, 0.05, 40).clip(0, 1).tolist()
    n = rng.normal(0.6, 0.05, 40).clip(0, 1).tolist()
    rep = C.compare_saves(save([bench("t", rounds(1), {"acceptance_rate": b})]),
                          save([bench("t", rounds(1), {"acceptance_rate": n})]))
    row = [r for r in rep.results if r.name.endswith("acceptance_rate")][0]
    assert row.method == "rounds" and row.p_value < 0.01 and row.verdict == "regressed"


def test_nested_extra_info_and_custom_directions():
    base = save([bench("t", rounds(1), {"memory": {"drafter_peak": 100}, "tokens_per_s": 50})])
    new = save([bench("t", rounds(1), {"memory": {"drafter_peak": 100}, "tokens_per_s": 40})])
    rows = {r.name.split(" :: ")[-1]: r.verdict
            for r in C.compare_saves(base, new, higher_is_better=["tokens_per_s"]).results}
    assert rows["memory.drafter_peak"] == "unchanged" and rows["tokens_per_s"] == "regressed"


# ---------------------------------------------------------------- summary-stats fallback

def test_summary_stats_fallback_is_used_and_flagged():
    def summary(a):
        a = np.asarray(a)
        return {"mean": a.mean(), "stddev": a.std(ddof=1), "median": float(np.median(a)), "rounds": a.size}

    base = save([bench("t", summary=summary(rounds(1)))])
    new = save([bench("t", summary=summary([t * 1.3 for t in rounds(2)]))])
    rep = C.compare_saves(base, new)
    (row,) = rep.results
    assert row.method == "summary" and row.verdict == "regressed" and row.ci[0] > 1
    assert rep.warnings and "--benchmark-save-data" in rep.warnings[0]
    assert "summary stats" in C.format_table(rep)
    same = C.compare_saves(base, save([bench("t", summary=summary(rounds(1)))])).results[0]
    assert same.verdict == "unchanged" and same.p_value == pytest.approx(1.0)


# ---------------------------------------------------------------- machines

def test_machine_identity_prefers_gpu_then_cpu_brand():
    assert C.machine_identity(H100) == ("gpu", "NVIDIA H100 80GB HBM3")
    assert C.machine_identity({"gpu_name": "A100", **CPU}) == ("gpu", "A100")
    assert C.machine_identity(CPU) == ("cpu", "AMD EPYC")


def test_different_gpus_are_refused_unless_allowed():
    b, n = save([bench("t", rounds(1))], H100, "base.json"), save([bench("t", rounds(2))], H200, "new.json")
    with pytest.raises(C.MachineMismatchError, match="H100.*H200.*allow-different-machines"):
        C.compare_saves(b, n)
    rep = C.compare_saves(b, n, allow_different_machines=True)
    assert "different machines" in rep.machine_note
    assert "[different machines]" in C.format_table(rep)


def test_different_cpus_are_refused():
    other = {"cpu": {"brand_raw": "Intel Xeon"}}
    with pytest.raises(C.MachineMismatchError, match="Intel Xeon"):
        C.check_machines(save([], CPU), save([], other))


# ---------------------------------------------------------------- CLI on files

def test_main_compare_exit_codes_and_json(tmp_path, capsys):
    base = write_save(tmp_path / "s" / "m" / "0001_a.json", [bench("test_decode", rounds(1))],
                      stamp="2026-01-01T00:00:00")
    same = write_save(tmp_path / "s" / "m" / "0002_b.json", [bench("test_decode", rounds(2))],
                      stamp="2026-01-02T00:00:00")
    slow = write_save(tmp_path / "slow.json", [bench("test_decode", [t * 1.3 for t in rounds(3)])])
    out = tmp_path / "cmp.json"

    assert C.main_compare([str(base), str(same)]) == 0
    text = capsys.readouterr().out
    for col in ("name", "base median", "new median", "ratio", "p-value", "CI", "verdict"):
        assert col in text
    assert "OK:" in text and "unchanged" in text

    assert C.main_compare([str(base), str(slow), "--json", str(out)]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["regressed"] is True and doc["results"][0]["verdict"] == "regressed"

    # a storage dir alone means its latest two saves; save ids resolve under --storage
    assert C.main_compare([str(tmp_path / "s")]) == 0
    assert "0001_a.json" in capsys.readouterr().out
    assert C.main_compare(["--storage", str(tmp_path / "s"), "0001", "0002"]) == 0


def test_main_compare_usage_errors_exit_2(tmp_path, capsys):
    one = write_save(tmp_path / "s" / "0001.json", [bench("t", rounds(1))])
    gpu = write_save(tmp_path / "gpu.json", [bench("t", rounds(1))], machine=H100)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    thr = tmp_path / "thr.json"
    thr.write_text(json.dumps({"*decode*": "fast"}))
    assert C.main_compare(["--no-such-flag"]) == 2
    assert C.main_compare([str(tmp_path / "missing.json"), str(one)]) == 2
    assert C.main_compare([str(bad), str(one)]) == 2
    assert "bad.json" in capsys.readouterr().err
    assert C.main_compare([str(tmp_path / "s")]) == 2                     # only one save there
    assert C.main_compare([str(one), str(gpu)]) == 2                      # machine mismatch
    assert "different machines" in capsys.readouterr().err
    assert C.main_compare([str(one), str(gpu), "--allow-different-machines"]) == 0
    assert C.main_compare([str(one), str(one), "--thresholds", str(thr)]) == 2
    assert C.main_compare([str(one), str(one), "--alpha", "2"]) == 2


def test_thresholds_file_structured_form(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps({"thresholds": {"*decode*": 0.03}, "higher_is_better": ["*tps*"]}))
    table, higher, lower = C.load_thresholds(f)
    assert table == {"*decode*": 0.03} and higher == ["*tps*"] and lower is None


# ---------------------------------------------------------------- end to end, real saves

BENCH_TEST = """
import os, time

def test_decode(benchmark):
    benchmark.extra_info["acceptance_rate"] = float(os.environ["PPB_ACC"])
    benchmark.extra_info["hidden_tokens"] = 7
    benchmark.pedantic(time.sleep, args=(float(os.environ["PPB_SLEEP"]),), rounds=12, iterations=1)
"""


def _run_bench(pytester, monkeypatch, storage, sleep, acc, *save_data):
    monkeypatch.setenv("PPB_SLEEP", str(sleep))
    monkeypatch.setenv("PPB_ACC", str(acc))
    result = pytester.runpytest("-p", "no:cacheprovider", "--benchmark-autosave",
                                f"--benchmark-storage={storage}", *save_data)
    result.assert_outcomes(passed=1)
    return C.find_saves(storage)[-1]


def test_end_to_end_on_real_pytest_benchmark_saves(pytester, monkeypatch, tmp_path, capsys):
    pytester.makepyfile(test_bench=BENCH_TEST)
    storage = tmp_path / "benchmarks"
    base = _run_bench(pytester, monkeypatch, storage, 0.002, 0.8, "--benchmark-save-data")
    # 10x the sleep: a sleep only ever runs long, so on a loaded host the base can stretch toward
    # the slow one's 20 ms floor but the ratio stays far above the 2x asserted below
    slow = _run_bench(pytester, monkeypatch, storage, 0.02, 0.6, "--benchmark-save-data")

    saved = json.loads(base.read_text())
    assert len(saved["benchmarks"][0]["stats"]["data"]) == 12        # raw rounds really saved

    # A/A on one real file: identical rounds are unchanged, exit 0
    assert C.main_compare([str(base), str(base)]) == 0
    # 10x the sleep and a lower acceptance: both flagged, exit 1; the dir form finds the same two
    assert C.main_compare([str(storage)]) == 1
    out = capsys.readouterr().out
    assert str(base) in out and str(slow) in out
    rows = {r.name: r for r in C.compare_saves(C.load_save(base), C.load_save(slow)).results}
    timing = rows["test_bench.py::test_decode"]
    assert timing.verdict == "regressed" and timing.method == "rounds" and timing.ratio > 2
    assert rows["test_bench.py::test_decode :: acceptance_rate"].verdict == "regressed"
    assert rows["test_bench.py::test_decode :: hidden_tokens"].verdict == "unchanged"

    # a save without --benchmark-save-data still compares, on summary stats, with a warning
    plain = _run_bench(pytester, monkeypatch, storage, 0.02, 0.8)
    assert "data" not in json.loads(plain.read_text())["benchmarks"][0]["stats"]
    assert C.main_compare([str(base), str(plain)]) == 1
    captured = capsys.readouterr()
    assert "summary stats" in captured.out and "--benchmark-save-data" in captured.err

    # the same real save with a different GPU recorded is refused
    doc = copy.deepcopy(saved)
    doc["machine_info"]["gpu"] = {"name": "NVIDIA H100 80GB HBM3"}
    other = tmp_path / "gpu.json"
    other.write_text(json.dumps(doc))
    assert C.main_compare([str(base), str(other)]) == 2


def test_shipped_gate_thresholds_are_derived_from_the_committed_save_they_name():
    """The shipped thresholds are exactly what derive_thresholds gives from the save their `why`
    names (a file committed under docs/results/), and every benchmark family of
    tests/test_benchmarks.py maps to a pattern of its own, not to the catch-all."""
    import re

    from harness.calibration import GATE_THRESHOLDS as DEFAULT_GATE_THRESHOLDS
    from harness.compare import derive_thresholds, load_save, load_thresholds, threshold_for

    doc = json.loads(Path(DEFAULT_GATE_THRESHOLDS).read_text())
    source = re.search(r"from (docs/results/\S+?\.json)", doc["why"]).group(1)
    root = Path(__file__).resolve().parent.parent
    derived = derive_thresholds([load_save(root / source)])
    assert derived["thresholds"] == doc["thresholds"]
    assert derived["spread_iqr_over_median"] == doc["spread_iqr_over_median"]
    table, _, _ = load_thresholds(DEFAULT_GATE_THRESHOLDS)
    t = "tests/test_benchmarks.py::"
    for name in ("test_decode_token[4s-target]", "test_stage[decode-20s-drafter]", "test_parallel_prefill[500ms]",
                 "test_stage[load-4s-target]", "test_stage[preprocess-5s-target]", "test_stage[vision-1s-drafter]",
                 "test_stage[prefill-16s-target]", "test_verify_cost[nf4-M9]"):
        family = name.split("[")[0] + "[" + (name.split("[")[1].split("-")[0] + "-" if name.startswith("test_stage") else "")
        assert "*::" + family.replace("[", "[[]") + "*" in table, name
        assert threshold_for(t + name, table) == table["*::" + family.replace("[", "[[]") + "*"]
    assert threshold_for("something_else", table) == 0.05


def test_derived_thresholds_follow_each_familys_spread_and_keep_aa_quiet():
    """Families: a tight one gets the floor, a noisy one a threshold ~3x its spread; then A/A
    pairs of 5-round runs stay quiet while a 2x slowdown of the noisy stage is still caught."""
    def family(seed, sigma, scale=1.0, n=5):
        return [bench(f"test_stage[prefill-{d}-target]", rounds(seed + i, n=n, sigma=sigma, scale=scale))
                for i, d in enumerate(("1s", "2s", "4s", "8s"))] + \
               [bench(f"test_decode_token[{d}-target]", rounds(seed + 50 + i, n=200, sigma=0.005))
                for i, d in enumerate(("1s", "2s"))]
    doc = C.derive_thresholds([save(family(0, 0.3))])
    th = doc["thresholds"]
    assert th["*::test_decode_token[[]*"] == 0.05
    assert 0.6 <= th["*::test_stage[[]prefill-*"] <= 1.6
    alarms = 0
    for seed in range(40):
        r = C.compare_saves(save(family(1000 + 10 * seed, 0.3)), save(family(5000 + 10 * seed, 0.3)),
                            thresholds=th)
        alarms += r.count("regressed")
    assert alarms <= 1
    slow = C.compare_saves(save(family(7, 0.3)), save(family(900, 0.3, scale=3.0)), thresholds=th)
    assert {x.name.split("::")[-1].split("[")[0] for x in slow.results if x.verdict == "regressed"} == {"test_stage"}


def test_thresholds_cli_writes_a_loadable_file(tmp_path, capsys):
    from harness.cli import main
    from harness.compare import load_thresholds

    path = write_save(tmp_path / "s.json", [bench("test_stage[load-4s-target]", rounds(1, n=6, sigma=0.2))])
    out = tmp_path / "t.json"
    assert main(["bounds", "thresholds", str(path), "--out", str(out)]) == 0
    table, _, _ = load_thresholds(out)
    assert set(table) == {"*", "*::test_stage[[]load-*"} and table["*::test_stage[[]load-*"] > 0.05
    capsys.readouterr()
    assert main(["bounds", "thresholds", str(write_save(tmp_path / "e.json", [bench("x", [1e-3, 2e-3])])),
                 "--out", str(out)]) == 2
    assert "no benchmark with >= 4 raw rounds" in capsys.readouterr().err


def test_threshold_patterns_with_a_character_class_are_refused(tmp_path):
    from harness.compare import CompareError, load_thresholds

    bad = tmp_path / "t.json"
    bad.write_text('{"*test_stage[load-*]": 0.5}')
    with pytest.raises(CompareError, match=r"character class.*\[\[\]"):
        load_thresholds(bad)
    bad.write_text('{"*test_stage[[]load-*": 0.5}')
    assert load_thresholds(bad)[0] == {"*test_stage[[]load-*": 0.5}


def test_saves_with_different_decode_impls_are_flagged(tmp_path):
    from harness.compare import Save, settings_note

    meta = {"profile": "7b-shaped", "quant": "nf4", "dtype": "bfloat16", "max_new_tokens": 50}
    old = Save("a", {}, {}, meta=dict(meta))                       # from before decode_impl existed
    new = Save("b", {}, {}, meta=dict(meta, decode_impl="cuda-graph"))
    assert "decode_impl 'hf' -> 'cuda-graph'" in settings_note(old, new)
    assert settings_note(new, Save("c", {}, {}, meta=dict(meta, decode_impl="cuda-graph"))) == ""
    assert settings_note(Save("d", {}, {}), new) == ""
