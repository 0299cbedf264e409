"""Parallel-prefill speculative decoding, gpt-fast style: one file, readable top to bottom.

Both pipelines start at the same instant. The target (Video-LLaVA) runs stages 1-4 in the calling
thread (its own high-priority CUDA stream, or its own device); meanwhile the drafter's side
(`DrafterSide`: a thread of this process, `Drafting`, or the drafter's own process,
harness/drafter_process.py) runs the drafter's (EventGPT's) stages 1-4, then keeps drafting greedy
tokens until the target's prefill is done. Those "hidden" tokens
cost nothing on the critical path; the target checks the first against its own first token and
verifies the rest in ONE forward. Decoding then continues as ordinary speculative decoding with a
fixed or adaptive draft length. Output is always the target's own greedy output (lossless).

Overlap policy (`overlap`): with the drafter on its own GPU (or on CPU) it drafts until the target is
ready ("always"). On a GPU it shares with the target, a hidden token is not free: the drafter's
decode kernels take SMs from the target's vision encoder and prefill, delaying the critical path
and starving the drafter (measured: docs/results/README.md at commit 080f728,
h100-7b-shaped-engine-1gpu-always). So there it
drafts only while the target loads its data, one step in flight, and waits while the target's
preprocessing (which ends on the GPU) and GPU stages run ("yield-gpu", the default on a shared
GPU). Its own stages 1-4 run when it reaches its GPU stages while the target is still on the host;
a drafter whose host stages end later sits the sample out (no GPU stage, no hidden block: its
vision and prefill would only delay the target's, measured: docs/results/h200-alloc-sitout), and
the target decodes alone.

Bookkeeping conventions (the two models have different prompt lengths Pd and Pt):
  * `out` is the output so far; out[-1] is the target's pending token (not yet in its cache), so
    the target cache always holds Pt + len(out) - 1 positions.
  * The drafter may lag: `pending` is the suffix of `out` it has not yet processed, so its cache
    holds Pd + len(out) - len(pending) positions. Its next forward feeds all of `pending` at once.
  * Acceptance uses vLLM's definitions: drafted / accepted counts, acceptance rate =
    accepted / drafted, mean acceptance length = 1 + accepted / verify_steps, per position
    [accepted, drafted], and per verify block [drafted, accepted] in order (accept_blocks, the
    hidden block first: the run-length structure metrics.acceptance_structure reads). The hidden block counts as one verify step (position 0 is checked by the
    prefill logits, positions 1.. by one verify forward), so every block yields 1 + accepted tokens
    and  tokens produced == verify_steps + accepted + decode_steps  (before EOS/max truncation).
  * The two vocabularies may differ (EventGPT 32001 rows, Video-LLaVA 32064): a target id the
    drafter has no row for is fed to the drafter as its unk id (`drafter_ids`). Only what the
    drafter reads changes; such a token can never be drafted, so a draft at its position is rejected.

Timing: one clock everywhere (`now_ms`: host perf_counter after the calling thread's stream has
finished; CUDA events read back against it where steps are queued), one stages-1-4 prefix
(`run_stages_1_to_4`) and one plain greedy decode (`plain_decode`), used by the five-stage records (stages.run_sample), the baselines (harness/baselines.py) and this
engine alike. On CUDA plain decode steps are queued ahead of the host, as gpt-fast's decode loop
runs: each step's token stays on the GPU and feeds the next step there, is copied to pinned host
memory behind its step, and is read back DECODE_QUEUE steps later with its completion time (a CUDA
event against an origin of known host time). The host launches while the GPU works through the
steps queued before, so a step costs its GPU time, not a host round trip (synchronize, read the
token, launch the next) on top.

Times are ms from the sample's common start.
"""
from __future__ import annotations

import collections
import contextlib
import math
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch

from .costmodel import MAX_GAMMA, Costs, choose_gamma, ideal_e2e_ms
from .models.base import CausalLMRunner, greedy
from .options import OVERLAP_CHOICES
from .results import EngineResult, finish_result

STAGES = ("load", "preprocess", "vision", "prefill")
_PINNED_TOKENS = 64                      # pinned host slots for queued tokens (the default hidden cap)
# Under yield-gpu the drafter stops when the target's host work ends (loading and preprocessing, both
# CPU: decoding and resizing frames), just before its first GPU kernels (vision encoding): from there
# on a drafter step in flight delays the target (on one GPU the target's stream pre-empts the
# drafter's only between kernels, and a drafter in another process time-slices with it).
# Preprocessing's last act, the pixels' copy to the GPU, runs on the target's own stream and does not
# queue behind the drafter's kernels.
YIELD_AFTER = "preprocess"
OVERLAP_POLICIES = OVERLAP_CHOICES   # harness/options.py: auto, always, yield-gpu


# Plain decode steps the host queues ahead of the GPU before it reads a token back (CUDA); 0 = one
# host round trip per step (decode_step). A step queued past an EOS is computed and dropped.
DECODE_QUEUE = 4


# -- timing -----------------------------------------------------------------------------------------
def now_ms(device: torch.device | str | None = None) -> float:
    """Wall clock in ms, after the work queued on `device` by this thread has finished.

    Synchronizes only the calling thread's current stream: a device-wide torch.cuda.synchronize
    would make the drafter wait for the target's stream and erase the overlap being measured."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return time.perf_counter() * 1e3


def _sync_all(*runners: CausalLMRunner) -> None:
    """Synchronizes the devices of the runners in this process (a drafter process syncs its own)."""
    for r in runners:
        if r.device.type == "cuda" and not getattr(r, "is_process", False):
            torch.cuda.synchronize(r.device)


def _stream_for(runner: CausalLMRunner, *, high_priority: bool = False) -> torch.cuda.Stream | None:
    """The runner's own CUDA stream for its pipeline (None on CPU), made once per runner and
    priority and reused by every run: the caching allocator reuses a freed block only on the
    stream it was allocated on, so a fresh stream per run grows the reserved memory with every
    sample, and work of a run queues after what the previous run left on it (abandoned draft
    steps). On a shared GPU the target's stream gets the highest priority, so the drafter's
    kernels yield the SMs to the target's vision encoder and prefill (graph replays run at their
    stream's priority)."""
    if runner.device.type != "cuda":
        return None
    streams = runner.__dict__.setdefault("_pipeline_streams", {})
    if high_priority not in streams:
        priority = torch.cuda.Stream.priority_range()[1] if high_priority else 0
        streams[high_priority] = torch.cuda.Stream(runner.device, priority=priority)
    return streams[high_priority]


def _on(stream: torch.cuda.Stream | None):
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _question(sample: Any) -> str:
    return getattr(sample, "question", sample)


# -- stages 1-4 -----------------------------------------------------------------------------------
def run_stages_1_to_4(runner: CausalLMRunner, sample: Any, question: str | None = None, *,
                      t0: float | None = None, on_host_done: Callable[[], None] | None = None,
                      gpu_if: Callable[[], bool] | None = None, ends: dict | None = None):
    """Stages 1-4 -> (cache, first_logits, {stage: end_ms}); end times are relative to `t0`.
    on_host_done() is called when the host stages (YIELD_AFTER: loading and preprocessing) are over;
    then gpu_if(), when given, decides whether the GPU stages run at all: False returns
    (None, None, ends) there. `ends`, when given, is filled as each stage ends, so after a failure
    it says which stages finished."""
    question = _question(sample) if question is None else question
    t0 = now_ms(runner.device) if t0 is None else t0
    ends = {} if ends is None else ends
    raw = runner.load_inputs(sample)
    ends["load"] = now_ms(runner.device) - t0
    prepared = runner.preprocess(raw, question)
    ends["preprocess"] = now_ms(runner.device) - t0
    if on_host_done is not None:
        on_host_done()
    if gpu_if is not None and not gpu_if():
        return None, None, ends
    embeds = runner.encode_vision(prepared)
    ends["vision"] = now_ms(runner.device) - t0
    cache, logits = runner.prefill(embeds)
    ends["prefill"] = now_ms(runner.device) - t0
    return cache, logits, ends


# -- measured acceptance ------------------------------------------------------------------
@dataclass
class Acceptance:
    drafted: int = 0
    accepted: int = 0
    verify_steps: int = 0
    rejections: int = 0                       # blocks that stopped at a mismatch
    per_position: list = field(default_factory=list)   # [[accepted, drafted], ...]
    blocks: list = field(default_factory=list)         # [[drafted, accepted], ...] in order; [0] = hidden

    def add_block(self, n_drafted: int, n_accepted: int) -> None:
        self.blocks.append([int(n_drafted), int(n_accepted)])
        self.drafted += n_drafted
        self.accepted += n_accepted
        self.verify_steps += 1
        self.rejections += int(n_accepted < n_drafted)
        while len(self.per_position) < n_drafted:
            self.per_position.append([0, 0])
        for i in range(n_drafted):
            self.per_position[i][1] += 1
            self.per_position[i][0] += int(i < n_accepted)

    def alpha_hat(self, prior: tuple[float, float] = (1.0, 1.0)) -> float:
        # Blocks stop at the first mismatch, so the per-token MLE is accepted / (accepted + misses);
        # a Beta(1, 1) prior keeps the first blocks from deciding everything.
        a, b = prior
        return (self.accepted + a) / (self.accepted + self.rejections + a + b)


def _next_gamma(gamma: int | str, acc: Acceptance, costs: Costs, remaining: int) -> int:
    if gamma != "adaptive":
        g = int(gamma)
    else:
        # Only a measured plain step is the decode cost (verify(1) would extrapolate from the
        # hidden block's k-token verify).
        decode = costs.plain()
        if decode is None:
            g = 0                            # one plain step measures the decode cost
        elif costs.draft() is None:
            g = 1 if acc.alpha_hat() >= 0.5 else 0   # probe the draft cost once
        else:
            g = choose_gamma(acc.alpha_hat(), costs.draft(), costs.verify, decode)
    return max(0, min(g, remaining - 1))


# -- simulated acceptance -----------------------------------------------------------------------------
class Emitter:
    """Turns drafter logits into the token it emits at output position `pos`.

    Simulated mode: the drafter still runs (real cost), but emits the target's reference token with
    probability alpha, otherwise a token guaranteed to differ from it."""

    def __init__(self, select, alpha: float | None, reference: Sequence[int] | None, seed: int):
        self.select, self.alpha, self.reference = select, alpha, reference
        self.rng = random.Random(seed)

    def __call__(self, logits: torch.Tensor, pos: int) -> int:
        own = int(self.select(logits))
        forced = self.forced(pos, logits.shape[-1])
        return own if forced is None else forced

    def forced(self, pos: int, vocab: int) -> int | None:
        """The simulated token at `pos` (one coin drawn), or None where the drafter's own counts."""
        if self.alpha is None or pos >= len(self.reference):
            return None
        ref = int(self.reference[pos])
        if self.rng.random() < self.alpha:
            return ref
        return (ref + 1 + self.rng.randrange(vocab - 1)) % vocab


# -- end of sequence ------------------------------------------------------------------------------
def _eos_set(runner: CausalLMRunner, stop_at_eos: bool) -> set[int]:
    eos = runner.eos_token_id if stop_at_eos else None
    if eos is None:
        return set()
    return {int(e) for e in eos} if isinstance(eos, (list, tuple)) else {int(eos)}


# -- plain greedy decoding ---------------------------------------------------------------------------
def decode_step(runner: CausalLMRunner, cache, token: int, select=greedy) -> tuple[int, float, float]:
    """One plain decode forward -> (next token, start ms, end ms); the end is read after the
    runner's stream has finished the step and the token is on the host."""
    start = now_ms(runner.device)
    token = int(select(runner.decode(token, cache)))
    return token, start, now_ms(runner.device)


class StepClock:
    """Completion times of queued work in ms from t0: on a CUDA device, events read back against an
    origin whose host time is known (recorded, then synchronized); elsewhere the host clock, since
    CPU work is done when its call returns."""

    def __init__(self, device: torch.device, t0: float):
        self.cuda, self.t0 = device.type == "cuda", t0
        if self.cuda:    # the stream the device's work runs on (a drafter may live on a second GPU)
            self.stream = torch.cuda.current_stream(device)
            self.origin = torch.cuda.Event(enable_timing=True)
            self.origin.record(self.stream)
        self.origin_ms = now_ms(device) - t0

    def mark(self):
        if not self.cuda:
            return time.perf_counter() * 1e3 - self.t0
        event = torch.cuda.Event(enable_timing=True)
        event.record(self.stream)
        return event

    def read(self, mark) -> float:
        """The mark's time; waits for it on CUDA."""
        if not self.cuda:
            return mark
        mark.synchronize()
        return self.origin_ms + self.origin.elapsed_time(mark)


def plain_decode(runner: CausalLMRunner, cache, token: int, n: int, *, eos: set[int], select=greedy,
                 t0: float = 0.0, costs: Costs | None = None, depth: int | None = None):
    """Up to n plain greedy steps after `token` (the pending one, not yet in the cache), ending
    after an EOS -> (tokens, times in ms from t0). Each step's cost goes to costs: start to end
    as a verify of 1 when it is a round trip, completion to completion as a queued plain step.
    `depth` (default DECODE_QUEUE on CUDA, 0 elsewhere): steps queued ahead of the host, each
    step's token fed to the next on the device and read back `depth` steps later; steps queued
    past an EOS are cropped from the cache. 0: decode_step."""
    depth = (DECODE_QUEUE if runner.device.type == "cuda" else 0) if depth is None else depth
    tokens, times = [], []
    if depth == 0:
        while len(tokens) < n and (not tokens or tokens[-1] not in eos):
            token, start, end = decode_step(runner, cache, token, select)
            tokens.append(token)
            times.append(end - t0)
            if costs is not None:
                costs.add_verify(1, end - start)
        return tokens, times
    # Each token is copied to host memory (pinned on CUDA) right behind its step, so reading it
    # waits for that step only: .item() on the device tensor would wait for every step queued
    # after it (its copy queues behind them), draining the queue at each read.
    cuda = runner.device.type == "cuda"
    host = torch.empty(max(n, _PINNED_TOKENS), dtype=torch.long, pin_memory=cuda)
    clock = StepClock(runner.device, t0)
    prev, queue, queued, nxt = clock.origin_ms, collections.deque(), 0, token
    while queue or queued < n:
        while queued < n and len(queue) <= depth:
            nxt = select(runner.decode(nxt, cache))      # stays on the device: the next step reads it there
            host[queued].copy_(nxt, non_blocking=cuda)
            queue.append((queued, clock.mark()))
            queued += 1
        i, mark = queue.popleft()
        times.append(clock.read(mark))                   # waits for step i, and so for its token's copy
        tokens.append(int(host[i]))
        if costs is not None:
            costs.plain_ms.append(times[-1] - prev)
        prev = times[-1]
        if tokens[-1] in eos:
            break
    if queue:                                            # queued past the EOS: dropped, then waited
        runner.crop(cache, runner.cache_len(cache) - len(queue))   # for, outside the times
        clock.read(queue[-1][1])
    return tokens, times


def greedy_decode(runner: CausalLMRunner, cache, logits: torch.Tensor, n: int, *, eos: set[int],
                  select=greedy, t0: float = 0.0, costs: Costs | None = None):
    """Plain decode up to n tokens (token 1 from the prefill logits) -> (tokens, times_ms from t0)."""
    tokens, times = [int(select(logits))], [now_ms(runner.device) - t0]
    if n > 1 and tokens[0] not in eos:
        more, more_times = plain_decode(runner, cache, tokens[0], n - 1, eos=eos, select=select, t0=t0, costs=costs)
        tokens += more
        times += more_times
    return tokens, times


def prefix_and_decode(runner: CausalLMRunner, sample: Any, n: int, *, stop_at_eos: bool = False, select=greedy,
                      t0: float | None = None, costs: Costs | None = None, ends: dict | None = None):
    """One model on its own: stages 1-4, then plain greedy decoding of up to n tokens
    -> (tokens, token times, stage ends with "decode", prompt length); ms from t0 (default: now).
    The five-stage records, target-only, sequential and the simulated-alpha reference all run it."""
    t0 = now_ms(runner.device) if t0 is None else t0
    ends = {} if ends is None else ends
    cache, logits, _ = run_stages_1_to_4(runner, sample, t0=t0, ends=ends)
    prompt_len = runner.cache_len(cache)
    tokens, times = greedy_decode(runner, cache, logits, n, eos=_eos_set(runner, stop_at_eos), select=select,
                                  t0=t0, costs=costs)
    ends["decode"] = times[-1]
    return tokens, times, ends, prompt_len


# -- parallel prefill -------------------------------------------------------------------------------
def resolve_overlap(policy: str, drafter, target) -> str:
    """'auto' -> 'yield-gpu' when both models share one CUDA device, else 'always'. drafter and
    target are runners or devices."""
    if policy not in OVERLAP_POLICIES:
        raise ValueError(f"overlap must be one of {OVERLAP_POLICIES}, got {policy!r}")
    if policy != "auto":
        return policy
    def indexed(x) -> torch.device:          # "cuda" means the current CUDA device
        dev = torch.device(getattr(x, "device", x))
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
        return dev

    d, t = indexed(drafter), indexed(target)
    return "yield-gpu" if d.type == "cuda" and d == t else "always"


def _target_stages(target, sample, t0: float, select, side: "DrafterSide"):
    """Target stages 1-4 on its own high-priority stream, in the calling thread; `side.on_gpu` is
    set when its host stages end (YIELD_AFTER: what follows uses the GPU), `side.ready` when its prefill is
    done (or failed). -> (cache, first token, stage ends, first token's time)."""
    try:
        with _on(_stream_for(target, high_priority=True)):
            cache, logits, ends = run_stages_1_to_4(target, sample, t0=t0, on_host_done=side.on_gpu.set)
            t1 = int(select(logits))
            return cache, t1, ends, now_ms(target.device) - t0
    finally:
        side.ready.set()


class DrafterSide(Protocol):
    """The drafter's half of one parallel run (its KV cache, stream and emitter), wherever it runs:
    `Drafting` (a thread of this process) or drafter_process.RemoteDrafting (the drafter's own
    process). The target's pipeline sets `on_gpu` when its host stages end and `ready` when its
    prefill is done; the drafter sets `host_done` when its own host stages end; prompt_len is the
    drafter's prompt length once finish() has returned."""
    ready: Any
    on_gpu: Any
    host_done: Any
    prompt_len: int

    def start(self, sample, t0: float, n_max: int, *, yield_gpu: bool) -> None:
        """Starts the drafter's stages 1-4 and hidden drafting (at most n_max tokens); returns at once."""

    def finish(self) -> tuple[list[int], list[float], dict]:
        """Stops hidden drafting -> (hidden tokens, their finish times, the drafter's stage ends)."""

    def realign(self, out: list[int]) -> list[int]:
        """Drops drafter cache entries past the output -> the output suffix it has not processed."""

    def draft_block(self, pending: list[int], gamma: int, pos: int, t0: float) -> tuple[list[int], list[float]]:
        """Feeds `pending`, drafts gamma tokens for output positions pos... -> (tokens, finish times)."""

    def cache_len(self) -> int:
        """The drafter's cache length."""


def drafter_side(drafter, costs: Costs, select, alpha, reference, seed: int) -> DrafterSide:
    """The drafter's half of a run: its own `drafting` where it provides one (a DrafterProcess),
    else a Drafting in this process."""
    own = getattr(drafter, "drafting", None)
    if own is not None:
        return own(costs, select, alpha, reference, seed)
    return Drafting(drafter, Emitter(select, alpha, reference, seed), costs)


def drafter_ids(tokens: Sequence[int], vocab: int | None, unk: int) -> list[int]:
    """Token ids as the drafter can read them: an id past its vocabulary (a target id it has no
    row for) becomes its unk id."""
    return [int(t) if vocab is None or int(t) < vocab else unk for t in tokens]


def _unk_id(runner, vocab: int) -> int:
    unk = getattr(getattr(runner, "tokenizer", None), "unk_token_id", None)
    return unk if isinstance(unk, int) and 0 <= unk < vocab else 0


class Drafting:
    """DrafterSide in this process: stages 1-4 and hidden drafting run in a thread
    ("ppbench-drafter", start/finish) while the caller runs the target; the speculative phase's
    calls run in the caller's thread. A drafter process runs one in its main thread
    (stages_and_hidden, harness/drafter_process.py)."""

    def __init__(self, drafter: CausalLMRunner, emit: "Emitter", costs: "Costs"):
        self.runner, self.emit, self.costs = drafter, emit, costs
        self.stream = _stream_for(drafter)
        self.cache, self.prompt_len = None, 0
        self.vocab, self.unk = None, 0
        self.ready, self.on_gpu, self.host_done = threading.Event(), threading.Event(), threading.Event()
        self._thread, self._box = None, {}
        _sync_all(drafter)

    def start(self, sample, t0: float, n_max: int, *, yield_gpu: bool) -> None:
        def run():
            try:
                with torch.inference_mode():
                    self._box["value"] = self.stages_and_hidden(sample, t0, n_max, self.ready,
                                                                self.on_gpu if yield_gpu else None, self.host_done)
            except BaseException as exc:  # re-raised by finish()
                self._box["error"] = exc

        self._box = {}
        self.host_done.clear()
        self._thread = threading.Thread(target=run, name="ppbench-drafter", daemon=True)
        self._thread.start()

    def finish(self):
        self.ready.set()        # the target is ready (or failed): stop drafting in any case
        self._thread.join()
        if "error" in self._box:
            raise self._box["error"]
        return self._box["value"]

    def stages_and_hidden(self, sample, t0: float, n_max: int, ready, pause=None, host_done=None):
        """-> (hidden tokens, their finish times, drafter stage end times); see _draft_hidden.
        `host_done` is set when the drafter's host stages end. Under yield-gpu (`pause`) a drafter
        whose host stages end after the target's sits the sample out: no GPU stage, no token
        ([], [], ends). host_done is set before `pause` is read, so a target that finds it unset
        after setting `pause` knows the drafter will sit out (parallel_prefill_decode)."""
        with _on(self.stream):
            self.cache, logits, ends = run_stages_1_to_4(
                self.runner, sample, t0=t0, on_host_done=None if host_done is None else host_done.set,
                gpu_if=None if pause is None else (lambda: not pause.is_set()))
            if logits is None:
                self.prompt_len = 0
                return [], [], ends
            self.vocab = logits.shape[-1]
            self.unk = _unk_id(self.runner, self.vocab)
            hidden, times = _draft_hidden(self.runner, self.cache, logits, n_max, ready, self.emit, t0,
                                          self.costs, pause, feed=self.feed)
        self.prompt_len = self.runner.cache_len(self.cache) - (len(hidden) - 1)
        return hidden, times, ends

    def feed(self, token: int) -> int:
        return drafter_ids([token], self.vocab, self.unk)[0]

    def realign(self, out: list[int]) -> list[int]:
        with _on(self.stream):
            return _realign_drafter(self.runner, self.cache, self.prompt_len, out)

    def draft_block(self, pending: list[int], gamma: int, pos: int, t0: float):
        with _on(self.stream):
            return _draft_block(self.runner, self.cache, drafter_ids(pending, self.vocab, self.unk), gamma, pos,
                                self.emit, t0, self.costs, feed=self.feed)

    def cache_len(self) -> int:
        return 0 if self.cache is None else self.runner.cache_len(self.cache)


def _draft_hidden(drafter, cache, logits, n_max, ready: threading.Event, emit, t0, costs,
                  pause: threading.Event | None = None, feed: Callable[[int], int] = int):
    """Draft greedily from the drafter's prefill until the target is ready or n_max tokens; once
    `pause` is set, wait for the target instead of drafting (the yield-gpu policy).
    -> (tokens, finish times in ms from t0). On CPU each step is synchronous; a step still running
    when the target becomes ready joins the block. feed() maps a token to the id the drafter
    reads (drafter_ids)."""
    if drafter.device.type == "cuda":
        return _draft_hidden_queued(drafter, cache, logits, n_max, ready, emit, t0, costs, pause, feed)
    tokens, times = [emit(logits, 0)], [now_ms(drafter.device) - t0]
    while len(tokens) < n_max and not ready.is_set():
        if pause is not None and pause.is_set():
            ready.wait()
            break
        start = now_ms(drafter.device)
        logits = drafter.decode(feed(tokens[-1]), cache)
        tokens.append(emit(logits, len(tokens)))
        times.append(now_ms(drafter.device) - t0)
        costs.draft_ms.append(times[-1] + t0 - start)
    return tokens, times


def _draft_hidden_queued(drafter, cache, logits, n_max, ready, emit, t0, costs, pause, feed=int):
    """The CUDA version: steps are queued back to back with each token kept on the GPU (the next
    step reads it there), two steps in flight, so the drafter drafts at its GPU speed with no
    host round trip per token. Under yield-gpu (`pause`) one step only: whatever is in flight when
    the target takes the GPU delays it. Each step copies its token into pinned host memory and
    records a timing event; once the target is ready, finished steps are read from there and steps still
    queued or running are abandoned: cropped from the cache, left to finish in the background,
    never waited for, so verification starts at once."""
    dev = drafter.device
    stream = torch.cuda.current_stream(dev)
    first = emit(logits, 0)                              # synchronizes: the drafter is ready here
    origin = torch.cuda.Event(enable_timing=True)
    origin.record(stream)
    origin_ms = now_ms(dev) - t0                         # origin has completed: host time of it
    # Simulated tokens are drawn up front (they do not depend on the drafter's output).
    forced = [emit.forced(pos, logits.shape[-1]) for pos in range(1, n_max)]
    forced_dev = torch.tensor([feed(first)] + [-1 if f is None else feed(f) for f in forced], device=dev)
    # One size for every sample (the hidden cap's), so the pinned block is reused, not reallocated.
    host = torch.zeros(max(n_max - 1, _PINNED_TOKENS), dtype=torch.long, pin_memory=True)
    token = forced_dev[0]
    stop = (ready,) if pause is None else (ready, pause)
    steps = []                                           # one done-event per queued step
    depth = 1 if pause is not None else 2
    with torch.cuda.device(dev):
        while 1 + len(steps) < n_max and not any(f.is_set() for f in stop):
            if len(steps) >= depth and not _done_unless(steps[-depth], *stop):
                break
            own = emit.select(drafter.decode(token, cache))
            i = len(steps)
            token = own if forced[i] is None else forced_dev[i + 1]
            host[i].copy_(own, non_blocking=True)
            done = torch.cuda.Event(enable_timing=True)
            done.record(stream)
            steps.append(done)
    if pause is not None and pause.is_set():
        ready.wait()
    elif steps and not ready.is_set():
        _done_unless(steps[-1], ready)       # stopped by the cap: the last steps still count
    n_done = next((i for i, ev in enumerate(steps) if not ev.query()), len(steps))
    if n_done < len(steps):
        drafter.crop(cache, drafter.cache_len(cache) - (len(steps) - n_done))
    tokens = [first] + [int(host[i]) if forced[i] is None else forced[i] for i in range(n_done)]
    times = [origin_ms] + [origin_ms + origin.elapsed_time(ev) for ev in steps[:n_done]]
    costs.hidden_ms.extend(b - a for a, b in zip(times, times[1:]))
    return tokens, times


def _done_unless(event: torch.cuda.Event, ready: threading.Event, *others: threading.Event,
                 poll_s: float = 2e-3) -> bool:
    """Waits for `event`; False as soon as `ready` (or any of `others`) is set. Waits on `ready`
    between polls of the event (the GIL is released meanwhile): a set `ready` wakes it at once,
    and the coarse poll costs no drafter speed because the next step is already queued. (A finer
    poll wakes the drafter's thread many times a step and delays the target's frame decoding, which
    takes the GIL back after every frame: docs/results/README.md at commit 080f728, *Intermediate
    runs*.)"""
    while not event.query():
        if ready.wait(poll_s) or any(f.is_set() for f in others):
            return False
    return True


def _draft_block(drafter, cache, pending, gamma, pos, emit, t0, costs, feed: Callable[[int], int] = int):
    """Feed the drafter's pending tokens (ids it can read), then draft `gamma` tokens for output
    positions pos..."""
    tokens, times = [], []
    for i in range(gamma):
        start = now_ms(drafter.device)
        if i == 0:
            logits = drafter.verify(pending, cache)[-1] if len(pending) > 1 else drafter.decode(pending[0], cache)
        else:
            logits = drafter.decode(feed(tokens[-1]), cache)
        tokens.append(emit(logits, pos + i))
        times.append(now_ms(drafter.device) - t0)
        if i > 0 or len(pending) <= 2:       # a long catch-up forward is not a typical draft step
            costs.draft_ms.append(times[-1] + t0 - start)
    return tokens, times


def _n_accepted(draft: Sequence[int], choices: Sequence[int]) -> int:
    m = 0
    while m < len(draft) and draft[m] == choices[m]:
        m += 1
    return m


def _verify(target, tcache, pt, out, block, select, t0, res) -> int:
    """One target forward over [pending, *block]; extends `out` by the accepted prefix + bonus."""
    start = now_ms(target.device)
    logits = target.verify([out[-1], *block], tcache)
    choices = [int(c) for c in select(logits).tolist()]
    end = now_ms(target.device)
    res.timeline["verify_ms"].append([start - t0, end - t0])
    res.costs.add_verify(len(block) + 1, end - start)
    m = _n_accepted(block, choices)
    out.extend(block[:m])
    out.append(choices[m])
    target.crop(tcache, pt + len(out) - 1)
    return m


def realign_point(cache_len: int, pd: int, out: Sequence[int]) -> int:
    """The drafter cache length that keeps only entries of the output (out[-1] is never in it)."""
    return min(cache_len, pd + len(out) - 1)


def _realign_drafter(drafter, dcache, pd, out) -> list[int]:
    """Drop drafter cache entries past the output; return the output suffix it has not processed."""
    length = realign_point(drafter.cache_len(dcache), pd, out)
    drafter.crop(dcache, length)
    return out[length - pd:]


@torch.inference_mode()
def reference_output(target, sample, max_new_tokens: int, *, stop_at_eos: bool = False, select=greedy) -> list[int]:
    """The target's plain greedy output for `sample` (target-only's tokens, untimed)."""
    return prefix_and_decode(target, sample, max_new_tokens, stop_at_eos=stop_at_eos, select=select)[0]


def _check_arguments(max_new_tokens: int, hidden_cap: int, gamma, alpha) -> None:
    if max_new_tokens < 1 or hidden_cap < 1:
        raise ValueError(f"max_new_tokens ({max_new_tokens}) and hidden_cap ({hidden_cap}) must be >= 1")
    if gamma != "adaptive" and not 0 <= int(gamma) <= 64:
        raise ValueError(f"gamma must be 'adaptive' or an int in 0..64, got {gamma!r}")
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")


@torch.inference_mode()
def parallel_prefill_decode(drafter, target: CausalLMRunner, sample: Any, *, max_new_tokens: int = 50,
                            gamma: int | str = "adaptive", hidden_cap: int = 64, stop_at_eos: bool = False,
                            alpha: float | None = None, reference_tokens: Sequence[int] | None = None,
                            seed: int = 0, select=greedy, overlap: str = "auto") -> EngineResult:
    """Parallel prefill + hidden drafting + speculative decoding; see the module docstring.

    drafter: a runner (drafted in a thread here) or a drafter_process.DrafterProcess.
    overlap: 'always', 'yield-gpu' or 'auto' (yield-gpu when both models share a CUDA device).
    alpha: simulated acceptance (the drafter emits the reference token with this probability).
    reference_tokens: the target's plain greedy output for this sample; computed when alpha is
    given without it."""
    _check_arguments(max_new_tokens, hidden_cap, gamma, alpha)
    overlap = resolve_overlap(overlap, drafter, target)
    if alpha is not None and reference_tokens is None:
        reference_tokens = reference_output(target, sample, max_new_tokens, stop_at_eos=stop_at_eos, select=select)
    eos = _eos_set(target, stop_at_eos)
    res = EngineResult(mode="parallel", gamma=gamma, alpha_simulated=alpha, overlap=overlap)
    acc, costs, tl = Acceptance(), res.costs, res.timeline

    # Stages 1-4 of both models from one common start; the drafter drafts while it waits.
    side = drafter_side(drafter, costs, select, alpha, reference_tokens, seed)
    _sync_all(target)
    t0 = now_ms()
    yield_gpu = overlap == "yield-gpu"
    side.start(sample, t0, min(hidden_cap, max_new_tokens), yield_gpu=yield_gpu)
    try:
        tcache, t1, t_ends, res.ttft_ms = _target_stages(target, sample, t0, select, side)
    except BaseException:
        side.finish()
        raise
    # Under yield-gpu a drafter still on the host now will sit the sample out (it reads on_gpu, set
    # by the target, after host_done): decode without waiting for it, and collect it after.
    late = yield_gpu and not side.host_done.is_set()
    hidden, hidden_ms, d_ends = ([], [], {}) if late else side.finish()
    try:
        # The target's stream is done (synchronized after prefill). Abandoned draft steps may still
        # run on the drafter's stream: all later drafter work stays on that stream (ordered after them
        # on the GPU), and the target's work never waits for it, on a shared GPU either (a
        # device-wide synchronize, or the default stream waiting on it, would).
        pt, pd = target.cache_len(tcache), side.prompt_len
        res.n_prompt_tokens = {"drafter": pd, "target": pt}
        tl.update(drafter_stage_end_ms=d_ends, target_stage_end_ms=t_ends, draft_token_ms=list(hidden_ms))
        out = [t1]
        tl["token_ms"] = [res.ttft_ms]        # when out reached each length (ms from t0)
        # Sat out (yield-gpu, the target reached the GPU first): no window, no block; target-only's loop.
        res.drafter_sat_out = not hidden
        if hidden:
            res.window_ms = t_ends["prefill"] - d_ends["prefill"]
            # The hidden block: d1 is checked against t1 by the prefill logits, the rest by one forward.
            m = _verify(target, tcache, pt, out, hidden[1:], select, t0, res) if hidden[0] == t1 else -1
            tl["token_ms"] += [tl["verify_ms"][-1][1]] * (len(out) - 1) if m >= 0 else []
            acc.add_block(len(hidden), m + 1)
            # A draft step that was running when the target became ready (CPU only; CUDA abandons it)
            # joins the block, but only tokens finished inside the window are "hidden".
            in_window = sum(1 for t in hidden_ms if t <= t_ends["prefill"])
            res.hidden_block, res.hidden_drafted, res.hidden_accepted = len(hidden), in_window, min(m + 1, in_window)
            pending = side.realign(out)

        # Speculative decoding with a fixed or adaptive draft length; gamma 0 = plain target decode.
        # A gamma of 0 chosen from measured costs is kept to the end (`plain`): no block is verified
        # while decoding plainly, so the acceptance estimate and the draft and verify costs it rests on
        # stay as they were; the rest is then target-only's loop, with no drafter bookkeeping.
        # A fixed gamma of 0 is plain from the start (no block is ever drafted after the window).
        plain, ended = res.drafter_sat_out or gamma == 0, bool(eos.intersection(out))
        while len(out) < max_new_tokens and not ended:
            if plain:             # the rest is target-only's loop
                more, times = plain_decode(target, tcache, out[-1], max_new_tokens - len(out), eos=eos,
                                           select=select, t0=t0, costs=costs)
                out += more
                tl["token_ms"] += times
                res.gamma_trace += [0] * len(more)
                res.decode_steps += len(more)
                break
            g = _next_gamma(gamma, acc, costs, max_new_tokens - len(out))
            res.gamma_trace.append(g)
            n_before = len(out)
            if g == 0:
                plain = plain or gamma != "adaptive" or 1 in costs.verify_ms
                token, start, end = decode_step(target, tcache, out[-1], select)
                out.append(token)
                tl["token_ms"].append(end - t0)
                costs.add_verify(1, end - start)
                res.decode_steps += 1
            else:
                block, times = side.draft_block(pending, g, len(out), t0)
                tl["draft_token_ms"].extend(times)
                acc.add_block(g, _verify(target, tcache, pt, out, block, select, t0, res))
                tl["token_ms"] += [tl["verify_ms"][-1][1]] * (len(out) - n_before)
            ended = bool(eos.intersection(out[n_before:]))
            if not plain:
                pending = side.realign(out)

        # When the last output token reached the host, as target-only's e2e (baselines._plain).
        res.e2e_ms = tl["token_ms"][-1]
    except BaseException:
        if late:      # collect the drafter that sat out; the target's error is the one to raise
            with contextlib.suppress(Exception):
                side.finish()
        raise
    if late:          # a drafter that sat out is collected after the timed run
        tl["drafter_stage_end_ms"] = side.finish()[2]
    _record_acceptance(res, acc)
    finish_result(res, out, eos, max_new_tokens, reference_tokens)
    res.ideal_e2e_ms = _ideal_for(res, hidden_cap, len(res.output_tokens))
    return res


def _record_acceptance(res: EngineResult, acc: Acceptance) -> None:
    res.drafted, res.accepted, res.verify_steps = acc.drafted, acc.accepted, acc.verify_steps
    res.accept_per_position = [list(p) for p in acc.per_position]
    res.accept_blocks = [list(b) for b in acc.blocks]


# -- the cost model applied to a run (harness/costmodel.py) ---------------------------------------
def _ideal_for(res: EngineResult, hidden_cap: int, n_tokens: int) -> float | None:
    c = res.costs
    decode = c.plain()
    if decode is None:
        return None
    draft = c.draft() if c.draft() is not None else 0.0
    hidden = c.hidden() if c.hidden() is not None else 0.0
    # The regime the run settled in: adaptive runs that fell back to plain decoding model gamma 0.
    gamma = Counter(res.gamma_trace).most_common(1)[0][0] if res.gamma_trace else 0
    target_ends = res.timeline["target_stage_end_ms"]
    # A drafter that sat the sample out is never ready: no window, the target alone.
    return ideal_e2e_ms(drafter_ready_ms=res.timeline["drafter_stage_end_ms"].get("prefill", math.inf),
                        target_ready_ms=target_ends["prefill"],
                        draft_until_ms=target_ends[YIELD_AFTER] if res.overlap == "yield-gpu" else None,
                        draft_ms=draft, hidden_step_ms=hidden, verify_ms=c.verify, decode_ms=decode,
                        accept_per_position=res.accept_per_position, n_tokens=n_tokens,
                        gamma=gamma, hidden_cap=hidden_cap)

