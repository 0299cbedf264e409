"""Reads scripts/shard_overhead.sh's runs: the 1-process sharded run's overhead over the plain run,
and the measured per-sample costs that plan the seed's 4,584-sample matrix per GPU.

    python3 scripts/shard_overhead.py RESULTS_DIR [--matrix 500ms=N,1s=N,...] [--total 4584]

RESULTS_DIR holds plain-<i>/ and sharded-<i>/ run directories, their .log files and walls.txt.
Writes RESULTS_DIR/overhead.json and prints the tables. Without --matrix the 4,584 samples are
taken as spread evenly over the durations measured (an assumption, printed as such).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics as st
from pathlib import Path

from harness.metrics import duration_costs_ms, sample_costs_ms, sort_datasets
from harness.records import load_records


def walls(results: Path) -> dict[str, float]:
    out = {}
    for line in (results / "walls.txt").read_text().splitlines():
        m = re.match(r"(\S+) rc=(\d+) wall_s=([\d.]+)", line)
        if m and m.group(2) == "0":
            out[m.group(1)] = float(m.group(3))
    return out


def load_s(log: Path) -> float | None:
    m = re.search(r"loaded in ([\d.]+) s", log.read_text(errors="replace")) if log.exists() else None
    return float(m.group(1)) if m else None


def shard_times(run: Path) -> dict:
    status = json.loads(next((run / "shards").glob("*/rank-00000.json")).read_text())
    merged = json.loads(next((run / "shards").glob("*/merged.json")).read_text())
    return {"plan_s": status["plan_s"], "measure_s": status["measure_s"], "samples": status["samples"],
            "merge_and_report_s": merged["merge_and_report_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results")
    p.add_argument("--matrix", help="samples per duration, e.g. 500ms=600,1s=600,... (default: even)")
    p.add_argument("--total", type=int, default=4584)
    a = p.parse_args()
    results = Path(a.results)
    w = walls(results)
    pairs = sorted({int(k.split("-")[1]) for k in w if k.startswith(("plain-", "sharded-"))})
    rows = []
    for i in pairs:
        plain, sharded = f"plain-{i}", f"sharded-{i}"
        if plain not in w or sharded not in w:
            continue
        lp, ls = load_s(results / f"{plain}.log"), load_s(results / f"{sharded}.log")
        rp = sample_costs_ms(load_records(results / plain / "records.jsonl"))
        rs = sample_costs_ms(load_records(results / sharded / "records.jsonl"))
        common = sorted(rp.keys() & rs.keys())
        ratio = st.median((rs[k]["stages"] + rs[k]["engine"]) / (rp[k]["stages"] + rp[k]["engine"]) for k in common)
        row = {"pair": i, "plain_wall_s": w[plain], "sharded_wall_s": w[sharded],
               "overhead_wall": w[sharded] / w[plain] - 1, "plain_load_s": lp, "sharded_load_s": ls,
               "overhead_wall_without_load": ((w[sharded] - ls) / (w[plain] - lp) - 1) if lp and ls else None,
               "median_sample_cost_ratio": ratio, "samples": len(common), **shard_times(results / sharded)}
        rows.append(row)
        print(f"pair {i}: plain {w[plain]:.1f} s (load {lp} s), sharded {w[sharded]:.1f} s (load {ls} s): "
              f"overhead {row['overhead_wall']:+.2%}"
              + (f", {row['overhead_wall_without_load']:+.2%} without model loading" if lp and ls else "")
              + f"; per-sample measured cost sharded/plain median {ratio:.4f} over {len(common)} samples; "
              f"sharded plan {row['plan_s']:.2f} s, merge + report {row['merge_and_report_s']:.2f} s")
    if not rows:
        raise SystemExit(f"no complete plain/sharded pair in {results} (walls.txt)")
    summary = {k: st.median(r[k] for r in rows if r[k] is not None)
               for k in ("overhead_wall", "overhead_wall_without_load", "median_sample_cost_ratio",
                         "plan_s", "merge_and_report_s")
               if any(r[k] is not None for r in rows)}
    print(f"median over {len(rows)} pairs: overhead {summary['overhead_wall']:+.2%} "
          f"(target <= +2%)" + (f", without model loading {summary['overhead_wall_without_load']:+.2%}"
                                if "overhead_wall_without_load" in summary else ""))

    # Plan: measured cost per duration, scaled to wall clock by the sharded runs' measuring phase
    # (measure_s covers everything per sample: stages, engine runs, record writing, gaps between).
    records = [r for i in pairs for kind in ("plain", "sharded")
               if (results / f"{kind}-{i}" / "records.jsonl").exists()
               for r in load_records(results / f"{kind}-{i}" / "records.jsonl")]
    costs = duration_costs_ms(records)
    factor = st.median(r["measure_s"] * 1000 / sum(c["stages"] + c["engine"] for c in
                       sample_costs_ms(load_records(results / f"sharded-{r['pair']}" / "records.jsonl")).values())
                       for r in rows)
    durations = sort_datasets(costs)
    if a.matrix:
        matrix = {d: int(n) for d, n in (x.split("=") for x in a.matrix.split(","))}
        how = "given by --matrix"
    else:
        base, extra = divmod(a.total, len(durations))
        matrix = {d: base + (1 if j < extra else 0) for j, d in enumerate(durations)}
        how = f"assumed: {a.total} spread evenly over the {len(durations)} durations measured"
    print(f"\nper-sample cost (median over samples of all runs; wall = cost x {factor:.3f}, the sharded "
          "runs' measuring wall clock / their summed measured cost):")
    print(f"{'duration':>8} {'stages ms':>10} {'engine ms':>10} {'wall s':>8} {'samples':>8} {'hours':>7}")
    plan, hours = {}, 0.0
    for d in durations:
        c = costs[d]
        wall = (c["stages"] + c["engine"]) * factor / 1000
        n = matrix.get(d, 0)
        plan[d] = {"stages_ms": c["stages"], "engine_ms": c["engine"], "wall_s": wall, "samples": n,
                   "hours": n * wall / 3600}
        hours += plan[d]["hours"]
        print(f"{d:>8} {c['stages']:>10.1f} {c['engine']:>10.1f} {wall:>8.2f} {n:>8} {plan[d]['hours']:>7.2f}")
    loads = [r["sharded_load_s"] for r in rows if r["sharded_load_s"]]
    print(f"matrix ({how}): {sum(matrix.values())} samples, {hours:.2f} GPU-hours with the engine and its "
          f"baselines on every sample, plus model loading ({st.median(loads) if loads else 'n/a'} s) per process; "
          f"on N GPUs (one process each) about {hours:.2f} / N hours, the cost-balanced shares "
          "differing by at most one sample's cost")
    doc = {"pairs": rows, "summary": summary, "wall_factor": factor, "matrix": matrix, "matrix_source": how,
           "plan": plan, "gpu_hours": hours}
    (results / "overhead.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
