"""The trained tiny pair: a tiny EventGPT and a tiny Video-LLaVA that ppbench trains itself (the
default profile).

Same architectures and loaders as the tiny profile (profiles.LLAMA_TINY; CLIP_TRAINED: CLIP_TINY at
56 px with 28-px patches, 4 patches + CLS per image), trained on the embedded synthetic scenes
(harness.data.synthetic: make_scene, Renderer, the generator's event simulation) to answer the
dataset's questions from ground truth the scene generator knows:

    "The biggest object is a <colour> <kind> on the <left|right>, moving <left|right>."

about the object that covers most of the models' centre crop at the clip's end (occlusion counted:
scene_truth). The drafter sees only the event images of the clip's last 50 ms, simulated as the
generator writes them at the default scale (scene events, noise and filler: clip_events), the
target only 8 video frames of the clip; each through its runner's own preprocess. Events carry
shape and position but no colour (polarity only), frames carry colour: the two answers agree on
the template and part of the content, and disagree where one model cannot see.

What the first version (v2) got wrong, and why it learned only the template: the ground truth was
"the largest shape by size among those whose centre is in the crop", 4-6 candidates whose sizes
differ by ~15% (median) and which cover each other; its events had no noise or filler, so their
canvases (and so the geometry after the CLIP crop) differed from a run's; 320 clips of 80 scenes
let the models memorise the scenes' textures instead of reading the objects. Now: the visible-area
truth, runtime-like events, and many scenes on a few shared backdrops (make_examples). At a
budget of ~3 CPU minutes the target learns colour (held-out ~32% against 12.5% uniform / 21%
majority chance) but not side or motion, and the drafter learns none of its fields
(train_log.json: "chance"). Measured while diagnosing: the visual signal does reach the LM
(64 clips are memorised in 300 steps, 75% colour on them); a hand-made colour-histogram rule on the
target's last frame gets 64% colour / 75% side, so the truth is visible at 56 px; held-out colour
rose slowly with steps and unique clips (~30% after 900 steps on 1536 clips), i.e. the budget, not
the pipeline, is what limits it now (colour 32% with 2048 target clips, the default).

Training is deterministic for a seed (fixed data seeds, torch seeded, one thread), then
`save_pretrained` writes each model with the shared tokenizer into
`$PPBENCH_CACHE/trained_models/<VERSION>/`, next to train_log.json (time, losses, held-out answer
accuracy of each model per field against the ground truth with chance levels, drafter/target token
agreement), and the profile loads them back through profiles.load_checkpoint (from_pretrained).
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness.data.dataset import DURATION_MS, DURATIONS
from harness.data.dsec import Events
from harness.data.event_images import DEFAULT_WINDOW_MS, drafter_window, events_to_images
from harness.data.synthetic import (CONTRAST_THRESHOLD, EVENT_RATE_HZ, FPS, QUESTIONS, SCALES, SENSOR_H, SENSOR_W,
                                    VIDEO_H, VIDEO_W, Renderer, _filler_events, _log, _merge,
                                    _noise_events, make_scene, shape_center, step_events)
from harness.data.video import sample_frame_indices
from harness.models.image_processing import ClipProcessing
from harness.models.eventgpt import EVENT_TOKEN_INDEX, EventChatLlamaForCausalLM, spatio_temporal_features, splice
from harness.models.quant import random_init_
from harness.models.shapes import eventgpt_config, videollava_config
from harness.models.tiny import MARKER, build_once  # noqa: F401 (MARKER: the cache marker, re-exported)

VERSION = "v3"  # v3: scenes on shared backdrops, runtime-like events, visible-area truth, 28-px patches
# Training clips per role: unique clips are what moved the target's held-out accuracy (colour 20%
# with 1024 clips, 32% with 2048, 31% with 3072, at 900 steps); the drafter's did not, and its
# event simulation is most of a clip's cost, so only the first 512 clips get events.
N_TRAIN = {"drafter": 512, "target": 2048}
N_EVAL = 96        # clips (CLIPS_PER_SCENE per scene); data seeds [seed, 0, i] / [seed, 1, i]
# Steps per role: the drafter's held-out content stays at chance with more steps at this budget
# (events carry no colour, and side / motion did not generalise), so it trains for the template.
STEPS = {"drafter": 500, "target": 900}
BATCH, LR, WARMUP = 16, 3e-3, 20
MAX_ANSWER_TOKENS = 32
COLOURS = {(0, 0, 0): "black", (1, 0, 0): "red", (0, 1, 0): "green", (0, 0, 1): "blue", (1, 1, 0): "yellow",
           (1, 0, 1): "magenta", (0, 1, 1): "cyan", (1, 1, 1): "white"}
KINDS = {"rect": "car", "disk": "ball"}
CROP_X = ((SENSOR_W - SENSOR_H) / 2, (SENSOR_W + SENSOR_H) / 2)   # the CLIP centre crop, sensor pixels
FIELDS = ("colour", "kind", "side", "direction")
_ANSWER = re.compile(r"The biggest object is an? (\w+) (\w+) on the (\w+), moving (\w+)\.")
NO_OBJECT = "No object is in view."


# -- ground truth and answers ------------------------------------------------------------------------
GRID = 4                            # sensor pixels per cell of the visibility map
MIN_VISIBLE = 0.01                  # the biggest object must cover >= 1% of the crop, else NO_OBJECT


def visible_cells(scene, t_s: float) -> np.ndarray:
    """(H, W) label map of the centre crop at t_s on a GRID-pixel grid: the index of the shape drawn
    last over each cell (the Renderer's order, alpha > 0.5), -1 for the background."""
    xs = np.arange(CROP_X[0], CROP_X[1], GRID) + GRID / 2
    ys = (np.arange(0, SENSOR_H, GRID) + GRID / 2)[:, None]
    labels = np.full((len(ys), len(xs)), -1)
    for i, s in enumerate(scene.shapes):
        cx, cy = shape_center(s, t_s)
        if s.kind == "disk":
            inside = (xs - cx) ** 2 + (ys - cy) ** 2 < s.half[0] ** 2
        else:
            inside = (np.abs(xs - cx) < s.half[0]) & (np.abs(ys - cy) < s.half[1])
        labels[inside] = i
    return labels


def scene_truth(scene, t1_s: float) -> dict:
    """Ground truth at the clip's end, as the models' centre crop shows it: the object covering the
    most of the crop (occlusion counted; >= MIN_VISIBLE of it), its colour, kind, side (of its
    visible part's centroid) and horizontal motion over the drafter's window."""
    labels = visible_cells(scene, t1_s)
    counts = np.bincount(labels[labels >= 0].ravel(), minlength=len(scene.shapes))
    if counts.max(initial=0) < MIN_VISIBLE * labels.size:
        return {}
    i = int(counts.argmax())
    big = scene.shapes[i]
    x = CROP_X[0] + (np.nonzero(labels == i)[1].mean() + 0.5) * GRID
    dt = DEFAULT_WINDOW_MS / 1000
    moved = shape_center(big, t1_s)[0] - shape_center(big, t1_s - dt)[0]
    return {"colour": COLOURS[tuple(int(c > 0.5) for c in big.color)], "kind": KINDS[big.kind],
            "side": "left" if x < SENSOR_W / 2 else "right", "direction": "right" if moved > 0 else "left"}


def answer_text(truth: dict) -> str:
    if not truth:
        return NO_OBJECT
    art = "an" if truth["colour"][0] in "aeiou" else "a"
    return (f"The biggest object is {art} {truth['colour']} {truth['kind']} on the {truth['side']}, "
            f"moving {truth['direction']}.")


def parse_answer(text: str) -> dict:
    """The fields an answer states ({} if it follows no template)."""
    m = _ANSWER.search(text)
    return dict(zip(FIELDS, m.groups())) if m else {}


def answer_corpus() -> list[str]:
    """Every answer the template can produce: extra tokenizer training text."""
    return [NO_OBJECT] + [answer_text(dict(zip(FIELDS, v))) for v in itertools.product(
        COLOURS.values(), KINDS.values(), ("left", "right"), ("left", "right"))]


# -- examples, in memory through the scene API ----------------------------------------------------------
@dataclass
class Example:
    question: str
    event_images: list        # drafter's stage-1 output: 5 RGB uint8 images (None once prepared)
    frames: np.ndarray        # target's stage-1 output: (8, H, W, 3) uint8 (None once prepared)
    truth: dict
    answer: str
    prepared: dict | None = None   # role -> that runner's stage-2 output (runner.preprocess)


CLIPS_PER_SCENE = 2
BACKDROPS = 16


def clip_events(lum: Renderer, C: np.ndarray, cdf: np.ndarray, rng: np.random.Generator, w0_us: int,
                w1_us: int, event_rate: int = SCALES["small"]["event_rate"]) -> Events:
    """Events of [w0, w1) as the generator writes them at the default scale (synthetic._bulk_events):
    per render step the scene's contrast events and background noise, topped up with filler events
    on the background's texture to `event_rate`, so the event images (their canvas size, the filler
    around the objects) look like the ones a run paints."""
    dt_us = 1_000_000 // EVENT_RATE_HZ
    per_step = event_rate * dt_us // 1_000_000
    k0 = w0_us // dt_us
    L_prev = _log(lum(k0 * dt_us / 1e6))
    ref = L_prev.copy()
    chunks = []
    for k in range(k0, -(-w1_us // dt_us)):
        L = _log(lum((k + 1) * dt_us / 1e6))
        ev = _merge(step_events(L_prev, L, ref, C, k * dt_us, dt_us),
                    _noise_events(rng, k * dt_us, dt_us, (SENSOR_H, SENSOR_W)))
        if len(ev[2]) < per_step:
            ev = _merge(ev, _filler_events(rng, cdf, per_step - len(ev[2]), k * dt_us, dt_us))
        chunks.append(ev)
        L_prev = L
    x, y, t, p = (np.concatenate([c[i] for c in chunks]) for i in range(4))
    keep = (t >= w0_us) & (t < w1_us)
    return Events(x[keep], y[keep], t[keep], p[keep])


def filler_cdf(background: np.ndarray) -> np.ndarray:
    """synthetic._filler_sampler from the gray Renderer's background (the same luminance image),
    without rendering it a second time."""
    gy, gx = np.gradient(background)
    w = np.hypot(gx, gy).ravel().astype(np.float64)
    w = w / w.sum() * 0.8 + 0.2 / w.size
    return np.cumsum(w)


@dataclass
class Backdrop:
    """One background texture rendered once at both sizes (Renderer's background is the costly part
    of a scene: ~0.1 s), its per-pixel contrast thresholds and filler sampler; scenes that share it
    get their own shapes (Renderer.with_shapes)."""
    lum: Renderer
    rgb: Renderer
    C: np.ndarray
    cdf: np.ndarray

    @classmethod
    def make(cls, rng: np.random.Generator) -> "Backdrop":
        scene = make_scene(rng)
        lum = Renderer(scene, SENSOR_W, SENSOR_H, gray=True)
        C = (CONTRAST_THRESHOLD * np.clip(1 + 0.05 * rng.standard_normal((SENSOR_H, SENSOR_W)), 0.5, 1.5)
             ).astype(np.float32)
        return cls(lum, Renderer(scene, VIDEO_W, VIDEO_H, gray=False), C, filler_cdf(lum.background))


def _with_scene(renderer: Renderer, scene) -> Renderer:
    out = copy.copy(renderer)
    out.scene = scene
    return out


def make_scene_examples(rng: np.random.Generator, clips: int = CLIPS_PER_SCENE,
                        backdrop: Backdrop | None = None, events: bool = True) -> list[Example]:
    """`clips` clips of one scene (make_scene's shapes; its own texture, or `backdrop`'s): random
    duration (one of the dataset's), random end time; events=False: frames only (event_images
    None), for the clips only the target trains on."""
    scene = make_scene(rng)
    if backdrop is None:
        backdrop = Backdrop.make(np.random.default_rng(rng.integers(2**63)))
    scene = replace(scene, texture=backdrop.lum.scene.texture)
    lum, rgb = _with_scene(backdrop.lum, scene), _with_scene(backdrop.rgb, scene)
    out = []
    for _ in range(clips):
        d_us = DURATION_MS[DURATIONS[int(rng.integers(len(DURATIONS)))]] * 1000
        t1_us = int(rng.integers(d_us, 21_000_000))
        t0_us = t1_us - d_us
        images = (events_to_images(clip_events(lum, backdrop.C, backdrop.cdf, rng, *drafter_window(t0_us, t1_us)))
                  if events else None)
        frame_us = np.arange(0, t1_us + 1, 1_000_000 // FPS)
        frames = np.stack([(np.clip(rgb(frame_us[i] / 1e6), 0, 1) * 255).round().astype(np.uint8)
                           for i in sample_frame_indices(frame_us, t0_us, t1_us)])
        truth = scene_truth(scene, t1_us / 1e6)
        out.append(Example(QUESTIONS[int(rng.integers(len(QUESTIONS)))], images, frames, truth, answer_text(truth)))
    return out


def make_examples(seed: int, split: int, n: int, runners=(), clips: int = CLIPS_PER_SCENE,
                  backdrops: int = BACKDROPS, n_events: int | None = None) -> list[Example]:
    """n examples from n / clips scenes; scene i of a split draws its shapes from rng [seed, split, i]
    and lies on backdrop i % backdrops of the split (rng [seed, split, 2**32 + k]): many scenes at the
    cost of few textures, and no texture that names a scene's colours (a model that memorised
    textures would learn the training scenes, not the question). With `runners`, each example is
    preprocessed by each runner at once and its images dropped (5 event images + 8 frames are
    ~6 MB; their 56-px tensors a few KB). Only the first `n_events` scenes' clips (default: all)
    get event images (their simulation is most of a clip's cost); the others are frames only."""
    pool: dict[int, Backdrop] = {}
    out = []
    for i in range(-(-n // clips)):
        k = i % backdrops
        if k not in pool:
            pool[k] = Backdrop.make(np.random.default_rng([seed, split, 2**32 + k]))
        events = n_events is None or i * clips < n_events
        for e in make_scene_examples(np.random.default_rng([seed, split, i]), clips, pool[k], events):
            if runners:
                e.prepared = {r.role: r.preprocess(_raw(r, e), e.question) for r in runners
                              if _raw(r, e) is not None}
                e.event_images = e.frames = None
            out.append(e)
    return out[:n]


def _raw(runner, e: Example):
    """What each model may see: the drafter the event images, the target the frames."""
    return e.event_images if runner.modality == "events" else e.frames


# -- training ---------------------------------------------------------------------------------------------
def _answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer(" " + answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def _event_prompt_embeds(runner, prepared: list[dict]) -> list[torch.Tensor]:
    """The drafter's stage 3 with gradients (the runners' encode_vision runs under inference_mode),
    the event images of the whole batch through the tower in one call."""
    feats = runner.model.event_image_features(torch.cat([p["pixel_values"] for p in prepared]))
    out = []
    for prep, f in zip(prepared, feats.split([len(p["pixel_values"]) for p in prepared])):
        ids = prep["input_ids"]
        text = runner.model.get_input_embeddings()(ids.clamp(min=0))
        out.append(splice(text, ids, EVENT_TOKEN_INDEX, spatio_temporal_features(f))[0])
    return out


def _batch_loss(runner, items: list[tuple[dict, list[int]]]) -> torch.Tensor:
    """Teacher-forced cross-entropy over the answer tokens of a right-padded batch."""
    model, embed = runner.model, runner.model.get_input_embeddings()
    if runner.modality == "events":
        prompts = _event_prompt_embeds(runner, [prep for prep, _ in items])
        seqs = [torch.cat([p, embed(torch.tensor(ans))]) for p, (_, ans) in zip(prompts, items)]
        n_prompt = [len(s) - len(ans) for s, (_, ans) in zip(seqs, items)]
        width = max(len(s) for s in seqs)
        x = torch.zeros(len(seqs), width, seqs[0].shape[-1])
        mask = torch.zeros(len(seqs), width, dtype=torch.long)
        labels = torch.full((len(seqs), width), -100)
        for i, (s, (_, ans)) in enumerate(zip(seqs, items)):
            x[i, :len(s)], mask[i, :len(s)] = s, 1
            labels[i, n_prompt[i]:len(s)] = torch.tensor(ans)
        return model(inputs_embeds=x, attention_mask=mask, labels=labels).loss
    ids = [torch.cat([prep["input_ids"][0], torch.tensor(ans)]) for prep, ans in items]
    width = max(len(i) for i in ids)
    pad = runner.tokenizer.pad_token_id
    x = torch.full((len(ids), width), pad)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    labels = torch.full((len(ids), width), -100)
    for i, (seq, (prep, ans)) in enumerate(zip(ids, items)):
        x[i, :len(seq)], mask[i, :len(seq)] = seq, 1
        labels[i, len(seq) - len(ans):len(seq)] = torch.tensor(ans)
    videos = torch.cat([prep["pixel_values_videos"] for prep, _ in items])
    return model(input_ids=x, attention_mask=mask, pixel_values_videos=videos, labels=labels).loss


def train(runner, examples: list[Example], *, seed: int, steps: int | None = None, batch: int = BATCH,
          lr: float = LR, progress: Callable[[str], None] | None = None) -> list[float]:
    """AdamW on batches drawn with replacement (seeded), linear warm-up then cosine decay; returns
    the mean loss of each tenth of the steps."""
    steps = steps or STEPS[runner.role]
    items = [(_prepared(runner, e), _answer_ids(runner.tokenizer, e.answer)) for e in examples]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(runner.model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / WARMUP) * 0.5 * (1 + np.cos(np.pi * step / steps)))
    runner.model.train()
    losses, window = [], []
    for step in range(steps):
        idx = torch.randint(len(items), (batch,), generator=gen).tolist()
        loss = _batch_loss(runner, [items[i] for i in idx])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(runner.model.parameters(), 1.0)
        opt.step()
        sched.step()
        window.append(float(loss.detach()))
        if (step + 1) % max(1, steps // 10) == 0 or step + 1 == steps:
            losses.append(float(np.mean(window)))
            window = []
            if progress:
                progress(f"{runner.role} step {step + 1}/{steps}: loss {losses[-1]:.3f}")
    runner.model.eval()
    return losses


def _prepared(runner, e: Example) -> dict:
    return e.prepared[runner.role] if e.prepared else runner.preprocess(_raw(runner, e), e.question)


# -- evaluation ---------------------------------------------------------------------------------------------
@torch.inference_mode()
def greedy_answer(runner, prepared: dict, max_tokens: int = MAX_ANSWER_TOKENS) -> list[int]:
    """The runner's own stages 3-5 on its stage-2 output (greedy, stop at EOS)."""
    cache, logits = runner.prefill(runner.encode_vision(prepared))
    out = [int(logits.argmax())]
    while out[-1] != runner.tokenizer.eos_token_id and len(out) < max_tokens:
        out.append(int(runner.decode(out[-1], cache).argmax()))
    return out


def field_accuracy(answers: list[str], truths: list[dict]) -> dict:
    """Per field: the fraction of answers stating the true value (fields absent from the truth,
    e.g. colour when nothing is in view, are not counted); "exact": the whole answer."""
    acc = {}
    for f in FIELDS:
        pairs = [(parse_answer(a).get(f), t[f]) for a, t in zip(answers, truths) if f in t]
        acc[f] = float(np.mean([p == t for p, t in pairs])) if pairs else None
    acc["exact"] = float(np.mean([a.strip() == answer_text(t) for a, t in zip(answers, truths)]))
    return acc


FIELD_VALUES = {"colour": tuple(COLOURS.values()), "kind": tuple(KINDS.values()), "side": ("left", "right"),
                "direction": ("left", "right")}


def chance_levels(truths: list[dict]) -> dict:
    """Per field: a uniform guess (1 / number of values) and the majority guess (the most common
    true value's share of the truths)."""
    out = {}
    for f, values in FIELD_VALUES.items():
        vals = [t[f] for t in truths if f in t]
        out[f] = {"uniform": 1 / len(values),
                  "majority": max(vals.count(v) for v in values) / len(vals) if vals else None}
    return out


def evaluate(drafter, target, examples: list[Example]) -> dict:
    tok = target.tokenizer
    d_ids = [greedy_answer(drafter, _prepared(drafter, e)) for e in examples]
    t_ids = [greedy_answer(target, _prepared(target, e)) for e in examples]
    truths = [e.truth for e in examples]
    agree = [sum(a == b for a, b in zip(d, t)) / max(len(d), len(t)) for d, t in zip(d_ids, t_ids)]
    d_txt, t_txt = tok.batch_decode(d_ids, skip_special_tokens=True), tok.batch_decode(t_ids, skip_special_tokens=True)
    return {"n": len(examples), "chance": chance_levels(truths), "drafter_accuracy": field_accuracy(d_txt, truths),
            "target_accuracy": field_accuracy(t_txt, truths),
            "token_agreement": float(np.mean(agree)),
            "examples": [{"truth": answer_text(t), "drafter": d, "target": g}
                         for t, d, g in list(zip(truths, d_txt, t_txt))[:6]]}


# -- build and cache ---------------------------------------------------------------------------------------
def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    base = Path(cache_dir) if cache_dir else Path(os.environ.get("PPBENCH_CACHE") or Path.home() / ".cache" / "ppbench")
    return base / "trained_models" / VERSION


def _build(root: Path, seed: int, progress: Callable[[str], None] | None) -> dict:
    t_start = time.perf_counter()
    threads = torch.get_num_threads()
    # One thread: at these sizes every op is tiny, and two threads that must meet after each op
    # wait on each other whenever the machine is busy (20x slower steps, measured on a shared host).
    torch.set_num_threads(1)
    try:
        return _train_and_save(root, seed, progress, t_start)
    finally:
        torch.set_num_threads(threads)


def _train_and_save(root: Path, seed: int, progress, t_start: float) -> dict:
    from transformers import VideoLlavaForConditionalGeneration

    from harness.models.eventgpt import EventGPTRunner
    from harness.models.tiny import build_tokenizer
    from harness.models.videollava import VideoLlavaRunner

    tok = build_tokenizer(answer_corpus())
    runners = []
    for name, cls, make_cfg, runner_cls, s in (
            ("eventgpt", EventChatLlamaForCausalLM, eventgpt_config, EventGPTRunner, seed),
            ("videollava", VideoLlavaForConditionalGeneration, videollava_config, VideoLlavaRunner, seed + 1)):
        torch.manual_seed(s)
        runner = runner_cls(random_init_(cls(make_cfg("trained", tok)), seed=s), tok, name=f"{name}:trained")
        # what the loader gives a checkpoint whose tower config is inside it: CLIPImageProcessor's
        # defaults at the tower's size (harness/models/eventgpt_checkpoint.py)
        vision = runner.model.config.vision_config
        size = vision["image_size"] if isinstance(vision, dict) else vision.image_size
        runner.processing = ClipProcessing.square(size, source="the trained pair's tower size")
        runners.append(runner)
    train_set = make_examples(seed, 0, N_TRAIN["target"], runners, n_events=N_TRAIN["drafter"])
    eval_set = make_examples(seed, 1, N_EVAL, runners)
    t_data = time.perf_counter() - t_start
    log = {"version": VERSION, "seed": seed, "n_train": N_TRAIN, "n_eval": N_EVAL, "steps": STEPS,
           "batch": BATCH, "lr": LR, "torch_threads": torch.get_num_threads(), "data_s": round(t_data, 1),
           "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if progress:
        progress(f"{len(train_set) + len(eval_set)} clips rendered in {t_data:.0f} s")
    for runner, name in zip(runners, ("eventgpt", "videollava")):
        t0 = time.perf_counter()
        mine = [e for e in train_set if runner.role in e.prepared]
        log[f"{runner.role}_loss"] = train(runner, mine, seed=seed, progress=progress)
        log[f"{runner.role}_train_s"] = round(time.perf_counter() - t0, 1)
        if progress:
            progress(f"{runner.role} trained in {log[f'{runner.role}_train_s']:.0f} s")
        runner.model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    tok.save_pretrained(root / "tokenizer")
    log["eval"] = evaluate(*runners, eval_set)
    log["total_s"] = round(time.perf_counter() - t_start, 1)
    (root / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def train_summary(cache_dir: str | os.PathLike | None = None) -> dict | None:
    """What a report states about the trained pair, from its train_log.json (None if not built)."""
    path = cache_root(cache_dir) / "train_log.json"
    if not path.is_file():
        return None
    log = json.loads(path.read_text())
    ev = log["eval"]
    return {"version": log["version"], "n_eval": ev["n"], "chance": ev["chance"],
            "accuracy": {"drafter": ev["drafter_accuracy"], "target": ev["target_accuracy"]},
            "token_agreement": ev["token_agreement"], "train_s": log["total_s"],
            "torch_threads": log["torch_threads"], "log": str(path)}


def ensure_trained_checkpoints(cache_dir: str | os.PathLike | None = None, seed: int = 0,
                               progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Paths {"drafter", "target", "tokenizer", "log"}; trains once (atomic rename, marker last)."""
    root = cache_root(cache_dir)
    paths = {"drafter": root / "eventgpt", "target": root / "videollava", "tokenizer": root / "tokenizer",
             "log": root / "train_log.json"}
    build_once(root, lambda tmp: _build(tmp, seed, progress), prefix=f".{VERSION}-")
    return paths
