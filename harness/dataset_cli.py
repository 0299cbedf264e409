"""`ppbench dataset generate | import-dsec | import-seed`: argument parsing and the one-line report."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from harness.errors import DataError


def add_parsers(ds_sub) -> None:
    gen = ds_sub.add_parser("generate", help="generate a dataset in DSEC's bulk download layout")
    gen.add_argument("--out", required=True, help="where to write it")
    gen.add_argument("--scale", choices=["small", "dsec"], default="small",
                     help="small: 320x240 frames, 200 k events/s (CPU); dsec: 1440x1080, 3 M events/s")
    gen.add_argument("--sequences", type=int, default=2)
    gen.add_argument("--sequence-s", type=float, default=22.0, help="seconds per sequence")
    gen.add_argument("--event-rate", type=int, default=None, help="events/s (default: the scale's)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    gen.add_argument("--force", action="store_true", help="replace --out if it exists")

    imp = ds_sub.add_parser("import-dsec", help="a DSEC download (bulk or per-sequence) -> a ppbench dataset root")
    imp.add_argument("src", help="folder holding <split>_events/ + <split>_images/, or <seq>/events + <seq>/images")
    imp.add_argument("--out", required=True)
    imp.add_argument("--durations", default=None, help="comma-separated, e.g. 500ms,4s,20s (default: all 9)")
    imp.add_argument("--sequences", default=None, help="comma-separated sequence names (default: all)")
    imp.add_argument("--questions", default=None,
                     help="question list: JSON list or one per line (default: the seed's benchmark question)")
    imp.add_argument("--samples-per-duration", type=int, default=None,
                     help="cap per duration, evenly spaced over the kept clips (default: all)")
    imp.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="sequences in parallel")
    imp.add_argument("--force", action="store_true", help="start over instead of resuming")

    seed = ds_sub.add_parser("import-seed", help="the seed fork's own datasets (sample JSON + event_npy + mp4)")
    seed.add_argument("json_dir", help="a my_egpt_dsec_seq_<d> folder, or a folder holding several")
    seed.add_argument("--out", required=True)
    seed.add_argument("--allow-pickle", action="store_true",
                      help="the seed's event .npy files are pickled dicts: reading them runs pickle")
    seed.add_argument("--samples-per-duration", type=int, default=None)


def _bar(desc: str, disable: bool = False):
    from tqdm import tqdm

    bar = tqdm(total=None, desc=desc, unit="seq", disable=disable)

    def update(done: int, total: int, what: str) -> None:
        bar.total = total
        bar.set_postfix_str(what)
        bar.update(done - bar.n)
    return bar, update


def main(args) -> int:
    t = time.perf_counter()
    try:
        if args.dataset_command == "generate":
            from harness.data.synthetic import build_bulk

            bar, update = _bar("generating")
            root = build_bulk(args.out, seed=args.seed, scale=args.scale, n_sequences=args.sequences,
                              sequence_s=args.sequence_s, event_rate=args.event_rate,
                              workers=args.workers, overwrite=args.force, progress=update)
            bar.close()
            print(f"generated {args.sequences} sequences ({args.scale} scale, DSEC bulk layout) at {root} "
                  f"in {time.perf_counter() - t:.1f} s")
            return 0
        if args.dataset_command == "import-dsec":
            from harness.data.dsec_import import import_dsec, load_questions

            split = (lambda s: [x.strip() for x in s.split(",") if x.strip()] if s else None)
            bar, update = _bar("importing")
            summary = import_dsec(args.src, args.out, durations=split(args.durations),
                                  sequences=split(args.sequences), questions=load_questions(args.questions),
                                  samples_per_duration=args.samples_per_duration, workers=args.workers,
                                  overwrite=args.force, progress=update)
            bar.close()
            _print_summary(summary, args.out, time.perf_counter() - t)
            return 0
        if args.dataset_command == "import-seed":
            from harness.data.seed_import import import_seed

            summary = import_seed(args.json_dir, args.out, allow_pickle=args.allow_pickle,
                                  samples_per_duration=args.samples_per_duration)
            print(f"imported {sum(summary['counts'].values())} seed clips into {args.out} "
                  f"({', '.join(f'{k}: {v}' for k, v in summary['counts'].items())}); "
                  f"{len(summary['skipped'])} skipped")
            for s in summary["skipped"]:
                print(f"  skipped {s['clip']}: {s['reason']}")
            return 0
    except (DataError, FileExistsError, ValueError) as e:
        raise SystemExit(f"ppbench dataset {args.dataset_command}: {e}") from None
    return 2


def _print_summary(summary: dict, out: str, seconds: float) -> None:
    counts = summary["counts"]
    if summary.get("already_complete"):
        print(f"{out} already holds this import (same source and rule); nothing to do")
        return
    n_seq = len(summary["source_sequences"])
    print(f"imported {n_seq} sequences into {out} in {seconds:.1f} s "
          f"({n_seq / max(seconds, 1e-9) * 60:.1f} sequences/min)")
    print("  clips kept / samples per duration: "
          + ", ".join(f"{d} {c['clips']}/{c['samples']}" for d, c in counts.items()))
    skipped = summary["skipped"]
    if skipped:
        print(f"  skipped {len(skipped)}: " + ", ".join(f"{k} x{v}" for k, v in summary["skipped_by_reason"].items()))
        for s in skipped[:20]:
            print(f"    {s['clip'] or '(whole sequence)'}: {s['reason']} [{s['file']}]", file=sys.stderr)
        if len(skipped) > 20:
            print(f"    ... {len(skipped) - 20} more in {Path(out) / 'import.json'}", file=sys.stderr)
