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
the tiny profile can use the same class. What goes into the model follows the original exactly
(XduSyL/EventGPT at 4ac9461; tests/test_eventgpt_inputs.py checks each rule):
  - prompt (dataset/conversation.py, `eventgpt_v1` + `prepare_event_prompt`):
    "{system} USER: <ev_start><event><ev_end>\n{question} ASSISTANT:"; tokenized by
    `tokenizer_event_token` (common/common.py): each piece around <event> tokenized on its own, the
    later pieces' BOS dropped, EVENT_TOKEN_INDEX in between;
  - vocabulary (inference.py): `<ev_patch>` added as a special token when `mm_use_im_patch_token`
    (default true), `<ev_start>` / `<ev_end>` when `mm_use_im_start_end` (default false), then the
    embeddings and lm_head resized to len(tokenizer) (`resize_vocab`);
  - event images: harness/data/event_images.py; pixels: `CLIPImageProcessor` of the tower folder
    (harness/models/image_processing.py), each image on its own;
  - the tower comes from the checkpoint or from the `mm_visual_tower` folder
    (harness/models/eventgpt_checkpoint.py).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import (AutoConfig, AutoModelForCausalLM, CLIPVisionConfig, CLIPVisionModel,
                          LlamaConfig, LlamaForCausalLM, LlamaModel)
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel

from harness.models.base import CausalLMRunner
from harness.models.image_processing import ClipProcessing, clip_preprocess

EVENT_TOKEN = "<event>"
EVENT_TOKEN_INDEX = -200  # the original's sentinel id for the event placeholder (never embedded)
EV_START, EV_END, EV_PATCH = "<ev_start>", "<ev_end>", "<ev_patch>"  # dataset/constants.py
N_EVENT_IMAGES = 5
MAX_EMBED_LEN = 2048  # prepare_inputs_labels_for_multimodal cuts the spliced sequence to 2048 (hard-coded)
VICUNA_SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
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
        if hasattr(config, "event_feature_adaptor"):  # the original tests presence, not truth
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
        return spatio_temporal_features(self.event_image_features(pixel_values))

    def event_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(T, 3, S, S) event images -> (T, N, D) per-image features (tower, projector, adaptor)."""
        m = self.model
        tower = m.visual_tower.visual_tower
        feats = m.visual_tower(pixel_values.to(tower.dtype))
        feats = m.visual_projector(feats.to(m.visual_projector[0].weight.dtype))
        if hasattr(m, "feature_adaptor"):
            feats = m.feature_adaptor(feats.to(m.feature_adaptor.weight.dtype))
        return feats


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


# Modules each precision leaves in the compute dtype (see harness.models.quant). The EventGPT authors'
# code builds the CLIP tower itself (CLIPVisionModel.from_pretrained in bf16, model/EventChatModel.py),
# apart from the language model's checkpoint, so the tower, projector and adaptor stay bf16.
_DRAFTER_SKIP = ["model.visual_tower", "model.visual_projector", "model.feature_adaptor", "lm_head"]
SKIP_QUANT = {"nf4": _DRAFTER_SKIP, "int4": _DRAFTER_SKIP}


def skip_quant(quant: str, config) -> list[str]:
    return SKIP_QUANT.get(quant, [])


def splice(embeds: torch.Tensor, input_ids: torch.Tensor, marker: int, features: torch.Tensor) -> torch.Tensor:
    """Replace the single `marker` position of (1, L) ids by (N, D) features -> (1, L - 1 + N, D)."""
    pos = (input_ids[0] == marker).nonzero().flatten()
    if pos.numel() != 1:
        raise ValueError(f"expected exactly one placeholder {marker} in the prompt, found {pos.numel()}")
    i = int(pos)
    return torch.cat([embeds[:, :i], features.to(embeds.dtype)[None], embeds[:, i + 1:]], dim=1)


def eventgpt_prompt(question: str) -> str:
    """dataset/conversation.py: conv_eventgpt_v1 (SeparatorStyle.TWO, sep " ") with the user message
    `<ev_start><event><ev_end>\n{question}` (prepare_event_prompt) and an empty assistant turn."""
    return f"{VICUNA_SYSTEM} USER: {EV_START}{EVENT_TOKEN}{EV_END}\n{question} ASSISTANT:"


def tokenizer_event_token(tokenizer, prompt: str, marker: int = EVENT_TOKEN_INDEX,
                          placeholder: str = EVENT_TOKEN) -> list[int]:
    """common/common.py `tokenizer_event_token`: every piece of the prompt around `placeholder` is
    tokenized on its own (with special tokens); when the first piece starts with BOS, BOS is kept
    once and dropped from every later piece; `marker` goes between the pieces."""
    chunks = [tokenizer(c).input_ids for c in prompt.split(placeholder)]
    out: list[int] = []
    offset = 0
    if chunks and chunks[0] and chunks[0][0] == tokenizer.bos_token_id:
        offset = 1
        out.append(chunks[0][0])
    for i, chunk in enumerate(chunks):
        if i:
            out.append(marker)  # the separator [marker] * (offset + 1), sliced [offset:] like every piece
        out.extend(chunk[offset:])
    return out


def event_prompt_ids(tokenizer, question: str) -> list[int]:
    """The drafter's prompt ids; a question that itself holds '<event>' is refused (the original
    would splice a second, non-existent event feature there)."""
    if EVENT_TOKEN in question:
        raise ValueError(f"the question must not contain {EVENT_TOKEN!r}: {question!r}")
    return tokenizer_event_token(tokenizer, eventgpt_prompt(question))


def add_event_tokens(tokenizer, config) -> list[str]:
    """inference.py: <ev_patch> when mm_use_im_patch_token (default true), <ev_start>/<ev_end> when
    mm_use_im_start_end (default false), as special tokens. Returns the tokens it asked for."""
    wanted = []
    if getattr(config, "mm_use_im_patch_token", True):
        wanted.append([EV_PATCH])
    if getattr(config, "mm_use_im_start_end", False):
        wanted.append([EV_START, EV_END])
    for tokens in wanted:
        tokenizer.add_tokens(tokens, special_tokens=True)
    return [t for ts in wanted for t in ts]


def resize_vocab(model, n: int, *, seed: int = 0) -> int:
    """`model.resize_token_embeddings(n)` as inference.py calls it with n = len(tokenizer): embeddings
    and lm_head get exactly n rows (kept rows copied, extra rows dropped). Rows the original adds are
    drawn from normal(0, initializer_range), as transformers 4.37.2's `_init_weights` does, but from
    a fixed seed (the original's are unseeded). Returns the old row count."""
    emb = model.get_input_embeddings()
    old, dim = emb.weight.shape
    if n == old:
        return old
    gen = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config, "initializer_range", 0.02))

    def grown(w: torch.Tensor) -> torch.Tensor:
        keep = w.detach()[:min(old, n)]
        if n <= old:
            return keep.clone()
        extra = (torch.randn(n - old, w.shape[1], generator=gen) * std).to(device=w.device, dtype=w.dtype)
        return torch.cat([keep, extra])

    new_emb = nn.Embedding(n, dim, device=emb.weight.device, dtype=emb.weight.dtype)
    new_emb.weight.data = grown(emb.weight)
    model.set_input_embeddings(new_emb)
    head = model.get_output_embeddings()
    if head is not None and head.weight is not emb.weight:
        new_head = nn.Linear(dim, n, bias=False, device=head.weight.device, dtype=head.weight.dtype)
        new_head.weight.data = grown(head.weight)
        model.set_output_embeddings(new_head)
    model.config.vocab_size = n
    model.vocab_size = n
    return old


class EventGPTRunner(CausalLMRunner):
    role = "drafter"
    modality = "events"
    window_ms = 50
    n_chunks = N_EVENT_IMAGES        # event images per sample (--event-images 1|5)
    processing = ClipProcessing.square(336)  # the tower's CLIPImageProcessor settings (loader sets it)

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
        pixels = clip_preprocess(raw, self.processing, device=self.device, dtype=tower_dtype)
        ids = event_prompt_ids(self.tokenizer, question)
        return {"input_ids": torch.tensor([ids], device=self.device), "pixel_values": pixels}

    def prompt_text_tokens(self, question: str) -> int:
        """Prompt tokens of `question` besides the visual ones (the event marker is replaced by those)."""
        return len(event_prompt_ids(self.tokenizer, question)) - 1

    @torch.inference_mode()
    def encode_vision(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        ids = prepared["input_ids"]
        text = self.model.get_input_embeddings()(ids.clamp(min=0))  # the marker row is replaced below
        return splice(text, ids, EVENT_TOKEN_INDEX, self._vision(prepared["pixel_values"]))[:, :MAX_EMBED_LEN]

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_events(pixels)

    def vision_example(self) -> torch.Tensor:
        size = self.vision_config.image_size
        tower = self.model.model.visual_tower.visual_tower
        return torch.zeros(self.n_chunks, 3, size, size, dtype=tower.dtype, device=self.device)
