"""Versioned performance bounds per profile and device class, and the assertion that checks them.

A bounds file lives at `harness/calibration/bounds/<profile>-<device_class>.json` (e.g. tiny-cpu.json,
7b-shaped-h100.json) and is reviewed like code: a change to a bound is a visible diff with a reason.

    {"schema": 1, "profile": "tiny", "device_class": "cpu", "source": "how it was derived",
     "bounds": {"acceptance_rate": {"min": 0.5, "max": 1.0,
                                    "per_duration": {"500ms": {"min": 0.4}},
                                    "why": "..."}}}

A bound has a `min`, a `max` or both. `per_duration` entries override min/max for that duration
only (keys are duration labels like "500ms", "4s"); a key they leave out falls back to the
top-level value. `why` is required: a bound nobody can explain gets loosened until it means nothing.

    bounds = load_bounds("tiny", device_class())
    check_bound(bounds, "acceptance_rate", measured, samples=[...ids], duration="4s")

`check_bound` raises `BoundViolation` (an AssertionError, so pytest shows it as a plain test
failure) naming the bound, its limit, the measured value, the duration, the samples behind the
measurement and the bounds file.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

import torch

from harness.calibration import BOUNDS_DIR
from harness.errors import PpbenchError
from harness.metrics import summarize_engine

SCHEMA = 1
MAX_LISTED_SAMPLES = 8
_DURATION = re.compile(r"^\d+(\.\d+)?(ms|s)$")
ENGINE_BENCH = "test_parallel_prefill"   # the benchmark whose extra_info the bounds derive from

# Safety margins used by derive_bounds: how far below (min) or above (max) the measured value a
# bound sits. Relative margins scale with the value; absolute ones suit rates in [0, 1]. They are
# wide on purpose: a bound is a floor against breakage (2x slowdowns, lost overlap, broken
# acceptance), while small drifts are compare.py's job, which has the statistics for it.
DEFAULT_MARGINS = {
    "drafter_prefill_speedup": {"side": "min", "rel": 0.25, "lo": 0.0,
                                "why": "target/drafter time to prefill end; -25% of measured"},
    "overall_speedup": {"side": "min", "rel": 0.20, "lo": 0.0,
                        "why": "target-only e2e / parallel e2e; -20% of measured"},
    "acceptance_rate": {"side": "min", "abs": 0.10, "lo": 0.0, "hi": 1.0,
                        "why": "accepted / drafted, greedy; measured - 0.10"},
    "hidden_drafted": {"side": "min", "rel": 0.30, "lo": 0.0,
                       "why": "drafter tokens the engine finished inside its overlap window; -30% of measured"},
    "engine_efficiency": {"side": "min", "rel": 0.20, "lo": 0.0,
                          "why": "ideal e2e / measured e2e (fraction of the ideal achieved); -20%"},
    "token_match_rate": {"side": "min", "abs": 0.0, "lo": 0.0, "hi": 1.0,
                         "why": "greedy speculative decoding is lossless: output must equal target-only"},
}


class BoundsError(PpbenchError):
    """A bounds file is missing or malformed, or a bound is asked for that the file lacks."""


class BoundViolation(AssertionError):
    """A measured value fell outside its bound. An AssertionError so pytest reports a failure."""

    def __init__(self, message: str, *, name: str, limit: str, value: float, measured: float,
                 duration: str | None, samples: list, path: str):
        super().__init__(message)
        self.name, self.limit, self.value, self.measured = name, limit, value, measured
        self.duration, self.samples, self.path = duration, samples, path


# ---------------------------------------------------------------- device class

def device_class_from_name(gpu_name: str | None) -> str:
    """Map a CUDA device name to a class: h100 / h200 / a100 / other-<slug>; None -> cpu."""
    if not gpu_name:
        return "cpu"
    low = gpu_name.lower()
    for cls in ("h200", "h100", "a100"):
        if cls in low:
            return cls
    return "other-" + (re.sub(r"[^a-z0-9]+", "-", low).strip("-") or "gpu")


def device_class(device=None) -> str:
    """Class of `device` (a torch device or string), or of CUDA device 0 when CUDA is available."""
    if device is not None and torch.device(device).type != "cuda":
        return "cpu"
    if not torch.cuda.is_available():
        return "cpu"
    index = torch.device(device).index if device is not None else None
    return device_class_from_name(torch.cuda.get_device_name(index or 0))


# ---------------------------------------------------------------- files

def bounds_path(profile: str, device_cls: str, root=None) -> Path:
    return Path(root or BOUNDS_DIR) / f"{profile}-{device_cls}.json"


def validate_bounds(doc, path="<in-memory bounds>") -> dict:
    """Check the schema; returns doc. Raises BoundsError naming the file and the bad entry."""
    def bad(msg):
        raise BoundsError(f"bounds file {path}: {msg}")

    if not isinstance(doc, dict):
        bad("must hold a JSON object")
    if doc.get("schema") != SCHEMA:
        bad(f"schema must be {SCHEMA}, got {doc.get('schema')!r}")
    for key in ("profile", "device_class", "source"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            bad(f"missing string field {key!r}")
    if not isinstance(doc.get("bounds"), dict):
        bad("missing object field 'bounds'")
    for name, b in doc["bounds"].items():
        if not isinstance(b, dict):
            bad(f"bound {name!r} must be an object")
        if "min" not in b and "max" not in b and not b.get("per_duration"):
            bad(f"bound {name!r} has neither min nor max")
        if not isinstance(b.get("why"), str) or not b["why"].strip():
            bad(f"bound {name!r} has no 'why'")
        _check_limits(b, f"bound {name!r}", bad)
        for dur, sub in (b.get("per_duration") or {}).items():
            if not _DURATION.match(dur):
                bad(f"bound {name!r}: per_duration key {dur!r} is not a duration like '500ms' or '4s'")
            if not isinstance(sub, dict) or not ({"min", "max"} & sub.keys()):
                bad(f"bound {name!r}: per_duration {dur!r} needs min and/or max")
            _check_limits({**{k: b[k] for k in ("min", "max") if k in b}, **sub},
                          f"bound {name!r} at {dur}", bad)
    return doc


def _check_limits(b: dict, what: str, bad) -> None:
    for side in ("min", "max"):
        v = b.get(side)
        if side in b and (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v)):
            bad(f"{what}: {side} must be a number, got {v!r}")
    if "min" in b and "max" in b and b["min"] > b["max"]:
        bad(f"{what}: min {b['min']} > max {b['max']}")


def load_bounds_file(path) -> dict:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise BoundsError(f"bounds file {path} not found") from None
    except (OSError, ValueError) as e:
        raise BoundsError(f"bounds file {path}: cannot read JSON: {e}") from None
    doc = validate_bounds(doc, path)
    doc["path"] = str(path)       # not part of the file: lets violations name where the bound lives
    return doc


def load_bounds(profile: str, device_cls: str | None = None, root=None) -> dict:
    """Bounds for a profile on a device class (default: this machine's)."""
    return load_bounds_file(bounds_path(profile, device_cls or device_class(), root))


def write_bounds(doc: dict, path) -> Path:
    doc = {k: v for k, v in doc.items() if k != "path"}
    validate_bounds(doc, path)
    path = Path(path)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


# ---------------------------------------------------------------- checking

def limits(bounds: dict, name: str, duration: str | None = None) -> dict:
    """{"min": x?, "max": y?} for name, per-duration override applied."""
    where = bounds.get("path", "<in-memory bounds>")
    b = bounds.get("bounds", {}).get(name)
    if b is None:
        raise BoundsError(f"no bound {name!r} in bounds file {where} "
                          f"(has: {', '.join(sorted(bounds.get('bounds', {}))) or 'none'})")
    out = {k: b[k] for k in ("min", "max") if k in b}
    if duration is not None:
        out.update({k: v for k, v in (b.get("per_duration") or {}).get(duration, {}).items()
                    if k in ("min", "max")})
    return out


def _samples_text(samples) -> str:
    ids = [str(s) for s in (samples or [])]
    shown = ", ".join(ids[:MAX_LISTED_SAMPLES])
    more = f", ... (+{len(ids) - MAX_LISTED_SAMPLES} more)" if len(ids) > MAX_LISTED_SAMPLES else ""
    return f"{len(ids)} sample(s): [{shown}{more}]"


def check_bound(bounds: dict, name: str, measured: float, samples=(), duration: str | None = None) -> dict:
    """Raise BoundViolation if measured is outside the bound; return the limits that applied.

    A NaN measurement violates every bound: 'could not be measured' must not pass silently."""
    lim = limits(bounds, name, duration)
    if not lim:
        raise BoundsError(f"bound {name!r} has no min/max for duration {duration} "
                          f"in bounds file {bounds.get('path', '<in-memory bounds>')}")
    measured = float(measured)
    failed = None
    if "min" in lim and not measured >= lim["min"]:
        failed = ("min", lim["min"], "<")
    elif "max" in lim and not measured <= lim["max"]:
        failed = ("max", lim["max"], ">")
    if failed is None:
        return lim
    side, value, op = failed
    path = bounds.get("path", "<in-memory bounds>")
    why = bounds["bounds"][name].get("why", "")
    at = f" at duration {duration}" if duration is not None else " (all durations)"
    msg = (f"bound {name!r} violated{at}: measured {measured:.6g} {op} {side} {value:g}; "
           f"{_samples_text(samples)}; bounds file {path}"
           + (f"; why: {why}" if why else ""))
    raise BoundViolation(msg, name=name, limit=side, value=value, measured=measured,
                         duration=duration, samples=list(samples or []), path=path)


# ---------------------------------------------------------------- deriving

def _aggregate(v) -> float:
    # Bounds are checked against aggregates (means/medians over samples), so a list of per-sample
    # values is reduced to its median, which one outlier sample cannot drag.
    if isinstance(v, (list, tuple)):
        xs = sorted(float(x) for x in v if not math.isnan(float(x)))
        if not xs:
            return math.nan
        mid = len(xs) // 2
        return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
    return float(v)


def _apply_margin(value: float, m: dict) -> dict:
    side = m.get("side", "min")
    if side not in ("min", "max", "both"):
        raise BoundsError(f"margin side must be min, max or both, got {side!r}")
    rel, ab = float(m.get("rel", 0.0)), float(m.get("abs", 0.0))
    lo = value - abs(value) * rel - ab
    hi = value + abs(value) * rel + ab
    if "lo" in m:
        lo, hi = max(lo, m["lo"]), max(hi, m["lo"])
    if "hi" in m:
        lo, hi = min(lo, m["hi"]), min(hi, m["hi"])
    out = {}
    # Rounded for a readable file, but never past the measured value: a derived bound must pass
    # the very run it was derived from.
    if side in ("min", "both"):
        out["min"] = min(round(lo, 6), value)
    if side in ("max", "both"):
        out["max"] = max(round(hi, 6), value)
    return out


def derive_bounds(measurements: dict, margins: dict | None = None, *, profile: str,
                  device_class: str, source: str) -> dict:
    """Build a bounds document from a measured run.

    measurements: {name: value | [per-sample values] | {"all": value, "per_duration": {dur: value}}}
    margins: {name: {"side": "min"|"max"|"both", "rel": r, "abs": a, "lo": floor, "hi": ceil,
             "why": text}}, merged over DEFAULT_MARGINS. min = v - |v|*rel - abs, max = v + |v|*rel
             + abs, then clamped to [lo, hi]. Every measured name needs a margin (no silent default).
    """
    margins = {**DEFAULT_MARGINS, **(margins or {})}
    out = {}
    for name, meas in measurements.items():
        if name not in margins:
            raise BoundsError(f"no safety margin for measured {name!r}; pass one in margins")
        m = margins[name]
        per = meas.get("per_duration", {}) if isinstance(meas, dict) else {}
        overall = meas.get("all") if isinstance(meas, dict) else meas
        entry = {}
        if overall is not None:
            v = _aggregate(overall)
            if math.isnan(v):
                raise BoundsError(f"measurement {name!r} is NaN; cannot derive a bound from it")
            entry.update(_apply_margin(v, m))
        if per:
            entry["per_duration"] = {}
            for dur, dv in per.items():
                v = _aggregate(dv)
                if math.isnan(v):
                    raise BoundsError(f"measurement {name!r} at {dur} is NaN")
                entry["per_duration"][dur] = _apply_margin(v, m)
        why = m.get("why", "")
        note = f"measured {_aggregate(overall):.4g}" if overall is not None else "measured per duration"
        entry["why"] = f"{why} ({note}; margin {_margin_text(m)})".strip()
        out[name] = entry
    doc = {"schema": SCHEMA, "profile": profile, "device_class": device_class, "source": source,
           "bounds": out}
    return validate_bounds(doc)


def _margin_text(m: dict) -> str:
    parts = [f"side={m.get('side', 'min')}"]
    if m.get("rel"):
        parts.append(f"rel={m['rel']}")
    if m.get("abs"):
        parts.append(f"abs={m['abs']}")
    return ", ".join(parts)


# ---------------------------------------------------------------- checking records

def check_engine_bounds(bounds: dict, summary: dict, duration: str) -> None:
    """Asserts every bound the bounds file names that this summary measured."""
    for name in bounds.get("bounds", {}):
        value = summary.get(name)
        if value is not None:
            check_bound(bounds, name, value, samples=summary["samples"], duration=duration)


# ---------------------------------------------------------------- measurements for derive_bounds

def measurements_from_saves(docs: list[dict]) -> tuple[dict, dict]:
    """Bound-relevant numbers from saved pytest-benchmark JSON (the parallel-prefill benchmarks'
    extra_info), per duration; several saves pool by median. Returns (measurements, ppbench meta)."""
    per: dict[str, dict[str, list]] = {}
    meta = {}
    for doc in docs:
        meta = doc.get("ppbench") or meta
        for b in doc["benchmarks"]:
            if not b["name"].startswith(ENGINE_BENCH + "["):
                continue
            duration = b["name"][len(ENGINE_BENCH) + 1:-1]
            extra = dict(b.get("extra_info") or {})
            if "pooled_acceptance" in extra:   # the bound checks the pooled rate, so derive from it
                extra["acceptance_rate"] = extra["pooled_acceptance"]
            if "hidden_tokens" in extra:       # saves before the rename: the engine's hidden drafted
                extra.setdefault("hidden_drafted", extra.pop("hidden_tokens"))
            for name, value in extra.items():
                if isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
                    value = statistics.median(value)  # per-sample list -> the run's median
                if name in DEFAULT_MARGINS and isinstance(value, (int, float)):
                    per.setdefault(name, {}).setdefault(duration, []).append(float(value))
    if meta.get("dtype") != "float32":
        # bf16/NF4 batched-vs-single numerics flip near-ties on random weights: the token match
        # rate is reported there, never bounded (lossless is proven bit-exactly in fp32).
        per.pop("token_match_rate", None)
    out = {}
    for name, by_dur in per.items():
        vals = {d: statistics.median(v) for d, v in by_dur.items()}
        out[name] = {"all": statistics.median(vals.values()), "per_duration": vals}
    return out, meta


RECORD_BOUNDS = ("overall_speedup", "drafter_prefill_speedup", "hidden_drafted", "engine_efficiency",
                 "acceptance_rate")


def real_drafter_records(records: list[dict]) -> list[dict]:
    """Stage records and the engine records of the real drafter: a sweep's simulated-alpha records
    are neither checked nor derived from, as in the nightly benchmarks."""
    return [r for r in records if r["kind"] == "stages" or r.get("alpha_simulated") is None]


def _run_medians(records: list[dict]) -> dict:
    """{name: {duration: median, "all": median over every sample}} for one `ppbench run` folder's
    records (real drafter tokens; acceptance pooled over every sample, as summarize_engine pools)."""
    real = real_drafter_records(records)
    out = {n: {} for n in RECORD_BOUNDS}
    pooled = {n: [] for n in RECORD_BOUNDS}
    for duration in sorted({r["dataset"] for r in real}):
        mine = [r for r in real if r["dataset"] == duration]
        lists, medians = summarize_engine([r for r in mine if r["kind"] == "engine"],
                                          [r for r in mine if r["kind"] == "stages"])
        for n in RECORD_BOUNDS:
            if medians.get(n) is not None:
                out[n][duration] = medians[n]
                pooled[n].extend(lists.get(n, []))
    for n in RECORD_BOUNDS:
        if pooled[n]:
            out[n]["all"] = statistics.median(pooled[n])
    par = [r for r in real if r["kind"] == "engine" and r["mode"] == "parallel" and not r.get("error")]
    drafted = sum(r["drafted"] for r in par)
    if drafted:
        out["acceptance_rate"]["all"] = sum(r["accepted"] for r in par) / drafted
    return out


def measurements_from_records(runs: list[list[dict]]) -> dict:
    """Bound-relevant numbers from the records of `ppbench run` folders (run with one gamma, as the
    nightly does), for a device class without a saved pytest-benchmark run: each value is the
    lowest of the folders' medians, per duration and overall, so every folder passes."""
    folders = [_run_medians(r) for r in runs]
    out = {}
    for n in RECORD_BOUNDS:
        keys = set.intersection(*(set(f[n]) for f in folders))
        if not keys:
            continue
        lowest = {k: min(f[n][k] for f in folders) for k in keys}
        out[n] = {"all": lowest.get("all"),
                  "per_duration": {k: v for k, v in lowest.items() if k != "all"}}
    return out


def record_violations(bounds: dict, records: list[dict]) -> list[str]:
    """Every bound a run's records violate, one line each, the way test_parallel_prefill checks
    them (same summary, same check) but without stopping at the first."""
    real = real_drafter_records(records)
    bad = []
    for duration in sorted({r["dataset"] for r in real}):
        mine = [r for r in real if r["dataset"] == duration]
        _, summary = summarize_engine([r for r in mine if r["kind"] == "engine"],
                                      [r for r in mine if r["kind"] == "stages"])
        for name in bounds.get("bounds", {}):
            try:
                check_engine_bounds({**bounds, "bounds": {name: bounds["bounds"][name]}}, summary, duration)
            except (AssertionError, BoundsError) as e:
                bad.append(f"[{duration}] {str(e).splitlines()[0]}")
    return bad
