"""The static-KV decode path (models/static_decode.py) against transformers' own forward, on CPU in
fp32: same logits, same greedy tokens, crop semantics, the padding that CUDA graphs rely on, and
the engine staying lossless on top of it. (The CUDA-graph replay itself is in test_models_gpu.py.)"""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import baselines as B
from harness import engine as E
from harness.models.profiles import (ENGINE_OVERSHOOT, TEXT_TOKEN_BUDGET, configure_decode, load_pair,
                                     static_cache_len, text_token_range)
from harness.models.static_decode import (PREFILL_BUCKET, CacheFullError, StaticDecoder, prefill_buckets,
                                          resolve_decode_impl)

from fixtures.engine_testers import one_thread, random_pair, same_pair, tiny_llama  # noqa: F401
from test_models_contract import embeds_of, greedy_run, raw_inputs


@pytest.fixture(scope="module")
def hf_and_static():
    """Two copies of the tiny pair with the same weights: one on hf decode, one on static."""
    hf = load_pair("tiny", quant="none", dtype=torch.float32)
    st_ = load_pair("tiny", quant="none", dtype=torch.float32)
    configure_decode(st_, "static", max_new_tokens=32)
    return hf, st_


@pytest.mark.parametrize("which", [0, 1], ids=["drafter", "target"])
def test_static_decode_matches_transformers(hf_and_static, which):
    hf, st_ = hf_and_static[0][which], hf_and_static[1][which]
    assert (hf.decode_impl, st_.decode_impl) == ("hf", "static")
    embeds = embeds_of(hf)
    _, tok_hf, logits_hf = greedy_run(hf, embeds, 12)
    cache, tok_st, logits_st = greedy_run(st_, embeds, 12)
    assert tok_st == tok_hf
    torch.testing.assert_close(logits_st, logits_hf, atol=1e-5, rtol=1e-5)
    assert st_.cache_len(cache) == embeds.shape[1] + 12


@pytest.mark.parametrize("which", [0, 1], ids=["drafter", "target"])
def test_static_verify_crop_then_decode_continues_exactly(hf_and_static, which):
    r = hf_and_static[1][which]
    embeds = embeds_of(r)
    cache, tokens, _ = greedy_run(r, embeds, 3)
    length = r.cache_len(cache)
    vlogits = r.verify(torch.tensor([tokens[-1], 9, 10, 11]), cache)
    assert vlogits.shape[0] == 4 and r.cache_len(cache) == length + 4
    r.crop(cache, length + 1)           # keep the first verified token only
    after = r.decode(5, cache)
    ref, tokens2, _ = greedy_run(r, embeds, 3)
    r.decode(tokens2[-1], ref)
    torch.testing.assert_close(after, r.decode(5, ref), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(vlogits[0], r.verify(torch.tensor([tokens[-1]]), greedy_run(r, embeds, 3)[0])[0],
                               atol=1e-5, rtol=1e-5)


def test_padded_step_leaves_the_real_rows_unchanged():
    """CUDA graphs replay a step of k tokens in the next captured size, with dummy tokens after the
    real ones. Causal masking must keep the dummies out of the real rows' logits (and their K/V
    slots get overwritten before anything can attend to them)."""
    model = tiny_llama(5)
    dec = StaticDecoder(model, max_len=64)
    ids = torch.randint(3, 90, (1, 20))
    with torch.inference_mode():
        cache = dec.new_cache()
        dec.forward(cache, input_ids=ids[:, :12], keep=1)
        real = dec._layers(dec.dec.embed_tokens(ids[:, 12:15]), dec.slots[12:15], prefill=False, keep=3)
        padded_ids = torch.cat([ids[:, 12:15], ids[:, 14:15].expand(1, 5)], dim=1)
        padded = dec._layers(dec.dec.embed_tokens(padded_ids), dec.slots[12:20], prefill=False, keep=8)
        torch.testing.assert_close(padded[:3], real, atol=1e-6, rtol=1e-6)
        # ...and the next real step at slot 15 overwrites the dummy there and ignores slots 16-19
        cache.length = 15
        nxt = dec.forward(cache, input_ids=ids[:, 15:16])
        clean = StaticDecoder(model, max_len=64)
        c2 = clean.new_cache()
        clean.forward(c2, input_ids=ids[:, :15], keep=1)
        torch.testing.assert_close(nxt, clean.forward(c2, input_ids=ids[:, 15:16]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n", [1, 17, 40])
def test_padded_prefill_matches_the_unpadded_prompt(n):
    """Graphed prefill pads the prompt's embeddings with zero rows up to its bucket and reads the
    logits of the last real row: they, the real rows' K/V and the decode after them must equal an
    unpadded prefill's (fp32)."""
    model = tiny_llama(3)
    plain, padded = StaticDecoder(model, max_len=128), StaticDecoder(model, max_len=128)
    embeds = model.get_input_embeddings()(torch.randint(3, 90, (1, n)))
    with torch.inference_mode():
        c1 = plain.new_cache()
        ref = plain.forward(c1, inputs_embeds=embeds)[-1]
        bucket = prefill_buckets(n, n, max_len=128)[0]
        rows = torch.cat([embeds, torch.zeros(1, bucket - n, embeds.shape[-1])], dim=1)
        got = padded.padded_prefill(rows, n)[-1]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(padded.k[:, :, :, :n], plain.k[:, :, :, :n], atol=1e-6, rtol=1e-6)
        c2 = padded.new_cache()
        c2.length = n                                  # what the graphed forward records
        nxt = int(ref.argmax())
        torch.testing.assert_close(padded.forward(c2, input_ids=torch.tensor([[nxt]])),
                                   plain.forward(c1, input_ids=torch.tensor([[nxt]])), atol=1e-5, rtol=1e-5)


def test_prefill_buckets_cover_every_prompt_length():
    assert prefill_buckets(1, 1, max_len=512) == [PREFILL_BUCKET]
    assert prefill_buckets(2057, 2248, max_len=2432) == [2112, 2176, 2240, 2304]
    assert prefill_buckets(100, 300, max_len=256) == [128, 192, 256]      # the cache caps them
    for lo in range(1, 300, 7):
        buckets = prefill_buckets(lo, lo + 150, max_len=10_000)
        assert all(b % PREFILL_BUCKET == 0 for b in buckets)
        for n in range(lo, lo + 151):
            assert any(b >= n for b in buckets) and min(b for b in buckets if b >= n) - n < PREFILL_BUCKET


def test_cache_full_and_stale_handles_fail_clearly():
    dec = StaticDecoder(tiny_llama(0), max_len=16)
    with torch.inference_mode():
        cache = dec.new_cache()
        dec.forward(cache, input_ids=torch.ones(1, 10, dtype=torch.long))
        with pytest.raises(CacheFullError, match="holds 16 positions; this step needs 17.*cache-len"):
            dec.forward(cache, input_ids=torch.ones(1, 7, dtype=torch.long))
        dec.new_cache()
        with pytest.raises(RuntimeError, match="stale static KV cache"):
            dec.forward(cache, input_ids=torch.ones(1, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="cannot crop"):
        cache.crop(99)


def test_decode_impl_resolution_and_errors():
    assert resolve_decode_impl("auto", "cpu") == "hf"
    assert resolve_decode_impl("auto", "cuda") == "compiled"
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_decode_impl("cuda-graph", "cpu")
    with pytest.raises(ValueError, match="one of"):
        resolve_decode_impl("fused", "cpu")
    assert resolve_decode_impl("compiled", "cpu") == "compiled"     # compiled functions, no graphs
    with pytest.raises(ValueError, match="Llama-family"):
        StaticDecoder(torch.nn.Linear(2, 2), max_len=8)


def test_cache_len_covers_prompt_generation_and_engine_overshoot(hf_and_static):
    drafter, target = hf_and_static[1]
    for r in (drafter, target):
        n = static_cache_len(r, 50)
        assert n % 128 == 0 and n >= r.n_visual_tokens + 50 + 64 + 8
        assert r.static.max_len == static_cache_len(r, 32)     # what configure_decode used


def test_cache_is_sized_from_the_runs_questions(hf_and_static):
    """Given the run's questions, each model's static cache holds its visual tokens, the longest
    question in its own template, the new tokens and the engine's overshoot (rounded up to 128), and
    a prompt of that longest question really fits it; without them, the fixed text budget."""
    questions = ("What is in the scene?", "Describe the scene in detail, object by object, left to right.")
    for r in load_pair("tiny", quant="none", dtype=torch.float32):
        lengths = [r.prompt_text_tokens(q) for q in questions]
        assert text_token_range(r, questions) == (min(lengths), max(lengths)) and lengths[1] > lengths[0]
        assert text_token_range(r) == (1, TEXT_TOKEN_BUDGET)
        setup = configure_decode([r], "static", max_new_tokens=20, questions=questions)[r.role]
        need = r.n_visual_tokens + max(lengths) + 20 + ENGINE_OVERSHOOT
        assert setup["text_tokens"] == [min(lengths), max(lengths)]
        assert setup["cache_len"] == r.static.max_len == -(-need // 128) * 128 <= static_cache_len(r, 20)
        embeds = r.encode_vision(r.preprocess(raw_inputs(r), questions[1]))
        assert embeds.shape[1] == r.n_visual_tokens + max(lengths)          # the count is the prompt's
        cache, tokens, _ = greedy_run(r, embeds, 20)
        assert r.cache_len(cache) == embeds.shape[1] + 20 <= r.static.max_len - ENGINE_OVERSHOOT


ENGINE_SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
STATIC_PAIRS = {}


def _static_pair(kind):
    if kind not in STATIC_PAIRS:
        pair = same_pair(7, eos_token_id=None) if kind == "same" else random_pair(7, eos_token_id=None)
        for r in pair:
            if r.static is None:
                r.use_decode_impl("static", max_len=256)
        STATIC_PAIRS[kind] = pair
    return STATIC_PAIRS[kind]


@pytest.mark.usefixtures("one_thread")
@ENGINE_SETTINGS
@given(kind=st.sampled_from(["same", "random"]), gamma=st.one_of(st.integers(0, 5), st.just("adaptive")),
       prompt=st.text(alphabet="abcdefgh ?", min_size=1, max_size=30), max_new_tokens=st.integers(1, 30),
       alpha=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_engine_is_lossless_on_static_decode(kind, gamma, prompt, max_new_tokens, alpha):
    drafter, target = _static_pair(kind)
    ref = B.target_only(target, prompt, max_new_tokens=max_new_tokens).output_tokens
    res = E.parallel_prefill_decode(drafter, target, prompt, max_new_tokens=max_new_tokens, gamma=gamma,
                                    alpha=alpha, reference_tokens=ref if alpha is not None else None)
    assert res.output_tokens == ref
    if kind == "same" and alpha is None and gamma != 0:
        assert res.accepted == res.drafted


def test_non_llama_language_models_are_refused():
    """Same module names, different forward (q/k norms, sliding window): refuse, don't mis-decode."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen3Config, Qwen3ForCausalLM

    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                 num_attention_heads=4, num_key_value_heads=2)
    with pytest.raises(ValueError, match="plain Llama only.*model_type 'qwen3'.*q/k norms"):
        StaticDecoder(Qwen3ForCausalLM(Qwen3Config(**small, head_dim=8)), max_len=16)
    with pytest.raises(ValueError, match="sliding window"):
        StaticDecoder(MistralForCausalLM(MistralConfig(**small, sliding_window=4)), max_len=16)


def test_resume_treats_runs_without_a_decode_impl_as_transformers_eager(tmp_path):
    import json

    from harness.errors import UsageError
    from harness.pipeline import _resumable_meta

    settings = {"profile": "tiny", "quant": "none", "dtype": "float32", "max_new_tokens": 8, "stop_at_eos": False}
    (tmp_path / "meta.json").write_text(json.dumps(settings))          # written before decode_impl existed
    now = dict(settings, decode_impl="hf", overlap="always", drafter_process=False)
    assert _resumable_meta(tmp_path, now) is not None
    with pytest.raises(UsageError, match="decode_impl: saved 'hf', now 'static'"):
        _resumable_meta(tmp_path, dict(now, decode_impl="static"))
    # ...and as drafting through the whole window: a yield-gpu run must not resume into one
    with pytest.raises(UsageError, match="overlap: saved 'always', now 'yield-gpu'"):
        _resumable_meta(tmp_path, dict(now, overlap="yield-gpu"))
