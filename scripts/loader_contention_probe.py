"""Why the target's data loading stretches next to the drafter's thread (issue 5, CPU-only probe).

Times the target's stage 1 (8 frames decoded from the clip's video with PyAV) alone, then while a
second *thread* of this process runs the drafter's stage 1 (event images) or pure Python, then
while a second *process* does the same. PyAV releases the GIL while it decodes, but the Python
loop over frames takes it back after every frame (~20 frames per second of clip, plus the GOP
preroll), so a busy thread in the same process delays every frame by up to the GIL switch
interval; a process only competes for cores.

    python3 scripts/loader_contention_probe.py [--duration 20s] [--reps 7]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import threading
import time


def _spin(stop, started) -> None:
    started.set()
    while not stop.is_set():
        pass


def _drafter_load(stop, started, sample) -> None:
    from harness.data import load_event_images

    load_event_images(sample, window_ms=50, n_chunks=5)
    started.set()
    while not stop.is_set():
        load_event_images(sample, window_ms=50, n_chunks=5)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", default="20s")
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    from harness.data.synthetic import ensure_default_dataset
    from harness import data
    from harness.data import load_video_frames

    sample = data.load_samples(ensure_default_dataset(progress=False), a.duration)[0]
    load_video_frames(sample, 8)

    def timed() -> float:
        ms = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            load_video_frames(sample, 8)
            ms.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(ms)

    print(f"{sample.id}: target stage 1 alone {timed():.1f} ms (median of {a.reps})")
    for label, fn, args, kind in (("drafter stage 1 in a thread", _drafter_load, (sample,), "thread"),
                                  ("pure-Python spin in a thread", _spin, (), "thread"),
                                  ("drafter stage 1 in a process", _drafter_load, (sample,), "process"),
                                  ("pure-Python spin in a process", _spin, (), "process")):
        if kind == "thread":
            stop, started = threading.Event(), threading.Event()
            other = threading.Thread(target=fn, args=(stop, started, *args), daemon=True)
        else:
            ctx = mp.get_context("spawn")
            stop, started = ctx.Event(), ctx.Event()
            other = ctx.Process(target=fn, args=(stop, started, *args), daemon=True)
        other.start()
        started.wait()            # the competitor is working (a spawned process imports first)
        print(f"  with {label}: {timed():.1f} ms", flush=True)
        stop.set()
        other.join()


if __name__ == "__main__":
    main()
