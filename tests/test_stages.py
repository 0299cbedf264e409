"""Five-stage runner: every stage timed, failures recorded with their stage, the loop goes on."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from harness.data import load_samples
from harness.stages import STAGES, run_sample, run_stage_pipeline
from harness.timing import StageClock


@pytest.fixture(scope="module")
def tiny_pair():
    from harness.models.profiles import load_pair

    return load_pair("tiny", device="cpu", quant="none", dtype=torch.float32)


@pytest.fixture(scope="module")
def samples():
    from harness.data.synthetic import ensure_default_dataset

    return load_samples(ensure_default_dataset(progress=False), "1s", limit=2)


def test_every_stage_timed_and_tokens_counted(tiny_pair, samples):
    for runner in tiny_pair:
        rec = run_sample(runner, samples[0], max_new_tokens=7)
        assert rec["error"] is None
        assert list(rec["stages_ms"]) == list(STAGES)
        assert all(v >= 0 for v in rec["stages_ms"].values())
        assert rec["n_output_tokens"] == len(rec["output_tokens"]) == len(rec["decode_token_ms"]) == 7
        assert rec["n_visual_tokens"] and rec["n_prompt_tokens"] > rec["n_visual_tokens"]
        # the decode stage covers its per-token times
        assert sum(rec["decode_token_ms"]) <= rec["stages_ms"]["decode"] + 1e-6


def test_bad_sample_is_recorded_and_the_loop_goes_on(tiny_pair, samples, tmp_path):
    broken = dataclasses.replace(samples[0], id="broken-1", sequence="no_such_sequence")
    written = []

    class Sink:
        def write(self, record):
            written.append(record)

    run_stage_pipeline(tiny_pair, [broken, samples[1]], Sink(), max_new_tokens=3)
    assert len(written) == 4
    bad = [r for r in written if r["sample_id"] == "broken-1"]
    assert all(r["error"]["stage"] == "load" for r in bad)
    assert "no_such_sequence" in bad[0]["error"]["message"]  # names the file
    assert all(r["error"] is None for r in written if r["sample_id"] != "broken-1")


def test_resume_skips_done_keys(tiny_pair, samples):
    written = []

    class Sink:
        def write(self, record):
            written.append(record)

    done = {("stages", samples[0].dataset, samples[0].id, "drafter")}
    run_stage_pipeline(tiny_pair, samples[:1], Sink(), done=done, max_new_tokens=2)
    assert [r["model"] for r in written] == ["target"]


def test_clocks_on_cpu():
    clock = StageClock("cpu")
    clock.mark("a")
    clock.mark("b")
    assert list(clock.stages_ms) == ["a", "b"] and clock.ends_ms["b"] >= clock.ends_ms["a"]


def test_stage_decode_and_target_only_are_one_loop_on_one_clock(tiny_pair, samples, monkeypatch):
    """The five-stage decode and target-only's decode are the engine's greedy decode: one
    engine.decode_step (one clock reading after the step) per token after the first, the same
    tokens either way."""
    from harness import baselines, engine

    target = tiny_pair[1]
    steps = []
    real = engine.decode_step
    monkeypatch.setattr(engine, "decode_step", lambda *a, **k: steps.append(1) or real(*a, **k))
    rec = run_sample(target, samples[0], max_new_tokens=5)
    n_stage = len(steps)
    res = baselines.target_only(target, samples[0], max_new_tokens=5)
    assert n_stage == 4 and len(steps) - n_stage == 4
    assert rec["output_tokens"] == res.output_tokens
    assert rec["stages_ms"]["decode"] == pytest.approx(sum(rec["decode_token_ms"]), abs=1.0)
