"""Static KV cache, and CUDA-graph replay of the decode and verify steps (gpt-fast style).

Why: HF-eager decode of a 7B model issues over a thousand small kernel launches per token, so its
per-token time is set by the host (Python and launch latency), not by the GPU, and varies from
token to token and from session to session (docs/results/README.md at commit 080f728,
h100-7b-shaped-bench and h100-decode-probe). A decode gate cannot work on top of that. A fixed-size cache gives every k-token step the same shapes, so each
step is captured once as a CUDA graph and then replayed with one launch: per-token time then measures
the GPU, not the host.

Four decode implementations, one interface (`CausalLMRunner.prefill/decode/verify/crop`):

  hf          transformers' own forward with a DynamicCache (the reference; CPU default)
  static      this module's forward over a fixed-size cache, run eagerly (CPU-testable)
  cuda-graph  the same forward, each k-token step captured once and replayed
  compiled    cuda-graph with the decode/verify step's glue fused by torch.compile (GPU default; below)

Why `compiled`: inside a graph the linears stream the weights, but everything else in a 7B decode
step (RMSNorms, RoPE, the K/V writes, attention over the static cache, residual adds, SiLU) is some
twenty small kernels per layer, each paying its launch and ramp-up on the GPU: about 3 ms of a 7 ms
step on an H200 (issue 19). `compiled` runs the same modules: the linears are called as they are
(nn.Linear, bitsandbytes Linear4bit, quant.Int4Linear: no kernel of theirs is traced), and the
code between them is torch.compile'd functions per layer (RoPE + K/V write + attention; residual
add + next norm; SiLU * up), so each becomes a few fused kernels. Attention in a decode step is
decode_attention's split-KV Triton kernels on CUDA (SDPA where Triton cannot run), written out as
two batched matmuls for verify steps (`ATTENTION`, measured). Compiling
around the linears, not through them, keeps every precision compilable (bitsandbytes' ops are
never traced) and compiles once for all 32 layers (same shapes). The linears that read the same
input, q/k/v and gate/up, run as one matmul each over their concatenated weights (`FusedLinear`:
fewer, bigger kernels; the modules' own weights become views into them, so the model is unchanged
and nothing is stored twice but NF4's float32 absmax; int4 runs them one by one). Prefill stays the cuda-graph
path's. The compile happens at setup, in the warm-up calls before each graph's capture, and is
reported apart (`compile_s`); on CPU the compiled functions run without graphs. If compilation
fails, the step falls back to the eager functions with a warning (`compile_error`).

The forward reuses the model's own modules in Llama's order: token embeddings, RMSNorms, q/k/v/o
projections (nn.Linear or bitsandbytes Linear4bit), MLP, rotary embedding, final norm, lm_head.
Only attention over the cache is ours: prefill (empty cache) is causal SDPA over the prompt, as
transformers does it; later steps attend over all `max_len` cache slots with the mask
`slot <= position` (a compiled decode step on CUDA reads only slots 0..position, through
decode_attention's kernels). Slots past the sequence hold stale K/V (rejected drafts, graph warm-up,
padding) that the mask hides until a real token overwrites them, so `crop` only moves the length.

Graphs exist for step sizes GRAPH_SIZES. A step of k tokens replays the smallest captured size >= k,
padded with dummy tokens after the real ones: causal masking keeps the dummies out of the real
rows. Every graph is captured at setup (`capture_graphs`), never inside a timed region; a step with
no graph big enough runs eagerly on the same cache.

Prefill is graphed the same way, in buckets of PREFILL_BUCKET positions over the prompt lengths a
runner can produce (its visual tokens plus the text budget): the prompt's embeddings are padded with
zero rows after the real ones, and the graph returns the logits of the last real row only. Stage 3
(vision tower + projector: one fixed input shape per model) is graphed by `GraphedFunction`.
Why graphs for prefill and vision too: in the parallel engine two pipelines share one Python
process, and an eager stage that needs the GIL for each of its launches stretches while the other
thread also runs Python (docs/results/README.md at commit 080f728, h100x2-7b-shaped-pipeline-2gpu).
A replayed graph is one launch.
"""
from __future__ import annotations

import bisect
import time
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .decode_attention import available as triton_available
from .decode_attention import decode_attention, supported as triton_supported

DECODE_IMPLS = ("hf", "static", "cuda-graph", "compiled")
GRAPHED_IMPLS = ("cuda-graph", "compiled")
# Exact sizes for typical draft blocks (gamma <= 8 -> k <= 9), then buckets up to the hidden cap.
GRAPH_SIZES = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 24, 32, 48, 65)
PREFILL_BUCKET = 64      # prefill graphs every 64 positions: at most 63 padded rows per prefill


class CacheFullError(RuntimeError):
    pass


def resolve_decode_impl(impl: str, device: torch.device | str) -> str:
    """'auto' -> compiled on CUDA, hf elsewhere (graphs need CUDA; hf is the reference). compiled
    replaced cuda-graph as the CUDA default when it measured faster in every precision
    (docs/results/h200-decode-precision-probe)."""
    if impl == "auto":
        return "compiled" if torch.device(device).type == "cuda" else "hf"
    if impl not in DECODE_IMPLS:
        raise ValueError(f"decode impl must be 'auto' or one of {DECODE_IMPLS}, got {impl!r}")
    if impl == "cuda-graph" and torch.device(device).type != "cuda":
        raise ValueError(f"decode impl 'cuda-graph' needs a CUDA device, got {device}")
    # 'compiled' runs on CPU too (compiled functions, no graphs): the CPU tests' path.
    return impl


def llama_parts(model: torch.nn.Module):
    """(decoder, lm_head) of a Llama-family causal LM or of a VLM wrapping one."""
    dec = model.get_decoder() if hasattr(model, "get_decoder") else None
    dec = getattr(dec, "language_model", dec)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    need = ("embed_tokens", "layers", "norm", "rotary_emb")
    if dec is None or head is None or not all(hasattr(dec, n) for n in need):
        raise ValueError(f"static decode needs a Llama-family language model; {type(model).__name__} "
                         f"has no decoder with {need} and an lm_head")
    # Same module names do not mean the same forward (q/k norms, sliding windows, RoPE that
    # rescales with the sequence): only plain Llama (Vicuna, Video-LLaVA's LM, EventGPT's LM) is
    # reproduced here. Projection biases are fine: the projections are the model's own modules.
    cfg = dec.config
    rope = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    why = [w for w, bad in (
        (f"model_type {cfg.model_type!r} (only llama)", cfg.model_type.lower() not in ("llama", "eventchat_llama")),
        ("a sliding window", getattr(cfg, "sliding_window", None)),
        (f"rope_type {rope_type!r}", rope_type in ("dynamic", "longrope")),
        ("q/k norms", hasattr(dec.layers[0].self_attn, "q_norm"))) if bad]
    if why:
        raise ValueError(f"static decode reproduces plain Llama only; this language model has {', '.join(why)}: "
                         f"use --decode hf")
    return dec, head


def prefill_buckets(shortest: int, longest: int, max_len: int, step: int = PREFILL_BUCKET) -> list[int]:
    """Bucket sizes (multiples of `step`, at most max_len) covering prompts of shortest..longest."""
    first = max(step, -(-max(1, shortest) // step) * step)
    last = -(-max(shortest, longest) // step) * step
    return [b for b in range(first, last + 1, step) if b <= max_len]


_CAPTURE_STREAMS: dict[int, torch.cuda.Stream] = {}


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The one side stream every capture on `device` uses. One per device, not one per capture:
    the caching allocator reuses a freed block only on the stream it was allocated on, so graphs
    that share a pool share its memory only when captured on one stream, and cuBLAS keeps a
    workspace per stream (scripts/memory_probe.py measures both; docs/results/README.md)."""
    index = torch.device(device).index
    index = torch.cuda.current_device() if index is None else index
    if index not in _CAPTURE_STREAMS:
        _CAPTURE_STREAMS[index] = torch.cuda.Stream(index)
    return _CAPTURE_STREAMS[index]


def capture(fn, device: torch.device, pool=None, stream: torch.cuda.Stream | None = None):
    """(graph, output) of fn() captured on `device`: two warm-up calls on a side stream first, as
    CUDA requires, and one replay after, so the first launch's one-time upload never lands in a
    timed step. Capture uses that warmed stream (`stream`, by default capture_stream):
    torch.cuda.graph's default capture stream is one per process, made on whichever device was
    current at first use, and a stream new to cuBLAS would allocate its workspace mid-capture (not
    permitted)."""
    with torch.cuda.device(device):
        side = capture_stream(device) if stream is None else stream
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(2):
                fn()
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"):
            out = fn()
        graph.replay()
        torch.cuda.synchronize(device)
    return graph, out


class GraphedFunction:
    """fn(x) -> tensor as a CUDA graph for the one input shape of `example`; any other shape,
    dtype or device runs fn eagerly. Replay returns a copy (the next replay overwrites the output).
    `pool`: a graph pool to capture into (a decoder's, whose graphs never run at the same time as
    this one: their intermediates share memory, and every output is copied out after replay)."""

    def __init__(self, fn, example: torch.Tensor, pool=None):
        self.fn = fn
        self.warned, self.eager_calls = False, 0
        self.input = example.detach().clone()
        with torch.inference_mode():
            self.graph, self.output = capture(lambda: fn(self.input), self.input.device, pool)
        if not isinstance(self.output, torch.Tensor):
            raise TypeError(f"a graphed function must return one tensor, got {type(self.output).__name__}")

    def matches(self, x: torch.Tensor) -> bool:
        return x.shape == self.input.shape and x.dtype == self.input.dtype and x.device == self.input.device

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.matches(x):
            if not self.warned:       # said once: an eager stage 3 times differently
                warnings.warn(f"graphed stage captured for {tuple(self.input.shape)} {self.input.dtype} "
                              f"runs eagerly for {tuple(x.shape)} {x.dtype}")
                self.warned = True
            self.eager_calls += 1
            return self.fn(x)
        with torch.cuda.device(self.input.device):
            self.input.copy_(x)
            self.graph.replay()
            return self.output.clone()


def _rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


# -- the glue between the linears, as functions (compiled under 'compiled') -------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm's computation (float32 statistics, weight applied in the input dtype)."""
    dtype = x.dtype
    x = x.float()
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)).to(dtype)


def add_rms_norm(h: torch.Tensor, delta: torch.Tensor, weight: torch.Tensor, eps: float):
    """(h + delta, rms_norm(h + delta)): a residual add and the next norm."""
    h = h + delta
    return h, rms_norm(h, weight, eps)


def rope_write(q, k, v, cos, sin, kbuf, vbuf, positions, head_dim: int) -> torch.Tensor:
    """RoPE on the step's q/k projections and their K/V written into this layer's cache slots.
    -> q as (1, heads, n, head_dim)."""
    n = q.shape[1]
    q = q.view(1, n, -1, head_dim).transpose(1, 2)
    k = k.view(1, n, -1, head_dim).transpose(1, 2)
    v = v.view(1, n, -1, head_dim).transpose(1, 2)
    q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
    kbuf.index_copy_(2, positions, k)
    vbuf.index_copy_(2, positions, v)
    return q


def rope_write_attend(q, k, v, cos, sin, kbuf, vbuf, positions, mask, head_dim: int, scale: float, gqa: bool):
    """rope_write, then attention of the step's rows over the whole cache (mask: slot <= position).
    -> (1, n, heads*dim)."""
    n = q.shape[1]
    q = rope_write(q, k, v, cos, sin, kbuf, vbuf, positions, head_dim)
    o = F.scaled_dot_product_attention(q, kbuf, vbuf, attn_mask=mask, scale=scale, enable_gqa=gqa)
    return o.transpose(1, 2).reshape(1, n, -1)


def rope_write_attend_math(q, k, v, cos, sin, kbuf, vbuf, positions, mask, head_dim: int, scale: float,
                           gqa: bool):
    """rope_write_attend with attention written out (q K^T, masked softmax in float32, P V), so the
    compiler lowers it to two batched matmuls and fused elementwise kernels instead of one SDPA
    kernel (for a few query rows, SDPA's kernels parallelize over heads and query blocks only)."""
    n = q.shape[1]
    q = rope_write(q, k, v, cos, sin, kbuf, vbuf, positions, head_dim)
    keys, values = kbuf, vbuf
    if gqa:
        groups = q.shape[1] // kbuf.shape[1]
        keys, values = kbuf.repeat_interleave(groups, dim=1), vbuf.repeat_interleave(groups, dim=1)
    scores = (q @ keys.transpose(-1, -2)).float() * scale
    p = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).to(q.dtype)
    return (p @ values).transpose(1, 2).reshape(1, n, -1)


def triton_attend(rope_write_fn):
    """rope_write_attend for a decode step (one row) with decode_attention's split-KV kernels, which
    read only the valid slots (from `positions`, on the GPU; no mask). rope_write_fn is rope_write,
    compiled or not; the kernels run outside torch.compile."""
    def attend(q, k, v, cos, sin, kbuf, vbuf, positions, mask, head_dim: int, scale: float, gqa: bool):
        return decode_attention(rope_write_fn(q, k, v, cos, sin, kbuf, vbuf, positions, head_dim),
                                kbuf, vbuf, positions, scale)
    return attend


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


GLUE = {"norm": rms_norm, "add_norm": add_rms_norm, "rope_write": rope_write, "attend": rope_write_attend,
        "attend_math": rope_write_attend_math, "silu_mul": silu_mul}
# Which attention a compiled step of n tokens uses. sdpa and math: that form for every step size;
# triton: decode_attention's split-KV kernels for a decode step (n = 1), the matmul form for verify
# steps; auto: triton where it can run (CUDA with Triton), else SDPA, for n = 1, and the matmul form
# for n > 1. Measured on an H200, 7B-shaped, 2070-position prompt (docs/results/h200-decode-precision-probe,
# h200-fused-decode): SDPA is 0.1-0.2 ms faster than the matmul form at n = 1, the matmul form
# 1.0-1.1 ms faster at n = 9 in every precision; triton against SDPA at n = 1: h200-triton-attention.
ATTENTION = ("auto", "sdpa", "math", "triton")
_ATTEND = {"sdpa": "attend", "math": "attend_math"}


def attention_for(attention: str, n: int, triton_ok: bool = False) -> str:
    """The GLUE entry a step of n tokens attends with, under ATTENTION choice `attention`."""
    if attention in ("auto", "triton"):
        if n > 1:
            return "attend_math"
        return "attend_triton" if attention == "triton" or triton_ok else "attend"
    return _ATTEND[attention]


class FusedGlue:
    """GLUE's functions through torch.compile (one compiled code object each, shared by every layer
    and both models); after a compile failure, the eager functions (`error` says why)."""

    def __init__(self, backend: str = "inductor", attention: str = "auto", device: torch.device | None = None,
                 shape: tuple[int, int, int] | None = None):
        """shape: (heads, kv heads, head dim) of the model, which the Triton kernels must support."""
        # Step sizes 1..65 recompile once (static first, then dynamic in the step length); allow more
        # than the default 8 so a second model or prefill-size graph never hits the limit.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        if attention not in ATTENTION:
            raise ValueError(f"attention must be one of {ATTENTION}, got {attention!r}")
        self.triton_ok = device is not None and triton_available(torch.device(device)) \
            and (shape is None or triton_supported(*shape))
        if attention == "triton" and not self.triton_ok:
            raise ValueError(f"attention 'triton' needs CUDA, the triton package and a power-of-two head dim "
                             f"(device {device}, heads / kv heads / head dim {shape}); use 'auto' or 'sdpa'")
        self.backend, self.attention = backend, attention
        self.fns = {name: torch.compile(fn, backend=backend) for name, fn in GLUE.items()}
        self.fns["attend_triton"] = triton_attend(self.fns["rope_write"])
        self.error: str | None = None

    def kinds(self) -> dict[str, str]:
        """The attention a decode step (one token) and a verify step (several) run: sdpa, math or triton."""
        names = {"attend": "sdpa", "attend_math": "math", "attend_triton": "triton"}
        return {"decode": names[attention_for(self.attention, 1, self.triton_ok)],
                "verify": names[attention_for(self.attention, 2, self.triton_ok)]}

    def attend_fn(self, n: int):
        return self.fns[attention_for(self.attention, n, self.triton_ok)]

    def fall_back(self, exc: BaseException, n: int) -> None:
        """After the first call of an n-token step failed: the eager functions from now on, and under
        'auto' a decode step's (n = 1) failure, which may be the kernels', moves decode steps to SDPA."""
        text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
        self.error = f"{type(exc).__name__}: {text}"[:300]
        warnings.warn(f"torch.compile of the decode step failed; it runs eagerly: {self.error}")
        self.fns = dict(GLUE)
        self.fns["attend_triton"] = triton_attend(rope_write)
        if self.attention == "auto" and n == 1:
            self.triton_ok = False


# -- one matmul for the linears that read the same input (compiled only) -----------------------------
class FusedLinear:
    """q/k/v (or gate/up) as one matmul over their concatenated weights, split after: one kernel
    where there were three (two), each streaming the same bytes. The modules keep working on their
    own: their weights become views into the concatenated tensor (dense), or their packed 4-bit
    bytes and float32 absmax do (NF4), so nothing is stored twice; `extra_bytes` is what NF4's
    float32 absmax holds beyond the double-quant absmax it replaces."""

    def __init__(self, matmul, sizes: list[int], extra_bytes: int = 0):
        self.matmul, self.sizes, self.extra_bytes = matmul, sizes, extra_bytes

    def __call__(self, x: torch.Tensor):
        return self.matmul(x).split(self.sizes, dim=-1)


def _fuse_dense(mods) -> FusedLinear | None:
    if any(type(m) is not torch.nn.Linear for m in mods) or len({m.bias is None for m in mods}) > 1:
        return None
    with torch.no_grad():
        w = torch.cat([m.weight for m in mods])
        b = None if mods[0].bias is None else torch.cat([m.bias for m in mods])
        off = 0
        for m in mods:
            n = m.out_features
            m.weight = torch.nn.Parameter(w[off:off + n], requires_grad=False)
            if b is not None:
                m.bias = torch.nn.Parameter(b[off:off + n], requires_grad=False)
            off += n
    return FusedLinear(lambda x: F.linear(x, w, b), [m.out_features for m in mods])


def _nf4_absmax(state) -> torch.Tensor:
    """The float32 absmax a 4-bit kernel uses: a nested (double-quant) state's, dequantized as
    bitsandbytes.functional.dequantize_4bit does it."""
    if not state.nested:
        return state.absmax.float()
    import bitsandbytes.functional as bnbf   # deferred: optional CUDA dependency, only for NF4

    return (bnbf.dequantize_blockwise(state.absmax, state.state2) + state.offset).float()


def _state_bytes(state) -> int:
    """Bytes of a QuantState's absmax (with its nested state's, under double quant)."""
    n = state.absmax.numel() * state.absmax.element_size()
    if state.nested:
        n += state.state2.absmax.numel() * state.state2.absmax.element_size()
    return n


def fuse_nf4_state(mods):
    """(packed bytes, QuantState, extra bytes) of the NF4 linears `mods` stacked along out_features:
    the bytes concatenated (row-major 4-bit blocks never straddle two weights when in_features is a
    multiple of the block) and the absmax dequantized to float32 and concatenated, so every weight
    dequantizes to exactly its own values. Each module's packed bytes become a view into the new
    buffer, and its absmax a view into the float32 one (a plain, not nested, state: the values
    bitsandbytes' kernels compute from the nested state before every matmul), so the double-quant
    absmax is freed; `extra bytes` is what the fused form holds beyond the modules' own states."""
    from bitsandbytes.functional import QuantState

    states = [m.weight.quant_state for m in mods]
    s0 = states[0]
    in_f = mods[0].in_features
    if any(s.quant_type != "nf4" or s.blocksize != s0.blocksize or s.dtype != s0.dtype for s in states) or \
            any(m.in_features != in_f for m in mods) or in_f % s0.blocksize or \
            any(getattr(s, "packing_format_for_cpu", False) for s in states):
        return None
    with torch.no_grad():
        data = torch.cat([m.weight.data.reshape(-1) for m in mods]).reshape(-1, 1)
        absmax = torch.cat([_nf4_absmax(s) for s in states])
        before = sum(_state_bytes(s) for s in states)
        off = blocks = 0
        for m, s in zip(mods, states):
            n, nb = m.weight.data.numel(), s.absmax.numel()
            m.weight.data = data[off:off + n].view(m.weight.data.shape)
            m.weight.quant_state = QuantState(absmax=absmax[blocks:blocks + nb], shape=s.shape, code=s.code,
                                              blocksize=s.blocksize, quant_type="nf4", dtype=s.dtype)
            if getattr(m, "quant_state", None) is not None:    # transformers' loads keep a second handle
                m.quant_state = m.weight.quant_state
            off, blocks = off + n, blocks + nb
    state = QuantState(absmax=absmax, shape=torch.Size([sum(m.out_features for m in mods), in_f]),
                       code=s0.code, blocksize=s0.blocksize, quant_type="nf4", dtype=s0.dtype)
    return data, state, absmax.numel() * absmax.element_size() - before


def _fuse_nf4(mods) -> FusedLinear | None:
    if any(type(m).__name__ != "Linear4bit" or m.bias is not None for m in mods) or \
            mods[0].weight.device.type != "cuda":      # bitsandbytes' CPU kernels repack weights on first use
        return None
    import bitsandbytes as bnb

    fused = fuse_nf4_state(mods)
    if fused is None:
        return None
    data, state, extra = fused
    dtype = mods[0].compute_dtype or state.dtype
    return FusedLinear(lambda x: bnb.matmul_4bit(x.to(dtype), data, quant_state=state).to(x.dtype),
                       [m.out_features for m in mods], extra_bytes=extra)


def fuse_linears(mods) -> FusedLinear | None:
    """A FusedLinear of `mods` (same input), made once per set of modules and then reused; None when
    they cannot share one matmul (int4, mixed types, NF4 on CPU): the step then calls them one by one."""
    key = tuple(id(m) for m in mods)
    made = getattr(mods[0], "_ppbench_fused", None)
    if made is not None and made[0] == key:
        return made[1]
    fused = _fuse_dense(mods) or _fuse_nf4(mods)
    mods[0]._ppbench_fused = (key, fused)
    return fused


@dataclass
class StaticCache:
    """A handle on the decoder's one set of K/V buffers: `length` valid positions."""
    owner: "StaticDecoder"
    epoch: int
    length: int = 0

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, n: int) -> None:
        # Same meaning as DynamicCache.crop in transformers 5.x: negative n removes -n positions.
        new = self.length + n if n < 0 else n
        if not 0 <= new <= self.length:
            raise ValueError(f"cannot crop a cache of {self.length} to {new}")
        self.length = new


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    ids: torch.Tensor        # (1, k) static input
    positions: torch.Tensor  # (k,) static input
    logits: torch.Tensor     # (k, V) static output


@dataclass
class _PrefillGraph:
    graph: torch.cuda.CUDAGraph
    embeds: torch.Tensor     # (1, B, D) static input: the prompt, then zero rows
    last: torch.Tensor       # (1,) static input: index of the last real row
    logits: torch.Tensor     # (1, V) static output


class StaticDecoder:
    """Fixed-size K/V buffers plus the Llama forward over them; one live sequence at a time."""

    def __init__(self, model: torch.nn.Module, *, max_len: int, graphs: bool = False, fused: bool = False,
                 compile_backend: str = "inductor", attention: str = "auto", fuse_projections: bool = True):
        self.dec, self.head = llama_parts(model)
        attn = self.dec.layers[0].self_attn
        cfg = self.dec.config
        weight = self.dec.embed_tokens.weight
        self.device, self.dtype, self.max_len = weight.device, weight.dtype, int(max_len)
        self.head_dim, self.scale = attn.head_dim, attn.scaling
        self.gqa = cfg.num_attention_heads != cfg.num_key_value_heads
        shape = (len(self.dec.layers), 1, cfg.num_key_value_heads, self.max_len, self.head_dim)
        self.k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.slots = torch.arange(self.max_len, device=self.device)
        self.epoch = 0
        self.graphs: dict[int, _Graph] | None = {} if graphs else None
        self._sizes: list[int] = []      # sorted keys of self.graphs (looked up on every step)
        self.prefill_graphs: dict[int, _PrefillGraph] = {}
        self._prefill_sizes: list[int] = []
        self.graph_pool = None   # the private pool every graph of this decoder (and its vision graph) shares
        self.glue = FusedGlue(compile_backend, attention, self.device,
                              (cfg.num_attention_heads, cfg.num_key_value_heads, self.head_dim)) if fused else None
        self._compiled: set[int] = set()     # step sizes whose first (compiling) call is done
        self.compile_s = 0.0
        self.pool_bytes = 0      # CUDA memory reserved while capturing (the graphs' private pool)
        self.fused_linears: list[tuple[FusedLinear | None, FusedLinear | None]] = []
        if fused and fuse_projections:
            self.fused_linears = [(fuse_linears([l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj]),
                                   fuse_linears([l.mlp.gate_proj, l.mlp.up_proj])) for l in self.dec.layers]
            if self.device.type == "cuda":
                # Segments the replaced weights alone held go back to the device; blocks in segments
                # other weights share stay reserved (measured: docs/results/h200-fused-decode).
                torch.cuda.empty_cache()
        if fused:
            names = {type(layer.mlp.act_fn).__name__ for layer in self.dec.layers}
            if getattr(cfg, "hidden_act", "silu") != "silu":
                raise ValueError(f"decode impl 'compiled' fuses SiLU MLPs; this model uses {cfg.hidden_act!r} "
                                 f"({names}): use --decode cuda-graph")

    def new_cache(self) -> StaticCache:
        self.epoch += 1          # the previous sequence's handle goes stale
        return StaticCache(self, self.epoch)

    def memory_bytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def fused_extra_bytes(self) -> int:
        """Bytes the fused projections hold beyond the model's own weights (NF4's float32 absmax, less
        the double-quant absmax it replaced)."""
        return sum(f.extra_bytes for pair in self.fused_linears for f in pair if f is not None)

    # -- the forward --------------------------------------------------------------------------------
    def _layers(self, h: torch.Tensor, positions: torch.Tensor, *, prefill: bool, keep: int = 1,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of the last `keep` rows, or of the rows indexed by `rows` (a padded prefill)."""
        n = h.shape[1]
        cos, sin = self.dec.rotary_emb(h, positions[None])
        cos, sin = cos[:, None], sin[:, None]
        mask = None if prefill else (self.slots[None, :] <= positions[:, None])[None, None]
        for i, layer in enumerate(self.dec.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(h)
            q = attn.q_proj(x).view(1, n, -1, self.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(1, n, -1, self.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(1, n, -1, self.head_dim).transpose(1, 2)
            q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
            self.k[i].index_copy_(2, positions, k)
            self.v[i].index_copy_(2, positions, v)
            if prefill:
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale, enable_gqa=self.gqa)
            else:
                o = F.scaled_dot_product_attention(q, self.k[i], self.v[i], attn_mask=mask, scale=self.scale,
                                                   enable_gqa=self.gqa)
            h = h + attn.o_proj(o.transpose(1, 2).reshape(1, n, -1))
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        h = h[:, -keep:] if rows is None else h.index_select(1, rows)
        return self.head(self.dec.norm(h))[0].float()

    def _fused_layers(self, h: torch.Tensor, positions: torch.Tensor, *, keep: int = 1) -> torch.Tensor:
        """A decode/verify step (cache not empty) with the glue between the linears compiled:
        the same computation as _layers(prefill=False), in fewer kernels. Logits of the last `keep` rows."""
        fn = self.glue.fns
        layers, n = self.dec.layers, h.shape[1]
        cos, sin = self.dec.rotary_emb(h, positions[None])
        cos, sin = cos[:, None], sin[:, None]
        attend = self.glue.attend_fn(n)
        # The Triton kernels read the valid length from `positions`: no mask to build.
        mask = None if attend is fn["attend_triton"] else (self.slots[None, :] <= positions[:, None])[None, None]
        first = layers[0].input_layernorm
        x = fn["norm"](h, first.weight, first.variance_epsilon)
        for i, layer in enumerate(layers):
            attn, mlp = layer.self_attn, layer.mlp
            qkv, gate_up = self.fused_linears[i] if self.fused_linears else (None, None)
            q, k, v = qkv(x) if qkv else (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))
            o = attend(q, k, v, cos, sin, self.k[i], self.v[i], positions, mask, self.head_dim, self.scale, self.gqa)
            post = layer.post_attention_layernorm
            h, x = fn["add_norm"](h, attn.o_proj(o), post.weight, post.variance_epsilon)
            nxt = layers[i + 1].input_layernorm if i + 1 < len(layers) else self.dec.norm
            gate, up = gate_up(x) if gate_up else (mlp.gate_proj(x), mlp.up_proj(x))
            h, x = fn["add_norm"](h, mlp.down_proj(fn["silu_mul"](gate, up)), nxt.weight, nxt.variance_epsilon)
        return self.head(x[:, -keep:])[0].float()

    def _step(self, h: torch.Tensor, positions: torch.Tensor, keep: int) -> torch.Tensor:
        """A decode/verify step's forward: fused when this decoder compiles, else the eager _layers.
        The first fused call of a new step size compiles; a failure there falls back to eager."""
        if self.glue is None:
            return self._layers(h, positions, prefill=False, keep=keep)
        if self.glue.error is None and h.shape[1] not in self._compiled:
            t0 = time.perf_counter()
            try:
                out = self._fused_layers(h, positions, keep=keep)
            except Exception as exc:  # noqa: BLE001 - any compiler failure: run the same step eagerly
                self.glue.fall_back(exc, h.shape[1])
                out = self._fused_layers(h, positions, keep=keep)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.compile_s += time.perf_counter() - t0
            self._compiled.add(h.shape[1])
            return out
        return self._fused_layers(h, positions, keep=keep)

    def padded_prefill(self, embeds: torch.Tensor, n: int) -> torch.Tensor:
        """Prefill of a prompt whose first `n` rows are real and the rest padding: the graphed
        prefill's computation (eager here, so CPU tests can check it). Logits of row n-1."""
        rows = torch.tensor([n - 1], device=embeds.device)
        return self._layers(embeds, self.slots[:embeds.shape[1]], prefill=True, rows=rows)

    def forward(self, cache: StaticCache, *, input_ids=None, inputs_embeds=None, keep: int = 1) -> torch.Tensor:
        """Appends the step's tokens to `cache`; returns logits (keep, V) as float32."""
        if cache.owner is not self or cache.epoch != self.epoch:
            raise RuntimeError("stale static KV cache: this runner has started another sequence since")
        start = cache.length
        if inputs_embeds is not None:
            inputs_embeds = inputs_embeds.to(self.dtype)   # what a graph's static input would hold
        n = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        if start + n > self.max_len:
            raise CacheFullError(f"static KV cache holds {self.max_len} positions; this step needs {start + n} "
                                 f"(raise the cache length: --cache-len / --ppbench-cache-len)")
        prefill = self._prefill_graph_for(n) if inputs_embeds is not None and start == 0 and keep == 1 else None
        graph = self._graph_for(n, start) if input_ids is not None and start > 0 else None
        if prefill is not None:
            with torch.cuda.device(self.device):
                logits = self._replay_prefill(prefill, inputs_embeds, n)
        elif graph is not None:
            # Graphs launch on the current device's stream: make it this model's device (the
            # drafter may live on a second GPU).
            with torch.cuda.device(self.device):
                logits = self._replay(graph, input_ids.reshape(1, n), start, n)[:n][-keep:]
        else:
            h = self.dec.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
            if start > 0:
                logits = self._step(h, self.slots[start:start + n], keep)
            else:
                logits = self._layers(h, self.slots[start:start + n], prefill=True, keep=keep)
        cache.length = start + n
        return logits

    # -- CUDA graphs ----------------------------------------------------------------------------------
    def _graph_for(self, n: int, start: int) -> _Graph | None:
        i = bisect.bisect_left(self._sizes, n)
        if i == len(self._sizes) or start + self._sizes[i] > self.max_len:
            return None
        return self.graphs[self._sizes[i]]

    def _prefill_graph_for(self, n: int) -> _PrefillGraph | None:
        i = bisect.bisect_left(self._prefill_sizes, n)
        return self.prefill_graphs[self._prefill_sizes[i]] if i < len(self._prefill_sizes) else None

    def _replay_prefill(self, g: _PrefillGraph, embeds: torch.Tensor, n: int) -> torch.Tensor:
        g.embeds[:, :n].copy_(embeds)
        g.embeds[:, n:].zero_()          # padding rows: causally after the prompt, never attended to
        g.last.fill_(n - 1)
        g.graph.replay()
        return g.logits.clone()

    def _replay(self, g: _Graph, ids: torch.Tensor, start: int, n: int) -> torch.Tensor:
        k = g.ids.shape[1]
        g.ids[:, :n].copy_(ids)
        if k > n:
            g.ids[:, n:].copy_(ids[:, -1:].expand(1, k - n))    # dummies; causally after the real rows
        g.positions.copy_(self.slots[start:start + k])
        g.graph.replay()
        return g.logits.clone()    # the next replay overwrites the static output

    @torch.inference_mode()
    def warm_compile(self, sizes=(1, 2, 3)) -> float:
        """Compiles the fused step without graphs (CPU): size 1 (the decode step's attention), then
        two sizes above (the matmul form: static, then dynamic in the length), after which no step
        size recompiles. Writes
        only the cache's last slots and invalidates any live cache. Returns seconds spent."""
        t0 = time.perf_counter()
        self.epoch += 1
        for k in sizes:
            ids = torch.zeros(1, k, dtype=torch.long, device=self.device)
            self._step(self.dec.embed_tokens(ids), self.slots[self.max_len - k:], k)   # a view, as in forward
        return time.perf_counter() - t0

    @torch.inference_mode()
    def capture_graphs(self, sizes=GRAPH_SIZES, prefill_sizes=()) -> float:
        """Captures one graph per decode/verify step size and per prefill bucket. Invalidates any
        live cache. Returns seconds spent (compile time included; `compile_s` holds it alone)."""
        if self.graphs is None:
            raise RuntimeError("this decoder was built without graphs")
        t0 = time.perf_counter()
        torch.cuda.empty_cache()         # so the reserved delta below is the graphs' pool
        reserved = torch.cuda.memory_reserved(self.device)
        self.epoch += 1
        for k in sorted(set(sizes)):
            if k > self.max_len // 2:
                continue
            # Warm-up and capture write K/V into the cache's last k slots: masked until overwritten.
            ids = torch.zeros(1, k, dtype=torch.long, device=self.device)
            positions = self.slots[self.max_len - k:].clone()
            step = lambda: self._step(self.dec.embed_tokens(ids), positions, k)  # noqa: E731
            if self.glue is not None:
                step()                  # compiles (timed apart, in compile_s) before capture's warm-up
            graph, logits = capture(step, self.device, self.graph_pool)
            self.graph_pool = graph.pool()
            self.graphs[k] = _Graph(graph, ids, positions, logits)
        self._sizes = sorted(self.graphs)
        buckets = sorted(b for b in set(prefill_sizes) if 0 < b <= self.max_len)
        if buckets:
            # One input buffer for every bucket (each graph reads its prefix); K/V of the padding
            # rows land in slots past the prompt, masked until real tokens overwrite them.
            hidden = self.dec.embed_tokens.weight.shape[1]
            embeds = torch.zeros(1, buckets[-1], hidden, dtype=self.dtype, device=self.device)
            for b in buckets:
                last = torch.zeros(1, dtype=torch.long, device=self.device)
                graph, logits = capture(lambda: self._layers(embeds[:, :b], self.slots[:b], prefill=True,
                                                             rows=last), self.device, self.graph_pool)
                self.graph_pool = graph.pool()
                self.prefill_graphs[b] = _PrefillGraph(graph, embeds[:, :b], last, logits)
            self._prefill_sizes = sorted(self.prefill_graphs)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()         # warm-up blocks outside the pool go back to the device
        self.pool_bytes = torch.cuda.memory_reserved(self.device) - reserved
        return time.perf_counter() - t0
