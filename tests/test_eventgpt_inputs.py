"""The drafter's inputs exactly as the original EventGPT computes them (XduSyL/EventGPT at 4ac9461),
each rule on inputs built to expose it, and the target's prompt / frame rules. The same rules were
checked against the original code (transformers 4.37.2) on tiny checkpoints in scratch space; the
report of issue 13 has the commands. Nothing here runs the original's code."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from harness.data.dsec import Events
from harness.data.event_images import events_to_images, paint_events
from harness.errors import EmptyWindowError
from harness.models import eventgpt as eg
from harness.models.image_processing import ClipProcessing, clip_preprocess
from harness.models.sp_tokenizer import SentencePieceLlamaTokenizer
from harness.models.tiny import build_tokenizer, ensure_tiny_checkpoints
from harness.models.tiny_layouts import PREPROCESSOR, build_layout, train_sentencepiece


def _events(x, y, p):
    n = len(x)
    return Events(x=np.asarray(x, np.uint16), y=np.asarray(y, np.uint16), t=np.arange(n, dtype=np.int64),
                  p=np.asarray(p, np.uint8))


# -- event images: common/common.py ----------------------------------------------------------------
def test_chunks_give_len_div_n_and_the_remainder_to_the_last():
    """common/common.py get_event_images_list: events_per_image = len // n; chunk i is
    [i * per, (i + 1) * per), the last chunk runs to the end (1003 events -> 200 x 4 + 203)."""
    n = 1003
    flat = np.random.default_rng(0).choice(640 * 480, n, replace=False)  # one pixel per event
    y, x = np.divmod(flat, 640)
    imgs = events_to_images(_events(x, y, np.zeros(n)), 5)
    assert [int((im != 255).any(-1).sum()) for im in imgs] == [200, 200, 200, 200, 203]
    # np.array_split would put the extra events first (201, 201, 201, 200, 200)
    first_chunk_pixels = {(int(a), int(b)) for a, b in zip(y[:200], x[:200])}
    hit = {tuple(map(int, yx)) for yx in np.argwhere((imgs[0] != 255).any(-1))}
    assert hit == first_chunk_pixels


def test_each_chunk_has_its_own_canvas_of_its_events_extent():
    """common/common.py generate_event_image: height, width = y.max() + 1, x.max() + 1 of the
    chunk's own events; a spatially sparse chunk gets a small canvas (mixed sizes in one window)."""
    x = [639, 0, 3, 36, 5, 2]
    y = [479, 0, 20, 1, 7, 299]
    imgs = events_to_images(_events(x, y, [1, 0, 1, 0, 1, 0]), 3)   # chunks of 2, 2, 2 events
    assert [im.shape for im in imgs] == [(480, 640, 3), (21, 37, 3), (300, 6, 3)]
    assert all(im.dtype == np.uint8 for im in imgs)


def test_the_last_event_at_a_pixel_wins_whatever_its_polarity():
    """common/common.py generate_event_image loops over events in time order: p == 0 paints blue
    (0, 0, 255), anything else red (255, 0, 0), a later event overwrites an earlier one."""
    img = paint_events(np.array([1, 1, 2, 2, 0]), np.array([0, 0, 0, 0, 1]), np.array([1, 0, 0, 1, 2]))
    assert img.shape == (2, 3, 3)
    assert tuple(img[0, 1]) == (0, 0, 255)      # red then blue: blue
    assert tuple(img[0, 2]) == (255, 0, 0)      # blue then red: red
    assert tuple(img[1, 0]) == (255, 0, 0)      # polarity 2 is "not 0": red
    assert tuple(img[0, 0]) == (255, 255, 255)  # untouched: white


def test_fewer_events_than_images_is_a_clear_error():
    """The original would build an empty chunk and fail on y.max(); here it is an EmptyWindowError."""
    with pytest.raises(EmptyWindowError, match="3 events cannot fill 5 event images"):
        events_to_images(_events([1, 2, 3], [1, 2, 3], [0, 1, 0]), 5)
    assert len(events_to_images(_events([1, 2, 3], [1, 2, 3], [0, 1, 0]), 1)) == 1


# -- pixels: CLIPImageProcessor (model/EventChatModel.py VisualTower.event_processor) ---------------
MIXED = [(480, 640), (21, 37), (300, 6), (5, 600), (336, 336), (17, 17), (3, 40), (2, 40), (40, 3), (40, 1)]


def test_pixels_equal_clip_image_processor_on_mixed_sizes():
    """common/common.py process_event_data runs event_processor(image) (CLIPImageProcessor: PIL
    bicubic shortest edge 336, center crop, rescale, normalize) on each image of its own size;
    transformers 5's PIL CLIPImageProcessor computes the same as 4.37.2's."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    rng = np.random.default_rng(1)
    ref = CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in MIXED]
    ours = clip_preprocess(imgs, ClipProcessing.square(336))
    assert ours.shape == (len(MIXED), 3, 336, 336)
    for im, px in zip(imgs, ours):
        assert torch.equal(ref(im, return_tensors="pt")["pixel_values"][0], px)


def test_a_canvas_of_height_3_is_read_channels_first_and_height_1_fails():
    """CLIPImageProcessor (transformers 4.37.2 and 5) infers the channel axis: (3, W, 3) is taken
    as channels first, i.e. the image x.transpose(1, 2, 0); (1, W, 3) fails in the original."""
    im = np.random.default_rng(4).integers(0, 256, (3, 40, 3), dtype=np.uint8)
    proc = ClipProcessing.square(336)
    assert torch.equal(clip_preprocess([im], proc), clip_preprocess([np.ascontiguousarray(im.transpose(1, 2, 0))], proc))
    with pytest.raises(ValueError, match="1-channel"):
        clip_preprocess([np.zeros((1, 40, 3), np.uint8)], proc)


def test_pixels_follow_the_tower_folders_preprocessor_config():
    """VisualTower builds CLIPImageProcessor.from_pretrained(mm_visual_tower): its size and crop
    (here shortest edge 32, crop 28) are the ones that run."""
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    proc = ClipProcessing.from_dict(PREPROCESSOR)
    assert (proc.shortest_edge, proc.crop_height, proc.crop_width) == (32, 28, 28)
    ref = CLIPImageProcessorPil(**{k: v for k, v in PREPROCESSOR.items() if k != "image_processor_type"})
    im = np.random.default_rng(2).integers(0, 256, (21, 37, 3), dtype=np.uint8)
    assert torch.equal(clip_preprocess([im], proc)[0], ref(im, return_tensors="pt")["pixel_values"][0])


def test_video_frames_equal_video_llava_image_processor():
    """Video-LLaVA-7B-hf's VideoLlavaImageProcessor (shortest edge 224, crop 224, bicubic) on 8 frames."""
    from transformers import VideoLlavaImageProcessor

    frames = np.random.default_rng(3).integers(0, 256, (8, 48, 64, 3), dtype=np.uint8)
    ref = VideoLlavaImageProcessor()(images=list(frames), return_tensors="pt", return_legacy_image_output=False)
    assert torch.equal(ref["pixel_values"], clip_preprocess(list(frames), ClipProcessing.square(224)))


# -- prompt and tokenization: dataset/conversation.py, common/common.py -----------------------------
def test_prompt_is_eventgpt_v1_with_the_marker_text():
    """dataset/conversation.py: conv_eventgpt_v1 (TWO, sep ' ') and prepare_event_prompt's
    '<ev_start><event><ev_end>\\n' + query; the question is kept as given (no strip)."""
    assert eg.eventgpt_prompt("  Is it wet? ") == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the human's questions. USER: <ev_start><event><ev_end>\n  Is it wet?  "
        "ASSISTANT:")


class RecordingTokenizer:
    """Ids are the text's characters (+1000), BOS 1 first: shows which pieces are tokenized alone."""
    bos_token_id = 1

    def __init__(self):
        self.calls = []

    def __call__(self, text):
        self.calls.append(text)
        return type("Enc", (), {"input_ids": [1] + [1000 + ord(c) for c in text]})()


def test_tokenizer_event_token_tokenizes_each_piece_and_keeps_one_bos():
    """common/common.py tokenizer_event_token: pieces around '<event>' tokenized separately, BOS kept
    once (from the first piece), dropped from the later pieces, -200 in between."""
    tok = RecordingTokenizer()
    ids = eg.tokenizer_event_token(tok, "ab<event>c")
    assert tok.calls == ["ab", "c"]
    assert ids == [1, 1000 + ord("a"), 1000 + ord("b"), -200, 1000 + ord("c")]
    with pytest.raises(ValueError, match="must not contain"):
        eg.event_prompt_ids(tok, "what is <event>?")


# -- the slow tokenizer: transformers 4.37.2 models/llama/tokenization_llama.py ----------------------
@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    train_sentencepiece(d, 340)
    return d


def _with_legacy(d, tmp_path, legacy):
    import shutil

    out = tmp_path / f"legacy-{legacy}"
    shutil.copytree(d, out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    if legacy is None:
        cfg.pop("legacy")
    else:
        cfg["legacy"] = legacy
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    return SentencePieceLlamaTokenizer(out)


def test_slow_tokenizer_legacy_and_added_tokens(sp_dir, tmp_path):
    """4.37.2 LlamaTokenizer: legacy (unset = True) encodes each text piece with the dummy prefix,
    so the text after an added token starts with '▁'; legacy=False does not; BOS is prepended;
    add_tokens gives the next id, len(tokenizer) counts it."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_dir / "tokenizer.model"))
    legacy, new = _with_legacy(sp_dir, tmp_path, None), _with_legacy(sp_dir, tmp_path, False)
    assert legacy.legacy and not new.legacy
    text = "Is there a car here?"
    assert legacy(text).input_ids == [1] + sp.encode(text) == new(text).input_ids
    for tok in (legacy, new):
        assert len(tok) == 340 and tok.add_tokens(["<ev_patch>"], special_tokens=True) == 1
        assert len(tok) == 341 and tok.convert_tokens_to_ids("<ev_patch>") == 340
    after = legacy("car<ev_patch>road").input_ids
    assert after == [1] + sp.encode("car") + [340] + sp.encode("road")          # "▁road"
    plain = sp.encode("road", out_type=str)
    assert plain[0].startswith("▁")
    assert new.tokenize("car<ev_patch>road")[-len(plain):] != plain             # no dummy prefix after it


def test_loader_uses_the_slow_tokenizer_when_the_checkpoint_has_tokenizer_model(tmp_path):
    """inference.py: AutoTokenizer.from_pretrained(path, use_fast=False)."""
    from harness.models.profiles import load_drafter

    ckpt = build_layout("slow-tokenizer", tmp_path / "l") / "checkpoint"
    runner = load_drafter("real", path=ckpt, quant="none")
    assert isinstance(runner.tokenizer, SentencePieceLlamaTokenizer)
    assert runner.tokenizer.convert_tokens_to_ids("<ev_patch>") == len(runner.tokenizer) - 1


# -- vocabulary: inference.py --------------------------------------------------------------------
def test_ev_patch_is_added_and_the_embeddings_resized_to_len_tokenizer(tmp_path):
    """inference.py: add <ev_patch> (mm_use_im_patch_token, default true), <ev_start>/<ev_end> when
    mm_use_im_start_end, then resize_token_embeddings(len(tokenizer)): a checkpoint with more rows
    is cut to len(tokenizer), kept rows unchanged; the markers become single tokens."""
    from safetensors.torch import load_file

    from harness.models.profiles import load_drafter

    base = ensure_tiny_checkpoints()["drafter"]
    tok_len = len(build_tokenizer())
    runner = load_drafter("tiny", quant="none")
    assert runner.model.get_input_embeddings().weight.shape[0] == tok_len + 1 == len(runner.tokenizer)
    ckpt = build_layout("tower-inside", tmp_path / "l") / "checkpoint"
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps(dict(cfg, mm_use_im_start_end=True)))
    runner = load_drafter("real", path=ckpt, quant="none")
    rows = runner.model.get_input_embeddings().weight
    assert rows.shape[0] == len(runner.tokenizer) == tok_len + 3
    sd = load_file(base / "model.safetensors")
    assert torch.equal(rows[:tok_len + 1], sd["model.embed_tokens.weight"])
    assert runner.model.lm_head.weight.shape[0] == tok_len + 3
    ids = eg.event_prompt_ids(runner.tokenizer, "Why?")
    start, end = runner.tokenizer.convert_tokens_to_ids(["<ev_start>", "<ev_end>"])
    i = ids.index(eg.EVENT_TOKEN_INDEX)
    assert ids[i - 1] == start and ids[i + 1] == end


def test_resize_vocab_grows_deterministically_and_shrinks_exactly():
    """resize_token_embeddings semantics: n rows exactly, old rows kept; new rows seeded."""
    cfg = eg.EventChatConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
                             vocab_size=10, vision_config=dict(hidden_size=8, intermediate_size=16,
                             num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14),
                             mm_hidden_size=8, tie_word_embeddings=False)
    models = [eg.EventChatLlamaForCausalLM(cfg) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    old = models[0].get_input_embeddings().weight.detach().clone()
    for m in models:
        eg.resize_vocab(m, 13)
    a, b = (m.get_input_embeddings().weight for m in models)
    assert a.shape == (13, 8) and torch.equal(a[:10], old) and torch.equal(a, b)
    eg.resize_vocab(models[0], 7)
    assert torch.equal(models[0].get_input_embeddings().weight, old[:7])
    assert models[0].lm_head.weight.shape == (7, 8) and models[0].config.vocab_size == 7


# -- visual tokens: model/EventChatModel.py get_spatio_temporal_features --------------------------
@pytest.mark.parametrize("n, tokens", [(1, 578), (5, 582)])
def test_visual_tokens_for_one_and_five_images(n, tokens):
    """T temporal + 577 spatial tokens for CLIP-L/14-336: the seed fork's 1 image gives 578."""
    from harness.models.profiles import eventgpt_config

    cfg = eventgpt_config("7b-shaped", build_tokenizer())
    assert eg.visual_token_count(cfg, n) == tokens


# -- Video-LLaVA ---------------------------------------------------------------------------------
def test_video_llava_templates():
    """LanguageBind/Video-LLaVA-7B-hf model card vs the seed fork (benchmark_parallel_prefill_5stages.py)."""
    from harness.models.videollava import videollava_prompt

    assert videollava_prompt("Why?") == "USER: <video>\nWhy? ASSISTANT:"
    assert videollava_prompt("Why?", "seed") == "USER: <video>\nWhy?\nASSISTANT:"
    with pytest.raises(ValueError, match="template"):
        videollava_prompt("Why?", "chatml")


def test_frames_are_linspace_dtype_int_over_the_clips_frames():
    """np.linspace(0, n - 1, 8, dtype=int) over the n frames inside [t0, t1) (37 here)."""
    from harness.data.video import sample_frame_indices

    times = np.arange(100) * 1000
    idx = sample_frame_indices(times, 10_000, 47_000, 8)
    assert idx.tolist() == (10 + np.linspace(0, 36, 8, dtype=int)).tolist() == [10, 15, 20, 25, 30, 35, 40, 46]


def test_the_spliced_sequence_is_cut_to_2048_positions():
    """model/EventChatModel.py prepare_inputs_labels_for_multimodal: tokenizer_model_max_length = 2048,
    new_input_embeds = x[:2048]."""
    from harness.models.profiles import load_drafter

    runner = load_drafter("tiny", quant="none")
    imgs = [np.full((28, 28, 3), 200, np.uint8)] * 5
    prepared = runner.preprocess(imgs, "car " * 2100)
    assert prepared["input_ids"].shape[1] - 1 + runner.n_visual_tokens > 2048
    with torch.inference_mode():
        assert runner.encode_vision(prepared).shape[1] == eg.MAX_EMBED_LEN == 2048
