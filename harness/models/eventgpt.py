"""EventGPT (the drafter) as a plain transformers model class: no trust_remote_code.

Follows the original repository's model/EventChatModel.py (xifan-zhang/EventGPT, read through the
code index at commit 3c43326):
  - `EventChatConfig(LlamaConfig)`, model_type "EventChat_llama"; `mm_visual_tower` names the CLIP
    tower; `event_feature_adaptor` switches on `feature_adaptor = nn.Linear(4096, 4096)`.
  - `EventChatLlamaModel(LlamaModel)` holds `visual_tower` (a `VisualTower` whose attribute
    `visual_tower` is a CLIPVisionModel), `visual_projector` = Sequential(Linear(1024, 4096), GELU,
    Linear(4096, 4096)) (mlp_depth 2), and `feature_adaptor`.
  - `visval_encode`: `visual_tower.visual_tower(x).last_hidden_state` (CLS kept, no post-layernorm,
    577 x 1024 for ViT-L/14-336) -> `visual_projector`.
  - `prepare_inputs_labels_for_multimodal`: for each event image, visval_encode then
    `feature_adaptor`, then `get_spatio_temporal_features` over the T images: temporal tokens =
    features.mean(dim=1) (T, D), spatial tokens = features.mean(dim=0) (577, D), concatenated
    [temporal, spatial] -> T + 577 tokens, spliced where the prompt holds EVENT_TOKEN_INDEX (-200).
  - Registered as AutoConfig "EventChat_llama" -> AutoModelForCausalLM.
The original hard-codes 1024/4096; here they come from the config (mm_hidden_size, hidden_size) so
the tiny profile can use the same class. The original's `visual_tower` wrapper also builds a
CLIPImageProcessor from the hub; here preprocessing is `clip_pixels` (no download).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel,
                          LlamaConfig, LlamaForCausalLM, LlamaModel)
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from harness.models.base import CausalLMRunner

EVENT_TOKEN = "<event>"
EVENT_TOKEN_INDEX = -200  # the original's sentinel id for the event placeholder (never embedded)
N_EVENT_IMAGES = 5
VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# openai/clip-vit-large-patch14-336: what `mm_visual_tower` names in the original checkpoints,
# whose config.json carries no vision config of its own.
CLIP_L14_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu",
                    layer_norm_eps=1e-5)


class EventChatConfig(LlamaConfig):
    model_type = "EventChat_llama"


def vision_config_of(config) -> CLIPVisionConfig:
    vc = getattr(config, "vision_config", None)
    if vc is None:
        return CLIPVisionConfig(**CLIP_L14_336)
    return CLIPVisionConfig.from_dict(vc) if isinstance(vc, dict) else vc


def tokens_per_image(vision_config) -> int:
    """CLIP ViT tokens per image with the CLS token kept: (S / P)^2 + 1."""
    return (vision_config.image_size // vision_config.patch_size) ** 2 + 1


def visual_token_count(config, n_images: int = N_EVENT_IMAGES) -> int:
    """T temporal + (S/P)^2+1 spatial tokens: 5 + 577 = 582 for CLIP ViT-L/14-336."""
    return n_images + tokens_per_image(vision_config_of(config))


def spatio_temporal_features(features: torch.Tensor) -> torch.Tensor:
    """(T, N, D) per-image features -> (T + N, D): per-image means, then the mean image."""
    if features.ndim != 3:
        raise ValueError(f"expected (T, N, D) event features, got {tuple(features.shape)}")
    return torch.cat([features.mean(dim=1), features.mean(dim=0)], dim=0)


class VisualTower(nn.Module):
    def __init__(self, vision_config: CLIPVisionConfig):
        super().__init__()
        self.visual_tower = CLIPVisionModel(vision_config)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.visual_tower(pixel_values).last_hidden_state


class EventChatLlamaModel(LlamaModel):
    config_class = EventChatConfig

    def __init__(self, config: EventChatConfig):
        super().__init__(config)
        vcfg = vision_config_of(config)
        mm_hidden = getattr(config, "mm_hidden_size", None) or vcfg.hidden_size
        self.visual_tower = VisualTower(vcfg)
        self.visual_projector = nn.Sequential(nn.Linear(mm_hidden, config.hidden_size), nn.GELU(),
                                              nn.Linear(config.hidden_size, config.hidden_size))
        if getattr(config, "event_feature_adaptor", False):
            self.feature_adaptor = nn.Linear(config.hidden_size, config.hidden_size)


class EventChatLlamaForCausalLM(LlamaForCausalLM):
    config_class = EventChatConfig

    def __init__(self, config: EventChatConfig):
        # Skip LlamaForCausalLM.__init__ (it would build a plain LlamaModel first), as the original does.
        LlamaPreTrainedModel.__init__(self, config)
        self.model = EventChatLlamaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def encode_events(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(T, 3, S, S) event images -> (T + N, D) event tokens.

        The original loops image by image; every op before the aggregation is per-image, so one
        batched call gives the same result with one launch sequence instead of T."""
        m = self.model
        tower = m.visual_tower.visual_tower
        feats = m.visual_tower(pixel_values.to(tower.dtype))
        feats = m.visual_projector(feats.to(m.visual_projector[0].weight.dtype))
        if hasattr(m, "feature_adaptor"):
            feats = m.feature_adaptor(feats.to(m.feature_adaptor.weight.dtype))
        return spatio_temporal_features(feats)


AutoConfig.register(EventChatConfig.model_type, EventChatConfig, exist_ok=True)
AutoModelForCausalLM.register(EventChatConfig, EventChatLlamaForCausalLM, exist_ok=True)

_TOWER = "model.visual_tower.visual_tower."


def canonical_key(key: str) -> str:
    """Version-neutral key: transformers >= 5.2x flattened CLIPVisionModel (no `vision_model.`
    level) and converts old keys on load; comparisons strip that level on both sides."""
    if key.startswith(_TOWER + "vision_model."):
        return _TOWER + key[len(_TOWER) + len("vision_model."):]
    return key


def original_key(key: str) -> str:
    """The original EventGPT checkpoint layout (transformers 4.x CLIPVisionModel nesting)."""
    key = canonical_key(key)
    return _TOWER + "vision_model." + key[len(_TOWER):] if key.startswith(_TOWER) else key


# Weights the bitsandbytes quantizer leaves in the compute dtype (see harness.models.quant).
SKIP_QUANT = ["model.visual_tower", "model.visual_projector", "model.feature_adaptor", "lm_head"]


# -- preprocessing shared with Video-LLaVA ------------------------------------------------------------
def clip_pixels(images: np.ndarray | Sequence[np.ndarray], size: int, *, device, dtype,
                mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, size, size): CLIPImageProcessor's resize (shortest side to
    `size`, bicubic), center crop, rescale and normalize, done in torch on `device`.

    Bicubic with antialias matches PIL's resampling closely but not bit-exactly (timing harness)."""
    arr = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) images, got shape {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr)).to(device).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(size * long / short)
    new_hw = (size, new_long) if h <= w else (new_long, size)
    if (h, w) != new_hw:
        x = F.interpolate(x, size=new_hw, mode="bicubic", align_corners=False, antialias=True).clamp_(0, 255)
    top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
    x = x[..., top:top + size, left:left + size] / 255.0
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return ((x - m) / s).to(dtype)


def splice(embeds: torch.Tensor, input_ids: torch.Tensor, marker: int, features: torch.Tensor) -> torch.Tensor:
    """Replace the single `marker` position of (1, L) ids by (N, D) features -> (1, L - 1 + N, D)."""
    pos = (input_ids[0] == marker).nonzero().flatten()
    if pos.numel() != 1:
        raise ValueError(f"expected exactly one placeholder {marker} in the prompt, found {pos.numel()}")
    i = int(pos)
    return torch.cat([embeds[:, :i], features.to(embeds.dtype)[None], embeds[:, i + 1:]], dim=1)


def eventgpt_prompt(question: str) -> str:
    return f"{VICUNA_SYSTEM} USER: {EVENT_TOKEN}\n{question} ASSISTANT:"


def tokenize_with_marker(tokenizer, prompt: str, placeholder: str, marker: int) -> list[int]:
    """The original `tokenizer_event_token`: tokenize around the placeholder, put `marker` between."""
    parts = prompt.split(placeholder)
    if len(parts) != 2:
        raise ValueError(f"prompt must contain {placeholder!r} exactly once")
    head = tokenizer(parts[0]).input_ids
    tail = tokenizer(parts[1], add_special_tokens=False).input_ids
    return head + [marker] + tail


class EventGPTRunner(CausalLMRunner):
    role = "drafter"
    modality = "events"
    window_ms = 50
    n_chunks = N_EVENT_IMAGES

    @property
    def vision_config(self) -> CLIPVisionConfig:
        return vision_config_of(self.config)

    @property
    def n_visual_tokens(self) -> int:
        return visual_token_count(self.config, self.n_chunks)

    def load_inputs(self, sample: Any) -> list[np.ndarray]:
        from harness.data import load_event_images  # the data layer is optional for model-only use

        return load_event_images(sample, window_ms=self.window_ms, n_chunks=self.n_chunks)

    def preprocess(self, raw, question: str) -> dict[str, torch.Tensor]:
        tower_dtype = self.model.model.visual_tower.visual_tower.dtype
        pixels = clip_pixels(raw, self.vision_config.image_size, device=self.device, dtype=tower_dtype)
        ids = tokenize_with_marker(self.tokenizer, eventgpt_prompt(question), EVENT_TOKEN, EVENT_TOKEN_INDEX)
        return {"input_ids": torch.tensor([ids], device=self.device), "pixel_values": pixels}

    @torch.inference_mode()
    def encode_vision(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = prepared["input_ids"]
        text = self.model.get_input_embeddings()(ids.clamp(min=0))  # the marker row is replaced below
        return splice(text, ids, EVENT_TOKEN_INDEX, self._vision(prepared["pixel_values"]))

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_events(pixels)

    def vision_example(self) -> torch.Tensor:
        size = self.vision_config.image_size
        tower = self.model.model.visual_tower.visual_tower
        return torch.zeros(self.n_chunks, 3, size, size, dtype=tower.dtype, device=self.device)
