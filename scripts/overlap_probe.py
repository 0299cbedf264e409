"""How much does the parallel engine cost the target when nothing is accepted (issue 19: "alpha = 0 no
slower than target-only by more than 1%")? Loads the 7B-shaped pair once, as `ppbench run` does
(allocator, caches sized for the samples' questions, the drafter in its own process unless
--drafter-thread), and runs target-only and the parallel engine on the same samples, alternating:
the parallel engine with the real (random-weight) drafter and/or a simulated alpha = 0 drafter.

Per run it separates where the time goes: TTFT (stages 1-4: host stages and the prefill), and each
plain decode step both as the host sees it (decode_step's start to end, the token on the host) and
as the GPU ran it (CUDA events around the step's forward), with the SM clock (NVML) read every 10th
step. A decode phase that is slower after a parallel prefill shows up in one of these: host time
only (the host), GPU time at the same clock (the GPU's work), or a lower clock.

    python3 scripts/overlap_probe.py --out DIR [--data-root D] [--durations 2s,10s,20s]
                                     [--per-duration 2] [--reps 3] [--alphas none,0] [--sampler]
                                     [--orders alternate,run,run-noseq] [--queues 0,4] [--stage-records]

--orders: how each sample's modes run, each order in turn per sample and rep: `alternate`
(target-only, then each parallel configuration), `run` (engine_suite.engine_results, the code
`ppbench run` calls, unrotated: target-only, sequential, the parallel runs), `rotated` (the same
with the configurations after target-only rotated per sample, as ppbench run orders them) or
`run-noseq` (unrotated, without sequential). --queues: engine.DECODE_QUEUE per configuration (0: one host round trip per plain
decode step, timed on the host and by CUDA events; otherwise the steps are the gaps between the
tokens' completion times, verify blocks' gaps included in parallel runs with accepted drafts).
The run orders always run the real drafter's configuration, as ppbench run does (it is left out
of the summary when `none` is not in --alphas). --stage-records first runs every sample's five-stage records for both models, as
`ppbench run` does before its engine runs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
from pathlib import Path

import torch

from harness import baselines, data, engine, stages
from harness.engine_suite import engine_results, warm_up_engine
from harness.gpu_memory import PeakSampler, configure_allocator
from harness.pipeline import load_models, run_questions


def _median_ci(values, n_boot: int = 2000, seed: int = 0):
    import random

    rng = random.Random(seed)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n_boot))
    return meds[int(0.025 * n_boot)], meds[int(0.975 * n_boot)]


class StepLog:
    """Wraps engine.decode_step: per plain decode step, host ms and GPU ms (CUDA events), SM MHz."""

    def __init__(self, device):
        self.inner, self.device, self.steps = engine.decode_step, device, []
        self.nvml = self.handle = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        except Exception:  # noqa: BLE001 - no NVML: no clocks
            pass

    def clock(self):
        return None if self.nvml is None else self.nvml.nvmlDeviceGetClockInfo(self.handle, self.nvml.NVML_CLOCK_SM)

    def __call__(self, runner, cache, token, select=engine.greedy):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        forward = runner.decode

        def timed(tok, c):
            a.record()
            out = forward(tok, c)
            b.record()
            return out

        runner.decode = timed
        try:
            token, start, end = self.inner(runner, cache, token, select)
        finally:
            del runner.decode               # the instance attribute; the class's method again
        self.steps.append({"host": end - start, "events": (a, b), "at": end,
                           "mhz": self.clock() if len(self.steps) % 10 == 0 else None})
        return token, start, end

    def take(self) -> list[dict]:
        out = [{"host": s["host"], "gpu": s["events"][0].elapsed_time(s["events"][1]), "at": s["at"], "mhz": s["mhz"]}
               for s in self.steps]
        self.steps = []
        return out


def steps_from_tokens(res) -> list[dict]:
    """Queued plain decoding (engine.DECODE_QUEUE > 0) has no per-step host round trip: its steps
    are the gaps between the tokens' completion times (CUDA events), as GPU and host see them."""
    t = res.timeline["token_ms"]
    return [{"host": b - a, "gpu": b - a, "at": b, "mhz": None} for a, b in zip(t, t[1:]) if b > a]


def summary(res, steps) -> dict:
    # queued: every plain step from the token times (the engine's first g = 0 step, before it
    # settles on plain decoding, is one host round trip and the only one the StepLog sees)
    steps = steps_from_tokens(res) if engine.DECODE_QUEUE else steps
    host, gpu = [s["host"] for s in steps], [s["gpu"] for s in steps]
    mhz = [s["mhz"] for s in steps if s["mhz"] is not None]
    return {"e2e": res.e2e_ms, "ttft": res.ttft_ms, "steps": len(steps),
            "host_step_median": statistics.median(host) if host else None,
            "gpu_step_median": statistics.median(gpu) if gpu else None,
            "host_minus_gpu_median": statistics.median(h - g for h, g in zip(host, gpu)) if host else None,
            "first_host": host[0] if host else None, "first_gpu": gpu[0] if gpu else None,
            "sm_mhz_mean": statistics.mean(mhz) if mhz else None,
            "target_ends": res.timeline.get("target_stage_end_ms"),
            "drafter_ends": res.timeline.get("drafter_stage_end_ms"),
            "hidden_block": res.hidden_block, "sat_out": res.drafter_sat_out, "window_ms": res.window_ms,
            "per_step": steps}


def host_info() -> dict:
    """The host the probe ran on: cores, affinity, torch's threads, lscpu's summary."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines()
    except Exception:  # noqa: BLE001 - no lscpu
        lscpu = []
    keep = ("Model name", "Thread(s) per core", "Core(s) per socket", "Socket(s)", "NUMA node(s)", "CPU(s)")
    return {"cpu_count": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "lscpu": [line for line in lscpu if line.split(":")[0].strip() in keep]}


def run_order(order: str, drafter, target, s, alphas, log, rotation: int = 0) -> dict:
    """One sample's modes in `order` -> {mode key: summary}; `rotated` is `run` with the
    configurations after target-only rotated by `rotation`, as ppbench run does."""
    row = {}
    if order == "alternate":
        base = baselines.target_only(target, s, max_new_tokens=50)
        row["target_only"] = summary(base, log.take())
        for alpha in alphas:
            par = engine.parallel_prefill_decode(
                drafter, target, s, max_new_tokens=50, alpha=alpha,
                reference_tokens=base.output_tokens if alpha is not None else None)
            row[f"parallel_{alpha}"] = summary(par, log.take())
        return row
    sim = [a for a in alphas if a is not None]
    for res in engine_results(drafter, target, s, max_new_tokens=50, alphas=sim, assisted=False,
                              sequential=order != "run-noseq", rotation=rotation if order == "rotated" else 0):
        if res.error:
            raise RuntimeError(f"{res.mode}: {res.error}")
        key = res.mode if res.mode != "parallel" else f"parallel_{res.alpha_simulated}"
        row[key] = summary(res, log.take())
    if None not in alphas:
        row.pop("parallel_None", None)
    return row


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else math.nan


def summary_lines(rows, alphas, sequential: bool = False) -> list[str]:
    """Per parallel configuration: e2e speedup, speedup after the host stages, per-step differences;
    with `sequential`, the sequential baseline's target decode steps against target-only's."""
    if not rows:
        return ["no pair completed"]
    lines = []
    if sequential:
        d = [r["sequential"][q] - r["target_only"][q] for r in rows for q in ("host_step_median",)]
        g = [r["sequential"]["gpu_step_median"] - r["target_only"]["gpu_step_median"] for r in rows]
        lines.append(f"sequential - target-only ({len(rows)} pairs): host step {_mean(d):+.3f} ms, GPU step {_mean(g):+.3f} ms")
    for alpha in alphas:
        key = f"parallel_{alpha}"
        ratio = [r["target_only"]["e2e"] / r[key]["e2e"] for r in rows]
        lo, hi = _median_ci(ratio)

        def d(q):
            return _mean(r[key][q] - r["target_only"][q] for r in rows
                         if r[key][q] is not None and r["target_only"][q] is not None)
        # metrics' speedup after the host stages (e2e minus the run's own target host-stage end), pooled
        after = lambda r, m: r[m]["e2e"] - r[m]["target_ends"]["preprocess"]
        post = sum(after(r, "target_only") for r in rows) / sum(after(r, key) for r in rows)
        post_d = [after(r, key) - after(r, "target_only") for r in rows]
        lines.append(f"{key}: {len(rows)} pairs, speedup vs target-only median {statistics.median(ratio):.3f} "
                     f"(95% CI {lo:.3f}-{hi:.3f}), mean {statistics.mean(ratio):.3f}; after the host stages "
                     f"{post:.4f} (paired difference {statistics.mean(post_d):+.2f} ms, sd "
                     f"{statistics.pstdev(post_d):.2f}); parallel - target-only: "
                     f"TTFT {d('ttft'):+.1f} ms, host step {d('host_step_median'):+.3f} ms, GPU step "
                     f"{d('gpu_step_median'):+.3f} ms, host-GPU {d('host_minus_gpu_median'):+.3f} ms, first step "
                     f"host {d('first_host'):+.3f} GPU {d('first_gpu'):+.3f}, SM clock {d('sm_mhz_mean'):+.0f} MHz; "
                     f"sat out {sum(bool(r[key]['sat_out']) for r in rows)}")
    t = [r["target_only"] for r in rows]
    lines.append(f"target-only: host step median {statistics.median(x['host_step_median'] for x in t):.3f} ms, "
                 f"GPU step {statistics.median(x['gpu_step_median'] for x in t):.3f} ms, "
                 f"SM clock {_mean(x['sm_mhz_mean'] for x in t):.0f} MHz")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--durations", default="2s,10s,20s")
    ap.add_argument("--per-duration", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--alphas", default="none,0", help="parallel runs: none = the real drafter, a number = simulated")
    ap.add_argument("--drafter-thread", action="store_true", help="the engine's drafter in a thread, not a process")
    ap.add_argument("--sampler", action="store_true",
                    help="with ppbench run's whole-GPU memory sampler (gpu_memory.PeakSampler, NVML every 50 ms) running")
    ap.add_argument("--orders", default="alternate", help="comma-separated: alternate, run, run-noseq, rotated")
    ap.add_argument("--queues", default=None,
                    help="comma-separated engine.DECODE_QUEUE values, each in turn per sample and order "
                         "(0: one host round trip per plain decode step; default: the engine's)")
    ap.add_argument("--stage-records", action="store_true",
                    help="first the five-stage records of every sample for both models, as ppbench run does")
    a = ap.parse_args()
    orders = a.orders.split(",")
    queues = [int(q) for q in a.queues.split(",")] if a.queues else [engine.DECODE_QUEUE]
    if not set(orders) <= {"alternate", "run", "run-noseq", "rotated"}:
        ap.error(f"--orders: alternate, run, run-noseq or rotated, got {a.orders}")
    from harness.data.synthetic import ensure_default_dataset

    device = torch.device("cuda", 0)
    root = Path(a.data_root) if a.data_root else ensure_default_dataset(progress=False)
    samples = [s for d in a.durations.split(",") for s in data.load_samples(root, d)[:a.per_duration]]
    alphas = [None if x == "none" else float(x) for x in a.alphas.split(",")]
    configure_allocator("expandable", device)
    drafter, target = load_models("7b-shaped", device=device, quant="nf4", dtype=torch.bfloat16,
                                  drafter_process=not a.drafter_thread, questions=run_questions(samples))
    warm_up_engine(drafter, target, samples[0])
    if a.stage_records:
        for s in samples:
            for r in (drafter, target):
                stages.run_sample(r, s, max_new_tokens=50)
    log = StepLog(device)
    engine.decode_step = log
    sampler = PeakSampler([device]).__enter__() if a.sampler else None
    rows, host = [], host_info()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for rep in range(a.reps):
            for s in samples:
                for order, queue in [(o, q) for o in orders for q in queues]:
                    engine.DECODE_QUEUE = queue
                    row = {"sample": s.id, "rep": rep, "order": order, "queue": queue}
                    try:
                        row.update(run_order(order, drafter, target, s, alphas, log,
                                             rotation=rep * len(samples) + samples.index(s)))
                    except Exception as exc:  # noqa: BLE001 - record the failure, go on with the next pair
                        log.take()
                        row["error"] = f"{type(exc).__name__}: {exc}"[:300]
                        print(f"{s.id} rep {rep} {order}: {row['error']}", flush=True)
                    rows.append(row)
                    (out / "overlap_probe.json").write_text(json.dumps({"host": host, "rows": rows}, indent=1))
    finally:
        engine.decode_step = log.inner
        if sampler is not None:
            sampler.__exit__(None, None, None)
    lines = [f"host: {host}"]
    for order, queue in [(o, q) for o in orders for q in queues]:
        lines.append(f"== order {order}, decode queue {queue}"
                     + (" (after the five-stage records)" if a.stage_records else ""))
        lines += summary_lines([r for r in rows if "error" not in r and r["order"] == order and r["queue"] == queue],
                               alphas, sequential=order in ("run", "rotated"))
    lines.append(f"{sum('error' in r for r in rows)} of {len(rows)} pairs failed")
    print("\n".join(lines), flush=True)
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    if not a.drafter_thread:
        drafter.close()


if __name__ == "__main__":
    main()
