"""`ppbench` command line (also `python -m harness`). Thin: parses options, delegates."""
from __future__ import annotations

import argparse
import sys

from . import pipeline


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=["tiny", "7b-shaped", "real"], default="tiny",
                   help="tiny: random tiny checkpoints (CPU-friendly); 7b-shaped: real 7B/CLIP-L shapes "
                        "with random weights (timing only); real: local checkpoints")
    p.add_argument("--drafter-path", help="EventGPT-7B checkpoint directory (profile real)")
    p.add_argument("--target-path", help="Video-LLaVA-7B-hf checkpoint directory (profile real)")
    p.add_argument("--data-root", help="DSEC-format dataset root (default: the embedded synthetic dataset)")
    p.add_argument("--durations", default=",".join(pipeline.DEFAULT_DURATIONS),
                   help="comma-separated duration datasets, e.g. 500ms,4s,20s")
    p.add_argument("--samples-per-duration", type=int, default=2)
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:0 ... (auto: cuda if available)")
    p.add_argument("--drafter-device", help="put the drafter on another device (e.g. cuda:1)")
    p.add_argument("--quant", choices=["nf4", "none"], default=None,
                   help="default: nf4 on CUDA, none (fp32) on CPU")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="compute dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--max-new-tokens", type=int, default=50)
    p.add_argument("--decode", choices=["auto", "hf", "static", "cuda-graph"], default="auto",
                   help="decode implementation: hf (transformers eager), static (fixed KV cache), cuda-graph "
                        "(static cache, steps replayed as CUDA graphs); auto: cuda-graph on CUDA, hf on CPU")
    p.add_argument("--cache-len", type=int, default=None,
                   help="static KV cache positions (default: visual tokens + text budget + max new tokens + "
                        "engine overshoot, rounded up to 128)")
    p.add_argument("--stop-at-eos", action="store_true", help="stop decoding at EOS (default: fixed length)")
    p.add_argument("--warmup", type=int, default=1, help="unrecorded warm-up samples")
    p.add_argument("--engine", choices=["on", "off"], default="on",
                   help="also run the parallel-prefill engine and its baselines per sample")
    p.add_argument("--engine-samples", type=int, default=None,
                   help="run the engine on only the first N samples of each duration (default: all)")
    p.add_argument("--gammas", default="adaptive", help="engine draft lengths, e.g. adaptive,1,4")
    p.add_argument("--alphas", default="",
                   help="simulated acceptance rates to sweep, e.g. 0,0.35,0.7,0.9 (labelled simulated)")
    p.add_argument("--overlap", choices=pipeline.OVERLAP_POLICIES, default="auto",
                   help="hidden drafting: always (until the target is ready) or yield-gpu (only while the "
                        "target loads its data); auto: yield-gpu when both models share a GPU")
    p.add_argument("--drafter-process", choices=pipeline.DRAFTER_PROCESS_CHOICES, nargs="?", const="on", default="auto",
                   help="run the engine's drafter in its own process, so the two pipelines share no GIL "
                        "(its weights are loaded a second time there); auto (default): on whenever the "
                        "drafter runs on CUDA; a bare --drafter-process means on")
    p.add_argument("--assisted", choices=["on", "off"], default="on",
                   help="try transformers' assisted generation as a baseline")
    p.add_argument("--out", help="output directory (default runs/<run id>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out, skipping recorded samples")
    p.add_argument("--no-progress", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="time the five stages and the engine, then write the report")
    _add_run_options(run)

    rep = sub.add_parser("report", help="rebuild the report from saved records")
    rep.add_argument("records", help="records.jsonl of a run")
    rep.add_argument("--out", help="output directory (default: the records' directory)")

    ds = sub.add_parser("dataset", help="the embedded synthetic DSEC-format dataset")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True)
    build = ds_sub.add_parser("build", help="build the dataset")
    build.add_argument("--root", help="where to build (default: the cache directory)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--samples-per-duration", type=int, default=None)
    build.add_argument("--force", action="store_true", help="rebuild even if it exists")

    bnd = sub.add_parser("bounds", help="versioned performance bounds (harness/calibration/bounds/)")
    bnd_sub = bnd.add_subparsers(dest="bounds_command", required=True)
    der = bnd_sub.add_parser("derive", help="derive a bounds file from saved GPU benchmark runs")
    der.add_argument("saves", nargs="+", help="saved pytest-benchmark JSON files")
    der.add_argument("--device-class", help="default: from the saves' GPU name")
    der.add_argument("--out", help="default harness/calibration/bounds/<profile>-<device class>.json")
    der.add_argument("--margin", action="append", default=[], metavar="NAME=REL",
                     help="relative safety margin for one bound (default: bounds.DEFAULT_MARGINS); "
                          "widen it where run-to-run variation is larger")
    der.add_argument("--overall-only", action="store_true",
                     help="no per-duration bounds (e.g. one sample per duration is too few)")

    thr = bnd_sub.add_parser("thresholds", help="derive the gate's per-benchmark thresholds from saved runs' spread")
    thr.add_argument("saves", nargs="+", help="saved pytest-benchmark JSON files (with raw rounds)")
    thr.add_argument("--out", default="harness/calibration/gate-thresholds.json")
    thr.add_argument("--factor", type=positive_float, default=3.0,
                     help="threshold = factor x the family's median IQR/median (default %(default)s)")
    thr.add_argument("--floor", type=positive_float, default=0.05, help="smallest threshold (default %(default)s)")

    cmp_ = sub.add_parser("compare", help="statistical regression gate between two saved benchmark runs",
                          add_help=False)
    cmp_.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def thresholds_main(args) -> int:
    import json
    from pathlib import Path

    from .compare import PpbenchError, derive_thresholds, load_save

    try:
        doc = derive_thresholds([load_save(p) for p in args.saves], factor=args.factor, floor=args.floor)
    except PpbenchError as e:
        raise SystemExit(f"ppbench bounds thresholds: {e}") from None
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    for pattern, value in doc["thresholds"].items():
        print(f"{pattern:40s} {value:.2f}")
    print(f"thresholds written to {args.out}")
    return 0


def bounds_main(args) -> int:
    import json

    from . import bounds
    from .benchsupport import measurements_from_saves

    docs = []
    for p in args.saves:
        try:
            docs.append(json.loads(open(p).read()))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"cannot read saved benchmark JSON {p}: {exc}") from None
    measurements, meta = measurements_from_saves(docs)
    if not measurements:
        raise SystemExit("no parallel-prefill benchmark results in these saves")
    if args.overall_only:
        measurements = {k: {"all": v["all"]} for k, v in measurements.items()}
    margins = {}
    for spec in args.margin:
        name, _, rel = spec.partition("=")
        if name not in bounds.DEFAULT_MARGINS or not rel:
            raise SystemExit(f"--margin {spec!r}: expected NAME=REL with NAME one of "
                             f"{', '.join(bounds.DEFAULT_MARGINS)}")
        base = {k: v for k, v in bounds.DEFAULT_MARGINS[name].items() if k != "abs"}
        base.update(rel=float(rel), why=base["why"].split(";")[0] + f"; -{float(rel):.0%} of measured")
        margins[name] = base
    gpu = (docs[-1].get("machine_info") or {}).get("gpu") or {}
    cls = args.device_class or bounds.device_class_from_name(gpu.get("name"))
    profile = meta.get("profile", "unknown")
    doc = bounds.derive_bounds(
        measurements, margins, profile=profile, device_class=cls,
        source=f"derived by `ppbench bounds derive` from {', '.join(args.saves)} "
               f"({meta.get('device')}, {meta.get('quantization')}, commit {meta.get('commit')})"
               + (f"; margins {', '.join(args.margin)}" if args.margin else "")
               + ("; overall only" if args.overall_only else ""))
    path = bounds.write_bounds(doc, args.out or bounds.bounds_path(profile, cls))
    print(f"bounds written to {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        from .compare import main_compare

        return main_compare(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return pipeline.run_main(args)
    if args.command == "report":
        return pipeline.report_main(args)
    if args.command == "dataset":
        return pipeline.dataset_main(args)
    if args.command == "bounds":
        return thresholds_main(args) if args.bounds_command == "thresholds" else bounds_main(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
