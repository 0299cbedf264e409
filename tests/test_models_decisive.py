"""Decisive random weights (harness/models/decisive.py): the planted next-token structure gives
greedy choices a margin far beyond bf16 rounding, so a batched verify forward and single-token
decodes pick the same tokens; plain random weights do not have that margin."""
from __future__ import annotations

import functools

import pytest
import torch
from accelerate import init_empty_weights
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from harness.models.decisive import greedy_margins, plant_next_token_
from harness.models.profiles import PLANT_SEED_OFFSET, eventgpt_config, load_pair, videollava_config
from harness.models.eventgpt import EventChatLlamaForCausalLM
from harness.models.quant import materialize_, random_init_
from harness.models.tiny import build_tokenizer

# Wider and deeper than tiny with a larger vocabulary, small enough for a CPU test.
MID = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
           intermediate_size=688, vocab_size=8192, tie_word_embeddings=False)


@functools.lru_cache(maxsize=None)
def mid_model(plant: bool, dtype: torch.dtype) -> LlamaForCausalLM:
    m = random_init_(LlamaForCausalLM(LlamaConfig(**MID)), seed=1)
    if plant:
        plant_next_token_(m, seed=3)
    return m.to(dtype).eval()


@torch.inference_mode()
def single_and_batched(m, n: int = 16):
    """Greedy logits one token at a time, and the same positions from one batched forward."""
    prompt = torch.randint(0, MID["vocab_size"], (1, 24), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache()
    logits = [m(input_ids=prompt, past_key_values=cache, use_cache=True).logits[0, -1].float()]
    tokens = [int(logits[-1].argmax())]
    for _ in range(n):
        logits.append(m(input_ids=torch.tensor([[tokens[-1]]]), past_key_values=cache,
                        use_cache=True).logits[0, -1].float())
        tokens.append(int(logits[-1].argmax()))
    cache = DynamicCache()
    first = m(input_ids=prompt, past_key_values=cache, use_cache=True).logits[0, -1:].float()
    rest = m(input_ids=torch.tensor([tokens[:-1]]), past_key_values=cache, use_cache=True).logits[0].float()
    return torch.stack(logits), torch.cat([first, rest])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_planted_margin_beats_rounding_and_outputs_agree(dtype):
    """Planted: every greedy choice wins by > 5 logit standard deviations, more than 20 times the
    largest batched-vs-single logit difference, and both paths pick identical tokens."""
    single, batched = single_and_batched(mid_model(True, dtype))
    margins = greedy_margins(single)
    diff = (batched - single).abs().max() / single.std(dim=-1).min()
    assert margins.min() > 5.0
    assert margins.min() > 20 * diff
    assert torch.equal(single.argmax(-1), batched.argmax(-1))


def test_plain_random_weights_have_near_ties():
    """The margin statistic tells the two apart: plain random weights' greedy choices win by less
    than one standard deviation somewhere (the near-ties that flip on a GPU)."""
    single, _ = single_and_batched(mid_model(False, torch.bfloat16))
    assert greedy_margins(single).min() < 1.0


def test_plant_is_deterministic_and_changes_no_shape():
    """Same seed, same tensors; shapes and dtypes unchanged; the planted successor is the argmax
    of the head applied to a token's own normalized embedding."""
    a = mid_model(True, torch.float32)
    b = random_init_(LlamaForCausalLM(LlamaConfig(**MID)), seed=1)
    succ = plant_next_token_(b, seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    ref = random_init_(LlamaForCausalLM(LlamaConfig(**MID)), seed=1)
    assert [(n, p.shape, p.dtype) for n, p in b.named_parameters()] == \
        [(n, p.shape, p.dtype) for n, p in ref.named_parameters()]
    e = b.get_input_embeddings().weight[:100]
    pred = (e / e.pow(2).mean(-1, keepdim=True).sqrt()) @ b.get_output_embeddings().weight.T
    assert torch.equal(pred.argmax(-1), succ[:100])


def test_shaped_path_plants_after_materialize():
    """The 7b-shaped build path (meta device -> materialize_ -> plant), on a small config on CPU:
    the planted head decides, and drafter and target get different bigrams."""
    tok = build_tokenizer()
    cfg = eventgpt_config("tiny", tok)
    with init_empty_weights(include_buffers=False):
        model = EventChatLlamaForCausalLM(cfg)
    materialize_(model, device="cpu", dtype=torch.bfloat16, quant="none", skip_modules=[], seed=0)
    succ = plant_next_token_(model, seed=PLANT_SEED_OFFSET["drafter"])
    assert not any(p.device.type == "meta" for p in model.parameters())
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([[5, 9, 17]])).logits[0].float()
    assert greedy_margins(logits).min() > 2.0
    assert logits.argmax(-1).tolist() == succ[[5, 9, 17]].tolist()
    assert PLANT_SEED_OFFSET["drafter"] != PLANT_SEED_OFFSET["target"]


def test_tiny_pair_is_decisive(tmp_path):
    """The tiny checkpoints carry the planted structure through save and from_pretrained: the
    target's greedy choices on real prompts have a clear margin."""
    drafter, target = load_pair("tiny", quant="none", dtype=torch.float32, cache_dir=tmp_path)
    for r in (drafter, target):
        with torch.inference_mode():
            ids = torch.tensor([r.tokenizer("What is happening in this scene?").input_ids])
            logits = r.model(input_ids=ids).logits[0].float()
        assert greedy_margins(logits).min() > 2.0, r.name
