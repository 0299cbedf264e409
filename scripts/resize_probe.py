"""How fast, and how steadily, does this host run the target's stage-2 resize (8 frames of 1440x1080
through CLIP's PIL bicubic resize to a 224 shortest edge, as models/image_processing.py does)?
Random frames, N rounds each: on its own, right after a multi-threaded torch matmul (its worker
threads spin), on 8 threads (Pillow releases the GIL while resizing), and with P busy processes
beside it (other load on the machine, as the drafter's host stages are).

    python3 scripts/resize_probe.py [N=30] [P=2]      # prints one JSON line of ms per round
"""
import json, os, statistics as st, sys, time, multiprocessing as mp
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from PIL import Image
import torch

def one(x):
    return np.array(Image.fromarray(x).resize((298, 224), resample=3, reducing_gap=None))

def burn(stop):
    a = np.random.default_rng(1).random((2000, 2000))
    while not stop.is_set():
        (a * 1.0001).sum()

def series(frames, n, pre=None, pool=None):
    out = []
    for _ in range(n):
        if pre: pre()
        t = time.perf_counter()
        list(pool.map(one, frames)) if pool else [one(f) for f in frames]
        out.append((time.perf_counter() - t) * 1e3)
    return out

def q(xs):
    xs = sorted(xs); return {"min": round(xs[0], 1), "median": round(st.median(xs), 1), "p90": round(xs[int(.9 * len(xs))], 1), "max": round(xs[-1], 1)}

if __name__ == "__main__":
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (1080, 1440, 3), dtype=np.uint8) for _ in range(8)]
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    res = {"torch_threads": torch.get_num_threads(), "cpus": os.cpu_count()}
    series(frames, 3)
    res["serial"] = q(series(frames, n))
    x = torch.randn(1024, 1024)
    res["serial_after_torch_matmul"] = q(series(frames, n, pre=lambda: x @ x))
    with ThreadPoolExecutor(8) as pool:
        res["threads8"] = q(series(frames, n, pool=pool))
    stop = mp.Event(); ps = [mp.Process(target=burn, args=(stop,)) for _ in range(int(sys.argv[2]) if len(sys.argv) > 2 else 2)]
    [p.start() for p in ps]
    res["serial_with_busy_procs"] = q(series(frames, n))
    stop.set(); [p.join() for p in ps]
    print(json.dumps(res))
