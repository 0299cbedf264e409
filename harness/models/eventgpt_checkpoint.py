"""Where an EventGPT checkpoint's parts come from, as the original loads them (XduSyL/EventGPT,
model/EventChatModel.py `VisualTower`, inference.py), without downloading anything:

- The CLIP tower is built from `mm_visual_tower`, a local folder (the EventGPT README asks users to
  download openai/clip-vit-large-patch14-336 and put its path there): its config.json (a CLIPConfig
  or a CLIPVisionConfig) gives the tower's shape and its preprocessor_config.json the
  CLIPImageProcessor settings. The folder's weights (`vision_model.*`) are used for tower tensors
  the checkpoint does not hold; tensors in the checkpoint
  (`model.visual_tower.visual_tower.vision_model.*`) win, as from_pretrained loads them after the
  tower is built.
- `mm_visual_tower` is looked up as written (absolute or relative to the working directory, like
  the original), then relative to the checkpoint, then as a hub id in the local Hugging Face cache.
  A hub id with no local copy is an error that says what to download. A checkpoint whose
  config.json carries its own `vision_config` (ppbench's tiny and 7b-shaped ones) needs no folder
  when the tower's weights are inside.
- The tokenizer is the slow SentencePiece one when the checkpoint has `tokenizer.model`
  (`use_fast=False` in inference.py; harness/models/sp_tokenizer.py), else the checkpoint's fast
  tokenizer.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from transformers import CLIPVisionConfig

from harness.errors import ModelLoadError
from harness.models import checkpoint
from harness.models.eventgpt import canonical_key
from harness.models.image_processing import ClipProcessing

TOWER_PREFIX = "model.visual_tower.visual_tower."
FOLDER_PREFIX = "vision_model."   # CLIPModel and CLIPVisionModel checkpoints both nest the tower here


@dataclass
class TowerSource:
    name: str | None              # mm_visual_tower as config.json writes it
    folder: Path | None           # the local folder it resolved to
    config_from: str              # "folder" | "config.json"
    weights_from: str             # "checkpoint" | "folder" | "checkpoint+folder"
    vision_config: CLIPVisionConfig
    processing: ClipProcessing
    folder_keys: set[str]         # tower keys (canonical, model layout) the folder supplies

    def describe(self) -> dict:
        vc = self.vision_config
        return {"mm_visual_tower": self.name, "folder": str(self.folder) if self.folder else None,
                "config_from": self.config_from, "weights_from": self.weights_from,
                "hidden_size": vc.hidden_size, "layers": vc.num_hidden_layers, "image_size": vc.image_size,
                "patch_size": vc.patch_size, "processing": self.processing.describe()}


def hub_cache_dirs() -> list[Path]:
    if os.environ.get("HF_HUB_CACHE"):
        return [Path(os.environ["HF_HUB_CACHE"])]
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    return [home / "hub"]


def find_tower_folder(name: str | None, ckpt: Path) -> tuple[Path | None, list[str]]:
    """(folder with config.json or None, the places looked at)."""
    if not name:
        return None, []
    candidates = [Path(name).expanduser(), ckpt / name]
    if "/" in name and not Path(name).is_absolute() and len(name.split("/")) == 2:
        for cache in hub_cache_dirs():
            snaps = cache / f"models--{name.replace('/', '--')}" / "snapshots"
            if snaps.is_dir():
                candidates += sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
            else:
                candidates.append(snaps)
    for c in candidates:
        if (c / "config.json").is_file():
            return c, [str(c) for c in candidates]
    return None, [str(c) for c in candidates]


def tower_config_of_folder(folder: Path) -> CLIPVisionConfig:
    try:
        d = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"tower config.json unreadable: {e}", path=folder) from None
    vc = d.get("vision_config") if d.get("model_type") == "clip" else d
    if not isinstance(vc, dict) or vc.get("model_type", "clip_vision_model") != "clip_vision_model":
        raise ModelLoadError(f"tower config.json is not a CLIP config (model_type {d.get('model_type')!r})",
                             path=folder)
    return CLIPVisionConfig.from_dict({k: v for k, v in vc.items() if k != "model_type"})


def folder_tower_keys(folder: Path, *, allow_pickle: bool) -> dict[str, str]:
    """{canonical model key: folder key} of the folder's tower tensors."""
    keys, _ = checkpoint.checkpoint_keys(folder, allow_pickle=allow_pickle)
    return {canonical_key(TOWER_PREFIX + k): k for k in keys if k.startswith(FOLDER_PREFIX)}


def resolve_tower(path: Path, cfg: dict, ckpt_keys: set[str], *, allow_pickle: bool = False) -> TowerSource:
    """Where the tower's config, preprocessing and weights come from (module docstring)."""
    if "use_event_qformer" in cfg:
        raise ModelLoadError("config.json sets use_event_qformer; ppbench implements the tower + projector "
                             "+ adaptor path of EventGPT only", path=path)
    if "mm_visual_tower" not in cfg and "vision_config" not in cfg:
        raise ModelLoadError("config.json has no mm_visual_tower (the original builds no visual tower "
                             "without it)", path=path)
    name = cfg.get("mm_visual_tower")
    inside = {canonical_key(k) for k in ckpt_keys if k.startswith(TOWER_PREFIX)}
    folder, looked = find_tower_folder(name, path)
    if "vision_config" in cfg:  # ppbench's own checkpoints (tiny, 7b-shaped): their config wins
        vcfg = CLIPVisionConfig.from_dict({k: v for k, v in cfg["vision_config"].items() if k != "model_type"})
        processing = ClipProcessing.square(vcfg.image_size, source="config.json vision_config image_size")
        config_from = "config.json"
    elif folder is not None:
        vcfg = tower_config_of_folder(folder)
        default = ClipProcessing.square(vcfg.image_size, source=f"CLIPImageProcessor defaults at {vcfg.image_size} px")
        processing = ClipProcessing.from_dir(folder, default)
        config_from = "folder"
    else:
        raise ModelLoadError(
            f"mm_visual_tower {name!r} is not a local folder with a config.json (looked in: {', '.join(looked)}); "
            f"download it first (e.g. `huggingface-cli download {name} --local-dir DIR`) and set "
            "mm_visual_tower in config.json to DIR", path=path)
    folder_keys: dict[str, str] = {}
    if folder is not None:
        try:  # tower tensors the checkpoint lacks come from the folder, as in the original
            folder_keys = folder_tower_keys(folder, allow_pickle=allow_pickle)
        except ModelLoadError as e:
            if not inside:
                raise ModelLoadError(f"the checkpoint holds no tower weights and the tower folder's cannot be "
                                     f"read: {e}", path=path) from None
    if not inside and not folder_keys:
        raise ModelLoadError("no tower weights: the checkpoint has no model.visual_tower.visual_tower.* tensors "
                             + (f"and the tower folder {folder} has no vision_model.* tensors" if folder
                                else f"and mm_visual_tower {name!r} names no local folder"), path=path)
    supplied = set(folder_keys) - inside
    weights_from = "checkpoint" if not supplied else ("folder" if not inside else "checkpoint+folder")
    return TowerSource(name, folder, config_from, weights_from, vcfg, processing, supplied)


def load_folder_tower_(model, tower: TowerSource, *, allow_pickle: bool = False) -> set[str]:
    """Copies the folder's tensors for `tower.folder_keys` into the model's tower; returns the
    model keys (canonical) it filled."""
    if not tower.folder_keys:
        return set()
    import torch
    from safetensors import safe_open

    tower_module = model.model.visual_tower.visual_tower
    by_canonical = {canonical_key(TOWER_PREFIX + k): k for k in tower_module.state_dict()}
    mapping = folder_tower_keys(tower.folder, allow_pickle=allow_pickle)
    want = {mapping[c]: by_canonical[c] for c in tower.folder_keys if c in by_canonical}
    files, is_safe = checkpoint.weight_files(tower.folder, allow_pickle=allow_pickle)
    state = {}
    for f in files:
        if is_safe:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    if k in want:
                        state[want[k]] = sf.get_tensor(k)
        else:
            sd = torch.load(f, map_location="cpu", weights_only=True)
            state.update({want[k]: v for k, v in sd.items() if k in want})
    params = tower_module.state_dict()
    with torch.no_grad():
        for k, v in state.items():
            if params[k].shape != v.shape:
                raise ModelLoadError(f"tower tensor {k}: folder has {tuple(v.shape)}, model {tuple(params[k].shape)}",
                                     path=tower.folder)
            params[k].copy_(v.to(params[k].dtype))
    return {canonical_key(TOWER_PREFIX + k) for k in state}


def load_tokenizer(path: Path):
    """The slow SentencePiece tokenizer when the checkpoint has tokenizer.model, else AutoTokenizer."""
    from transformers import AutoTokenizer

    from harness.models.sp_tokenizer import SP_MODEL, SentencePieceLlamaTokenizer

    try:
        if (path / SP_MODEL).is_file():
            return SentencePieceLlamaTokenizer(path)
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - any tokenizer failure is a checkpoint problem
        raise ModelLoadError(f"cannot load tokenizer: {e}", path=path) from None


def tokenizer_kind(path: Path) -> str:
    if (path / "tokenizer.model").is_file():
        return "slow SentencePiece (tokenizer.model, as use_fast=False)"
    if (path / "tokenizer.json").is_file():
        return "fast (tokenizer.json)"
    return "missing"
