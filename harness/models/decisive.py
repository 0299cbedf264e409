"""Decisive random weights: a planted next-token structure, so greedy choices have a clear margin.

Plain random weights give nearly flat logits: the top two tokens differ by a few hundredths of the
logit spread, so the rounding differences between a k-token verify forward and k single-token
decodes (bf16, NF4) flip near-ties, the target's greedy output differs between target-only and the
engine, and simulated acceptance measures the wrong thing (the reference goes stale after a flip).

`plant_next_token_` rewrites only two tensors, the token embedding and the output head, both of
which stay unquantized (models/quant.py SKIP lists): no shape, dtype or cost changes.

  embedding  E[t] ~ N(0, EMBED_STD^2) per entry, large next to what the random layers add to the
             residual stream (each layer's write is bounded by its RMSNorm input), so the last
             hidden state points along E[t] of the current token t;
  head       row succ[t] = E[t] / (EMBED_STD * sqrt(H)) for a random permutation succ of the vocab,
             so logit(succ[t]) ~ sqrt(H) while every other logit is ~ N(0, 1).

The model is then (mostly) a random bigram model, t -> succ[t]: still random, but its greedy choice
wins by many logit units, far beyond bf16 / NF4 rounding. `greedy_margins` measures the margin.
"""
from __future__ import annotations

import torch
from torch import nn

EMBED_STD = 64.0


@torch.no_grad()
def plant_next_token_(model: nn.Module, seed: int, embed_std: float = EMBED_STD) -> torch.Tensor:
    """Rewrite the input embedding and output head in place; returns succ (the planted bigram)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    vocab, hidden = emb.shape
    if head.shape != emb.shape:
        raise ValueError(f"embedding {tuple(emb.shape)} and output head {tuple(head.shape)} differ in shape")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    succ = torch.randperm(vocab, generator=gen)
    # Drawn on the CPU in fp32 row blocks (the same numbers on every device), written in place.
    for start in range(0, vocab, 4096):
        rows = torch.randn(min(4096, vocab - start), hidden, generator=gen) * embed_std
        emb[start:start + len(rows)] = rows.to(emb.device, emb.dtype)
        head[succ[start:start + len(rows)].to(head.device)] = (rows / (embed_std * hidden ** 0.5)).to(head.device, head.dtype)
    return succ


def greedy_margins(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) logits -> top-1 minus top-2 logit, in units of each row's standard deviation."""
    x = logits.float()
    top = x.topk(2, dim=-1).values
    return (top[..., 0] - top[..., 1]) / x.std(dim=-1)
