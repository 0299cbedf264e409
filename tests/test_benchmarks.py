"""The nightly benchmarks (gpu-marked): 5 stages x 9 durations x 2 models, per-token decode, and the
parallel-prefill engine end to end per duration.

    pytest -m gpu --benchmark-autosave --ppbench-profile 7b-shaped        # on a GPU runner
    pytest -m gpu --ppbench-device cpu --benchmark-disable               # CPU smoke (tiny profile)

Each duration's samples are measured once per session (harness/benchsupport.py) and every
benchmark here replays the measured device times as its rounds (one round per sample; per token
for decode_token). Bounds come from harness/calibration/bounds/<profile>-<device class>.json.
"""
from __future__ import annotations

import statistics

import pytest

from harness import metrics
from harness.benchsupport import stage_seconds
from harness.replay import record_rounds
from harness.pipeline import DEFAULT_DURATIONS
from harness.stages import STAGES
from harness.verify_cost import check_precision

pytestmark = pytest.mark.gpu
MODELS = ("drafter", "target")


def _measured(ppbench_session, duration, what):
    return getattr(ppbench_session, what)(duration)


def _failures(records, model=None):
    return [f"{r['sample_id']} ({r.get('model') or r.get('mode')}): {r['error']['stage']}: "
            f"{r['error']['type']}: {r['error']['message'][:200]}"
            for r in records if r.get("error") and (model is None or r.get("model") == model)]


@pytest.mark.parametrize("stage,duration,model", [
    pytest.param(s, d, m, id=f"{s}-{d}-{m}") for m in MODELS for d in DEFAULT_DURATIONS for s in STAGES])
def test_stage(benchmark, ppbench_session, stage, duration, model):
    records = _measured(ppbench_session, duration, "stages")
    seconds, ids = stage_seconds(records, model, stage)
    ok = [r for r in records if r["model"] == model and not r.get("error")]
    benchmark.group = f"stage:{stage}"
    benchmark.extra_info.update(
        samples=ids, failed=_failures(records, model),
        n_prompt_tokens=[r["n_prompt_tokens"] for r in ok],
        n_visual_tokens=[r["n_visual_tokens"] for r in ok],
        n_output_tokens=[r["n_output_tokens"] for r in ok],
        peak_mem_bytes=max((r["peak_mem_bytes"] or 0 for r in ok), default=None))
    record_rounds(benchmark, seconds, "stage clock, device-synchronized", _failures(records, model))
    assert not _failures(records, model), "\n".join(_failures(records, model))


@pytest.mark.parametrize("duration,model", [
    pytest.param(d, m, id=f"{d}-{m}") for m in MODELS for d in DEFAULT_DURATIONS])
def test_decode_token(benchmark, ppbench_session, duration, model):
    """Per-token decode time (tokens 2..n; token 1 comes from the prefill logits): many rounds, so
    the regression gate has the power to see a few-percent decode slowdown."""
    records = _measured(ppbench_session, duration, "stages")
    ok = [r for r in records if r["model"] == model and not r.get("error")]
    seconds = [ms / 1e3 for r in ok for ms in r["decode_token_ms"][1:]]
    benchmark.group = "decode_token"
    benchmark.extra_info.update(samples=[r["sample_id"] for r in ok], tokens=len(seconds))
    record_rounds(benchmark, seconds, "CUDA events per token" if "cuda" in str(
        ppbench_session.target.device) else "perf_counter per token", _failures(records, model))


@pytest.mark.parametrize("duration", DEFAULT_DURATIONS)
def test_parallel_prefill(benchmark, ppbench_session, ppbench_bounds, duration):
    """End to end: the engine's parallel-prefill speculative run vs target-only on the same inputs."""
    from harness.bounds import check_engine_bounds
    from harness.metrics import summarize_engine

    stages = _measured(ppbench_session, duration, "stages")
    records = _measured(ppbench_session, duration, "engine")
    per_sample, summary = summarize_engine(records, stages)
    benchmark.group = "parallel_prefill"
    benchmark.extra_info.update(per_sample, drafted=summary["drafted"], accepted=summary["accepted"],
                                pooled_acceptance=summary["acceptance_rate"])
    record_rounds(benchmark, [r["e2e_ms"] / 1e3 for r in records
                              if r["mode"] == "parallel" and not r.get("error")], "engine clock",
                  _failures(records) + _failures(stages))
    assert not _failures(records), "\n".join(_failures(records))
    if ppbench_bounds is not None:
        check_engine_bounds(ppbench_bounds, summary, duration)


@pytest.mark.parametrize("precision,m", [
    pytest.param(p, m, id=f"{p}-M{m}") for p in ("nf4", "bf16", "int4") for m in range(1, 65)])
def test_verify_cost(benchmark, ppbench_session, precision, m):
    """Device time of one target step of M tokens after its prompt (harness/verify_cost.py), per
    precision, so a kernel regression in bitsandbytes or torch at any M fails the gate. The break-even
    acceptance of a hidden block of M drafts (metrics.break_even_alpha) goes into extra_info."""
    try:
        check_precision(precision, ppbench_session.target.device)
    except ValueError as exc:
        pytest.skip(str(exc))
    measured = ppbench_session.verify_curve(precision)
    curve = {k: statistics.median(v) for k, v in measured["curve_ms"].items()}
    benchmark.group = f"verify_cost:{precision}"
    benchmark.extra_info.update(
        precision=precision, m=m, prompt_positions=measured["prompt_positions"],
        decode_impl=measured["decode_setup"].get("decode_impl"), weights_bytes=measured["weights_bytes"],
        verify_over_decode=curve[m] / curve[1], break_even_alpha=metrics.break_even_alpha(curve, m))
    record_rounds(benchmark, [ms / 1e3 for ms in measured["curve_ms"][m]], measured["clock"])
