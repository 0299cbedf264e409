"""What went into each model of a run, for meta.json and the report (one place for both)."""
from __future__ import annotations


def describe_inputs(drafter, target) -> dict:
    """What each model reads; a drafter in its own process brings its half (DrafterProcess.input_info)."""
    return {
        "drafter": getattr(drafter, "input_info", None) or drafter_inputs(drafter),
        "target": {
            "prompt_template": getattr(target, "prompt_template", None),
            "frames": int(getattr(target, "n_frames", 0) or 0),
            "frame_sampling": "np.linspace(0, n - 1, n_frames, dtype=int) over the clip's n frames in [t0, t1)",
            "processing": getattr(getattr(target, "processing", None), "describe", lambda: None)(),
        },
    }


def drafter_inputs(drafter) -> dict:
    d_tok = drafter.tokenizer
    return {
        "prompt": "EventGPT eventgpt_v1: '{system} USER: <ev_start><event><ev_end>\\n{question} ASSISTANT:'",
        "event_images": int(getattr(drafter, "n_chunks", 0) or 0),
        "event_window_ms": int(drafter.window_ms),
        "event_image_rules": "len//N events per chunk, remainder to the last; canvas (y.max()+1, x.max()+1) "
                             "per chunk; time order, last event wins",
        "visual_tokens": int(getattr(drafter, "n_visual_tokens", 0) or 0),
        "processing": getattr(getattr(drafter, "processing", None), "describe", lambda: None)(),
        "tower": getattr(drafter, "tower_source", None),
        "tokenizer": f"{type(d_tok).__name__} ({len(d_tok)} tokens)" if d_tok is not None else None,
        "vocab_rows": int(drafter.model.get_input_embeddings().weight.shape[0]),
    }


def report_lines(meta: dict) -> list[str]:
    """Markdown bullet lines for the report's setup section ([] for runs that predate them)."""
    info = meta.get("model_inputs")
    if not info:
        return []
    d, t = info.get("drafter", {}), info.get("target", {})
    lines = [f"- **Drafter inputs:** {d.get('event_images')} event image(s) of the last {d.get('event_window_ms')} ms "
             f"({d.get('event_image_rules')}), {d.get('visual_tokens')} visual tokens; prompt {d.get('prompt')}; "
             f"tokenizer {d.get('tokenizer')}"]
    tower = d.get("tower")
    if tower:
        lines.append(f"- **Drafter tower:** config from {tower.get('config_from')}, weights from "
                     f"{tower.get('weights_from')} (mm_visual_tower {tower.get('mm_visual_tower')!r})")
    lines.append(f"- **Target inputs:** prompt template `{t.get('prompt_template')}`, {t.get('frames')} frames by "
                 f"{t.get('frame_sampling')}")
    return lines
