"""The engine's result and its record: EngineResult (what one engine run of one sample measured),
finish_result (output truncation at EOS / max tokens, TPOT, token match), and the record of
docs/DESIGN.md it is saved as (to_record; error_result for a run that failed)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from .costmodel import Costs


@dataclass
class EngineResult:
    mode: str
    gamma: int | str = 0
    alpha_simulated: float | None = None
    output_tokens: list = field(default_factory=list)
    e2e_ms: float | None = None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    window_ms: float | None = None
    overlap: str | None = None  # the overlap policy that ran: "always" | "yield-gpu"
    hidden_block: int = 0      # tokens drafted before verification started (the hidden block)
    hidden_drafted: int = 0    # of those, finished inside the window (by target prefill end)
    hidden_accepted: int = 0   # of those, accepted
    drafter_sat_out: bool = False   # yield-gpu: the target reached the GPU first; the drafter ran no GPU stage
    drafted: int = 0
    accepted: int = 0
    verify_steps: int = 0
    accept_per_position: list = field(default_factory=list)
    accept_blocks: list = field(default_factory=list)   # [[drafted, accepted], ...]; [0] = hidden block
    token_match_rate: float | None = None
    ideal_e2e_ms: float | None = None
    timeline: dict = field(default_factory=lambda: {
        "drafter_stage_end_ms": {}, "target_stage_end_ms": {}, "draft_token_ms": [], "verify_ms": []})
    error: dict | None = None
    note: str | None = None
    # not in the record, kept for analysis and tests
    decode_steps: int = 0
    produced: int = 0                      # tokens produced before EOS / max_new_tokens truncation
    gamma_trace: list = field(default_factory=list)   # draft length used at each step after the window
    n_prompt_tokens: dict = field(default_factory=dict)
    costs: Costs = field(default_factory=Costs)

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted / self.drafted if self.drafted else None

    @property
    def mean_acceptance_length(self) -> float | None:
        return 1.0 + self.accepted / self.verify_steps if self.verify_steps else None



def finish_result(result: EngineResult, out: list[int], eos: set[int], max_new_tokens: int,
            reference: Sequence[int] | None) -> None:
    result.produced = len(out)
    out = out[:max_new_tokens]
    for i, tok in enumerate(out):
        if tok in eos:
            out = out[:i + 1]
            break
    result.output_tokens = out
    if result.e2e_ms is not None and result.ttft_ms is not None and len(out) > 1:
        result.tpot_ms = (result.e2e_ms - result.ttft_ms) / (len(out) - 1)
    else:
        result.tpot_ms = None  # one token: no time per output token after the first
    if reference is not None:
        result.token_match_rate = token_match_rate(out, reference)


def token_match_rate(out: Sequence[int], reference: Sequence[int]) -> float:
    n = max(len(out), len(reference))
    return sum(a == b for a, b in zip(out, reference)) / n if n else 1.0



RECORD_KEYS = ("mode", "gamma", "alpha_simulated", "e2e_ms", "ttft_ms", "tpot_ms", "window_ms",
               "overlap", "hidden_block", "hidden_drafted", "hidden_accepted", "drafter_sat_out", "drafted", "accepted", "verify_steps",
               "accept_per_position", "accept_blocks", "token_match_rate", "ideal_e2e_ms", "timeline", "error",
               "note")


META_KEYS = ("run_id", "dataset", "sample_id", "profile", "device", "dtype", "quant", "decode_impl")


SHARD_KEYS = ("rank", "host", "devices", "shard_attempt")   # sharded runs only (harness/shard.py)


def to_record(result: EngineResult, **meta: Any) -> dict:
    """The engine record of docs/DESIGN.md; meta supplies run_id, dataset, sample_id, profile, ..."""
    unknown = set(meta) - set(META_KEYS) - set(SHARD_KEYS)
    if unknown:
        raise ValueError(f"unknown engine record fields: {sorted(unknown)}")
    rec = {"kind": "engine", **{k: meta.get(k) for k in META_KEYS},
           **{k: meta[k] for k in SHARD_KEYS if k in meta}}
    data = asdict(result)
    rec.update({k: data[k] for k in RECORD_KEYS})
    rec["n_output_tokens"] = len(result.output_tokens)
    rec["output_tokens"] = [int(t) for t in result.output_tokens]
    return rec


def error_result(mode: str, stage: str, exc: BaseException, **fields: Any) -> EngineResult:
    """An EngineResult for a run that failed, so a long benchmark records it and carries on."""
    return EngineResult(mode=mode, error={"stage": stage, "type": type(exc).__name__, "message": str(exc),
                                          "path": getattr(exc, "path", None)}, **fields)

