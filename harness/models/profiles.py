"""Model profiles, one loading path:

  tiny       random weights (a few M params) saved once as safetensors into the cache, then loaded
             with from_pretrained exactly like a real checkpoint (CI, CPU).
  7b-shaped  real 7B Llama / CLIP-L shapes with random weights, built on the meta device and
             materialized (and NF4-quantized) layer by layer on the GPU, with decisive greedy
             choices (a planted next-token structure, models/decisive.py) so batched verify and
             single-token decode pick the same tokens in bf16 / NF4. Timing only: the tokenizer
             is the project's tiny one (ids < vocab), since token ids, not their meaning, drive cost.
  trained    the tiny architectures trained by ppbench on the embedded scenes (models/trained.py),
             cached and loaded like the tiny checkpoints.
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
from harness.models.eventgpt import EventChatConfig, EventChatLlamaForCausalLM, EventGPTRunner
from harness.models.eventgpt import SKIP_QUANT as EVENTGPT_SKIP
from harness.models.eventgpt import canonical_key as eg_canonical
from harness.models.quant import bnb_config, check_quant, materialize_, quantize_int4_
from harness.models.shapes import (PLANT_SEED_OFFSET, eventgpt_config, videollava_config,  # noqa: F401 (API)
                                   visual_token_count)
from harness.models.tiny import ensure_tiny_checkpoints, load_tokenizer
from harness.models.videollava import SKIP_QUANT as VIDEOLLAVA_SKIP
from harness.models.videollava import canonical_key as vl_canonical
from harness.models.videollava import VideoLlavaRunner

PROFILES = ("tiny", "trained", "7b-shaped", "real")

def check_profile(profile: str) -> str:
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    return profile


# -- one loading path per model -------------------------------------------------------------------
def _model_class(which: str):
    if which == "drafter":
        return EventChatLlamaForCausalLM, EventChatConfig.model_type, EVENTGPT_SKIP, EventGPTRunner, eg_canonical
    return VideoLlavaForConditionalGeneration, "video_llava", VIDEOLLAVA_SKIP, VideoLlavaRunner, vl_canonical


def load_checkpoint(which: str, path: str | Path, *, device="cpu", quant="nf4", dtype=torch.float32,
                    allow_pickle: bool = False, name: str | None = None):
    """Validate, then from_pretrained: the path every saved checkpoint (tiny or real) takes."""
    check_quant(quant)
    path = Path(path)
    cls, model_type, skip, runner_cls, canonical = _model_class(which)
    cfg_dict = checkpoint.read_config(path)
    checkpoint.check_model_type(cfg_dict, model_type, path)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - surface any config parse failure as a load error
        raise ModelLoadError(f"cannot parse config.json: {e}", path=path) from None
    # Checkpoint layouts differ from module names (and between transformers versions), which
    # from_pretrained converts on load; the pre-check compares version-neutral canonical names.
    is_safe = checkpoint.validate_checkpoint(path, cls, config, model_type=model_type, allow_pickle=allow_pickle,
                                             rename=canonical)
    kwargs = dict(config=config, dtype=dtype, device_map={"": str(device)}, use_safetensors=is_safe)
    if quant == "nf4":
        kwargs["quantization_config"] = bnb_config(skip)
    model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    # The pre-check compares names; this catches anything the converter still left unloaded.
    bad = {k: sorted(info.get(k) or []) for k in ("missing_keys", "mismatched_keys") if info.get(k)}
    if bad:
        raise ModelLoadError(f"from_pretrained left weights unloaded: {bad}", path=path)
    if quant == "int4":        # loaded in `dtype`, then converted layer by layer (models/quant.py)
        quantize_int4_(model, skip)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        raise ModelLoadError(f"cannot load tokenizer: {e}", path=path) from None
    return runner_cls(model, tokenizer, name=name or f"{which}:{path.name}")


def build_shaped(which: str, *, device="cuda", quant="nf4", dtype=torch.bfloat16, cache_dir=None, seed=0):
    """7B-shaped random model, materialized tensor by tensor on `device` (see quant.materialize_)."""
    check_quant(quant)
    tokenizer = load_tokenizer(ensure_tiny_checkpoints(cache_dir)["tokenizer"])
    cls, _, skip, runner_cls, _ = _model_class(which)
    config = (eventgpt_config if which == "drafter" else videollava_config)("7b-shaped", tokenizer)
    with init_empty_weights(include_buffers=False):
        model = cls(config)
    materialize_(model, device=device, dtype=dtype, quant=quant, skip_modules=skip, seed=seed)
    plant_next_token_(model, seed=seed + PLANT_SEED_OFFSET[which])   # decisive greedy choices
    return runner_cls(model, tokenizer, name=f"{which}:7b-shaped")


def _load(which: str, profile: str, *, device, quant, dtype, path, cache_dir, allow_pickle):
    check_profile(profile)
    if profile == "7b-shaped":
        return build_shaped(which, device=device, quant=quant, dtype=dtype, cache_dir=cache_dir)
    if profile == "tiny":
        path = ensure_tiny_checkpoints(cache_dir)["drafter" if which == "drafter" else "target"]
    elif profile == "trained":
        from harness.models.trained import ensure_trained_checkpoints

        path = ensure_trained_checkpoints(cache_dir)["drafter" if which == "drafter" else "target"]
    elif path is None:
        raise ModelLoadError(f"profile 'real' needs a local checkpoint path for the {which}")
    return load_checkpoint(which, path, device=device, quant=quant, dtype=dtype, allow_pickle=allow_pickle,
                           name=f"{which}:{profile}")


def load_drafter(profile: str = "tiny", *, device="cpu", quant="nf4", dtype=torch.float32, path=None,
                 cache_dir=None, allow_pickle: bool = False) -> EventGPTRunner:
    return _load("drafter", profile, device=device, quant=quant, dtype=dtype, path=path, cache_dir=cache_dir,
                 allow_pickle=allow_pickle)


def load_target(profile: str = "tiny", *, device="cpu", quant="nf4", dtype=torch.float32, path=None,
                cache_dir=None, allow_pickle: bool = False) -> VideoLlavaRunner:
    return _load("target", profile, device=device, quant=quant, dtype=dtype, path=path, cache_dir=cache_dir,
                 allow_pickle=allow_pickle)


# Static-cache sizing: visual tokens + prompt text + generated tokens + the engine's largest
# overshoot (a hidden block of up to 64 drafts verified in one step, or a gamma-8 block).
TEXT_TOKEN_BUDGET = 192
ENGINE_OVERSHOOT = 64 + 8 + 2


def static_cache_len(runner, max_new_tokens: int) -> int:
    n_visual = int(getattr(runner, "n_visual_tokens", 0) or 0)
    need = n_visual + TEXT_TOKEN_BUDGET + int(max_new_tokens) + ENGINE_OVERSHOOT
    return -(-need // 128) * 128


def configure_decode(runners, impl: str = "auto", *, max_new_tokens: int = 50,
                     cache_len: int | None = None) -> dict:
    """Sets every runner's decode implementation (models/static_decode.py); returns, per runner
    role, what was set up (impl, cache length and bytes, graph capture time). Graphs are captured
    here, at load time, never inside a timed region; prefill graphs cover every prompt of the
    visual tokens plus up to TEXT_TOKEN_BUDGET text tokens."""
    def prompt_tokens(r):
        n_visual = int(getattr(r, "n_visual_tokens", 0) or 0)
        return n_visual + 1, n_visual + TEXT_TOKEN_BUDGET

    return {r.role: r.use_decode_impl(impl, max_len=cache_len or static_cache_len(r, max_new_tokens),
                                      prompt_tokens=prompt_tokens(r))
            for r in runners}


def load_pair(profile: str = "tiny", *, device="cpu", quant="nf4", dtype=torch.float32, drafter_path=None,
              target_path=None, cache_dir=None, allow_pickle: bool = False):
    """(drafter_runner, target_runner) for a profile; both on the same device, quant and dtype."""
    drafter = load_drafter(profile, device=device, quant=quant, dtype=dtype, path=drafter_path,
                           cache_dir=cache_dir, allow_pickle=allow_pickle)
    target = load_target(profile, device=device, quant=quant, dtype=dtype, path=target_path,
                         cache_dir=cache_dir, allow_pickle=allow_pickle)
    return drafter, target
