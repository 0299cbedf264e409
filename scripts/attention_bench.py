"""Decode-step attention alone (one query row per head over a static cache), 7B shapes: cuDNN's SDPA
as the compiled step runs it (masked, every slot) against models/decode_attention.py's split-KV
Triton kernels in several launch configurations. Each variant is one CUDA graph of 32 calls over 32
separate layer caches (so the L2 holds none of them), timed by CUDA events, median of --reps
replays; µs per layer and the rate over the valid K/V bytes.

    python3 scripts/attention_bench.py --out DIR          # on a GPU host
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from precision_probe import timer  # noqa: E402

from harness.models import decode_attention as DA  # noqa: E402
from harness.models.static_decode import capture  # noqa: E402

LAYERS, HEADS, DIM = 32, 32, 128


def bench(fn, reps: int) -> float:
    """ms per replay of a graph of fn (fn runs the 32 layers): static_decode.capture's warmed
    capture, then precision_probe's timer (CUDA events, median of reps)."""
    dev = torch.device("cuda")
    graph, _ = capture(fn, dev)
    return timer(dev)(graph.replay, reps=reps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--shapes", default="2304:2100,896:680", help="slots:position pairs (target, drafter)")
    ap.add_argument("--blocks", default="32,64,128")
    ap.add_argument("--chunks", default="64,128,256")
    ap.add_argument("--warps", default="2,4,8")
    ap.add_argument("--configs", default="", help="BLOCK:CHUNK:WARPS:COMBINE_WARPS,... instead of the grid "
                    "of --blocks x --chunks x --warps (combining kernel at decode_attention.COMBINE_WARPS)")
    a = ap.parse_args()
    dev = torch.device("cuda")
    out = {"device": torch.cuda.get_device_name(dev), "torch": torch.__version__, "shapes": {}}
    for shape in a.shapes.split(","):
        slots, pos = (int(x) for x in shape.split(":"))
        gen = torch.Generator(device=dev).manual_seed(0)
        q = torch.randn(1, HEADS, 1, DIM, device=dev, dtype=torch.bfloat16, generator=gen)
        ks = [torch.randn(1, HEADS, slots, DIM, device=dev, dtype=torch.bfloat16, generator=gen) for _ in range(LAYERS)]
        vs = [torch.randn(1, HEADS, slots, DIM, device=dev, dtype=torch.bfloat16, generator=gen) for _ in range(LAYERS)]
        positions = torch.tensor([pos], device=dev)
        mask = (torch.arange(slots, device=dev) <= positions)[None, None, None]
        scale = DIM ** -0.5
        valid_bytes = 2 * (pos + 1) * HEADS * DIM * 2
        rows = {}

        def record(name, fn, **cfg):
            try:
                ms = bench(fn, a.reps)
                rows[name] = {"us_per_layer": ms * 1e3 / LAYERS, "valid_TBps": valid_bytes * LAYERS / (ms * 1e-3) / 1e12, **cfg}
            except Exception as exc:  # noqa: BLE001 - a configuration that cannot run is recorded
                rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:300], **cfg}
            r = rows[name]
            print(f"{slots}:{pos} {name:34s} " + (f"{r['us_per_layer']:6.2f} us/layer {r['valid_TBps']:.2f} TB/s"
                                                   if "us_per_layer" in r else r["error"]), flush=True)

        want = F.scaled_dot_product_attention(q, ks[0], vs[0], attn_mask=mask, scale=scale).transpose(1, 2).reshape(1, 1, -1)
        record("sdpa-masked (the compiled step's)",
               lambda: [F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale) for k, v in zip(ks, vs)])
        record("sdpa over the valid slots only",
               lambda: [F.scaled_dot_product_attention(q, k[:, :, :pos + 1], v[:, :, :pos + 1], scale=scale)
                        for k, v in zip(ks, vs)])
        if a.configs:
            configs = [tuple(int(x) for x in c.split(":")) for c in a.configs.split(",")]
        else:
            configs = [(b, c, w, DA.COMBINE_WARPS) for b, c, w in
                       itertools.product(*(map(int, x.split(",")) for x in (a.blocks, a.chunks, a.warps)))]
        for block, chunk, warps, cwarps in configs:
            if chunk % block:
                continue
            kw = dict(chunk=chunk, block=block, num_warps=warps, combine_warps=cwarps)
            got = DA.decode_attention(q, ks[0], vs[0], positions, scale, **kw)
            err = (got.float() - want.float()).abs().max().item()
            record(f"triton block {block} chunk {chunk} warps {warps}/{cwarps}",
                   lambda: [DA.decode_attention(q, k, v, positions, scale, **kw) for k, v in zip(ks, vs)],
                   block=block, chunk=chunk, warps=warps, combine_warps=cwarps, max_abs_err=err)
        out["shapes"][shape] = rows
        del ks, vs
        torch.cuda.empty_cache()
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "attention_bench.json").write_text(json.dumps(out, indent=1))
    for shape, rows in out["shapes"].items():
        ok = {n: r for n, r in rows.items() if "us_per_layer" in r and n.startswith("triton")}
        if ok:
            best = min(ok, key=lambda n: ok[n]["us_per_layer"])
            print(f"{shape}: best {best} {ok[best]['us_per_layer']:.2f} us/layer; "
                  f"sdpa-masked {rows['sdpa-masked (the compiled step' + chr(39) + 's)'].get('us_per_layer', float('nan')):.2f}")


if __name__ == "__main__":
    main()
