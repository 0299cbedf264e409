"""Model configurations per profile shape (tiny / 7B), shared by the profiles' loaders
(harness.models.profiles) and the tiny-checkpoint builder (harness.models.tiny), which both
depend on this module and not on each other."""
from __future__ import annotations

from transformers import VideoLlavaConfig

from harness.models.eventgpt import CLIP_L14_336, EventChatConfig
from harness.models.eventgpt import visual_token_count as eventgpt_visual_tokens
from harness.models.videollava import visual_token_count as videollava_visual_tokens

LLAMA_7B = dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                intermediate_size=11008, max_position_embeddings=4096, rms_norm_eps=1e-5)
CLIP_L14_224 = dict(CLIP_L14_336, image_size=224)
# Tiny: 2 layers each, so vision_feature_layer=-2 still picks a real encoder layer; 28 px / 14 px
# patches keep the token structure (CLS + patches per image) at 5 tokens per image.
LLAMA_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=128, max_position_embeddings=4096, rms_norm_eps=1e-5)
CLIP_TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 image_size=28, patch_size=14, projection_dim=32, hidden_act="quick_gelu", layer_norm_eps=1e-5)
TINY_VOCAB = 512
# Trained pair (models/trained.py): the tiny sizes at 56 px, so a shape in a frame or an event image
# covers a few pixels instead of one or two, with 28-px patches: 4 patches + CLS per image, as many
# tokens as the tiny profile (a patch is a quadrant of the crop: left / right is which patch).
CLIP_TRAINED = dict(CLIP_TINY, image_size=56, patch_size=28)
# vocab None: the tiny tokenizer plus the <ev_patch> row EventGPT's loader adds (tiny_vocab)
_SIZES = {"tiny": (LLAMA_TINY, CLIP_TINY, None), "trained": (LLAMA_TINY, CLIP_TRAINED, TINY_VOCAB)}
# The drafter and the target get different planted bigrams (models/decisive.py): random models
# must not agree by construction.
PLANT_SEED_OFFSET = {"drafter": 1000, "target": 1001}


def tiny_vocab(tokenizer) -> int:
    """The tiny profile's vocabulary: the tiny tokenizer plus the <ev_patch> row EventGPT's loader
    adds (len(tokenizer) + 1), for both models, so the drafter's vocabulary after that rule still
    covers every id the target emits."""
    return len(tokenizer) + 1


def _special_ids(tokenizer) -> dict:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<s>", "</s>", "<pad>", "<image>", "<video>")}
    return dict(bos=ids["<s>"], eos=ids["</s>"], pad=ids["<pad>"], image=ids["<image>"], video=ids["<video>"])


def eventgpt_config(profile: str, tokenizer) -> EventChatConfig:
    llm, clip, vocab = _SIZES.get(profile, (LLAMA_7B, CLIP_L14_336, 32000))
    vocab = vocab or tiny_vocab(tokenizer)
    sid = _special_ids(tokenizer)
    return EventChatConfig(**llm, vocab_size=vocab, bos_token_id=sid["bos"], eos_token_id=sid["eos"],
                           pad_token_id=sid["pad"], tie_word_embeddings=False,
                           mm_visual_tower="openai/clip-vit-large-patch14-336", mm_hidden_size=clip["hidden_size"],
                           vision_config=dict(clip, model_type="clip_vision_model"), event_feature_adaptor=True)


def videollava_config(profile: str, tokenizer) -> VideoLlavaConfig:
    llm, clip, vocab = _SIZES.get(profile, (LLAMA_7B, CLIP_L14_224, 32064))
    vocab = vocab or tiny_vocab(tokenizer)
    sid = _special_ids(tokenizer)
    cfg = VideoLlavaConfig(
        vision_config=dict(clip, model_type="clip_vision_model"),
        text_config=dict(llm, model_type="llama", vocab_size=vocab, bos_token_id=sid["bos"], eos_token_id=sid["eos"],
                         pad_token_id=sid["pad"], tie_word_embeddings=False),
        image_token_index=sid["image"], video_token_index=sid["video"], vision_feature_layer=-2,
        vision_feature_select_strategy="full", tie_word_embeddings=False)
    cfg.video_seq_length = videollava_visual_tokens(cfg)
    return cfg


def visual_token_count(config) -> int:
    """Visual tokens either runner splices into its prompt, from the config alone."""
    if getattr(config, "model_type", None) == EventChatConfig.model_type:
        return eventgpt_visual_tokens(config)
    return videollava_visual_tokens(config)
