"""The main job: dataset -> models -> five timed stages -> engine runs -> report.

Used by `ppbench run` and by the pytest plugin, so both measure the same way.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import data
from .console import EXIT_FAILURES, EXIT_INTERRUPTED, EXIT_OK, failure_lines
from .data.default_data import ensure_default_imported
from .drafter_process import DrafterProcess
from .engine import resolve_overlap
from .engine_suite import rotations, run_engine_suite
from .errors import DataError, UsageError
from .gpu_memory import allocator_setting, configure_allocator, used_bytes
from .metrics import MODELS, dedupe, precision_label
from .models.input_info import describe_inputs
from .models.profiles import configure_decode, load_drafter, load_target
from .models.trained import train_summary
from .options import DEFAULT_DURATIONS  # noqa: F401  (re-exported: tests parametrize over it)
from .records import RecordWriter, done_keys, has_shards, load_records, record_key, repair_torn_tail
from .report import write_precision_report, write_report
from .runconfig import RunConfig
from .stages import error_info, free_memory, run_stage_pipeline, warm_up
from .verify_cost import curve_record, curve_sizes


# -- settings ---------------------------------------------------------------------------------------
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
    "trained": ("tiny models trained by ppbench on the synthetic scenes (real acceptance between two "
                "models that see different inputs; the timings are a tiny model's)"),
    "7b-shaped": "7B-shaped random-weight models (real 7B/CLIP-L shapes; timings only, no quality)",
    "real": "real checkpoints",
}


def load_models(profile, *, device, quant, dtype, drafter_path=None, target_path=None,
                drafter_device=None, decode_impl="auto", max_new_tokens=50, cache_len=None,
                allow_pickle=False, event_images=5, videollava_prompt="model-card", drafter_process=False,
                questions=()):
    """(drafter, target) runners; the drafter may live on its own device (two-GPU overlap).
    Each runner's `decode_setup` says which decode implementation it runs (and its cache, sized
    for the run's `questions`). With drafter_process the drafter is a DrafterProcess: its weights
    are built there, never here."""
    build = start_drafter_process if drafter_process else build_drafter
    drafter = build(profile, device=drafter_device or device, quant=quant, dtype=dtype,
                    path=drafter_path, decode_impl=decode_impl, max_new_tokens=max_new_tokens,
                    cache_len=cache_len, allow_pickle=allow_pickle, event_images=event_images,
                    questions=tuple(questions))
    target = load_target(profile, device=device, quant=quant, dtype=dtype, path=target_path,
                         allow_pickle=allow_pickle, prompt_template=videollava_prompt)
    configure_decode([target], decode_impl, max_new_tokens=max_new_tokens, cache_len=cache_len,
                     questions=questions)
    return drafter, target


def build_drafter(profile, *, device, quant, dtype, path=None, decode_impl="auto", max_new_tokens=50,
                  cache_len=None, allow_pickle=False, event_images=5, questions=()):
    """The drafter runner, decode implementation set up (load_models; a drafter process's factory)."""
    drafter = load_drafter(profile, device=torch.device(device), quant=quant, dtype=dtype, path=path,
                           allow_pickle=allow_pickle, event_images=event_images)
    configure_decode([drafter], decode_impl, max_new_tokens=max_new_tokens, cache_len=cache_len,
                     questions=questions)
    return drafter


def start_drafter_process(profile, *, device, quant, dtype, path=None, decode_impl="auto",
                          max_new_tokens=50, cache_len=None, allow_pickle=False, event_images=5, questions=()):
    """A DrafterProcess building the same drafter (harness/drafter_process.py)."""
    return DrafterProcess(functools.partial(build_drafter, profile, device=str(device), quant=quant, dtype=dtype,
                                            path=path, decode_impl=decode_impl, max_new_tokens=max_new_tokens,
                                            cache_len=cache_len, allow_pickle=allow_pickle,
                                            event_images=event_images, questions=questions))


QUANT_LABELS = {"nf4": "NF4 4-bit, double quant, bf16 compute (LLM linears)",
                "int4": "int4 weight-only, group 128, torch tinygemm (_weight_int4pack_mm), bf16 compute (LLM linears)"}

DECODE_LABELS = {
    "compiled": ("static KV cache; vision encoder, prefill (64-position buckets) and decode/verify steps "
                 "replayed as CUDA graphs (on CUDA), the steps' glue between the linears fused by torch.compile "
                 "(models/static_decode.py)"),
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
        "quant": quant, "quantization": QUANT_LABELS.get(quant, f"none ({str(dtype).replace('torch.', '')})"),
        "decode_impl": target.decode_impl, "decode_label": DECODE_LABELS[target.decode_impl],
        "decode_setup": {"drafter": drafter.decode_setup, "target": target.decode_setup},
        "data_source": data_source, "data_root": str(root),
        "overlap": resolve_overlap("auto", drafter, target),
        "versions": versions(), "commit": git_commit(), "git_commit": git_commit(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "memory_footprint_bytes": {"drafter": drafter.memory_footprint(),
                                   "target": target.memory_footprint()},
        "model_inputs": describe_inputs(drafter, target),
        **({"trained_pair": train_summary()} if profile == "trained" else {}),
        **extra,
    }


def record_fields(meta: dict) -> dict:
    """The run-level fields every record carries."""
    return {k: meta.get(k) for k in ("run_id", "profile", "device", "dtype", "quant", "decode_impl")}


# -- opening a run (shared by `ppbench run` and the pytest session) -----------------------------------
EMBEDDED_SOURCE = ("embedded generator, {scale} scale, DSEC bulk layout (seed 0), imported by "
                   "ppbench dataset import-dsec")


@dataclass
class RunData:
    root: Path
    source: str
    samples: list          # the samples to measure, in duration order
    bad_entries: list      # (duration, sample id, DataError): manifest entries that fail alone
    missing: list[str]     # "<duration>: <why>" for each duration with no readable manifest


def open_data(cfg: RunConfig, *, progress: bool) -> RunData:
    """The dataset: the user's root, or the embedded one (built once into the cache)."""
    if cfg.data_root:
        root, source = Path(cfg.data_root), f"user dataset at {cfg.data_root}"
    else:
        root = ensure_default_imported(cfg.data_scale, progress=progress)
        source = EMBEDDED_SOURCE.format(scale=cfg.data_scale)
    samples, bad, missing = [], [], []
    for d in cfg.durations:
        try:
            good, errors = data.read_manifest(root, d, limit=cfg.samples_per_duration)
        except DataError as exc:          # no manifest for this duration: named in the report
            missing.append(f"{d}: {exc}")
            continue
        samples += good
        bad += [(d, e.sample, e) for e in errors]
    return RunData(root, source, samples, bad, missing)


def bad_entry_records(run_data: RunData, meta: dict) -> list[dict]:
    """A failed stage record per model for each manifest entry that cannot be read, so the entry
    counts as a failed sample (the rest of its duration still runs)."""
    out = []
    for i, (duration, sid, exc) in enumerate(run_data.bad_entries):
        for model in MODELS:
            out.append({"kind": "stages", "dataset": duration, "sample_id": sid or f"entry-{i}",
                        "model": model, **meta, "stages_ms": {}, "decode_token_ms": [],
                        "output_tokens": [], "n_output_tokens": 0,
                        "error": error_info("manifest", exc), "t_wall": time.time()})
    return out


def run_questions(samples) -> tuple[str, ...]:
    """The distinct questions of a run's samples: what its static caches and prefill graphs are sized for."""
    return tuple(sorted({q for q in (getattr(s, "question", None) for s in samples) if q}))


def open_models(cfg: RunConfig, questions=()):
    """(drafter, target) for a run; with cfg.drafter_process the drafter is a DrafterProcess, which
    serves every mode that needs the drafter (close it at the end of the run). Static caches and
    prefill graphs are sized for `questions` (run_questions; empty: a fixed text budget). The CUDA allocator
    is set first (cfg.cuda_alloc), before any weight is allocated here or in the drafter's process."""
    configure_allocator(cfg.cuda_alloc, cfg.torch_device)
    drafter, target = load_models(cfg.profile, device=cfg.torch_device, quant=cfg.quant, dtype=cfg.torch_dtype,
                       drafter_path=cfg.drafter_path, target_path=cfg.target_path,
                       drafter_device=cfg.drafter_device, decode_impl=cfg.decode,
                       max_new_tokens=cfg.max_new_tokens, cache_len=cfg.cache_len, allow_pickle=cfg.allow_pickle,
                       event_images=cfg.event_images, videollava_prompt=cfg.videollava_prompt,
                       drafter_process=cfg.drafter_process, questions=questions)
    target.video_reader = cfg.video_reader
    return drafter, target


def close_models(drafter) -> None:
    """Ends a drafter process (open_models); nothing to do for an in-process drafter."""
    if getattr(drafter, "is_process", False):
        drafter.close()


def config_meta(cfg: RunConfig) -> dict:
    return {"max_new_tokens": cfg.max_new_tokens, "stop_at_eos": cfg.stop_at_eos, "warmup": cfg.warmup,
            "overlap": cfg.overlap, "drafter_process": cfg.drafter_process,
            "durations": list(cfg.durations), "samples_per_duration": cfg.samples_per_duration,
            "video_reader": cfg.video_reader, "data_scale": None if cfg.data_root else cfg.data_scale,
            "event_images": cfg.event_images, "videollava_prompt": cfg.videollava_prompt,
            "cuda_alloc": allocator_setting(cfg.torch_device, cfg.cuda_alloc)}


# -- the main job -------------------------------------------------------------------------------------
def resume_command(argv: list[str], out: Path) -> str:
    """The exact command that continues this run."""
    args = list(argv)
    if "--out" not in args and not any(a.startswith("--out=") for a in args):
        args += ["--out", str(out)]
    if "--resume" not in args:
        args.append("--resume")
    return "ppbench " + " ".join(shlex.quote(a) for a in args)


def _out_and_id(cfg: RunConfig, sharded=None) -> tuple[Path, str]:
    run_id = sharded.run_id if sharded else _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return (Path(cfg.out) if cfg.out else Path("runs") / run_id), run_id


def _refuse_existing(records_path: Path, cfg: RunConfig) -> None:
    if records_path.exists() and records_path.stat().st_size > 0 and not cfg.resume:
        raise UsageError(f"{records_path} already holds records; pass --resume to continue that run, "
                         "or another --out")


def run_precisions(cfg: RunConfig, argv: list[str]) -> int:
    """`--quant` with several precisions: one run per precision, one after another on the same
    samples and engine settings, each into <out>/<precision>/ with its records, meta and report
    (and its verify-cost curve); then <out>/report.md with the Precision section over all of them.
    A precision this device cannot measure (nf4 on CPU) is named absent, with why."""
    out, run_id = _out_and_id(cfg)
    subs = {precision_label(q, cfg.dtype): dataclasses.replace(
        cfg, quant=q, quants=(q,), skipped_quants=(), out=str(out / precision_label(q, cfg.dtype)))
        for q in cfg.quants}
    for sub in subs.values():                 # refuse before any precision runs
        _refuse_existing(Path(sub.out) / "records.jsonl", sub)
    skipped = {precision_label(q, cfg.dtype): why for q, why in cfg.skipped_quants}
    if "none" in cfg.quants and cfg.dtype != "bfloat16":
        skipped["bf16"] = (f"unquantized weights run in the compute dtype, {cfg.dtype} here: measured as "
                           f"{precision_label('none', cfg.dtype)} (--dtype bfloat16 measures bf16)")
    for label, why in skipped.items():
        print(f"precision {label}: skipped: {why}", file=sys.stderr)
    meta = {"profile": cfg.profile, "profile_label": PROFILE_LABELS[cfg.profile],
            "device": device_name(cfg.torch_device), "run_id": run_id,
            "command": "ppbench " + " ".join(shlex.quote(a) for a in argv),
            "date": _dt.datetime.now().isoformat(timespec="seconds"), "commit": git_commit(),
            "precisions": {k: Path(v.out).name for k, v in subs.items()}, "skipped_precisions": skipped,
            **config_meta(cfg)}
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)     # meta first: a run cut short still names what it skipped
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    codes = {}
    for label, sub in subs.items():
        before = _release_models(cfg)
        if before is not None:
            meta.setdefault("device_used_before_bytes", {})[label] = before
        print(f"== precision {label} ({sub.quant}, {sub.dtype}) -> {sub.out}"
              + (f"; GPU memory in use before it: {before / 2**30:.2f} GiB" if before is not None else ""))
        try:
            codes[label] = run_main(sub, argv, top=out)
        except UsageError:
            if created and [p.name for p in out.iterdir()] == ["meta.json"]:   # refused at start: no folder
                (out / "meta.json").unlink()
                out.rmdir()
            raise
        if codes[label] == EXIT_INTERRUPTED:
            return EXIT_INTERRUPTED
    meta["exit_codes"] = codes
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    path = write_precision_report({k: Path(v.out) for k, v in subs.items()}, out, meta)
    _link_latest(out)
    print(f"precision report: {path} ({', '.join(subs)}"
          + (f"; absent: {', '.join(skipped)}" if skipped else "") + ")")
    return max(codes.values(), default=EXIT_OK)


def _release_models(cfg: RunConfig) -> int | None:
    """Frees what the previous precision's run left (models, graphs, compiled code) before the next
    loads, so each precision's whole-GPU memory is its own; -> the target GPU's bytes in use now
    (NVML, every process) on CUDA, None on CPU."""
    free_memory(cfg.torch_device)
    if cfg.torch_device.type != "cuda":
        return None
    torch._dynamo.reset()          # compiled steps hold the previous models' modules
    free_memory(cfg.torch_device)
    return used_bytes(cfg.torch_device)["device_used"]


def _measure_verify_cost(cfg: RunConfig, drafter, target, writer, records_path: Path, record_meta: dict,
                         done: set, sampler) -> None:
    """The run's verify_cost record (verify_cost.curve_record) for M = 1..its largest hidden block,
    once per run (a resumed run keeps a measured one)."""
    label = precision_label(cfg.quant, cfg.dtype)
    if ("verify_cost", "all", f"verify-cost-{label}", "target") in done:
        return
    if sampler.devices:
        sampler.sample()
        peaks = sampler.peaks()
        memory = {"bytes": sum(p["peak_device_used_bytes"] for p in peaks.values()),
                  "what": f"whole-GPU peak, all processes, {' + '.join(peaks)} "
                          f"({', '.join(sorted({str(p['source']) for p in peaks.values()}))})"}
    else:
        memory = {"bytes": drafter.memory_footprint() + target.memory_footprint(),
                  "what": "CPU: both models' weights (parameters + buffers), no device-wide measure"}
    writer.write(curve_record(target, sizes=curve_sizes(load_records(records_path)), meta=record_meta,
                              memory=memory))


SHARDED_PRECISIONS = ("--quant with several precisions runs them one after another: launch one sharded run "
                      "per precision (--quant P --out <dir>/P), then `ppbench report <dir>/*/records.jsonl "
                      "--out <dir>`")


def run_main(cfg: RunConfig, argv: list[str], sharded=None, *, top: Path | None = None) -> int:
    """The run; `sharded` (a shard.ShardRun, under torchrun / accelerate launch) narrows it to
    this process's share and leaves the merge and the report to rank 0. Several precisions go to
    run_precisions, which runs this once per precision (`top`: its folder)."""
    if cfg.multi_precision and top is None:
        if sharded:
            raise UsageError(SHARDED_PRECISIONS)
        return run_precisions(cfg, argv)
    out, run_id = _out_and_id(cfg, sharded)
    records_path = out / "records.jsonl"
    has_records = records_path.exists() and records_path.stat().st_size > 0
    if has_shards(out):
        if not sharded:
            raise UsageError(f"{out} holds a sharded run ({out / 'shards'}): resume it under torchrun or "
                             f"accelerate launch, or merge what it has with `ppbench merge {out}`")
        has_records = True
    # Refuse before touching anything in `out`: a refused run must not rewrite a run's meta.json.
    if has_records and not cfg.resume:
        raise UsageError(f"{records_path} already holds records; pass --resume to continue that run, "
                         "or another --out")
    run_data = open_data(cfg, progress=not cfg.no_progress)
    settings = {"profile": cfg.profile, "quant": cfg.quant, "dtype": cfg.dtype,
                "max_new_tokens": cfg.max_new_tokens, "stop_at_eos": cfg.stop_at_eos,
                "decode_impl": cfg.decode, "overlap": cfg.overlap, "drafter_process": cfg.drafter_process,
                "data_root": str(run_data.root), "event_images": cfg.event_images,
                "videollava_prompt": cfg.videollava_prompt}
    previous = _resumable_meta(out, settings) if has_records else None
    if previous:
        run_id = previous.get("run_id", run_id)   # resumed records keep the run's identity
    elif cfg.resume:
        print(f"--resume: no records in {out}; starting a new run there", file=sys.stderr)
    if not run_data.samples and not run_data.bad_entries:
        raise UsageError(f"no samples to measure for durations {', '.join(cfg.durations)} in {run_data.root}"
                         + (f" ({'; '.join(run_data.missing)})" if run_data.missing else ""))
    print(f"dataset: {run_data.root} ({len(run_data.samples)} samples over {len(cfg.durations)} durations)")
    for line in run_data.missing:
        print(f"warning: no dataset for {line}", file=sys.stderr)
    samples, engine_samples, engine_cfg = run_data.samples, run_data.samples, cfg
    if sharded:   # this rank's share of what is missing; the --engine-samples subset is run-wide
        samples, engine_samples, done = sharded.share(out, samples, {**settings, "run_id": run_id})
        run_id = sharded.run_id   # the resumed records' run id, as rank 0 found it
        engine_cfg = dataclasses.replace(cfg, engine_samples=None)
        if not samples and not (sharded.rank == 0 and run_data.bad_entries):
            return EXIT_OK

    from .gpu_memory import PeakSampler

    # Whole devices, every process (NVML), from before the models load to the end of the engine runs.
    sampler = PeakSampler({cfg.torch_device, torch.device(cfg.drafter_device)}).__enter__()
    t = time.perf_counter()
    # A drafter process is daemonic: it ends with this one at worst.
    drafter, target = open_models(cfg, run_questions(run_data.samples))
    print(f"models: {drafter.name} + {target.name} ({cfg.profile}, {cfg.quant}, {cfg.dtype}, decode "
          f"{cfg.decode}) loaded in {time.perf_counter() - t:.1f} s")
    meta = run_meta(cfg.profile, cfg.torch_device, drafter, target, cfg.torch_dtype, cfg.quant,
                    run_data.source, run_data.root, run_id=run_id,
                    command="ppbench " + " ".join(shlex.quote(a) for a in argv),
                    missing_datasets=run_data.missing, **config_meta(cfg))
    # Start-up is over: only now does the run get its folder (and runs/latest).
    out.mkdir(parents=True, exist_ok=True)
    if sharded:
        sharded.meta = meta
        record_meta = {**record_fields(meta), **sharded.record_fields()}
    else:
        record_meta = record_fields(meta)
        repair_torn_tail(records_path)
        done = done_keys(load_records(records_path)) if cfg.resume else set()
    if not sharded or sharded.rank == 0:
        if top is None:
            _link_latest(out)
        (out / "meta.json").write_text(json.dumps(meta, indent=2))
    try:
        if samples and cfg.warmup:
            for s in samples[: cfg.warmup]:
                warm_up([drafter, target], s)
        with sampler, (sharded.writer() if sharded else RecordWriter(records_path)) as writer:
            for rec in bad_entry_records(run_data, record_meta) if not sharded or sharded.rank == 0 else ():
                if record_key(rec) not in done:
                    writer.write(rec)
            bar = tqdm(total=len(samples), desc="stages", unit="sample", disable=cfg.no_progress)
            run_stage_pipeline([drafter, target], samples, writer, done=done,
                               max_new_tokens=cfg.max_new_tokens, stop_at_eos=cfg.stop_at_eos,
                               meta=record_meta, progress=lambda s: bar.update(1))
            bar.close()
            if cfg.engine and engine_samples:
                run_engine_suite(drafter, target, engine_samples, writer, done=done, cfg=engine_cfg,
                                 meta=record_meta, progress=not cfg.no_progress,
                                 rotation=rotations(run_data.samples, cfg.engine_samples))
            if cfg.verify_cost and not sharded:
                _measure_verify_cost(cfg, drafter, target, writer, records_path, record_meta, done, sampler)
    except KeyboardInterrupt:
        if sharded:
            return EXIT_INTERRUPTED   # shard.ShardRun.run prints what is kept and the resume command
        n = len(load_records(records_path))
        print(f"\ninterrupted: {n} records kept in {records_path}\ncontinue with: "
              f"{resume_command(argv, top or out)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        close_models(drafter)
    if sampler.devices:
        meta["gpu_memory"] = sampler.peaks()
        if not sharded or sharded.rank == 0:
            (out / "meta.json").write_text(json.dumps(meta, indent=2))
    if sharded:
        return EXIT_OK   # rank 0 merges and reports once every rank is done (shard.ShardRun.run)
    return _write_report(records_path, out, meta)



# Settings that change what a record means: a resumed run must use the same ones.
RESUME_KEYS = ("profile", "quant", "dtype", "max_new_tokens", "stop_at_eos", "decode_impl", "overlap",
               "drafter_process", "data_root", "event_images", "videollava_prompt", "cuda_alloc")


def _resumable_meta(out: Path, now: dict) -> dict | None:
    """The interrupted run's meta.json, after checking that this run's settings (`now`) match it."""
    path = out / "meta.json"
    if not path.exists():
        return None
    previous = json.loads(path.read_text())
    # Runs from before decode_impl / overlap existed were transformers-eager ("hf") and drafted
    # through the whole window ("always").
    saved = {"decode_impl": "hf", "overlap": "always", "drafter_process": False, "event_images": 5,
             "videollava_prompt": "model-card", **previous}
    differ = [f"{k}: saved {saved.get(k)!r}, now {now[k]!r}" for k in RESUME_KEYS
              if k in saved and k in now and saved[k] != now[k]]
    if differ:
        raise UsageError(f"--resume with different settings than {path}: " + "; ".join(differ))
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
    """Writes the report; prints each failed record (the first few) and returns EXIT_FAILURES when
    any failed. A resumed run's retried records replace the failed ones (metrics.dedupe)."""
    records = dedupe(load_records(records_path))
    path = write_report(records, out, meta)
    unsupported = sum(1 for r in records if (r.get("error") or {}).get("type") == "Unsupported")
    failed = sum(1 for r in records if r.get("error")) - unsupported
    print(f"report: {path} ({len(records)} records, {failed} failed"
          + (f", {unsupported} baselines unsupported for this pair" if unsupported else "") + ")")
    if meta.get("missing_datasets"):
        print("durations without a dataset: " + "; ".join(meta["missing_datasets"]), file=sys.stderr)
    if failed:
        print(f"{failed} failed record(s):", file=sys.stderr)
        print("\n".join(failure_lines(records)), file=sys.stderr)
        if failed == len(records) - unsupported:
            print("error: no successful measurement (every record failed)", file=sys.stderr)
        print(f"exit code {EXIT_FAILURES}: the run finished with failures; `--resume` retries the failed "
              "records", file=sys.stderr)
        return EXIT_FAILURES
    return EXIT_OK


def report_main(args) -> int:
    paths = [Path(r) for r in (args.records if isinstance(args.records, list) else [args.records])]
    for path in paths:
        if not path.exists():
            raise UsageError(f"no such records file: {path}")
    if len(paths) > 1 or getattr(args, "precision", False):
        return precision_report_main(paths, args.out)
    records_path = paths[0]
    out = Path(args.out) if args.out else records_path.parent
    meta_path = records_path.parent / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return _write_report(records_path, out, meta)


def precision_report_main(paths: list[Path], out: str | None) -> int:
    """`ppbench report A/records.jsonl B/records.jsonl ...`: the Precision report over several runs
    (one precision each), into --out (default: the runs' common parent folder)."""
    runs = {}
    for path in paths:
        records = load_records(path)
        labels = sorted({precision_label(r.get("quant"), r.get("dtype")) for r in records})
        if len(labels) != 1:
            raise UsageError(f"{path}: a precision report needs one precision per records file, found "
                             f"{', '.join(labels) or 'no records'}")
        if labels[0] in runs:
            raise UsageError(f"{path}: precision {labels[0]} is also in {runs[labels[0]] / 'records.jsonl'}")
        runs[labels[0]] = path.parent
    folder = Path(out) if out else Path(os.path.commonpath([str(p.parent.resolve()) for p in paths]))
    meta_path = folder / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    path = write_precision_report(runs, folder, meta)
    print(f"precision report: {path} ({', '.join(runs)})")
    return EXIT_OK


def dataset_main(args) -> int:
    from harness.data import synthetic as synthetic_dsec

    t = time.perf_counter()
    kwargs = {"seed": args.seed}
    if args.samples_per_duration is not None:
        kwargs["samples_per_duration"] = args.samples_per_duration
    if args.root:
        if Path(args.root).exists() and any(Path(args.root).iterdir()) and not args.force:
            raise UsageError(f"{args.root} exists and is not empty; pass --force to rebuild it")
        root = synthetic_dsec.build_dataset(args.root, progress=synthetic_dsec._tqdm_progress(),
                                            overwrite=args.force, **kwargs)
    elif args.seed == 0 and args.samples_per_duration is None:
        default = synthetic_dsec.cache_dir() / f"dataset-{synthetic_dsec.DATASET_VERSION}-seed0"
        if args.force:
            import shutil

            shutil.rmtree(default, ignore_errors=True)
        root = synthetic_dsec.ensure_default_dataset(progress=True)
    else:
        raise UsageError("a non-default seed or sample count needs --root (the cache holds the default)")
    print(f"dataset built at {root} in {time.perf_counter() - t:.1f} s")
    return 0
