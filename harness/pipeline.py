"""The main job: dataset -> models -> five timed stages -> engine runs -> report.

Used by `ppbench run` and by the pytest plugin, so both measure the same way.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from .engine import OVERLAP_POLICIES, resolve_overlap
from .records import RecordWriter, done_keys, load_records, repair_torn_tail

DEFAULT_DURATIONS = ("500ms", "1s", "2s", "4s", "5s", "8s", "10s", "16s", "20s")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# -- settings ---------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(device: torch.device, quant: str | None, dtype: str | None):
    quant = quant or ("nf4" if device.type == "cuda" else "none")
    dtype = dtype or ("bfloat16" if device.type == "cuda" else "float32")
    return quant, _DTYPES[dtype]


def git_commit() -> str | None:
    """HEAD of this checkout (+ -dirty); PPBENCH_COMMIT where the tree travelled without .git."""
    if os.environ.get("PPBENCH_COMMIT"):
        return os.environ["PPBENCH_COMMIT"]
    try:
        here = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (out.stdout.strip() + ("-dirty" if dirty else "")) or None
    except Exception:
        return None


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "bitsandbytes", "av", "h5py"):
        try:
            out[name] = __import__(name).__version__
        except Exception:
            out[name] = None
    out["cuda"] = torch.version.cuda
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


PROFILE_LABELS = {
    "tiny": "tiny random-weight checkpoints (cost of a tiny model only; no quality, no 7B timings)",
    "7b-shaped": "7B-shaped random-weight models (real 7B/CLIP-L shapes; timings only, no quality)",
    "real": "real checkpoints",
}


def load_models(profile, *, device, quant, dtype, drafter_path=None, target_path=None,
                drafter_device=None, decode_impl="auto", max_new_tokens=50, cache_len=None):
    """(drafter, target) runners; the drafter may live on its own device (two-GPU overlap).
    Each runner's `decode_setup` says which decode implementation it runs (and its cache)."""
    from .models.profiles import configure_decode, load_target

    drafter = build_drafter(profile, device=drafter_device or device, quant=quant, dtype=dtype,
                            path=drafter_path, decode_impl=decode_impl, max_new_tokens=max_new_tokens,
                            cache_len=cache_len)
    target = load_target(profile, device=device, quant=quant, dtype=dtype, path=target_path)
    configure_decode([target], decode_impl, max_new_tokens=max_new_tokens, cache_len=cache_len)
    return drafter, target


def build_drafter(profile, *, device, quant, dtype, path=None, decode_impl="auto", max_new_tokens=50,
                  cache_len=None):
    """The drafter runner, decode implementation set up (load_models; a drafter process's factory)."""
    from .models.profiles import configure_decode, load_drafter

    drafter = load_drafter(profile, device=torch.device(device), quant=quant, dtype=dtype, path=path)
    configure_decode([drafter], decode_impl, max_new_tokens=max_new_tokens, cache_len=cache_len)
    return drafter


DRAFTER_PROCESS_CHOICES = ("auto", "on", "off")


def resolve_drafter_process(choice: str, drafter_device, *, inject_delay=None) -> bool:
    """Whether the engine's drafter runs in its own process. auto: yes when the drafter runs on
    CUDA (its own GPU or the target's) and no delay is injected into the in-process runners.

    Measured at alpha ~ 0 (docs/results, scripts/overlap_probe.py, 32 alternating pairs, H200):
    with the drafter on its own GPU, speedup vs target-only 0.980 in a thread, 0.997 in a process
    (the target's frame decoding no longer waits for the GIL); on one shared GPU under yield-gpu,
    0.978 and 0.991. On CPU a thread: there the two pipelines compete for cores, not the GIL."""
    if choice not in DRAFTER_PROCESS_CHOICES:
        raise ValueError(f"drafter process must be one of {DRAFTER_PROCESS_CHOICES}, got {choice!r}")
    if choice != "auto":
        return choice == "on"
    return torch.device(drafter_device).type == "cuda" and not inject_delay


def start_drafter_process(profile, *, device, quant, dtype, path=None, decode_impl="auto",
                          max_new_tokens=50, cache_len=None):
    """A DrafterProcess building the same drafter (harness/drafter_process.py)."""
    import functools

    from .drafter_process import DrafterProcess

    return DrafterProcess(functools.partial(build_drafter, profile, device=str(device), quant=quant, dtype=dtype,
                                            path=path, decode_impl=decode_impl,
                                            max_new_tokens=max_new_tokens, cache_len=cache_len))


DECODE_LABELS = {
    "hf": "transformers eager forward, DynamicCache",
    "static": "static KV cache, eager (models/static_decode.py)",
    "cuda-graph": ("static KV cache; vision encoder, prefill (64-position buckets) and decode/verify "
                   "steps replayed as CUDA graphs (models/static_decode.py)"),
}


def run_meta(profile, device, drafter, target, dtype, quant, data_source, root, **extra) -> dict:
    """What the report states about a run: profile, device, precision, data, versions, commit."""
    return {
        "profile": profile, "profile_label": PROFILE_LABELS[profile],
        "device": device_name(device), "drafter_device": str(drafter.device),
        "target_device": str(target.device), "dtype": str(dtype).replace("torch.", ""),
        "quant": quant, "quantization": "NF4 4-bit, double quant, bf16 compute (LLM linears)"
        if quant == "nf4" else f"none ({str(dtype).replace('torch.', '')})",
        "decode_impl": target.decode_impl, "decode_label": DECODE_LABELS[target.decode_impl],
        "decode_setup": {"drafter": drafter.decode_setup, "target": target.decode_setup},
        "data_source": data_source, "data_root": str(root),
        "overlap": resolve_overlap("auto", drafter, target),
        "versions": versions(), "commit": git_commit(), "git_commit": git_commit(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "memory_footprint_bytes": {"drafter": drafter.memory_footprint(),
                                   "target": target.memory_footprint()},
        **extra,
    }


def record_fields(meta: dict) -> dict:
    """The run-level fields every record carries."""
    return {k: meta.get(k) for k in ("run_id", "profile", "device", "dtype", "quant", "decode_impl")}


# -- the main job -------------------------------------------------------------------------------------
def run_main(args) -> int:
    from tqdm import tqdm

    from . import data
    from .stages import run_stage_pipeline, warm_up

    device = resolve_device(args.device)
    quant, dtype = resolve_precision(device, args.quant, args.dtype)
    durations = [d.strip() for d in args.durations.split(",") if d.strip()]
    run_id = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("runs") / run_id
    records_path = out / "records.jsonl"
    has_records = records_path.exists() and records_path.stat().st_size > 0
    # Refuse before touching anything in `out`: a refused run must not rewrite a run's meta.json.
    if has_records and not args.resume:
        raise SystemExit(f"{records_path} already holds records; pass --resume or another --out")
    from .models.static_decode import resolve_decode_impl

    decode_impl = resolve_decode_impl(args.decode, device)
    drafter_process = resolve_drafter_process(args.drafter_process, args.drafter_device or device)
    settings = {"profile": args.profile, "quant": quant, "dtype": str(dtype).replace("torch.", ""),
                "max_new_tokens": args.max_new_tokens, "stop_at_eos": args.stop_at_eos,
                "decode_impl": decode_impl,
                "overlap": resolve_overlap(args.overlap, args.drafter_device or device, device),
                "drafter_process": drafter_process}
    previous = _resumable_meta(out, settings) if has_records else None
    if previous:
        run_id = previous.get("run_id", run_id)   # resumed records keep the run's identity
    elif args.resume:
        print(f"--resume: no records in {out}; starting a new run there", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    _link_latest(out)

    # Data: the embedded synthetic dataset unless the user points at theirs.
    t = time.perf_counter()
    if args.data_root:
        root, data_source = Path(args.data_root), f"user dataset at {args.data_root}"
    else:
        from harness.data.synthetic import ensure_default_dataset

        root = ensure_default_dataset(progress=not args.no_progress)
        data_source = "embedded synthetic DSEC-format dataset (generated, seed 0)"
    samples, missing = [], []
    for d in durations:
        try:
            samples += data.load_samples(root, d, limit=args.samples_per_duration)
        except Exception as exc:  # a missing manifest is reported, other durations still run
            missing.append(f"{d}: {exc}")
            print(f"warning: {exc}", file=sys.stderr)
    print(f"dataset: {root} ({len(samples)} samples over {len(durations)} durations, "
          f"{time.perf_counter() - t:.1f} s)")
    if not samples:
        raise SystemExit(f"no samples to measure for durations {', '.join(durations)} in {root}")

    t = time.perf_counter()
    drafter, target = load_models(args.profile, device=device, quant=quant, dtype=dtype,
                                  drafter_path=args.drafter_path, target_path=args.target_path,
                                  drafter_device=args.drafter_device, decode_impl=decode_impl,
                                  max_new_tokens=args.max_new_tokens, cache_len=args.cache_len)
    print(f"models: {drafter.name} + {target.name} ({args.profile}, {quant}, {dtype}, decode {decode_impl}) "
          f"loaded in {time.perf_counter() - t:.1f} s")

    meta = run_meta(args.profile, device, drafter, target, dtype, quant, data_source, root,
                    run_id=run_id, command="ppbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
                    max_new_tokens=args.max_new_tokens, stop_at_eos=args.stop_at_eos,
                    warmup=args.warmup, missing_datasets=missing,
                    overlap=resolve_overlap(args.overlap, drafter, target),
                    drafter_process=drafter_process)
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    record_meta = record_fields(meta)

    repair_torn_tail(records_path)
    done = done_keys(load_records(records_path)) if args.resume else set()

    if samples and args.warmup:
        for s in samples[: args.warmup]:
            warm_up([drafter, target], s)

    with RecordWriter(records_path) as writer:
        bar = tqdm(total=len(samples), desc="stages", unit="sample", disable=args.no_progress)
        run_stage_pipeline([drafter, target], samples, writer, done=done,
                           max_new_tokens=args.max_new_tokens, stop_at_eos=args.stop_at_eos,
                           meta=record_meta, progress=lambda s: bar.update(1))
        bar.close()
        if args.engine == "on":
            from .engine_suite import run_engine_suite

            proc = (start_drafter_process(args.profile, device=drafter.device, quant=quant, dtype=dtype,
                                          path=args.drafter_path, decode_impl=decode_impl,
                                          max_new_tokens=args.max_new_tokens, cache_len=args.cache_len)
                    if drafter_process else None)
            try:
                run_engine_suite(drafter, target, samples, writer, done=done, args=args,
                                 meta=record_meta, progress=not args.no_progress, parallel_drafter=proc)
            finally:
                if proc is not None:
                    proc.close()

    return _write_report(records_path, out, meta)


# Settings that change what a record means: a resumed run must use the same ones.
RESUME_KEYS = ("profile", "quant", "dtype", "max_new_tokens", "stop_at_eos", "decode_impl", "overlap",
               "drafter_process")


def _resumable_meta(out: Path, now: dict) -> dict | None:
    """The interrupted run's meta.json, after checking that this run's settings (`now`) match it."""
    path = out / "meta.json"
    if not path.exists():
        return None
    previous = json.loads(path.read_text())
    # Runs from before decode_impl / overlap existed were transformers-eager ("hf") and drafted
    # through the whole window ("always").
    saved = {"decode_impl": "hf", "overlap": "always", "drafter_process": False, **previous}
    differ = [f"{k}: saved {saved.get(k)!r}, now {now[k]!r}" for k in RESUME_KEYS
              if k in saved and saved[k] != now[k]]
    if differ:
        raise SystemExit(f"--resume with different settings than {path}: " + "; ".join(differ))
    return previous


def _link_latest(out: Path) -> None:
    latest = out.parent / "latest"
    try:
        if latest.exists() and not latest.is_symlink():
            return  # never delete a real file or directory that happens to be called "latest"
        if latest.is_symlink():
            latest.unlink()
        latest.symlink_to(out.resolve(), target_is_directory=True)
    except OSError:
        pass


def _write_report(records_path: Path, out: Path, meta: dict) -> int:
    from .report import write_report

    records = load_records(records_path)
    path = write_report(records, out, meta)
    unsupported = sum(1 for r in records if (r.get("error") or {}).get("type") == "Unsupported")
    failed = sum(1 for r in records if r.get("error")) - unsupported
    print(f"report: {path} ({len(records)} records, {failed} failed"
          + (f", {unsupported} baselines unsupported for this pair" if unsupported else "") + ")")
    measured = len(records) - failed - unsupported
    if measured == 0:
        print("error: no successful measurement (every record failed)", file=sys.stderr)
        return 1
    return 0


def report_main(args) -> int:
    records_path = Path(args.records)
    if not records_path.exists():
        raise SystemExit(f"no such records file: {records_path}")
    out = Path(args.out) if args.out else records_path.parent
    meta_path = records_path.parent / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return _write_report(records_path, out, meta)


def dataset_main(args) -> int:
    from harness.data import synthetic as synthetic_dsec

    t = time.perf_counter()
    kwargs = {"seed": args.seed}
    if args.samples_per_duration is not None:
        kwargs["samples_per_duration"] = args.samples_per_duration
    if args.root:
        if Path(args.root).exists() and any(Path(args.root).iterdir()) and not args.force:
            raise SystemExit(f"{args.root} exists and is not empty; pass --force to rebuild it")
        root = synthetic_dsec.build_dataset(args.root, progress=synthetic_dsec._tqdm_progress(),
                                            overwrite=args.force, **kwargs)
    elif args.seed == 0 and args.samples_per_duration is None:
        default = synthetic_dsec.cache_dir() / f"dataset-{synthetic_dsec.DATASET_VERSION}-seed0"
        if args.force:
            import shutil

            shutil.rmtree(default, ignore_errors=True)
        root = synthetic_dsec.ensure_default_dataset(progress=True)
    else:
        raise SystemExit("a non-default seed or sample count needs --root (the cache holds the default)")
    print(f"dataset built at {root} in {time.perf_counter() - t:.1f} s")
    return 0
