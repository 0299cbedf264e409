"""Synthetic records in the docs/DESIGN.md schema, for metrics and report tests.

Times are drawn from a seeded RNG so tests never depend on hard-coded results: they recompute
expectations from the records (or from samples.csv) instead.
"""
from __future__ import annotations

import numpy as np

STAGES = ("load", "preprocess", "vision", "prefill", "decode")


def stage_record(dataset: str, sample_id: str, model: str, *, stages_ms: dict | None = None,
                 decode_token_ms: list | None = None, error: dict | None = None,
                 run_id: str = "r0", profile: str = "tiny", peak_mem_bytes: int | None = None,
                 rng: np.random.Generator | None = None) -> dict:
    rng = rng or np.random.default_rng(0)
    if decode_token_ms is None:
        n = int(rng.integers(3, 12))
        decode_token_ms = [float(rng.uniform(0.01, 0.2))] + list(rng.uniform(5, 30, n - 1))
    decode_token_ms = [float(x) for x in decode_token_ms]
    if stages_ms is None:
        scale = 3.0 if model == "target" else 1.0
        stages_ms = {s: float(rng.uniform(1, 50) * scale) for s in STAGES[:4]}
        stages_ms["decode"] = float(sum(decode_token_ms))
    if error is not None:
        # A failed record holds only the stages that finished before the failing one.
        cut = STAGES.index(error["stage"])
        stages_ms = {s: v for s, v in stages_ms.items() if s in STAGES[:cut]}
        decode_token_ms = []
    n_out = len(decode_token_ms)
    return {"kind": "stages", "run_id": run_id, "dataset": dataset, "sample_id": sample_id,
            "model": model, "profile": profile, "device": "cpu", "dtype": "float32",
            "quant": "none", "stages_ms": stages_ms, "decode_token_ms": decode_token_ms,
            "n_prompt_tokens": 40, "n_visual_tokens": 16, "n_output_tokens": n_out,
            "output_tokens": list(range(n_out)), "peak_mem_bytes": peak_mem_bytes,
            "error": error, "t_wall": 0.0}


def engine_record(dataset: str, sample_id: str, mode: str, *, gamma=4, alpha=None,
                  e2e_ms: float | None = None, drafted: int | None = None,
                  accepted: int | None = None, verify_steps: int | None = None,
                  accept_per_position: list | None = None, error: dict | None = None,
                  rng: np.random.Generator | None = None) -> dict:
    rng = rng or np.random.default_rng(0)
    spec = mode != "target_only"
    if spec and accept_per_position is None:
        steps = verify_steps if verify_steps is not None else int(rng.integers(2, 6))
        # Acceptance stops at the first mismatch, so later positions can only accept less.
        per = []
        alive = steps
        for _ in range(gamma if isinstance(gamma, int) else 4):
            a = int(rng.integers(0, alive + 1))
            per.append([a, steps])
            alive = a
        accept_per_position = per
        verify_steps = steps
    accept_per_position = accept_per_position or []
    if drafted is None:
        drafted = sum(d for _, d in accept_per_position)
    if accepted is None:
        accepted = sum(a for a, _ in accept_per_position)
    verify_steps = verify_steps or 0
    e2e = float(e2e_ms if e2e_ms is not None else rng.uniform(200, 400))
    n_out = 8
    return {"kind": "engine", "run_id": "r0", "dataset": dataset, "sample_id": sample_id,
            "profile": "tiny", "device": "cpu", "dtype": "float32", "quant": "none",
            "mode": mode, "gamma": gamma if spec else 0, "alpha_simulated": alpha,
            "e2e_ms": e2e, "ttft_ms": e2e * 0.3, "tpot_ms": e2e * 0.7 / n_out,
            "n_output_tokens": n_out, "output_tokens": list(range(n_out)),
            "window_ms": float(rng.uniform(0, 50)) if spec else 0.0,
            "hidden_drafted": int(rng.integers(0, 4)) if spec else 0,
            "hidden_accepted": 0, "drafted": drafted, "accepted": accepted,
            "verify_steps": verify_steps, "accept_per_position": accept_per_position,
            "token_match_rate": 1.0 if spec else None,
            "ideal_e2e_ms": e2e * 0.8 if spec else None,
            "timeline": {"drafter_stage_end_ms": {"load": 1.0, "preprocess": 3.0, "vision": 8.0,
                                                  "prefill": 20.0},
                         "target_stage_end_ms": {"load": 5.0, "preprocess": 15.0, "vision": 40.0,
                                                 "prefill": 90.0},
                         "draft_token_ms": [30.0, 40.0, 50.0, 60.0],
                         "verify_ms": [[90.0, 110.0], [115.0, 135.0]]},
            "error": error, "note": None}


def dataset_records(datasets=("500ms", "1s", "4s"), n_samples: int = 4, seed: int = 0,
                    failures: dict | None = None) -> list[dict]:
    """Drafter + target stage records for every sample. `failures` maps (dataset, index) to
    (model, stage) to make that record fail."""
    rng = np.random.default_rng(seed)
    failures = failures or {}
    out = []
    for ds in datasets:
        for i in range(n_samples):
            for model in ("drafter", "target"):
                err = None
                fail = failures.get((ds, i))
                if fail and fail[0] == model:
                    err = {"stage": fail[1], "type": "RuntimeError", "message": "boom"}
                out.append(stage_record(ds, f"{ds}-{i}", model, error=err, rng=rng,
                                        peak_mem_bytes=int(rng.integers(1e6, 1e7))))
    return out


def engine_records(datasets=("500ms", "1s", "4s"), n_samples: int = 3, alphas=(None, 0.5, 0.9),
                   gammas=(2, 4), seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for ds in datasets:
        for i in range(n_samples):
            sid = f"{ds}-{i}"
            out.append(engine_record(ds, sid, "target_only", rng=rng))
            for a in alphas:
                for g in gammas:
                    out.append(engine_record(ds, sid, "parallel", gamma=g, alpha=a, rng=rng))
    return out
