"""Which engine runs a sample gets, and how they become records: shared by `ppbench run` and the
pytest benchmarks so both measure the same configurations.

Per sample, in this order (same inputs for all):
  target_only  - the baseline; its output is the reference every other mode must reproduce
  sequential   - drafter stages 1-5, then target stages 1-5
  parallel     - parallel prefill + speculative decoding, real drafter tokens, for each gamma
  parallel     - the same with simulated acceptance alpha (labelled), for each alpha x gamma
  assisted     - transformers' assisted generation, or a record saying why it cannot run
"""
from __future__ import annotations

import zlib
from typing import Iterable, Iterator

from tqdm import tqdm

from . import engine
from .records import record_key
from .stages import free_memory


def _safe(mode: str, fn, **fields) -> engine.EngineResult:
    try:
        return fn()
    except Exception as exc:  # recorded; the run goes on with the next configuration
        return engine.error_result(mode, mode, exc, **fields)


def simulation_seed(sample) -> int:
    """The simulated-acceptance seed of a sample: fixed per sample (reruns and every gamma/alpha
    of one sample draw from the same coin sequence, in call order: how many hidden tokens a run
    drafts depends on timing, so a coin may land on another output position), different between
    samples. One seed for all samples would replay the same coin sequence on every sample: with
    seed 0 the first coin is 0.84, so every hidden block at alpha < 0.84 was rejected at its first
    token."""
    key = f"{getattr(sample, 'dataset', '')}/{getattr(sample, 'id', sample)}"
    return zlib.crc32(key.encode())


def engine_results(drafter, target, sample, *, max_new_tokens: int = 50, gammas=("adaptive",),
                   alphas=(), assisted: bool = True, sequential: bool = True,
                   stop_at_eos: bool = False, overlap: str = "auto", parallel_drafter=None,
                   skip=lambda mode, gamma, alpha: False) -> Iterator[engine.EngineResult]:
    """target-only, sequential, parallel (per alpha and gamma; with `parallel_drafter`, e.g. a
    DrafterProcess, in place of `drafter`) and assisted generation on one sample."""
    kw = dict(max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos)
    ref = _safe("target_only", lambda: engine.target_only(target, sample, **kw))
    if not skip("target_only", 0, None):
        yield ref
    reference = ref.output_tokens if not ref.error else None

    def finish(res):
        if res.error:
            free_memory(target.device)
        elif reference is not None and res.token_match_rate is None:
            res.token_match_rate = engine.token_match_rate(res.output_tokens, reference)
        return res

    if sequential and not skip("sequential", 0, None):
        yield finish(_safe("sequential", lambda: engine.sequential(drafter, target, sample, **kw)))
    for alpha in (None, *alphas):
        if alpha is not None and reference is None:
            continue  # simulated acceptance needs the target's reference output
        for gamma in gammas:
            if skip("parallel", gamma, alpha):
                continue
            yield finish(_safe("parallel", lambda: engine.parallel_prefill_decode(
                parallel_drafter or drafter, target, sample, gamma=gamma, alpha=alpha, reference_tokens=reference,
                seed=simulation_seed(sample), overlap=overlap, **kw),
                gamma=gamma, alpha_simulated=alpha))
    if assisted and not skip("assisted", gammas[0], None):
        yield finish(_safe("assisted", lambda: engine.assisted_generation(
            drafter, target, sample, gamma=gammas[0], **kw), gamma=gammas[0]))


def engine_records_for(drafter, target, samples: Iterable, *, max_new_tokens: int = 50,
                       gammas=("adaptive",), alphas=(), assisted: bool = False,
                       sequential: bool = True, stop_at_eos: bool = False, overlap: str = "auto",
                       parallel_drafter=None, meta: dict, done: set | None = None) -> Iterator[dict]:
    for sample in samples:
        base = dict(meta, dataset=sample.dataset, sample_id=sample.id)

        def skip(mode, gamma, alpha):
            key = ("engine", sample.dataset, sample.id, mode, str(gamma), alpha)
            return done is not None and key in done

        for res in engine_results(drafter, target, sample, max_new_tokens=max_new_tokens,
                                  gammas=gammas, alphas=alphas, assisted=assisted,
                                  sequential=sequential, stop_at_eos=stop_at_eos, overlap=overlap,
                                  parallel_drafter=parallel_drafter, skip=skip):
            rec = engine.to_record(res, **base)
            assert record_key(rec)[0] == "engine"
            yield rec


def warm_up_engine(drafter, target, sample, overlap: str = "auto") -> None:
    """One unrecorded overlapped run: pays thread, stream and allocator first-use costs."""
    try:
        engine.parallel_prefill_decode(drafter, target, sample, max_new_tokens=4, gamma=2, overlap=overlap)
    except Exception:
        pass  # a bad warm-up sample shows up, recorded, in the measured runs


def samples_for_engine(samples, per_duration: int | None) -> list:
    """The first `per_duration` samples of each duration (all when None)."""
    if per_duration is None:
        return list(samples)
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        if seen.get(s.dataset, 0) < per_duration:
            seen[s.dataset] = seen.get(s.dataset, 0) + 1
            out.append(s)
    return out


def run_engine_suite(drafter, target, samples, writer, *, done, cfg, meta, progress=True,
                     parallel_drafter=None) -> int:
    """Every engine configuration of `cfg` (a runconfig.RunConfig) on each sample, written as it ends."""
    samples = samples_for_engine(samples, cfg.engine_samples)
    if samples and cfg.warmup:
        warm_up_engine(parallel_drafter or drafter, target, samples[0], overlap=cfg.overlap)
    n = 0
    bar = tqdm(total=len(samples), desc="engine", unit="sample", disable=not progress)
    for sample in samples:
        for rec in engine_records_for(drafter, target, [sample], max_new_tokens=cfg.max_new_tokens,
                                      gammas=cfg.gammas, alphas=cfg.alphas,
                                      assisted=cfg.assisted, stop_at_eos=cfg.stop_at_eos,
                                      overlap=cfg.overlap, parallel_drafter=parallel_drafter,
                                      meta=meta, done=done):
            writer.write(rec)
            n += 1
        bar.update(1)
    bar.close()
    return n


# -- what the benchmarks assert --------------------------------------------------------------------
def summarize_engine(engine_records: list[dict], stage_records: list[dict]) -> tuple[dict, dict]:
    """Per-duration numbers for a benchmark: (per-sample lists, medians + pooled acceptance).

    Per-sample lists go into extra_info, so the regression gate tests them statistically like
    timing rounds; the medians are what the bounds check."""
    import statistics as st

    from .metrics import hidden_tokens, to_prefill_end

    by = {}
    for r in engine_records:
        if not r.get("error"):
            by.setdefault(r["mode"], {})[r["sample_id"]] = r
    par, ref = by.get("parallel", {}), by.get("target_only", {})
    common = sorted(par.keys() & ref.keys())
    pre = {m: {r["sample_id"]: to_prefill_end(r["stages_ms"]) for r in stage_records
               if r["model"] == m and not r.get("error")} for m in ("drafter", "target")}
    both = [s for s in common if pre["drafter"].get(s) and s in pre["target"]]
    # Window capacity at the drafter's isolated speed (its stage record's per-token times, token 1
    # being free from the prefill logits): hidden_fill = hidden drafted / that capacity.

    iso = {r["sample_id"]: r["decode_token_ms"] for r in stage_records
           if r["model"] == "drafter" and not r.get("error") and r["decode_token_ms"]}
    capacity = {s: hidden_tokens(iso[s], par[s]["window_ms"]) for s in common
                if s in iso and par[s]["window_ms"] is not None}
    per_sample = {
        "overall_speedup": [ref[s]["e2e_ms"] / par[s]["e2e_ms"] for s in common],
        "drafter_prefill_speedup": [pre["target"][s] / pre["drafter"][s] for s in both],
        "hidden_tokens": [par[s]["hidden_drafted"] for s in common],
        "hidden_accepted": [par[s]["hidden_accepted"] for s in common],
        "hidden_fill": [par[s]["hidden_drafted"] / capacity[s] for s in common if capacity.get(s)],
        "window_ms": [par[s]["window_ms"] for s in common],
        "engine_efficiency": [par[s]["ideal_e2e_ms"] / par[s]["e2e_ms"] for s in common
                              if par[s].get("ideal_e2e_ms")],
        "token_match_rate": [par[s]["token_match_rate"] for s in common
                             if par[s].get("token_match_rate") is not None],
        "acceptance_rate": [par[s]["accepted"] / par[s]["drafted"] for s in common if par[s]["drafted"]],
        "e2e_ms_parallel": [par[s]["e2e_ms"] for s in common],
        "e2e_ms_target_only": [ref[s]["e2e_ms"] for s in common],
    }
    drafted = sum(par[s]["drafted"] for s in common)
    accepted = sum(par[s]["accepted"] for s in common)
    medians = {k: (st.median(v) if v else None) for k, v in per_sample.items()}
    medians.update(samples=common, drafted=drafted, accepted=accepted,
                   acceptance_rate=accepted / drafted if drafted else None)
    return {"samples": common, **per_sample}, medians


def check_engine_bounds(bounds: dict, summary: dict, duration: str) -> None:
    """Asserts every bound the bounds file names that this summary measured."""
    from .bounds import check_bound

    for name in bounds.get("bounds", {}):
        value = summary.get(name)
        if value is not None:
            check_bound(bounds, name, value, samples=summary["samples"], duration=duration)
