"""pytest plugin for ppbench: options, hooks and fixtures live here (see tests/ for users)."""
from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config, items):
    # gpu-marked tests skip with a reason when CUDA is absent, rather than failing.
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (gpu marker); no CUDA device here")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
