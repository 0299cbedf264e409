"""The five timed stages, per model per sample, and the loop over a dataset that records them.

    load -> preprocess -> vision -> prefill -> decode

Each model runs its stages on its own (no overlap here: these are isolated stage costs; the engine
measures the overlapped run). A sample that fails at any stage is recorded with its error and
stage, and the loop goes on; an out-of-memory frees the cache first.
"""
from __future__ import annotations

import gc
import time
from typing import Callable, Iterable

import torch

from .models.base import greedy
from .records import record_key
from .timing import StageClock, TokenTimer, peak_memory_bytes, peak_memory_reset

STAGES = ("load", "preprocess", "vision", "prefill", "decode")


def greedy_decode(runner, cache, logits, *, max_new_tokens: int, stop_at_eos: bool = False,
                  select: Callable = greedy) -> tuple[list[int], list[float]]:
    """Plain autoregressive decode. Token 1 is selected from the prefill logits (its time is only
    the selection); tokens 2..n each cost one decode forward. Without EOS stopping the loop never
    synchronizes with the device."""
    timer = TokenTimer(runner.device)
    timer.tick()
    token = select(logits)
    out = [token]
    timer.tick()
    eos = runner.eos_token_id
    for _ in range(max_new_tokens - 1):
        if stop_at_eos and eos is not None and int(token) == eos:
            break
        token = select(runner.decode(token, cache))
        out.append(token)
        timer.tick()
    return [int(t) for t in torch.stack(out).tolist()], timer.intervals_ms()


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
    """Runs the five stages for one model on one sample; always returns a record."""
    record = {
        "kind": "stages", "dataset": sample.dataset, "sample_id": sample.id, "model": runner.role,
        **(meta or {}),
        "stages_ms": {}, "decode_token_ms": [], "n_prompt_tokens": None, "n_visual_tokens": None,
        "n_output_tokens": 0, "output_tokens": [], "peak_mem_bytes": None, "error": None,
        "t_wall": time.time(),
    }
    device = runner.device
    peak_memory_reset(device)
    clock = StageClock(device)
    stage = STAGES[0]
    try:
        raw = runner.load_inputs(sample)
        clock.mark(stage)
        stage = "preprocess"
        prepared = runner.preprocess(raw, sample.question)
        clock.mark(stage)
        stage = "vision"
        embeds = runner.encode_vision(prepared)
        clock.mark(stage)
        stage = "prefill"
        cache, logits = runner.prefill(embeds)
        clock.mark(stage)
        stage = "decode"
        tokens, per_token = greedy_decode(runner, cache, logits, max_new_tokens=max_new_tokens,
                                          stop_at_eos=stop_at_eos)
        clock.mark(stage)
        record.update(n_prompt_tokens=int(embeds.shape[1]),
                      n_visual_tokens=visual_token_count(runner),
                      n_output_tokens=len(tokens), output_tokens=tokens, decode_token_ms=per_token)
    except Exception as exc:  # recorded, never fatal: a long run goes on with the next sample
        record["error"] = error_info(stage, exc)
        cache = logits = embeds = prepared = raw = None
        free_memory(device)
    record["stages_ms"] = clock.stages_ms
    record["peak_mem_bytes"] = peak_memory_bytes(device)
    return record


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
