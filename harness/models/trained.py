"""The trained tiny pair: a tiny EventGPT and a tiny Video-LLaVA that ppbench trains itself.

Same architectures, configs (profiles.LLAMA_TINY / CLIP_TINY) and loaders as the tiny profile, but
trained on the embedded synthetic scenes (harness.data.synthetic: make_scene, Renderer,
window_events) to answer the dataset's questions from ground truth the scene generator knows:

    "The biggest object is a <colour> <kind> on the <left|right>, moving <left|right>."

over the shapes whose centre is inside the models' centre crop at the clip's end. The drafter sees
only the event images of the clip's last 50 ms (events_to_images, then its runner's preprocess),
the target only 8 video frames of the clip (sample_frame_indices, its runner's preprocess). Events
carry motion and shape but no colour (polarity only), frames carry colour: the two answers agree on
the template and part of the content, and disagree where one model cannot see.

Training is deterministic for a seed (fixed data seeds, torch seeded, one thread order), then
`save_pretrained` writes each model with the shared tokenizer into
`$PPBENCH_CACHE/trained_models/<VERSION>/`, next to train_log.json (time, losses, held-out answer
accuracy of each model against the ground truth, drafter/target token agreement), and the profile
loads them back through profiles.load_checkpoint (from_pretrained), like any checkpoint.
"""
from __future__ import annotations

import itertools
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from harness.data.dataset import DURATION_MS, DURATIONS
from harness.data.dsec import Events
from harness.data.event_images import DEFAULT_WINDOW_MS, drafter_window, events_to_images
from harness.data.synthetic import (FPS, QUESTIONS, SENSOR_H, SENSOR_W, VIDEO_H, VIDEO_W, Renderer, make_scene,
                                    shape_center, window_events)
from harness.data.video import sample_frame_indices
from harness.models.image_processing import ClipProcessing
from harness.models.eventgpt import EVENT_TOKEN_INDEX, EventChatLlamaForCausalLM, splice
from harness.models.quant import random_init_
from harness.models.shapes import eventgpt_config, videollava_config
from harness.models.tiny import MARKER, build_once  # noqa: F401 (MARKER: the cache marker, re-exported)

VERSION = "v2"  # v2: the drafter inputs of the original EventGPT (issue 13)
N_TRAIN, N_EVAL = 320, 48           # scenes (one clip each); data seeds [seed, 0, i] / [seed, 1, i]
EPOCHS, BATCH, LR = 8, 16, 3e-3
MAX_ANSWER_TOKENS = 32
COLOURS = {(0, 0, 0): "black", (1, 0, 0): "red", (0, 1, 0): "green", (0, 0, 1): "blue", (1, 1, 0): "yellow",
           (1, 0, 1): "magenta", (0, 1, 1): "cyan", (1, 1, 1): "white"}
KINDS = {"rect": "car", "disk": "ball"}
CROP_X = ((SENSOR_W - SENSOR_H) / 2, (SENSOR_W + SENSOR_H) / 2)   # the CLIP centre crop, sensor pixels
FIELDS = ("colour", "kind", "side", "direction")
_ANSWER = re.compile(r"The biggest object is an? (\w+) (\w+) on the (\w+), moving (\w+)\.")
NO_OBJECT = "No object is in view."


# -- ground truth and answers ------------------------------------------------------------------------
def scene_truth(scene, t1_s: float) -> dict:
    """Ground truth at the clip's end: shapes whose centre is in the crop, the biggest of them, its
    colour, kind and horizontal motion over the drafter's window."""
    dt = DEFAULT_WINDOW_MS / 1000
    visible = [s for s in scene.shapes if CROP_X[0] <= shape_center(s, t1_s)[0] < CROP_X[1]]
    if not visible:
        return {}
    big = max(visible, key=lambda s: s.half[0] * s.half[1])
    x = shape_center(big, t1_s)[0]
    moved = x - shape_center(big, t1_s - dt)[0]
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


CLIPS_PER_SCENE = 4


def make_scene_examples(rng: np.random.Generator, clips: int = CLIPS_PER_SCENE) -> list[Example]:
    """`clips` clips of one scene: random duration (one of the dataset's), random end time."""
    scene = make_scene(rng)
    lum = Renderer(scene, SENSOR_W, SENSOR_H, gray=True)
    rgb = Renderer(scene, VIDEO_W, VIDEO_H, gray=False)
    out = []
    for _ in range(clips):
        d_us = DURATION_MS[DURATIONS[int(rng.integers(len(DURATIONS)))]] * 1000
        t1_us = int(rng.integers(d_us, 21_000_000))
        t0_us = t1_us - d_us
        w0, w1 = drafter_window(t0_us, t1_us)
        x, y, t, p = window_events(lum, w0 / 1e6, w1 / 1e6)
        if len(t) == 0:          # nothing moved in the window: a white canvas per chunk
            x, y, t, p = np.zeros(1, np.uint16), np.zeros(1, np.uint16), np.zeros(1, np.int64), np.ones(1, np.uint8)
        events = events_to_images(Events(x, y, t, p))
        frame_us = np.arange(0, t1_us + 1, 1_000_000 // FPS)
        frames = np.stack([(np.clip(rgb(frame_us[i] / 1e6), 0, 1) * 255).round().astype(np.uint8)
                           for i in sample_frame_indices(frame_us, t0_us, t1_us)])
        truth = scene_truth(scene, t1_us / 1e6)
        out.append(Example(QUESTIONS[int(rng.integers(len(QUESTIONS)))], events, frames, truth, answer_text(truth)))
    return out


def make_examples(seed: int, split: int, n: int, runners=()) -> list[Example]:
    """n examples from n / CLIPS_PER_SCENE scenes; scene i of a split draws from rng [seed, split, i].
    With `runners`, each example is preprocessed by each runner at once and its images dropped
    (5 event images + 8 frames are ~6 MB; their 28-px tensors a few KB)."""
    out = []
    for i in range(-(-n // CLIPS_PER_SCENE)):
        for e in make_scene_examples(np.random.default_rng([seed, split, i])):
            if runners:
                e.prepared = {r.role: r.preprocess(_raw(r, e), e.question) for r in runners}
                e.event_images = e.frames = None
            out.append(e)
    return out[:n]


def _raw(runner, e: Example):
    """What each model may see: the drafter the event images, the target the frames."""
    return e.event_images if runner.modality == "events" else e.frames


# -- training ---------------------------------------------------------------------------------------------
def _answer_ids(tokenizer, answer: str) -> list[int]:
    return tokenizer(" " + answer, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]


def _event_prompt_embeds(runner, prepared: dict) -> torch.Tensor:
    """The drafter's stage 3 with gradients (the runners' encode_vision runs under inference_mode)."""
    ids = prepared["input_ids"]
    text = runner.model.get_input_embeddings()(ids.clamp(min=0))
    return splice(text, ids, EVENT_TOKEN_INDEX, runner.model.encode_events(prepared["pixel_values"]))[0]


def _batch_loss(runner, items: list[tuple[dict, list[int]]]) -> torch.Tensor:
    """Teacher-forced cross-entropy over the answer tokens of a right-padded batch."""
    model, embed = runner.model, runner.model.get_input_embeddings()
    if runner.modality == "events":
        seqs = [torch.cat([_event_prompt_embeds(runner, prep), embed(torch.tensor(ans))]) for prep, ans in items]
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


def train(runner, examples: list[Example], *, seed: int, epochs: int = EPOCHS, batch: int = BATCH,
          lr: float = LR, progress: Callable[[str], None] | None = None) -> list[float]:
    """AdamW with linear decay over the epochs; returns the mean loss per epoch."""
    items = [(_prepared(runner, e), _answer_ids(runner.tokenizer, e.answer)) for e in examples]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(runner.model.parameters(), lr=lr, weight_decay=0.0)
    total = epochs * -(-len(items) // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 - step / total)
    runner.model.train()
    losses = []
    for epoch in range(epochs):
        order = torch.randperm(len(items), generator=gen).tolist()
        epoch_loss = []
        for b in range(0, len(order), batch):
            loss = _batch_loss(runner, [items[i] for i in order[b:b + batch]])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(runner.model.parameters(), 1.0)
            opt.step()
            sched.step()
            epoch_loss.append(float(loss.detach()))
        losses.append(float(np.mean(epoch_loss)))
        if progress:
            progress(f"{runner.role} epoch {epoch + 1}/{epochs}: loss {losses[-1]:.3f}")
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


def evaluate(drafter, target, examples: list[Example]) -> dict:
    tok = target.tokenizer
    d_ids = [greedy_answer(drafter, _prepared(drafter, e)) for e in examples]
    t_ids = [greedy_answer(target, _prepared(target, e)) for e in examples]
    truths = [e.truth for e in examples]
    agree = [sum(a == b for a, b in zip(d, t)) / max(len(d), len(t)) for d, t in zip(d_ids, t_ids)]
    d_txt, t_txt = tok.batch_decode(d_ids, skip_special_tokens=True), tok.batch_decode(t_ids, skip_special_tokens=True)
    return {"n": len(examples), "drafter_accuracy": field_accuracy(d_txt, truths),
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
    train_set, eval_set = make_examples(seed, 0, N_TRAIN, runners), make_examples(seed, 1, N_EVAL, runners)
    t_data = time.perf_counter() - t_start
    log = {"version": VERSION, "seed": seed, "n_train": N_TRAIN, "n_eval": N_EVAL, "epochs": EPOCHS,
           "batch": BATCH, "lr": LR, "torch_threads": torch.get_num_threads(), "data_s": round(t_data, 1),
           "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if progress:
        progress(f"{N_TRAIN + N_EVAL} examples rendered in {t_data:.0f} s")
    for runner, name in zip(runners, ("eventgpt", "videollava")):
        t0 = time.perf_counter()
        log[f"{runner.role}_loss"] = train(runner, train_set, seed=seed, progress=progress)
        log[f"{runner.role}_train_s"] = round(time.perf_counter() - t0, 1)
        runner.model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
    tok.save_pretrained(root / "tokenizer")
    log["eval"] = evaluate(*runners, eval_set)
    log["total_s"] = round(time.perf_counter() - t_start, 1)
    (root / "train_log.json").write_text(json.dumps(log, indent=1) + "\n")
    return log


def ensure_trained_checkpoints(cache_dir: str | os.PathLike | None = None, seed: int = 0,
                               progress: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Paths {"drafter", "target", "tokenizer", "log"}; trains once (atomic rename, marker last)."""
    root = cache_root(cache_dir)
    paths = {"drafter": root / "eventgpt", "target": root / "videollava", "tokenizer": root / "tokenizer",
             "log": root / "train_log.json"}
    build_once(root, lambda tmp: _build(tmp, seed, progress), prefix=f".{VERSION}-")
    return paths
