"""PNG figures for the report, drawn from metrics tables (matplotlib, Agg: no display needed)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .metrics import STAGES, sort_datasets  # noqa: E402

COLORS = dict(zip(STAGES, ("#8dd3c7", "#bebada", "#fb8072", "#80b1d3", "#fdb462")))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stage_bars(stage_summary: pd.DataFrame, names: dict, path: Path) -> Path | None:
    """Mean stage times stacked, one bar per model per dataset."""
    if stage_summary.empty:
        return None
    means = stage_summary.pivot_table(index=["dataset", "model"], columns="stage", values="mean")
    datasets = sort_datasets(means.index.get_level_values(0))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(datasets) + 2), 4.5))
    width = 0.38
    for j, model in enumerate(("drafter", "target")):
        x = np.arange(len(datasets)) + (j - 0.5) * width
        bottom = np.zeros(len(datasets))
        for s in STAGES:
            vals = np.array([means[s].get((d, model), np.nan) for d in datasets])
            vals = np.nan_to_num(vals)
            ax.bar(x, vals, width, bottom=bottom, color=COLORS[s],
                   edgecolor="black" if model == "target" else "white", linewidth=0.5,
                   label=s if j == 0 else None)
            bottom += vals
    ax.set_xticks(np.arange(len(datasets)))
    ax.set_xticklabels(datasets)
    ax.set_xlabel(f"dataset (left bar: {names['drafter']}, right bar: {names['target']})")
    ax.set_ylabel("mean time (ms)")
    ax.set_title("Five-stage breakdown per model and duration")
    ax.legend(title="stage", fontsize=8)
    return _save(fig, path)


def latency_vs_duration(datasets: pd.DataFrame, names: dict, path: Path) -> Path | None:
    d = datasets.dropna(subset=["drafter_total_ms"]) if "drafter_total_ms" in datasets else None
    if d is None or d.empty:
        return None
    x = d["duration_ms"] / 1e3
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for model, style in (("drafter", "o-"), ("target", "s-")):
        ax.plot(x, d[f"{model}_total_ms"], style, label=f"{names[model]} total")
        ax.plot(x, d[f"{model}_to_prefill_end_ms"], style.replace("-", "--"),
                label=f"{names[model]} to end of prefill", alpha=0.7)
    if x.min() > 0:
        ax.set_xscale("log")
    ax.set_xlabel("sample duration (s)")
    ax.set_ylabel("mean latency (ms)")
    ax.set_title("Latency vs duration (paired samples)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def hidden_vs_duration(datasets: pd.DataFrame, path: Path) -> Path | None:
    d = datasets.dropna(subset=["hidden_capacity"]) if "hidden_capacity" in datasets else None
    if d is None or d.empty:
        return None
    x = d["duration_ms"] / 1e3
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(x, d["hidden_capacity"], "o-", color="C2", label="hidden capacity (mean)")
    ax.set_ylabel("hidden capacity per sample (tokens)")
    ax2 = ax.twinx()
    ax2.plot(x, d["window_ms"], "s--", color="C3", label="overlap window (mean, signed ms)")
    ax2.set_ylabel("overlap window (ms)")
    if x.min() > 0:
        ax.set_xscale("log")
    ax.set_xlabel("sample duration (s)")
    ax.set_title("Hidden drafter tokens vs duration")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8)
    return _save(fig, path)


def speedup_vs_alpha(engine: pd.DataFrame, path: Path) -> Path | None:
    """Measured e2e speedup vs target_only against simulated α, one line per mode and γ; real
    drafter results drawn as horizontal reference lines."""
    if engine.empty:
        return None
    e = engine[(engine["dataset"] == "all") & (engine["mode"] != "target_only")]
    sim = e[e["alpha"] != "real"]
    real = e[e["alpha"] == "real"]
    if e.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, ((mode, gamma), g) in enumerate(sim.groupby(["mode", "gamma"])):
        g = g.assign(a=g["alpha"].astype(float)).sort_values("a")
        ax.plot(g["a"], g["speedup_vs_target_only"], "o-", color=f"C{i}",
                label=f"{mode}, γ={gamma} (simulated α)")
    for i, ((mode, gamma), g) in enumerate(real.groupby(["mode", "gamma"])):
        ax.axhline(g["speedup_vs_target_only"].iloc[0], ls=":", color=f"C{i}",
                   label=f"{mode}, γ={gamma} (real drafter)")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xlabel("simulated α (per-token acceptance probability)")
    ax.set_ylabel("measured e2e speedup vs target_only")
    ax.set_title("Speculative decoding speedup vs simulated α")
    ax.legend(fontsize=7)
    return _save(fig, path)


def timeline(record: dict, names: dict, path: Path) -> Path | None:
    """One sample's engine timeline: both models' stages from their stage end times, the drafter's
    draft tokens (completion times) and the target's verify steps."""
    tl = record.get("timeline") or {}
    if not tl:
        return None
    fig, ax = plt.subplots(figsize=(8, 2.8))
    for y, who in ((1, "drafter"), (0, "target")):
        start = 0.0
        for s in STAGES:
            end = (tl.get(f"{who}_stage_end_ms") or {}).get(s)
            if end is None:
                continue
            ax.barh(y, end - start, left=start, color=COLORS[s], edgecolor="black", lw=0.4,
                    label=s if who == "drafter" else None)
            start = end
    ticks = tl.get("draft_token_ms") or []
    if ticks:
        ax.vlines(ticks, 1.25, 1.45, color="black", lw=1, label="draft token done")
    for k, (a, b) in enumerate(tl.get("verify_ms") or []):
        ax.barh(0, b - a, left=a, color="#b3de69", edgecolor="black", lw=0.4,
                label="verify" if k == 0 else None)
    ax.set_yticks([0, 1])
    ax.set_yticklabels([names["target"], names["drafter"]])
    ax.set_xlabel("ms from common start")
    ax.set_title(f"Engine timeline: {record['dataset']} / {record['sample_id']} "
                 f"({record['mode']}, γ={record.get('gamma')}, "
                 + ("real drafter" if record.get("alpha_simulated") is None
                    else f"simulated α={record['alpha_simulated']:g}") + ")")
    ax.legend(fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    return _save(fig, path)


def all_plots(tables: dict, records: list[dict], names: dict, out_dir: Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    made = {
        "stage_bars": stage_bars(tables["stage_summary"], names, out_dir / "stage_bars.png"),
        "latency_vs_duration": latency_vs_duration(tables["datasets"], names,
                                                   out_dir / "latency_vs_duration.png"),
        "hidden_vs_duration": hidden_vs_duration(tables["datasets"],
                                                 out_dir / "hidden_vs_duration.png"),
        "speedup_vs_alpha": speedup_vs_alpha(tables["engine"], out_dir / "speedup_vs_alpha.png"),
    }
    # Prefer a real-drafter sample; fall back to a simulated-α one (its title says so).
    engine = [r for r in records if r.get("kind") == "engine" and r.get("error") is None
              and r.get("mode") == "parallel" and r.get("timeline")]
    engine.sort(key=lambda r: r.get("alpha_simulated") is not None)
    sample = engine[0] if engine else None
    if sample is not None:
        made["timeline"] = timeline(sample, names, out_dir / "timeline.png")
    return {k: v for k, v in made.items() if v is not None}
