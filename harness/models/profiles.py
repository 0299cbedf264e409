"""Model profiles, one loading path:

  tiny       random weights (a few M params) saved once as safetensors into the cache, then loaded
             with from_pretrained exactly like a real checkpoint (CI, CPU).
  7b-shaped  real 7B Llama / CLIP-L shapes with random weights, built on the meta device and
             materialized (and NF4-quantized) layer by layer on the GPU, with decisive greedy
             choices (a planted next-token structure, models/decisive.py) so batched verify and
             single-token decode pick the same tokens in bf16 / NF4. Timing only: the tokenizer
             is the project's tiny one (ids < vocab), since token ids, not their meaning, drive cost.
  trained    the default: the tiny architectures trained by ppbench on the embedded scenes
             (models/trained.py), cached and loaded like the tiny checkpoints.
  real       local checkpoint directories (EventGPT-7B in its original key layout, Video-LLaVA-7B-hf).
"""
from __future__ import annotations

from pathlib import Path

import torch
from accelerate import init_empty_weights
from transformers import AutoConfig, AutoTokenizer, VideoLlavaForConditionalGeneration

from harness.errors import ModelLoadError
from harness.models import checkpoint
from harness.models.decisive import plant_next_token_
from harness.models.eventgpt import (N_EVENT_IMAGES, EventChatConfig, EventChatLlamaForCausalLM, EventGPTRunner,
                                     add_event_tokens, resize_vocab)
from harness.models.eventgpt_checkpoint import load_folder_tower_, load_tokenizer, resolve_tower
from harness.models.eventgpt import skip_quant as eventgpt_skip
from harness.models.eventgpt import canonical_key as eg_canonical
from harness.models.quant import bnb_config, check_quant, materialize_, quantize_int4_
from harness.models.shapes import (PLANT_SEED_OFFSET, eventgpt_config, videollava_config,  # noqa: F401 (API)
                                   visual_token_count)
from harness.models.tiny import ensure_tiny_checkpoints
from harness.models.videollava import skip_quant as videollava_skip
from harness.models.videollava import canonical_key as vl_canonical
from harness.models.videollava import DEFAULT_TEMPLATE, VideoLlavaRunner, check_template, drop_image_tower_

PROFILES = ("tiny", "trained", "7b-shaped", "real")

def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    return profile


# -- one loading path per model -------------------------------------------------------------------
def _model_class(which: str):
    if which == "drafter":
        return EventChatLlamaForCausalLM, EventChatConfig.model_type, eventgpt_skip, EventGPTRunner, eg_canonical
    return VideoLlavaForConditionalGeneration, "video_llava", videollava_skip, VideoLlavaRunner, vl_canonical


def load_checkpoint(which: str, path: str | Path, *, device="cpu", quant="nf4", dtype=torch.float32,
                    allow_pickle: bool = False, name: str | None = None, event_images: int = N_EVENT_IMAGES,
                    prompt_template: str = DEFAULT_TEMPLATE):
    """Validate, then from_pretrained: the path every saved checkpoint (tiny or real) takes. The
    drafter's tower, tokenizer and vocabulary follow harness/models/eventgpt_checkpoint.py."""
    check_quant(quant)
    path = Path(path)
    cls, model_type, skip_of, runner_cls, canonical = _model_class(which)
    cfg_dict = checkpoint.read_config(path)
    checkpoint.check_model_type(cfg_dict, model_type, path)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - surface any config parse failure as a load error
        raise ModelLoadError(f"cannot parse config.json: {e}", path=path) from None
    have, is_safe = checkpoint.checkpoint_keys(path, allow_pickle=allow_pickle)
    tower = None
    if which == "drafter":
        tower = resolve_tower(path, cfg_dict, have, allow_pickle=allow_pickle)
        config.vision_config = dict(tower.vision_config.to_dict(), model_type="clip_vision_model")
        have = {canonical(k) for k in have} | tower.folder_keys
    # Checkpoint layouts differ from module names (and between transformers versions), which
    # from_pretrained converts on load; the pre-check compares version-neutral canonical names.
    required, optional = checkpoint.model_keys(cls, config)
    checkpoint.check_keys(path, have, required, optional, canonical)
    skip = skip_of(quant, config)
    kwargs = dict(config=config, dtype=dtype, device_map={"": str(device)}, use_safetensors=is_safe)
    if quant == "nf4":
        kwargs["quantization_config"] = bnb_config(skip)
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    filled = load_folder_tower_(model, tower, allow_pickle=allow_pickle) if tower is not None else set()
    # The pre-check compares names; this catches anything the converter still left unloaded.
    bad = {k: sorted(x for x in info.get(k) or [] if canonical(x) not in filled)
           for k in ("missing_keys", "mismatched_keys")}
    bad = {k: v for k, v in bad.items() if v}
    if bad:
        raise ModelLoadError(f"from_pretrained left weights unloaded: {bad}", path=path)
    if which == "target" and drop_image_tower_(model) and torch.cuda.is_available():
        torch.cuda.empty_cache()          # the freed tower's pages back to the device
    if quant == "int4":        # loaded in `dtype`, then converted layer by layer (models/quant.py)
        quantize_int4_(model, skip)
    if which == "drafter":
        tokenizer = load_tokenizer(path)
        add_event_tokens(tokenizer, config)
        resize_vocab(model, len(tokenizer))  # inference.py: model.resize_token_embeddings(len(tokenizer))
        runner = runner_cls(model, tokenizer, name=name or f"{which}:{path.name}")
        runner.n_chunks = check_event_images(event_images)
        runner.processing = tower.processing
        runner.tower_source = tower.describe()
        return runner
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load tokenizer: {e}", path=path) from None
    runner = runner_cls(model, tokenizer, name=name or f"{which}:{path.name}")
    runner.prompt_template = check_template(prompt_template)
    runner.configure_processing(path)
    return runner


def check_event_images(n: int) -> int:
    from harness.data.event_images import EVENT_IMAGE_CHOICES

    if int(n) not in EVENT_IMAGE_CHOICES:
        raise ValueError(f"event images must be one of {EVENT_IMAGE_CHOICES}, got {n!r}")
    return int(n)


def build_shaped(which: str, *, device="cuda", quant="nf4", dtype=torch.bfloat16, cache_dir=None, seed=0,
                 event_images: int = N_EVENT_IMAGES, prompt_template: str = DEFAULT_TEMPLATE):
    """7B-shaped random model, materialized tensor by tensor on `device` (see quant.materialize_)."""
    check_quant(quant)
    tokenizer = load_tokenizer(ensure_tiny_checkpoints(cache_dir)["tokenizer"])
    cls, _, skip_of, runner_cls, _ = _model_class(which)
    config = (eventgpt_config if which == "drafter" else videollava_config)("7b-shaped", tokenizer)
    skip = skip_of(quant, config)
    with init_empty_weights(include_buffers=False):
        model = cls(config)
    if which == "target":
        drop_image_tower_(model)          # never materialized
    materialize_(model, device=device, dtype=dtype, quant=quant, skip_modules=skip, seed=seed)
    plant_next_token_(model, seed=seed + PLANT_SEED_OFFSET[which])   # decisive greedy choices
    runner = runner_cls(model, tokenizer, name=f"{which}:7b-shaped")
    if which == "drafter":
        runner.n_chunks = check_event_images(event_images)
    else:
        runner.prompt_template = check_template(prompt_template)
    return runner


def _load(which: str, profile: str, *, device, quant, dtype, path, cache_dir, allow_pickle,
          event_images=N_EVENT_IMAGES, prompt_template=DEFAULT_TEMPLATE):
    check_profile(profile)
    opts = dict(event_images=event_images, prompt_template=prompt_template)
    if profile == "7b-shaped":
        return build_shaped(which, device=device, quant=quant, dtype=dtype, cache_dir=cache_dir, **opts)
    if profile == "tiny":
        path = ensure_tiny_checkpoints(cache_dir)["drafter" if which == "drafter" else "target"]
    elif profile == "trained":
        from harness.models.trained import ensure_trained_checkpoints

        path = ensure_trained_checkpoints(cache_dir)["drafter" if which == "drafter" else "target"]
    elif path is None:
        raise ModelLoadError(f"profile 'real' needs a local checkpoint path for the {which}")
    return load_checkpoint(which, path, device=device, quant=quant, dtype=dtype, allow_pickle=allow_pickle,
                           name=f"{which}:{profile}", **opts)


def load_drafter(profile: str = "tiny", *, device="cpu", quant="nf4", dtype=torch.float32, path=None,
                 cache_dir=None, allow_pickle: bool = False, event_images: int = N_EVENT_IMAGES) -> EventGPTRunner:
    return _load("drafter", profile, device=device, quant=quant, dtype=dtype, path=path, cache_dir=cache_dir,
                 allow_pickle=allow_pickle, event_images=event_images)


def load_target(profile: str = "tiny", *, device="cpu", quant="nf4", dtype=torch.float32, path=None,
                cache_dir=None, allow_pickle: bool = False, prompt_template: str = DEFAULT_TEMPLATE) -> VideoLlavaRunner:
    return _load("target", profile, device=device, quant=quant, dtype=dtype, path=path, cache_dir=cache_dir,
                 allow_pickle=allow_pickle, prompt_template=prompt_template)


# Static-cache sizing: visual tokens + prompt text + generated tokens + the engine's largest
# overshoot (a hidden block of up to 64 drafts verified in one step, or a gamma-8 block). The text
# is the run's longest question in each model's template when the run's questions are known, else
# TEXT_TOKEN_BUDGET.
TEXT_TOKEN_BUDGET = 192
ENGINE_OVERSHOOT = 64 + 8 + 2


def static_cache_len(runner, max_new_tokens: int, text_tokens: int = TEXT_TOKEN_BUDGET) -> int:
    n_visual = int(getattr(runner, "n_visual_tokens", 0) or 0)
    need = n_visual + int(text_tokens) + int(max_new_tokens) + ENGINE_OVERSHOOT
    return -(-need // 128) * 128


def text_token_range(runner, questions=()) -> tuple[int, int]:
    """(fewest, most) prompt tokens besides the visual ones over the run's questions in this
    runner's template; (1, TEXT_TOKEN_BUDGET) when they are unknown."""
    count = getattr(runner, "prompt_text_tokens", None)
    if not questions or count is None:
        return 1, TEXT_TOKEN_BUDGET
    lengths = [count(q) for q in questions]
    return min(lengths), max(lengths)


def configure_decode(runners, impl: str = "auto", *, max_new_tokens: int = 50,
                     cache_len: int | None = None, questions=()) -> dict:
    """Sets every runner's decode implementation (models/static_decode.py); returns, per runner
    role, what was set up (impl, cache length and bytes, graph capture time, the text tokens the
    cache was sized for). Graphs are captured here, at load time, never inside a timed region;
    prefill graphs cover every prompt of the visual tokens plus the text of the run's `questions`
    (text_token_range), so a static cache and its graphs are sized from the run."""
    out = {}
    for r in runners:
        n_visual = int(getattr(r, "n_visual_tokens", 0) or 0)
        lo, hi = text_token_range(r, questions)
        out[r.role] = r.use_decode_impl(impl, max_len=cache_len or static_cache_len(r, max_new_tokens, hi),
                                        prompt_tokens=(n_visual + lo, n_visual + hi))
        if out[r.role].get("decode_impl") != "hf":
            out[r.role]["text_tokens"] = [lo, hi]
    return out


def load_pair(profile: str = "tiny", *, device="cpu", quant="nf4", dtype=torch.float32, drafter_path=None,
              target_path=None, cache_dir=None, allow_pickle: bool = False, event_images: int = N_EVENT_IMAGES,
              prompt_template: str = DEFAULT_TEMPLATE):
    """(drafter_runner, target_runner) for a profile; both on the same device, quant and dtype."""
    drafter = load_drafter(profile, device=device, quant=quant, dtype=dtype, path=drafter_path,
                           cache_dir=cache_dir, allow_pickle=allow_pickle, event_images=event_images)
    target = load_target(profile, device=device, quant=quant, dtype=dtype, path=target_path,
                         cache_dir=cache_dir, allow_pickle=allow_pickle, prompt_template=prompt_template)
    return drafter, target
