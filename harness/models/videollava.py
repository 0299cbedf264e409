"""Video-LLaVA (the target) through transformers' VideoLlavaForConditionalGeneration.

Stage 3 does what VideoLlavaModel.get_video_features + forward do (8 frames through the video
tower, hidden state of `vision_feature_layer` (-2) with the CLS token kept, i.e. the "full"
strategy that the video path always uses, then multi_modal_projector, masked_scatter into the
placeholder positions) but calls the submodules directly: get_video_features' signature and
return type changed across transformers 5.x, the submodule names did not.

Inputs:
  - prompt (`--videollava-prompt`, recorded in meta.json and the report): `model-card` (default) is
    the LanguageBind/Video-LLaVA-7B-hf model card's "USER: <video>\n{question} ASSISTANT:"; `seed`
    is the seed fork's "USER: <video>\n{question}\nASSISTANT:" (xifan-zhang/EventGPT,
    feasible/benchmark_parallel_prefill/benchmark_parallel_prefill_5stages.py);
  - towers: the image tower is dropped at load (drop_image_tower_): video input never reaches it;
  - frames: 8 frames of the clip, np.linspace(0, n - 1, 8, dtype=int) over its n frames
    (harness/data/video.py), each through VideoLlavaImageProcessor's steps (CLIP resize of the
    shortest edge to 224 with PIL bicubic, center crop, rescale, normalize), read from the
    checkpoint's preprocessor_config.json when it has one (harness/models/image_processing.py).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from harness.models.base import CausalLMRunner
from harness.models.eventgpt import tokens_per_image
from harness.models.image_processing import ClipProcessing, clip_preprocess

VIDEO_TOKEN = "<video>"
N_FRAMES = 8
# Modules each precision leaves in the compute dtype (see harness.models.quant). NF4: what
# transformers' bitsandbytes quantizer leaves under the seed's config (it loads Video-LLaVA with a
# BitsAndBytesConfig that names no skip modules, so `get_keys_to_not_convert` keeps only the output
# head; both towers and the projector are NF4). int4 (ours, no seed counterpart): the language
# model only, as gpt-fast does, because tinygemm is a decode kernel (slow at the towers' 2056 rows).
_VISION = ["model.video_tower", "model.image_tower", "model.multi_modal_projector"]
SKIP_QUANT = {"nf4": ["lm_head"], "int4": _VISION + ["lm_head"]}
BNB_BLOCK = 64     # bitsandbytes' NF4 block; its CPU kernels need in_features >= one block


def drop_image_tower_(model) -> int:
    """Video-LLaVA keeps two CLIP towers; only the video tower sees a video (the image tower runs
    only for pixel_values_images, which ppbench never passes), so the image tower's weights are
    dropped from the model, freeing them. Returns the bytes its parameters and buffers held."""
    inner = model.model
    tower = getattr(inner, "image_tower", None)
    if tower is None:
        return 0
    held = sum(t.numel() * t.element_size() for t in (*tower.parameters(), *tower.buffers())
               if t.device.type != "meta")
    inner.image_tower = None
    return held


def skip_quant(quant: str, config) -> list[str]:
    """SKIP_QUANT[quant]; towers narrower than one NF4 block (only the tiny models') stay unquantized."""
    narrow = quant == "nf4" and _vision_config(config).hidden_size < BNB_BLOCK
    return SKIP_QUANT.get(quant, []) + (_VISION if narrow else [])


def _vision_config(config):
    return config.vision_config


def visual_token_count(config, n_frames: int = N_FRAMES) -> int:
    """n_frames x ((S/P)^2 + 1): 8 x 257 = 2056 for CLIP ViT-L/14 at 224 px."""
    return n_frames * tokens_per_image(_vision_config(config))


def video_token_id(config) -> int:
    return int(getattr(config, "video_token_index", None) or config.video_token_id)


TEMPLATES = {
    "model-card": "USER: {video}\n{question} ASSISTANT:",   # LanguageBind/Video-LLaVA-7B-hf model card
    "seed": "USER: {video}\n{question}\nASSISTANT:",        # the seed fork's benchmarks
}
DEFAULT_TEMPLATE = "model-card"


def check_template(name: str) -> str:
    if name not in TEMPLATES:
        raise ValueError(f"Video-LLaVA prompt template must be one of {tuple(TEMPLATES)}, got {name!r}")
    return name


def videollava_prompt(question: str, template: str = DEFAULT_TEMPLATE) -> str:
    return TEMPLATES[check_template(template)].format(video=VIDEO_TOKEN, question=question)


def expand_placeholder(ids: list[int], token_id: int, n: int) -> list[int]:
    """The HF processor repeats '<video>' n times in the text; repeating the id is the same."""
    if ids.count(token_id) != 1:
        raise ValueError(f"expected one video token ({token_id}) in the tokenized prompt, found {ids.count(token_id)}")
    i = ids.index(token_id)
    return ids[:i] + [token_id] * n + ids[i + 1:]


_TOWERS = ("model.video_tower.", "model.image_tower.")


def canonical_key(key: str) -> str:
    """Version-neutral key: the hub layout (language_model.model.*, video_tower.vision_model.*,
    as in LanguageBind/Video-LLaVA-7B-hf) and every transformers 5.x module layout map to one name."""
    if key.startswith("language_model.lm_head."):
        key = key[len("language_model."):]
    elif key.startswith("language_model.model."):
        key = "model.language_model." + key[len("language_model.model."):]
    elif key.startswith(("video_tower.", "image_tower.", "multi_modal_projector.")):
        key = "model." + key
    for tower in _TOWERS:
        if key.startswith(tower + "vision_model."):
            key = tower + key[len(tower) + len("vision_model."):]
    return key


def hub_key(key: str) -> str:
    """The layout of the published Video-LLaVA-7B-hf checkpoint, which every 5.x version loads."""
    key = canonical_key(key)
    if key.startswith("lm_head."):
        return "language_model." + key
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model."):]
    for tower in _TOWERS:
        if key.startswith(tower):
            return tower[len("model."):] + "vision_model." + key[len(tower):]
    return key[len("model."):] if key.startswith("model.multi_modal_projector.") else key


class VideoLlavaRunner(CausalLMRunner):
    role = "target"
    modality = "video"
    n_frames = N_FRAMES
    video_reader = "seek"   # harness.data.video.VIDEO_READERS; `ppbench run --video-reader`
    prompt_template = DEFAULT_TEMPLATE
    processing: ClipProcessing | None = None   # None: CLIP defaults at the tower's image size

    def configure_processing(self, path) -> None:
        """The checkpoint's preprocessor_config.json (VideoLlavaImageProcessor's settings), if any."""
        size = _vision_config(self.config).image_size
        self.processing = ClipProcessing.from_dir(path, ClipProcessing.square(size, source=f"defaults at {size} px"))

    @property
    def n_visual_tokens(self) -> int:
        return visual_token_count(self.config, self.n_frames)

    def load_inputs(self, sample: Any) -> np.ndarray:
        from harness.data import load_video_frames  # the data layer is optional for model-only use

        return load_video_frames(sample, self.n_frames, reader=self.video_reader)

    def preprocess(self, raw, question: str) -> dict[str, torch.Tensor]:
        tower = self.model.model.video_tower
        proc = self.processing or ClipProcessing.square(_vision_config(self.config).image_size)
        frames = clip_preprocess(list(raw), proc, device=self.device, dtype=tower.dtype)
        ids = expand_placeholder(self._text_ids(question), video_token_id(self.config),
                                 visual_token_count(self.config, len(frames)))
        return {"input_ids": torch.tensor([ids], device=self.device), "pixel_values_videos": frames[None]}

    def _text_ids(self, question: str) -> list[int]:
        """The prompt's token ids with the one video placeholder not yet expanded."""
        return self.tokenizer(videollava_prompt(question, self.prompt_template)).input_ids

    def prompt_text_tokens(self, question: str) -> int:
        """Prompt tokens of `question` besides the visual ones (the video placeholder expands to those)."""
        return len(self._text_ids(question)) - 1

    @torch.inference_mode()
    def vision_features(self, videos: torch.Tensor) -> torch.Tensor:
        """(1, T, 3, S, S) frames -> (T, P + 1, D) projected features ("full": CLS kept)."""
        inner = self.model.model
        out = inner.video_tower(videos.flatten(0, 1).to(inner.video_tower.dtype), output_hidden_states=True)
        return inner.multi_modal_projector(out.hidden_states[self.config.vision_feature_layer])

    def vision_example(self) -> torch.Tensor:
        size = _vision_config(self.config).image_size
        tower = self.model.model.video_tower
        return torch.zeros(1, self.n_frames, 3, size, size, dtype=tower.dtype, device=self.device)

    @torch.inference_mode()
    def encode_vision(self, prepared: dict[str, torch.Tensor]) -> torch.Tensor:
        feats = self._vision(prepared["pixel_values_videos"])                 # (T, P + 1, D)
        ids = prepared["input_ids"]
        embeds = self.model.get_input_embeddings()(ids)
        mask = (ids == video_token_id(self.config)).unsqueeze(-1)
        if int(mask.sum()) != feats.shape[0] * feats.shape[1]:
            raise ValueError(f"{int(mask.sum())} video placeholders for {feats.shape[0] * feats.shape[1]} features")
        return embeds.masked_scatter(mask, feats.to(embeds.dtype))
