"""Pure functions from records (docs/DESIGN.md) to tables. No I/O; report.py renders these.

Definitions (the report's methodology section restates them):
- "to prefill end" = load + preprocess + vision + prefill, i.e. stages 1-4 summed: the time at which
  a model that starts at t=0 has its KV cache and the logits for token 1.
- overlap window (per sample) = target to-prefill-end - drafter to-prefill-end, both models started
  together. Signed; negative means the drafter finishes prefill after the target.
- hidden capacity = the largest n with sum(drafter decode_token_ms[:n]) <= window (0 if window <= 0):
  how many drafter tokens fit in a window at measured per-token times (hidden_capacity). The report's
  pairs table takes it from the stage runs; hidden fill takes it from the engine run itself.
- hidden drafted = the engine run's drafter tokens finished inside its own window (engine records'
  hidden_drafted, counted by the engine); never a capacity.
- hidden fill = sum(hidden drafted) / sum(hidden capacity of the same engine run), pooled over the
  samples of a group that have a capacity (hidden_fill); records older than the hidden_block field
  counted the in-flight token as hidden, so their fill is not comparable (NaN, flagged).
- TTFT (vLLM: request start to first output token). Token 1 is selected from the prefill logits
  and decode_token_ms[0] is that selection's time (engine.greedy_decode), so
  TTFT = stages 1-4 + decode_token_ms[0].
- TPOT (vLLM: mean time per output token after the first) = mean(decode_token_ms[1:]).
- speedup = mean target total / mean drafter total over paired samples (ratio of means). Engine
  speedup vs target-only is paired by sample: mean target-only e2e / mean e2e over the samples where
  both completed (speedup). Efficiency = ideal e2e / measured e2e (efficiency).
- speedup after the host stages (parallel runs) = the same paired ratio over e2e minus the end of
  the run's own target host stages (load + preprocess, timeline target_stage_end_ms): the engine's
  speedup with the target's host-stage time, where run-to-run noise lives, taken out of both
  sides. It still counts what the drafter costs the target's GPU stages and decode; it hides what
  the drafter's host stages cost the target's (the whole-e2e speedup counts that). Not defined for
  sequential runs, whose target starts after the drafter's whole run.
- acceptance (engine records, vLLM definitions): rate = accepted / drafted, mean acceptance length =
  1 + accepted / verify_steps, pooled over the records of a group (pooled_acceptance).
- a datasets row: every timing is a mean over the paired samples (both models' stage records
  succeeded), TTFT and TPOT too; Samples / Failed count every sample.
- acceptance structure (engine records' accept_blocks, one [drafted n, accepted L] per verify block,
  the hidden block first): acceptance stops at the first mismatch, so a block's accepted length L is
  a run length. alpha_iid = accepted / (accepted + rejected blocks) is the maximum-likelihood
  per-token acceptance of an i.i.d. model; that model gives P(L = k) = a^k (1 - a) for k < n and
  a^n for k = n. Implied speedup (a MODEL, labelled so) = sum(1 + L) / sum(c * n + 1): tokens per
  block over block cost in target decode steps, a verify costing one step and a draft step c =
  drafter TPOT / target TPOT (stage records); c = 0 for the hidden block, drafted while the target
  prefills. The same formula over the i.i.d. expectation gives the i.i.d. model's speedup.
- seed formulas: kept as labelled *models* of wall clock, never shown as measurements.
"""
from __future__ import annotations

import math
import re
import statistics as st
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .errors import DataError
from .records import record_key

STAGES = ("load", "preprocess", "vision", "prefill", "decode")
PREFIX_STAGES = STAGES[:4]
PERCENTILES = (50, 90, 99)
MODELS = ("drafter", "target")


# -- per-sample scalar definitions -----------------------------------------------------------------
def to_prefill_end(stages_ms: dict) -> float:
    return float(sum(stages_ms[s] for s in PREFIX_STAGES))


def total_ms(stages_ms: dict) -> float:
    return float(sum(stages_ms[s] for s in STAGES))


def overlap_window(drafter_to_prefill_end: float, target_to_prefill_end: float) -> float:
    """Signed: target to-prefill-end minus drafter to-prefill-end (both started together)."""
    return float(target_to_prefill_end) - float(drafter_to_prefill_end)


def hidden_capacity(decode_token_ms: Sequence[float], window_ms: float) -> int:
    """Drafter tokens whose cumulative measured decode time fits in the window."""
    if not window_ms > 0 or len(decode_token_ms) == 0:
        return 0
    cum = np.cumsum(np.asarray(decode_token_ms, dtype=float))
    return int(np.searchsorted(cum, window_ms, side="right"))


def engine_hidden_capacity(record: dict) -> int | None:
    """Hidden capacity of one parallel engine run from that run alone: its window, token 1 at its
    measured time after the drafter's prefill end, then the run's own hidden steps (the tokens of
    its hidden block), continued at their mean step time past the block's end. None when the run
    has no measured hidden step to continue from (a block of one token inside the window), or when
    the record predates the hidden_block field (see hidden_fill)."""
    block, window = record.get("hidden_block"), record.get("window_ms")
    tl = record.get("timeline") or {}
    times = list(tl.get("draft_token_ms") or [])[:block or 0]
    ready = (tl.get("drafter_stage_end_ms") or {}).get("prefill")
    if block is None or window is None or ready is None or not times:
        return None
    per_token = [times[0] - ready] + [b - a for a, b in zip(times, times[1:])]
    if sum(per_token) <= window:            # the block ended inside the window: continue it
        if len(per_token) < 2:
            return None
        step = float(np.mean(per_token[1:]))
        if step <= 0:
            return None
        per_token += [step] * (int((window - sum(per_token)) // step) + 1)
    return hidden_capacity(per_token, window)


def hidden_fill(drafted: Sequence[float], capacity: Sequence, comparable: Sequence[bool]) -> float:
    """Pooled hidden fill: sum(drafted) / sum(capacity) over the entries whose capacity (of the same
    engine run: engine_hidden_capacity) is > 0. NaN when none has one, and when any entry is not
    comparable (a record older than the hidden_block field counted the in-flight token as hidden)."""
    if not all(comparable):
        return math.nan
    use = [(d, c) for d, c in zip(drafted, capacity) if c is not None and c == c and c > 0]
    return _ratio(float(sum(d for d, _ in use)), float(sum(c for _, c in use))) if use else math.nan


def pooled_acceptance(records: Iterable[dict]) -> tuple[float, float]:
    """(accepted / drafted, 1 + accepted / verify_steps) pooled over engine records; NaN if none."""
    rs = list(records)
    drafted = sum(float(r.get("drafted") or 0) for r in rs)
    accepted = sum(float(r.get("accepted") or 0) for r in rs)
    steps = sum(float(r.get("verify_steps") or 0) for r in rs)
    return (accepted / drafted if drafted else math.nan,
            1 + accepted / steps if steps else math.nan)


def speedup(reference_ms: Sequence[float], measured_ms: Sequence[float]) -> float:
    """Paired by sample: mean reference time / mean measured time, the two sequences over the same
    samples in the same order (the caller pairs them); NaN when empty."""
    if len(reference_ms) != len(measured_ms):
        raise ValueError("speedup needs the same samples on both sides")
    if not len(measured_ms):
        return math.nan
    return _ratio(float(np.mean(reference_ms)), float(np.mean(measured_ms)))


def efficiency(ideal_ms: float, measured_ms: float) -> float:
    """Fraction of the ideal achieved: ideal e2e / measured e2e."""
    return _ratio(ideal_ms, measured_ms)


def ttft_ms(stages_ms: dict, decode_token_ms: Sequence[float]) -> float:
    if len(decode_token_ms) == 0:
        return math.nan
    return to_prefill_end(stages_ms) + float(decode_token_ms[0])


def tpot_ms(decode_token_ms: Sequence[float]) -> float:
    rest = decode_token_ms[1:]
    return float(np.mean(rest)) if len(rest) else math.nan


def seed_parallel_model(d_prefix: float, t_prefix: float, d_decode: float, t_decode: float,
                        window: float) -> float:
    """MODEL (the seed system's formula, not a measurement):
    max(EGPT_prefill, VL_prefill) + max(EGPT_decode - overlap, VL_decode)."""
    return max(d_prefix, t_prefix) + max(d_decode - max(window, 0.0), t_decode)


def seed_sequential_model(d_total: float, t_total: float) -> float:
    """MODEL (the seed system's formula, not a measurement): EGPT_total + VL_total."""
    return d_total + t_total


def summarize(values: Iterable[float]) -> dict:
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return {"count": 0, "mean": math.nan, **{f"p{p}": math.nan for p in PERCENTILES}}
    return {"count": int(v.size), "mean": float(v.mean()),
            **{f"p{p}": float(np.percentile(v, p)) for p in PERCENTILES}}


def duration_sort_key(label: str) -> tuple:
    """'500ms' < '1s' < '20s'; unknown labels sort after, alphabetically."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ms|s|min)\s*", str(label))
    if not m:
        return (1, math.inf, str(label))
    scale = {"ms": 1.0, "s": 1e3, "min": 6e4}[m.group(2)]
    return (0, float(m.group(1)) * scale, str(label))


def duration_ms(label: str) -> float:
    return duration_sort_key(label)[1]


def sort_datasets(labels: Iterable[str]) -> list[str]:
    return sorted(set(labels), key=duration_sort_key)


# -- record validation and frames ------------------------------------------------------------------
RECORD_KINDS = ("stages", "engine", "verify_cost")


def _check(r: dict, i: int) -> None:
    sample = r.get("sample_id") if isinstance(r, dict) else None
    if not isinstance(r, dict) or r.get("kind") not in RECORD_KINDS:
        raise DataError(f"record {i} has no known kind (expected one of {', '.join(RECORD_KINDS)})",
                        sample=sample)
    need = ["dataset", "sample_id"] + {"stages": ["model", "stages_ms"], "engine": ["mode", "e2e_ms"],
                                       "verify_cost": ["model", "quant", "curve_ms"]}[r["kind"]]
    missing = [k for k in need if k not in r]
    if missing:
        raise DataError(f"record {i} ({r['kind']}) lacks {missing}", sample=sample)
    if r["kind"] == "stages":
        if r["model"] not in MODELS:
            raise DataError(f"record {i}: unknown model {r['model']!r}", sample=sample)
        if r.get("error") is None:
            absent = [s for s in STAGES if not isinstance(r["stages_ms"].get(s), (int, float))]
            if absent:
                raise DataError(f"record {i}: successful record lacks stage times {absent}",
                                sample=sample)
            times = [*r["stages_ms"].values(), *(r.get("decode_token_ms") or [])]
            if any(not isinstance(t, (int, float)) or t < 0 or t != t for t in times):
                raise DataError(f"record {i}: stage or token time is negative or not a number",
                                sample=sample)


def dedupe(records: Iterable[dict]) -> list[dict]:
    """Validates, then keeps the last record per measurement key (a resumed run may re-append)."""
    out: dict[tuple, dict] = {}
    for i, r in enumerate(records):
        _check(r, i)
        out[record_key(r)] = r
    return list(out.values())


STAGE_COLUMNS = ["run_id", "dataset", "sample_id", "model", "profile", "device", "dtype", "quant",
                 "ok", "n_prompt_tokens", "n_visual_tokens", "n_output_tokens", "peak_mem_bytes",
                 "error_stage", "error_type", "error_message", *[f"{s}_ms" for s in STAGES],
                 "to_prefill_end_ms", "total_ms", "ttft_ms", "tpot_ms", "decode_token_ms"]


def stage_frame(records: Iterable[dict]) -> pd.DataFrame:
    """One row per stage record; timing columns are NaN for failed records."""
    rows = []
    for r in records:
        if r.get("kind") != "stages":
            continue
        err = r.get("error")
        ok = err is None
        st = r.get("stages_ms") or {}
        tok = list(r.get("decode_token_ms") or [])
        row = {"run_id": r.get("run_id"), "dataset": r["dataset"], "sample_id": r["sample_id"],
               "model": r["model"], "profile": r.get("profile"), "device": r.get("device"),
               "dtype": r.get("dtype"), "quant": r.get("quant"), "ok": ok,
               "n_prompt_tokens": r.get("n_prompt_tokens"),
               "n_visual_tokens": r.get("n_visual_tokens"),
               "n_output_tokens": r.get("n_output_tokens"),
               "peak_mem_bytes": r.get("peak_mem_bytes"),
               "error_stage": err.get("stage") if err else None,
               "error_type": err.get("type") if err else None,
               "error_message": err.get("message") if err else None}
        for s in STAGES:
            row[f"{s}_ms"] = float(st[s]) if ok else math.nan
        row["to_prefill_end_ms"] = to_prefill_end(st) if ok else math.nan
        row["total_ms"] = total_ms(st) if ok else math.nan
        row["ttft_ms"] = ttft_ms(st, tok) if ok else math.nan
        row["tpot_ms"] = tpot_ms(tok) if ok else math.nan
        row["decode_token_ms"] = tok
        rows.append(row)
    df = pd.DataFrame(rows, columns=STAGE_COLUMNS)
    return df.astype({"ok": bool})  # an empty frame's object dtype would select columns, not rows


def pair_frame(stages: pd.DataFrame) -> pd.DataFrame:
    """One row per sample whose drafter and target records both succeeded."""
    ok = stages[stages["ok"]]
    d = ok[ok["model"] == "drafter"].set_index(["dataset", "sample_id"])
    t = ok[ok["model"] == "target"].set_index(["dataset", "sample_id"])
    both = d.index.intersection(t.index)
    rows = []
    for key in both:
        dr, tr = d.loc[key], t.loc[key]
        window = overlap_window(dr["to_prefill_end_ms"], tr["to_prefill_end_ms"])
        rows.append({
            "dataset": key[0], "sample_id": key[1],
            "drafter_total_ms": dr["total_ms"], "target_total_ms": tr["total_ms"],
            "drafter_to_prefill_end_ms": dr["to_prefill_end_ms"],
            "target_to_prefill_end_ms": tr["to_prefill_end_ms"],
            "drafter_prefill_ms": dr["prefill_ms"], "target_prefill_ms": tr["prefill_ms"],
            "drafter_decode_ms": dr["decode_ms"], "target_decode_ms": tr["decode_ms"],
            "window_ms": window, "window_clipped_ms": max(window, 0.0),
            "hidden_capacity": hidden_capacity(dr["decode_token_ms"], window),
            "drafter_n_output_tokens": dr["n_output_tokens"],
            "model_parallel_ms": seed_parallel_model(dr["to_prefill_end_ms"],
                                                     tr["to_prefill_end_ms"], dr["decode_ms"],
                                                     tr["decode_ms"], window),
            "model_sequential_ms": seed_sequential_model(dr["total_ms"], tr["total_ms"]),
        })
    cols = ["dataset", "sample_id", "drafter_total_ms", "target_total_ms", "window_ms",
            "window_clipped_ms", "hidden_capacity"]
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=cols)


def samples_table(stages: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per sample x model (samples.csv): stage times, totals, window, hidden capacity, error.
    window/hidden capacity are per-sample values, repeated on both models' rows; empty when unpaired."""
    base = stages.drop(columns=["decode_token_ms"], errors="ignore")
    if len(pairs):
        base = base.merge(pairs[["dataset", "sample_id", "window_ms", "hidden_capacity"]],
                          on=["dataset", "sample_id"], how="left")
    else:
        base = base.assign(window_ms=math.nan, hidden_capacity=math.nan)
    base["paired"] = base["window_ms"].notna()
    order = {d: i for i, d in enumerate(sort_datasets(base["dataset"]))} if len(base) else {}
    base = base.assign(_o=base["dataset"].map(order)).sort_values(["_o", "sample_id", "model"])
    return base.drop(columns="_o").reset_index(drop=True)


# -- tables ----------------------------------------------------------------------------------------
def stage_summary(stages: pd.DataFrame) -> pd.DataFrame:
    """dataset x model x stage: count/mean/p50/p90/p99 over successful records. "to_prefill_end"
    (stages 1-4) and "total" (all five) are included as pseudo-stages."""
    ok = stages[stages["ok"]]
    rows = []
    for (ds, model), g in ok.groupby(["dataset", "model"]):
        for s in (*STAGES, "to_prefill_end", "total", "ttft", "tpot"):
            rows.append({"dataset": ds, "model": model, "stage": s, **summarize(g[f"{s}_ms"])})
    return _sorted(pd.DataFrame(rows, columns=["dataset", "model", "stage", "count", "mean",
                                              *[f"p{p}" for p in PERCENTILES]]))


def overall_stage_means(stages: pd.DataFrame) -> pd.DataFrame:
    """model x stage over every dataset: the 5-stage breakdown (mean/p50/p90)."""
    ok = stages[stages["ok"]]
    rows = []
    for model, g in ok.groupby("model"):
        for s in (*STAGES, "to_prefill_end", "total"):
            rows.append({"model": model, "stage": s, **summarize(g[f"{s}_ms"])})
    return pd.DataFrame(rows, columns=["model", "stage", "count", "mean",
                                       *[f"p{p}" for p in PERCENTILES]])


def stage_comparison(overall: pd.DataFrame) -> pd.DataFrame:
    """Per stage: which model is faster on the mean, and by what ratio (slower / faster)."""
    rows = []
    for s in (*STAGES, "to_prefill_end", "total"):
        m = overall[overall["stage"] == s].set_index("model")["mean"]
        d, t = m.get("drafter", math.nan), m.get("target", math.nan)
        if math.isnan(d) or math.isnan(t):
            continue
        winner = "tie" if d == t else ("drafter" if d < t else "target")
        lo, hi = min(d, t), max(d, t)
        rows.append({"stage": s, "drafter_mean_ms": d, "target_mean_ms": t, "winner": winner,
                     "ratio": hi / lo if lo > 0 else math.inf})
    return pd.DataFrame(rows, columns=["stage", "drafter_mean_ms", "target_mean_ms", "winner",
                                       "ratio"])


UNSUPPORTED = "Unsupported"   # a baseline that cannot run with this pair: a fact, not a failure


def _unsupported(r: dict) -> bool:
    return (r.get("error") or {}).get("type") == UNSUPPORTED


def failures(records: Iterable[dict]) -> pd.DataFrame:
    """dataset x kind x who (model or engine mode) x failed stage x error type: record counts."""
    rows = [{"dataset": r["dataset"], "kind": r["kind"],
             "who": r.get("model") if r["kind"] == "stages" else r.get("mode"),
             "stage": (r["error"] or {}).get("stage"), "type": (r["error"] or {}).get("type")}
            for r in records if r.get("error") is not None and not _unsupported(r)]
    cols = ["dataset", "kind", "who", "stage", "type"]
    if not rows:
        return pd.DataFrame(columns=[*cols, "count"])
    df = pd.DataFrame(rows).fillna("?")
    return _sorted(df.groupby(cols).size().reset_index(name="count"))


def failure_details(records: Iterable[dict]) -> pd.DataFrame:
    """One row per failed record: dataset, sample, kind, who, stage, error type, message, file."""
    cols = ["dataset", "sample_id", "kind", "who", "stage", "type", "message", "file"]
    rows = [{"dataset": r["dataset"], "sample_id": r["sample_id"], "kind": r["kind"],
             "who": r.get("model") if r["kind"] == "stages" else r.get("mode"),
             "stage": r["error"].get("stage"), "type": r["error"].get("type"),
             "message": " ".join(str(r["error"].get("message", "")).split()),
             "file": r["error"].get("path")}
            for r in records if r.get("error") is not None and not _unsupported(r)]
    return pd.DataFrame(rows, columns=cols)


def unsupported_baselines(records: Iterable[dict]) -> pd.DataFrame:
    """Engine baselines that cannot run with this model pair (mode, reason, record count)."""
    rows = [{"mode": r.get("mode"), "reason": r["error"].get("message", "")}
            for r in records if _unsupported(r)]
    if not rows:
        return pd.DataFrame(columns=["mode", "reason", "count"])
    return pd.DataFrame(rows).groupby(["mode", "reason"]).size().reset_index(name="count")


def dataset_summary(stages: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset. Samples/Failed count distinct samples among stage records (a sample is
    failed if any of its stage records has an error); every timing, TTFT and TPOT included, is a
    mean over the paired samples (both models succeeded)."""
    rows = []
    for ds in sort_datasets(stages["dataset"]):
        s = stages[stages["dataset"] == ds]
        p = pairs[pairs["dataset"] == ds] if len(pairs) else pairs
        failed = s.loc[~s["ok"], "sample_id"].nunique()
        row = {"dataset": ds, "duration_ms": duration_ms(ds), "samples": s["sample_id"].nunique(),
               "failed": int(failed), "paired": len(p)}
        if len(p):
            dm, tm = p["drafter_total_ms"].mean(), p["target_total_ms"].mean()
            dpre, tpre = p["drafter_to_prefill_end_ms"].mean(), p["target_to_prefill_end_ms"].mean()
            dllm, tllm = p["drafter_prefill_ms"].mean(), p["target_prefill_ms"].mean()
            row.update(
                drafter_total_ms=dm, target_total_ms=tm, speedup=tm / dm,
                drafter_to_prefill_end_ms=dpre, target_to_prefill_end_ms=tpre,
                prefill_speedup=tpre / dpre, llm_prefill_speedup=tllm / dllm,
                drafter_decode_ms=p["drafter_decode_ms"].mean(),
                target_decode_ms=p["target_decode_ms"].mean(),
                window_ms=p["window_ms"].mean(), window_clipped_ms=p["window_clipped_ms"].mean(),
                window_positive_frac=float((p["window_ms"] > 0).mean()),
                hidden_capacity=p["hidden_capacity"].mean(),
                drafter_n_output_tokens=p["drafter_n_output_tokens"].mean(),
                model_parallel_ms=p["model_parallel_ms"].mean(),
                model_sequential_ms=p["model_sequential_ms"].mean())
        paired = set(p["sample_id"]) if len(p) else set()
        for model in MODELS:
            g = s[s["ok"] & (s["model"] == model) & s["sample_id"].isin(paired)]
            row[f"{model}_ttft_ms"] = g["ttft_ms"].mean() if len(g) else math.nan
            row[f"{model}_tpot_ms"] = g["tpot_ms"].mean() if len(g) else math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def peak_memory(stages: pd.DataFrame) -> pd.DataFrame:
    """Per model: max and mean of recorded peak memory (null on CPU runs)."""
    rows = []
    for model in MODELS:
        v = pd.to_numeric(stages.loc[stages["model"] == model, "peak_mem_bytes"], errors="coerce")
        v = v.dropna()
        rows.append({"model": model, "count": len(v),
                     "max_bytes": float(v.max()) if len(v) else math.nan,
                     "mean_bytes": float(v.mean()) if len(v) else math.nan})
    return pd.DataFrame(rows)


# -- engine records --------------------------------------------------------------------------------
def alpha_label(alpha) -> str:
    return "real" if alpha is None or (isinstance(alpha, float) and math.isnan(alpha)) \
        else f"{float(alpha):g}"


def engine_frame(records: Iterable[dict]) -> pd.DataFrame:
    rows = []
    for r in records:
        if r.get("kind") != "engine":
            continue
        rows.append({"dataset": r["dataset"], "sample_id": r["sample_id"], "mode": r["mode"],
                     "run_id": r.get("run_id"), "profile": r.get("profile"),
                     "device": r.get("device"),
                     "gamma": str(r.get("gamma")), "alpha": alpha_label(r.get("alpha_simulated")),
                     "ok": r.get("error") is None,
                     **{k: r.get(k) for k in ("e2e_ms", "ttft_ms", "tpot_ms", "n_output_tokens",
                                              "window_ms", "hidden_drafted", "hidden_accepted",
                                              "drafted", "accepted", "verify_steps",
                                              "token_match_rate", "ideal_e2e_ms")},
                     "accept_per_position": r.get("accept_per_position") or [],
                     "accept_blocks": r.get("accept_blocks") or [],
                     "drafter_sat_out": bool(r.get("drafter_sat_out")),
                     "hidden_capacity": engine_hidden_capacity(r),
                     "host_end_ms": target_host_end_ms(r),
                     "fill_comparable": r.get("hidden_block") is not None})
    return pd.DataFrame(rows)


def target_host_end_ms(record: dict) -> float:
    """When the target's host stages (load, preprocess) ended in an engine run, ms from its start."""
    ends = (record.get("timeline") or {}).get("target_stage_end_ms") or {}
    return float(ends["preprocess"]) if ends.get("preprocess") is not None else math.nan


def _num(g: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(g[col], errors="coerce")


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def engine_summary(engine: pd.DataFrame) -> pd.DataFrame:
    """dataset (and "all") x mode x gamma x alpha. Speedup vs target_only is paired by sample
    (speedup): mean target_only e2e / mean e2e over the samples where both completed, so a
    configuration that failed on some samples is not compared with a baseline that includes them,
    nor the reverse. e2e, TTFT, TPOT and the counts are over every completed record of the group.
    Hidden fill is pooled over the group (hidden_fill), each capacity from the same engine run."""
    if engine.empty:
        return pd.DataFrame()
    ok = engine[engine["ok"]].copy()
    ok["key"] = list(zip(ok["dataset"], ok["sample_id"]))
    frames = [ok, ok.assign(dataset="all")]
    rows = []
    for ds_frame in frames:
        base_rows = ds_frame[ds_frame["mode"] == "target_only"].set_index("key")
        base_rows = base_rows[~base_rows.index.duplicated(keep="last")]
        ref = pd.to_numeric(base_rows["e2e_ms"], errors="coerce")
        ref_after = ref - pd.to_numeric(base_rows["host_end_ms"], errors="coerce")
        for (ds, mode, gamma, alpha), g in ds_frame.groupby(["dataset", "mode", "gamma", "alpha"]):
            paired = g[g["key"].isin(ref.index)]
            base = [ref[k] for k in paired["key"]]
            e2e = _num(g, "e2e_ms").mean()
            ideal = _num(g, "ideal_e2e_ms").mean()
            drafted, accepted = _num(g, "drafted").sum(), _num(g, "accepted").sum()
            steps = _num(g, "verify_steps").sum()
            rate, mal = pooled_acceptance(g.to_dict("records"))
            base_e2e = float(np.mean(base)) if base else math.nan
            rows.append({
                "dataset": ds, "mode": mode, "gamma": gamma, "alpha": alpha, "count": len(g),
                "e2e_ms": e2e, "ttft_ms": _num(g, "ttft_ms").mean(),
                "tpot_ms": _num(g, "tpot_ms").mean(), "target_only_e2e_ms": base_e2e,
                "paired": len(paired),
                "speedup_vs_target_only": speedup(base, list(_num(paired, "e2e_ms"))),
                "speedup_after_host": _after_host_speedup(paired, ref_after) if mode == "parallel" else math.nan,
                "ideal_e2e_ms": ideal,
                "ideal_speedup": speedup(base, list(_num(paired, "ideal_e2e_ms"))),
                # measured speedup / ideal speedup, i.e. the fraction of the ideal achieved
                "measured_over_ideal": efficiency(ideal, e2e),
                "drafted": drafted, "accepted": accepted, "verify_steps": steps,
                "acceptance_rate": rate, "mean_acceptance_length": mal,
                "hidden_drafted": _num(g, "hidden_drafted").mean(),
                "hidden_fill": hidden_fill(list(_num(g, "hidden_drafted")), list(g["hidden_capacity"]),
                                           list(g["fill_comparable"])),
                "hidden_accepted": _num(g, "hidden_accepted").mean(),
                "sat_out": int(g["drafter_sat_out"].sum()),
                "window_ms": _num(g, "window_ms").mean(),
                "token_match_rate": _num(g, "token_match_rate").mean()})
    return _sorted(pd.DataFrame(rows))


def _after_host_speedup(paired: pd.DataFrame, ref_after: pd.Series) -> float:
    """speedup over e2e minus the target's host-stage end, both sides (module docstring); NaN
    unless every paired record of both sides has its host-stage end."""
    after = list(_num(paired, "e2e_ms") - _num(paired, "host_end_ms"))
    base = [ref_after[k] for k in paired["key"]]
    if not after or any(math.isnan(x) for x in after + base):
        return math.nan
    return speedup(base, after)


def per_position_acceptance(engine: pd.DataFrame) -> pd.DataFrame:
    """mode x gamma x alpha x draft position, pooled over datasets: accepted / drafted."""
    if engine.empty:
        return pd.DataFrame()
    acc: dict[tuple, list[float]] = {}
    for _, r in engine[engine["ok"]].iterrows():
        for pos, pair in enumerate(r["accept_per_position"]):
            a, d = pair
            slot = acc.setdefault((r["mode"], r["gamma"], r["alpha"], pos), [0.0, 0.0])
            slot[0] += a
            slot[1] += d
    rows = [{"mode": k[0], "gamma": k[1], "alpha": k[2], "position": k[3], "accepted": v[0],
             "drafted": v[1], "rate": _ratio(v[0], v[1])} for k, v in sorted(acc.items())]
    return pd.DataFrame(rows)


# -- acceptance structure (run lengths) -----------------------------------------------------------
BLOCK_KINDS = ("hidden", "verify")


def iid_length_pmf(alpha: float, n: int) -> np.ndarray:
    """P(L = k), k = 0..n, for a block of n drafted tokens with i.i.d. per-token acceptance alpha."""
    k = np.arange(n + 1, dtype=float)
    pmf = alpha ** k * (1.0 - alpha)
    pmf[n] = alpha ** n
    return pmf


def alpha_iid(blocks: Sequence[Sequence[int]]) -> float:
    """MLE of i.i.d. per-token acceptance from [drafted, accepted] blocks (accepted / (accepted +
    blocks that stopped at a mismatch)); NaN without a drafted token."""
    acc = sum(a for d, a in blocks if d > 0)
    misses = sum(a < d for d, a in blocks if d > 0)
    return _ratio(acc, acc + misses)


def verify_acceptance_rate(blocks: Sequence[Sequence[int]]) -> float:
    """accepted / drafted over [drafted, accepted] blocks; callers pass the verify blocks after the
    hidden one (accept_blocks[1:]), whose positions do not depend on the overlap window's length."""
    return _ratio(sum(a for _, a in blocks), sum(d for d, _ in blocks))


def verify_acceptance_by_dataset(records: list[dict]) -> dict[str, float]:
    """dataset -> verify_acceptance_rate over the successful parallel engine runs with the real
    drafter (the trained pair's acceptance bands: scripts/derive_acceptance_bands.py)."""
    par = [r for r in dedupe(records) if r["kind"] == "engine" and r["mode"] == "parallel"
           and r.get("alpha_simulated") is None and r.get("error") is None]
    out = {}
    for ds in sort_datasets(r["dataset"] for r in par):
        blocks = [b for r in par if r["dataset"] == ds for b in r["accept_blocks"][1:]]
        if blocks:
            out[ds] = verify_acceptance_rate(blocks)
    return out


def implied_speedup(lengths: Sequence[float], drafted: Sequence[int], draft_cost: float) -> float:
    """MODEL: tokens per block over block cost in target decode steps (see the module docstring)."""
    cost = sum(draft_cost * n + 1.0 for n in drafted)
    return _ratio(sum(1.0 + x for x in lengths), cost)


def draft_cost_ratio(stages: pd.DataFrame) -> float:
    """c = mean drafter TPOT / mean target TPOT over successful stage records (NaN without both)."""
    if stages.empty:
        return math.nan
    ok = stages[stages["ok"]]
    d = ok.loc[ok["model"] == "drafter", "tpot_ms"].mean()
    t = ok.loc[ok["model"] == "target", "tpot_ms"].mean()
    return _ratio(d, t) if not (math.isnan(d) or math.isnan(t)) else math.nan


def _blocks_by_group(engine: pd.DataFrame) -> dict[tuple, list[list[int]]]:
    groups: dict[tuple, list[list[int]]] = {}
    if engine.empty:
        return groups
    for _, r in engine[engine["ok"]].iterrows():
        for i, (d, a) in enumerate(r["accept_blocks"]):
            if d > 0:
                key = (r["mode"], r["gamma"], r["alpha"], BLOCK_KINDS[min(i, 1)])
                groups.setdefault(key, []).append([int(d), int(a)])
    return groups


def acceptance_structure(engine: pd.DataFrame, draft_cost: float = math.nan) -> dict[str, pd.DataFrame]:
    """mode x gamma x alpha x block kind (hidden | verify), pooled over datasets:
    "runs": accepted-length distribution next to the i.i.d. model's with the same alpha_iid;
    "summary": means and the implied speedups (MODEL) of both; "positions": per draft position the
    rate P(accepted) and the conditional rate P(accepted | previous accepted), with the i.i.d.
    model's (alpha_iid^(j+1) and alpha_iid)."""
    runs, summary, positions = [], [], []
    for (mode, gamma, alpha, kind), blocks in sorted(_blocks_by_group(engine).items()):
        a_hat = alpha_iid(blocks)
        d = np.array([b[0] for b in blocks])
        lengths = np.array([b[1] for b in blocks])
        pmfs = np.zeros((len(blocks), int(d.max()) + 1))
        for i, n in enumerate(d):
            pmfs[i, :n + 1] = iid_length_pmf(a_hat, int(n))
        iid_mean = pmfs @ np.arange(pmfs.shape[1])
        key = {"mode": mode, "gamma": gamma, "alpha": alpha, "block": kind}
        for k in range(pmfs.shape[1]):
            runs.append({**key, "accepted_length": k, "blocks": int((lengths == k).sum()),
                         "fraction": float((lengths == k).mean()), "iid_fraction": float(pmfs[:, k].mean())})
        c = 0.0 if kind == "hidden" else draft_cost
        summary.append({**key, "blocks": len(blocks), "mean_drafted": float(d.mean()),
                        "drafted": int(d.sum()), "accepted": int(lengths.sum()),
                        "acceptance_rate": float(lengths.sum() / d.sum()), "alpha_iid": a_hat,
                        "mean_accepted_length": float(lengths.mean()),
                        "iid_mean_accepted_length": float(iid_mean.mean()),
                        "full_block_fraction": float((lengths == d).mean()),
                        "iid_full_block_fraction": float(np.mean(a_hat ** d)),
                        "draft_cost_ratio": c,
                        "implied_speedup": implied_speedup(lengths, d, c),
                        "iid_implied_speedup": implied_speedup(iid_mean, d, c)})
        for j in range(int(d.max())):
            long = d > j
            acc_j = int((lengths[long] > j).sum())
            prev = int((lengths[long] > j - 1).sum())
            positions.append({**key, "position": j, "drafted": int(long.sum()), "accepted": acc_j,
                              "rate": _ratio(acc_j, int(long.sum())), "iid_rate": a_hat ** (j + 1),
                              "conditional_rate": _ratio(acc_j, prev), "iid_conditional_rate": a_hat})
    return {"runs": pd.DataFrame(runs), "summary": pd.DataFrame(summary),
            "positions": pd.DataFrame(positions)}


def headline_acceptance(summary: pd.DataFrame, dataset: str) -> dict | None:
    """The results table's Acceptance cell: real drafter tokens, parallel mode, all gammas pooled.
    None when no such measurement exists (the report then says "not measured")."""
    if summary.empty:
        return None
    g = summary[(summary["dataset"] == dataset) & (summary["mode"] == "parallel")
                & (summary["alpha"] == "real")]
    if g.empty or g["drafted"].sum() == 0:
        return None
    rate, mal = pooled_acceptance(g.to_dict("records"))
    return {"acceptance_rate": rate, "mean_acceptance_length": mal, "count": int(g["count"].sum())}


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    """Datasets by duration ("all" last); rows keep their generated order within a dataset."""
    if df.empty or "dataset" not in df:
        return df.reset_index(drop=True)
    key = df["dataset"].map(lambda d: (2, 0.0, "") if d == "all" else duration_sort_key(d))
    order = sorted(range(len(df)), key=lambda i: key.iloc[i])  # sorted() is stable
    return df.iloc[order].reset_index(drop=True)


# -- verify cost and the hidden block's break-even (issue 19) ------------------------------------------
def verify_cost(curve: Mapping[int, float], m: int) -> float:
    """Measured ms of a step of m tokens from a verify-cost curve {M: ms}: the smallest measured
    M >= m (a graphed step of m tokens replays the next captured size). nan past the curve."""
    sizes = sorted(k for k in curve if k >= m)
    return float(curve[sizes[0]]) if sizes else math.nan


def expected_prefix(alpha: float, n: int) -> float:
    """Expected accepted prefix of n drafts accepted i.i.d. with probability alpha: sum alpha^i."""
    return float(sum(alpha ** i for i in range(1, n + 1)))


def break_even_accepted(curve: Mapping[int, float], block: int) -> float:
    """Accepted drafts (after the first) a hidden block of `block` drafts needs to pay for itself.

    The first draft is checked free by the prefill logits; once it is accepted, target-only would
    run one decode step (c(1)) for its next token, and the engine runs one verify step of the
    block (c(block)), which yields that token plus one per further accepted draft, each saving a
    decode step. So the block pays when accepted-after-the-first > c(block) / c(1) - 1."""
    extra = verify_cost(curve, block) / verify_cost(curve, 1) - 1.0
    return extra if math.isnan(extra) else max(0.0, extra)


def break_even_alpha(curve: Mapping[int, float], block: int) -> float:
    """The i.i.d. acceptance at which a hidden block of `block` drafts starts to pay: alpha with
    expected_prefix(alpha, block - 1) = break_even_accepted(curve, block). 0 when the verify step
    costs no more than a decode step, nan when no acceptance pays (need > block - 1) or the curve
    does not reach `block`."""
    need = break_even_accepted(curve, block)
    if math.isnan(need) or block < 1 or need > block - 1:
        return math.nan
    if need == 0:
        return 0.0
    lo, hi = 0.0, 1.0
    for _ in range(60):          # expected_prefix is increasing in alpha
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_prefix(mid, block - 1) < need else (lo, mid)
    return (lo + hi) / 2


def measured_break_even(speedups: Mapping[float, float]) -> tuple[float | None, float | None]:
    """Where the measured speedup vs target-only crosses 1 over a sweep of simulated alpha: (the
    largest swept alpha whose speedup is <= 1, the smallest larger one whose speedup is > 1).
    (None, a): it pays at every swept alpha from a; (a, None): at none up to a. Swept alphas
    bracket the break-even; they do not locate it."""
    points = sorted((float(a), float(v)) for a, v in speedups.items() if not math.isnan(float(v)))
    if not points:
        return None, None
    lo = max((a for a, v in points if v <= 1.0), default=None)
    hi = min((a for a, v in points if v > 1.0 and (lo is None or a > lo)), default=None)
    return lo, hi


# -- precisions side by side (issue 19) ------------------------------------------------------------
PRECISIONS = ("nf4", "bf16", "int4")      # the three, always listed (absent when not measured)
_DTYPE_SHORT = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}


def precision_label(quant, dtype) -> str:
    """nf4 / int4, or for unquantized weights (quant none) the compute dtype: bf16 on CUDA, fp32 on CPU."""
    if quant and quant != "none":
        return str(quant)
    return _DTYPE_SHORT.get(str(dtype), str(dtype or "none"))


def curve_medians(record: dict) -> dict[int, float]:
    """{M: median ms} of a verify_cost record's rounds (JSON keys are strings)."""
    return {int(m): float(np.median(v)) for m, v in record["curve_ms"].items() if v}


def hidden_block_size(records: Iterable[dict]) -> float:
    """Median hidden block (drafts verified in the first step) of the completed parallel records."""
    blocks = [r["hidden_block"] for r in records if r.get("kind") == "engine" and r.get("mode") == "parallel"
              and not r.get("error") and r.get("hidden_block")]
    return float(np.ceil(np.median(blocks))) if blocks else math.nan


def precision_tables(records: Iterable[dict], gamma: str | None = None) -> dict[str, pd.DataFrame]:
    """Per precision (records grouped by precision_label of their quant and dtype, each group
    deduplicated on its own: the same sample measured in two precisions is two measurements):
    "table" one row per precision: target TPOT and prefill (means over the target's successful
    stage records), the hidden block B (hidden_block_size), the verify cost c(1) and c(B) from the
    measured curve, break_even_accepted / break_even_alpha at B, the memory the verify_cost record
    holds, and the measured break-even bracket over the simulated-alpha sweep
    (measured_break_even, speedups at `gamma`: the first gamma of the records by default); "curve"
    precision x M: median ms and ms / c(1); "speedups" precision x gamma x alpha: measured speedup
    vs target-only (engine_summary, all datasets, parallel mode). PRECISIONS are always rows;
    one that has no records is marked measured=False with every value NaN (absent, not zero)."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(precision_label(r.get("quant"), r.get("dtype")), []).append(r)
    rows, curve_rows, speed_rows = [], [], []
    for label in [*PRECISIONS, *sorted(set(groups) - set(PRECISIONS))]:
        mine = dedupe(groups.get(label, []))
        stages, engine = stage_frame(mine), engine_frame(mine)
        summary = engine_summary(engine)
        vc = [r for r in mine if r["kind"] == "verify_cost" and not r.get("error")]
        curve = curve_medians(vc[-1]) if vc else {}
        target = stages[stages["ok"] & (stages["model"] == "target")]
        block = hidden_block_size(mine)
        par_records = engine[engine["mode"] == "parallel"] if len(engine) else engine
        g = gamma if gamma is not None else (str(par_records["gamma"].iloc[0]) if len(par_records) else None)
        speed = {}
        if not summary.empty:
            par = summary[(summary["dataset"] == "all") & (summary["mode"] == "parallel")]
            for _, s in par.iterrows():
                speed_rows.append({"precision": label, "gamma": s["gamma"], "alpha": s["alpha"],
                                   "speedup": s["speedup_vs_target_only"], "count": s["count"]})
            speed = {float(s["alpha"]): s["speedup_vs_target_only"] for _, s in par.iterrows()
                     if s["gamma"] == g and s["alpha"] != "real"}
        lo, hi = measured_break_even(speed)
        c1 = verify_cost(curve, 1) if curve else math.nan
        b = int(block) if not math.isnan(block) else None
        for m, v in sorted(curve.items()):
            curve_rows.append({"precision": label, "m": m, "ms": v, "over_decode": v / c1})
        mem = (vc[-1].get("memory") or {}) if vc else {}
        rows.append({
            "precision": label, "measured": bool(mine),
            "quant": mine[0].get("quant") if mine else None, "dtype": mine[0].get("dtype") if mine else None,
            "decode_impl": mine[0].get("decode_impl") if mine else None,
            "tpot_ms": float(target["tpot_ms"].mean()) if len(target) else math.nan,
            "prefill_ms": float(target["prefill_ms"].mean()) if len(target) else math.nan,
            "block": block, "curve_max_m": max(curve) if curve else math.nan,
            "verify_1_ms": c1, "verify_block_ms": verify_cost(curve, b) if curve and b else math.nan,
            "break_even_accepted": break_even_accepted(curve, b) if curve and b else math.nan,
            "break_even_alpha": break_even_alpha(curve, b) if curve and b else math.nan,
            "memory_bytes": mem.get("bytes"), "memory_what": mem.get("what"),
            "clock": vc[-1].get("clock") if vc else None,
            "gamma": g,
            "measured_break_even_lo": lo, "measured_break_even_hi": hi})
    return {"table": pd.DataFrame(rows), "curve": pd.DataFrame(curve_rows, columns=["precision", "m", "ms", "over_decode"]),
            "speedups": pd.DataFrame(speed_rows, columns=["precision", "gamma", "alpha", "speedup", "count"])}


# -- everything ------------------------------------------------------------------------------------
def compute_all(records: Iterable[dict]) -> dict[str, pd.DataFrame]:
    records = dedupe(records)
    stages = stage_frame(records)
    pairs = pair_frame(stages)
    engine = engine_frame(records)
    overall = overall_stage_means(stages)
    datasets = dataset_summary(stages, pairs)
    return {
        "stages": stages, "pairs": pairs, "samples": samples_table(stages, pairs),
        "datasets": datasets, "stage_summary": stage_summary(stages),
        "stage_overall": overall, "stage_comparison": stage_comparison(overall),
        "unsupported": unsupported_baselines(records),
        "failures": failures(records), "failure_details": failure_details(records),
        "peak_memory": peak_memory(stages),
        "engine_records": engine, "engine": engine_summary(engine),
        "engine_positions": per_position_acceptance(engine),
        **{f"acceptance_{k}": v for k, v in
           acceptance_structure(engine, draft_cost_ratio(stages)).items()},
    }


# -- what the benchmarks and the bounds check ---------------------------------------------------
def summarize_engine(engine_records: list[dict], stage_records: list[dict]) -> tuple[dict, dict]:
    """Per-duration numbers for a benchmark: (per-sample lists, the values the bounds check).

    Per-sample lists go into extra_info, so the regression gate tests them statistically like
    timing rounds. Every value is paired by sample (parallel and target-only both completed) and
    is the median of its per-sample list, except two pooled ones: acceptance (pooled_acceptance)
    and hidden fill (hidden_fill, each capacity from the same engine run)."""
    by = {}
    for r in engine_records:
        if not r.get("error"):
            by.setdefault(r["mode"], {})[r["sample_id"]] = r
    par, ref = by.get("parallel", {}), by.get("target_only", {})
    common = sorted(par.keys() & ref.keys())
    pre = {m: {r["sample_id"]: to_prefill_end(r["stages_ms"]) for r in stage_records
               if r["model"] == m and not r.get("error")} for m in ("drafter", "target")}
    both = [s for s in common if pre["drafter"].get(s) and s in pre["target"]]
    capacity = {s: engine_hidden_capacity(par[s]) for s in common}
    per_sample = {
        "overall_speedup": [speedup([ref[s]["e2e_ms"]], [par[s]["e2e_ms"]]) for s in common],
        "drafter_prefill_speedup": [pre["target"][s] / pre["drafter"][s] for s in both],
        "hidden_drafted": [par[s]["hidden_drafted"] for s in common],
        "hidden_accepted": [par[s]["hidden_accepted"] for s in common],
        "hidden_fill": [par[s]["hidden_drafted"] / capacity[s] for s in common if capacity[s]],
        "window_ms": [par[s]["window_ms"] for s in common if par[s].get("window_ms") is not None],
        "engine_efficiency": [efficiency(par[s]["ideal_e2e_ms"], par[s]["e2e_ms"]) for s in common
                              if par[s].get("ideal_e2e_ms")],
        "token_match_rate": [par[s]["token_match_rate"] for s in common
                             if par[s].get("token_match_rate") is not None],
        "acceptance_rate": [par[s]["accepted"] / par[s]["drafted"] for s in common if par[s]["drafted"]],
        "e2e_ms_parallel": [par[s]["e2e_ms"] for s in common],
        "e2e_ms_target_only": [ref[s]["e2e_ms"] for s in common],
    }
    rate, _ = pooled_acceptance(par[s] for s in common)
    fill = hidden_fill([par[s]["hidden_drafted"] for s in common], [capacity[s] for s in common],
                       [par[s].get("hidden_block") is not None for s in common])
    medians = {k: (st.median(v) if v else None) for k, v in per_sample.items()}
    medians.update(samples=common, drafted=sum(par[s]["drafted"] for s in common),
                   accepted=sum(par[s]["accepted"] for s in common),
                   acceptance_rate=None if math.isnan(rate) else rate,
                   hidden_fill=None if math.isnan(fill) else fill)
    return {"samples": common, **per_sample}, medians


# -- per-sample measured cost (sharding: balancing and planning) ------------------------------------
def sample_costs_ms(records: Iterable[dict]) -> dict[tuple, dict]:
    """Measured cost of each (dataset, sample_id), split as {"stages": ms, "engine": ms}: the sum of
    its stage records' five stages and the sum of its engine records' end-to-end times (failed
    records excluded). It is the device-synchronized time a run spends measuring that sample,
    without model loading, warm-up or report time."""
    out: dict[tuple, dict] = {}
    for r in dedupe(records):
        if r.get("error") or r.get("kind") == "verify_cost":
            continue
        part = out.setdefault((r["dataset"], r["sample_id"]), {"stages": 0.0, "engine": 0.0})
        if r.get("kind") == "engine":
            part["engine"] += float(r.get("e2e_ms") or 0.0)
        elif r.get("kind") == "stages":
            part["stages"] += total_ms(r["stages_ms"])
    return out


def duration_costs_ms(records: Iterable[dict]) -> dict[str, dict]:
    """Per duration dataset: the median over its samples of sample_costs_ms's "stages" and
    "engine" parts (the engine median over the samples that have engine records), and "samples"."""
    by: dict[str, list[dict]] = {}
    for (dataset, _), cost in sample_costs_ms(records).items():
        by.setdefault(dataset, []).append(cost)
    out = {}
    for d, costs in by.items():
        engine = [c["engine"] for c in costs if c["engine"] > 0]
        out[d] = {"stages": float(np.median([c["stages"] for c in costs])),
                  "engine": float(np.median(engine)) if engine else 0.0, "samples": len(costs)}
    return out
