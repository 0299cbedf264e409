"""The drafter in its own process (harness/drafter_process.py): the same engine, the same
guarantees. Tiny fp32 pairs on CPU; each process is spawned once per module (a few seconds)."""
from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest

from harness import baselines as B
from harness import engine as E
from harness import stages
from harness.drafter_process import DrafterProcess, DrafterProcessError
from harness.errors import DataError, ModelLoadError

from fixtures.engine_testers import (Checked, Slow, drafter_of, drafter_that_cannot_load, failing_drafter, random_pair,
                                     same_pair, slow_drafter_of, two_arg_failing_drafter)

PROMPT = "what happens next in this scene?"


@pytest.fixture(scope="module")
def procs():
    made = {kind: DrafterProcess(functools.partial(drafter_of, kind, 0)) for kind in ("same", "random")}
    yield made
    for p in made.values():
        p.close()


def _greedy(target, n):
    return B.target_only(target, PROMPT, max_new_tokens=n).output_tokens


@pytest.mark.parametrize("gamma", [0, 2, "adaptive"])
def test_process_drafter_equal_to_the_target_is_fully_accepted(procs, gamma):
    target = same_pair(0)[1]
    checked = Checked(procs["same"], target)
    res = E.parallel_prefill_decode(checked, checked.target, PROMPT, max_new_tokens=24, gamma=gamma)
    checked.after(res)
    assert res.output_tokens == _greedy(target, 24)
    assert res.accepted == res.drafted and res.drafted >= 1
    assert res.hidden_block >= 1 and len(res.timeline["draft_token_ms"]) == res.drafted


@pytest.mark.parametrize("alpha", [None, 0.0, 1.0, 0.6])
def test_process_drafter_is_lossless_and_counts_add_up(procs, alpha):
    target = random_pair(0)[1]
    ref = _greedy(target, 30)
    checked = Checked(procs["random"], target)
    res = E.parallel_prefill_decode(checked, checked.target, PROMPT, max_new_tokens=30, gamma=3,
                                    alpha=alpha, reference_tokens=ref, seed=5)
    checked.after(res)
    assert res.output_tokens == ref
    assert 0 <= res.accepted <= res.drafted
    assert res.produced == res.verify_steps + res.accepted + res.decode_steps
    if alpha == 1.0:
        assert res.accepted == res.drafted
    if alpha == 0.0:
        assert res.accepted == 0
    # the hidden block's times share the parent's clock: after the start, in order
    times = res.timeline["draft_token_ms"][:res.hidden_block]
    assert times == sorted(times) and times[0] > 0


def test_process_drafter_matches_the_in_process_engine(procs, monkeypatch):
    """Same pair, same inputs, same seed: the same tokens and acceptance counts either way. The
    parent realigns on its own and the crop rides with the next block: one round
    trip per draft block."""
    drafter, target = random_pair(0)
    ref = _greedy(target, 20)
    kw = dict(max_new_tokens=20, gamma=2, alpha=0.5, reference_tokens=ref, seed=3, hidden_cap=1)
    local = E.parallel_prefill_decode(drafter, target, PROMPT, **kw)
    proc, calls = procs["random"], []
    real_call = proc.call
    monkeypatch.setattr(proc, "call", lambda method, *a: calls.append(method) or real_call(method, *a))
    remote = E.parallel_prefill_decode(proc, target, PROMPT, **kw)
    assert remote.output_tokens == local.output_tokens == ref
    assert (remote.drafted, remote.accepted, remote.verify_steps) == (local.drafted, local.accepted,
                                                                      local.verify_steps)
    blocks = sum(1 for g in remote.gamma_trace if g > 0)
    assert blocks >= 2 and calls == ["drafting"] + ["draft_block"] * blocks


def test_a_drafter_process_still_on_the_host_sits_the_sample_out_and_serves_the_next():
    """yield-gpu across processes: the child sets host_done before it reads the parent's on_gpu, so
    a parent whose target reached the GPU first decodes without waiting (e2e ends before the
    child's preprocessing does) and collects the child after; the next run with a fast target
    (the child on time) drafts a hidden block again."""
    drafter, target = random_pair(0)
    proc = DrafterProcess(functools.partial(slow_drafter_of, "random", 0, preprocess=300))
    try:
        late = E.parallel_prefill_decode(proc, Slow(target, preprocess=20), PROMPT, max_new_tokens=12,
                                         overlap="yield-gpu")
        on_time = E.parallel_prefill_decode(proc, Slow(target, preprocess=700), PROMPT, max_new_tokens=12,
                                            overlap="yield-gpu")
    finally:
        proc.close()
    d_ends = late.timeline["drafter_stage_end_ms"]
    assert late.drafter_sat_out and late.hidden_block == 0 and late.output_tokens == _greedy(target, 12)
    assert set(d_ends) == {"load", "preprocess"} and late.e2e_ms < d_ends["preprocess"]
    assert not on_time.drafter_sat_out and on_time.hidden_block >= 1 and on_time.output_tokens == _greedy(target, 12)


def test_errors_in_the_drafter_process_keep_their_type_and_message():
    target = random_pair(0)[1]
    with DrafterProcess(failing_drafter) as proc:
        with pytest.raises(DataError, match="events unreadable.*file events.h5"):
            E.parallel_prefill_decode(proc, target, PROMPT, max_new_tokens=4)
        # the process survives a failed sample and serves the next call
        assert proc.call("drafting", E.greedy, None, None, 0) is None


def test_an_error_that_does_not_unpickle_still_reaches_the_parent_with_its_message():
    target = random_pair(0)[1]
    with DrafterProcess(two_arg_failing_drafter) as proc:
        with pytest.raises(DrafterProcessError, match="TwoArgError: code 7: cannot read sample"):
            E.parallel_prefill_decode(proc, target, PROMPT, max_new_tokens=4)


def test_a_drafter_that_fails_to_load_raises_its_error_and_leaves_no_process():
    import multiprocessing as mp

    before = set(mp.active_children())
    with pytest.raises(ModelLoadError, match="missing weights.*EventGPT-7b"):
        DrafterProcess(drafter_that_cannot_load)
    assert set(mp.active_children()) <= before


def test_the_drafter_process_serves_stage_records_and_the_sequential_baseline(procs):
    """The drafter's five-stage record and its half of the sequential baseline come from the
    child, by the same functions as in-process: same tokens, same record fields; the sequential
    run's drafter stages end before the target's start, on one clock."""
    drafter, target = random_pair(0)
    sample = SimpleNamespace(dataset="500ms", id="s1", question=PROMPT)
    local = stages.run_sample(drafter, sample, max_new_tokens=6)
    remote = stages.run_sample(procs["random"], sample, max_new_tokens=6)
    assert remote["error"] is None and remote["model"] == local["model"]
    assert set(remote) == set(local) and remote["output_tokens"] == local["output_tokens"]
    assert list(remote["stages_ms"]) == list(stages.STAGES)
    seq = B.sequential(procs["random"], target, PROMPT, max_new_tokens=8)
    assert seq.output_tokens == _greedy(target, 8)
    d, t = seq.timeline["drafter_stage_end_ms"], seq.timeline["target_stage_end_ms"]
    assert 0 < d["prefill"] <= d["decode"] <= t["load"] <= t["decode"] == seq.e2e_ms


def test_assisted_generation_with_a_drafter_process_is_recorded_as_unsupported(procs):
    """Assisted generation needs the assistant model in the target's process: with the drafter in
    its own, the record says so (and how to measure it) instead of loading a second copy."""
    target = same_pair(0)[1]
    res = B.assisted_generation(procs["same"], target, PROMPT, max_new_tokens=4)
    assert res.error["type"] == "Unsupported" and "--drafter-process off" in res.error["message"]
    assert res.output_tokens == [] and res.note == res.error["message"]


def _bench_opts(tmp_path, **over):
    from harness import options, runconfig

    raw = options.defaults(profile="tiny", device="cpu", samples_per_duration="1", durations="500ms", max_new_tokens="6",
                           drafter_process="on", out=str(tmp_path / "bench"))
    return runconfig.resolve({**raw, **over}, side="pytest")


def test_the_bench_session_runs_its_engine_benchmarks_with_a_drafter_process(tmp_path):
    """The nightly's path when the drafter runs on CUDA (auto): BenchSession opens the child with
    its models, and the child serves the drafter's stage records and the engine; the parallel run
    stays lossless and its meta says where the drafter ran. With an injected delay, 'on' is
    refused before any model loads and 'auto' falls back to the in-process drafter."""
    from harness.benchsupport import BenchSession

    from harness.errors import UsageError

    with pytest.raises(UsageError, match="cannot be combined"):
        BenchSession(_bench_opts(tmp_path, inject_delay="decode:5"))
    session = BenchSession(_bench_opts(tmp_path))
    try:
        assert session.meta["drafter_process"] is True and isinstance(session.drafter, DrafterProcess)
        assert session.meta["memory_footprint_bytes"]["drafter"] > 0 and session.meta["model_inputs"]["drafter"]
        assert [r["error"] for r in session.stages("500ms") if r["model"] == "drafter"] == [None]
        records = session.engine("500ms")
        assert session.drafter._proc.is_alive()
        parallel = [r for r in records if r["mode"] == "parallel"]
        assert parallel and all(r["error"] is None and r["token_match_rate"] == 1.0 for r in parallel)
    finally:
        session.close()
    assert not session.drafter._proc.is_alive()
    auto = BenchSession(_bench_opts(tmp_path, drafter_process="auto", inject_delay="decode:5"))
    auto.close()
    assert auto.meta["drafter_process"] is False


def test_with_a_drafter_process_the_parent_never_builds_the_drafter(tmp_path, monkeypatch):
    """--drafter-process on (allowed on CPU): the drafter is built once per run, in the child; the
    parent loads no drafter and constructs no EventGPT runner, yet gets the drafter's stage
    records from the child."""
    from harness import pipeline
    from harness.models import eventgpt

    built = []
    real_load, real_init = pipeline.load_drafter, eventgpt.EventGPTRunner.__init__
    monkeypatch.setattr(pipeline, "load_drafter", lambda *a, **k: built.append("load") or real_load(*a, **k))

    def counting_init(self, *a, **k):
        built.append("runner")
        real_init(self, *a, **k)

    monkeypatch.setattr(eventgpt.EventGPTRunner, "__init__", counting_init)
    cfg = _bench_opts(tmp_path)
    drafter, target = pipeline.open_models(cfg)
    try:
        assert isinstance(drafter, DrafterProcess) and target.role == "target"
        sample = pipeline.open_data(cfg, progress=False).samples[0]
        rec = stages.run_sample(drafter, sample, max_new_tokens=4)
        assert rec["error"] is None and rec["model"] == "drafter" and rec["n_output_tokens"] == 4
    finally:
        pipeline.close_models(drafter)
    assert built == []
