"""ppbench: GPU performance regression suite for parallel-prefill speculative decoding
(EventGPT drafter -> Video-LLaVA target). `ppbench run` measures, `ppbench report` rebuilds a report,
`ppbench compare` gates regressions, `ppbench bounds` calibrates, `ppbench dataset` builds data."""
from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from . import bounds, options, pipeline, runconfig, shard
from .compare import derive_thresholds, load_save, main_compare
from .console import EXIT_INTERRUPTED, EXIT_USAGE, error, interrupts_kept, quiet_third_party
from .errors import PpbenchError, UsageError
from .models.checkpoint_tools import checkpoint_main
from .records import load_records

EXIT_CODES = """exit codes: 0 every record measured; 1 unexpected error (a bug: please report the traceback);
2 wrong option or input (one line says which); 3 the run finished with failed records (listed, and in
the report's Failures section; --resume retries them); 130 interrupted (the message gives the resume
command)."""


def ppbench_version() -> str:
    try:
        return version("ppbench")
    except PackageNotFoundError:      # a source tree that was never installed
        return "unknown (not installed)"


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ppbench", description=__doc__, epilog=EXIT_CODES)
    parser.add_argument("--version", action="version", version=f"%(prog)s {ppbench_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="time the five stages and the engine, then write the report",
                         description="Time the five stages of both models and the parallel-prefill engine on "
                                     "every sample, then write runs/<id>/report.md.", epilog=EXIT_CODES)
    options.add_cli_options(run)

    mrg = sub.add_parser("merge", help="merge a sharded run's per-process records and write its report")
    mrg.add_argument("out", help="the run's output directory (holding shards/)")

    rep = sub.add_parser("report", help="rebuild the report from saved records")
    rep.add_argument("records", nargs="+", help="records.jsonl of a run; several (one precision each, e.g. "
                                                "runs/x/*/records.jsonl): their Precision report")
    rep.add_argument("--out", help="output directory (default: the records' directory)")
    rep.add_argument("--precision", action="store_true",
                     help="the Precision report (one precision per records file), also from one file")

    ds = sub.add_parser("dataset", help="datasets: generate (DSEC layout), import-dsec, import-seed, build (the older direct build)")
    ds_sub = ds.add_subparsers(dest="dataset_command", required=True)
    build = ds_sub.add_parser("build", help="build the dataset")
    build.add_argument("--root", help="where to build (default: the cache directory)")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--samples-per-duration", type=int, default=None)
    build.add_argument("--force", action="store_true", help="rebuild even if it exists")
    from .dataset_cli import add_parsers

    add_parsers(ds_sub)

    bnd = sub.add_parser("bounds", help="versioned performance bounds (harness/calibration/bounds/)")
    bnd_sub = bnd.add_subparsers(dest="bounds_command", required=True)
    der = bnd_sub.add_parser("derive", help="derive a bounds file from saved GPU benchmark runs "
                                            "or `ppbench run` folders")
    der.add_argument("saves", nargs="+",
                     help="saved pytest-benchmark JSON files (runs pool by median), or `ppbench run` "
                          "folders holding records.jsonl (each bound: the lowest of the folders' medians)")
    der.add_argument("--device-class", help="default: from the saves' GPU name")
    der.add_argument("--out", help="default harness/calibration/bounds/<profile>-<device class>.json")
    der.add_argument("--margin", action="append", default=[], metavar="NAME=REL",
                     help="relative safety margin for one bound (default: bounds.DEFAULT_MARGINS); "
                          "widen it where run-to-run variation is larger")
    der.add_argument("--overall-only", action="store_true",
                     help="no per-duration bounds (e.g. one sample per duration is too few)")

    chk = bnd_sub.add_parser("check", help="check a bounds file against saved `ppbench run` records")
    chk.add_argument("bounds_file")
    chk.add_argument("records", nargs="+", help="records.jsonl files or the run folders holding them")

    thr = bnd_sub.add_parser("thresholds", help="derive the gate's per-benchmark thresholds from saved runs' spread")
    thr.add_argument("saves", nargs="+", help="saved pytest-benchmark JSON files (with raw rounds)")
    thr.add_argument("--out", default="gate-thresholds.json",
                     help="where to write (default %(default)s; the packaged default is "
                          "harness/calibration/gate-thresholds.json in a source tree)")
    thr.add_argument("--factor", type=positive_float, default=3.0,
                     help="threshold = factor x the family's median IQR/median (default %(default)s)")
    thr.add_argument("--floor", type=positive_float, default=0.05, help="smallest threshold (default %(default)s)")

    ck = sub.add_parser("checkpoint", help="inspect a checkpoint, or convert a pickle one to safetensors")
    ck_sub = ck.add_subparsers(dest="checkpoint_command", required=True)
    ins = ck_sub.add_parser("inspect", help="what a checkpoint holds (layout, tower, tokenizer, missing), "
                                            "without building a model")
    ins.add_argument("path")
    ins.add_argument("--allow-pickle", action="store_true", help="also read the key names of pickle weights")
    conv = ck_sub.add_parser("convert", help="copy a pickle (*.bin) checkpoint or tower folder as safetensors")
    conv.add_argument("src")
    conv.add_argument("dst")
    conv.add_argument("--allow-pickle", action="store_true",
                      help="required: unpickle SRC once (torch.load weights_only=True); only for files you trust")

    cmp_ = sub.add_parser("compare", help="statistical regression gate between two saved benchmark runs",
                          add_help=False)
    cmp_.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def thresholds_main(args) -> int:
    doc = derive_thresholds([load_save(p) for p in args.saves], factor=args.factor, floor=args.floor)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    for pattern, value in doc["thresholds"].items():
        print(f"{pattern:40s} {value:.2f}")
    print(f"thresholds written to {args.out}")
    return 0


def _run_records(path) -> list[dict]:
    p = Path(path)
    p = p / "records.jsonl" if p.is_dir() else p
    try:
        return load_records(p)
    except OSError as exc:
        raise UsageError(f"cannot read records {p}: {exc}") from None


def _run_meta(folder) -> dict:
    try:
        return json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


def bounds_check_main(args) -> int:
    doc = bounds.load_bounds_file(args.bounds_file)
    bad = 0
    for path in args.records:
        for line in bounds.record_violations(doc, _run_records(path)):
            bad += 1
            print(f"{path} {line}")
    print(f"{bad} violations")
    return 1 if bad else 0


def bounds_main(args) -> int:
    folders = [p for p in args.saves if Path(p).is_dir()]
    if folders and len(folders) != len(args.saves):
        raise UsageError("ppbench bounds derive: give saved benchmark JSON files or run folders, not both")
    if folders:
        measurements = bounds.measurements_from_records([_run_records(p) for p in folders])
        run_meta = _run_meta(folders[-1])
        meta = {"profile": run_meta.get("profile"), "device": run_meta.get("device")}
        gpu = {"name": run_meta.get("device")}
        how = f"from {', '.join(folders)} (lowest median of the folders, real drafter tokens)"
    else:
        docs = []
        for p in args.saves:
            try:
                docs.append(json.loads(open(p).read()))
            except (OSError, ValueError) as exc:
                raise UsageError(f"cannot read saved benchmark JSON {p}: {exc}") from None
        measurements, meta = bounds.measurements_from_saves(docs)
        gpu = (docs[-1].get("machine_info") or {}).get("gpu") or {}
        how = (f"from {', '.join(args.saves)} "
               f"({meta.get('device')}, {meta.get('quantization')}, commit {meta.get('commit')})")
    if not measurements:
        raise UsageError("no parallel-prefill benchmark results in these saves")
    if args.overall_only:
        measurements = {k: {"all": v["all"]} for k, v in measurements.items()}
    margins = {}
    for spec in args.margin:
        name, _, rel = spec.partition("=")
        if name not in bounds.DEFAULT_MARGINS or not rel:
            raise UsageError(f"--margin {spec!r}: expected NAME=REL with NAME one of "
                             f"{', '.join(bounds.DEFAULT_MARGINS)}")
        base = {k: v for k, v in bounds.DEFAULT_MARGINS[name].items() if k != "abs"}
        base.update(rel=float(rel), why=base["why"].split(";")[0] + f"; -{float(rel):.0%} of measured")
        margins[name] = base
    cls = args.device_class or bounds.device_class_from_name(gpu.get("name"))
    profile = meta.get("profile") or "unknown"
    doc = bounds.derive_bounds(
        measurements, margins, profile=profile, device_class=cls,
        source=f"derived by `ppbench bounds derive` {how}"
               + (f"; margins {', '.join(args.margin)}" if args.margin else "")
               + ("; overall only" if args.overall_only else ""))
    path = bounds.write_bounds(doc, args.out or bounds.bounds_path(profile, cls))
    print(f"bounds written to {path}")
    return 0


def _dispatch(argv: list[str]) -> int:
    if argv[:1] == ["compare"]:
        return main_compare(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "run" and shard.launched():   # torchrun / accelerate launch: one share per process
        return shard.main(options.from_cli(args), argv)
    if args.command == "run":
        cfg = runconfig.resolve(options.from_cli(args), side="cli")
        quiet_third_party(progress=not cfg.no_progress)
        return pipeline.run_main(cfg, argv)
    quiet_third_party(progress=True)
    if args.command == "report":
        return pipeline.report_main(args)
    if args.command == "merge":
        return shard.merge_main(args)
    if args.command == "dataset":
        if args.dataset_command != "build":
            from .dataset_cli import main as dataset_cli_main

            return dataset_cli_main(args)
        return pipeline.dataset_main(args)
    if args.command == "bounds":
        return {"thresholds": thresholds_main, "check": bounds_check_main,
                "derive": bounds_main}[args.bounds_command](args)
    if args.command == "checkpoint":
        return checkpoint_main(args)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors are one line (exit 2), Ctrl-C outside a run is exit 130; anything
    else is a bug and keeps its traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with interrupts_kept():
            return _dispatch(argv)
    except UsageError as e:
        error(str(e))
        return EXIT_USAGE
    except PpbenchError as e:      # bad input found while working (a checkpoint, a file): named, no traceback
        error(str(e))
        return EXIT_USAGE
    except KeyboardInterrupt:
        error("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
