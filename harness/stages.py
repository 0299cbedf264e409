"""The five timed stages, per model per sample, and the loop over a dataset that records them.

    load -> preprocess -> vision -> prefill -> decode

Each model runs its stages on its own (no overlap here: these are isolated stage costs; the engine
measures the overlapped run), through the engine's own stages-1-4 prefix and greedy decode
(engine.prefix_and_decode), so a stage's time and target-only's are read by one clock: on CUDA
after the runner's stream has finished; decode tokens at their queued steps' completion (CUDA
events, engine.plain_decode). A sample that fails at any stage is recorded with its error and
stage, and the loop goes on; the failed sample's memory is freed before the next.
"""
from __future__ import annotations

import gc
import time
from typing import Iterable

import torch

from .engine import prefix_and_decode
from .records import record_key
from .timing import peak_memory_bytes, peak_memory_reset

STAGES = ("load", "preprocess", "vision", "prefill", "decode")


def visual_token_count(runner) -> int | None:
    n = getattr(runner, "n_visual_tokens", None)   # a property on the VLM runners
    return int(n) if n is not None else None


def free_memory(device) -> None:
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def error_info(stage: str, exc: BaseException) -> dict:
    """A record's `error`: the stage, the type, the message, and the file and sample when the
    error names them (harness.errors.DataError / ModelLoadError)."""
    oom = isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()
    return {"stage": stage, "type": type(exc).__name__, "message": str(exc)[:2000], "oom": oom,
            "path": getattr(exc, "path", None), "sample": getattr(exc, "sample", None)}


def run_sample(runner, sample, *, max_new_tokens: int = 50, stop_at_eos: bool = False,
               meta: dict | None = None) -> dict:
    """Runs the five stages for one model on one sample; always returns a record. A drafter in its
    own process (drafter_process.DrafterProcess) runs them there, with this same function."""
    if getattr(runner, "is_process", False):
        return runner.run_sample(sample, max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos, meta=meta)
    record = {
        "kind": "stages", "dataset": sample.dataset, "sample_id": sample.id, "model": runner.role,
        **(meta or {}),
        "stages_ms": {}, "decode_token_ms": [], "n_prompt_tokens": None, "n_visual_tokens": None,
        "n_output_tokens": 0, "output_tokens": [], "peak_mem_bytes": None, "error": None,
        "t_wall": time.time(),
    }
    device = runner.device
    peak_memory_reset(device)
    ends = {}
    try:
        tokens, times, _, n_prompt = prefix_and_decode(runner, sample, max_new_tokens, stop_at_eos=stop_at_eos,
                                                       ends=ends)
        # decode_token_ms[0] is token 1's selection from the prefill logits, then one per decode step
        record.update(n_prompt_tokens=n_prompt, n_visual_tokens=visual_token_count(runner),
                      n_output_tokens=len(tokens), output_tokens=tokens,
                      decode_token_ms=_durations([ends["prefill"], *times]))
    except Exception as exc:  # recorded, never fatal: a long run goes on with the next sample
        record["error"] = error_info(STAGES[len(ends)], exc)
    if record["error"]:       # out of the except block: its traceback no longer holds the cache
        free_memory(device)
    record["stages_ms"] = dict(zip(ends, _durations([0.0, *ends.values()])))
    record["peak_mem_bytes"] = peak_memory_bytes(device)
    return record


def _durations(ends_ms: list[float]) -> list[float]:
    return [b - a for a, b in zip(ends_ms, ends_ms[1:])]


def run_stage_pipeline(runners: Iterable, samples: Iterable, writer, *, done: set | None = None,
                       max_new_tokens: int = 50, stop_at_eos: bool = False, meta: dict | None = None,
                       progress=None) -> int:
    """Runs every runner over every sample, appending each record as soon as it exists.
    Records whose key is in `done` (from a previous, interrupted run) are skipped. Returns the
    number of records written."""
    runners = list(runners)
    written = 0
    for sample in samples:
        for runner in runners:
            key = ("stages", sample.dataset, sample.id, runner.role)
            if done is not None and key in done:
                continue
            record = run_sample(runner, sample, max_new_tokens=max_new_tokens,
                                stop_at_eos=stop_at_eos, meta=meta)
            assert record_key(record) == key
            writer.write(record)
            written += 1
        if progress is not None:
            progress(sample)
    return written


def warm_up(runners: Iterable, sample, *, max_new_tokens: int = 8) -> list[dict]:
    """Unrecorded runs that pay one-time costs (allocator growth, kernel selection, lazy imports)."""
    return [run_sample(r, sample, max_new_tokens=max_new_tokens) for r in runners]
