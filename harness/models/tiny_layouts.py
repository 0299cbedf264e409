"""Tiny EventGPT checkpoints in the layouts the original's checkpoints come in, built from the tiny
drafter (harness/models/tiny.py) for tests and for trying `ppbench checkpoint inspect` and
`ppbench run --profile real` on every loader path:

  tower-inside    tower tensors in the checkpoint; `mm_visual_tower` names a local CLIP folder
                  (config.json as a CLIPConfig, preprocessor_config.json, and tower weights that
                  differ from the checkpoint's: the checkpoint's must win)
  tower-folder    no tower tensors in the checkpoint; the folder holds them as a CLIPModel does
                  (`vision_model.*` next to text-model tensors, which are ignored)
  slow-tokenizer  tower inside, a SentencePiece `tokenizer.model` only (legacy=false, as Vicuna
                  v1.5), weights as two safetensors shards with an index
  pickle          tower via the folder, weights as two pytorch_model-*.bin shards with an index
                  (refused until `ppbench checkpoint convert SRC DST --allow-pickle`)

Every layout has no `vision_config` in config.json (the tower's shape comes from the folder) and a
preprocessor_config.json whose shortest edge (32) differs from the crop (28), so a loader that
ignored it would compute other pixels.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

LAYOUTS = ("tower-inside", "tower-folder", "slow-tokenizer", "pickle")
TOWER = "model.visual_tower.visual_tower."
PREPROCESSOR = {"crop_size": {"height": 28, "width": 28}, "do_center_crop": True, "do_convert_rgb": True,
                "do_normalize": True, "do_rescale": True, "do_resize": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "CLIPImageProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
                "size": {"shortest_edge": 32}}


def _write_tower_folder(folder: Path, base_cfg: dict, tower: dict, *, scale: float) -> None:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    vision = dict(base_cfg["vision_config"], model_type="clip_vision_model")
    (folder / "config.json").write_text(json.dumps({"model_type": "clip", "architectures": ["CLIPModel"],
                                                    "projection_dim": vision.get("projection_dim", 32),
                                                    "vision_config": vision}, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    state = {"vision_model." + k[len(TOWER) + len("vision_model."):]: (v * scale).contiguous()
             for k, v in tower.items()}
    state["text_model.embeddings.token_embedding.weight"] = torch.zeros(8, 4)
    state["logit_scale"] = torch.tensor(2.6592)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})


def train_sentencepiece(out: Path, vocab_size: int) -> None:
    """A Llama-style SentencePiece BPE model (byte fallback, dummy prefix, identity normalization)."""
    import io

    import sentencepiece as spm

    from harness.models.tiny import corpus

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus()), model_writer=buf, vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, split_digits=True, add_dummy_prefix=True,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   unk_id=0, bos_id=1, eos_id=2, pad_id=-1, allow_whitespace_only_pieces=True,
                                   character_coverage=1.0, num_threads=1, minloglevel=2)
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
         "add_bos_token": True, "add_eos_token": False, "legacy": False, "model_max_length": 2048}, indent=2))


def _shards(state: dict, n: int = 2) -> list[dict]:
    keys = sorted(state)
    return [{k: state[k] for k in keys[i::n]} for i in range(n)]


def build_layout(kind: str, dst: str | Path, base: str | Path | None = None) -> Path:
    """The tiny drafter re-laid-out as `kind` (see LAYOUTS) in `dst`; returns `dst`."""
    import torch
    from safetensors.torch import load_file, save_file

    from harness.models.tiny import ensure_tiny_checkpoints

    if kind not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {kind!r}")
    base = Path(base) if base else ensure_tiny_checkpoints()["drafter"]
    dst = Path(dst)
    dst.mkdir(parents=True)
    cfg = json.loads((base / "config.json").read_text())
    state = load_file(base / "model.safetensors")
    tower = {k: v for k, v in state.items() if k.startswith(TOWER)}
    folder = dst / "clip-vit-tiny"
    _write_tower_folder(folder, cfg, tower, scale=1.0 if kind in ("tower-folder", "pickle") else 0.5)
    cfg.pop("vision_config")
    cfg.update(mm_visual_tower=str(folder.resolve()), mm_use_im_patch_token=True, mm_use_im_start_end=False)
    ckpt = dst / "checkpoint"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps(cfg, indent=2))
    if kind == "slow-tokenizer":
        rows = int(cfg["vocab_size"])
        train_sentencepiece(ckpt, rows - 1)   # + <ev_patch> = the checkpoint's rows: no resize at load
    else:
        for f in base.iterdir():
            if f.name.startswith(("tokenizer", "special_tokens")):
                shutil.copy2(f, ckpt / f.name)
    if kind in ("tower-folder", "pickle"):
        state = {k: v for k, v in state.items() if not k.startswith(TOWER)}
    if kind == "slow-tokenizer" or kind == "pickle":
        shards = _shards(state)
        fmt = "model-{:05d}-of-{:05d}.safetensors" if kind == "slow-tokenizer" else "pytorch_model-{:05d}-of-{:05d}.bin"
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = fmt.format(i, len(shards))
            if kind == "pickle":
                torch.save(shard, ckpt / name)
            else:
                save_file(shard, ckpt / name, metadata={"format": "pt"})
            weight_map.update({k: name for k in shard})
        index = "model.safetensors.index.json" if kind == "slow-tokenizer" else "pytorch_model.bin.index.json"
        total = sum(v.numel() * v.element_size() for v in state.values())
        (ckpt / index).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    else:
        save_file(state, ckpt / "model.safetensors", metadata={"format": "pt"})
    return dst


def build_layouts(root: str | Path) -> dict[str, Path]:
    """Every layout under root/<kind>; returns {kind: checkpoint dir}."""
    root = Path(root)
    return {k: build_layout(k, root / k) / "checkpoint" for k in LAYOUTS}
