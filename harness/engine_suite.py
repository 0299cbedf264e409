"""Which engine runs a sample gets, and how they become records: shared by `ppbench run` and the
pytest benchmarks so both measure the same configurations.

Per sample (same inputs for all):
  target_only  - first: the baseline; its output is the reference every other mode must reproduce
  sequential   - drafter stages 1-5, then target stages 1-5
  parallel     - parallel prefill + speculative decoding, real drafter tokens, for each gamma
  parallel     - the same with simulated acceptance alpha (labelled), for each alpha x gamma
  assisted     - last: transformers' assisted generation, or a record saying why it cannot run
Between target_only and assisted the configurations run in an order rotated by the sample's
position in the run's list of engine samples (`rotations`: the same under sharding and resume; a
benchmark's, in its duration's list), so across samples none always follows the same one: what
ran just before moves a run's decode time (measured: docs/results/h200-queued-decode). Each record's timeline["order"] is its position in its
sample's sequence.
"""
from __future__ import annotations

import itertools
import zlib
from typing import Iterable, Iterator

from tqdm import tqdm

from . import baselines, engine
from .results import EngineResult, error_result, to_record, token_match_rate
from .records import record_key
from .stages import free_memory


def _safe(mode: str, fn, **fields) -> EngineResult:
    try:
        return fn()
    except Exception as exc:  # recorded; the run goes on with the next configuration
        return error_result(mode, mode, exc, **fields)


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
                   stop_at_eos: bool = False, overlap: str = "auto", rotation: int = 0,
                   skip=lambda mode, gamma, alpha: False) -> Iterator[EngineResult]:
    """target-only, then sequential and parallel (per alpha and gamma) in an order rotated by
    `rotation` (see the module docstring), then assisted generation, on one sample. `drafter` is a
    runner or a DrafterProcess, which serves every mode but assisted."""
    kw = dict(max_new_tokens=max_new_tokens, stop_at_eos=stop_at_eos)
    order = itertools.count()
    ref = _safe("target_only", lambda: baselines.target_only(target, sample, **kw))
    ref.timeline["order"] = next(order)
    if not skip("target_only", 0, None):
        yield ref
    reference = ref.output_tokens if not ref.error else None

    def finish(res):
        res.timeline["order"] = next(order)
        if res.error:
            free_memory(target.device)
        elif reference is not None and res.token_match_rate is None:
            res.token_match_rate = token_match_rate(res.output_tokens, reference)
        return res

    def run(mode, gamma, alpha):
        if mode == "sequential":
            return _safe("sequential", lambda: baselines.sequential(drafter, target, sample, **kw))
        return _safe("parallel", lambda: engine.parallel_prefill_decode(
            drafter, target, sample, gamma=gamma, alpha=alpha, reference_tokens=reference,
            seed=simulation_seed(sample), overlap=overlap, **kw), gamma=gamma, alpha_simulated=alpha)

    # simulated acceptance needs the target's reference output
    middle = [("sequential", 0, None)] if sequential else []
    middle += [("parallel", gamma, alpha) for alpha in (None, *alphas) if alpha is None or reference is not None
               for gamma in gammas]
    k = rotation % len(middle) if middle else 0
    for mode, gamma, alpha in middle[k:] + middle[:k]:
        if not skip(mode, gamma, alpha):
            yield finish(run(mode, gamma, alpha))
    if assisted and not skip("assisted", gammas[0], None):
        yield finish(_safe("assisted", lambda: baselines.assisted_generation(
            drafter, target, sample, gamma=gammas[0], **kw), gamma=gammas[0]))


def engine_records_for(drafter, target, samples: Iterable, *, max_new_tokens: int = 50,
                       gammas=("adaptive",), alphas=(), assisted: bool = False,
                       sequential: bool = True, stop_at_eos: bool = False, overlap: str = "auto",
                       meta: dict, done: set | None = None, start: int = 0) -> Iterator[dict]:
    """Records of engine_results on each sample; the i-th sample's order is rotated by start + i."""
    for i, sample in enumerate(samples, start):
        base = dict(meta, dataset=sample.dataset, sample_id=sample.id)

        def skip(mode, gamma, alpha):
            key = ("engine", sample.dataset, sample.id, mode, str(gamma), alpha)
            return done is not None and key in done

        for res in engine_results(drafter, target, sample, max_new_tokens=max_new_tokens,
                                  gammas=gammas, alphas=alphas, assisted=assisted,
                                  sequential=sequential, stop_at_eos=stop_at_eos, overlap=overlap,
                                  rotation=i, skip=skip):
            rec = to_record(res, **base)
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


def rotations(samples, per_duration: int | None) -> dict:
    """{(dataset, sample id): its position in the run's engine samples}: the rotation of its
    configurations' order, whichever share of the run a process measures."""
    return {(s.dataset, s.id): i for i, s in enumerate(samples_for_engine(samples, per_duration))}


def run_engine_suite(drafter, target, samples, writer, *, done, cfg, meta, progress=True,
                     rotation: dict | None = None) -> int:
    """Every engine configuration of `cfg` (a runconfig.RunConfig) on each sample, written as it
    ends; `rotation` (from `rotations`, default: positions in `samples`) orders each sample's runs."""
    samples = samples_for_engine(samples, cfg.engine_samples)
    rotation = rotations(samples, None) if rotation is None else rotation
    if samples and cfg.warmup:
        warm_up_engine(drafter, target, samples[0], overlap=cfg.overlap)
    n = 0
    bar = tqdm(total=len(samples), desc="engine", unit="sample", disable=not progress)
    for sample in samples:
        for rec in engine_records_for(drafter, target, [sample], max_new_tokens=cfg.max_new_tokens,
                                      gammas=cfg.gammas, alphas=cfg.alphas,
                                      assisted=cfg.assisted, stop_at_eos=cfg.stop_at_eos,
                                      overlap=cfg.overlap, meta=meta, done=done,
                                      start=rotation[(sample.dataset, sample.id)]):
            writer.write(rec)
            n += 1
        bar.update(1)
    bar.close()
    return n
