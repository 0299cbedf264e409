"""The verify-cost curve: device time of one decode/verify step of M tokens after the target's
prompt, per precision (issue 19). It decides whether a hidden block can pay
(metrics.break_even_alpha), and a gated nightly benchmark (tests/test_benchmarks.py::test_verify_cost)
catches a kernel regression in bitsandbytes or torch at any M.

A step of M tokens is timed through the runner's own decode implementation (`runner.verify`), so
under cuda-graph / compiled it replays the smallest captured size >= M, as the engine does. Each
round crops the cache back to the prompt first, so every step sees the same cache length. CUDA
events on the model's device stream; warm-up rounds are not kept.

On CPU the curve is the step's own cost: one intra-op thread, read by the thread's CPU clock
(`time.thread_time`). With torch's default thread team a ~1 ms step of the tiny model measured
50-130 ms whenever the cores were shared (2 cores, a load of 6): every op ends in a barrier of the
team, a descheduled team thread makes the others spin-wait for a scheduler slice, and wall clock
(perf_counter) and even the spinning threads' CPU time count it. One thread has no barrier, and its
CPU clock does not run while it waits for a core.
"""
from __future__ import annotations

import contextlib
import gc
import time

import torch

from .metrics import precision_label
from .stages import error_info

# precision -> (quant, compute dtype on CUDA)
PRECISIONS = {"nf4": "nf4", "bf16": "none", "int4": "int4"}
SIZES = tuple(range(1, 65))
TEXT_TOKENS = 16        # the prompt: the target's visual tokens plus this many text positions


CPU_CLOCK = "thread CPU time, 1 intra-op thread"
CUDA_CLOCK = "CUDA events"


def clock_label(device) -> str:
    return CUDA_CLOCK if torch.device(device).type == "cuda" else CPU_CLOCK


@contextlib.contextmanager
def one_thread():
    """torch's intra-op threads set to 1 for the block, then restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def check_precision(precision: str, device) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    if precision == "nf4" and torch.device(device).type != "cuda":
        raise ValueError("nf4 (bitsandbytes) runs on CUDA only")
    return precision


@torch.inference_mode()
def measure_curve(runner, sizes=SIZES, *, prompt: int, reps: int = 10, warmup: int = 2,
                  seed: int = 0) -> dict[int, list[float]]:
    """{M: [ms per round]} of runner.verify over M tokens after a random prompt of `prompt` positions."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    vocab = runner.model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(3, vocab, (1, prompt + max(sizes)), generator=gen).to(runner.device)
    embeds = runner.model.get_input_embeddings()(ids[:, :prompt])
    cache, _ = runner.prefill(embeds)
    cuda = runner.device.type == "cuda"
    with contextlib.nullcontext() if cuda else one_thread():
        out = _rounds(runner, cache, ids, sizes, prompt=prompt, reps=reps, warmup=warmup, cuda=cuda)
    runner.crop(cache, prompt)
    return out


def _rounds(runner, cache, ids, sizes, *, prompt, reps, warmup, cuda) -> dict[int, list[float]]:
    out = {}
    for m in sizes:
        block = ids[0, prompt:prompt + m]
        times = []
        for i in range(warmup + reps):
            runner.crop(cache, prompt)
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                with torch.cuda.device(runner.device):
                    start.record()
                    runner.verify(block, cache)
                    end.record()
                end.synchronize()
                ms = start.elapsed_time(end)
            else:
                t0 = time.thread_time()
                runner.verify(block, cache)
                ms = (time.thread_time() - t0) * 1e3
            if i >= warmup:
                times.append(ms)
        out[m] = times
    return out


def curve_for_precision(profile: str, precision: str, *, device, decode_impl: str = "auto", sizes=SIZES,
                        reps: int = 10, max_new_tokens: int = 50, cache_len: int | None = None,
                        target_path=None) -> dict:
    """Builds the target in `precision`, sets up its decode implementation (graphs, compile: not
    timed), measures the curve, frees the model. -> {"curve_ms": {M: [ms]}, "decode_setup", "weights_bytes", ...}"""
    from .models.profiles import configure_decode, load_target

    device = torch.device(device)
    check_precision(precision, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    runner = load_target(profile, device=device, quant=PRECISIONS[precision], dtype=dtype, path=target_path)
    setup = configure_decode([runner], decode_impl, max_new_tokens=max_new_tokens, cache_len=cache_len)["target"]
    prompt = int(getattr(runner, "n_visual_tokens", 0) or 0) + TEXT_TOKENS
    curve = measure_curve(runner, sizes, prompt=prompt, reps=reps)
    out = {"precision": precision, "curve_ms": curve, "prompt_positions": prompt, "decode_setup": setup,
           "clock": clock_label(device),
           "weights_bytes": runner.memory_footprint()}
    del runner
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def curve_sizes(records) -> tuple[int, ...]:
    """M = 1..B for the run's largest hidden block B (completed parallel records; 2 <= B <= 64),
    1..9 without engine records."""
    blocks = [int(r["hidden_block"]) for r in records if r.get("kind") == "engine" and r.get("mode") == "parallel"
              and not r.get("error") and r.get("hidden_block")]
    top = min(max(max(blocks), 2), max(SIZES)) if blocks else 9
    return tuple(range(1, top + 1))


def curve_record(target, *, sizes, meta: dict, memory: dict, reps: int = 10) -> dict:
    """The run's verify_cost record: the curve of the run's own target (its decode implementation,
    set up at load), `memory` ({"bytes", "what"}) and the run's record fields (`meta`: quant, dtype,
    ...). A failure is recorded (stage verify_cost), not raised."""
    label = precision_label(meta.get("quant"), meta.get("dtype"))
    rec = {"kind": "verify_cost", **meta, "dataset": "all", "sample_id": f"verify-cost-{label}", "model": "target",
           "sizes": list(sizes), "clock": clock_label(target.device), "memory": memory, "t_wall": time.time()}
    prompt = int(getattr(target, "n_visual_tokens", 0) or 0) + TEXT_TOKENS
    try:
        curve = measure_curve(target, sizes, prompt=prompt, reps=reps)
    except Exception as exc:  # noqa: BLE001 - recorded; the run's other records stand
        return {**rec, "curve_ms": {}, "prompt_positions": prompt, "error": error_info("verify_cost", exc)}
    return {**rec, "curve_ms": {str(m): v for m, v in curve.items()}, "prompt_positions": prompt, "error": None}
