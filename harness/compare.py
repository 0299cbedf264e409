"""Statistical regression gate between two saved pytest-benchmark runs (asv-style).

    ppbench compare BASE NEW [--threshold 0.05] [--thresholds FILE] [--alpha 0.01]
                             [--allow-different-machines] [--json OUT] [--storage DIR]

BASE / NEW: saved JSON files (`.benchmarks/<machine-id>/NNNN_*.json`) or save ids ("0003") looked up
under --storage. One positional that is a directory, or none at all (then --storage, default
`.benchmarks`), means "the two latest saves there".

Per benchmark present in both runs:
  ratio   = median(NEW rounds) / median(BASE rounds)
  p-value = two-sided Mann-Whitney U on the raw rounds
  CI      = seeded percentile bootstrap of the median ratio, level 1 - alpha
  verdict = regressed  if ratio > 1 + threshold     and p < alpha and CI low  > 1
            improved   if ratio < 1 / (1 + threshold) and p < alpha and CI high < 1
            unchanged  otherwise;  insufficient data below 3 rounds.
A change must be both big (threshold) and real (p, CI): noise alone rarely clears both, and a
significant-but-tiny shift is not worth failing a nightly run for.

Raw rounds are only saved with `--benchmark-save-data`. Without them the gate falls back to the
summary stats (Welch t-test on mean/stddev, normal-approximation CI) and says so: it assumes
normal rounds, which timing data rarely is, so it is weaker.

`extra_info` numbers are compared too, with a direction: higher-is-better keys (acceptance_rate,
hidden_drafted, speedup*, ...) regress when they drop (BASE / NEW > 1 + threshold, the same
log-symmetric rule), lower-is-better keys (memory, *_ms) when they rise; keys of unknown direction
are shown as "info" and never gate. A scalar is compared by threshold alone; a list of per-sample
values gets the same test as timing rounds.

Exit status: 1 on any regression, 0 otherwise, 2 on usage errors and machine mismatches.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import sys
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats as sps

from harness.errors import DataError, PpbenchError

DEFAULT_THRESHOLD = 0.05
DEFAULT_ALPHA = 0.01
N_BOOT = 2000
MIN_ROUNDS = 3
HIGHER_IS_BETTER = ["*acceptance_rate*", "*hidden_drafted*", "*hidden_tokens*", "*speedup*", "*efficiency*",
                    "*token_match_rate*"]
LOWER_IS_BETTER = ["*mem*", "*_ms", "*_bytes", "*latency*"]


class CompareError(PpbenchError):
    """Usage error: bad arguments, missing saves, unreadable thresholds (exit 2)."""


class MachineMismatchError(CompareError):
    """BASE and NEW ran on different hardware; their timings are not comparable."""


class BenchmarkFileError(DataError):
    """A saved pytest-benchmark file is unreadable or not in the expected format."""


@dataclass
class Save:
    path: str
    machine_info: dict
    benchmarks: dict        # fullname -> pytest-benchmark entry
    datetime: str = ""
    meta: dict = field(default_factory=dict)   # the ppbench plugin's run meta, if any


@dataclass
class Comparison:
    name: str
    kind: str               # "time" | "metric"
    base: float | None      # median (time, list metric) or value (scalar metric)
    new: float | None
    ratio: float | None
    p_value: float | None
    ci: tuple[float, float] | None
    verdict: str            # regressed | improved | unchanged | insufficient data | info
    threshold: float
    method: str             # rounds | summary | value
    n_base: int = 0
    n_new: int = 0
    note: str = ""


@dataclass
class Report:
    base_path: str
    new_path: str
    results: list[Comparison]
    only_base: list[str] = field(default_factory=list)
    only_new: list[str] = field(default_factory=list)
    machine_note: str = ""
    warnings: list[str] = field(default_factory=list)

    def count(self, verdict: str) -> int:
        return sum(r.verdict == verdict for r in self.results)

    @property
    def regressed(self) -> bool:
        return self.count("regressed") > 0


# ---------------------------------------------------------------- loading

def load_save(path) -> Save:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchmarkFileError("saved benchmark file not found", path=path) from None
    except (OSError, ValueError) as e:
        raise BenchmarkFileError(f"cannot read saved benchmark JSON: {e}", path=path) from None
    return save_from_doc(doc, path)


def save_from_doc(doc, path) -> Save:
    """A Save from a pytest-benchmark JSON document already in memory (path names it in messages)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
        raise BenchmarkFileError("not a pytest-benchmark save (no 'benchmarks' list)", path=path)
    benchmarks = {}
    for i, b in enumerate(doc["benchmarks"]):
        if not isinstance(b, dict) or not isinstance(b.get("stats"), dict):
            raise BenchmarkFileError(f"benchmark #{i} has no 'stats' object", path=path,
                                     sample=str(b.get("fullname")) if isinstance(b, dict) else None)
        key = b.get("fullname") or b.get("name")
        if not key:
            raise BenchmarkFileError(f"benchmark #{i} has no name", path=path)
        benchmarks[key] = b
    return Save(str(path), doc.get("machine_info") or {}, benchmarks, str(doc.get("datetime", "")),
                doc.get("ppbench") if isinstance(doc.get("ppbench"), dict) else {})


# Run settings that change what a time means; saves without a ppbench meta are not checked.
SETTING_KEYS = ("profile", "quant", "dtype", "decode_impl", "max_new_tokens", "overlap", "drafter_process")


def settings_note(base: Save, new: Save) -> str:
    if not base.meta or not new.meta:
        return ""
    # saves from before these settings existed ran transformers-eager decode, drafting through the
    # whole window, with the drafter in a thread
    defaults = {"decode_impl": "hf", "overlap": "always", "drafter_process": False}

    def get(meta, k):
        return meta.get(k, defaults.get(k))
    differ = [f"{k} {get(base.meta, k)!r} -> {get(new.meta, k)!r}" for k in SETTING_KEYS
              if get(base.meta, k) != get(new.meta, k)]
    return ("runs differ in settings (" + ", ".join(differ) + "): a change is expected; read it as the "
            "effect of that setting, not as drift") if differ else ""


def find_saves(storage) -> list[Path]:
    """All saves under a storage dir, oldest first (by the save's own datetime, then file name)."""
    storage = Path(storage)
    if not storage.is_dir():
        raise CompareError(f"benchmark storage {storage} is not a directory")

    def key(p: Path):
        try:
            stamp = str(json.loads(p.read_text()).get("datetime", ""))
        except (OSError, ValueError):
            stamp = ""
        return (stamp, p.name)

    return sorted(storage.rglob("*.json"), key=key)


def latest_two(storage) -> tuple[Path, Path]:
    saves = find_saves(storage)
    if len(saves) < 2:
        raise CompareError(f"need two saves under {storage}, found {len(saves)} "
                           "(run pytest with --benchmark-autosave twice)")
    return saves[-2], saves[-1]


def resolve_run(spec: str, storage) -> Path:
    """A file path, or a save id / prefix like "0003" looked up under storage."""
    p = Path(spec)
    if p.is_file():
        return p
    hits = [s for s in find_saves(storage) if s.name.startswith(spec)] if Path(storage).is_dir() else []
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise CompareError(f"save id {spec!r} is ambiguous under {storage}: "
                           + ", ".join(str(h) for h in hits[:5]))
    raise CompareError(f"no saved benchmark {spec!r} (not a file, not a save id under {storage})")


def load_thresholds(path) -> tuple[dict, list | None, list | None]:
    """Thresholds file: {"glob": threshold, ...} or
    {"thresholds": {...}, "higher_is_better": [globs], "lower_is_better": [globs]}."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CompareError(f"cannot read thresholds file {path}: {e}") from None
    if not isinstance(doc, dict):
        raise CompareError(f"thresholds file {path} must hold a JSON object")
    structured = {"thresholds", "higher_is_better", "lower_is_better"} & doc.keys()
    table = doc.get("thresholds", {}) if structured else doc
    for pattern, value in table.items():
        if "[" in pattern.replace("[[]", ""):
            # fnmatch reads [...] as a character class: "*test_stage[load-*]" matches nothing
            raise CompareError(f"thresholds file {path}: pattern {pattern!r} has a '[' character class; "
                               f"write a literal '[' as '[[]' (e.g. '*test_stage[[]load-*')")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 10:
            raise CompareError(f"thresholds file {path}: {pattern!r} must map to a relative "
                               f"threshold like 0.05, got {value!r}")
    return table, doc.get("higher_is_better"), doc.get("lower_is_better")


# ---------------------------------------------------------------- deriving thresholds

def benchmark_family(name: str) -> str:
    """'tests/t.py::test_stage[prefill-4s-target]' -> 'test_stage[prefill-';
    'tests/t.py::test_decode_token[4s-target]' -> 'test_decode_token['; 'test_x' -> 'test_x'."""
    test = name.split("::")[-1]
    fn, bracket, params = test.partition("[")
    if not bracket:
        return fn
    first = params.split("-")[0]
    return f"{fn}[{first}-" if fn == "test_stage" else f"{fn}["


def derive_thresholds(saves: list, *, factor: float = 3.0, floor: float = DEFAULT_THRESHOLD,
                      step: float = 0.05) -> dict:
    """A thresholds file from the spread of raw rounds in saved run(s): per benchmark family, the
    median over its benchmarks of IQR / median, times `factor`, rounded up to `step`, at least
    `floor`. A family whose runs spread 40% cannot be gated at 5% without false alarms, and one
    that spreads 0.5% does not need more than the floor.

    Why factor 3: with 5 rounds a side, Mann-Whitney reaches p < 0.01 only when the two runs do
    not overlap at all, which two runs of one lognormal distribution do 0.4% of the time; given
    that, their median ratio exceeds 1 + 1.5 s about half the time, but 1 + 3 s only 1-14% of
    the time (s = the IQR/median this function measures, sigma 0.05-0.4; simulated). So about
    0.02-0.05% false alarms per benchmark, a few % per night over ~100 benchmarks."""
    spreads: dict[str, list[float]] = {}
    for save in saves:
        for name, bench in save.benchmarks.items():
            data = bench["stats"].get("data") or []
            med = float(np.median(data)) if len(data) >= 4 else 0.0
            if med > 0:
                q1, q3 = np.percentile(data, [25, 75])
                spreads.setdefault(benchmark_family(name), []).append(float((q3 - q1) / med))
    if not spreads:
        raise CompareError("no benchmark with >= 4 raw rounds in these saves (save with --benchmark-save-data)")
    table, measured = {"*": floor}, {}
    for family, values in sorted(spreads.items()):
        spread = float(np.median(values))
        measured[family] = round(spread, 4)
        table["*::" + family.replace("[", "[[]") + "*"] = max(floor, math.ceil(factor * spread / step - 1e-9) * step)
    return {"why": (f"derived by `ppbench bounds thresholds` from {', '.join(s.path for s in saves)}: per benchmark "
                    f"family, the median IQR/median of its raw rounds x {factor}, rounded up to {step}, at least "
                    f"{floor}. Patterns are fnmatch globs; a literal [ is written [[]."),
            "spread_iqr_over_median": measured,
            "thresholds": {k: round(v, 4) for k, v in table.items()}}


# ---------------------------------------------------------------- machines

def machine_identity(machine_info: dict) -> tuple[str, str]:
    """("gpu", name) when the save records a GPU, else ("cpu", brand).

    Our plugin's hook writes machine_info["gpu"] = {"name", "driver", "cuda", ...}; a flat
    "gpu_name" is accepted too so saves from other tools still compare."""
    gpu = machine_info.get("gpu")
    name = gpu.get("name") if isinstance(gpu, dict) else gpu if isinstance(gpu, str) else None
    name = name or machine_info.get("gpu_name")
    if name:
        return "gpu", str(name)
    cpu = machine_info.get("cpu") or {}
    brand = cpu.get("brand_raw") or cpu.get("brand") if isinstance(cpu, dict) else None
    return "cpu", str(brand or machine_info.get("processor") or machine_info.get("machine") or "unknown")


def check_machines(base: Save, new: Save, allow_different: bool = False) -> str:
    """"" when the machines match; a note when they differ and that is allowed; else raises."""
    a, b = machine_identity(base.machine_info), machine_identity(new.machine_info)
    if a == b:
        return ""
    msg = f"different machines: BASE {a[0]} {a[1]!r} ({base.path}) vs NEW {b[0]} {b[1]!r} ({new.path})"
    if not allow_different:
        raise MachineMismatchError(msg + "; timings are not comparable "
                                   "(pass --allow-different-machines to compare anyway)")
    return msg


# ---------------------------------------------------------------- statistics

def threshold_for(name: str, thresholds: dict | None, default: float = DEFAULT_THRESHOLD) -> float:
    """Exact name first, then the most specific (longest) matching glob, else default."""
    thresholds = thresholds or {}
    if name in thresholds:
        return float(thresholds[name])
    hits = [p for p in thresholds if fnmatch.fnmatchcase(name, p)]
    return float(thresholds[max(hits, key=len)]) if hits else default


def direction(name: str, higher: list | None = None, lower: list | None = None) -> str | None:
    """"higher" / "lower" (is better) or None when unknown."""
    if any(fnmatch.fnmatchcase(name, p) for p in (HIGHER_IS_BETTER if higher is None else higher)):
        return "higher"
    if any(fnmatch.fnmatchcase(name, p) for p in (LOWER_IS_BETTER if lower is None else lower)):
        return "lower"
    return None


def _ratio(base: float, new: float) -> float:
    if base == 0:
        return 1.0 if new == 0 else math.copysign(math.inf, new)
    return new / base


def _resampled_medians(x: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    # The stream is keyed by the data itself, so a run's resamples do not depend on whether it is
    # BASE or NEW: comparing B to A mirrors A to B exactly.
    rng = np.random.default_rng([seed, zlib.crc32(x.tobytes())])
    return np.median(x[rng.integers(0, x.size, (n_boot, x.size))], axis=1)


def bootstrap_median_ratio_ci(base, new, *, level: float = 0.99, n_boot: int = N_BOOT,
                              seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of median(new) / median(base), resampling each side independently."""
    base, new = np.asarray(base, float), np.asarray(new, float)
    mb, mn = _resampled_medians(base, n_boot, seed), _resampled_medians(new, n_boot, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(mb == 0, np.where(mn == 0, 1.0, np.inf), mn / np.where(mb == 0, 1, mb))
    tail = (1 - level) / 2 * 100
    # nearest rank keeps the CI of 1/ratio exactly the inverse of this one (no interpolation)
    lo, hi = np.percentile(ratios, [tail, 100 - tail], method="nearest")
    return float(lo), float(hi)


def _verdict(ratio, p, ci, threshold, alpha, better: str | None) -> str:
    """Moves up or down count only when big enough and, if tested, significant. The threshold is
    symmetric in log space (asv's rule): down means ratio < 1 / (1 + threshold), so swapping BASE
    and NEW turns "regressed" into "improved" exactly."""
    tested = p is not None
    up = ratio > 1 + threshold and (not tested or (p < alpha and ci[0] > 1))
    down = ratio * (1 + threshold) < 1 and (not tested or (p < alpha and ci[1] < 1))
    if better is None:
        return "info"
    if up:
        return "improved" if better == "higher" else "regressed"
    if down:
        return "regressed" if better == "higher" else "improved"
    return "unchanged"


def compare_samples(name, base, new, *, threshold=DEFAULT_THRESHOLD, alpha=DEFAULT_ALPHA,
                    better: str | None = "lower", kind="time", seed=0) -> Comparison:
    """The gate on raw samples (timing rounds, or per-sample metric values)."""
    base = np.asarray(base, float)
    new = np.asarray(new, float)
    base, new = base[np.isfinite(base)], new[np.isfinite(new)]
    row = Comparison(name, kind, None, None, None, None, None, "insufficient data", threshold,
                     "rounds", base.size, new.size)
    if base.size:
        row.base = float(np.median(base))
    if new.size:
        row.new = float(np.median(new))
    if base.size < MIN_ROUNDS or new.size < MIN_ROUNDS:
        row.note = f"need >= {MIN_ROUNDS} rounds each, have {base.size} / {new.size}"
        return row
    row.ratio = _ratio(row.base, row.new)
    p = sps.mannwhitneyu(new, base, alternative="two-sided").pvalue
    row.p_value = 1.0 if not np.isfinite(p) else float(p)   # all-tied samples give nan
    row.ci = bootstrap_median_ratio_ci(base, new, level=1 - alpha, seed=seed)
    row.verdict = _verdict(row.ratio, row.p_value, row.ci, threshold, alpha, better)
    return row


def compare_summary(name, base_stats: dict, new_stats: dict, *, threshold=DEFAULT_THRESHOLD,
                    alpha=DEFAULT_ALPHA, better: str | None = "lower", kind="time") -> Comparison:
    """Fallback without raw rounds: Welch t-test on mean/stddev and a delta-method CI of the ratio
    (normal assumptions, hence weaker). The ratio itself is still of medians."""
    nb, nn = int(base_stats.get("rounds", 0)), int(new_stats.get("rounds", 0))
    row = Comparison(name, kind, base_stats.get("median"), new_stats.get("median"), None, None,
                     None, "insufficient data", threshold, "summary", nb, nn,
                     note="summary stats only (no --benchmark-save-data): weaker test")
    if nb < MIN_ROUNDS or nn < MIN_ROUNDS or row.base is None or row.new is None:
        row.note = f"need >= {MIN_ROUNDS} rounds each, have {nb} / {nn}"
        return row
    mb, sb, mn, sn = (float(base_stats["mean"]), float(base_stats.get("stddev", 0.0)),
                      float(new_stats["mean"]), float(new_stats.get("stddev", 0.0)))
    row.ratio = _ratio(row.base, row.new)
    if sb == 0 and sn == 0:
        row.p_value = 1.0 if mb == mn else 0.0
    else:
        row.p_value = float(sps.ttest_ind_from_stats(mn, sn, nn, mb, sb, nb, equal_var=False).pvalue)
    if mb > 0 and mn > 0:
        se = math.sqrt((sb / mb) ** 2 / nb + (sn / mn) ** 2 / nn)
        z = float(sps.norm.ppf(1 - alpha / 2))
        row.ci = (row.ratio * math.exp(-z * se), row.ratio * math.exp(z * se))
    else:
        row.ci = (row.ratio, row.ratio)
    row.verdict = _verdict(row.ratio, row.p_value, row.ci, threshold, alpha, better)
    return row


def compare_value(name, base: float, new: float, *, threshold=DEFAULT_THRESHOLD,
                  better: str | None) -> Comparison:
    """A single number per run (e.g. acceptance rate over the whole run): threshold only."""
    ratio = _ratio(float(base), float(new))
    return Comparison(name, "metric", float(base), float(new), ratio, None, None,
                      _verdict(ratio, None, None, threshold, 0.0, better), threshold, "value", 1, 1)


# ---------------------------------------------------------------- two saves

def _numbers(extra: dict, prefix: str = "") -> dict:
    """Flatten extra_info to {dotted.key: float | [floats]}; anything non-numeric is skipped."""
    out = {}
    for k, v in extra.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_numbers(v, key + "."))
        elif isinstance(v, bool):
            continue
        elif isinstance(v, (int, float)):
            out[key] = float(v)
        elif isinstance(v, list) and v and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                               for x in v):
            out[key] = [float(x) for x in v]
    return out


def _compare_benchmark(key, b, n, *, thresholds, default, alpha, higher, lower, seed):
    name = b.get("fullname") or key
    thr = threshold_for(name, thresholds, default)
    bs, ns = b["stats"], n["stats"]
    if "data" in bs and "data" in ns:
        rows = [compare_samples(name, bs["data"], ns["data"], threshold=thr, alpha=alpha, seed=seed)]
    else:
        rows = [compare_summary(name, bs, ns, threshold=thr, alpha=alpha)]
    base_x, new_x = _numbers(b.get("extra_info") or {}), _numbers(n.get("extra_info") or {})
    for k in sorted(base_x.keys() & new_x.keys()):
        mname = f"{name} :: {k}"
        mthr = threshold_for(mname, thresholds, default)
        better = direction(k, higher, lower)
        bv, nv = base_x[k], new_x[k]
        if isinstance(bv, list) and isinstance(nv, list):
            rows.append(compare_samples(mname, bv, nv, threshold=mthr, alpha=alpha, better=better,
                                        kind="metric", seed=seed))
        else:
            agg = lambda v: float(np.median(v)) if isinstance(v, list) else v  # noqa: E731
            rows.append(compare_value(mname, agg(bv), agg(nv), threshold=mthr, better=better))
    return rows


def compare_saves(base: Save, new: Save, *, threshold=DEFAULT_THRESHOLD, thresholds=None,
                  alpha=DEFAULT_ALPHA, allow_different_machines=False, higher_is_better=None,
                  lower_is_better=None, seed=0) -> Report:
    """Compare every benchmark present in both saves. Raises MachineMismatchError."""
    note = check_machines(base, new, allow_different_machines)
    report = Report(base.path, new.path, [], machine_note=note)
    report.only_base = sorted(base.benchmarks.keys() - new.benchmarks.keys())
    report.only_new = sorted(new.benchmarks.keys() - base.benchmarks.keys())
    for key in sorted(base.benchmarks.keys() & new.benchmarks.keys()):
        report.results += _compare_benchmark(
            key, base.benchmarks[key], new.benchmarks[key], thresholds=thresholds, default=threshold,
            alpha=alpha, higher=higher_is_better, lower=lower_is_better, seed=seed)
    note = settings_note(base, new)
    if note:
        report.warnings.append(note)
    weak = [r.name for r in report.results if r.method == "summary"]
    if weak:
        report.warnings.append(
            f"{len(weak)} benchmark(s) compared on summary stats only (saves lack raw rounds; "
            "run with --benchmark-save-data): Welch t-test + normal CI, a weaker test")
    return report


# ---------------------------------------------------------------- output

def _fmt_time(s: float | None) -> str:
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if abs(s) >= scale:
            return f"{s / scale:.4g} {unit}"
    return f"{s / 1e-9:.4g} ns"


def _fmt_num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def format_table(report: Report) -> str:
    head = ["name", "base median", "new median", "ratio", "p-value", "CI", "verdict"]
    rows = []
    for r in report.results:
        fmt = _fmt_time if r.kind == "time" else _fmt_num
        verdict = r.verdict + (" (summary stats)" if r.method == "summary" else "")
        if report.machine_note and r.kind == "time":
            verdict += " [different machines]"
        rows.append([r.name, fmt(r.base), fmt(r.new), _fmt_num(r.ratio),
                     "-" if r.p_value is None else f"{r.p_value:.2g}",
                     "-" if r.ci is None else f"[{r.ci[0]:.3f}, {r.ci[1]:.3f}]", verdict])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    line = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(head), "-+-".join("-" * w for w in widths)] + [line(row) for row in rows]
    return "\n".join(out)


def summary_line(report: Report) -> str:
    parts = [f"{len(report.results)} compared", f"{report.count('regressed')} regressed",
             f"{report.count('improved')} improved", f"{report.count('unchanged')} unchanged",
             f"{report.count('insufficient data')} insufficient data"]
    if report.count("info"):
        parts.append(f"{report.count('info')} info")
    if report.only_base:
        parts.append(f"{len(report.only_base)} only in BASE")
    if report.only_new:
        parts.append(f"{len(report.only_new)} only in NEW")
    status = "REGRESSION" if report.regressed else "OK"
    return f"{status}: " + ", ".join(parts)


def report_json(report: Report) -> dict:
    return {"base": report.base_path, "new": report.new_path, "machine_note": report.machine_note,
            "warnings": report.warnings, "only_base": report.only_base, "only_new": report.only_new,
            "summary": summary_line(report), "regressed": report.regressed,
            "results": [asdict(r) for r in report.results]}


# ---------------------------------------------------------------- CLI

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ppbench compare", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", metavar="RUN",
                   help="BASE NEW (files or save ids); one storage dir, or none, = its latest two")
    p.add_argument("--storage", default=".benchmarks", help="pytest-benchmark storage dir")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="relative change that counts (default %(default)s)")
    p.add_argument("--thresholds", metavar="FILE", help='JSON {"glob": threshold} overrides')
    p.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                   help="significance level; CI level is 1 - alpha (default %(default)s)")
    p.add_argument("--allow-different-machines", action="store_true")
    p.add_argument("--json", metavar="OUT", help="also write the comparison as JSON here")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return p


def _pick_runs(runs: list[str], storage: str) -> tuple[Path, Path]:
    if len(runs) > 2:
        raise CompareError(f"expected BASE NEW, got {len(runs)} runs")
    if len(runs) == 2:
        return resolve_run(runs[0], storage), resolve_run(runs[1], storage)
    if len(runs) == 1 and not Path(runs[0]).is_dir():
        raise CompareError(f"one run given ({runs[0]}): give BASE NEW, or a storage directory")
    return latest_two(runs[0] if runs else storage)


def main_compare(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:            # argparse exits 2 on bad usage, 0 on --help
        return int(e.code or 0)
    try:
        if not 0 < args.alpha < 1 or args.threshold < 0:
            raise CompareError("--alpha must be in (0, 1) and --threshold >= 0")
        thresholds, higher, lower = load_thresholds(args.thresholds) if args.thresholds else ({}, None, None)
        base_path, new_path = _pick_runs(args.runs, args.storage)
        report = compare_saves(load_save(base_path), load_save(new_path), threshold=args.threshold,
                               thresholds=thresholds, alpha=args.alpha,
                               allow_different_machines=args.allow_different_machines,
                               higher_is_better=higher, lower_is_better=lower, seed=args.seed)
    except PpbenchError as e:
        print(f"ppbench compare: error: {e}", file=sys.stderr)
        return 2
    print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report_json(report), indent=2))
    return 1 if report.regressed else 0


def gate(base: str, new_doc: dict, thresholds_path=None, storage=".benchmarks",
         new_name="this session") -> Report:
    """The pytest gate: this session's benchmark JSON (in memory) against a saved run (a file or a
    save id under storage), with the thresholds file if given, else the flat default. Raises
    PpbenchError on bad input."""
    thresholds, higher, lower = load_thresholds(thresholds_path) if thresholds_path else ({}, None, None)
    return compare_saves(load_save(resolve_run(base, storage)), save_from_doc(new_doc, new_name),
                         thresholds=thresholds,
                         higher_is_better=higher, lower_is_better=lower)


def print_report(report: Report) -> None:
    print(f"BASE {report.base_path}\nNEW  {report.new_path}")
    if report.machine_note:
        print(f"WARNING: {report.machine_note}")
    for w in report.warnings:
        print(f"WARNING: {w}", file=sys.stderr)
    print(format_table(report))
    for name in report.only_base:
        print(f"only in BASE: {name}")
    for name in report.only_new:
        print(f"only in NEW:  {name}")
    print(summary_line(report))


if __name__ == "__main__":
    sys.exit(main_compare())
