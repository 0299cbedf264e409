"""The target's stage 1 (load: decode 8 frames) and stage 2 (preprocess) for each video reader, per
duration, on the same clips, with one target model loaded once.

    python scripts/target_stage12_bench.py --profile 7b-shaped --device cuda --data-root ROOT --out DIR

Readers are interleaved clip by clip; one unrecorded warm-up sample per reader. Stage boundaries
synchronize the device (harness.timing.StageClock). Writes DIR/target_stage12.json and prints the
median S1 / S2 per duration and reader; ratio = reader's S1 / decode-all's S1 on the same clips.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from harness.data import load_samples
from harness.data.video import VIDEO_READERS
from harness.models.profiles import load_target
from harness.options import defaults
from harness.runconfig import resolve
from harness.timing import StageClock


def stage12(target, sample) -> tuple[float, float]:
    clock = StageClock(target.device)
    raw = target.load_inputs(sample)
    s1 = clock.mark("load")
    target.preprocess(raw, sample.question)
    return s1, clock.mark("preprocess")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="7b-shaped")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--target-path")
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--durations", default="500ms,1s,2s,4s,5s,8s,10s,16s,20s")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--out", default=".")
    a = ap.parse_args()
    cfg = resolve(defaults(profile=a.profile, device=a.device, target_path=a.target_path, data_root=a.data_root))
    device = cfg.torch_device
    target = load_target(cfg.profile, device=device, quant=cfg.quant, dtype=cfg.torch_dtype, path=cfg.target_path)
    rows = []
    for d in [x.strip() for x in a.durations.split(",") if x.strip()]:
        samples = load_samples(a.data_root, d, limit=a.samples)
        if not samples:
            continue
        for r in VIDEO_READERS:
            target.video_reader = r
            stage12(target, samples[0])
        got = {r: ([], []) for r in VIDEO_READERS}
        for s in samples:
            for r in VIDEO_READERS:
                target.video_reader = r
                s1, s2 = stage12(target, s)
                got[r][0].append(s1)
                got[r][1].append(s2)
        base = statistics.median(got["decode-all"][0])
        for r, (s1, s2) in got.items():
            rows.append({"duration": d, "reader": r, "n": len(s1), "s1_ms": s1, "s2_ms": s2,
                         "s1_median_ms": statistics.median(s1), "s2_median_ms": statistics.median(s2),
                         "s1_ratio_to_decode_all": statistics.median(s1) / base})
    doc = {"profile": a.profile, "device": str(device),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "data_root": a.data_root, "rows": rows}
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "target_stage12.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{'duration':>8} {'reader':>10} {'S1 ms':>8} {'S2 ms':>8} {'S1/decode-all':>13}")
    for r in rows:
        print(f"{r['duration']:>8} {r['reader']:>10} {r['s1_median_ms']:8.1f} {r['s2_median_ms']:8.1f} "
              f"{r['s1_ratio_to_decode_all']:13.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
