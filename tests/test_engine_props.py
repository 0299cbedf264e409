"""Property tests: whatever gamma, prompt, length, EOS placement, hidden cap or simulated alpha,
the engine's output is the target's greedy output and its bookkeeping adds up after every step."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import baselines as B
from harness import costmodel as C
from harness import engine as E

from fixtures.engine_testers import Checked, one_thread, random_pair, runner, same_pair

pytestmark = pytest.mark.usefixtures("one_thread")

PAIRS = {"same": same_pair(3, eos_token_id=None), "random": random_pair(3, eos_token_id=None)}
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _with_eos(r, eos):
    return runner(r.model, prefix=r.tokenizer.prefix, eos_token_id=eos, name=r.name)


@SETTINGS
@given(pair=st.sampled_from(sorted(PAIRS)),
       gamma=st.one_of(st.integers(0, 6), st.just("adaptive")),
       prompt=st.text(alphabet="abcdefgh ?", min_size=1, max_size=40),
       max_new_tokens=st.integers(1, 40),
       eos_at=st.one_of(st.none(), st.integers(0, 39)),
       hidden_cap=st.sampled_from([1, 2, 5, 64]),
       alpha=st.one_of(st.none(), st.floats(0.0, 1.0)),
       seed=st.integers(0, 3))
def test_engine_is_lossless_and_consistent(pair, gamma, prompt, max_new_tokens, eos_at, hidden_cap,
                                           alpha, seed):
    drafter, target = PAIRS[pair]
    eos = None
    if eos_at is not None:   # an EOS id that really occurs in the greedy output
        full = B.target_only(target, prompt, max_new_tokens=max_new_tokens).output_tokens
        eos = full[min(eos_at, len(full) - 1)]
        drafter, target = _with_eos(drafter, eos), _with_eos(target, eos)
    stop = eos is not None
    ref = B.target_only(target, prompt, max_new_tokens=max_new_tokens, stop_at_eos=stop).output_tokens
    checked = Checked(drafter, target)     # checks the bookkeeping after every step that realigns
    res = E.parallel_prefill_decode(checked, checked.target, prompt, max_new_tokens=max_new_tokens, gamma=gamma,
                                    hidden_cap=hidden_cap, stop_at_eos=stop, alpha=alpha,
                                    reference_tokens=ref if alpha is not None else None, seed=seed)
    checked.after(res)
    assert res.output_tokens == ref
    # every intermediate output is the target's own, up to that point
    assert all(s["out"][:len(ref)] == ref[:len(s["out"])] for s in checked.states)
    if stop:
        assert eos in ref and ref.index(eos) == len(ref) - 1
    else:
        assert len(ref) == max_new_tokens

    # counts add up
    assert 0 <= res.accepted <= res.drafted
    assert 0 <= res.hidden_accepted <= res.hidden_drafted <= res.hidden_block <= min(hidden_cap, max_new_tokens)
    assert res.produced == res.verify_steps + res.accepted + res.decode_steps
    assert res.produced >= len(res.output_tokens)
    assert res.produced < max_new_tokens + (gamma if gamma != "adaptive" else C.MAX_GAMMA) + hidden_cap + 1
    assert sum(d for _, d in res.accept_per_position) == res.drafted
    assert sum(a for a, _ in res.accept_per_position) == res.accepted
    accepted_by_pos = [a for a, _ in res.accept_per_position]
    assert accepted_by_pos == sorted(accepted_by_pos, reverse=True)
    # the per-block record holds the same counts: one block per verify step, the hidden one first
    assert len(res.accept_blocks) == res.verify_steps and res.accept_blocks[0][0] == res.hidden_block
    assert all(0 <= a <= d for d, a in res.accept_blocks)
    assert [sum(a > j for _, a in res.accept_blocks) for j in range(len(accepted_by_pos))] == accepted_by_pos
    assert [sum(d > j for d, _ in res.accept_blocks) for j in range(len(accepted_by_pos))] == \
        [d for _, d in res.accept_per_position]
    assert len(res.timeline["draft_token_ms"]) == res.drafted
    assert len(res.timeline["verify_ms"]) <= res.verify_steps
    assert res.decode_steps == res.gamma_trace.count(0)
    if gamma != "adaptive":
        assert all(g <= gamma for g in res.gamma_trace)
    if alpha == 1.0 or pair == "same" and alpha is None:
        assert res.accepted == res.drafted
    if alpha == 0.0:
        assert res.accepted == 0
    if alpha is not None:
        assert res.token_match_rate == 1.0
