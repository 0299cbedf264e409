"""`ppbench dataset import-dsec`: a DSEC download -> a ppbench dataset root (dataset.py's layout).

Sources (found under SRC, either form, or both):
  bulk    <SRC>/<split>_events/<seq>/events/left/events.h5   + <SRC>/<split>_images/<seq>/images/...
  merged  <SRC>/<seq>/events/left/events.h5                    + <SRC>/<seq>/images/...
  images/timestamps.txt (µs, image clock = event t + t_offset), images/left/rectified/NNNNNN.png.

Output, per sequence:
  <out>/<seq>/events/left/events.h5   a symlink to the source: events are read in place, never copied
  <out>/<seq>/timestamps.txt          the image timestamps (absolute µs), one per video frame
  <out>/<seq>/video.mp4               every PNG encoded once, frame i = timestamps[i]
  <out>/<seq>/ground_truth.json       copied when the source has ground_truth/<seq>.json (generated data)
  <out>/<seq>/.import.json            that sequence's clips and skips, written last (resume reads it)
and <out>/manifests/<duration>.json, <out>/import.json (sources, the rule, the encoder, the skip
summary), <out>/.complete last.

The clip rule is the seed's (xifan-zhang/EventGPT, feasible/my_egpt_dsec_dataset/): for each
sequence and duration d, clips start at the first image timestamp and step by d/2 while
start + d <= the last image timestamp; a clip is [start, start + d). A clip is kept only if it holds at
least one event and 8 frames, its PNGs are readable, and its window starts inside the event
recording (a window running past the last event is served with the events it has, as DSEC's
EventSlicer does).

Video: the seed's encoder settings (libx264, preset fast, crf 28, yuv420p, 20 fps, native
resolution), plus a keyframe every KEYFRAME_INTERVAL = 5 frames (250 ms). Every clip step d/2 of the
9 durations is a multiple of 250 ms, so every clip starts on a keyframe: decode-all does exactly the
seed's work on its per-clip mp4 (decode from the clip's first frame), and a reader that seeks to one
of the 8 frames decodes at most 4 frames before it (with 10: 9, and 5 more at half the 500 ms clips). Every file is written under a temporary name and
renamed, so an interrupted import leaves no half-written file; a rerun resumes at the sequences
without a .import.json.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import av
import numpy as np

from harness.data.dataset import DURATION_MS, DURATIONS
from harness.data.dsec import EventReader
from harness.errors import DataError

KEYFRAME_INTERVAL = 5
FPS = 20
N_FRAMES = 8
ENCODER = {"codec": "libx264", "preset": "fast", "crf": "28", "pix_fmt": "yuv420p", "fps": FPS,
           "keyframe_interval": KEYFRAME_INTERVAL}
SEED_QUESTIONS = ["What are the key elements in this scene?"]
IMPORT_VERSION = "dsec-import-v2"   # v2: keyframe every 5 frames (v1: 10)
MARKER = ".complete"
SEQ_DONE = ".import.json"
_PNG = re.compile(r"^(\d+)\.png$")


@dataclass(frozen=True)
class SourceSequence:
    name: str
    events: Path       # events/left/events.h5 (may not exist: reported)
    images: Path       # the images/ folder (may not exist: reported)
    layout: str        # "bulk" | "merged"

    @property
    def timestamps(self) -> Path:
        return self.images / "timestamps.txt"

    @property
    def rectified(self) -> Path:
        return self.images / "left" / "rectified"


# -- discovery ---------------------------------------------------------------------------------------
def find_sequences(src: str | Path) -> list[SourceSequence]:
    """Every sequence under src, bulk and merged; a sequence missing its images or its events is
    still listed (the import reports it)."""
    src = Path(src)
    if not src.is_dir():
        raise DataError("DSEC source is not a directory", path=src)
    found: dict[str, SourceSequence] = {}
    ev_dirs = {p.name: p for d in sorted(src.glob("*_events")) if d.is_dir() for p in sorted(d.iterdir()) if p.is_dir()}
    im_dirs = {p.name: p for d in sorted(src.glob("*_images")) if d.is_dir() for p in sorted(d.iterdir()) if p.is_dir()}
    for name in sorted(set(ev_dirs) | set(im_dirs)):
        ev = ev_dirs.get(name)
        im = im_dirs.get(name)
        found[name] = SourceSequence(
            name, (ev or src / f"<missing>_events/{name}") / "events" / "left" / "events.h5",
            (im or src / f"<missing>_images/{name}") / "images", "bulk")
    for p in sorted(src.iterdir()):
        if p.is_dir() and ((p / "events").is_dir() or (p / "images").is_dir()) and p.name not in found:
            found[p.name] = SourceSequence(p.name, p / "events" / "left" / "events.h5", p / "images", "merged")
    return [found[k] for k in sorted(found)]


# -- the clip rule -----------------------------------------------------------------------------------
def seed_clip_starts(first_us: int, last_us: int, duration_us: int) -> list[int]:
    """Clip starts by the seed's rule: from the first image timestamp, step d/2, while start + d <= last."""
    starts, start = [], int(first_us)
    while start + duration_us <= last_us:
        starts.append(start)
        start += duration_us // 2
    return starts


def parse_duration(text: str) -> int:
    """'500ms' / '4s' -> µs."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", text.strip())
    if not m:
        raise ValueError(f"duration {text!r}: expected e.g. 500ms or 4s")
    return int(round(float(m.group(1)) * (1000 if m.group(2) == "ms" else 1_000_000)))


# -- frames --------------------------------------------------------------------------------------------
def read_png(path: Path) -> np.ndarray:
    """(H, W, 3) uint8; DataError naming the file if it is missing, truncated or not a PNG."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError("PNG missing", path=path) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"PNG unreadable (truncated or corrupt): {e}", path=path) from e


def png_index(folder: Path) -> dict[int, Path]:
    if not folder.is_dir():
        return {}
    return {int(m.group(1)): folder / f for f in os.listdir(folder) if (m := _PNG.match(f))}


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def encode_video(frames: dict[int, Path], n: int, out: Path, folder: Path) -> dict[int, str]:
    """Encode frames 0..n-1 to out (temp + rename). A missing or unreadable PNG is replaced by the
    previous frame (frame indices stay aligned with the timestamps) and returned as {index: reason};
    the clips that use it are skipped."""
    bad: dict[int, str] = {}
    tmp = _tmp(out)
    container = av.open(str(tmp), "w", format="mp4")
    try:
        stream = None
        prev = None
        for i in range(n):
            try:
                if i not in frames:
                    raise DataError("PNG missing", path=folder / f"{i:06d}.png")
                rgb = read_png(frames[i])
            except DataError as e:
                bad[i] = str(e)
                if prev is None:
                    continue
                rgb = prev
            if stream is None:
                stream = container.add_stream(ENCODER["codec"], rate=FPS)
                h, w = rgb.shape[:2]
                stream.width, stream.height, stream.pix_fmt = w - w % 2, h - h % 2, ENCODER["pix_fmt"]
                stream.codec_context.time_base = Fraction(1, FPS)
                stream.codec_context.gop_size = KEYFRAME_INTERVAL
                stream.codec_context.options = {"preset": ENCODER["preset"], "crf": ENCODER["crf"]}
                # A leading frame that was unreadable: pad with the first good one.
                for j in range(i):
                    _mux(container, stream, rgb, j)
            elif rgb.shape[:2] != prev.shape[:2]:
                bad[i] = str(DataError(f"PNG size {rgb.shape[1]}x{rgb.shape[0]} differs from the "
                                       f"sequence's {prev.shape[1]}x{prev.shape[0]}", path=frames[i]))
                rgb = prev
            _mux(container, stream, rgb, i)
            prev = rgb
        if stream is None:
            raise DataError("no readable PNG in the sequence", path=out)
        container.mux(stream.encode(None))
        container.close()
        os.replace(tmp, out)
    except BaseException:
        try:
            container.close()
        except Exception:  # noqa: BLE001  (already failing; the temp file goes either way)
            pass
        tmp.unlink(missing_ok=True)
        raise
    return bad


def _mux(container, stream, rgb: np.ndarray, pts: int) -> None:
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb[:stream.height, :stream.width]), format="rgb24")
    frame.pts = pts
    container.mux(stream.encode(frame))


# -- one sequence ----------------------------------------------------------------------------------
def _write_json(path: Path, doc) -> None:
    tmp = _tmp(path)
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)


def _seq_skip(seq: SourceSequence, reason: str, path: Path) -> dict:
    return {"sequence": seq.name, "clips": {}, "skipped": [{"clip": None, "reason": reason, "file": str(path)}]}


def import_sequence(seq: SourceSequence, out: Path, durations_us: dict[str, int], *,
                    ground_truth: Path | None = None) -> dict:
    """Encode one sequence's video and apply the clip rule; returns (and writes to .import.json)
    {sequence, clips: {duration: [{id, t0_us, t1_us}]}, skipped: [{clip, reason, file}]}."""
    if not seq.images.is_dir():
        return _seq_skip(seq, "sequence has no images folder", seq.images)
    if not seq.events.is_file():
        return _seq_skip(seq, "sequence has no events.h5", seq.events)
    try:
        ts = np.loadtxt(seq.timestamps, dtype=np.int64, ndmin=1, comments="#")
    except (OSError, ValueError) as e:
        return _seq_skip(seq, f"image timestamps unreadable: {e}", seq.timestamps)
    if ts.size < 2 or np.any(np.diff(ts) <= 0):
        return _seq_skip(seq, "image timestamps fewer than 2 or not strictly increasing", seq.timestamps)
    pngs = png_index(seq.rectified)
    extra = sorted(i for i in pngs if i >= len(ts))
    if not pngs or extra:
        return _seq_skip(seq, f"timestamp count {len(ts)} != PNG count {len(pngs)}"
                         + (f" (PNGs {extra[0]:06d}.png... have no timestamp)" if extra else ""), seq.rectified)
    try:
        reader = EventReader(seq.events, sample=seq.name)
    except DataError as e:
        return _seq_skip(seq, f"unreadable h5: {e}", seq.events)
    with reader:
        seq_dir = out / seq.name
        (seq_dir / "events" / "left").mkdir(parents=True, exist_ok=True)
        try:
            bad = encode_video(pngs, len(ts), seq_dir / "video.mp4", seq.rectified)
        except DataError as e:
            return _seq_skip(seq, str(e), seq.rectified)
        try:
            clips, skipped = _apply_rule(seq, reader, ts, bad, pngs, durations_us)
        except DataError as e:
            return _seq_skip(seq, f"unreadable h5: {e}", seq.events)
        t_offset, t_last = reader.t_offset, reader.t_last
    link = seq_dir / "events" / "left" / "events.h5"
    tmp = _tmp(link)
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(seq.events.resolve())
    os.replace(tmp, link)
    tmp = _tmp(seq_dir / "timestamps.txt")
    tmp.write_text("".join(f"{int(v)}\n" for v in ts))
    os.replace(tmp, seq_dir / "timestamps.txt")
    if ground_truth is not None and ground_truth.is_file():
        shutil.copyfile(ground_truth, _tmp(seq_dir / "ground_truth.json"))
        os.replace(_tmp(seq_dir / "ground_truth.json"), seq_dir / "ground_truth.json")
    doc = {"sequence": seq.name, "layout": seq.layout, "events": str(seq.events.resolve()),
           "images": str(seq.images.resolve()), "t_offset": t_offset, "t_last": t_last,
           "n_frames": int(len(ts)), "clips": clips, "skipped": skipped}
    _write_json(seq_dir / SEQ_DONE, doc)
    return doc


def _apply_rule(seq, reader: EventReader, ts: np.ndarray, bad: dict[int, str], pngs: dict[int, Path],
                durations_us: dict[str, int]) -> tuple[dict, list]:
    clips: dict[str, list] = {}
    skipped: list[dict] = []
    rel = ts - reader.t_offset
    for label, d in durations_us.items():
        clips[label] = []
        for k, start in enumerate(seed_clip_starts(int(ts[0]), int(ts[-1]), d)):
            cid = f"{seq.name}-{label}-{k:05d}"
            t0, t1 = start - reader.t_offset, start - reader.t_offset + d
            in_clip = np.flatnonzero((rel >= t0) & (rel < t1))
            broken = [i for i in in_clip if i in bad]
            edge = _edge(reader, t0, t1)
            if edge:
                reason, where = f"at the recording's edge: {edge}", seq.events
            elif len(in_clip) < N_FRAMES:
                reason, where = f"too few frames: {len(in_clip)} < {N_FRAMES}", seq.timestamps
            elif broken:
                reason = ("missing PNGs: " if broken[0] not in pngs else "unreadable PNGs: ") + bad[broken[0]]
                where = pngs.get(broken[0], seq.rectified / f"{broken[0]:06d}.png")
            elif reader.count(t0, t1) == 0:
                reason, where = "no events in the window", seq.events
            else:
                clips[label].append({"id": cid, "t0_us": int(t0), "t1_us": int(t1)})
                continue
            skipped.append({"clip": cid, "reason": reason, "file": str(where)})
    return clips, skipped


def _edge(reader: EventReader, t0: int, t1: int) -> str | None:
    """Why the event reader would refuse this window (it starts before the events or after the
    last one), or None. A window running past the last event is served with the events it has,
    as DSEC's EventSlicer does, and the clip is kept if it holds any."""
    try:
        reader.check_window(t0, t1)
    except DataError:
        return f"window [{t0}, {t1}) µs (relative) outside the events [0, {reader.t_last + 1})"
    return None


def _import_job(job: tuple) -> dict:
    seq, out, durations_us, gt = job
    return import_sequence(seq, Path(out), durations_us, ground_truth=gt)


# -- the whole import ------------------------------------------------------------------------------
def select_evenly(items: list, cap: int | None) -> list:
    """At most cap items, evenly spaced over the list (first and last kept): a cap samples every
    part of every sequence, not only the first sequence's first clips."""
    if cap is None or len(items) <= cap:
        return list(items)
    if cap <= 0:
        return []
    idx = np.unique(np.linspace(0, len(items) - 1, cap).round().astype(int))
    return [items[i] for i in idx]


def load_questions(path: str | Path | None) -> list[str]:
    """A question list: a JSON list of strings (or of {"question": ...}), or one question per line."""
    if path is None:
        return list(SEED_QUESTIONS)
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(f"question list unreadable: {e}", path=path) from e
    try:
        doc = json.loads(text)
    except ValueError:
        questions = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        items = doc if isinstance(doc, list) else doc.get("questions", []) if isinstance(doc, dict) else []
        questions = [q if isinstance(q, str) else q.get("question", "") for q in items if isinstance(q, (str, dict))]
        questions = [q for q in questions if q]
    if not questions:
        raise DataError("question list holds no question", path=path)
    return questions


def import_dsec(src: str | Path, out: str | Path, *, durations: list[str] | None = None,
                sequences: list[str] | None = None, questions: list[str] | None = None,
                samples_per_duration: int | None = None, workers: int = 1, overwrite: bool = False,
                progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Import src into out (see the module docstring); returns the import summary (also import.json)."""
    src, out = Path(src), Path(out)
    durations = list(DURATIONS if durations is None else durations)
    durations_us = {d: DURATION_MS[d] * 1000 if d in DURATION_MS else parse_duration(d) for d in durations}
    questions = list(questions or SEED_QUESTIONS)
    found = find_sequences(src)
    if sequences:
        unknown = sorted(set(sequences) - {s.name for s in found})
        if unknown:
            raise DataError(f"sequences not found in the source: {', '.join(unknown)}", path=src)
        found = [s for s in found if s.name in set(sequences)]
    if not found:
        raise DataError("no DSEC sequence found (expected <split>_events/<seq>/ and <split>_images/<seq>/, "
                        "or <seq>/events/ and <seq>/images/)", path=src)
    rule = {"clip_rule": "seed: start at the first image timestamp, step d/2 while start + d <= last "
                         "image timestamp; window [start, start + d); keep clips with >= 1 event, "
                         f">= {N_FRAMES} frames, readable PNGs, a window starting inside the event recording",
            "durations_us": durations_us, "sequences": [s.name for s in found], "questions": questions,
            "samples_per_duration": samples_per_duration,
            "cap_rule": "evenly spaced over all kept clips of a duration (sequence order, then time)"}
    if out.exists() and (out / MARKER).is_file() and not overwrite:
        previous = json.loads((out / "import.json").read_text())
        if previous.get("rule") == rule:
            return previous | {"already_complete": True}
        raise FileExistsError(f"{out} holds a finished import with other settings (pass overwrite=True)")
    if overwrite and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).unlink(missing_ok=True)

    results: dict[str, dict] = {}
    todo = []
    for s in found:
        done = out / s.name / SEQ_DONE
        if done.is_file():
            doc = json.loads(done.read_text())
            if set(doc.get("clips", {})) == set(durations_us) and doc.get("events") == str(s.events.resolve()):
                results[s.name] = doc     # resumed: encoded and ruled by an earlier run
                continue
        gt = src / "ground_truth" / f"{s.name}.json"
        todo.append((s, str(out), durations_us, gt if gt.is_file() else None))
    total = len(found)
    if progress:
        progress(len(results), total, "resumed" if results else "start")
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(min(workers, len(todo))) as pool:
            futures = {pool.submit(_import_job, job): job[0].name for job in todo}
            for f in as_completed(futures):
                results[futures[f]] = f.result()
                if progress:
                    progress(len(results), total, futures[f])
    else:
        for job in todo:
            results[job[0].name] = _import_job(job)
            if progress:
                progress(len(results), total, job[0].name)

    manifests_dir = out / "manifests"
    manifests_dir.mkdir(exist_ok=True)
    counts = {}
    for label in durations:
        kept = [c | {"sequence": name} for name in sorted(results) for c in results[name]["clips"].get(label, [])]
        chosen = select_evenly(kept, samples_per_duration)
        samples = [{"id": c["id"], "sequence": c["sequence"], "t0_us": c["t0_us"], "t1_us": c["t1_us"],
                    "question": questions[i % len(questions)]} for i, c in enumerate(chosen)]
        counts[label] = {"clips": len(kept), "samples": len(samples)}
        _write_json(manifests_dir / f"{label}.json",
                    {"duration": label, "time_reference": "microseconds relative to t_offset",
                     "source": "ppbench dataset import-dsec", "samples": samples})
    skipped = [s for name in sorted(results) for s in results[name]["skipped"]]
    reasons: dict[str, int] = {}
    for s in skipped:
        key = s["reason"].split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    summary = {"version": IMPORT_VERSION, "source": str(src.resolve()),
               "source_sequences": {n: {"layout": r.get("layout"), "events": r.get("events"),
                                        "images": r.get("images")} for n, r in sorted(results.items())},
               "rule": rule, "encoder": ENCODER, "counts": counts,
               "skipped_by_reason": reasons, "skipped": skipped}
    _write_json(out / "import.json", summary)
    (out / MARKER).write_text(IMPORT_VERSION + "\n")
    return summary
