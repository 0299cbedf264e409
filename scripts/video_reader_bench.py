"""The target's stage 1 three ways on the same clips: ppbench's seeking reader, the seed's
decode-all, and ffmpeg-threaded decoding (harness.data.video.VIDEO_READERS).

    python scripts/video_reader_bench.py [--data-root ROOT | --scale dsec] --durations 2s,20s --out DIR

Per duration and reader: the median and spread of stage-1 wall time (ms) over the clips, each clip
timed `--repeats` times after one unrecorded warm-up read per reader; the readers are interleaved
clip by clip so load drift hits all three alike. It also checks that the three return identical
frames. Writes DIR/video_readers.json and prints a table; the ratio column is reader / decode-all.
Stage 2 (preprocessing on the GPU) is measured by `ppbench run --video-reader ...`, not here.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from harness.data import load_samples
from harness.data.video import VIDEO_READERS, load_video_frames


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", help="an imported dataset root (default: the embedded one at --scale)")
    ap.add_argument("--scale", choices=["small", "dsec"], default="dsec")
    ap.add_argument("--durations", default="500ms,1s,2s,4s,5s,8s,10s,16s,20s")
    ap.add_argument("--samples", type=int, default=4, help="clips per duration")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    if a.data_root:
        root = Path(a.data_root)
    else:
        from harness.data.default_data import ensure_default_imported

        root = ensure_default_imported(a.scale, progress=False)
    rows = []
    for d in [x.strip() for x in a.durations.split(",") if x.strip()]:
        samples = load_samples(root, d, limit=a.samples)
        if not samples:
            continue
        for r in VIDEO_READERS:
            load_video_frames(samples[0], 8, reader=r)   # warm-up: imports, codec init, page cache
        times = {r: [] for r in VIDEO_READERS}
        identical = True
        for s in samples:
            ref = None
            for _ in range(a.repeats):
                for r in VIDEO_READERS:
                    t = time.perf_counter()
                    frames = load_video_frames(s, 8, reader=r)
                    times[r].append((time.perf_counter() - t) * 1e3)
                    if ref is None:
                        ref = frames
                    identical &= bool(np.array_equal(ref, frames))
        base = statistics.median(times["decode-all"])
        for r in VIDEO_READERS:
            v = times[r]
            rows.append({"duration": d, "reader": r, "n": len(v), "median_ms": statistics.median(v),
                         "min_ms": min(v), "max_ms": max(v), "ratio_to_decode_all": statistics.median(v) / base,
                         "frames_identical": identical, "frame_shape": list(ref.shape)})
    doc = {"data_root": str(root), "cpu_count": os.cpu_count(), "repeats": a.repeats, "rows": rows}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "video_readers.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{'duration':>8} {'reader':>10} {'median ms':>10} {'min':>8} {'max':>8} {'/decode-all':>11} same")
    for r in rows:
        print(f"{r['duration']:>8} {r['reader']:>10} {r['median_ms']:10.1f} {r['min_ms']:8.1f} {r['max_ms']:8.1f} "
              f"{r['ratio_to_decode_all']:11.2f} {r['frames_identical']}")
    return 0 if all(r["frames_identical"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
