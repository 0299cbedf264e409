"""The default data path of `ppbench run`: generate (DSEC bulk layout) -> import-dsec -> run.

Both steps are cached under cache_dir() (`$PPBENCH_CACHE` or ~/.cache/ppbench) and reused:
  generated-<BULK_VERSION>-<scale>-seed0/   the generator's output, DSEC's bulk download layout
  imported-<IMPORT_VERSION>-<scale>-seed0/  `ppbench dataset import-dsec` of it (a ppbench root)
so the run exercises the same importer a user runs on a real DSEC download.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from harness.data import dsec_import, synthetic

DEFAULT_SEQUENCES = 2
DEFAULT_SEQUENCE_S = 22.0      # >= 20 s of images: one 20 s clip per sequence
DEFAULT_CAP = 8                # clips per duration kept in the default import (evenly spaced)


def _progress(desc: str):
    """A progress bar on an interactive stderr only (a captured or logged stderr gets none)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None, None
    if not sys.stderr.isatty():
        return None, None
    bar = tqdm(total=None, desc=desc, unit="seq", leave=False)

    def update(done: int, total: int, what: str) -> None:
        bar.total = total
        bar.set_postfix_str(what)
        bar.update(done - bar.n)
    return update, bar


def generated_root(scale: str) -> Path:
    return synthetic.cache_dir() / f"generated-{synthetic.BULK_VERSION}-{scale}-seed0"


def imported_root(scale: str) -> Path:
    return synthetic.cache_dir() / f"imported-{dsec_import.IMPORT_VERSION}-{scale}-seed0"


def ensure_generated(scale: str = "small", *, progress: bool = True, workers: int | None = None) -> Path:
    root = generated_root(scale)
    if (root / synthetic.MARKER).is_file():
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.parent.mkdir(parents=True, exist_ok=True)
    update, bar = _progress(f"generating {scale}-scale DSEC bulk layout") if progress else (None, None)
    try:
        synthetic.build_bulk(root, seed=0, scale=scale, n_sequences=DEFAULT_SEQUENCES,
                             sequence_s=DEFAULT_SEQUENCE_S, workers=workers or min(DEFAULT_SEQUENCES, os.cpu_count() or 1),
                             progress=update)
    except OSError:
        if (root / synthetic.MARKER).is_file():   # another process finished the same build first
            return root
        raise
    finally:
        if bar is not None:
            bar.close()
    return root


def ensure_default_imported(scale: str = "small", *, progress: bool = True) -> Path:
    """The default dataset root: generated at `scale`, then imported (both cached)."""
    out = imported_root(scale)
    if (out / dsec_import.MARKER).is_file():
        return out
    src = ensure_generated(scale, progress=progress)
    update, bar = _progress("importing (import-dsec)") if progress else (None, None)
    try:
        dsec_import.import_dsec(src, out, samples_per_duration=DEFAULT_CAP,
                                workers=min(DEFAULT_SEQUENCES, os.cpu_count() or 1), progress=update)
    finally:
        if bar is not None:
            bar.close()
    return out
