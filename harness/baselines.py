"""The baselines the parallel engine is compared with, on the same sample: target-only (stages 1-4
and plain greedy decoding: the reference output), sequential (the drafter's five stages, then the
target's) and transformers' assisted generation where it can run at all."""
from __future__ import annotations

import copy
import functools
from typing import Any

import torch

from .engine import _eos_set, _question, _sync_all, now_ms, prefix_and_decode
from .models.base import CausalLMRunner, TextRunner, greedy
from .results import EngineResult, finish_result


@torch.inference_mode()
def target_only(target: CausalLMRunner, sample: Any, *, max_new_tokens: int = 50,
                stop_at_eos: bool = False, select=greedy) -> EngineResult:
    """Target stages 1-4 + plain greedy decode."""
    _sync_all(target)
    res = EngineResult(mode="target_only", gamma=0)
    tokens, times, ends, prompt_len = prefix_and_decode(target, sample, max_new_tokens, stop_at_eos=stop_at_eos,
                                                        select=select, costs=res.costs)
    return _plain(res, tokens, times, ends, prompt_len, max_new_tokens)


@torch.inference_mode()
def sequential(drafter, target: CausalLMRunner, sample: Any, *,
               max_new_tokens: int = 50, stop_at_eos: bool = False, select=greedy) -> EngineResult:
    """The naive cascade: the drafter runs stages 1-5 to completion, then the target runs 1-5.
    The output is the target's; the drafter's answer is only timed (it is not used as a draft).
    A drafter in its own process (DrafterProcess) runs its part there, on the same clock."""
    run_drafter = getattr(drafter, "prefix_and_decode", None) or functools.partial(prefix_and_decode, drafter)
    _sync_all(drafter, target)
    t0 = now_ms(target.device)
    _, _, d_ends, _ = run_drafter(sample, max_new_tokens, stop_at_eos=stop_at_eos, select=select, t0=t0)
    res = EngineResult(mode="sequential", gamma=0, note="drafter stages 1-5, then target stages 1-5")
    tokens, times, t_ends, prompt_len = prefix_and_decode(target, sample, max_new_tokens, stop_at_eos=stop_at_eos,
                                                          select=select, t0=t0, costs=res.costs)
    res.timeline["drafter_stage_end_ms"] = d_ends
    return _plain(res, tokens, times, t_ends, prompt_len, max_new_tokens)


def _plain(res: EngineResult, tokens, times, ends, prompt_len: int, max_new_tokens: int) -> EngineResult:
    """A result whose output is the target's plain greedy decode (target-only, sequential)."""
    res.n_prompt_tokens = {"target": prompt_len}
    res.timeline.update(target_stage_end_ms=ends, token_ms=times)
    res.ttft_ms, res.e2e_ms = times[0], times[-1]
    res.decode_steps = len(tokens) - 1
    finish_result(res, tokens, set(), max_new_tokens, None)
    return res


@torch.inference_mode()
def assisted_generation(drafter: CausalLMRunner, target: CausalLMRunner, sample: Any, *,
                        max_new_tokens: int = 50, gamma: int | str = "adaptive",
                        stop_at_eos: bool = False) -> EngineResult:
    """transformers generate(assistant_model=...) on the same sample, where it can run at all: an
    Unsupported record saying why where it cannot (the two models' inputs differ, or the drafter
    runs in its own process, so this one has no assistant model to give generate)."""
    res = EngineResult(mode="assisted", gamma=gamma)
    why = _assisted_unsupported(drafter, target)
    if why:
        res.error = {"stage": "assisted", "type": "Unsupported", "message": why}
        res.note = why
        return res
    ids = target.preprocess(target.load_inputs(sample), _question(sample))["input_ids"]
    if not torch.equal(ids.cpu(), drafter.preprocess(drafter.load_inputs(sample), _question(sample))["input_ids"].cpu()):
        why = ("transformers assisted generation feeds the target's input_ids to the assistant, but "
               "the two tokenizers give different prompts for this sample")
        res.error, res.note = {"stage": "assisted", "type": "Unsupported", "message": why}, why
        return res
    gen_cfg = _plain_greedy_config(target, max_new_tokens, stop_at_eos)
    assistant_cfg = drafter.model.generation_config
    saved = assistant_cfg.to_dict()
    if gamma != "adaptive":
        assistant_cfg.num_assistant_tokens = int(gamma)
        assistant_cfg.num_assistant_tokens_schedule = "constant"
        assistant_cfg.assistant_confidence_threshold = 0.0
    try:
        _sync_all(drafter, target)
        t0 = now_ms(target.device)
        seq = target.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                    assistant_model=drafter.model, generation_config=gen_cfg)
        res.e2e_ms = now_ms(target.device) - t0
    finally:
        for key, value in saved.items():
            setattr(assistant_cfg, key, value)
    res.note = "transformers assisted generation; only e2e is observable"
    res.n_prompt_tokens = {"target": ids.shape[1], "drafter": ids.shape[1]}
    finish_result(res, [int(t) for t in seq[0, ids.shape[1]:]], _eos_set(target, stop_at_eos),
            max_new_tokens, None)
    return res


def _assisted_unsupported(drafter, target: CausalLMRunner) -> str | None:
    in_process = not getattr(drafter, "is_process", False)
    text_drafter = isinstance(drafter, TextRunner) if in_process else drafter.modality == "text"
    if text_drafter and isinstance(target, TextRunner):
        return None if in_process else (
            "the drafter runs in its own process (--drafter-process on), and transformers assisted "
            "generation needs the assistant model in the target's process; run with --drafter-process "
            "off to measure it")
    return (f"transformers assisted generation runs the assistant on the target's own inputs "
            f"(one input_ids / pixel_values_videos, one prompt length), but the drafter "
            f"{drafter.name} takes {drafter.modality} inputs and the target {target.name} takes "
            f"{target.modality} inputs with different prompts and prompt lengths (different visual "
            f"token counts), which assisted generation does not support")


def _plain_greedy_config(target: CausalLMRunner, max_new_tokens: int, stop_at_eos: bool):
    cfg = copy.deepcopy(target.model.generation_config)
    cfg.do_sample, cfg.num_beams = False, 1
    cfg.max_new_tokens, cfg.min_new_tokens = max_new_tokens, None
    cfg.eos_token_id = target.eos_token_id if stop_at_eos else None
    cfg.pad_token_id = target.eos_token_id if target.eos_token_id is not None else 0
    return cfg

