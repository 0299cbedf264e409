"""Engine unit tests on tiny random Llama pairs (CPU, fp32)."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch

from harness import baselines as B
from harness import costmodel as C
from harness import engine as E
from harness import results as R
from harness.errors import DataError
from harness.models.base import CausalLMRunner, TextRunner

from fixtures.engine_testers import (Checked, CharTokenizer, Slow, one_thread, random_pair, runner, same_pair,
                                     tiny_llama)

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "what is moving in front of the car?"


@pytest.fixture(scope="module")
def same():
    return same_pair(0, eos_token_id=None)


@pytest.fixture(scope="module")
def rand():
    return random_pair(0, eos_token_id=None)


def _greedy(target, n, prompt=PROMPT):
    return B.target_only(target, prompt, max_new_tokens=n).output_tokens


# -- end-to-end behaviour -------------------------------------------------------------------------
@pytest.mark.parametrize("gamma", [1, 4, "adaptive"])
def test_identical_drafter_accepts_everything(same, gamma):
    drafter, target = same
    ref = _greedy(target, 40)
    res = E.parallel_prefill_decode(drafter, target, PROMPT, max_new_tokens=40, gamma=gamma)
    assert res.output_tokens == ref
    assert res.accepted == res.drafted > 0
    assert res.hidden_accepted == res.hidden_drafted <= res.hidden_block and res.hidden_block >= 1
    assert res.acceptance_rate == 1.0
    assert res.mean_acceptance_length == 1 + res.accepted / res.verify_steps


def test_random_drafter_is_rejected_but_output_is_lossless(rand):
    drafter, target = rand
    ref = _greedy(target, 40)
    assert ref != _greedy(drafter, 40)
    res = E.parallel_prefill_decode(drafter, target, PROMPT, max_new_tokens=40, gamma=3)
    assert res.output_tokens == ref
    assert res.drafted >= 3 * 10
    assert res.acceptance_rate < 0.2
    assert res.token_match_rate is None


def test_prompt_lengths_are_tracked_per_model(rand):
    drafter, target = rand
    res = E.parallel_prefill_decode(drafter, target, PROMPT, max_new_tokens=5, gamma=2)
    n_target = len(target.tokenizer(PROMPT).input_ids[0])
    assert res.n_prompt_tokens == {"drafter": n_target + 3, "target": n_target}


def test_timeline_is_consistent(rand):
    drafter, target = rand
    res = E.parallel_prefill_decode(drafter, target, PROMPT, max_new_tokens=20, gamma=3)
    tl = res.timeline
    for ends in (tl["drafter_stage_end_ms"], tl["target_stage_end_ms"]):
        assert list(ends) == list(E.STAGES)
        assert all(0 <= a <= b for a, b in zip(list(ends.values()), list(ends.values())[1:]))
    assert len(tl["draft_token_ms"]) == res.drafted
    assert tl["draft_token_ms"][0] >= tl["drafter_stage_end_ms"]["prefill"]
    assert all(s <= e for s, e in tl["verify_ms"])
    assert res.window_ms == pytest.approx(tl["target_stage_end_ms"]["prefill"] - tl["drafter_stage_end_ms"]["prefill"])
    assert res.ttft_ms >= tl["target_stage_end_ms"]["prefill"]
    assert res.e2e_ms >= res.ttft_ms and res.tpot_ms == pytest.approx((res.e2e_ms - res.ttft_ms) / 19)
    assert res.ideal_e2e_ms is not None and res.ideal_e2e_ms > 0
    # token_ms: when the output reached each length, first token at TTFT, never decreasing
    assert len(tl["token_ms"]) >= 20 and tl["token_ms"][0] == res.ttft_ms
    assert all(a <= b for a, b in zip(tl["token_ms"], tl["token_ms"][1:])) and tl["token_ms"][-1] <= res.e2e_ms


def test_target_only_and_the_engine_time_every_token_alike(same, rand):
    """Both record token_ms (when the output reached each length), so their decode phases compare
    token by token: target-only's last token is its e2e, and an all-accepted block's tokens share
    their verify's end. (A hidden block of one token makes the output 2, 7, 12 tokens long: a
    longer one, as many as the window hides, could leave one plain step before the cap.)"""
    ref = B.target_only(rand[1], PROMPT, max_new_tokens=12)
    assert len(ref.timeline["token_ms"]) == 12 and ref.timeline["token_ms"][-1] == ref.e2e_ms
    res = E.parallel_prefill_decode(*same, PROMPT, max_new_tokens=12, gamma=4, hidden_cap=1)
    ends = {e for _, e in res.timeline["verify_ms"]}
    assert set(res.timeline["token_ms"][1:]) <= ends


def _prefilled(target):
    cache, logits, _ = E.run_stages_1_to_4(target, PROMPT)
    return cache, int(logits.argmax())


@pytest.mark.parametrize("depth", [1, 3])
def test_queued_plain_decode_gives_the_per_step_tokens_cache_and_costs(rand, depth):
    """Steps queued ahead of the host (the CUDA default, run here on CPU) give the tokens of one
    host round trip per step, leave the cache as long, time every token in order, and count one
    queued plain-step cost per step, kept apart from the round trips' verify-of-1 costs."""
    target = rand[1]
    out = {}
    for d in (0, depth):
        cache, first = _prefilled(target)
        costs = C.Costs()
        tokens, times = E.plain_decode(target, cache, first, 9, eos=set(), t0=0.0, costs=costs, depth=d)
        out[d] = tokens, target.cache_len(cache)
        assert len(times) == 9 and times == sorted(times)
        steps = costs.plain_ms if d else costs.verify_ms[1]      # queued steps apart from round trips
        assert len(steps) == 9 and min(steps) >= 0 and (not d or 1 not in costs.verify_ms)
    assert out[depth] == out[0]


def test_queued_plain_decode_stops_at_eos_and_crops_the_steps_queued_past_it(rand):
    """An EOS read back while later steps are already queued ends the output there; the steps
    queued past it are cropped, so the cache holds what one step at a time leaves, and the next
    step from it computes what it computes there."""
    target = rand[1]
    cache, first = _prefilled(target)
    plain, _ = E.plain_decode(target, cache, first, 12, eos=set(), depth=0)
    eos = {plain[4]}
    stop = plain.index(plain[4]) + 1
    left = {}
    for d in (0, 3):
        cache, first = _prefilled(target)
        tokens, _ = E.plain_decode(target, cache, first, 12, eos=eos, depth=d)
        assert tokens == plain[:stop]
        left[d] = target.cache_len(cache), target.decode(tokens[-1], cache)
    assert left[3][0] == left[0][0]
    assert torch.equal(left[3][1], left[0][1])


def test_the_engine_and_its_baselines_are_lossless_with_queued_plain_decoding(rand, monkeypatch):
    """With plain decode steps queued (as on CUDA) target-only, sequential and the engine (fixed
    gamma, adaptive settling on 0, stopping at EOS) give the same output as one step at a time,
    and the engine's step bookkeeping still adds up."""
    drafter, target = rand
    want = {g: E.parallel_prefill_decode(drafter, target, PROMPT, max_new_tokens=16, gamma=g).output_tokens
            for g in (0, "adaptive")}
    base = _greedy(target, 16)
    queued = E.plain_decode
    monkeypatch.setattr(E, "plain_decode", lambda *a, **k: queued(*a, **{**k, "depth": 3}))
    assert _greedy(target, 16) == base == want[0] == want["adaptive"]
    assert B.sequential(drafter, target, PROMPT, max_new_tokens=16).output_tokens == base
    for g in (0, "adaptive"):
        res = E.parallel_prefill_decode(drafter, target, PROMPT, max_new_tokens=16, gamma=g)
        assert res.output_tokens == base
        assert res.produced == res.verify_steps + res.accepted + res.decode_steps
        assert res.decode_steps == res.gamma_trace.count(0)
        assert len(res.timeline["token_ms"]) == 16 and res.e2e_ms == res.timeline["token_ms"][-1]
    eos_pair = random_pair(0, eos_token_id=base[5])
    stopped = E.parallel_prefill_decode(*eos_pair, PROMPT, max_new_tokens=16, gamma=0, stop_at_eos=True)
    assert stopped.output_tokens == base[:base.index(base[5]) + 1]


def test_gamma_zero_is_plain_decoding_after_the_window(rand):
    drafter, target = rand
    res = E.parallel_prefill_decode(drafter, target, PROMPT, max_new_tokens=15, gamma=0)
    assert res.output_tokens == _greedy(target, 15)
    assert set(res.gamma_trace) <= {0}
    assert res.drafted == res.hidden_block


def test_hidden_cap_bounds_the_window_drafting():
    target = runner(tiny_llama(0, hidden=64, layers=4), name="target")   # slower: a real window
    drafter = runner(tiny_llama(0, layers=1), name="drafter")
    res = E.parallel_prefill_decode(drafter, target, PROMPT * 2, max_new_tokens=20, gamma=2, hidden_cap=3)
    assert 1 <= res.hidden_block <= 3 and res.hidden_drafted <= res.hidden_block
    assert res.output_tokens == _greedy(target, 20, PROMPT * 2)


def test_a_target_error_reaches_the_caller_after_the_drafter_stops(rand):
    drafter, target = rand

    class Broken(type(target)):
        def load_inputs(self, sample):
            raise DataError("video unreadable", path="/nope/video.mp4", sample="s1")

    broken = Broken(target.model, target.tokenizer, name="target")
    with pytest.raises(DataError, match="s1"):
        E.parallel_prefill_decode(drafter, broken, PROMPT, max_new_tokens=5)


def test_bad_arguments_raise():
    d, t = same_pair(0)
    with pytest.raises(ValueError):
        E.parallel_prefill_decode(d, t, PROMPT, gamma=-1)
    with pytest.raises(ValueError):
        E.parallel_prefill_decode(d, t, PROMPT, hidden_cap=0)
    with pytest.raises(ValueError):
        E.parallel_prefill_decode(d, t, PROMPT, alpha=1.5)


# -- simulated acceptance -------------------------------------------------------------------------
def _within(k: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(k - n * p) <= sigmas * math.sqrt(n * p * (1 - p)) + 1e-9


def test_emitter_emits_the_reference_with_probability_alpha():
    logits = torch.zeros(50)
    ref = [7, 0, 49] * 4000
    for alpha in (0.25, 0.8):
        emit = E.Emitter(E.greedy, alpha, ref, seed=3)
        tokens = [emit(logits, i) for i in range(len(ref))]
        hits = sum(t == r for t, r in zip(tokens, ref))
        assert _within(hits, len(ref), alpha)
        assert all(0 <= t < 50 for t in tokens)
    emit = E.Emitter(E.greedy, 0.0, ref, seed=3)
    assert all(emit(logits, i) != r for i, r in enumerate(ref))
    assert emit(logits, len(ref)) == 0        # past the reference: the drafter's own token


def test_simulated_alpha_converges(rand):
    drafter, target = rand
    alpha, n = 0.5, 300
    ref = _greedy(target, n)
    res = E.parallel_prefill_decode(drafter, target, PROMPT, max_new_tokens=n, gamma=4, alpha=alpha,
                                    reference_tokens=ref, seed=1, hidden_cap=4)
    assert res.output_tokens == ref and res.alpha_simulated == alpha
    app = res.accept_per_position
    # Each emitted draft token matches with probability alpha, independently: position 0 is
    # Binomial(drafts, alpha); position j, given position j-1 accepted, is Binomial(acc_{j-1}, alpha).
    assert app[0][1] >= 100
    assert _within(app[0][0], app[0][1], alpha)
    for j in range(1, len(app)):
        assert _within(app[j][0], app[j - 1][0], alpha)
    pooled_trials = sum(a for a, _ in app[:-1]) + app[0][1]
    assert _within(sum(a for a, _ in app), pooled_trials, alpha)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_simulated_alpha_extremes(rand, alpha):
    drafter, target = rand
    ref = _greedy(target, 30)
    res = E.parallel_prefill_decode(drafter, target, PROMPT, max_new_tokens=30, gamma=3, alpha=alpha,
                                    reference_tokens=ref)
    assert res.output_tokens == ref
    assert res.accepted == (res.drafted if alpha == 1.0 else 0)
    assert res.token_match_rate == 1.0


def test_simulated_alpha_computes_its_reference_when_missing(rand):
    drafter, target = rand
    res = E.parallel_prefill_decode(drafter, target, PROMPT, max_new_tokens=12, gamma=2, alpha=1.0)
    assert res.output_tokens == _greedy(target, 12) and res.accepted == res.drafted


# -- adaptive gamma -------------------------------------------------------------------------------
def flat(ms):
    return lambda k: ms


def test_choose_gamma_never_speculates_without_acceptance():
    assert C.choose_gamma(0.0, 0.1, flat(10.0), 10.0) == 0
    assert C.choose_gamma(0.0, 0.0, flat(10.0), 10.0) == 0


def test_choose_gamma_speculates_when_drafts_are_cheap_and_good():
    g = C.choose_gamma(0.9, 0.5, flat(10.0), 10.0)
    assert 1 <= g <= C.MAX_GAMMA
    assert C.choose_gamma(0.9, 0.5, flat(10.0), 10.0, max_gamma=3) == 3


def test_choose_gamma_equal_size_drafter_does_not_pay():
    # EventGPT and Video-LLaVA share a 7B LM: a draft step costs a decode step; only alpha = 1 ties.
    for alpha in (0.5, 0.9, 0.99):
        assert C.choose_gamma(alpha, 10.0, flat(10.0), 10.0) == 0


def test_choose_gamma_accounts_for_verify_cost_growth():
    linear = lambda k: 10.0 * k          # compute-bound verify: a k-token verify costs k decodes
    assert C.choose_gamma(0.95, 1.0, linear, 10.0) == 0


def test_expected_tokens():
    assert C.expected_tokens(0.0, 5) == 1.0
    assert C.expected_tokens(1.0, 5) == 6.0
    assert C.expected_tokens(0.5, 2) == pytest.approx(1.75)


def test_costs_interpolate_verify():
    c = C.Costs()
    assert c.verify(3) is None and c.draft() is None
    c.add_verify(1, 10.0)
    assert c.verify(5) == 10.0
    c.add_verify(3, 14.0)
    assert c.verify(2) == pytest.approx(12.0) and c.verify(5) == pytest.approx(18.0)


def test_acceptance_bookkeeping():
    acc = E.Acceptance()
    acc.add_block(3, 3)
    acc.add_block(3, 1)
    acc.add_block(2, 0)
    assert (acc.drafted, acc.accepted, acc.verify_steps, acc.rejections) == (8, 4, 3, 2)
    assert acc.per_position == [[2, 3], [1, 3], [1, 2]]
    assert acc.alpha_hat() == pytest.approx((4 + 1) / (4 + 2 + 2))


# -- baselines ------------------------------------------------------------------------------------
def test_sequential_runs_drafter_fully_then_target(rand):
    drafter, target = rand
    res = B.sequential(drafter, target, PROMPT, max_new_tokens=10)
    assert res.output_tokens == _greedy(target, 10)
    d, t = res.timeline["drafter_stage_end_ms"], res.timeline["target_stage_end_ms"]
    assert d["decode"] <= t["load"] <= t["prefill"] <= t["decode"] == res.e2e_ms


def test_assisted_generation_runs_on_a_text_pair(same):
    drafter, target = same
    for gamma in (3, "adaptive"):
        res = B.assisted_generation(drafter, target, PROMPT, max_new_tokens=20, gamma=gamma)
        assert res.error is None, res.error
        assert res.output_tokens == _greedy(target, 20)
        assert res.e2e_ms > 0
    assert target.model.generation_config.num_assistant_tokens == drafter.model.generation_config.num_assistant_tokens


def test_assisted_generation_explains_why_it_cannot_run(rand):
    drafter, target = rand
    res = B.assisted_generation(drafter, target, PROMPT, max_new_tokens=5)
    assert res.error["type"] == "Unsupported" and "input_ids" in res.error["message"]

    class VideoRunner(CausalLMRunner):
        modality = "video"

    res = B.assisted_generation(drafter, VideoRunner(target.model, target.tokenizer), PROMPT)
    assert res.output_tokens == [] and "video" in res.error["message"] and res.note


# -- ideal model and records ----------------------------------------------------------------------
def test_ideal_e2e_plain_decoding():
    ideal = C.ideal_e2e_ms(drafter_ready_ms=50, target_ready_ms=100, draft_ms=5, verify_ms=flat(20),
                           decode_ms=20, accept_per_position=[[0, 4]], n_tokens=11, gamma=0)
    assert ideal == pytest.approx(100 + 10 * 20)


def test_ideal_e2e_perfect_drafter():
    # window 50 ms / 5 ms per draft -> 11 hidden tokens, all accepted: 12 tokens from one verify.
    ideal = C.ideal_e2e_ms(drafter_ready_ms=50, target_ready_ms=100, draft_ms=5, verify_ms=flat(20),
                           decode_ms=20, accept_per_position=[[1, 1]] * 16, n_tokens=20, gamma=3,
                           hidden_cap=64)
    rest_blocks = (20 - 12) / 4
    assert ideal == pytest.approx(100 + 20 + rest_blocks * (3 * 5 + 20))


def test_ideal_e2e_drafts_only_where_the_policy_lets_it():
    """yield-gpu: hidden drafting stops when the target's host stages end (draft_until_ms), and
    queued hidden steps have their own cost (hidden_step_ms), not the synchronous draft step's."""
    kw = dict(drafter_ready_ms=50, target_ready_ms=100, verify_ms=flat(20), decode_ms=20,
              accept_per_position=[[1, 1]] * 16, n_tokens=30, gamma=0, hidden_cap=64)
    full = C.ideal_e2e_ms(draft_ms=5, **kw)                              # 1 + 50 // 5 = 11 hidden
    until = C.ideal_e2e_ms(draft_ms=5, draft_until_ms=70, **kw)          # 1 + 20 // 5 = 5 hidden
    queued = C.ideal_e2e_ms(draft_ms=10, hidden_step_ms=5, **kw)         # hidden at 5 ms: 11 again
    assert full == pytest.approx(100 + 20 + (30 - 12) * 20)
    assert until == pytest.approx(100 + 20 + (30 - 6) * 20)
    assert queued == pytest.approx(full)
    # past the target's readiness the window is the target's: a later host-stage end changes nothing
    assert C.ideal_e2e_ms(draft_ms=5, draft_until_ms=500, **kw) == pytest.approx(full)


def test_costs_hidden_falls_back_to_synchronous_draft_steps():
    c = C.Costs(draft_ms=[6.0, 8.0])
    assert c.hidden() == 7.0
    c.hidden_ms.extend([5.0, 5.5])
    assert c.hidden() == pytest.approx(5.25) and c.draft() == 7.0


def test_costs_plain_prefers_queued_steps_and_never_extrapolates():
    """The plain decode cost is the queued steps' mean where measured, else the round-trip
    verifies of 1; a k-token verify alone gives none (extrapolating it would be a formula), and
    queued steps stay out of the verify curve."""
    assert C.Costs(plain_ms=[4.0]).verify(3) is None
    c = C.Costs()
    c.add_verify(5, 9.0)
    assert c.plain() is None
    c.add_verify(1, 6.0)
    assert c.plain() == 6.0
    c.plain_ms.extend([4.0, 4.5])
    assert c.plain() == pytest.approx(4.25) and c.verify(1) == 6.0
    # a hidden block rejected at its first token ran no verify forward, and its ideal needs none
    ideal = C.ideal_e2e_ms(drafter_ready_ms=10, target_ready_ms=50, draft_ms=5, verify_ms=lambda k: None,
                           decode_ms=4.0, accept_per_position=[[0, 1]], n_tokens=6, gamma=0)
    assert ideal == 50 + 5 * 4.0


def test_adaptive_gamma_zero_is_kept_and_skips_the_drafter(rand):
    """A random drafter is rejected; once adaptive gamma settles on 0 with measured costs the
    engine decodes plainly to the end: no drafter call after it (no realignment, no block), so
    the drafter's cache stays where it was. (A 20 ms draft step outweighs a stalled first plain
    step on a loaded machine, so the costs settle gamma on 0 at once.)"""
    drafter, target = rand
    checked = Checked(Slow(drafter, decode=20), target)
    res = E.parallel_prefill_decode(checked, checked.target, PROMPT, max_new_tokens=20, gamma="adaptive")
    checked.after(res)
    assert res.output_tokens == _greedy(target, 20)
    realigned = len(checked.states) - 1          # steps after the hidden block that kept the drafter in step
    assert realigned <= 2 < len(res.gamma_trace)
    assert set(res.gamma_trace[realigned:]) == {0}
    assert checked.side.cache_len() == checked.states[-1]["drafter_cache"]


class _FedIds:
    """A drafter runner that records every token id fed to it after its prompt."""

    def __init__(self, inner):
        self._inner, self.fed = inner, []

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def decode(self, token, cache):
        self.fed.append(int(token))
        return self._inner.decode(token, cache)

    def verify(self, tokens, cache):
        self.fed.extend(int(t) for t in tokens)
        return self._inner.verify(tokens, cache)


@pytest.mark.parametrize("alpha", [None, 0.5, 1.0])
def test_target_ids_past_the_drafters_vocabulary_reach_it_as_its_unk_id(alpha):
    """The target's vocabulary may be larger than the drafter's (Video-LLaVA 32064 rows, EventGPT
    32001): a target token the drafter has no row for is fed to the drafter as its unk id (0 for
    a tokenizer without one), never as an index past its embedding; the output is still the
    target's, and with real drafts such a token is never accepted."""
    small = _FedIds(TextRunner(tiny_llama(1000, vocab=48, layers=1),
                               CharTokenizer(vocab=48, prefix=(1, 5), eos_token_id=None), name="drafter"))
    target = runner(tiny_llama(0), eos_token_id=None, name="target")
    ref = _greedy(target, 30)
    assert sum(t >= 48 for t in ref) >= 3          # the target does emit ids the drafter lacks
    res = E.parallel_prefill_decode(small, target, PROMPT, max_new_tokens=30, gamma=3, alpha=alpha,
                                    reference_tokens=ref)
    assert res.output_tokens == ref
    assert small.fed and max(small.fed) < 48 and 0 in small.fed
    if alpha is None:
        assert res.accepted <= sum(t < 48 for t in ref)


def test_drafter_ids_map_only_ids_past_the_vocabulary():
    assert E.drafter_ids([0, 47, 48, 95], 48, unk=0) == [0, 47, 0, 0]
    assert E.drafter_ids([5, 500], None, unk=0) == [5, 500]


def test_overlap_auto_resolves_from_devices():
    assert E.resolve_overlap("auto", "cuda:0", "cuda:0") == "yield-gpu"
    assert E.resolve_overlap("auto", "cuda:1", "cuda:0") == "always"
    assert E.resolve_overlap("auto", "cpu", "cpu") == "always"
    assert E.resolve_overlap("always", "cuda:0", "cuda:0") == "always"


def test_to_record_matches_the_contract(rand):
    drafter, target = rand
    res = E.parallel_prefill_decode(drafter, target, PROMPT, max_new_tokens=6, gamma=2,
                                    reference_tokens=_greedy(target, 6))
    rec = R.to_record(res, run_id="r1", dataset="4s", sample_id="s1", profile="tiny", device="cpu",
                      dtype="float32", quant="none")
    assert set(rec) == {
        "kind", "run_id", "dataset", "sample_id", "profile", "device", "dtype", "quant", "decode_impl", "mode",
        "gamma", "alpha_simulated", "e2e_ms", "ttft_ms", "tpot_ms", "n_output_tokens",
        "output_tokens", "window_ms", "overlap", "hidden_block", "hidden_drafted", "hidden_accepted", "drafter_sat_out",
        "drafted", "accepted",
        "verify_steps", "accept_per_position", "accept_blocks", "token_match_rate", "ideal_e2e_ms", "timeline",
        "error", "note"}
    assert rec["kind"] == "engine" and rec["mode"] == "parallel" and rec["n_output_tokens"] == 6
    assert rec["token_match_rate"] == 1.0
    assert set(rec["timeline"]) == {"drafter_stage_end_ms", "target_stage_end_ms", "draft_token_ms", "verify_ms",
                                   "token_ms"}
    json.loads(json.dumps(rec))
    with pytest.raises(ValueError):
        R.to_record(res, sample="typo")


def test_error_result_record():
    """A failed engine run's record keeps the stage, the type, the message and the file it names."""
    rec = R.to_record(R.error_result("parallel", "load", DataError("bad", path="x.h5", sample="s")))
    assert rec["error"] == {"stage": "load", "type": "DataError", "message": "bad (sample s, file x.h5)",
                            "path": "x.h5"}
    assert rec["n_output_tokens"] == 0


def test_now_ms_is_perf_counter_ms_after_syncing_only_this_threads_stream(monkeypatch):
    """now_ms reads time.perf_counter in ms (the clock a drafter process shares with its parent).
    On CUDA it first synchronizes the calling thread's current stream, never the whole device: a
    device-wide synchronize would wait for the other model's stream and erase the overlap."""
    before = time.perf_counter() * 1e3
    t = E.now_ms(torch.device("cpu"))
    assert before <= t <= time.perf_counter() * 1e3
    synced = []

    class Stream:
        def synchronize(self):
            synced.append("stream")

    def device_wide(*a, **k):
        raise AssertionError("device-wide synchronize")

    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: Stream())
    monkeypatch.setattr(torch.cuda, "synchronize", device_wide)
    E.now_ms("cuda:0")
    assert synced == ["stream"]
    E.now_ms(None)
    assert synced == ["stream"]


def test_hidden_drafted_are_those_finished_inside_the_window(rand):
    """A draft step still running when the target becomes ready joins the verified block, but it
    is not a hidden token: hidden = drafted tokens whose finish time is inside the window."""
    drafter, target = rand
    res = E.parallel_prefill_decode(Slow(drafter, decode=30), Slow(target, load_inputs=100),
                                    PROMPT, max_new_tokens=12, gamma=0)
    ready = res.timeline["target_stage_end_ms"]["prefill"]
    finished = res.timeline["draft_token_ms"][:res.hidden_block]
    assert res.hidden_drafted == sum(t <= ready for t in finished)
    assert res.hidden_block >= res.hidden_drafted >= 1
    assert res.output_tokens == _greedy(target, 12)


def test_a_drafter_that_ends_its_host_stages_during_the_targets_gpu_stages_sits_out_too(rand):
    """yield-gpu, the other order: the drafter's host stages (150 ms) end after the target's (30 ms)
    but before the target's prefill ends (630 ms): the target finds it past its host stages and
    waits for it as usual, and it has run no GPU stage and drafted nothing."""
    drafter, target = rand
    res = E.parallel_prefill_decode(Slow(drafter, preprocess=150),
                                    Slow(target, load_inputs=10, preprocess=20, encode_vision=600),
                                    PROMPT, max_new_tokens=8, overlap="yield-gpu")
    d_ends = res.timeline["drafter_stage_end_ms"]
    assert res.drafter_sat_out and res.window_ms is None and res.hidden_block == 0 and res.accept_blocks == []
    assert set(d_ends) == {"load", "preprocess"} and d_ends["preprocess"] < res.timeline["target_stage_end_ms"]["prefill"]
    assert res.output_tokens == _greedy(target, 8) and res.ideal_e2e_ms is not None


@pytest.mark.parametrize("overlap", ["always", "yield-gpu"])
def test_a_drafter_still_on_the_host_when_the_target_goes_to_the_gpu_sits_the_sample_out(rand, overlap):
    """yield-gpu: the drafter's own vision and prefill would only delay the target's, so a drafter
    whose host stages (300 ms of preprocessing) end after the target's (30 ms) runs no GPU stage
    and drafts nothing: no window, no hidden block, the target decodes alone without waiting for
    it (e2e ends before the drafter's preprocessing does), and the record says so. 'always' drafts."""
    drafter, target = rand
    res = E.parallel_prefill_decode(Slow(drafter, preprocess=300),
                                    Slow(target, load_inputs=10, preprocess=20, encode_vision=60),
                                    PROMPT, max_new_tokens=12, overlap=overlap)
    d_ends = res.timeline["drafter_stage_end_ms"]
    rec = R.to_record(res)
    assert res.output_tokens == _greedy(target, 12) and res.error is None
    if overlap == "yield-gpu":
        assert rec["drafter_sat_out"] is True and rec["window_ms"] is None
        assert (res.hidden_block, res.drafted, res.verify_steps, res.accept_blocks) == (0, 0, 0, [])
        assert set(d_ends) == {"load", "preprocess"} and res.e2e_ms < d_ends["preprocess"]
        assert res.gamma_trace == [0] * 11 and res.ideal_e2e_ms is not None
    else:
        assert rec["drafter_sat_out"] is False and res.hidden_block >= 1 and "prefill" in d_ends


def test_simulation_seed_differs_between_samples_so_first_coins_follow_alpha():
    """One seed for every sample replays one coin sequence on all of them (with seed 0 the first
    coin is 0.84: every hidden block at alpha < 0.84 was rejected at its first token)."""
    import random
    from types import SimpleNamespace

    from harness.engine_suite import simulation_seed

    samples = [SimpleNamespace(dataset="4s", id=f"zurich_city_{i:02d}_a_{i * 7}") for i in range(400)]
    assert len({simulation_seed(s) for s in samples}) == 400
    assert simulation_seed(samples[3]) == simulation_seed(SimpleNamespace(dataset="4s", id=samples[3].id))
    for alpha in (0.35, 0.7):
        hits = sum(random.Random(simulation_seed(s)).random() < alpha for s in samples)
        assert abs(hits / len(samples) - alpha) < 4 * (alpha * (1 - alpha) / len(samples)) ** 0.5


def test_overlap_policy_resolution(rand):
    drafter, target = rand
    assert E.resolve_overlap("auto", drafter, target) == "always"          # CPU: nothing shared on a GPU
    assert E.resolve_overlap("yield-gpu", drafter, target) == "yield-gpu"
    with pytest.raises(ValueError, match="overlap must be one of"):
        E.resolve_overlap("never", drafter, target)
    with pytest.raises(ValueError, match="overlap must be one of"):
        E.parallel_prefill_decode(drafter, target, PROMPT, max_new_tokens=4, overlap="sometimes")


@pytest.mark.parametrize("overlap", ["always", "yield-gpu"])
def test_yield_gpu_drafts_only_while_the_target_is_on_the_host(rand, overlap):
    """Target: 150 ms of loading, 200 ms of preprocessing (both host work), then 400 ms of vision
    encoding. The drafter (40 ms a step) drafts through all of it under 'always', but under
    'yield-gpu' it stops once the target's preprocessing ends (a step already running may finish),
    waits, and the output is still the target's own."""
    drafter, target = rand
    res = E.parallel_prefill_decode(Slow(drafter, decode=40),
                                    Slow(target, load_inputs=150, preprocess=200, encode_vision=400),
                                    PROMPT, max_new_tokens=30, gamma=0, overlap=overlap)
    ends = res.timeline["target_stage_end_ms"]
    hidden = res.timeline["draft_token_ms"][:res.hidden_block]
    assert res.overlap == overlap and R.to_record(res)["overlap"] == overlap
    assert res.output_tokens == _greedy(target, 30)
    if overlap == "yield-gpu":
        assert all(t <= ends["preprocess"] + 40 * 3 for t in hidden)    # one step in flight, slack for CI
        assert hidden[-1] > ends["load"] + 40                          # drafted through preprocessing
        assert hidden[-1] < ends["vision"] - 150
    else:
        assert hidden[-1] > ends["vision"] - 150 and res.hidden_block > 6
