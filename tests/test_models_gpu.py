"""7B-shaped pair in NF4 on the GPU: memory per model and one prefill each (timing shapes only)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.models.profiles import load_drafter, load_target

pytestmark = [pytest.mark.gpu, pytest.mark.slow]
GiB = 1024 ** 3


@pytest.mark.parametrize("which, n_visual", [("drafter", 582), ("target", 2056)])
def test_7b_shaped_nf4_memory_and_prefill(which, n_visual):
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    runner = (load_drafter if which == "drafter" else load_target)("7b-shaped", device="cuda", quant="nf4",
                                                                  dtype=torch.bfloat16)
    held = torch.cuda.memory_allocated() - base
    peak_build = torch.cuda.max_memory_allocated() - base
    footprint = runner.memory_footprint()
    print(f"{which}: footprint {footprint / GiB:.2f} GiB, allocated {held / GiB:.2f} GiB, "
          f"build peak {peak_build / GiB:.2f} GiB")
    # NF4 7B (~3.5 GiB) + bf16 embeddings/lm_head (~0.5 GiB) + bf16 CLIP-L tower(s) (0.6-1.2 GiB).
    assert 3.5 * GiB < footprint < 6.5 * GiB
    assert held < 7 * GiB
    # built layer by layer: the peak never approaches a bf16 7B copy (13.5 GB)
    assert peak_build < held + 1 * GiB
    assert runner.n_visual_tokens == n_visual
    rng = np.random.default_rng(0)
    raw = ([rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(5)] if which == "drafter"
           else rng.integers(0, 256, (8, 480, 640, 3), dtype=np.uint8))
    prepared = runner.preprocess(raw, "What is happening in this scene?")
    embeds = runner.encode_vision(prepared)
    assert embeds.shape[1] == prepared["input_ids"].shape[1] - (1 if which == "drafter" else 0) + \
        (n_visual if which == "drafter" else 0)
    cache, logits = runner.prefill(embeds)
    torch.cuda.synchronize()
    assert logits.shape[0] in (32000, 32064) and torch.isfinite(logits).all()
    assert runner.cache_len(cache) == embeds.shape[1]
    logits = runner.decode(int(logits.argmax()), cache)
    assert torch.isfinite(logits).all()
    print(f"{which}: peak with prefill {torch.cuda.max_memory_allocated() / GiB:.2f} GiB")
    del runner, cache
