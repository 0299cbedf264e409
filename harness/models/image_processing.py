"""CLIP image preprocessing exactly as transformers' CLIPImageProcessor computes it for uint8 RGB
arrays (transformers 4.37.2, the version the original EventGPT pins, image_processing_clip.py and
image_transforms.py; transformers 5's PIL backend gives the same pixels):

  1. resize so the shortest edge is `shortest_edge` (the long edge int(size * long / short)), with
     PIL (bicubic by default) on the uint8 image;
  2. center crop (top = (h - crop_h) // 2, left = (w - crop_w) // 2);
  3. rescale: uint8 * rescale_factor in float64, stored as float32;
  4. normalize: (x - mean) / std in float32, channels last; then channels first.

The processor infers the channel axis from the array: an (H, W, 3) image whose H is 3 is read as
channels first (3, H'=W, W'=3), i.e. as the image `x.transpose(1, 2, 0)`, and one whose H is 1
fails (a 1-channel image against a 3-value mean). An event canvas of a chunk whose events all lie
in rows 0-2 has such a height; both are reproduced here.

Both EventGPT (its tower folder's preprocessor_config.json, CLIP-L/336 defaults) and Video-LLaVA
(VideoLlavaImageProcessor: the same steps at 224 px) preprocess through this one function, on the
host, so the pixels do not depend on the transformers version or on torchvision being installed.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESSOR_CONFIG = "preprocessor_config.json"


@dataclass(frozen=True)
class ClipProcessing:
    shortest_edge: int | None = 336        # None: resize to (height, width) instead
    height: int | None = None
    width: int | None = None
    crop_height: int = 336
    crop_width: int = 336
    resample: int = 3                       # PIL.Image.BICUBIC
    rescale_factor: float = 1 / 255
    mean: tuple = OPENAI_CLIP_MEAN
    std: tuple = OPENAI_CLIP_STD
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    source: str = field(default="defaults", compare=False)

    @classmethod
    def square(cls, size: int, **kw) -> "ClipProcessing":
        """CLIPImageProcessor's defaults at `size` (shortest edge and crop)."""
        return cls(shortest_edge=size, crop_height=size, crop_width=size, **kw)

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "dict") -> "ClipProcessing":
        size = d.get("size", 224)
        crop = d.get("crop_size", 224)
        kw: dict = {}
        if isinstance(size, int):
            kw["shortest_edge"] = size
        elif "shortest_edge" in size:
            kw["shortest_edge"] = int(size["shortest_edge"])
        else:
            kw.update(shortest_edge=None, height=int(size["height"]), width=int(size["width"]))
        if isinstance(crop, int):
            kw.update(crop_height=crop, crop_width=crop)
        else:
            kw.update(crop_height=int(crop["height"]), crop_width=int(crop["width"]))
        for key, name in (("resample", "resample"), ("rescale_factor", "rescale_factor"), ("do_resize", "do_resize"),
                          ("do_center_crop", "do_center_crop"), ("do_rescale", "do_rescale"),
                          ("do_normalize", "do_normalize")):
            if key in d:
                kw[name] = d[key]
        if "image_mean" in d:
            kw["mean"] = tuple(d["image_mean"])
        if "image_std" in d:
            kw["std"] = tuple(d["image_std"])
        return cls(**kw, source=source)

    @classmethod
    def from_dir(cls, path: str | Path, default: "ClipProcessing") -> "ClipProcessing":
        """The folder's preprocessor_config.json, as CLIPImageProcessor.from_pretrained(folder)
        reads it; `default` when the folder has none."""
        f = Path(path) / PREPROCESSOR_CONFIG
        if not f.is_file():
            return default
        return cls.from_dict(json.loads(f.read_text()), source=str(f))

    def describe(self) -> dict:
        return {"shortest_edge": self.shortest_edge, "resize_hw": [self.height, self.width] if self.height else None,
                "crop": [self.crop_height, self.crop_width], "resample": self.resample, "source": self.source}


def resize_output_size(h: int, w: int, proc: ClipProcessing) -> tuple[int, int]:
    """(new_h, new_w): transformers' get_resize_output_image_size(default_to_square=False)."""
    if proc.shortest_edge is None:
        return proc.height, proc.width
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = proc.shortest_edge, int(proc.shortest_edge * long / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def preprocess_one(image: np.ndarray, proc: ClipProcessing) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, crop_h, crop_w) float32."""
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    if image.shape[0] == 1:
        raise ValueError(f"a {image.shape} image is read as 1-channel by CLIPImageProcessor and fails there "
                         "(an event chunk whose events all lie in row 0)")
    # infer_channel_dimension_format: a leading 3 means channels first
    x = np.ascontiguousarray(image.transpose(1, 2, 0)) if image.shape[0] == 3 else image
    if proc.do_resize:
        new_h, new_w = resize_output_size(*x.shape[:2], proc)
        x = np.array(Image.fromarray(x).resize((new_w, new_h), resample=proc.resample, reducing_gap=None))
    if proc.do_center_crop:
        h, w = x.shape[:2]
        top, left = (h - proc.crop_height) // 2, (w - proc.crop_width) // 2
        if top < 0 or left < 0:
            raise ValueError(f"center crop {proc.crop_height}x{proc.crop_width} is larger than the resized "
                             f"image {h}x{w} (not supported)")
        x = x[top:top + proc.crop_height, left:left + proc.crop_width]
    if proc.do_rescale:
        x = (x * proc.rescale_factor).astype(np.float32)
    if proc.do_normalize:
        x = x.astype(np.float32) if not np.issubdtype(x.dtype, np.floating) else x
        x = (x - np.array(proc.mean, dtype=x.dtype)) / np.array(proc.std, dtype=x.dtype)
    return np.ascontiguousarray(x.transpose(2, 0, 1)).astype(np.float32, copy=False)


def clip_preprocess(images: Sequence[np.ndarray] | np.ndarray, proc: ClipProcessing, *, device="cpu",
                    dtype=torch.float32) -> torch.Tensor:
    """Images (each its own size) -> (N, 3, crop_h, crop_w) on `device` in `dtype`."""
    arr = np.stack([preprocess_one(np.asarray(im), proc) for im in images])
    return torch.from_numpy(arr).to(device=device, dtype=dtype)


def with_size(proc: ClipProcessing, size: int) -> ClipProcessing:
    return replace(proc, shortest_edge=size, crop_height=size, crop_width=size)
