"""The trained pair's real acceptance (verify blocks after the hidden block, whose length is
timing) stays inside its committed band per duration
(harness/calibration/bounds/trained-cpu.json, derived by scripts/derive_acceptance_bands.py from
the run in docs/results/trained-cpu/): the parallel engine, real drafter tokens, gamma 4, the
first samples of each duration of the embedded default dataset (the one `ppbench run` reads), fp32
on CPU. It also stays lossless."""
from __future__ import annotations

import json

import pytest
import torch

from harness import baselines as B
from harness import engine as E
from harness import metrics as M
from harness.bounds import bounds_path, check_bound, load_bounds_file
from harness.data import load_samples
from harness.data.default_data import ensure_default_imported
from harness.models.profiles import load_pair

BOUNDS = bounds_path("trained", "cpu")
GAMMA, MAX_NEW_TOKENS = 4, 50
NAME = "verify_acceptance_rate"


@pytest.fixture(scope="module")
def pair():
    return load_pair("trained", quant="none", dtype=torch.float32)


def band_durations() -> list[str]:
    return sorted(json.loads(BOUNDS.read_text())["bounds"][NAME]["per_duration"])


@pytest.mark.parametrize("duration", band_durations())
def test_trained_pair_acceptance_is_inside_its_band(pair, duration):
    """Accepted / drafted over the verify blocks of the duration's first samples lies in the
    committed band, and every output equals the target's plain greedy output."""
    drafter, target = pair
    bounds = load_bounds_file(BOUNDS)
    samples = load_samples(ensure_default_imported(progress=False), duration, limit=2)
    blocks = []
    for s in samples:
        ref = B.target_only(target, s, max_new_tokens=MAX_NEW_TOKENS).output_tokens
        res = E.parallel_prefill_decode(drafter, target, s, max_new_tokens=MAX_NEW_TOKENS, gamma=GAMMA,
                                        overlap="always", reference_tokens=ref)
        assert res.output_tokens == ref, s.id
        blocks += res.accept_blocks[1:]
    check_bound(bounds, NAME, M.verify_acceptance_rate(blocks), samples=[s.id for s in samples], duration=duration)
