"""EventGPT drafter: original key layout, spatio-temporal aggregation, prompt, token counts."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.models.tiny import ensure_tiny_checkpoints, load_tokenizer
from harness.models import eventgpt as eg
from harness.models.checkpoint import checkpoint_keys
from harness.models.profiles import eventgpt_config, load_drafter, visual_token_count

ORIGINAL_PREFIXES = ("model.visual_tower.visual_tower.", "model.visual_projector.0.", "model.visual_projector.2.",
                     "model.feature_adaptor.", "model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")


@pytest.fixture(scope="module")
def paths():
    return ensure_tiny_checkpoints()


@pytest.fixture(scope="module")
def drafter():
    return load_drafter("tiny", quant="none", dtype=torch.float32)


def test_tiny_checkpoint_is_in_the_original_key_layout(paths):
    keys, is_safe = checkpoint_keys(paths["drafter"])
    assert is_safe
    for prefix in ORIGINAL_PREFIXES:
        assert any(k.startswith(prefix) for k in keys), prefix
    assert all(k.startswith(ORIGINAL_PREFIXES) for k in keys), sorted(k for k in keys if not k.startswith(ORIGINAL_PREFIXES))
    assert "model.visual_tower.visual_tower.vision_model.embeddings.patch_embedding.weight" in keys
    assert "model.visual_projector.0.weight" in keys and "model.feature_adaptor.weight" in keys


def test_tiny_drafter_loads_and_runs_a_forward(drafter):
    assert drafter.role == "drafter" and drafter.modality == "events"
    assert type(drafter.model).__name__ == "EventChatLlamaForCausalLM"
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (32, 48, 3), dtype=np.uint8) for _ in range(5)]
    prepared = drafter.preprocess(images, "Is there a pedestrian?")
    assert prepared["pixel_values"].shape == (5, 3, 28, 28)
    assert int((prepared["input_ids"] == eg.EVENT_TOKEN_INDEX).sum()) == 1
    embeds = drafter.encode_vision(prepared)
    assert embeds.shape == (1, prepared["input_ids"].shape[1] - 1 + drafter.n_visual_tokens, 64)
    cache, logits = drafter.prefill(embeds)
    assert logits.shape == (len(drafter.tokenizer),) and torch.isfinite(logits).all()
    assert drafter.cache_len(cache) == embeds.shape[1]


def test_event_features_are_spliced_at_the_placeholder(drafter):
    rng = np.random.default_rng(1)
    prepared = drafter.preprocess([rng.integers(0, 256, (28, 28, 3), dtype=np.uint8) for _ in range(5)], "Why?")
    ids = prepared["input_ids"][0]
    pos = int((ids == eg.EVENT_TOKEN_INDEX).nonzero())
    with torch.inference_mode():
        feats = drafter.model.encode_events(prepared["pixel_values"])
        embeds = drafter.encode_vision(prepared)
        text = drafter.model.get_input_embeddings()(ids.clamp(min=0))
    n = feats.shape[0]
    torch.testing.assert_close(embeds[0, pos:pos + n], feats)
    torch.testing.assert_close(embeds[0, :pos], text[:pos])
    torch.testing.assert_close(embeds[0, pos + n:], text[pos + 1:])


def test_prompt_is_vicuna_v1_with_the_event_markers(paths):
    """dataset/conversation.py (eventgpt_v1 + prepare_event_prompt): the markers are plain text."""
    p = eg.eventgpt_prompt("How many cars?")
    assert p == f"{eg.VICUNA_SYSTEM} USER: <ev_start><event><ev_end>\nHow many cars? ASSISTANT:"
    tok = load_tokenizer(paths["tokenizer"])
    ids = eg.event_prompt_ids(tok, "How many cars?")
    assert ids[0] == tok.bos_token_id and ids.count(eg.EVENT_TOKEN_INDEX) == 1 and ids.count(tok.bos_token_id) == 1
    with pytest.raises(ValueError, match="must not contain"):
        eg.event_prompt_ids(tok, "what is <event>?")


@settings(max_examples=15, deadline=None)
@given(t=st.integers(1, 6), n=st.integers(1, 9), d=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_spatio_temporal_aggregation_matches_the_original_loops(t, n, d, seed):
    x = torch.randn(t, n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = eg.spatio_temporal_features(x)
    assert out.shape == (t + n, d)
    for i in range(t):      # temporal token i: mean over image i's tokens
        torch.testing.assert_close(out[i], sum(x[i, j] for j in range(n)) / n)
    for j in range(n):      # spatial token j: mean of token j over time
        torch.testing.assert_close(out[t + j], sum(x[i, j] for i in range(t)) / t)


def test_batched_encoding_equals_the_original_per_image_loop(drafter):
    m = drafter.model.model
    px = torch.randn(5, 3, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        per_image = [m.feature_adaptor(m.visual_projector(m.visual_tower.visual_tower(p[None]).last_hidden_state))[0]
                     for p in px]
        ref = eg.spatio_temporal_features(torch.stack(per_image))
        got = drafter.model.encode_events(px)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_7b_shaped_token_count_is_582_without_weights(paths):
    cfg = eventgpt_config("7b-shaped", load_tokenizer(paths["tokenizer"]))
    assert eg.visual_token_count(cfg) == visual_token_count(cfg) == 5 + 577 == 582
    assert eg.tokens_per_image(eg.vision_config_of(cfg)) == 577
    with torch.device("meta"):  # the real module graph, no memory: shapes only
        model = eg.EventChatLlamaForCausalLM(cfg)
        feats = model.encode_events(torch.empty(5, 3, 336, 336))
    assert feats.shape == (582, 4096)
    assert model.model.visual_projector[0].weight.shape == (4096, 1024)
    assert model.model.feature_adaptor.weight.shape == (4096, 4096)


def test_original_config_without_vision_config_means_clip_l14_336():
    cfg = eg.EventChatConfig(mm_visual_tower="openai/clip-vit-large-patch14-336")
    assert eg.visual_token_count(cfg, 5) == 582
