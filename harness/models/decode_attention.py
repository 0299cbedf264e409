"""Split-KV attention for a decode step over the static cache (flash-decoding), in Triton.

Why: a decode step's one query row per head attends over the whole cache. cuDNN's SDPA kernel
parallelizes over heads and query blocks only, so a 7B's 32 heads keep a fraction of an H200's
132 SMs busy: 16 µs a layer for the 40 MB of K/V at 2,432 slots (2.4 TB/s), about 0.5 ms of a
4.4-4.7 ms step, and it reads every slot, valid or not (docs/results/h200-fused-decode). Here the
cache is cut into CHUNK-slot splits, one program per (head, split) reads its split's K/V once and
keeps a running max / sum / weighted V in float32 (online softmax); a second kernel combines the
splits of each head. The valid length is read on the GPU from the step's `positions` input, so a
CUDA graph captured once serves every cache length, and splits past the sequence read nothing:
stale slots (rejected drafts, warm-ups) are never touched, as the mask `slot <= position` hides them
in the SDPA form.

One query row (decode steps; verify steps use the matmul form, static_decode.ATTENTION), batch 1,
grouped-query attention by head index (kv head = head // group). On a host without Triton, or off
CUDA, `available()` is False and the compiled step keeps SDPA; with TRITON_INTERPRET=1 the same
kernels run on CPU tensors (Triton's interpreter), which is how CPU CI checks them.
"""
from __future__ import annotations

import contextlib
import os

import torch

try:  # Triton ships with CUDA builds of torch; CPU hosts may lack it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the host
    triton = None

# The launch configuration: the fastest of 24 on an H200 at both models' cache shapes, 7B heads
# (scripts/attention_bench.py, docs/results/h200-triton-attention). A script may set these before a
# graph is captured.
CHUNK = 64         # cache slots per split (a multiple of BLOCK_N)
BLOCK_N = 64       # slots a program loads per iteration
NUM_WARPS = 2      # of the split kernel
COMBINE_WARPS = 4  # of the combining kernel


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available(device: torch.device) -> bool:
    """Whether the Triton kernels can run on `device`: CUDA with Triton, or Triton's interpreter on CPU."""
    if triton is None:
        return False
    return device.type == "cpu" if interpreting() else device.type == "cuda"


def supported(heads: int, kv_heads: int, head_dim: int) -> bool:
    """Whether the kernels take this attention shape: whole groups of query heads per kv head, and a
    power-of-two head dim (one tl.arange over it)."""
    return heads % kv_heads == 0 and head_dim >= 1 and head_dim & (head_dim - 1) == 0


if triton is not None:
    @triton.jit
    def _split_kernel(q_ptr, k_ptr, v_ptr, pos_ptr, part_ptr, ml_ptr, scale, n_split,
                      stride_qh, stride_kh, stride_ks, stride_vh, stride_vs,
                      GROUP: tl.constexpr, CHUNK: tl.constexpr, BLOCK_N: tl.constexpr, D: tl.constexpr):
        """Program (head h, split s): online softmax over slots [s*CHUNK, min((s+1)*CHUNK, pos+1))."""
        h = tl.program_id(0)
        s = tl.program_id(1)
        kv = h // GROUP
        n_valid = tl.load(pos_ptr) + 1
        start = s * CHUNK
        end = tl.minimum(start + CHUNK, n_valid)
        d = tl.arange(0, D)
        q = tl.load(q_ptr + h * stride_qh + d).to(tl.float32) * scale
        m = tl.full([1], float("-inf"), tl.float32)
        l = tl.zeros([1], tl.float32)
        acc = tl.zeros([D], tl.float32)
        for off in range(start, end, BLOCK_N):
            n = off + tl.arange(0, BLOCK_N)
            valid = n < end
            # K and V both loaded before any arithmetic: one round trip to memory per block, not two.
            k = tl.load(k_ptr + kv * stride_kh + n[:, None] * stride_ks + d[None, :], mask=valid[:, None], other=0.0)
            v = tl.load(v_ptr + kv * stride_vh + n[:, None] * stride_vs + d[None, :], mask=valid[:, None], other=0.0)
            score = tl.sum(k.to(tl.float32) * q[None, :], axis=1)
            score = tl.where(valid, score, float("-inf"))
            m_new = tl.maximum(m, tl.max(score, axis=0))
            p = tl.exp(score - m_new)
            rescale = tl.exp(m - m_new)
            acc = acc * rescale + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
            l = l * rescale + tl.sum(p, axis=0)
            m = m_new
        row = h * n_split + s
        tl.store(part_ptr + row * D + d, acc)
        one = tl.arange(0, 1)
        tl.store(ml_ptr + row * 2 + one, m)          # -inf and 0 for a split past the sequence
        tl.store(ml_ptr + row * 2 + 1 + one, l)

    @triton.jit
    def _combine_kernel(part_ptr, ml_ptr, out_ptr, n_split, SPLITS: tl.constexpr, D: tl.constexpr):
        """Program h: the splits' partial sums of head h, rescaled to their common max, normalized."""
        h = tl.program_id(0)
        s = tl.arange(0, SPLITS)
        has = s < n_split
        row = h * n_split + s
        m = tl.load(ml_ptr + row * 2, mask=has, other=float("-inf"))
        l = tl.load(ml_ptr + row * 2 + 1, mask=has, other=0.0)
        w = tl.exp(m - tl.max(m, axis=0))              # split 0 always holds slot 0: the max is finite
        d = tl.arange(0, D)
        part = tl.load(part_ptr + row[:, None] * D + d[None, :], mask=has[:, None], other=0.0)
        out = tl.sum(w[:, None] * part, axis=0) / tl.sum(w * l, axis=0)
        tl.store(out_ptr + h * D + d, out.to(out_ptr.dtype.element_ty))


def decode_attention(q: torch.Tensor, kbuf: torch.Tensor, vbuf: torch.Tensor, positions: torch.Tensor,
                     scale: float, *, chunk: int | None = None, block: int | None = None,
                     num_warps: int | None = None, combine_warps: int | None = None) -> torch.Tensor:
    """softmax(q K^T * scale) V of one query row per head over the cache slots 0..positions[0].

    q: (1, H, 1, D); kbuf, vbuf: (1, H_kv, S, D), the layer's cache (last dim contiguous);
    positions: (1,) int64, the row's position (its K/V already written). -> (1, 1, H * D) in q's dtype."""
    if triton is None:
        raise RuntimeError("decode attention 'triton' needs the triton package (it ships with CUDA builds of torch)")
    _, heads, rows, dim = q.shape
    kv_heads, slots = kbuf.shape[1], kbuf.shape[2]
    if rows != 1 or positions.numel() != 1:
        raise ValueError(f"triton decode attention takes one query row, got {rows}")
    if not supported(heads, kv_heads, dim) or kbuf.stride(-1) != 1 or vbuf.stride(-1) != 1:
        raise ValueError(f"triton decode attention: unsupported shapes q {tuple(q.shape)}, cache {tuple(kbuf.shape)}")
    chunk = chunk or CHUNK
    block = min(block or BLOCK_N, chunk)
    if chunk % block:
        raise ValueError(f"triton decode attention: chunk {chunk} is not a multiple of block {block}")
    n_split = triton.cdiv(slots, chunk)
    q = q.reshape(heads, dim)
    if q.stride(-1) != 1:
        q = q.contiguous()
    part = torch.empty(heads, n_split, dim, dtype=torch.float32, device=q.device)
    ml = torch.empty(heads, n_split, 2, dtype=torch.float32, device=q.device)
    out = torch.empty(1, 1, heads * dim, dtype=q.dtype, device=q.device)
    # Triton launches on the current device's current stream: make that q's device (a drafter on a
    # second GPU), where the K/V write before this ran.
    with torch.cuda.device(q.device) if q.device.type == "cuda" else contextlib.nullcontext():
        _split_kernel[(heads, n_split)](q, kbuf, vbuf, positions, part, ml, float(scale), n_split,
                                        q.stride(0), kbuf.stride(1), kbuf.stride(2), vbuf.stride(1), vbuf.stride(2),
                                        GROUP=heads // kv_heads, CHUNK=chunk, BLOCK_N=block, D=dim,
                                        num_warps=num_warps or NUM_WARPS)
        _combine_kernel[(heads,)](part, ml, out, n_split, SPLITS=triton.next_power_of_2(n_split), D=dim,
                                  num_warps=combine_warps or COMBINE_WARPS)
    return out
