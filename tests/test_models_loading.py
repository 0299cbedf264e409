"""Checkpoint loading: real formats on tiny checkpoints, typed errors on bad ones, NF4 on CPU."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from safetensors.torch import load_file, save_file
from transformers import VideoLlavaForConditionalGeneration
from transformers.quantizers.base import get_keys_to_not_convert

from harness.models.tiny import build_tokenizer, ensure_tiny_checkpoints
from harness.errors import ModelLoadError
from harness.models import eventgpt as eg
from harness.models import videollava as vl
from harness.models.profiles import load_checkpoint, load_drafter, load_pair, load_target, videollava_config

FEATURE_ADAPTOR = ("model.feature_adaptor.weight", "model.feature_adaptor.bias")


@pytest.fixture(scope="module")
def paths():
    return ensure_tiny_checkpoints()


def copy_ckpt(src, dst, edit=None):
    shutil.copytree(src, dst)
    if edit is not None:
        sd = load_file(dst / "model.safetensors")
        edit(sd)
        save_file(sd, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


@pytest.mark.parametrize("which", ["drafter", "target"])
def test_loaded_weights_equal_the_checkpoint_tensors(paths, which):
    runner = (load_drafter if which == "drafter" else load_target)("tiny", quant="none")
    layout = eg.original_key if which == "drafter" else vl.hub_key
    sd = load_file(paths[which] / "model.safetensors")
    state = runner.model.state_dict()
    # the target's image tower is dropped at load (video input never reaches it); all else is loaded
    dropped = {k for k in sd if k.startswith("image_tower.")} if which == "target" else set()
    assert {layout(k) for k in state} == set(sd) - dropped and (which == "drafter" or dropped)
    for k, v in state.items():
        assert torch.equal(sd[layout(k)], v), k


def test_missing_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist") as e:
        load_drafter("real", path=tmp_path / "nope")
    assert e.value.path == str(tmp_path / "nope")


def test_real_profile_needs_a_path():
    with pytest.raises(ModelLoadError, match="needs a local checkpoint path"):
        load_target("real")


def test_missing_feature_adaptor_is_named(paths, tmp_path):
    bad = copy_ckpt(paths["drafter"], tmp_path / "eg", lambda sd: [sd.pop(k) for k in FEATURE_ADAPTOR])
    with pytest.raises(ModelLoadError, match="missing weights") as e:
        load_drafter("real", path=bad, quant="none")
    assert all(k in str(e.value) for k in FEATURE_ADAPTOR) and str(bad) in str(e.value)


def test_unexpected_weights_are_listed(paths, tmp_path):
    bad = copy_ckpt(paths["target"], tmp_path / "vl", lambda sd: sd.update(extra_head=torch.zeros(2)))
    with pytest.raises(ModelLoadError, match="unexpected weights.*extra_head"):
        load_target("real", path=bad, quant="none")


def test_checks_run_before_the_model_is_built(paths, tmp_path, monkeypatch):
    bad = copy_ckpt(paths["drafter"], tmp_path / "eg", lambda sd: sd.pop("lm_head.weight"))

    def boom(*a, **k):
        raise AssertionError("from_pretrained must not run on a checkpoint that fails validation")

    monkeypatch.setattr(eg.EventChatLlamaForCausalLM, "from_pretrained", boom)
    with pytest.raises(ModelLoadError, match="lm_head.weight"):
        load_drafter("real", path=bad, quant="none")


def test_wrong_model_type(paths, tmp_path):
    with pytest.raises(ModelLoadError, match="wrong model_type 'video_llava'"):
        load_drafter("real", path=paths["target"])
    bad = copy_ckpt(paths["drafter"], tmp_path / "eg")
    cfg = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(dict(cfg, model_type="llama")))
    with pytest.raises(ModelLoadError, match="wrong model_type 'llama'.*EventChat_llama"):
        load_drafter("real", path=bad)


def test_missing_or_broken_config(paths, tmp_path):
    bad = copy_ckpt(paths["target"], tmp_path / "vl")
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_target("real", path=bad)
    (bad / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json missing"):
        load_target("real", path=bad)


def test_truncated_safetensors_header(paths, tmp_path):
    bad = copy_ckpt(paths["drafter"], tmp_path / "eg")
    (bad / "model.safetensors").write_bytes(b"\x10\x00")
    with pytest.raises(ModelLoadError, match="unreadable safetensors header"):
        load_drafter("real", path=bad)


def test_pickle_checkpoint_refused_unless_allowed(paths, tmp_path):
    bad = copy_ckpt(paths["drafter"], tmp_path / "eg")
    sd = load_file(bad / "model.safetensors")
    (bad / "model.safetensors").unlink()
    torch.save(sd, bad / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle.*ppbench checkpoint convert.*--allow-pickle") as e:
        load_drafter("real", path=bad, quant="none")
    assert "pytorch_model.bin" in str(e.value)
    runner = load_drafter("real", path=bad, quant="none", allow_pickle=True)
    assert torch.equal(runner.model.lm_head.weight, sd["lm_head.weight"])


def test_no_weights_at_all(paths, tmp_path):
    bad = copy_ckpt(paths["drafter"], tmp_path / "eg")
    (bad / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="no weights found"):
        load_drafter("real", path=bad)


def test_unknown_profile_and_quant():
    with pytest.raises(ValueError, match="profile"):
        load_drafter("huge")
    with pytest.raises(ValueError, match="quant"):
        load_drafter("tiny", quant="int3")


def test_nf4_target_quantizes_what_the_seed_load_quantized():
    """The seed loaded Video-LLaVA through transformers with a BitsAndBytesConfig naming no skip
    modules, so every linear but the output head is NF4, towers and projector included: the 7B
    target's NF4 skip list is exactly transformers' own choice. The drafter keeps its tower, projector
    and adaptor in bf16 (EventGPT builds its CLIP tower apart); int4 quantizes language models only."""
    cfg = videollava_config("7b-shaped", build_tokenizer())
    with init_empty_weights():
        model = VideoLlavaForConditionalGeneration(cfg)
    assert vl.skip_quant("nf4", cfg) == get_keys_to_not_convert(model) == ["lm_head"]
    assert {"model.video_tower", "model.multi_modal_projector"} <= set(vl.skip_quant("int4", cfg))
    assert "model.visual_tower" in eg.skip_quant("nf4", None)


def test_nf4_on_cpu_quantizes_the_language_models_of_the_tiny_pair(paths):
    """Tiny towers (32 wide) are narrower than one NF4 block, which bitsandbytes' CPU kernels need,
    so in the tiny pair only the language models' linears are NF4; the rest stays in the compute dtype."""
    import bitsandbytes as bnb

    full = load_pair("tiny", quant="none", dtype=torch.float32)
    nf4 = load_pair("tiny", quant="nf4", dtype=torch.float32)
    rng = np.random.default_rng(0)
    raw = {"events": [rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for _ in range(5)],
           "video": rng.integers(0, 256, (8, 30, 40, 3), dtype=np.uint8)}
    for r_full, r in zip(full, nf4):
        linears = {n: type(m) for n, m in r.model.named_modules() if isinstance(m, torch.nn.Linear)}
        quantized = {n for n, t in linears.items() if issubclass(t, bnb.nn.Linear4bit)}
        assert quantized and all(".layers." in n and "tower" not in n for n in quantized)
        kept = set(linears) - quantized
        assert any("projector" in n for n in kept) and "lm_head" in kept
        w = next(m for n, m in r.model.named_modules() if n in quantized).weight
        assert w.quant_type == "nf4" and w.quant_state.nested  # double quant
        assert r.memory_footprint() < r_full.memory_footprint()
        prepared = r.preprocess(raw[r.modality], "Is the road wet?")
        cache, logits = r.prefill(r.encode_vision(prepared))
        assert torch.isfinite(logits).all()
        _, ref = r_full.prefill(r_full.encode_vision(r_full.preprocess(raw[r.modality], "Is the road wet?")))
        # 4-bit weights change values but the logits stay close to the fp32 model's
        assert torch.corrcoef(torch.stack([logits, ref]))[0, 1] > 0.9


def test_video_llava_token_count_is_2056_without_weights():
    cfg = videollava_config("7b-shaped", build_tokenizer())
    assert vl.visual_token_count(cfg) == 8 * 257 == 2056 == cfg.video_seq_length
    assert cfg.vision_config.image_size == 224 and cfg.vision_feature_layer == -2
    assert cfg.text_config.hidden_size == 4096 and cfg.text_config.vocab_size == 32064


def test_video_llava_encode_vision_shapes_on_meta():
    from transformers import VideoLlavaForConditionalGeneration

    tok = build_tokenizer()
    cfg = videollava_config("7b-shaped", tok)
    with torch.device("meta"):
        model = VideoLlavaForConditionalGeneration(cfg)
    runner = vl.VideoLlavaRunner(model, tok)
    ids = runner.tokenizer(vl.videollava_prompt("How many cars?")).input_ids
    ids = vl.expand_placeholder(ids, vl.video_token_id(cfg), runner.n_visual_tokens)
    prepared = {"input_ids": torch.tensor([ids], device="meta"),
                "pixel_values_videos": torch.empty(1, 8, 3, 224, 224, device="meta")}
    inner = runner.model.model
    out = inner.video_tower(prepared["pixel_values_videos"].flatten(0, 1), output_hidden_states=True)
    feats = inner.multi_modal_projector(out.hidden_states[cfg.vision_feature_layer])
    assert feats.shape == (8, 257, 4096) and len(ids) == len(runner.tokenizer(
        vl.videollava_prompt("How many cars?")).input_ids) - 1 + 2056


def test_the_target_loads_without_its_image_tower_and_transformers_forward_still_agrees(paths):
    """Video input never reaches Video-LLaVA's image tower, so the loaded target holds none of its
    weights (from a checkpoint and at 7B shapes on meta), and transformers' own forward of the
    video prompt still gives the runner's prefill logits (tiny, fp32)."""
    from transformers import VideoLlavaForConditionalGeneration

    runner = load_target("tiny", quant="none")
    assert runner.model.model.image_tower is None
    assert not [n for n, _ in runner.model.named_parameters() if "image_tower" in n]
    frames = np.random.default_rng(0).integers(0, 256, (8, 36, 64, 3), dtype=np.uint8)
    prepared = runner.preprocess(frames, "Where is the cyclist going?")
    _, ours = runner.prefill(runner.encode_vision(prepared))
    with torch.inference_mode():
        theirs = runner.model(input_ids=prepared["input_ids"], pixel_values_videos=prepared["pixel_values_videos"],
                              use_cache=False).logits[0, -1].float()
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)

    cfg = videollava_config("7b-shaped", build_tokenizer())
    with torch.device("meta"):
        model = VideoLlavaForConditionalGeneration(cfg)
    n_params = sum(p.numel() for p in model.parameters())
    tower = sum(p.numel() for p in model.model.image_tower.parameters())
    assert vl.drop_image_tower_(model) == 0            # nothing materialized on meta
    assert sum(p.numel() for p in model.parameters()) == n_params - tower and tower > 3e8


def test_video_prompt_and_placeholder_expansion(paths):
    runner = load_target("tiny", quant="none")
    frames = np.random.default_rng(0).integers(0, 256, (8, 36, 64, 3), dtype=np.uint8)
    prepared = runner.preprocess(frames, "Where is the cyclist going?")
    ids = prepared["input_ids"][0].tolist()
    vid = vl.video_token_id(runner.config)
    assert ids.count(vid) == runner.n_visual_tokens == 40
    assert runner.tokenizer.decode([t for t in ids if t != vid], skip_special_tokens=True).replace(" ", "") == \
        "USER:\nWhereisthecyclistgoing?ASSISTANT:"
    assert prepared["pixel_values_videos"].shape == (1, 8, 3, 28, 28)
    embeds = runner.encode_vision(prepared)
    assert embeds.shape == (1, len(ids), 64)
    with pytest.raises(ValueError, match="expected one video token"):
        vl.expand_placeholder([1, 2, 3], vid, 4)


def test_tiny_build_is_deterministic(paths, tmp_path):
    fresh = ensure_tiny_checkpoints(tmp_path)
    for which in ("drafter", "target"):
        assert (fresh[which] / "model.safetensors").read_bytes() == (paths[which] / "model.safetensors").read_bytes()
    stamp = (fresh["drafter"] / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_checkpoints(tmp_path) == fresh  # second call reuses the marker-complete cache
    assert (fresh["drafter"] / "model.safetensors").stat().st_mtime_ns == stamp
