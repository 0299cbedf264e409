"""Where the GPU memory of a decoder's CUDA graphs goes (issue 19, item 3), on the 7B-shaped target.

Loads the 7B-shaped target (NF4 by default), sets up the `compiled` decode the way a run does
(profiles.configure_decode) and records torch's allocated / reserved bytes and the whole device's
use (NVML) after each phase: CUDA context, weights, static cache, every graph capture (decode/verify
sizes, prefill buckets, the vision graph). Each variant runs in its own process:

  current             the code as it is: every capture on one side stream per device
  stream-per-capture  a new side stream per capture, as before commit "one capture stream": the
                      allocator reuses a freed pool block only on the stream it was made on, and
                      cuBLAS keeps a workspace per stream
  no-prefill          no prefill graphs (prefill runs eagerly)
  pair                the NF4 pair in one process (drafter, then target), current code

Caches and prefill graphs are sized for the generated dataset's questions (as a run on it sizes
them; --questions none: the fixed text budget). The allocator is the environment's
(PYTORCH_CUDA_ALLOC_CONF; `ppbench run` sets expandable segments unless --cuda-alloc default).

  python scripts/memory_probe.py --out $OUT            # GPU host; writes memory-probe.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import gpu_memory  # noqa: E402
from harness.data.synthetic import QUESTIONS  # noqa: E402
from harness.models import base, static_decode  # noqa: E402
from harness.models.profiles import configure_decode, load_drafter, load_target  # noqa: E402

VARIANTS = ("current", "stream-per-capture", "no-prefill", "pair")
GiB = 2 ** 30


def snapshot(label: str, device) -> dict:
    torch.cuda.synchronize(device)
    used = gpu_memory.used_bytes(device)
    return {"phase": label, "allocated_gib": torch.cuda.memory_allocated(device) / GiB,
            "reserved_gib": torch.cuda.memory_reserved(device) / GiB,
            "device_used_gib": used["device_used"] / GiB}


def run_variant(variant: str, quant: str, max_new_tokens: int, questions=()) -> dict:
    device = torch.device("cuda")
    torch.cuda.init()
    torch.empty(1, device=device)
    phases = [snapshot("context", device)]
    captures = []
    original = static_decode.capture

    def per_capture(fn, dev, pool=None):       # the code before the capture-stream change
        return original(fn, dev, pool, stream=torch.cuda.Stream(dev))

    inner = per_capture if variant == "stream-per-capture" else original

    def recording_capture(fn, dev, pool=None):
        before = snapshot("", dev)
        graph, out = inner(fn, dev, pool)
        after = snapshot("", dev)
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        captures.append({"output_shape": shape, "shared_pool": pool is not None,
                         "d_allocated_mib": (after["allocated_gib"] - before["allocated_gib"]) * 1024,
                         "d_reserved_mib": (after["reserved_gib"] - before["reserved_gib"]) * 1024})
        return graph, out

    static_decode.capture = recording_capture
    if variant == "no-prefill":
        base.prefill_buckets = lambda *a, **k: []
    t0 = time.perf_counter()
    drafter_setup = None
    if variant == "pair":
        drafter = load_drafter("7b-shaped", device=device, quant=quant, dtype=torch.bfloat16)
        phases.append(snapshot("drafter weights", device) | {"s": time.perf_counter() - t0})
        drafter_setup = configure_decode([drafter], "compiled", max_new_tokens=max_new_tokens,
                                         questions=questions)["drafter"]
        phases.append(snapshot("drafter decode set up", device) | {"s": time.perf_counter() - t0})
    target = load_target("7b-shaped", device=device, quant=quant, dtype=torch.bfloat16)
    phases.append(snapshot("weights", device) | {"s": time.perf_counter() - t0})
    setup = configure_decode([target], "compiled", max_new_tokens=max_new_tokens, questions=questions)["target"]
    phases.append(snapshot("decode set up (cache + graphs)", device) | {"s": time.perf_counter() - t0})
    stats = torch.cuda.memory_stats(device)
    return {"variant": variant, "quant": quant, "phases": phases, "captures": captures,
            "setup": {k: v for k, v in setup.items() if k != "graph_sizes"},
            "graph_sizes": setup.get("graph_sizes"),
            "drafter_setup": drafter_setup and {k: v for k, v in drafter_setup.items() if k != "graph_sizes"},
            "segments": {k: stats.get(k) for k in ("segment.all.current", "segment.large_pool.current",
                                                    "allocation.all.current", "num_alloc_retries")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quant", default="nf4")
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--questions", choices=("dataset", "none"), default="dataset")
    ap.add_argument("--one", help=argparse.SUPPRESS)        # child: run one variant, print JSON
    args = ap.parse_args()
    if args.one:
        questions = tuple(QUESTIONS) if args.questions == "dataset" else ()
        result = run_variant(args.one, args.quant, args.max_new_tokens, questions)
        print("RESULT " + json.dumps(result | {"allocator": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")}))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for v in args.variants.split(","):
        t = time.perf_counter()
        p = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--quant", args.quant,
                            "--max-new-tokens", str(args.max_new_tokens), "--questions", args.questions,
                            "--one", v],
                           capture_output=True, text=True)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        if p.returncode or not lines:
            results.append({"variant": v, "error": p.stderr[-3000:]})
        else:
            results.append(json.loads(lines[-1][7:]))
        r = results[-1]
        last = r.get("phases", [{}])[-1]
        print(f"{v}: {time.perf_counter() - t:.0f} s; " + (f"reserved {last.get('reserved_gib', 0):.2f} GiB, "
              f"device {last.get('device_used_gib', 0):.2f} GiB" if "phases" in r else "FAILED " + r["error"][-400:]),
              flush=True)
        for c in r.get("captures", []):
            print(f"   capture {c['output_shape']}: +{c['d_reserved_mib']:.0f} MiB reserved, "
                  f"+{c['d_allocated_mib']:.0f} MiB allocated", flush=True)
    (args.out / "memory-probe.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
