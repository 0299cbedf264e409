"""Bounds files (harness/bounds.py, harness/calibration/bounds/): schema, the violation message a user sees in
a failing test, device classes, and deriving a bounds file from a measured run."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from harness import bounds as B

pytest_plugins = ["pytester"]


def doc(**bounds):
    return {"schema": 1, "profile": "unit", "device_class": "cpu", "source": "test", "bounds": bounds}


@pytest.fixture
def rates(tmp_path):
    path = tmp_path / "unit-cpu.json"
    B.write_bounds(doc(
        acceptance_rate={"min": 0.6, "max": 1.0, "per_duration": {"500ms": {"min": 0.4}},
                         "why": "drafter quality"},
        hidden_drafted={"per_duration": {"4s": {"min": 5}}, "why": "overlap"}), path)
    return B.load_bounds("unit", "cpu", root=tmp_path)


# ---------------------------------------------------------------- shipped files

@pytest.mark.parametrize("path", sorted(B.BOUNDS_DIR.glob("*.json")), ids=lambda p: p.name)
def test_shipped_bounds_files_validate_and_match_their_name(path):
    b = B.load_bounds_file(path)
    assert path.name == f"{b['profile']}-{b['device_class']}.json"
    assert b["bounds"], "empty bounds file"


def test_tiny_cpu_exactness_bounds():
    b = B.load_bounds("tiny", "cpu")
    B.check_bound(b, "token_match_rate", 1.0, ["s0"])
    B.check_bound(b, "acceptance_rate_identical_drafter", 1.0, ["s0"])
    with pytest.raises(B.BoundViolation):
        B.check_bound(b, "token_match_rate", 0.999, ["s0"])
    with pytest.raises(B.BoundViolation):
        B.check_bound(b, "acceptance_rate_identical_drafter", 15 / 16, ["s0"])
    with pytest.raises(B.BoundViolation):
        B.check_bound(b, "acceptance_rate", 1.0625, ["s0"])      # bonus token counted as accepted


# ---------------------------------------------------------------- checking

def test_within_bounds_returns_the_limits_applied(rates):
    assert B.check_bound(rates, "acceptance_rate", 0.7, ["a"]) == {"min": 0.6, "max": 1.0}
    assert B.check_bound(rates, "acceptance_rate", 0.5, ["a"], duration="500ms") == {"min": 0.4, "max": 1.0}
    assert B.check_bound(rates, "acceptance_rate", 0.6, ["a"], duration="4s") == {"min": 0.6, "max": 1.0}


def test_violation_message_names_everything(rates):
    ids = [f"interlaken_00_a-4s-{i:03d}" for i in range(11)]
    with pytest.raises(B.BoundViolation) as e:
        B.check_bound(rates, "acceptance_rate", 0.55, ids, duration="4s")
    msg = str(e.value)
    for part in ("'acceptance_rate'", "min 0.6", "measured 0.55", "duration 4s", "11 sample(s)",
                 ids[0], ids[7], "+3 more", rates["path"], "drafter quality"):
        assert part in msg, (part, msg)
    assert ids[8] not in msg
    assert isinstance(e.value, AssertionError)
    got = (e.value.name, e.value.limit, e.value.value, e.value.measured)
    assert got == ("acceptance_rate", "min", 0.6, 0.55)


def test_max_violation_and_nan_violates(rates):
    with pytest.raises(B.BoundViolation, match=r"measured 1\.2 > max 1"):
        B.check_bound(rates, "acceptance_rate", 1.2, ["a"])
    with pytest.raises(B.BoundViolation, match="measured nan"):
        B.check_bound(rates, "acceptance_rate", math.nan, ["a"])


def test_duration_only_bound_needs_a_duration(rates):
    with pytest.raises(B.BoundViolation, match="min 5"):
        B.check_bound(rates, "hidden_drafted", 4, ["a"], duration="4s")
    with pytest.raises(B.BoundsError, match="no min/max"):
        B.check_bound(rates, "hidden_drafted", 4, ["a"])


def test_unknown_bound_names_the_file(rates):
    with pytest.raises(B.BoundsError, match="overall_speedup.*unit-cpu.json"):
        B.check_bound(rates, "overall_speedup", 2.0, [])


@pytest.mark.parametrize("bad,why", [
    ({"x": {"min": 1, "why": ""}}, "no 'why'"),
    ({"x": {"why": "w"}}, "neither min nor max"),
    ({"x": {"min": 2, "max": 1, "why": "w"}}, "min 2 > max 1"),
    ({"x": {"min": "1", "why": "w"}}, "must be a number"),
    ({"x": {"min": 1, "why": "w", "per_duration": {"4 seconds": {"min": 2}}}}, "not a duration"),
    ({"x": {"max": 1, "why": "w", "per_duration": {"4s": {"min": 2}}}}, "min 2 > max 1"),
])
def test_malformed_bounds_are_rejected_with_the_file(tmp_path, bad, why):
    path = tmp_path / "bad-cpu.json"
    path.write_text(json.dumps(doc(**bad)))
    with pytest.raises(B.BoundsError, match=why) as e:
        B.load_bounds_file(path)
    assert str(path) in str(e.value)


def test_missing_file_and_wrong_schema(tmp_path):
    with pytest.raises(B.BoundsError, match="nope-h100.json not found"):
        B.load_bounds("nope", "h100", root=tmp_path)
    (tmp_path / "v2-cpu.json").write_text(json.dumps({**doc(), "schema": 2}))
    with pytest.raises(B.BoundsError, match="schema must be 1"):
        B.load_bounds("v2", "cpu", root=tmp_path)


# ---------------------------------------------------------------- as a user sees it in pytest

def test_violated_bound_fails_a_pytest_run_with_a_useful_message(pytester, tmp_path):
    path = tmp_path / "tiny-cpu.json"
    B.write_bounds(doc(overall_speedup={"min": 1.5, "why": "parallel prefill must pay off"}), path)
    pytester.makepyfile(test_user=f"""
        from harness.bounds import check_bound, load_bounds_file

        def test_speedup():
            bounds = load_bounds_file({str(path)!r})
            check_bound(bounds, "overall_speedup", 1.1234, ["zurich_city_00_a-8s-001",
                        "zurich_city_00_a-8s-002"], duration="8s")
    """)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    for part in ("BoundViolation", "'overall_speedup'", "min 1.5", "measured 1.1234", "duration 8s",
                 "zurich_city_00_a-8s-001", "zurich_city_00_a-8s-002", str(path)):
        assert part in out, part


# ---------------------------------------------------------------- device class

@pytest.mark.parametrize("name,cls", [
    (None, "cpu"), ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
    ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA GeForce RTX 4090", "other-nvidia-geforce-rtx-4090"),
])
def test_device_class_from_name(name, cls):
    assert B.device_class_from_name(name) == cls


def test_device_class_on_cpu():
    import torch

    assert B.device_class("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert B.device_class() == "cpu"


# ---------------------------------------------------------------- deriving

def test_derive_bounds_applies_documented_margins(tmp_path):
    d = B.derive_bounds(
        {"overall_speedup": 2.0, "acceptance_rate": [0.70, 0.95, 0.74],
         "hidden_drafted": {"all": 10, "per_duration": {"500ms": 2, "20s": 40}},
         "token_match_rate": 1.0, "engine_efficiency": 0.05},
        profile="7b-shaped", device_class="h100", source="ppbench run 42 on H100")
    b = d["bounds"]
    assert b["overall_speedup"] == {"min": 1.6, "why": b["overall_speedup"]["why"]}
    assert b["acceptance_rate"]["min"] == pytest.approx(0.64)            # median 0.74 - 0.10
    assert b["hidden_drafted"]["min"] == pytest.approx(7.0)
    assert b["hidden_drafted"]["per_duration"] == {"500ms": {"min": 1.4}, "20s": {"min": 28.0}}
    assert b["token_match_rate"]["min"] == 1.0
    assert b["engine_efficiency"]["min"] == pytest.approx(0.04)
    assert "measured 2" in b["overall_speedup"]["why"] and "rel=0.2" in b["overall_speedup"]["why"]
    path = B.write_bounds(d, B.bounds_path("7b-shaped", "h100", tmp_path))
    assert B.load_bounds("7b-shaped", "h100", root=tmp_path)["source"] == "ppbench run 42 on H100"
    assert path.name == "7b-shaped-h100.json"


def test_derive_bounds_custom_margin_clamps_and_errors():
    d = B.derive_bounds({"tpot_ms": 20.0, "acceptance_rate": 0.05},
                        {"tpot_ms": {"side": "max", "rel": 0.5, "why": "per-token decode time"}},
                        profile="p", device_class="cpu", source="s")
    assert d["bounds"]["tpot_ms"] == {"max": 30.0, "why": d["bounds"]["tpot_ms"]["why"]}
    assert d["bounds"]["acceptance_rate"]["min"] == 0.0                  # clamped at 0
    with pytest.raises(B.BoundsError, match="no safety margin for measured 'mystery'"):
        B.derive_bounds({"mystery": 1.0}, profile="p", device_class="cpu", source="s")
    with pytest.raises(B.BoundsError, match="NaN"):
        B.derive_bounds({"overall_speedup": [math.nan]}, profile="p", device_class="cpu", source="s")


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(sorted(B.DEFAULT_MARGINS)), value=st.floats(0.01, 1.0))
def test_derived_bound_passes_its_own_run_and_fails_a_collapse(name, value):
    d = B.derive_bounds({name: value}, profile="p", device_class="cpu", source="s")
    B.check_bound(d, name, value, ["s0"])
    # an absolute 0.10 margin only falls below half the value once the value passes 0.2
    if name != "acceptance_rate" or value > 0.2:
        with pytest.raises(B.BoundViolation):
            B.check_bound(d, name, value * 0.5 - 1e-3, ["s0"])
