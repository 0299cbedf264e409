"""report.md, results.json, samples.csv and plots from records.

Every number in report.md is computed here from the records (via harness.metrics) or taken from
`meta`; findings are templates that are emitted only when the data they cite exists.

`meta` keys (all optional; missing ones print as "not given"): profile, device, dtype,
quantization, versions {torch, transformers, bitsandbytes, ...}, git_commit, command, run_id,
date, warmup (unrecorded warm-up runs per model), max_new_tokens,
memory_footprint_bytes {drafter: int, target: int}, model_names {drafter: str, target: str}.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from . import metrics as M
from .models.input_info import report_lines as input_report_lines
from .plots import all_plots
from .records import load_records

OVERLAP_LABELS = {
    "always": "always: the drafter drafts hidden tokens until the target's prefill is done",
    "yield-gpu": ("yield-gpu: the drafter drafts hidden tokens only while the target loads its data "
                  "(one step in flight), then waits, so it does not take the shared GPU from the "
                  "target's preprocessing, vision encoder and prefill"),
}

DEFAULT_NAMES = {"drafter": "EventGPT", "target": "Video-LLaVA"}
STAGE_TITLES = {"load": "Stage 1: Data loading", "preprocess": "Stage 2: Preprocessing",
                "vision": "Stage 3: Vision encoding", "prefill": "Stage 4: LLM prefill",
                "decode": "Stage 5: LLM decode"}
RESULTS_COLUMNS = ["Dataset", "Samples", "Failed", "Timed", "{drafter} ms", "{target} ms",
                   "Speedup", "Overlap window", "Hidden capacity", "Acceptance"]


# -- formatting ------------------------------------------------------------------------------------
def _bad(x) -> bool:
    return x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


def ms(x) -> str:
    return "n/a" if _bad(x) else f"{x:,.1f} ms"


def num(x, nd: int = 1) -> str:
    return "n/a" if _bad(x) else f"{x:,.{nd}f}"


def ratio(x) -> str:
    return "n/a" if _bad(x) else f"{x:.2f}x"


def pct(x) -> str:
    return "n/a" if _bad(x) else f"{100 * x:.1f}%"


def gib(x) -> str:
    return "n/a" if _bad(x) else f"{x / 2**30:.2f} GiB"


def alpha_text(a: str) -> str:
    return "real drafter" if a == "real" else f"simulated α={a}"


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# -- sections --------------------------------------------------------------------------------------
def _from_records(tables: dict, col: str) -> list[str]:
    seen = set(tables["stages"][col].dropna())
    if col in tables["engine_records"]:
        seen |= set(tables["engine_records"][col].dropna())
    return sorted(str(x) for x in seen)


def _profile(meta: dict, tables: dict) -> str:
    if meta.get("profile"):
        return str(meta["profile"])
    return ", ".join(_from_records(tables, "profile")) or "unknown profile"


def _device(meta: dict, tables: dict) -> str:
    if meta.get("device"):
        return str(meta["device"])
    return ", ".join(_from_records(tables, "device")) or "unknown device"


def header(meta: dict, tables: dict, now: str) -> str:
    prof, dev = _profile(meta, tables), _device(meta, tables)
    run = meta.get("run_id") or ", ".join(_from_records(tables, "run_id")) or "not given"
    banner = f"> **Numbers from: {prof} on {dev}"
    if prof == "trained":
        banner += ("; tiny models trained by ppbench on synthetic scenes: real greedy acceptance "
                   "between them, not the 7B models'; tiny-model timings.**")
    elif prof != "real":
        banner += "; random-weight models measure cost only, not quality.**"
    else:
        banner += ".**"
    if not tables["engine"].empty and (tables["engine"]["alpha"] != "real").any():
        banner += ("\n> Speculative results marked *simulated α* use a drafter that runs its real "
                   "forward passes but emits the target's reference greedy token with probability "
                   "α: not real EventGPT outputs. Acceptance is still measured by verification.")
    return "\n".join([
        "# Parallel Prefill Benchmark Report", "", banner, "",
        f"**Generated:** {now}  ", f"**Run:** {run}  ",
        f"**Benchmark date:** {meta.get('date', 'not given')}  ",
        f"**Command:** `{meta.get('command', 'not given')}`", ""])


def executive_summary(tables: dict, names: dict) -> str:
    p, ds = tables["pairs"], tables["datasets"]
    n_samples = int(ds["samples"].sum()) if len(ds) else 0
    n_failed = int(ds["failed"].sum()) if len(ds) else 0
    lines = ["## Executive summary", "",
             f"This run compares **{names['drafter']}** (drafter) with **{names['target']}** "
             f"(target) over {len(ds)} duration dataset(s) with the five-stage pipeline.", "",
             "### Key metrics", "",
             f"- **Samples:** {n_samples} ({n_failed} failed in at least one stage, "
             f"{len(p)} timed with both models)"]
    if len(p):
        sp = p["target_total_ms"].mean() / p["drafter_total_ms"].mean()
        lines += [
            f"- **Speedup ({names['drafter']} vs {names['target']}, mean total ÷ mean total, all "
            f"paired samples):** {ratio(sp)}",
            f"- **Overlap window (mean, signed):** {ms(p['window_ms'].mean())} "
            f"(clipped at 0: {ms(p['window_clipped_ms'].mean())})",
            f"- **Hidden capacity (drafter tokens that fit in the window, mean per sample):** "
            f"{num(p['hidden_capacity'].mean())}"]
    head = M.headline_acceptance(tables["engine"], "all")
    if head:
        lines.append(f"- **Acceptance rate (real drafter, parallel mode, vLLM definition):** "
                     f"{pct(head['acceptance_rate'])}, mean acceptance length "
                     f"{num(head['mean_acceptance_length'], 2)}")
    else:
        lines.append("- **Acceptance rate:** not measured (no engine records with real drafter "
                     "tokens)")
    return "\n".join(lines) + "\n"


def results_table(tables: dict, names: dict) -> str:
    rows = []
    for _, r in tables["datasets"].iterrows():
        head = M.headline_acceptance(tables["engine"], r["dataset"])
        acc = (f"{pct(head['acceptance_rate'])} (MAL {num(head['mean_acceptance_length'], 2)})"
               if head else "not measured")
        rows.append([r["dataset"], r["samples"], r["failed"], r["paired"],
                     num(r.get("drafter_total_ms")), num(r.get("target_total_ms")),
                     ratio(r.get("speedup")), num(r.get("window_ms")),
                     num(r.get("hidden_capacity")), acc])
    hdr = [c.format(**names) for c in RESULTS_COLUMNS]
    return "\n".join([
        "## Results summary", "",
        md_table(hdr, rows), "",
        f"Times are means over *Timed* samples (both models succeeded). {names['drafter']} ms and "
        f"{names['target']} ms are five-stage totals; Speedup = target mean ÷ drafter mean; "
        "Overlap window is the signed mean in ms; Hidden capacity is the mean number of drafter "
        "tokens whose isolated per-token times fit in it; Acceptance is accepted ÷ drafted from engine "
        "records with real drafter tokens (parallel mode, all γ pooled), MAL = mean acceptance "
        "length.", ""])


def stage_breakdown(tables: dict, names: dict) -> str:
    ov, cmp_ = tables["stage_overall"], tables["stage_comparison"].set_index("stage")
    out = ["## 5-stage pipeline breakdown", "",
           "All datasets pooled; successful records only.", ""]
    if ov.empty:
        return "\n".join(out + ["No successful stage records.", ""])
    for s in M.STAGES:
        out.append(f"### {STAGE_TITLES[s]}")
        for model in M.MODELS:
            g = ov[(ov["model"] == model) & (ov["stage"] == s)]
            if g.empty:
                continue
            g = g.iloc[0]
            out.append(f"- **{names[model]}:** mean {ms(g['mean'])}, p50 {ms(g['p50'])}, "
                       f"p90 {ms(g['p90'])} (n={g['count']})")
        if s in cmp_.index:
            c = cmp_.loc[s]
            if c["winner"] == "tie":
                out.append("- **Winner:** tie on the mean")
            else:
                out.append(f"- **Winner:** {names[c['winner']]} ({ratio(c['ratio'])} faster on "
                           "the mean)")
        out.append("")
    rows = []
    for _, r in tables["stage_summary"].iterrows():
        if r["stage"] in ("total", "ttft", "tpot"):
            rows.append([r["dataset"], names[r["model"]], r["stage"], r["count"], num(r["mean"]),
                         num(r["p50"]), num(r["p90"]), num(r["p99"])])
    if rows:
        out += ["### Per-dataset totals, TTFT and TPOT (ms)", "",
                md_table(["Dataset", "Model", "Quantity", "n", "mean", "p50", "p90", "p99"], rows),
                "", "Per-stage percentiles for every dataset are in `results.json` "
                    "(`stage_summary`).", ""]
    return "\n".join(out)


def ascii_timeline(tables: dict, names: dict, width: int = 60) -> str:
    """Bars scaled from measured means (one common scale across datasets)."""
    ds = tables["datasets"].dropna(subset=["drafter_total_ms"]) \
        if "drafter_total_ms" in tables["datasets"] else pd.DataFrame()
    ss = tables["stage_summary"]
    if ds.empty:
        return ""
    scale = width / max(ds["drafter_total_ms"].max(), ds["target_total_ms"].max())
    letters = dict(zip(M.STAGES, "LPVFD"))
    lab = max(len(names["drafter"]), len(names["target"])) + 1
    lines = [f"Legend: L=load P=preprocess V=vision F=prefill D=decode; "
             f"1 char = {1 / scale:,.1f} ms (stage means per dataset)", ""]
    for _, r in ds.iterrows():
        ends = {}
        for model in M.MODELS:
            m = ss[(ss["dataset"] == r["dataset"]) & (ss["model"] == model)].set_index("stage")
            bar, cum = "", 0.0
            for s in M.STAGES:
                cum += m.loc[s, "mean"]
                bar += letters[s] * (round(cum * scale) - len(bar))
                if s == "prefill":
                    ends[model] = len(bar)
            lines.append(f"{r['dataset']:>6} {names[model]:<{lab}}|{bar}")
        a, b = ends["drafter"], ends["target"]
        gap = (" " * a + "|" + "-" * max(b - a - 1, 0) + "|") if b > a else ""
        lines.append(f"{'':>6} {'window':<{lab}} {gap}  {num(r['window_ms'])} ms signed mean, "
                     f"{num(r['hidden_capacity'])} hidden capacity")
        lines.append("")
    return "```\n" + "\n".join(lines).rstrip() + "\n```"


def parallel_prefill(tables: dict, names: dict) -> str:
    d, t = names["drafter"], names["target"]
    p = tables["pairs"]
    out = ["## Parallel prefill analysis", "",
           "### Token hiding", "",
           f"Both models start together. The overlap window is {t}'s time to the end of prefill "
           f"(stages 1-4) minus {d}'s; the drafter's *hidden capacity* is the number of tokens whose "
           "measured cumulative per-token decode time fits in that window. They would be drafted, not "
           "accepted: acceptance stops at the first mismatch, so they are not multiplied by an "
           "acceptance rate here.", ""]
    if len(p):
        out += [f"Over {len(p)} paired samples: {d} reaches the end of prefill at "
                f"{ms(p['drafter_to_prefill_end_ms'].mean())}, {t} at "
                f"{ms(p['target_to_prefill_end_ms'].mean())}; window {ms(p['window_ms'].mean())} "
                f"(signed), positive in {pct((p['window_ms'] > 0).mean())} of samples; "
                f"hidden capacity {num(p['hidden_capacity'].mean())} tokens on average.", "",
                ascii_timeline(tables, names), ""]
    out += speculative_section(tables, names)
    out += seed_models_section(tables, names)
    return "\n".join(out)


def sat_out_text(row) -> str:
    """'k of n' parallel runs the drafter sat out (metrics.engine_summary sat_out); – for other modes."""
    if row["mode"] != "parallel":
        return "–"
    return f"{int(row.get('sat_out') or 0)} of {int(row['count'])}"


def speculative_section(tables: dict, names: dict) -> list[str]:
    e = tables["engine"]
    out = ["### Measured speculative decoding", ""]
    if e.empty:
        return out + ["Not measured: this run has no engine records, so there is no acceptance "
                      "rate, acceptance length or measured speculative speedup.", ""]
    spec = e[e["mode"] != "target_only"]
    rows = [[r["dataset"], r["mode"], r["gamma"], alpha_text(r["alpha"]), r["count"],
             ms(r["e2e_ms"]), ratio(r["speedup_vs_target_only"]), ratio(r.get("speedup_after_host")),
             ratio(r["ideal_speedup"]),
             pct(r["measured_over_ideal"]), pct(r["acceptance_rate"]),
             num(r["mean_acceptance_length"], 2), num(r["hidden_drafted"]),
             pct(r.get("hidden_fill")), num(r["hidden_accepted"]), sat_out_text(r), pct(r["token_match_rate"])]
            for _, r in spec.iterrows()]
    out += [md_table(["Dataset", "Mode", "γ", "Drafter", "n", "e2e", "Speedup vs target_only",
                      "After host stages", "Ideal speedup", "Measured ÷ ideal", "Acceptance rate", "MAL",
                      "Hidden drafted", "Hidden fill", "Hidden accepted", "Sat out", "Token match"], rows), "",
            "Speedup = mean target_only e2e ÷ mean e2e, paired by sample: both over the samples where "
            "the configuration and target_only completed; after host stages (parallel runs only) = the "
            "same ratio over e2e minus the end of each run's own target host stages (load, preprocess), "
            "so the target's host-stage noise is out of both sides (and so is what the drafter's host "
            "stages cost the target's); ideal speedup likewise with the engine's ideal_e2e_ms model; "
            "acceptance rate = accepted ÷ drafted and MAL = 1 + accepted ÷ verify steps, pooled over the row's records; hidden drafted = the run's drafter tokens finished "
            "inside its own window; hidden fill = Σ hidden drafted ÷ Σ hidden capacity of the same "
            "engine runs (its window at its own hidden-step times), pooled over the row's samples; "
            "n/a where not computable or where records predate the hidden_block field (not "
            "comparable); sat out = parallel runs in which the drafter, under yield-gpu, ended its host "
            "stages after the target had gone to the GPU, so it ran nothing on the GPU and the target "
            "decoded alone (no window, no hidden block). Rows marked "
            "*simulated α* are not real drafter outputs.", ""]
    pos = tables["engine_positions"]
    if not pos.empty:
        prow = []
        shown = 8  # long hidden blocks make rows unreadable; results.json has every position
        for (mode, gamma, alpha), g in pos.groupby(["mode", "gamma", "alpha"]):
            rates = [pct(x) for x in g.sort_values("position")["rate"]]
            more = f" / … ({len(rates) - shown} more)" if len(rates) > shown else ""
            prow.append([mode, gamma, alpha_text(alpha), " / ".join(rates[:shown]) + more])
        out += [f"Per-position acceptance (all datasets pooled; position 1 first, up to {shown} "
                "positions shown; all in results.json `engine_positions`):", "",
                md_table(["Mode", "γ", "Drafter", "Acceptance by draft position"], prow), ""]
    return out + acceptance_structure_section(tables)


def acceptance_structure_section(tables: dict, shown: int = 9) -> list[str]:
    """Run lengths of acceptance per block kind, next to the i.i.d. model (metrics.acceptance_structure)."""
    summ, runs, pos = (tables.get(f"acceptance_{k}") for k in ("summary", "runs", "positions"))
    if summ is None or summ.empty:
        return []
    key = ["mode", "gamma", "alpha", "block"]
    srows = [[r["mode"], r["gamma"], alpha_text(r["alpha"]), r["block"], r["blocks"],
              num(r["mean_drafted"]), num(r["alpha_iid"], 2), pct(r["acceptance_rate"]),
              f"{num(r['mean_accepted_length'], 2)} / {num(r['iid_mean_accepted_length'], 2)}",
              f"{pct(r['full_block_fraction'])} / {pct(r['iid_full_block_fraction'])}",
              num(r["draft_cost_ratio"], 2),
              f"{ratio(r['implied_speedup'])} / {ratio(r['iid_implied_speedup'])}"]
             for _, r in summ.iterrows()]
    drows = []
    for k, g in runs.groupby(key, sort=False):
        g = g.sort_values("accepted_length")
        cells = [f"{int(r['accepted_length'])}: {pct(r['fraction'])} ({pct(r['iid_fraction'])})"
                 for _, r in g.head(shown).iterrows()]
        more = f" / … ({len(g) - shown} more)" if len(g) > shown else ""
        drows.append([k[0], k[1], alpha_text(k[2]), k[3], " / ".join(cells) + more])
    prows = []
    for k, g in pos.groupby(key, sort=False):
        g = g.sort_values("position").head(shown)
        prows.append([k[0], k[1], alpha_text(k[2]), k[3],
                      " / ".join(f"{pct(r['conditional_rate'])}" for _, r in g.iterrows()),
                      pct(g["iid_conditional_rate"].iloc[0])])
    return ["#### Acceptance structure: run lengths", "",
            "Acceptance stops at the first mismatch, so what a block yields is its accepted run "
            "length L. Each row pools the blocks of one kind over all datasets (*hidden*: the block "
            "drafted in the overlap window; *verify*: the blocks after it) and sets them next to an "
            "**i.i.d. model** with the same per-token acceptance α_iid = accepted ÷ (accepted + "
            "blocks ending in a mismatch). *Implied speedup* is a MODEL, not a measurement: "
            "Σ(1 + L) ÷ Σ(c·n + 1), block tokens over block cost in target decode steps, with c = "
            "drafter TPOT ÷ target TPOT from the stage records (0 for the hidden block) and a verify "
            "costing one step.", "",
            md_table(["Mode", "γ", "Drafter", "Block", "Blocks", "Mean n", "α_iid",
                      "Acceptance rate", "Mean L (i.i.d.)", "Full blocks (i.i.d.)", "c",
                      "Implied speedup, MODEL (i.i.d.)"], srows), "",
            f"Distribution of L, measured (i.i.d. model), L = 0 first, up to {shown} lengths "
            "(all in results.json `acceptance_runs`):", "",
            md_table(["Mode", "γ", "Drafter", "Block", "P(L = k)"], drows), "",
            "Per-position acceptance given the previous position was accepted (the i.i.d. model "
            "predicts α_iid at every position; rates in results.json `acceptance_positions`):", "",
            md_table(["Mode", "γ", "Drafter", "Block", "P(accept j given j−1 accepted), j = 1…",
                      "i.i.d."], prows), ""]


TRAINED_FIELDS = (("colour", "colour"), ("kind", "kind (car / ball)"), ("side", "side (left / right)"),
                  ("direction", "motion (left / right)"), ("exact", "whole answer"))


def trained_pair_section(meta: dict, names: dict) -> str:
    """The trained pair's held-out answer accuracy per field against the scene's ground truth, next
    to chance (models/trained.py: train_log.json, copied into meta by the pipeline)."""
    tp = meta.get("trained_pair")
    if not tp:
        return ""
    acc, chance = tp["accuracy"], tp["chance"]
    rows = [[label, pct(chance[f]["uniform"]) if f in chance else "-",
             pct(chance[f]["majority"]) if f in chance else "-", pct(acc["drafter"][f]), pct(acc["target"][f])]
            for f, label in TRAINED_FIELDS]
    return "\n".join([
        "## Trained pair: answers against the ground truth", "",
        f"**Real greedy answers of the two trained tiny models (not the 7B models)** on {tp['n_eval']} "
        "held-out synthetic clips (scenes and backdrops not trained on), parsed per field and compared "
        "with the scene generator's ground truth: \"The biggest object is a <colour> <kind> on the "
        "<side>, moving <left|right>.\", the object covering most of the models' centre crop at the "
        f"clip's end. {names['drafter']} sees only event images (polarity, no colour), "
        f"{names['target']} only video frames. *Uniform*: 1 / number of values; *majority*: always "
        "answering the most common true value.", "",
        md_table(["Field", "Chance (uniform)", "Chance (majority)", f"{names['drafter']} (events)",
                  f"{names['target']} (frames)"], rows), "",
        f"Token agreement of the two greedy answers, position by position: {pct(tp['token_agreement'])}. "
        f"Trained by ppbench in {tp['train_s']:.0f} s on {tp['torch_threads']} torch thread(s) "
        f"(training data, losses and examples: `{tp['log']}`). The acceptance in this report is "
        "real greedy verification between these two models.", ""])


def seed_models_section(tables: dict, names: dict) -> list[str]:
    ds = tables["datasets"]
    if "model_parallel_ms" not in ds or ds["model_parallel_ms"].isna().all():
        return []
    e = tables["engine"]
    rows = []
    for _, r in ds.dropna(subset=["model_parallel_ms"]).iterrows():
        meas_t, meas_p = "not measured", "not measured"
        if not e.empty:
            g = e[e["dataset"] == r["dataset"]]
            to = g[g["mode"] == "target_only"]
            if len(to):
                meas_t = ms(float(np.average(to["e2e_ms"], weights=to["count"])))
            par = g[(g["mode"] == "parallel") & (g["alpha"] == "real")]
            if len(par):
                meas_p = "; ".join(f"γ={x['gamma']}: {ms(x['e2e_ms'])}" for _, x in par.iterrows())
        rows.append([r["dataset"], ms(r["model_parallel_ms"]), ms(r["model_sequential_ms"]),
                     meas_t, meas_p])
    return ["### Wall-clock models (seed formulas) next to measurements", "",
            "MODEL, not measurement: parallel = max(EGPT_prefill, VL_prefill) + "
            "max(EGPT_decode − overlap, VL_decode); sequential = EGPT_total + VL_total, with "
            "'prefill' = stages 1-4 and overlap = the clipped window, evaluated per sample from "
            "isolated stage times and averaged.", "",
            md_table(["Dataset", "Model: parallel", "Model: sequential",
                      "Measured target_only e2e", "Measured parallel e2e (real drafter)"], rows),
            ""]


def _slope(x: pd.Series, y: pd.Series) -> float:
    ok = x.notna() & y.notna() & np.isfinite(x)
    if ok.sum() < 2 or x[ok].nunique() < 2:
        return math.nan
    return float(np.polyfit(x[ok] / 1e3, y[ok], 1)[0])


def scaling(tables: dict, names: dict, plots: dict) -> str:
    ds = tables["datasets"]
    out = ["## Scaling with duration", ""]
    if "drafter_total_ms" in ds and ds["drafter_total_ms"].notna().any():
        d = ds.dropna(subset=["drafter_total_ms"])
        out += [md_table(["Dataset", f"{names['drafter']} total", f"{names['target']} total",
                          "Speedup", "Prefill speedup (stages 1-4)", "LLM-prefill speedup",
                          "Window", "Hidden capacity"],
                         [[r["dataset"], ms(r["drafter_total_ms"]), ms(r["target_total_ms"]),
                           ratio(r["speedup"]), ratio(r["prefill_speedup"]),
                           ratio(r["llm_prefill_speedup"]), ms(r["window_ms"]),
                           num(r["hidden_capacity"])] for _, r in d.iterrows()]), ""]
        slopes = {m: _slope(d["duration_ms"], d[f"{m}_total_ms"]) for m in M.MODELS}
        if not any(_bad(v) for v in slopes.values()):
            out += [f"Least-squares slope of mean total vs duration: {names['drafter']} "
                    f"{num(slopes['drafter'], 2)} ms/s, {names['target']} "
                    f"{num(slopes['target'], 2)} ms/s.", ""]
    for key, title in (("stage_bars", "Stage breakdown"), ("latency_vs_duration", "Latency"),
                       ("hidden_vs_duration", "Hidden capacity"),
                       ("speedup_vs_alpha", "Speedup vs simulated α"),
                       ("timeline", "Engine timeline (one sample)")):
        if key in plots:
            out += [f"![{title}]({plots[key].name})", ""]
    return "\n".join(out)


def machines(meta: dict) -> list[str]:
    """A sharded run's processes: every host, its ranks and the devices they measured on."""
    sh = meta.get("shards")
    if not sh:
        return []
    hosts = sh.get("all_hosts") or sh.get("hosts") or []
    out = [f"- **Processes:** {sh['processes']} (sharded run, {len(hosts)} host(s); attempts "
           f"{', '.join(sh.get('attempts') or [])}; harness/shard.py)"]
    for h in hosts:
        devs = ", ".join(f"{d['device']} {d['name']}" for d in h["devices"]) or "not given"
        out.append(f"- **Host {h['host']}:** ranks {', '.join(map(str, h['ranks']))}; {devs}")
    return out


def configuration(meta: dict, tables: dict, names: dict) -> str:
    v = meta.get("versions") or {}
    foot = meta.get("memory_footprint_bytes") or {}
    out = ["## Model configuration", "",
           f"- **Profile:** {_profile(meta, tables)}",
           f"- **Device:** {_device(meta, tables)}",
           f"- **dtype:** {meta.get('dtype', 'not given')}",
           f"- **Quantization:** {meta.get('quantization', 'not given')}",
           f"- **Decode implementation:** {meta.get('decode_label') or meta.get('decode_impl') or 'transformers eager (not recorded)'}",
           f"- **Hidden drafting (overlap policy):** {OVERLAP_LABELS.get(meta.get('overlap'), 'always (not recorded)')}",
           f"- **Engine's drafter runs in:** "
           + ("its own process (harness/drafter_process.py)" if meta.get("drafter_process")
              else "a thread of the engine's process"),
           f"- **Versions:** " + (", ".join(f"{k} {v[k]}" for k in sorted(v)) or "not given"),
           f"- **Git commit:** {meta.get('git_commit', 'not given')}",
           f"- **Max new tokens:** {meta.get('max_new_tokens', 'not given')}"]
    out += machines(meta)
    out += input_report_lines(meta)
    for m in M.MODELS:
        if m in foot:
            out.append(f"- **{names[m]} weights footprint:** {gib(foot[m])}")
    for m, setup in (meta.get("decode_setup") or {}).items():
        if m in names and setup.get("cache_bytes"):
            graphs = (f"; {len(setup['graph_sizes'])} decode/verify"
                      + (f", {len(setup['prefill_graph_sizes'])} prefill" if setup.get("prefill_graph_sizes") else "")
                      + (" and 1 vision" if setup.get("vision_graph_input") else "")
                      + f" CUDA graphs captured at load in {setup['graph_capture_s']} s"
                      + (f" (graph pools {gib(setup['graph_pool_bytes'])})" if setup.get("graph_pool_bytes") else "")
                      if setup.get("graph_sizes") else "")
            graphs += (f"; torch.compile {setup['compile_s']} s at load, not timed" if "compile_s" in setup else "") \
                + (f"; attention: {setup['attention']['decode']} (decode), {setup['attention']['verify']} (verify)"
                   if setup.get("attention") else "") \
                + (f"; compile failed, eager glue: {setup['compile_error']}" if setup.get("compile_error") else "")
            out.append(f"- **{names[m]} static KV cache:** {gib(setup['cache_bytes'])} "
                       f"({setup['cache_len']} positions){graphs}")
    pm = tables["peak_memory"]
    for _, r in pm.iterrows():
        if r["count"]:
            out.append(f"- **Device peak during {names[r['model']]}'s stages (max over {r['count']} "
                       f"samples; includes every model resident on that device):** "
                       f"{gib(r['max_bytes'])}, mean {gib(r['mean_bytes'])}")
    for dev, peak in (meta.get("gpu_memory") or {}).items():
        procs = peak.get("peak_process_bytes") or {}
        out.append(f"- **Whole-run peak GPU memory on {dev} (all processes, {peak.get('source')}):** "
                   f"{gib(peak['peak_device_used_bytes'])}"
                   + (f"; per process: " + ", ".join(f"pid {k} {gib(v)}" for k, v in procs.items()) if procs else ""))
    if not (pm["count"] > 0).any() and not meta.get("gpu_memory"):
        out.append("- **Peak memory:** not recorded (CPU run or not measured)")
    return "\n".join(out) + "\n"


def _alpha_bracket(lo, hi) -> str:
    lo, hi = (None if _bad(x) else x for x in (lo, hi))
    if lo is None and hi is None:
        return "no simulated-α sweep"
    if hi is None:
        return f"pays at no swept α (speedup ≤ 1 up to α={lo:g})"
    return f"pays from α={hi:g}" + (f" (≤ 1 at α={lo:g})" if lo is not None else " (every swept α)")


def precision_section(records: list[dict], meta: dict | None = None, *, always: bool = False) -> str:
    """The precisions side by side (metrics.precision_tables), or "" when no record holds a
    verify-cost curve (a run measures it with several --quant precisions or --verify-cost on),
    unless `always` (the report of a multi-precision run, even one cut short before its curves)."""
    if not always and not any(r.get("kind") == "verify_cost" for r in records):
        return ""
    meta = meta or {}
    pt = M.precision_tables(records)
    table, curve, speeds = pt["table"], pt["curve"], pt["speedups"]
    skipped = meta.get("skipped_precisions") or {}
    alphas = sorted({a for a in speeds["alpha"] if a != "real"}, key=float)
    rows = []
    for _, r in table.iterrows():
        if not r["measured"]:
            why = skipped.get(r["precision"]) or "not measured in this run"
            rows.append([r["precision"], f"absent: {why}"] + ["—"] * (8 + len(alphas)))
            continue
        sp = speeds[(speeds["precision"] == r["precision"]) & (speeds["gamma"] == r["gamma"])].set_index("alpha")
        b = "n/a" if _bad(r["block"]) else f"{int(r['block'])}"
        rows.append([r["precision"], r["decode_impl"] or "?", ms(r["tpot_ms"]), ms(r["prefill_ms"]), b,
                     f"{ms(r['verify_1_ms'])} / {ms(r['verify_block_ms'])}",
                     ratio(_ratio_or_nan(r["verify_block_ms"], r["verify_1_ms"])),
                     num(r["break_even_accepted"], 2), num(r["break_even_alpha"], 2),
                     f"{_size(r['memory_bytes'])} ({r['memory_what']})" if isinstance(r["memory_what"], str) else "n/a",
                     *[ratio(sp.loc[a, "speedup"]) if a in sp.index else "n/a" for a in alphas],
                     _alpha_bracket(r["measured_break_even_lo"], r["measured_break_even_hi"])])
    header = ["Precision", "Decode", "Target TPOT", "Target prefill", "Hidden block B", "Verify c(1) / c(B)",
              "c(B) ÷ c(1)", "Break-even accepted", "Break-even α (predicted)", "Memory",
              *[f"Speedup, simulated α={a}" for a in alphas], "Break-even α (measured, simulated α sweep)"]
    clock = next((c for c in table["clock"] if isinstance(c, str)), "")
    out = ["## Precision", "",
           "Each precision on the same samples, engine and decode implementation, one run after another "
           "(each its own records and report). Target TPOT and prefill: means over the target's "
           "successful stage records. The hidden block B: the median number of drafts the engine "
           "verified in its first step (parallel records). Verify c(M): the median device time of one "
           f"target step of M tokens after the prompt ({clock}), from the measured verify-cost curve "
           "below. Break-even: the hidden block pays once more than c(B) ÷ c(1) − 1 drafts after the "
           "first are accepted (`metrics.break_even_accepted`), i.e. from the i.i.d. acceptance "
           "`metrics.break_even_alpha` — a prediction from the curve. The speedups are MEASURED "
           "(engine vs target-only, paired by sample, all durations, γ of the row's first parallel "
           "records) at **simulated α** (not real drafter outputs); their last column is where they "
           "cross 1 over the swept α. A precision the run did not measure is *absent*, never 0.", "",
           md_table(header, rows), ""]
    if not curve.empty:
        labels = [p for p in table["precision"] if p in set(curve["precision"])]
        by = {p: curve[curve["precision"] == p].set_index("m") for p in labels}
        ms_rows = []
        for m in sorted(set(curve["m"])):
            ms_rows.append([m] + [f"{num(by[p].loc[m, 'ms'], 3)} ({ratio(by[p].loc[m, 'over_decode'])})"
                                  if m in by[p].index else "not measured" for p in labels])
        out += [f"Verify-cost curve: ms of one target step of M tokens ({clock}; median over its rounds), "
                "and in decode steps c(M) ÷ c(1):", "",
                md_table(["M", *labels], ms_rows), ""]
    return "\n".join(out)


def _size(x) -> str:
    return gib(x) if _bad(x) or x >= 2**30 else f"{x / 2**20:.1f} MiB"


def _ratio_or_nan(a, b) -> float:
    return math.nan if _bad(a) or _bad(b) or not b else a / b


def findings(tables: dict, names: dict) -> list[str]:
    """Templated statements, each emitted only when the values it cites exist."""
    out = []
    ov, p, ds, e = tables["stage_overall"], tables["pairs"], tables["datasets"], tables["engine"]
    for model in M.MODELS:
        g = ov[(ov["model"] == model) & ov["stage"].isin(M.STAGES)]
        tot = ov[(ov["model"] == model) & (ov["stage"] == "total")]
        if len(g) and len(tot) and tot["mean"].iloc[0] > 0:
            top = g.loc[g["mean"].idxmax()]
            out.append(f"{top['stage'].capitalize()} dominates {names[model]} latency: "
                       f"{ms(top['mean'])} of a {ms(tot['mean'].iloc[0])} mean total "
                       f"({pct(top['mean'] / tot['mean'].iloc[0])}).")
    if "speedup" in ds and ds["speedup"].notna().any():
        s = ds["speedup"].dropna()
        faster = int((s > 1).sum())
        out.append(f"{names['drafter']} is faster end to end than {names['target']} in {faster} "
                   f"of {len(s)} datasets (speedup {ratio(s.min())} to {ratio(s.max())}).")
    if len(p):
        pre = p["target_to_prefill_end_ms"].mean() / p["drafter_to_prefill_end_ms"].mean()
        llm = p["target_prefill_ms"].mean() / p["drafter_prefill_ms"].mean()
        out.append(f"{names['drafter']} reaches the end of prefill {ratio(pre)} sooner than "
                   f"{names['target']} (stages 1-4; LLM prefill alone: {ratio(llm)}).")
        nout = p["drafter_n_output_tokens"].mean()
        share = f", {pct(p['hidden_capacity'].mean() / nout)} of its mean {num(nout)} output " \
                "tokens" if nout and nout > 0 else ""
        out.append(f"The overlap window is positive in {pct((p['window_ms'] > 0).mean())} of "
                   f"{len(p)} paired samples (mean {ms(p['window_ms'].mean())}), with a hidden "
                   f"capacity of {num(p['hidden_capacity'].mean())} drafter tokens per sample{share}.")
    if "duration_ms" in ds and "target_total_ms" in ds:
        d = ds.dropna(subset=["target_total_ms"])
        if d["duration_ms"].replace(math.inf, np.nan).nunique() >= 3:
            sl = _slope(d["duration_ms"], d["target_total_ms"])
            sw = _slope(d["duration_ms"], d["window_ms"])
            if not _bad(sl):
                out.append(f"Across {len(d)} durations ({d['dataset'].iloc[0]} to "
                           f"{d['dataset'].iloc[-1]}), {names['target']}'s mean total changes by "
                           f"{num(sl, 2)} ms per second of duration and the window by "
                           f"{num(sw, 2)} ms/s (least squares).")
    st = tables["stages"]
    okst = st[st["ok"]]
    if len(okst):
        tt = okst.groupby("model")[["ttft_ms", "tpot_ms"]].mean()
        if set(M.MODELS) <= set(tt.index):
            out.append(f"Mean TTFT is {ms(tt.loc['drafter', 'ttft_ms'])} for {names['drafter']} "
                       f"vs {ms(tt.loc['target', 'ttft_ms'])} for {names['target']}; mean TPOT "
                       f"{ms(tt.loc['drafter', 'tpot_ms'])} vs {ms(tt.loc['target', 'tpot_ms'])}.")
    head = M.headline_acceptance(e, "all")
    if head:
        out.append(f"With real drafter tokens ({head['count']} parallel-mode records, all γ), "
                   f"{pct(head['acceptance_rate'])} of drafted tokens are accepted; mean "
                   f"acceptance length {num(head['mean_acceptance_length'], 2)}.")
    if not e.empty:
        spec = e[(e["dataset"] == "all") & (e["mode"] != "target_only")].dropna(
            subset=["speedup_vs_target_only"])
        if len(spec):
            b = spec.loc[spec["speedup_vs_target_only"].idxmax()]
            extra = (f", {pct(b['measured_over_ideal'])} of its ideal speedup"
                     if not _bad(b["measured_over_ideal"]) else "")
            out.append(f"The fastest measured speculative configuration is {b['mode']} γ="
                       f"{b['gamma']} ({alpha_text(b['alpha'])}) at "
                       f"{ratio(b['speedup_vs_target_only'])} vs target_only{extra}.")
    f = tables["failures"]
    if len(f):
        top = f.groupby("stage")["count"].sum()
        where = f"most failed records failed at {top.idxmax()} ({int(top.max())} of {int(top.sum())})"
        if "samples" in ds and len(ds):
            out.append(f"{int(ds['failed'].sum())} of {int(ds['samples'].sum())} samples failed in "
                       f"at least one stage; {where}.")
        else:
            out.append(f"{int(top.sum())} records failed; {where}.")
    return out


def _unsupported_text(tables: dict) -> list[str]:
    u = tables.get("unsupported")
    if u is None or u.empty:
        return []
    lines = ["### Baselines that cannot run with this pair", ""]
    for _, r in u.iterrows():
        lines.append(f"- **{r['mode']}** ({int(r['count'])} records, not counted as failures): "
                     f"{r['reason']}")
    return lines + [""]


def failures_section(tables: dict, names: dict) -> str:
    f = tables["failures"]
    out = ["## Failures", ""]
    if f.empty:
        return "\n".join(out + ["No sample or engine run failed.", ""] + _unsupported_text(tables))
    rows = [[r["dataset"], r["kind"], names.get(r["who"], r["who"]), r["stage"], r["type"],
             r["count"]] for _, r in f.iterrows()]
    details = tables.get("failure_details")
    detail_lines = []
    if details is not None and len(details):
        shown = details.head(FAILURES_SHOWN)
        detail_rows = [[r["dataset"], f"`{r['sample_id']}`", names.get(r["who"], r["who"]), r["stage"],
                        f"{r['type']}: {_cell(r['message'])}", f"`{r['file']}`" if isinstance(r["file"], str) else "-"]
                       for _, r in shown.iterrows()]
        more = f" (the first {len(shown)} of {len(details)}; all are in results.json)" if len(details) > len(shown) else ""
        detail_lines = ["", f"Each failed record{more}:", "",
                        md_table(["Dataset", "Sample", "Model / mode", "Stage", "Error", "File"], detail_rows)]
    return "\n".join(out + [md_table(["Dataset", "Kind", "Model / mode", "Stage", "Error",
                                      "Records"], rows), *detail_lines,
                            "", "Failed records are excluded from every timing statistic. "
                            "`ppbench run --resume` retries them.", ""]
                     + _unsupported_text(tables))


FAILURES_SHOWN = 20


def _cell(text: str, limit: int = 240) -> str:
    text = str(text).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def methodology(meta: dict, tables: dict, names: dict) -> str:
    warm = meta.get("warmup")
    warm_text = (f"{warm} unrecorded warm-up run(s) per model precede measurement"
                 if warm is not None else "warm-up runs: not stated in meta")
    prof = _profile(meta, tables)
    prof_text = ("models are the real checkpoints" if prof == "real" else
                 f"profile '{prof}' uses random weights: these numbers measure compute and data "
                 "cost only; token agreement and acceptance from such models say nothing about "
                 "real model quality")
    return "\n".join([
        "## Methodology", "",
        f"- **Models:** drafter {names['drafter']}, target {names['target']}; {prof_text}.",
        "- **Five stages** per model per sample, run in isolation (no overlap): 1 load (event "
        "images / video frames from disk), 2 preprocess (tokenization + image transforms), "
        "3 vision (vision tower + projector), 4 prefill (KV cache + first logits), 5 decode "
        "(greedy, per-token times).",
        "- **Timing:** on CUDA each stage boundary synchronizes the device before reading the "
        "host clock; per-token decode times use CUDA events read after the loop. On CPU, "
        "perf_counter.",
        f"- **Warm-up:** {warm_text}.",
        "- **Overlap window** = target time to end of prefill − drafter time to end of prefill "
        "(stages 1-4 summed, both starting at t=0), signed; derived from isolated stage costs, so "
        "it ignores contention when both models share a device (the engine measures that).",
        "- **Hidden capacity** = largest n with sum(drafter decode_token_ms[:n]) ≤ window; 0 when "
        "the window ≤ 0: tokens that could be drafted, not accepted ones. **Hidden drafted** (engine) "
        "= drafter tokens the engine run finished inside its own window; **hidden fill** = Σ hidden "
        "drafted ÷ Σ hidden capacity of the same engine runs, pooled.",
        "- **TTFT** = stages 1-4 + decode_token_ms[0] (token 1 is selected from the prefill "
        "logits); **TPOT** = mean of decode_token_ms[1:].",
        "- **Speedup** = mean target total ÷ mean drafter total over paired samples; prefill "
        "speedup uses stages 1-4, LLM-prefill speedup stage 4 alone. Per dataset, every timing "
        "(TTFT and TPOT included) is a mean over the paired samples.",
        "- **Acceptance** (engine records only, vLLM definitions): rate = accepted ÷ drafted; "
        "mean acceptance length = 1 + accepted ÷ verify steps; per-position = accepted ÷ drafted "
        "at each draft position. Never a text-similarity score; without engine records it is "
        "reported as not measured. Results with a set acceptance probability are labelled "
        "*simulated α*.",
        "- **Wall-clock formulas** from the seed system are shown as models, never as "
        "measurements.",
        "- **Failures:** a record with an error counts in Failed and is excluded from timing "
        "statistics; a sample is timed only when both models succeeded. Percentiles are numpy "
        "linear interpolation.", ""])


def dataset_status(tables: dict, meta: dict | None = None) -> str:
    ds = tables["datasets"]
    lines = ["## Dataset status", ""]
    for missing in (meta or {}).get("missing_datasets") or []:
        duration, _, why = str(missing).partition(": ")
        lines.append(f"- **{duration}:** absent, not measured ({why})")
    for _, r in ds.iterrows():
        mark = "complete" if r["failed"] == 0 and r["paired"] == r["samples"] else \
            f"{r['failed']} failed, {r['samples'] - r['paired']} not timed"
        lines.append(f"- **{r['dataset']}:** {r['samples']} samples, {mark}")
    lines.append(f"\n**Total:** {int(ds['samples'].sum()) if len(ds) else 0} samples across "
                 f"{len(ds)} dataset(s)")
    return "\n".join(lines) + "\n"


# -- outputs ---------------------------------------------------------------------------------------
def _jsonable(df: pd.DataFrame) -> list[dict]:
    df = df.drop(columns=["decode_token_ms", "accept_per_position"], errors="ignore")
    recs = df.astype(object).where(df.notna(), None).to_dict(orient="records")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in recs]


def _clean(x):
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    return x


def _part(text: str) -> list[str]:
    return [text, "---"] if text else []


def write_precision_report(runs: dict[str, Path], out_dir, meta: dict | None = None) -> Path:
    """The report of a multi-precision run: its Precision section over every precision's records
    (`runs`: precision -> that run's folder), with links to each precision's own report."""
    meta = dict(meta or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = [r for folder in runs.values() for r in load_records(Path(folder) / "records.jsonl")]
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    pt = M.precision_tables(records)
    results = {"generated": now, "meta": meta, **{f"precision_{k}": _jsonable(v) for k, v in pt.items()}}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str, allow_nan=False),
                                          encoding="utf-8")
    before = meta.get("device_used_before_bytes") or {}
    links = [f"- **{p}:** [{Path(f).name}/report.md]({Path(f).name}/report.md) "
             f"({sum(1 for r in records if M.precision_label(r.get('quant'), r.get('dtype')) == p)} records"
             + (f"; GPU memory in use before its models loaded, all processes: {gib(before[p])}" if p in before else "")
             + ")" for p, f in runs.items()]
    section = precision_section(records, meta, always=True)
    text = "\n".join([header(meta, M.compute_all([]), now), section, "### Each precision's run", "",
                      *links, ""])
    path = out_dir / "report.md"
    path.write_text(text, encoding="utf-8")
    return path


def write_report(records: list[dict], out_dir, meta: dict | None = None) -> Path:
    """Writes report.md, results.json, samples.csv and PNG plots into out_dir; returns report.md."""
    meta = dict(meta or {})
    names = {**DEFAULT_NAMES, **(meta.get("model_names") or {})}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = M.compute_all(records)
    now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S")

    tables["samples"].to_csv(out_dir / "samples.csv", index=False)
    plots = all_plots(tables, M.dedupe(records), names, out_dir)
    find = findings(tables, names)
    results = {"generated": now, "meta": meta, "findings": find,
               "plots": {k: v.name for k, v in plots.items()},
               **{k: _jsonable(v) for k, v in tables.items()
                  if k not in ("stages", "engine_records")}}
    (out_dir / "results.json").write_text(
        json.dumps(results, indent=1, default=str, allow_nan=False), encoding="utf-8")

    trained = trained_pair_section(meta, names)
    parts = [header(meta, tables, now), executive_summary(tables, names), "---",
             *([trained, "---"] if trained else []),
             results_table(tables, names), "---", stage_breakdown(tables, names), "---",
             parallel_prefill(tables, names), "---", *_part(precision_section(records, meta)),
             scaling(tables, names, plots), "---",
             configuration(meta, tables, names), "---",
             "## Key findings\n\n" + ("\n".join(f"{i}. {s}" for i, s in enumerate(find, 1))
                                      or "No findings: no successful records.") + "\n",
             "---", failures_section(tables, names), "---", methodology(meta, tables, names),
             "---", dataset_status(tables, meta)]
    path = out_dir / "report.md"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
