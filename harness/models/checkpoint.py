"""Checkpoint validation before any model is built.

Everything here reads only config.json and safetensors headers, so a wrong path, a wrong
model_type or a missing tensor fails in milliseconds with the offending names, instead of after
minutes of loading (or, worse, with silently random weights from a lenient loader).
"""
from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Callable, Iterable

import torch

from harness.errors import ModelLoadError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Buffers that older checkpoints carry but current transformers recompute (never real weights).
IGNORED_UNEXPECTED = (r"\.position_ids$", r"\.rotary_emb\.inv_freq$", r"\.inv_freq$")
MAX_LISTED = 20


def _listing(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:MAX_LISTED])
    return shown + (f", ... ({len(keys) - MAX_LISTED} more)" if len(keys) > MAX_LISTED else "")


def read_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ModelLoadError("checkpoint path does not exist", path=path)
    if not path.is_dir():
        raise ModelLoadError("checkpoint path must be a directory (config.json + weights)", path=path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ModelLoadError("config.json missing", path=path)
    try:
        return json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"config.json is not valid JSON: {e}", path=cfg_file) from None


def check_model_type(cfg: dict, expected: str, path: str | Path) -> None:
    got = cfg.get("model_type")
    if got != expected:
        raise ModelLoadError(f"wrong model_type {got!r}, expected {expected!r}", path=path)


def weight_files(path: str | Path, *, allow_pickle: bool = False) -> tuple[list[Path], bool]:
    """The weight files of a checkpoint dir and whether they are safetensors.

    Pickle files can execute code on load, so they are refused unless the caller opts in."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelLoadError(f"bad safetensors index: {e}", path=index) from None
        missing = [s for s in shards if not (path / s).is_file()]
        if missing:
            raise ModelLoadError(f"safetensors shards listed in the index are missing: {missing}", path=path)
        return [path / s for s in shards], True
    single = sorted(path.glob("*.safetensors"))
    if single:
        return single, True
    pickles = sorted(p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        if not allow_pickle:
            raise ModelLoadError(
                f"only pickle weights found ({', '.join(p.name for p in pickles)}); pickle can run "
                f"arbitrary code on load: convert them to safetensors once (`ppbench checkpoint convert {path} DST "
                "--allow-pickle`), or pass --allow-pickle (--ppbench-allow-pickle) if you trust the file", path=path)
        return pickles, False
    raise ModelLoadError("no weights found (*.safetensors, or *.bin with --allow-pickle)", path=path)


def safetensors_keys(file: Path) -> set[str]:
    return set(safetensors_header(file))


def safetensors_header(file: Path) -> dict[str, dict]:
    """{key: {"dtype", "shape", ...}} of a safetensors file, from its header only."""
    # Parse the header by hand: 8-byte little-endian length + JSON. Reads a few KB, never tensors.
    try:
        with open(file, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100_000_000:
                raise ValueError(f"header length {n} is implausible")
            header = json.loads(f.read(n))
    except (OSError, struct.error, ValueError) as e:
        raise ModelLoadError(f"unreadable safetensors header: {e}", path=file) from None
    return {k: v for k, v in header.items() if k != "__metadata__"}


def pickle_keys(file: Path) -> set[str]:
    try:
        sd = torch.load(file, map_location="meta", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad checkpoint
        raise ModelLoadError(f"cannot read pickle weights: {e}", path=file) from None
    return set(sd)


def checkpoint_keys(path: str | Path, *, allow_pickle: bool = False) -> tuple[set[str], bool]:
    files, is_safe = weight_files(path, allow_pickle=allow_pickle)
    keys: set[str] = set()
    for f in files:
        keys |= safetensors_keys(f) if is_safe else pickle_keys(f)
    return keys, is_safe


def model_keys(model_cls, config) -> tuple[set[str], set[str]]:
    """(required, optional) state-dict keys of `model_cls(config)`, built on the meta device.

    Tied parameters (e.g. lm_head tied to embeddings) are optional: checkpoints store one copy."""
    with torch.device("meta"):
        model = model_cls(config)
    seen: dict[int, str] = {}
    required, optional = set(), set()
    for name, t in model.state_dict(keep_vars=True).items():
        if id(t) in seen:
            optional.add(name)
        else:
            seen[id(t)] = name
            required.add(name)
    return required, optional


def check_keys(path: str | Path, have: set[str], required: set[str], optional: set[str] = frozenset(),
               rename: Callable[[str], str] | None = None) -> None:
    if rename:
        have, required, optional = ({rename(k) for k in ks} for ks in (have, required, optional))
    else:
        have = set(have)
    missing = required - have
    unexpected = {k for k in have - required - optional
                  if not any(re.search(p, k) for p in IGNORED_UNEXPECTED)}
    problems = []
    if missing:
        problems.append(f"missing weights ({len(missing)}): {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected weights ({len(unexpected)}): {_listing(unexpected)}")
    if problems:
        raise ModelLoadError("; ".join(problems), path=path)


def validate_checkpoint(path: str | Path, model_cls, config, *, model_type: str, allow_pickle: bool = False,
                        rename: Callable[[str], str] | None = None) -> bool:
    """Raise ModelLoadError unless `path` holds exactly the weights `model_cls(config)` needs.

    Returns whether the weights are safetensors (False only with allow_pickle=True)."""
    check_model_type(read_config(path), model_type, path)
    have, is_safe = checkpoint_keys(path, allow_pickle=allow_pickle)
    required, optional = model_keys(model_cls, config)
    check_keys(path, have, required, optional, rename)
    return is_safe
