"""`ppbench checkpoint inspect PATH` and `ppbench checkpoint convert SRC DST --allow-pickle`.

inspect reads config.json, the weights' headers (safetensors) or key names (pickle, only with
--allow-pickle), the tower folder and the tokenizer, and builds the model on the meta device only
to list missing / unexpected weights: it says what a run would load before anything is built.

convert unpickles a checkpoint (or a CLIP tower folder) once, with torch.load(weights_only=True),
and writes the same tensors as safetensors shards with the same grouping (pytorch_model-K-of-N.bin
-> model-K-of-N.safetensors, the index remapped), copying every other file; later runs then never
unpickle. It refuses without --allow-pickle, because unpickling a file can run code.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from harness.errors import ModelLoadError
from harness.models import checkpoint

PICKLE_INDEX = "pytorch_model.bin.index.json"
SAFE_INDEX = "model.safetensors.index.json"


# -- convert ------------------------------------------------------------------------------------------
def safetensors_name(name: str) -> str:
    if name == "pytorch_model.bin":
        return "model.safetensors"
    m = re.fullmatch(r"pytorch_model-(\d+)-of-(\d+)\.bin", name)
    if m:
        return f"model-{m.group(1)}-of-{m.group(2)}.safetensors"
    return Path(name).stem + ".safetensors"


def convert_checkpoint(src: str | Path, dst: str | Path, *, allow_pickle: bool = False) -> list[Path]:
    import torch
    from safetensors.torch import save_file

    src, dst = Path(src), Path(dst)
    if not allow_pickle:
        raise ModelLoadError("converting unpickles the source once (torch.load with weights_only=True), which "
                             "can still run code from a malicious file: pass --allow-pickle only for a "
                             "checkpoint you trust", path=src)
    if not src.is_dir():
        raise ModelLoadError("source must be a checkpoint directory", path=src)
    files, is_safe = checkpoint.weight_files(src, allow_pickle=True)
    if is_safe:
        raise ModelLoadError("already safetensors; nothing to convert", path=src)
    if dst.exists() and any(dst.iterdir()):
        raise ModelLoadError("destination exists and is not empty", path=dst)
    dst.mkdir(parents=True, exist_ok=True)
    pickle_names = {f.name for f in files} | {PICKLE_INDEX}
    for f in src.iterdir():
        if f.is_file() and f.name not in pickle_names:
            shutil.copy2(f, dst / f.name)
    written, weight_map = [], {}
    for f in files:
        try:
            sd = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
            raise ModelLoadError(f"cannot read pickle weights: {e}", path=f) from None
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ModelLoadError("pickle file is not a flat state dict of tensors", path=f)
        out = dst / safetensors_name(f.name)
        # clone: tied or sliced tensors share storage, which safetensors refuses to write
        save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, out, metadata={"format": "pt"})
        if set(checkpoint.safetensors_keys(out)) != set(sd):
            raise ModelLoadError("written keys differ from the pickle's", path=out)
        weight_map.update({k: out.name for k in sd})
        written.append(out)
    if len(written) > 1 or (src / PICKLE_INDEX).is_file():
        meta = {}
        if (src / PICKLE_INDEX).is_file():
            meta = json.loads((src / PICKLE_INDEX).read_text()).get("metadata", {})
        (dst / SAFE_INDEX).write_text(json.dumps({"metadata": meta, "weight_map": dict(sorted(weight_map.items()))},
                                                 indent=2) + "\n")
    return written


# -- inspect ------------------------------------------------------------------------------------------
def weights_layout(path: Path, *, allow_pickle: bool) -> tuple[dict, set[str], dict[str, list]]:
    """(description, keys, {key: shape} where the headers tell)."""
    files, is_safe = checkpoint.weight_files(path, allow_pickle=allow_pickle)
    shapes: dict[str, list] = {}
    keys: set[str] = set()
    for f in files:
        if is_safe:
            header = checkpoint.safetensors_header(f)
            shapes.update({k: v.get("shape") for k, v in header.items()})
            keys |= set(header)
        else:
            keys |= checkpoint.pickle_keys(f)
    kind = ("safetensors, sharded with an index" if (path / SAFE_INDEX).is_file() else "safetensors") if is_safe \
        else "pickle (convert with `ppbench checkpoint convert`)"
    return {"format": kind, "files": [f.name for f in files], "tensors": len(keys)}, keys, shapes


def inspect_checkpoint(path: str | Path, *, allow_pickle: bool = False) -> dict:
    """What `ppbench run --profile real` would load from `path`; 'problems' lists what stops it."""
    path = Path(path)
    cfg = checkpoint.read_config(path)
    info: dict = {"path": str(path), "model_type": cfg.get("model_type"), "problems": []}
    try:
        layout, keys, shapes = weights_layout(path, allow_pickle=allow_pickle)
        info["weights"] = layout
    except ModelLoadError as e:
        info["problems"].append(str(e))
        keys, shapes = set(), {}
    if cfg.get("model_type") == "EventChat_llama":
        _inspect_eventgpt(path, cfg, keys, shapes, info, allow_pickle)
    elif cfg.get("model_type") == "video_llava":
        _inspect_videollava(path, cfg, keys, info)
    else:
        info["problems"].append(f"model_type {cfg.get('model_type')!r} is neither EventChat_llama nor video_llava")
    return info


def _llm_dims(cfg: dict) -> dict:
    return {k: cfg.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")}


def _inspect_eventgpt(path, cfg, keys, shapes, info, allow_pickle):
    from transformers import AutoConfig

    from harness.models.eventgpt import (EventChatLlamaForCausalLM, add_event_tokens, canonical_key,
                                         visual_token_count)
    from harness.models.eventgpt_checkpoint import load_tokenizer, resolve_tower, tokenizer_kind

    info["llm"] = _llm_dims(cfg)
    info["llm"]["embedding_rows"] = (shapes.get("model.embed_tokens.weight") or [None])[0]
    info["flags"] = {k: cfg.get(k, "unset") for k in ("mm_visual_tower", "mm_use_im_patch_token",
                                                      "mm_use_im_start_end", "event_feature_adaptor")}
    tower = None
    try:
        tower = resolve_tower(path, cfg, keys, allow_pickle=allow_pickle)
        info["tower"] = tower.describe()
    except ModelLoadError as e:
        info["problems"].append(str(e))
    info["tokenizer"] = {"kind": tokenizer_kind(path)}
    try:
        config = AutoConfig.from_pretrained(path)
        tok = load_tokenizer(path)
        before = len(tok)
        added = add_event_tokens(tok, config)
        info["tokenizer"].update(tokens=before, added=added, after=len(tok),
                                 note=f"embeddings and lm_head are resized to {len(tok)} rows at load")
    except Exception as e:  # noqa: BLE001 - reported, not raised
        info["problems"].append(str(e))
        config = None
    if tower is not None and config is not None:
        config.vision_config = dict(tower.vision_config.to_dict(), model_type="clip_vision_model")
        info["visual_tokens"] = {n: visual_token_count(config, n) for n in (1, 5)}
        if keys:
            required, optional = checkpoint.model_keys(EventChatLlamaForCausalLM, config)
            have = {canonical_key(k) for k in keys} | tower.folder_keys
            try:
                checkpoint.check_keys(path, have, required, optional, canonical_key)
            except ModelLoadError as e:
                info["problems"].append(str(e))


def _inspect_videollava(path, cfg, keys, info):
    from transformers import AutoConfig, VideoLlavaForConditionalGeneration

    from harness.models.image_processing import ClipProcessing
    from harness.models.videollava import TEMPLATES, canonical_key, visual_token_count

    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as e:  # noqa: BLE001
        info["problems"].append(f"cannot parse config.json: {e}")
        return
    vc = config.vision_config
    info["llm"] = _llm_dims(cfg.get("text_config") or {})
    info["tower"] = {"hidden_size": vc.hidden_size, "layers": vc.num_hidden_layers, "image_size": vc.image_size,
                     "patch_size": vc.patch_size}
    info["visual_tokens"] = {8: visual_token_count(config, 8)}
    info["processing"] = ClipProcessing.from_dir(path, ClipProcessing.square(vc.image_size)).describe()
    info["prompt_templates"] = dict(TEMPLATES)
    info["tokenizer"] = {"kind": "fast (tokenizer.json)" if (path / "tokenizer.json").is_file() else
                         ("slow (tokenizer.model)" if (path / "tokenizer.model").is_file() else "missing")}
    if keys:
        required, optional = checkpoint.model_keys(VideoLlavaForConditionalGeneration, config)
        try:
            checkpoint.check_keys(path, keys, required, optional, canonical_key)
        except ModelLoadError as e:
            info["problems"].append(str(e))


def format_inspection(info: dict) -> str:
    lines = [f"checkpoint: {info['path']}", f"model_type: {info.get('model_type')}"]
    for key in ("weights", "llm", "flags", "tower", "processing", "visual_tokens", "tokenizer", "prompt_templates"):
        if key in info:
            lines.append(f"{key}: {json.dumps(info[key], default=str)}")
    lines += [f"problem: {p}" for p in info["problems"]] or ["problems: none (loadable)"]
    return "\n".join(lines)


def checkpoint_main(args) -> int:
    """`ppbench checkpoint inspect|convert`; a ModelLoadError is the CLI's one-line user error."""
    if args.checkpoint_command == "inspect":
        info = inspect_checkpoint(args.path, allow_pickle=args.allow_pickle)
        print(format_inspection(info))
        return 1 if info["problems"] else 0
    written = convert_checkpoint(args.src, args.dst, allow_pickle=args.allow_pickle)
    print(f"converted {args.src} -> {args.dst}: {', '.join(p.name for p in written)}")
    return 0
