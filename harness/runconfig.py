"""One run configuration, resolved once from the option table (harness/options.py) and shared by
`ppbench run` and the pytest session: every "auto" decided, every value checked before any work.

`resolve(raw)` raises `UsageError` (one line, with a hint) for anything a user can fix: ranges,
unknown devices, CUDA asked for on a CPU-only torch, missing paths, a profile and paths that do not
go together. The CLI prints it and exits 2; the pytest plugin stops the session with it.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .data.dataset import DURATIONS
from .engine import resolve_overlap
from .errors import UsageError
from .models.static_decode import resolve_decode_impl
from .options import BY_NAME, DRAFTER_PROCESS_CHOICES, QUANTS

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
INJECT_STAGES = ("load", "preprocess", "vision", "prefill", "decode")


@dataclass(frozen=True)
class RunConfig:
    profile: str
    drafter_path: str | None
    target_path: str | None
    allow_pickle: bool
    data_root: str | None
    data_scale: str
    video_reader: str
    durations: tuple[str, ...]
    samples_per_duration: int
    device: str                  # resolved: "cpu", "cuda", "cuda:N"
    drafter_device: str          # resolved: the target's device unless given
    quant: str                   # this run's precision: "nf4" | "int4" | "none"
    dtype: str                   # "float32" | "bfloat16" | "float16"
    max_new_tokens: int
    stop_at_eos: bool
    decode: str                  # resolved implementation: hf | static | cuda-graph | compiled
    cache_len: int | None
    cuda_alloc: str              # "expandable" | "default" (gpu_memory.configure_allocator)
    overlap: str                 # resolved policy: always | yield-gpu
    drafter_process: bool        # resolved
    warmup: int
    engine: bool
    engine_samples: int | None
    gammas: tuple
    alphas: tuple[float, ...]
    assisted: bool
    out: str | None
    resume: bool
    no_progress: bool
    gpus_per_process: int = 1    # sharded runs (harness/shard.py)
    allow_mixed_gpus: bool = False
    shard_costs: str | None = None
    bounds: str | None = None
    gate: str | None = None
    gate_thresholds: str | None = None
    inject_delay: str | None = None
    event_images: int = 5              # drafter event images per sample (1 or 5)
    videollava_prompt: str = "model-card"   # target prompt template (models/videollava.py TEMPLATES)
    quants: tuple[str, ...] = ()       # every precision of a multi-precision run (() : just `quant`)
    skipped_quants: tuple = ()         # ((quant, why), ...): asked for, not measurable here
    verify_cost: bool = False          # resolved: measure the target's verify-cost curve

    @property
    def multi_precision(self) -> bool:
        """Several precisions asked for (those skipped here count: the report names them absent)."""
        return len(self.quants) + len(self.skipped_quants) > 1

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return _DTYPES[self.dtype]

    def settings(self) -> dict:
        """Plain-JSON view (meta.json, resume checks)."""
        return asdict(self)


def _flag(name: str) -> str:
    return BY_NAME[name].flag("cli") or BY_NAME[name].flag("pytest")


def _int(raw: dict, name: str, *, low: int, flag=_flag) -> int | None:
    value = raw.get(name)
    if value is None or value == "":
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{flag(name)} {value!r}: not an integer") from None
    if n < low:
        raise UsageError(f"{flag(name)} {n}: must be >= {low}")
    return n


def parse_gammas(text: str, flag: str = "--gammas") -> tuple:
    gammas = []
    for g in (x.strip() for x in str(text).split(",")):
        if not g:
            continue
        if g == "adaptive":
            gammas.append(g)
            continue
        try:
            n = int(g)
        except ValueError:
            raise UsageError(f"{flag} {text!r}: {g!r} is neither 'adaptive' nor an integer") from None
        if n < 1:
            raise UsageError(f"{flag} {text!r}: a draft length must be >= 1 (got {n}); "
                             "use --engine off to skip the engine")
        gammas.append(n)
    if not gammas:
        raise UsageError(f"{flag} {text!r}: needs at least one draft length, e.g. adaptive or 1,4")
    return tuple(gammas)


def parse_alphas(text: str, flag: str = "--alphas") -> tuple[float, ...]:
    alphas = []
    for a in (x.strip() for x in str(text or "").split(",")):
        if not a:
            continue
        try:
            v = float(a)
        except ValueError:
            raise UsageError(f"{flag} {text!r}: {a!r} is not a number") from None
        if not 0.0 <= v <= 1.0:
            raise UsageError(f"{flag} {text!r}: a simulated acceptance rate must be in [0, 1], got {v}")
        alphas.append(v)
    return tuple(alphas)


def parse_durations(text: str, flag: str = "--durations") -> tuple[str, ...]:
    durations = tuple(d.strip() for d in str(text).split(",") if d.strip())
    unknown = [d for d in durations if d not in DURATIONS]
    if unknown or not durations:
        raise UsageError(f"{flag} {text!r}: unknown duration(s) {', '.join(unknown) or '(none given)'}; "
                         f"choose from {','.join(DURATIONS)}")
    return durations


_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def resolve_device(name: str, flag: str = "--device") -> str:
    """'auto' -> cuda when this torch has a GPU, else cpu. Refuses what torch cannot run here."""
    name = str(name).strip()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not _DEVICE.match(name):
        raise UsageError(f"{flag} {name!r}: unknown device; use auto, cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else "torch sees no CUDA device")
            raise UsageError(f"{flag} {name}: {why}; use --device cpu, or install a CUDA build of torch")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return name


QUANT_ALIASES = {"bf16": "none"}
NF4_NEEDS_CUDA = ("nf4 needs bitsandbytes' CUDA kernels: its CPU fallback is not the kernel a GPU runs "
                  "(measured on CUDA only, like the verify-cost benchmark)")


def parse_quants(text, flag: str = "--quant") -> tuple[str, ...]:
    """'nf4,bf16,int4' -> ('nf4', 'none', 'int4'): known precisions, each once, in the order given."""
    out = []
    for q in (x.strip() for x in str(text).split(",")):
        if not q:
            continue
        q = QUANT_ALIASES.get(q, q)
        if q not in QUANTS:
            raise UsageError(f"{flag} {text!r}: unknown precision {q!r}; use nf4, int4, none or bf16 "
                             "(comma-separated for several)")
        if q not in out:
            out.append(q)
    if not out:
        raise UsageError(f"{flag} {text!r}: needs at least one precision, e.g. nf4 or nf4,bf16,int4")
    return tuple(out)


def resolve_drafter_process(choice: str, drafter_device: str, *, inject_delay: str | None = None) -> bool:
    """Whether the engine's drafter runs in its own process. auto: yes when the drafter runs on
    CUDA (its own GPU or the target's) and no delay is injected into the in-process runners; on
    CPU a thread, since there the two pipelines compete for cores, not for the GIL. Why a process
    on CUDA: docs/results/README.md (the alpha = 0 probes, thread vs process)."""
    if choice not in DRAFTER_PROCESS_CHOICES:
        raise UsageError(f"drafter process must be one of {', '.join(DRAFTER_PROCESS_CHOICES)}, got {choice!r}")
    if choice != "auto":
        return choice == "on"
    return torch.device(drafter_device).type == "cuda" and not inject_delay


def _path(raw: dict, name: str, *, what: str, flag=_flag) -> str | None:
    value = raw.get(name)
    if not value:
        return None
    if not Path(value).exists():
        raise UsageError(f"{flag(name)} {value}: no such {what}")
    return str(value)


def resolve(raw: dict, *, side: str = "cli") -> RunConfig:
    """RunConfig from raw option values (options.from_cli / from_pytest). Raises UsageError."""
    def flag(name):
        return BY_NAME[name].flag(side) or _flag(name)

    profile = raw["profile"]
    drafter_path = _path(raw, "drafter_path", what="checkpoint directory", flag=flag)
    target_path = _path(raw, "target_path", what="checkpoint directory", flag=flag)
    if profile == "real":
        missing = [flag(n) for n, v in (("drafter_path", drafter_path), ("target_path", target_path)) if not v]
        if missing:
            raise UsageError(f"{flag('profile')} real needs {' and '.join(missing)} (local checkpoint "
                             "directories; nothing is downloaded)")
    elif drafter_path or target_path:
        given = [flag(n) for n, v in (("drafter_path", drafter_path), ("target_path", target_path)) if v]
        raise UsageError(f"{' and '.join(given)} only {'apply' if len(given) > 1 else 'applies'} to {flag('profile')} real (the {profile} profile "
                         "builds its own models); add --profile real")
    data_root = _path(raw, "data_root", what="dataset root", flag=flag)
    if data_root and not (Path(data_root) / "manifests").is_dir():
        raise UsageError(f"{flag('data_root')} {data_root}: not a ppbench dataset root (no manifests/ folder)")

    device = resolve_device(raw["device"], flag("device"))
    drafter_device = resolve_device(raw["drafter_device"], flag("drafter_device")) if raw.get("drafter_device") \
        else device
    on_cuda = torch.device(device).type == "cuda"
    quants = parse_quants(raw.get("quant") or ("nf4" if on_cuda else "none"), flag("quant"))
    if side == "pytest" and len(quants) > 1:
        raise UsageError(f"{flag('quant')} {raw.get('quant')}: a pytest session measures one precision "
                         "(tests/test_benchmarks.py::test_verify_cost times every precision's curve)")
    skipped = ()
    if len(quants) > 1 and not on_cuda and "nf4" in quants:
        skipped = (("nf4", NF4_NEEDS_CUDA),)
        quants = tuple(q for q in quants if q != "nf4")
    quant = quants[0]
    verify = raw.get("verify_cost") or "auto"
    dtype = raw.get("dtype") or ("bfloat16" if on_cuda else "float32")
    try:
        decode = resolve_decode_impl(raw["decode"], device)
    except ValueError as e:
        raise UsageError(f"{flag('decode')} {raw['decode']}: {e}") from None

    inject = raw.get("inject_delay")
    if inject:
        stage, _, ms = str(inject).partition(":")
        try:
            ok = stage in INJECT_STAGES and float(ms) > 0
        except ValueError:
            ok = False
        if not ok:
            raise UsageError(f"{flag('inject_delay')} {inject!r}: expected STAGE:MS with STAGE one of "
                             f"{', '.join(INJECT_STAGES)} and MS > 0")
    choice = raw.get("drafter_process") or "auto"
    if choice == "on" and inject:
        raise UsageError(f"{flag('inject_delay')} slows the in-process runners only; it cannot be combined "
                         f"with {flag('drafter_process')} on")
    drafter_process = resolve_drafter_process(choice, drafter_device, inject_delay=inject)

    return RunConfig(
        profile=profile, drafter_path=drafter_path, target_path=target_path,
        allow_pickle=bool(raw.get("allow_pickle")), data_root=data_root,
        data_scale=raw.get("data_scale") or "small", video_reader=raw.get("video_reader") or "seek",
        durations=parse_durations(raw["durations"], flag("durations")),
        samples_per_duration=_int(raw, "samples_per_duration", low=1, flag=flag),
        device=device, drafter_device=drafter_device, quant=quant, dtype=dtype,
        max_new_tokens=_int(raw, "max_new_tokens", low=1, flag=flag),
        stop_at_eos=bool(raw.get("stop_at_eos")), decode=decode,
        cache_len=_int(raw, "cache_len", low=1, flag=flag), cuda_alloc=raw.get("cuda_alloc") or "expandable",
        overlap=resolve_overlap(raw.get("overlap") or "auto", drafter_device, device),
        drafter_process=drafter_process,
        warmup=_int(raw, "warmup", low=0, flag=flag) or 0,
        engine=raw.get("engine", "on") == "on",
        engine_samples=_int(raw, "engine_samples", low=1, flag=flag),
        gammas=parse_gammas(raw.get("gammas") or "adaptive", flag("gammas")),
        alphas=parse_alphas(raw.get("alphas") or "", flag("alphas")),
        assisted=raw.get("assisted", "on") == "on",
        out=raw.get("out"), resume=bool(raw.get("resume")), no_progress=bool(raw.get("no_progress")),
        gpus_per_process=_int(raw, "gpus_per_process", low=1, flag=flag) or 1,
        allow_mixed_gpus=bool(raw.get("allow_mixed_gpus")),
        shard_costs=_path(raw, "shard_costs", what="costs file", flag=flag),
        bounds=_path(raw, "bounds", what="bounds file", flag=flag),
        gate=raw.get("gate"), gate_thresholds=raw.get("gate_thresholds"), inject_delay=inject or None,
        event_images=int(raw.get("event_images") or 5), videollava_prompt=raw.get("videollava_prompt") or "model-card",
        quants=quants, skipped_quants=skipped,
        verify_cost=verify == "on" or (verify == "auto" and (len(quants) > 1 or bool(skipped))))
